//! Delivering one claimed row: sign it, POST it, read a bounded answer, and
//! judge the result. Owns nothing in the database; what it returns is an
//! [`Outcome`] for the writer.
//!
//! - [`request`] builds the signed request and performs it;
//! - [`outcome`] turns what happened into the delivery's next state;
//! - [`egress`] decides which addresses may be connected to (SSRF guard).

pub mod egress;
pub mod outcome;
pub mod request;

use std::time::Duration;

pub use outcome::{AttemptRecord, Exchange, Outcome, Verdict};
pub use request::Deliverer;

/// A claimed delivery: everything needed to attempt it, read in the claim
/// statement so no further query runs before the HTTP call.
#[derive(Debug, Clone)]
pub struct Job {
    /// `deliveries.id`.
    pub delivery_id: i64,
    /// This claim's attempt number, 1-based (fences the outcome write).
    pub attempt: i32,
    /// Target endpoint id.
    pub endpoint_id: String,
    /// `webhook-id`.
    pub event_id: String,
    /// `messages.event_type`, for logs.
    pub event_type: String,
    /// The request body: the payload as JSON text.
    pub payload: String,
    /// Endpoint URL.
    pub url: String,
    /// Endpoint secrets as stored (`whsec_...`); parsed per attempt so that
    /// a malformed one fails this delivery, not the sidecar.
    pub secrets: Vec<String>,
    /// Endpoint-specific timeout, if any.
    pub timeout: Option<Duration>,
    /// Endpoint's extra headers as a JSON object text.
    pub headers: String,
}
