//! When the dispatcher looks for work: the one place that decides how long
//! it sits idle after a drain, and when it is listed in `outbox.waiting`
//! (the table producers read to decide whether to NOTIFY). Pure state and
//! arithmetic, so the sequences of waits are unit-tested without a
//! database.
//!
//! In notify mode a worker that found work lingers: it looks again every
//! [`LINGER_POLL`] for [`LINGER`] and stays out of `outbox.waiting`, so
//! producers of a steady stream skip NOTIFY (which serialises their
//! commits) and claims pick up several rows at once. Having gone idle, it
//! enters `outbox.waiting` and looks again after each of
//! [`IDLE_RECHECKS`], then every poll interval, or sooner when a scheduled
//! row falls due.

use std::time::{Duration, Instant};

/// After an empty claim while a row is overdue (locked by another replica's
/// claim in progress), look again this soon rather than spin.
pub const OVERDUE_RECHECK: Duration = Duration::from_millis(25);

/// Having gone idle, look again after these delays: producers that checked
/// `outbox.waiting` while this sidecar was not in it did not NOTIFY, and
/// may commit just after its last claim. The first look, at once, finds
/// rows committed before this sidecar entered `outbox.waiting`; the later
/// ones, rows of transactions that were still open then.
pub const IDLE_RECHECKS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(5),
    Duration::from_millis(50),
];

/// In notify mode, after a claim that found work, look again this often
/// for [`LINGER`] instead of waiting in `outbox.waiting`. Traffic sparser
/// than that is woken by NOTIFY, which costs little at low rates.
pub const LINGER_POLL: Duration = Duration::from_millis(2);
/// How long a worker lingers after its last claim that found work.
pub const LINGER: Duration = Duration::from_millis(10);

/// The dispatcher's pacing state.
#[derive(Debug)]
pub struct Pace {
    /// Notify mode: producers NOTIFY the workers in `outbox.waiting`.
    notify: bool,
    /// The longest idle wait (`--poll-interval`).
    poll_interval: Duration,
    /// Lingering (notify mode) until then.
    linger_until: Option<Instant>,
    /// The quick looks still to take after going idle.
    rechecks: &'static [Duration],
    /// Whether this worker may have a row in `outbox.waiting`. A worker
    /// starts out listed: a row left by an earlier run of the same worker
    /// id must be removed when it starts working.
    waiting: bool,
}

/// What a drain must ask the database once its claims came back short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Nothing: still lingering, look again after this long.
    LookAgainIn(Duration),
    /// When the next delivery is due ([`Pace::idle`] takes the answer);
    /// with `wait_for_notify`, also enter `outbox.waiting`.
    AskNextDue {
        /// Enter (or refresh this worker's row in) `outbox.waiting`.
        wait_for_notify: bool,
    },
}

impl Pace {
    /// A worker in notify mode (`notify`) or polling, that idles at most
    /// `poll_interval`.
    pub fn new(notify: bool, poll_interval: Duration) -> Self {
        Self {
            notify,
            poll_interval,
            linger_until: None,
            rechecks: &[],
            waiting: notify,
        }
    }

    /// Whether this worker may be listed in `outbox.waiting` (to leave it
    /// at shutdown).
    pub fn may_be_waiting(&self) -> bool {
        self.waiting
    }

    /// A claim found work at `now`. `true`: leave `outbox.waiting` now
    /// (busy, and looking again soon, so producers need not NOTIFY it).
    pub fn found_work(&mut self, now: Instant) -> bool {
        if self.notify {
            self.linger_until = Some(now + LINGER);
        } else {
            self.rechecks = &IDLE_RECHECKS;
        }
        std::mem::replace(&mut self.waiting, false)
    }

    /// The claims came back short at `now`; `worked` says whether any of
    /// this drain's claims found work. Says what to ask next.
    pub fn settle(&mut self, worked: bool, now: Instant) -> Settle {
        let lingering = self.linger_until.is_some_and(|until| now < until);
        if self.notify && (worked || lingering) {
            // Looking again within LINGER_POLL anyway: the schedule can wait.
            return Settle::LookAgainIn(LINGER_POLL);
        }
        if self.notify && !self.waiting {
            // Going idle: listed from now on, so look again quickly for
            // what producers committed without notifying.
            self.waiting = true;
            self.rechecks = &IDLE_RECHECKS;
        }
        Settle::AskNextDue {
            wait_for_notify: self.notify,
        }
    }

