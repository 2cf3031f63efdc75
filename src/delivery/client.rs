//! The HTTP clients attempts go out on. Endpoints with default TLS share one
//! pooled client (keep-alive across endpoints); an endpoint that brings its
//! own TLS settings (a private CA to trust, a client certificate for mutual
//! TLS) gets a client of its own, cached by endpoint id and a hash of those
//! settings, so it is rebuilt only when they change.
//!
//! Every client refuses redirects, verifies certificates, and either
//! resolves names through the SSRF guard or, with an egress proxy, talks to
//! the proxy only (see [`super::egress`] for what is checked where).
//! Building clients is all this module does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use super::EndpointTls;
use super::egress::{EgressPolicy, GuardedResolver};
use crate::config::Config;
use crate::config::EgressProxy;

/// The HTTP client could not be built (TLS setup, proxy URL).
#[derive(Debug, thiserror::Error)]
#[error("building the HTTP client: {0}")]
pub struct ClientError(#[source] reqwest::Error);

/// The shared client and the per-endpoint ones.
pub struct Clients {
    base: Base,
    shared: reqwest::Client,
    /// Endpoint id → (hash of its TLS settings, its client).
    custom: Mutex<HashMap<String, ([u8; 32], reqwest::Client)>>,
}

impl Clients {
    /// The shared client; per-endpoint ones are built on first use.
    pub fn new(config: &Config, egress: Arc<EgressPolicy>) -> Result<Self, ClientError> {
        let base = Base {
            connect_timeout: config.connect_timeout,
            pool_size: config.concurrency,
            egress,
            proxy: config.egress_proxy.clone(),
        };
        Ok(Self {
            shared: base.builder().build().map_err(ClientError)?,
            base,
            custom: Mutex::new(HashMap::new()),
        })
    }

    /// The client for an endpoint: the shared one unless it has its own TLS
    /// settings. The error (a malformed PEM) names the column, never its
    /// content.
    pub fn for_endpoint(
        &self,
        endpoint_id: &str,
        tls: &EndpointTls,
    ) -> Result<reqwest::Client, String> {
        if tls.is_default() {
            return Ok(self.shared.clone());
        }
        let hash = fingerprint(tls);
        let mut custom = self
            .custom
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((known, client)) = custom.get(endpoint_id)
            && *known == hash
        {
            return Ok(client.clone());
        }
        let client =
            with_tls(self.base.builder(), tls)?
                .build()
                .map_err(|_| match tls.client_cert_pem {
                    Some(_) => "endpoint client_cert_pem/client_key_pem: not a usable certificate \
                            and key (malformed, not a pair, or an unsupported key type)"
                        .to_owned(),
                    None => "endpoint ca_pem: not a usable CA certificate".to_owned(),
                })?;
        custom.insert(endpoint_id.to_owned(), (hash, client.clone()));
        Ok(client)
    }

    /// Whether requests go through an egress proxy.
    pub fn proxied(&self) -> bool {
        self.base.proxy.is_some()
    }
}

/// What every client has in common.
struct Base {
    connect_timeout: Duration,
    pool_size: usize,
    egress: Arc<EgressPolicy>,
    proxy: Option<EgressProxy>,
}

impl Base {
    fn builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(self.pool_size)
            .tcp_nodelay(true);
        match &self.proxy {
            // The client only ever connects to the proxy, which the operator
            // chose; targets are checked before each request instead.
            Some(proxy) => builder.proxy(proxy.to_reqwest()),
            // HTTP(S)_PROXY from the environment would connect through a
            // proxy nobody checked: only an explicit setting may.
            None => builder
                .no_proxy()
                .dns_resolver(GuardedResolver::new(self.egress.clone())),
        }
    }
}

