//! The HTTP side of an attempt: pick the endpoint's client (see
//! [`super::client`]), check the target against the SSRF guard where the
//! client cannot, send Standard Webhooks headers, and read the response up
//! to a cap.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};

use super::Job;
pub use super::client::ClientError;
use super::client::Clients;
use super::egress::{self, EgressPolicy, ResolveError};
use super::outcome::{self, AttemptRecord, Exchange, Outcome};
use crate::config::Config;
use crate::retry::{RetryPolicy, parse_retry_after};
use crate::signature::{self, SigningKey};

/// At most this much of a response body is ever read.
pub const RESPONSE_READ_CAP: usize = 64 * 1024;
/// At most this much of it is stored in `attempts.response_excerpt`.
pub const RESPONSE_EXCERPT_CAP: usize = 4 * 1024;

const USER_AGENT_VALUE: &str = concat!("outboxd/", env!("CARGO_PKG_VERSION"));

/// Performs attempts. Cheap to clone: the connection pools are shared.
#[derive(Clone)]
pub struct Deliverer {
    clients: Arc<Clients>,
    egress: Arc<EgressPolicy>,
    default_timeout: Duration,
    /// See [`Config::longest_request`].
    longest_request: Duration,
    /// Shared: the dispatcher clones the deliverer into every delivery
    /// task, which must not copy the schedule each time.
    retry: Arc<RetryPolicy>,
}

impl Deliverer {
    /// The clients for the whole sidecar.
    pub fn new(config: &Config) -> Result<Self, ClientError> {
        // reqwest is built without a bundled crypto provider; use ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let egress = Arc::new(EgressPolicy::new(config.allow_networks.clone()));
        Ok(Self {
            clients: Arc::new(Clients::new(config, egress.clone())?),
            egress,
            default_timeout: config.request_timeout,
            longest_request: config.longest_request(),
            retry: Arc::new(config.retry.clone()),
        })
    }

    /// Attempts `job` once and judges the result. Never fails: every problem
    /// becomes part of the outcome.
    pub async fn deliver(&self, job: &Job) -> Outcome {
        // The database's clock, as leases and schedules use: see Job::now.
        let started_at = job.now();
        let clock = Instant::now();
        let timeout = Timeout::for_job(job, self.default_timeout, self.longest_request);
        let (exchange, excerpt) = match self.prepare(job, started_at).await {
            Ok(request) => self.send(request, timeout).await,
            Err(exchange) => (exchange, None),
        };
        let attempt = job.schedule_attempt.max(1) as u32;
        let judgement = match &job.retry_schedule {
            Some(schedule) => {
                outcome::judge(&self.retry.for_endpoint(schedule), attempt, &exchange)
            }
            None => outcome::judge(&self.retry, attempt, &exchange),
        };
        let status_code = match exchange {
            Exchange::Answered { status, .. } => Some(status),
            _ => None,
        };
        let record = AttemptRecord {
            started_at,
            duration: clock.elapsed(),
            status_code,
            error: judgement.error,
            response_excerpt: excerpt,
        };
        Outcome::attempted(job, judgement.verdict, record)
            .disabling_endpoint(judgement.disable_endpoint)
    }