    /// How long to idle, given when the next delivery is due (`None`:
    /// nothing is open, zero: overdue) and whether this drain found work.
    pub fn idle(&mut self, worked: bool, next_due: Option<Duration>) -> Duration {
        let idle = match next_due {
            // Due but not claimable: another replica is claiming it.
            Some(Duration::ZERO) if !worked => OVERDUE_RECHECK,
            Some(due) => due.min(self.poll_interval),
            None => self.poll_interval,
        };
        match self.rechecks.split_first() {
            Some((soon, rest)) => {
                self.rechecks = rest;
                idle.min(*soon)
            }
            None => idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_millis(500);

    /// One drain: claims that found work or not, then the wait it ends in.
    fn drain(pace: &mut Pace, worked: bool, now: Instant, due: Option<Duration>) -> Duration {
        if worked {
            pace.found_work(now);
        }
        match pace.settle(worked, now) {
            Settle::LookAgainIn(wait) => wait,
            Settle::AskNextDue { .. } => pace.idle(worked, due),
        }
    }

    #[test]
    fn an_idle_notify_worker_enters_waiting_then_looks_again_quickly_then_every_poll() {
        let mut pace = Pace::new(true, POLL);
        let now = Instant::now();
        // It starts listed (an earlier run's row), so no recheck burst.
        assert_eq!(
            pace.settle(false, now),
            Settle::AskNextDue {
                wait_for_notify: true
            }
        );
        assert_eq!(pace.idle(false, None), POLL);
        // Work, then idle: leaves waiting, lingers, re-enters with rechecks.
        assert!(pace.found_work(now), "listed: must leave outbox.waiting");
        assert!(!pace.may_be_waiting());
        assert_eq!(pace.settle(true, now), Settle::LookAgainIn(LINGER_POLL));
        let later = now + LINGER;
        let waits: Vec<Duration> = (0..5)
            .map(|_| drain(&mut pace, false, later, None))
            .collect();
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                Duration::from_millis(5),
                Duration::from_millis(50),
                POLL,
                POLL
            ]
        );
        assert!(pace.may_be_waiting());
    }

    #[test]
    fn a_notify_worker_lingers_after_work_without_asking_the_database() {
        let mut pace = Pace::new(true, POLL);
        let start = Instant::now();
        assert_eq!(drain(&mut pace, true, start, None), LINGER_POLL);
        // Empty drains within LINGER keep polling fast and stay unlisted.
        let mut now = start;
        while now < start + LINGER {
            assert_eq!(pace.settle(false, now), Settle::LookAgainIn(LINGER_POLL));
            now += LINGER_POLL;
        }
        assert!(!pace.may_be_waiting());
        // Work found while lingering extends it.
        assert!(!pace.found_work(now), "not listed: nothing to leave");
        assert_eq!(
            pace.settle(false, now + LINGER / 2),
            Settle::LookAgainIn(LINGER_POLL)
        );
        assert!(matches!(
            pace.settle(false, now + LINGER),
            Settle::AskNextDue { .. }
        ));
    }

    #[test]
    fn a_due_row_shortens_the_wait_and_an_overdue_one_is_rechecked_not_spun_on() {
        let mut pace = Pace::new(false, POLL);
        let now = Instant::now();
        assert_eq!(
            drain(&mut pace, false, now, Some(Duration::from_millis(70))),
            Duration::from_millis(70)
        );
        assert_eq!(
            drain(&mut pace, false, now, Some(Duration::from_secs(60))),
            POLL
        );
        // Overdue yet nothing claimed: another replica holds it.
        assert_eq!(
            drain(&mut pace, false, now, Some(Duration::ZERO)),
            OVERDUE_RECHECK
        );
        // Still, an infinitely distant due (a keyed row behind its head)
        // waits one poll.
        assert_eq!(drain(&mut pace, false, now, Some(Duration::MAX)), POLL);
    }

    #[test]
    fn a_polling_worker_never_lists_itself_and_rechecks_after_work() {
        let mut pace = Pace::new(false, POLL);
        let now = Instant::now();
        assert!(!pace.may_be_waiting());
        assert_eq!(
            pace.settle(false, now),
            Settle::AskNextDue {
                wait_for_notify: false
            }
        );
        assert_eq!(pace.idle(false, None), POLL);
        assert!(!pace.found_work(now));
        assert_eq!(
            pace.settle(true, now),
            Settle::AskNextDue {
                wait_for_notify: false
            }
        );
        // A due-now row right after work is not "overdue": claim at once.
        assert_eq!(pace.idle(true, Some(Duration::ZERO)), Duration::ZERO);
        let waits: Vec<Duration> = (0..3).map(|_| drain(&mut pace, false, now, None)).collect();
        assert_eq!(
            waits,
            [Duration::from_millis(5), Duration::from_millis(50), POLL]
        );
        assert!(!pace.may_be_waiting());
    }
}
