//! When to try a failed delivery again: the retry schedule, its jitter, and
//! the receiver's `Retry-After`. Pure functions of their inputs (randomness
//! aside), so the policy is unit-tested here and the database only stores
//! the resulting delay.

use std::time::{Duration, SystemTime};

/// The default schedule, close to Svix's: the delay before each attempt.
pub const DEFAULT_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

/// How long a `Retry-After` may postpone the next attempt by default.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Spread of the random jitter around each scheduled delay (±20 %), so that
/// deliveries that failed together do not retry together.
const JITTER: f64 = 0.2;

/// The retry policy shared by every delivery of one sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay before attempt `n + 1`; its length is the maximum number of
    /// attempts. The first entry is normally zero (send at once).
    schedule: Vec<Duration>,
    /// Upper bound on a delay asked for by `Retry-After`.
    max_retry_after: Duration,
}

/// Why a retry schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule lists no attempt at all.
    #[error("the retry schedule is empty; give at least one delay, e.g. 0s")]
    Empty,
    /// One entry is not a duration such as `500ms`, `5s`, `2h`.
    #[error("retry schedule entry {entry:?} is not a duration like 500ms, 5s, 5m or 2h")]
    BadEntry {
        /// The offending entry.
        entry: String,
    },
}

impl RetryPolicy {
    /// A policy from explicit delays.
    pub fn new(schedule: Vec<Duration>, max_retry_after: Duration) -> Result<Self, ScheduleError> {
        if schedule.is_empty() {
            return Err(ScheduleError::Empty);
        }
        Ok(Self {
            schedule,
            max_retry_after,
        })
    }

    /// Parses a comma-separated schedule such as `0s,5s,5m,30m`.
    pub fn parse(schedule: &str, max_retry_after: Duration) -> Result<Self, ScheduleError> {
        let delays = schedule
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                humantime::parse_duration(entry).map_err(|_| ScheduleError::BadEntry {
                    entry: entry.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays, max_retry_after)
    }

    /// The schedule as it would be written in `OUTBOXD_RETRY_SCHEDULE`,
    /// plus the Retry-After cap.
    pub fn describe(&self) -> String {
        let delays: Vec<String> = self
            .schedule
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        format!(
            "{} (max {} Retry-After)",
            delays.join(","),
            humantime::format_duration(self.max_retry_after)
        )
    }

    /// This policy with an endpoint's own schedule (`endpoints.retry_schedule`)
    /// instead of the sidecar's; the `Retry-After` cap stays. An empty
    /// schedule (the database refuses one) keeps the sidecar's.
    pub fn for_endpoint(&self, schedule: &[Duration]) -> Self {
        if schedule.is_empty() {
            return self.clone();
        }
        Self {
            schedule: schedule.to_vec(),
            max_retry_after: self.max_retry_after,
        }
    }

    /// The delay before each attempt, in order.
    pub fn delays(&self) -> &[Duration] {
        &self.schedule
    }

    /// The most attempts a delivery gets.
    pub fn max_attempts(&self) -> u32 {
        self.schedule.len() as u32
    }

    /// The delay before the attempt after `attempt` (1-based) failed, or
    /// `None` when that was the last one. `retry_after` is the receiver's
    /// wish (only passed for 429 and 503): the longer of the two wins,
    /// capped at `max_retry_after`.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled = *self.schedule.get(attempt as usize)?;
        let jittered = scheduled.mul_f64(1.0 + JITTER * (2.0 * fastrand::f64() - 1.0));
        let asked = retry_after.map_or(Duration::ZERO, |d| d.min(self.max_retry_after));
        Some(jittered.max(asked))
    }
}

/// Reads a `Retry-After` header: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(schedule: &str) -> RetryPolicy {
        RetryPolicy::parse(schedule, Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn an_endpoint_schedule_replaces_the_delays_but_keeps_the_retry_after_cap() {
        let sidecar = policy("0s,1s,1s,1s");
        let endpoint = sidecar.for_endpoint(&[Duration::ZERO, Duration::from_secs(600)]);
        assert_eq!(endpoint.max_attempts(), 2);
        assert!(endpoint.next_delay(1, None).unwrap() >= Duration::from_secs(480));
        assert_eq!(endpoint.next_delay(2, None), None, "its length is the cap");
        let asked = endpoint
            .next_delay(1, Some(Duration::from_secs(7200)))
            .unwrap();
        assert!(
            asked <= Duration::from_secs(720),
            "Retry-After still capped at 60 s"
        );
        assert_eq!(sidecar.for_endpoint(&[]), sidecar, "empty: the sidecar's");
    }

    #[test]
    fn default_schedule_has_eight_attempts() {
        assert_eq!(policy(DEFAULT_SCHEDULE).max_attempts(), 8);
    }

    #[test]
    fn parses_units_and_rejects_garbage() {
        let p = policy("0s, 500ms,5m,2h");
        assert_eq!(p.schedule[1], Duration::from_millis(500));
        assert_eq!(p.schedule[3], Duration::from_secs(7200));
        assert_eq!(
            RetryPolicy::parse("1s,soon", Duration::ZERO),
            Err(ScheduleError::BadEntry {
                entry: "soon".into()
            })
        );
        assert_eq!(
            RetryPolicy::parse(" , ", Duration::ZERO),
            Err(ScheduleError::Empty)
        );
    }

    #[test]
    fn delay_follows_schedule_within_jitter_and_ends_after_last_attempt() {
        let p = policy("0s,10s,100s");
        for _ in 0..100 {
            let d = p.next_delay(1, None).unwrap();
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
            let d = p.next_delay(2, None).unwrap();
            assert!(
                d >= Duration::from_secs(80) && d <= Duration::from_secs(120),
                "{d:?}"
            );
        }
        assert_eq!(p.next_delay(3, None), None);
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped() {
        let p = policy("0s,1s,1s");
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(3600))),
            Some(Duration::from_secs(60))
        );
        let short = p.next_delay(1, Some(Duration::ZERO)).unwrap();
        assert!(short >= Duration::from_millis(800));
        assert_eq!(p.next_delay(3, Some(Duration::from_secs(5))), None);
    }

    #[test]
    fn parses_retry_after_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("tomorrow", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
