//! The certificate check for the sslmodes that check less than rustls
//! does by default: `verify-ca` checks the chain but not the host name,
//! and `prefer`/`require` without `sslrootcert` check no certificate at
//! all (libpq's meaning of those modes: encryption against eavesdroppers,
//! no protection against an active man in the middle).
//!
//! Either way the handshake signatures are checked, so the server must
//! hold the private key of the certificate it shows. `verify-full` needs
//! nothing from here: it is rustls's own `WebPkiServerVerifier`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// Never looks at the host name; checks the chain when it has roots.
#[derive(Debug)]
pub struct NameBlindVerifier {
    /// `None`: any certificate is accepted (`require`).
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl NameBlindVerifier {
    /// Accepts any certificate whose key signed the handshake.
    pub fn encrypt_only(algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self {
            roots: None,
            algorithms,
        }
    }

    /// Accepts a certificate that chains to one of `roots`, whatever names
    /// it holds.
    pub fn chain_only(roots: Arc<RootCertStore>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self {
            roots: Some(roots),
            algorithms,
        }
    }
}

impl ServerCertVerifier for NameBlindVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(roots) = &self.roots {
            // The chain check alone (validity dates included), rather than
            // the whole webpki verifier with its name error ignored: that
            // would rely on the chain being checked before the name.
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
