//! TLS to PostgreSQL, configured as libpq is: `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` in the connection string. The driver negotiates
//! TLS with the server; this module turns those parameters into the
//! driver's mode and a rustls connector that checks what the mode asks
//! for:
//!
//! | sslmode | encrypted | certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default) | if the server offers TLS | only with `sslrootcert` (chain) |
//! | `require` | always | only with `sslrootcert` (chain) |
//! | `verify-ca` | always | chain |
//! | `verify-full` | always | chain and host name |
//!
//! The chain is checked against `sslrootcert` (a PEM file of CA
//! certificates) or, without it or with `sslrootcert=system`, against the
//! system's CA store; as in libpq, `sslrootcert=system` asks for
//! `verify-full`. `allow` is taken as `prefer` (TLS when offered), never as
//! plain-first. Certificate files are read once, when the settings are
//! built, so a wrong path fails at startup rather than at a reconnect.

mod verifier;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::url_params::SplitError;
use verifier::NameBlindVerifier;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Taken as [`Prefer`](Self::Prefer).
    Allow,
    /// TLS if the server offers it, else plain text.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS with a certificate chaining to a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    const ALL: [Self; 6] = [
        Self::Disable,
        Self::Allow,
        Self::Prefer,
        Self::Require,
        Self::VerifyCa,
        Self::VerifyFull,
    ];

    /// The connection-string spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Result<Self, TlsError> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| TlsError::UnknownMode(text.to_owned()))
    }

    /// What the driver is told: whether to ask for TLS and whether to
    /// insist. The certificate checks are the connector's.
    fn for_driver(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self {
            Self::Disable => Driver::Disable,
            Self::Allow | Self::Prefer => Driver::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Driver::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where trusted CA certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    File(PathBuf),
    System,
}

/// Bad TLS settings in the connection string. Paths and modes are shown;
/// nothing else of the connection string ever is.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The connection string could not be split.
    #[error("{0}")]
    Split(#[from] SplitError),
    /// `sslmode` has a value libpq does not know.
    #[error("sslmode must be disable, allow, prefer, require, verify-ca or verify-full, not {0:?}")]
    UnknownMode(String),
    /// `sslrootcert=system` with a mode that would not use it fully.
    #[error(
        "sslmode={0} may not be used with sslrootcert=system (use verify-full, or leave sslmode out)"
    )]
    WeakModeWithSystemRoots(SslMode),
    /// `sslcert` without `sslkey` or the other way round.
    #[error("sslcert and sslkey go together; {0} is missing")]
    HalfClientIdentity(&'static str),
    /// A certificate or key file could not be read.
    #[error("cannot read {parameter} {}: {cause}", path.display())]
    Read {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        parameter: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS's reason.
        cause: std::io::Error,
    },
    /// A file was read but holds no usable certificate or key.
    #[error("{parameter} {}: {reason}", path.display())]
    Unusable {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        parameter: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
    /// The system CA store is empty or unreadable.
    #[error("no CA certificates found in the system store (give sslrootcert=<file>): {0}")]
    NoSystemRoots(String),
    /// rustls refused the assembled configuration.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The TLS part of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    mode: SslMode,
    /// Whether the connection string asked for anything about TLS.
    asked: bool,
    root_cert: Option<RootCert>,
    /// Client certificate chain and key files.
    client_identity: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    /// Reads the parameters taken out by [`crate::config::url_params::split`]; a later one
    /// overrides an earlier one with the same key.
    pub fn from_params(params: &[(&'static str, String)]) -> Result<Self, TlsError> {
        let last = |key: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let root_cert = last("sslrootcert").map(|value| match value {
            "system" => RootCert::System,
            path => RootCert::File(PathBuf::from(path)),
        });
        let mode = match (last("sslmode"), &root_cert) {
            (Some(text), _) => SslMode::parse(text)?,
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(TlsError::WeakModeWithSystemRoots(mode));
        }
        let client_identity = match (last("sslcert"), last("sslkey")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (Some(_), None) => return Err(TlsError::HalfClientIdentity("sslkey")),
            (None, Some(_)) => return Err(TlsError::HalfClientIdentity("sslcert")),
            (None, None) => None,
        };
        Ok(Self {
            mode,
            asked: !params.is_empty(),
            root_cert,
            client_identity,
        })
    }

    /// The mode in force (`prefer` when none was given).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// What the driver is told (see [`SslMode`]).
    pub fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        self.mode.for_driver()
    }

    /// What a failed connection attempt was doing: the mode is named
    /// whenever the connection string asked for anything about TLS.
    pub fn connect_context(&self) -> &'static str {
        if !self.asked {
            return "connecting to PostgreSQL";
        }
        match self.mode {
            SslMode::Disable => "connecting to PostgreSQL with sslmode=disable",
            SslMode::Allow => "connecting to PostgreSQL with sslmode=allow",
            SslMode::Prefer => "connecting to PostgreSQL with sslmode=prefer",
            SslMode::Require => "connecting to PostgreSQL with sslmode=require",
            SslMode::VerifyCa => "connecting to PostgreSQL with sslmode=verify-ca",
            SslMode::VerifyFull => "connecting to PostgreSQL with sslmode=verify-full",
        }
    }

    /// The connector: reads the certificate files and, when the system
    /// store is wanted, the system's CA certificates.
    pub fn connector(&self) -> Result<MakeRustlsConnect, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::VerifyFull => {
                WebPkiServerVerifier::builder_with_provider(self.trusted_roots()?, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Setup(e.to_string()))?
            }
            SslMode::VerifyCa => Arc::new(NameBlindVerifier::chain_only(
                self.trusted_roots()?,
                algorithms,
            )),
            // As libpq: a root certificate file makes the weaker modes
            // check the chain too.
            _ if matches!(self.root_cert, Some(RootCert::File(_))) => Arc::new(
                NameBlindVerifier::chain_only(self.trusted_roots()?, algorithms),
            ),
            _ => Arc::new(NameBlindVerifier::encrypt_only(algorithms)),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client_identity {
            Some((cert, key)) => {
                let chain = read_certificates("sslcert", cert)?;
                let key = read_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Unusable {
                        parameter: "sslcert",
                        path: cert.clone(),
                        reason: e.to_string(),
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// The CAs that certificates must chain to: `sslrootcert`'s, else the
    /// system's.
    fn trusted_roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(RootCert::File(path)) => {
                for cert in read_certificates("sslrootcert", path)? {
                    roots.add(cert).map_err(|e| TlsError::Unusable {
                        parameter: "sslrootcert",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            Some(RootCert::System) | None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let reasons: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                    return Err(TlsError::NoSystemRoots(if reasons.is_empty() {
                        "the store is empty".to_owned()
                    } else {
                        reasons.join("; ")
                    }));
                }
            }
        }
        Ok(Arc::new(roots))
    }
}

fn read(parameter: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read {
        parameter,
        path: path.to_owned(),
        cause,
    })
}

/// The PEM certificates in a file; at least one.
fn read_certificates(
    parameter: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unusable = |reason: String| TlsError::Unusable {
        parameter,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&read(parameter, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(unusable("holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}

/// The PEM private key in a file. The reason never quotes the file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read("sslkey", path)?).map_err(|_| TlsError::Unusable {
        parameter: "sslkey",
        path: path.to_owned(),
        reason: "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
    })
}

#[cfg(test)]
mod tests;