    /// The signed request, or why it cannot be sent.
    async fn prepare(
        &self,
        job: &Job,
        now: SystemTime,
    ) -> Result<reqwest::RequestBuilder, Exchange> {
        let invalid = |error: String| Exchange::Invalid { error };
        let url =
            reqwest::Url::parse(&job.url).map_err(|e| invalid(format!("endpoint url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "endpoint url: scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        self.check_target(&url).await?;
        let client = self
            .clients
            .for_endpoint(&job.endpoint_id, &job.tls)
            .map_err(invalid)?;
        self.build(client, url, job, now).map_err(invalid)
    }

    /// The SSRF checks the client cannot make itself: IP literals never
    /// reach its resolver, and behind a proxy it resolves nothing.
    async fn check_target(&self, url: &reqwest::Url) -> Result<(), Exchange> {
        let refused = |refused: egress::Refused| Exchange::Invalid {
            error: refused.to_string(),
        };
        self.egress.check_literal(url).map_err(refused)?;
        if !self.clients.proxied() {
            return Ok(());
        }
        let Some(host) = url.domain() else {
            return Ok(());
        };
        match self.egress.resolve(host).await {
            Ok(_) => Ok(()),
            Err(ResolveError::Refused(r)) => Err(refused(r)),
            // The proxy may well resolve what we cannot; it decides.
            Err(ResolveError::Lookup(_) | ResolveError::NoAddress) => Ok(()),
        }
    }

    fn build(
        &self,
        client: reqwest::Client,
        url: reqwest::Url,
        job: &Job,
        now: SystemTime,
    ) -> Result<reqwest::RequestBuilder, String> {
        let keys = job
            .secrets
            .iter()
            .enumerate()
            .map(|(i, text)| {
                SigningKey::parse(text).map_err(|e| format!("endpoint secret #{}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timestamp = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature =
            signature::sign_with(&keys, &job.event_id, timestamp, job.payload.as_bytes());

        let mut headers = extra_headers(&job.headers)?;
        let webhook = [
            ("webhook-id", job.event_id.as_str()),
            ("webhook-timestamp", &timestamp.to_string()),
            ("webhook-signature", &signature),
        ];
        for (name, value) in webhook {
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("{name} contains characters not allowed in a header"))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        Ok(client.post(url).headers(headers).body(job.payload.body()))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Timeout,
    ) -> (Exchange, Option<String>) {
        let mut response = match request.timeout(timeout.after).send().await {
            Ok(response) => response,
            Err(error) => {
                let exchange = match egress::refusal_in(&error) {
                    Some(refused) => Exchange::Invalid {
                        error: refused.to_string(),
                    },
                    None => Exchange::Failed {
                        error: describe(&error, timeout),
                    },
                };
                return (exchange, None);
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let excerpt = read_excerpt(&mut response).await;
        (
            Exchange::Answered {
                status,
                retry_after,
            },
            excerpt,
        )
    }
}

/// Reads at most [`RESPONSE_READ_CAP`] bytes and keeps the first
/// [`RESPONSE_EXCERPT_CAP`]. A body that fails midway keeps what arrived:
/// the status line already decided the outcome.
async fn read_excerpt(response: &mut reqwest::Response) -> Option<String> {
    // Sized once from Content-Length when there is one: a request in
    // flight then holds no more than its excerpt needs.
    let expected = response
        .content_length()
        .map_or(RESPONSE_EXCERPT_CAP, |n| n as usize);
    let mut kept = Vec::with_capacity(expected.min(RESPONSE_EXCERPT_CAP));
    let mut read = 0usize;
    while read < RESPONSE_READ_CAP {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                let room = RESPONSE_EXCERPT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    if kept.is_empty() {
        return None;
    }
    // The cut may split a UTF-8 character; valid text is kept as it is,
    // without a copy.
    let text = String::from_utf8(kept)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
    // Postgres text cannot hold NUL.
    Some(if text.contains('\0') {
        text.replace('\0', "\u{fffd}")
    } else {
        text
    })
}

/// Headers that belong to HTTP itself: the target, the body's framing and
/// hop-by-hop ones. An endpoint setting them could send a request to
/// another virtual host or cut the body short. `outbox.check_endpoint`
/// refuses them at insert; this refuses rows stored before it did.
const HTTP_OWN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Endpoint headers from `endpoints.headers`; `webhook-*`, content type and
/// user agent are ours and are set after these, so they cannot be replaced.
fn extra_headers(json: &str) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|_| "endpoint headers are not a JSON object".to_owned())?;
    for (name, value) in object {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("endpoint header {name:?} is not a valid header name"))?;
        if HTTP_OWN_HEADERS.contains(&header.as_str()) || header.as_str().starts_with("proxy-") {
            return Err(format!(
                "endpoint header {name:?} may not be set per endpoint (it belongs to HTTP)"
            ));
        }
        let serde_json::Value::String(value) = value else {
            return Err(format!("endpoint header {name:?} must be a string"));
        };
        // The value is not echoed: it may be a credential.
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("endpoint header {name:?} has an invalid value"))?;
        headers.insert(header, value);
    }
    Ok(headers)
}

/// How long one attempt may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timeout {
    after: Duration,
    /// The endpoint asked for longer than the lease allows.
    capped: bool,
}

impl Timeout {
    /// The endpoint's `timeout_ms`, else `default`, at most `longest`.
    fn for_job(job: &Job, default: Duration, longest: Duration) -> Self {
        let wanted = job.timeout.unwrap_or(default);
        Self {
            after: wanted.min(longest),
            capped: wanted > longest,
        }
    }
}

/// A transport error as one line, without the URL (it may carry a token).
fn describe(error: &reqwest::Error, timeout: Timeout) -> String {
    if error.is_timeout() {
        let after = humantime::format_duration(timeout.after);
        return match timeout.capped {
            false => format!("timed out after {after}"),
            true => format!(
                "timed out after {after} (the endpoint's timeout_ms is capped at --lease minus 5s)"
            ),
        };
    }
    if let Some(problem) = tls_problem(error) {
        return problem;
    }
    let kind = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A TLS failure in words an operator can act on, if that is what
/// `error` is. rustls errors travel inside (nested) `io::Error`s, whose
/// `source()` skips them, so those are unwrapped by hand.
fn tls_problem(error: &reqwest::Error) -> Option<String> {
    use rustls::{AlertDescription, Error as Tls};
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(mut level) = current {
        while let Some(inner) = level
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            level = inner;
        }
        if let Some(tls) = level.downcast_ref::<Tls>() {
            return Some(match tls {
                Tls::InvalidCertificate(why) => format!(
                    "TLS: the server's certificate is not trusted ({why:?}); \
                     for a private CA set the endpoint's ca_pem"
                ),
                Tls::AlertReceived(AlertDescription::CertificateRequired) => {
                    "TLS: the server requires a client certificate \
                     (set the endpoint's client_cert_pem and client_key_pem)"
                        .to_owned()
                }
                Tls::AlertReceived(alert) => {
                    format!("TLS: the server refused the handshake (alert {alert:?})")
                }
                other => format!("TLS: {other}"),
            });
        }
        current = level.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_headers_accept_strings_and_refuse_the_rest() {
        let h = extra_headers(r#"{"authorization":"Bearer t","x-team":"a"}"#).unwrap();
        assert_eq!(h["x-team"], "a");
        assert!(
            extra_headers(r#"{"x":1}"#)
                .unwrap_err()
                .contains("must be a string")
        );
        assert!(
            extra_headers(r#"{"bad name":"v"}"#)
                .unwrap_err()
                .contains("not a valid header name")
        );
        let err = extra_headers(r#"{"x":"secret\nvalue"}"#).unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert!(extra_headers("[]").is_err());
    }

    #[test]
    fn extra_headers_refuse_what_belongs_to_http() {
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "connection",
            "proxy-authorization",
        ] {
            let err = extra_headers(&format!(r#"{{"{name}":"x"}}"#)).unwrap_err();
            assert!(err.contains("may not be set"), "{name}: {err}");
        }
        assert!(extra_headers(r#"{"x-host":"a","authorization":"b"}"#).is_ok());
    }
}
