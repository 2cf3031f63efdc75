use super::*;

fn settings(params: &[(&'static str, &str)]) -> Result<TlsSettings, TlsError> {
    let params: Vec<(&'static str, String)> =
        params.iter().map(|(k, v)| (*k, v.to_string())).collect();
    TlsSettings::from_params(&params)
}

#[test]
fn without_tls_parameters_the_mode_is_prefer_and_errors_name_no_mode() {
    let plain = settings(&[]).unwrap();
    assert_eq!(plain.mode(), SslMode::Prefer);
    assert_eq!(plain.driver_mode(), tokio_postgres::config::SslMode::Prefer);
    assert_eq!(plain.connect_context(), "connecting to PostgreSQL");
    let asked = settings(&[("sslmode", "prefer")]).unwrap();
    assert_eq!(
        asked.connect_context(),
        "connecting to PostgreSQL with sslmode=prefer"
    );
}

#[test]
fn every_libpq_mode_is_understood_and_others_are_refused() {
    use tokio_postgres::config::SslMode as Driver;
    for (text, driver) in [
        ("disable", Driver::Disable),
        ("allow", Driver::Prefer),
        ("prefer", Driver::Prefer),
        ("require", Driver::Require),
        ("verify-ca", Driver::Require),
        ("verify-full", Driver::Require),
    ] {
        let parsed = settings(&[("sslmode", text)]).unwrap();
        assert_eq!(parsed.mode().as_str(), text);
        assert_eq!(parsed.driver_mode(), driver, "{text}");
        assert!(parsed.connect_context().ends_with(text));
    }
    let error = settings(&[("sslmode", "verify_full")]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "sslmode must be disable, allow, prefer, require, verify-ca or verify-full, \
         not \"verify_full\""
    );
}

#[test]
fn the_last_of_repeated_parameters_wins() {
    let parsed = settings(&[("sslmode", "disable"), ("sslmode", "require")]).unwrap();
    assert_eq!(parsed.mode(), SslMode::Require);
}

#[test]
fn sslrootcert_system_means_verify_full_and_refuses_weaker_modes() {
    let system = settings(&[("sslrootcert", "system")]).unwrap();
    assert_eq!(system.mode(), SslMode::VerifyFull);
    settings(&[("sslrootcert", "system"), ("sslmode", "verify-full")]).unwrap();
    let error = settings(&[("sslrootcert", "system"), ("sslmode", "require")]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("sslmode=require may not be used with sslrootcert=system"),
        "{error}"
    );
}

#[test]
fn a_client_certificate_needs_its_key_and_the_other_way_round() {
    let error = settings(&[("sslcert", "/c.pem")]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "sslcert and sslkey go together; sslkey is missing"
    );
    let error = settings(&[("sslkey", "/k.pem")]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "sslcert and sslkey go together; sslcert is missing"
    );
}

#[test]
fn an_unreadable_sslrootcert_is_named_without_the_password() {
    let url = crate::config::DatabaseUrl::new(
        "postgres://app:hunter2@db.example/shop?sslmode=verify-full\
         &sslrootcert=/nonexistent/rds-ca.pem",
    );
    let error = crate::db::Db::new(&url).err().expect("an error");
    let shown = error.to_string();
    assert!(
        shown.starts_with(
            "the database URL (--database-url, DATABASE_URL): cannot read sslrootcert \
             /nonexistent/rds-ca.pem: No such file"
        ),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        std::error::Error::source(&error).is_none(),
        "the cause is in the message, not repeated as its source"
    );
    assert!(!error.is_connection_lost());
}

#[test]
fn files_without_pem_certificates_or_keys_are_refused() {
    let dir = std::env::temp_dir().join(format!("outboxd-tls-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let cert = dir.join("client.crt");
    let issued = rcgen::generate_simple_self_signed(vec!["client".to_owned()]).unwrap();
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    let (not_pem, cert) = (not_pem.to_str().unwrap(), cert.to_str().unwrap());
    let shown = |params: &[(&'static str, &str)]| match settings(params).unwrap().connector() {
        Ok(_) => panic!("accepted"),
        Err(error) => error.to_string(),
    };
    assert_eq!(
        shown(&[("sslmode", "verify-ca"), ("sslrootcert", not_pem)]),
        format!("sslrootcert {not_pem}: holds no PEM certificate")
    );
    assert_eq!(
        shown(&[("sslcert", cert), ("sslkey", not_pem)]),
        format!("sslkey {not_pem}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_system_store_serves_verify_full_without_sslrootcert() {
    // The machines this runs on have a CA bundle (ca-certificates).
    settings(&[("sslmode", "verify-full")])
        .unwrap()
        .connector()
        .unwrap();
    settings(&[("sslrootcert", "system")])
        .unwrap()
        .connector()
        .unwrap();
}
