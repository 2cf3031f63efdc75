//! Delivering one claimed row: sign it, POST it, read a bounded answer, and
//! judge the result. Owns nothing in the database; what it returns is an
//! [`Outcome`] for the writer.
//!
//! - [`request`] builds the signed request and performs it;
//! - [`outcome`] turns what happened into the delivery's next state;
//! - [`egress`] decides which addresses may be connected to (SSRF guard);
//! - [`client`] builds the HTTP clients (shared, or per endpoint for custom
//!   TLS);
//! - [`payload`] holds a payload so that its request body is not a copy.

pub mod client;
pub mod egress;
pub mod outcome;
pub mod payload;
pub mod request;
pub mod shown_url;

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

pub use outcome::{AttemptRecord, Exchange, Outcome, Verdict};
pub use payload::Payload;
pub use request::Deliverer;

/// One claim of one delivery: the fence that every write about it
/// carries. With the lease owner it names exactly this claim: a claim that
/// a database crash forgot may be followed by another with the same attempt
/// number, never with the same lease expiry. A write whose fence no longer
/// matches the row (the lease expired and someone else claimed it) changes
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// `deliveries.id`.
    pub delivery_id: i64,
    /// This claim's attempt number, 1-based.
    pub attempt: i32,
    /// This claim's lease expiry, as the database wrote it.
    pub leased_until: SystemTime,
}

/// A claimed delivery: everything needed to attempt it, read in the claim
/// statement so no further query runs before the HTTP call. `Debug` hides
/// the secrets, the extra headers (they may hold credentials) and the TLS
/// key.
#[derive(Clone)]
pub struct Job {
    /// Which delivery, and the fence of this claim on it.
    pub claim: Claim,
    /// The attempt's place in the retry schedule, 1-based: equal to
    /// `attempt` unless the delivery was replayed, which restarts it.
    pub schedule_attempt: i32,
    /// Target endpoint id.
    pub endpoint_id: String,
    /// The message's ordering key, if any.
    pub ordering_key: Option<String>,
    /// `webhook-id`.
    pub event_id: String,
    /// `messages.event_type`, for logs.
    pub event_type: String,
    /// The request body: the payload as JSON text.
    pub payload: Payload,
    /// Endpoint URL.
    pub url: String,
    /// Endpoint secrets as stored (`whsec_...`); parsed per attempt so that
    /// a malformed one fails this delivery, not the sidecar.
    pub secrets: Vec<String>,
    /// Endpoint-specific timeout, if any.
    pub timeout: Option<Duration>,
    /// Endpoint's extra headers as a JSON object text.
    pub headers: String,
    /// When the claim was read: how long ago the message was created
    /// (database clock), for the end-to-end lag metric.
    pub age_at_claim: Duration,
    /// When the claim was read, on the local monotonic clock.
    pub claimed_at: Instant,
    /// The database's clock during the claim: with the monotonic time
    /// since [`claimed_at`](Self::claimed_at), what "now" means for
    /// `webhook-timestamp` (see [`Job::now`]).
    pub db_now_at_claim: SystemTime,
    /// Endpoint's own TLS settings.
    pub tls: EndpointTls,
    /// The endpoint's own retry schedule (`endpoints.retry_schedule`),
    /// overriding the sidecar's; `None` for the sidecar's.
    pub retry_schedule: Option<Vec<Duration>>,
}

impl Job {
    /// Now by the database's clock: its time at the claim plus the local
    /// monotonic time since. The local wall clock is never read, so a
    /// sidecar whose clock is hours off still signs timestamps receivers
    /// accept (they compare with their own, NTP-synchronised, clocks).
    pub fn now(&self) -> SystemTime {
        self.db_now_at_claim + self.claimed_at.elapsed()
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("claim", &self.claim)
            .field("endpoint_id", &self.endpoint_id)
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("payload_bytes", &self.payload.len())
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("timeout", &self.timeout)
            .field("headers", &format_args!("<redacted>"))
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// An endpoint's TLS settings (`outbox.endpoints.ca_pem`, ...). All `None`:
/// the system roots and no client certificate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EndpointTls {
    /// CA certificates (PEM) that alone are trusted for this endpoint.
    pub ca_pem: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub client_cert_pem: Option<String>,
    /// Its private key (PEM). A secret.
    pub client_key_pem: Option<String>,
}

impl EndpointTls {
    /// Whether the shared client (system roots, no client identity) fits.
    pub fn is_default(&self) -> bool {
        self.ca_pem.is_none() && self.client_cert_pem.is_none() && self.client_key_pem.is_none()
    }
}

impl fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointTls")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_identity", &self.client_cert_pem.is_some())
            .finish()
    }
}
