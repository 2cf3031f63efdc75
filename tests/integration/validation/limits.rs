//! What HTTP cannot carry or outboxd would have to cut is refused at insert,
//! with caps documented in docs/sql.md, and no error ever shows the row
//! (PostgreSQL's "Failing row contains" detail would show the secrets).

use super::{assert_check_violation, whsec};
use crate::common::*;

const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBYA8YRmOSRP3ymv0D3mvAxY0x8RrP5ZeXyCRfxRC0Pk\n-----END PRIVATE KEY-----\n";
const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// Inserts endpoint `id` with the columns `assignments` set (SQL), signing
/// with `secret`, a client key and certificate stored beside it.
async fn insert_with(
    db: &TestDb,
    id: &str,
    assignments: &[(&str, &str)],
    secret: &str,
) -> Result<u64, tokio_postgres::error::DbError> {
    let mut columns = vec!["id", "url", "secrets", "client_cert_pem", "client_key_pem"];
    let mut values = vec![
        "p.id".to_owned(),
        "'https://hooks.example.com/in'".to_owned(),
        "ARRAY[p.secret]".to_owned(),
        "p.cert".to_owned(),
        "p.key".to_owned(),
    ];
    for (column, value) in assignments {
        match columns.iter().position(|c| c == column) {
            Some(i) => values[i] = (*value).to_owned(),
            None => {
                columns.push(column);
                values.push((*value).to_owned());
            }
        }
    }
    let sql = format!(
        "INSERT INTO outbox.endpoints ({}) SELECT {}
         FROM (SELECT $1::text AS id, $2::text AS secret, $3::text AS cert, $4::text AS key) p",
        columns.join(", "),
        values.join(", ")
    );
    db.client
        .execute(&sql, &[&id, &secret, &CERT, &KEY])
        .await
        .map_err(|e| e.as_db_error().expect("a database error").clone())
}

#[tokio::test]
async fn endpoint_errors_name_the_problem_and_never_show_the_row() {
    let db = fresh_db().await;
    let secret = whsec(32);
    for (assignments, needle) in [
        (
            vec![("headers", "'[]'")],
            "headers of endpoint \"ep\" must be a JSON object",
        ),
        (
            vec![("headers", "NULL")],
            "headers of endpoint \"ep\" must be a JSON object",
        ),
        (vec![("secrets", "'{}'")], "endpoint \"ep\" has no secret"),
        (vec![("secrets", "NULL")], "endpoint \"ep\" has no secret"),
        (vec![("url", "NULL")], "endpoint \"ep\" has no url"),
        (
            vec![("timeout_ms", "0")],
            "timeout_ms of endpoint \"ep\" is 0",
        ),
        (
            vec![("max_in_flight", "0")],
            "max_in_flight of endpoint \"ep\" is 0",
        ),
        (
            vec![("max_in_flight", "NULL")],
            "max_in_flight of endpoint \"ep\" is NULL",
        ),
        (
            vec![("rate_limit", "-1")],
            "rate_limit of endpoint \"ep\" is -1",
        ),
        (
            vec![("rate_limit", "'NaN'")],
            "rate_limit of endpoint \"ep\" is NaN",
        ),
        (
            vec![("id", "'bad id'")],
            "endpoint id \"bad id\" is not valid",
        ),
        (vec![("id", "NULL")], "endpoint id \"NULL\" is not valid"),
    ] {
        let error = insert_with(&db, "ep", &assignments, &secret)
            .await
            .expect_err(&format!("{assignments:?} is refused"));
        assert_eq!(error.code().code(), "23514", "{assignments:?}: {error:?}");
        assert!(
            error.message().contains(needle),
            "{assignments:?}: {:?} should say {needle:?}",
            error.message()
        );
        let shown = format!(
            "{} {:?} {:?}",
            error.message(),
            error.detail(),
            error.hint()
        );
        assert!(
            !shown.contains(&secret[6..]),
            "the secret is shown: {shown}"
        );
        assert!(!shown.contains("MC4CAQAw"), "the key is shown: {shown}");
        assert_eq!(error.detail(), None, "{assignments:?}");
    }
    insert_with(&db, "ep", &[], &secret).await.unwrap();
}

#[tokio::test]
async fn headers_that_belong_to_http_or_outboxd_are_refused() {
    let db = fresh_db().await;
    let secret = whsec(32);
    for name in [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "proxy-authorization",
        "content-type",
        "user-agent",
        "webhook-signature",
    ] {
        let headers = format!("'{{\"{name}\": \"v\"}}'");
        let error = insert_with(&db, "ep", &[("headers", &headers)], &secret)
            .await
            .expect_err(name);
        assert_check_violation(
            &error,
            &format!("header \"{name}\" of endpoint \"ep\" may not be set"),
        );
    }
    insert_with(
        &db,
        "ep",
        &[(
            "headers",
            r#"'{"authorization": "Bearer t", "x-host": "a"}'"#,
        )],
        &secret,
    )
    .await
    .unwrap();
    // Updates are checked too.
    let error = db
        .client
        .execute(
            r#"UPDATE outbox.endpoints SET headers = '{"host": "admin.internal"}' WHERE id = 'ep'"#,
            &[],
        )
        .await
        .unwrap_err();
    assert_check_violation(error.as_db_error().unwrap(), "header \"host\"");
}