/// Applies an endpoint's CA (replacing the system roots: the endpoint's
/// certificate must chain to it) and client identity.
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    tls: &EndpointTls,
) -> Result<reqwest::ClientBuilder, String> {
    if let Some(ca) = &tls.ca_pem {
        let roots = reqwest::Certificate::from_pem_bundle(ca.as_bytes())
            .ok()
            .filter(|certs| !certs.is_empty())
            .ok_or("endpoint ca_pem: not a PEM certificate bundle")?;
        builder = builder.tls_certs_only(roots);
    }
    match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            // Checked here so the error can say which column is wrong.
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|certs| !certs.is_empty());
            if certs.is_none() {
                return Err("endpoint client_cert_pem: not a PEM certificate chain".to_owned());
            }
            if PrivateKeyDer::from_pem_slice(key.as_bytes()).is_err() {
                return Err("endpoint client_key_pem: not a PEM private key".to_owned());
            }
            let mut pem = Vec::with_capacity(cert.len() + key.len() + 1);
            pem.extend_from_slice(cert.as_bytes());
            pem.push(b'\n');
            pem.extend_from_slice(key.as_bytes());
            let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                "endpoint client_cert_pem/client_key_pem: not a usable certificate and key"
                    .to_owned()
            })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => return Err("endpoint needs both client_cert_pem and client_key_pem".to_owned()),
    }
    Ok(builder)
}

/// A digest of the TLS settings: the cache key never holds the key itself.
fn fingerprint(tls: &EndpointTls) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [&tls.ca_pem, &tls.client_cert_pem, &tls.client_key_pem] {
        match part {
            Some(text) => {
                hash.update([1]);
                hash.update((text.len() as u64).to_le_bytes());
                hash.update(text.as_bytes());
            }
            None => hash.update([0]),
        }
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseUrl;

    fn clients() -> Clients {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config::new(DatabaseUrl::new("postgres://x@127.0.0.1/x"));
        Clients::new(&config, Arc::new(EgressPolicy::default())).unwrap()
    }

    #[test]
    fn fingerprints_tell_settings_apart() {
        let ca = |text: &str| EndpointTls {
            ca_pem: Some(text.to_owned()),
            ..EndpointTls::default()
        };
        assert_eq!(fingerprint(&ca("a")), fingerprint(&ca("a")));
        assert_ne!(fingerprint(&ca("a")), fingerprint(&ca("b")));
        let moved = EndpointTls {
            client_cert_pem: Some("a".to_owned()),
            ..EndpointTls::default()
        };
        assert_ne!(fingerprint(&ca("a")), fingerprint(&moved));
    }

    #[test]
    fn malformed_pem_is_an_error_that_does_not_echo_it() {
        let clients = clients();
        let tls = EndpointTls {
            ca_pem: Some("-----BEGIN CERTIFICATE-----\nhunter2\n-----END CERTIFICATE-----".into()),
            ..EndpointTls::default()
        };
        let error = clients.for_endpoint("e", &tls).unwrap_err();
        assert!(error.contains("ca_pem"), "{error}");
        assert!(!error.contains("hunter2"));
        let tls = EndpointTls {
            client_cert_pem: Some(
                "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----".into(),
            ),
            client_key_pem: Some(
                "-----BEGIN PRIVATE KEY-----\nhunter2\n-----END PRIVATE KEY-----".into(),
            ),
            ..EndpointTls::default()
        };
        let error = clients.for_endpoint("e", &tls).unwrap_err();
        assert!(error.contains("client_cert_pem"), "{error}");
        assert!(!error.contains("hunter2"));
    }

    #[test]
    fn default_tls_uses_the_shared_client() {
        let clients = clients();
        clients.for_endpoint("a", &EndpointTls::default()).unwrap();
        assert!(clients.custom.lock().unwrap().is_empty());
    }

    #[test]
    fn endpoint_clients_are_cached_until_their_settings_change() {
        let clients = clients();
        let ca = |name: &str| EndpointTls {
            ca_pem: Some(
                rcgen::generate_simple_self_signed(vec![name.to_owned()])
                    .unwrap()
                    .cert
                    .pem(),
            ),
            ..EndpointTls::default()
        };
        let (first, second) = (ca("a.test"), ca("b.test"));
        let cached = |clients: &Clients| {
            let custom = clients.custom.lock().unwrap();
            custom
                .iter()
                .map(|(id, (hash, _))| (id.clone(), *hash))
                .collect::<Vec<_>>()
        };
        clients.for_endpoint("e", &first).unwrap();
        clients.for_endpoint("e", &first).unwrap();
        assert_eq!(cached(&clients), [("e".to_owned(), fingerprint(&first))]);
        clients.for_endpoint("e", &second).unwrap();
        assert_eq!(cached(&clients), [("e".to_owned(), fingerprint(&second))]);
    }
}
