//! How many wrong tokens the sign-in form takes: [`MAX_FAILURES`] in any
//! [`WINDOW`], then every sign-in is refused until the oldest of them is a
//! window old. One count for everybody, not one per address: behind a
//! port-forward or a proxy every browser has the same address. Someone
//! guessing can so lock the person on call out for a minute at most, and
//! the sidecar's delivery is never affected; a token of 16 characters or
//! more is out of reach at this pace anyway.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens accepted within a [`WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// The span over which wrong tokens are counted.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Recent wrong tokens.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<VecDeque<Instant>>,
}

impl Throttle {
    /// `Err(wait)`: refuse a sign-in at `now`, and say how long until one
    /// is taken again.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let mut failures = self.lock();
        while failures
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= WINDOW)
        {
            failures.pop_front();
        }
        match failures.front() {
            Some(&oldest) if failures.len() >= MAX_FAILURES => {
                Err(WINDOW.saturating_sub(now.saturating_duration_since(oldest)))
            }
            _ => Ok(()),
        }
    }

    /// A wrong token was typed at `now`.
    pub fn failed(&self, now: Instant) {
        let mut failures = self.lock();
        failures.push_back(now);
        // Only the newest MAX_FAILURES decide anything.
        while failures.len() > MAX_FAILURES {
            failures.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_wrong_tokens_a_minute_then_nothing_until_the_oldest_is_a_minute_old() {
        let throttle = Throttle::default();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        for n in 0..MAX_FAILURES as u64 {
            assert_eq!(throttle.check(at(n * 10)), Ok(()));
            throttle.failed(at(n * 10));
        }
        // Failures at 0, 10, 20, 30 and 40 s.
        assert_eq!(throttle.check(at(45)), Err(Duration::from_secs(15)));
        assert_eq!(throttle.check(at(59)), Err(Duration::from_secs(1)));
        // The one at 0 s has aged out: one more try.
        assert_eq!(throttle.check(at(60)), Ok(()));
        throttle.failed(at(60));
        assert_eq!(throttle.check(at(61)), Err(Duration::from_secs(9)));
        // All aged out.
        assert_eq!(throttle.check(at(200)), Ok(()));
    }

    #[test]
    fn wrong_tokens_spread_out_are_never_refused() {
        let throttle = Throttle::default();
        let start = Instant::now();
        for n in 0..100u64 {
            let now = start + Duration::from_secs(n * 13);
            assert_eq!(throttle.check(now), Ok(()), "try {n}");
            throttle.failed(now);
        }
    }
}