#[tokio::test]
async fn endpoint_input_http_cannot_carry_is_refused() {
    let db = fresh_db().await;
    let secret = whsec(32);
    let long = "v".repeat(8193);
    for (assignments, needle) in [
        (
            vec![(
                "headers",
                r#"jsonb_build_object('x-token', E'a\r\nx-injected: 1')"#,
            )],
            "value of header \"x-token\" of endpoint \"ep\" contains a control character",
        ),
        (
            vec![("headers", r#"jsonb_build_object(E'x-a\r\nb', 'v')"#)],
            "header name \"x-a??b\" of endpoint \"ep\" is not a valid HTTP header name",
        ),
        (
            vec![("headers", r#"jsonb_build_object('x a', 'v')"#)],
            "header name \"x a\"",
        ),
        (
            vec![("headers", r#"jsonb_build_object('x-n', 1)"#)],
            "header \"x-n\" of endpoint \"ep\" must be a string",
        ),
        (
            vec![("headers", &format!("jsonb_build_object('x-big', '{long}')"))],
            "longer than 8192 bytes",
        ),
        (
            vec![("timeout_ms", "2147483647")],
            "timeout_ms of endpoint \"ep\" is 2147483647; it must be between 1 and 300000",
        ),
        (
            vec![("url", "E'https://hooks.example.com/a\\r\\nb'")],
            "url of endpoint \"ep\" contains white space or control characters",
        ),
        (
            vec![("event_types", "ARRAY[E'order.created\\n']")],
            "event type \"order.created?\" of endpoint \"ep\"",
        ),
    ] {
        let error = insert_with(&db, "ep", &assignments, &secret)
            .await
            .expect_err(needle);
        assert_check_violation_or_plain(&error, needle);
    }
    let stored: i64 = count(&db.client, "SELECT count(*) FROM outbox.endpoints").await;
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn message_input_http_cannot_carry_is_refused() {
    let db = fresh_db().await;
    let cases = [
        (
            "line\nbreak".to_owned(),
            "t".to_owned(),
            None,
            "event_id_max_256_bytes_no_control_characters",
        ),
        (
            "x".repeat(100 * 1024),
            "t".to_owned(),
            None,
            "event_id_max_256_bytes_no_control_characters",
        ),
        (
            "big-type".to_owned(),
            "t".repeat(1024 * 1024),
            None,
            "event_type_not_blank_max_256_bytes_no_control_chars",
        ),
        (
            "cr-type".to_owned(),
            "order.created\r".to_owned(),
            None,
            "event_type_not_blank_max_256_bytes_no_control_chars",
        ),
        (
            "big-key".to_owned(),
            "t".to_owned(),
            Some("k".repeat(257)),
            "ordering_key_max_256_bytes",
        ),
    ];
    for (event_id, event_type, key, constraint) in &cases {
        let error = db
            .client
            .execute(
                "INSERT INTO outbox.messages (event_id, event_type, payload, ordering_key)
                 VALUES ($1, $2, '{}', $3)",
                &[event_id, event_type, key],
            )
            .await
            .expect_err(constraint);
        // The constraint's name says what is wrong.
        let error = error.as_db_error().unwrap();
        assert_eq!(error.code().code(), "23514", "{error:?}");
        assert_eq!(error.constraint(), Some(*constraint));
        assert!(error.message().contains(constraint), "{}", error.message());
    }
    insert_message(&db.client, &"x".repeat(256), &"t".repeat(256), "{}").await;
    let stored: i64 = count(&db.client, "SELECT count(*) FROM outbox.messages").await;
    assert_eq!(stored, 1, "only the valid message was stored");
}

fn assert_check_violation_or_plain(error: &tokio_postgres::error::DbError, needle: &str) {
    assert_eq!(error.code().code(), "23514", "{error:?}");
    assert!(
        error.message().contains(needle),
        "{:?} should say {needle:?}",
        error.message()
    );
    assert_eq!(error.detail(), None);
}

/// Rows stored before the insert check existed are refused when sent: the
/// receiver never sees a forged `host` or a cut body, and the attempt says
/// why.
#[tokio::test]
async fn headers_stored_before_the_check_are_refused_at_send_time() {
    let db = fresh_db().await;
    let secret = outboxd::signature::Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &secret).await;
    db.client
        .batch_execute(
            r#"ALTER TABLE outbox.endpoints DISABLE TRIGGER endpoints_check;
               UPDATE outbox.endpoints SET headers = '{"host": "admin.internal.example", "content-length": "5"}';
               ALTER TABLE outbox.endpoints ENABLE TRIGGER endpoints_check;"#,
        )
        .await
        .unwrap();
    let mut config = config(&db);
    config.retry =
        outboxd::retry::RetryPolicy::parse("0s", std::time::Duration::from_secs(1)).unwrap();
    let sidecar = spawn(config);
    insert_message(&db.client, "m", "t", r#"{"long": "enough to be cut"}"#).await;
    let settled = wait_settled(&db.client, WAIT).await;
    sidecar.stop().await;
    assert!(settled);
    assert_eq!(receiver.count(), 0, "nothing reached the receiver");
    let error: String = db
        .client
        .query_one("SELECT last_error FROM outbox.deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("may not be set per endpoint"), "{error}");
}
