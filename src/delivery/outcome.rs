//! Turning what one HTTP attempt produced into what happens to the delivery
//! next. Failures are data here, not `Err`: every attempt ends in an
//! [`Outcome`] that the writer stores.

use std::time::{Duration, SystemTime};

use super::{Claim, Job};
use crate::retry::RetryPolicy;

/// What one attempt produced on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Exchange {
    /// The receiver answered with a status line.
    Answered {
        /// HTTP status code.
        status: u16,
        /// Parsed `Retry-After`, when present.
        retry_after: Option<Duration>,
    },
    /// No response: timeout, refused or reset connection, TLS failure.
    Failed {
        /// Human-readable reason, free of secrets and URLs.
        error: String,
    },
    /// The attempt could not even be made and retrying cannot help until an
    /// operator fixes the endpoint (malformed secret, bad header).
    Invalid {
        /// What is wrong, free of secrets.
        error: String,
    },
}

/// What becomes of the delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// Try again after this delay.
    Retry(Duration),
    /// Retries exhausted, or retrying cannot help.
    Dead,
    /// Not attempted (shutdown): hand the claim back uncounted.
    Release,
}

impl Verdict {
    /// Its name in metrics (`outcome` label).
    pub fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry(_) => "retry",
            Self::Dead => "dead",
            Self::Release => "released",
        }
    }

    /// The `deliveries.status` this verdict writes.
    pub fn status(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry(_) => "pending",
            Self::Dead => "dead",
            Self::Release => "pending",
        }
    }
}

/// One row of `outbox.attempts`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// When the request started (sidecar clock).
    pub started_at: SystemTime,
    /// How long it took, response body included.
    pub duration: Duration,
    /// The status code, when a response arrived.
    pub status_code: Option<u16>,
    /// Why it failed; `None` on success.
    pub error: Option<String>,
    /// The start of the response body.
    pub response_excerpt: Option<String>,
}

/// The outcome of one claimed delivery, ready to be written back.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The claim this outcome ends (fences the write).
    pub claim: Claim,
    /// The endpoint, for logs and the 410 rule.
    pub endpoint_id: String,
    /// The delivery's ordering key: finishing it may release the next one
    /// of the key, which the writer must do under the key's lock.
    pub ordering_key: Option<String>,
    /// What happens next.
    pub verdict: Verdict,
    /// The attempt to log; `None` for [`Verdict::Release`].
    pub record: Option<AttemptRecord>,
    /// Set when the endpoint must be disabled (410 Gone), with the reason.
    pub disable_endpoint: Option<String>,
}

impl Outcome {
    /// The outcome of an attempt at `job`.
    pub fn attempted(job: &Job, verdict: Verdict, record: AttemptRecord) -> Self {
        Self {
            claim: job.claim,
            endpoint_id: job.endpoint_id.clone(),
            ordering_key: job.ordering_key.clone(),
            verdict,
            record: Some(record),
            disable_endpoint: None,
        }
    }

    /// `job` not attempted (shutdown): its claim is handed back uncounted.
    pub fn released(job: &Job) -> Self {
        Self {
            claim: job.claim,
            endpoint_id: job.endpoint_id.clone(),
            ordering_key: job.ordering_key.clone(),
            verdict: Verdict::Release,
            record: None,
            disable_endpoint: None,
        }
    }

    /// The same outcome, that also disables the endpoint for `reason`.
    pub fn disabling_endpoint(mut self, reason: Option<String>) -> Self {
        self.disable_endpoint = reason;
        self
    }
}

/// The verdict, the error text to record, and whether to disable the
/// endpoint, for one attempt (1-based) that produced `exchange`.
pub fn judge(policy: &RetryPolicy, attempt: u32, exchange: &Exchange) -> Judgement {
    let (error, retry_after, disable) = match exchange {
        Exchange::Answered { status, .. } if (200..300).contains(status) => {
            return Judgement {
                verdict: Verdict::Delivered,
                error: None,
                disable_endpoint: None,
            };
        }
        Exchange::Answered { status: 410, .. } => (
            "HTTP 410 Gone: the endpoint is disabled until re-enabled".to_owned(),
            None,
            Some("the receiver answered 410 Gone".to_owned()),
        ),
        Exchange::Answered {
            status: status @ 300..=399,
            ..
        } => (
            format!("HTTP {status}: redirects are not followed"),
            None,
            None,
        ),
        Exchange::Answered {
            status: status @ (429 | 503),
            retry_after,
        } => (format!("HTTP {status}"), *retry_after, None),
        Exchange::Answered { status, .. } => (format!("HTTP {status}"), None, None),
        Exchange::Failed { error } => (error.clone(), None, None),
        Exchange::Invalid { error } => {
            return Judgement {
                verdict: Verdict::Dead,
                error: Some(error.clone()),
                disable_endpoint: None,
            };
        }
    };
    let verdict = match policy.next_delay(attempt, retry_after) {
        Some(delay) => Verdict::Retry(delay),
        None => Verdict::Dead,
    };
    Judgement {
        verdict,
        error: Some(error),
        disable_endpoint: disable,
    }
}

/// The result of [`judge`].
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// What happens to the delivery.
    pub verdict: Verdict,
    /// The error to record, `None` on success.
    pub error: Option<String>,
    /// Disable the endpoint with this reason.
    pub disable_endpoint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::parse("0s,10s,10s", Duration::from_secs(600)).unwrap()
    }

    fn answered(status: u16) -> Exchange {
        Exchange::Answered {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn any_2xx_is_delivered() {
        for status in [200, 201, 202, 204, 299] {
            let j = judge(&policy(), 1, &answered(status));
            assert_eq!(j.verdict, Verdict::Delivered);
            assert_eq!(j.error, None);
        }
    }

    #[test]
    fn failures_retry_until_the_schedule_ends() {
        for exchange in [
            answered(500),
            answered(404),
            answered(301),
            Exchange::Failed {
                error: "timed out".into(),
            },
        ] {
            assert!(matches!(
                judge(&policy(), 1, &exchange).verdict,
                Verdict::Retry(_)
            ));
            assert!(matches!(
                judge(&policy(), 2, &exchange).verdict,
                Verdict::Retry(_)
            ));
            assert_eq!(judge(&policy(), 3, &exchange).verdict, Verdict::Dead);
        }
    }

    #[test]
    fn redirects_are_failures_that_say_so() {
        let j = judge(&policy(), 1, &answered(302));
        assert_eq!(
            j.error.as_deref(),
            Some("HTTP 302: redirects are not followed")
        );
    }

    #[test]
    fn retry_after_counts_only_on_429_and_503() {
        let ask = Some(Duration::from_secs(300));
        for (status, honoured) in [(429, true), (503, true), (500, false)] {
            let j = judge(
                &policy(),
                1,
                &Exchange::Answered {
                    status,
                    retry_after: ask,
                },
            );
            let Verdict::Retry(delay) = j.verdict else {
                panic!("{status} should retry");
            };
            assert_eq!(
                delay == Duration::from_secs(300),
                honoured,
                "{status}: {delay:?}"
            );
        }
    }

    #[test]
    fn gone_disables_the_endpoint_and_keeps_the_delivery() {
        let j = judge(&policy(), 1, &answered(410));
        assert!(j.disable_endpoint.is_some());
        assert!(matches!(j.verdict, Verdict::Retry(_)));
    }

    #[test]
    fn invalid_endpoints_die_at_once() {
        let j = judge(
            &policy(),
            1,
            &Exchange::Invalid {
                error: "secret 1 is not whsec_ base64".into(),
            },
        );
        assert_eq!(j.verdict, Verdict::Dead);
    }
}
