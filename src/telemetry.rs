//! Every metric outboxd exports, named once here (Prometheus conventions,
//! units in the names), with small recording helpers so call sites stay
//! one line. Labels are bounded: endpoint ids and fixed words, never
//! message ids or URLs.
//!
//! The `metrics` facade has one global recorder per process; [`handle`]
//! installs the Prometheus one on first use and later calls share it (the
//! tests run several sidecars in one process).
//!
//! Histogram samples are buffered until upkeep folds them into buckets. A
//! scrape of `/metrics` does that too, but nobody may be scraping, so
//! [`handle`] also starts one thread, `outboxd-metrics-upkeep`, that runs
//! upkeep every [`UPKEEP_PERIOD`] for the life of the process: memory
//! stays bounded by one period's samples whether or not anyone scrapes.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Ends of attempts, and claims handed back unsent, by endpoint and
/// outcome: `delivered` (2xx), `retry` (failed, another attempt is
/// scheduled), `dead` (failed for good), `released` (claimed but not sent
/// before shutdown; no request was made, the claim is handed back).
pub const DELIVERIES: &str = "outboxd_deliveries_total";
/// HTTP attempt duration, by endpoint.
pub const ATTEMPT_DURATION: &str = "outboxd_attempt_duration_seconds";
/// Message `created_at` to successful delivery, by endpoint.
pub const DELIVERY_LAG: &str = "outboxd_delivery_lag_seconds";
/// Deliveries taken by one claim statement (histogram).
pub const CLAIM_BATCH: &str = "outboxd_claim_batch_deliveries";
/// HTTP requests in flight in this process.
pub const IN_FLIGHT: &str = "outboxd_in_flight_requests";
/// Pending deliveries, by endpoint (the same value from every replica:
/// aggregate with `max`).
pub const BACKLOG: &str = "outboxd_pending_deliveries";
/// Age of the oldest pending delivery, by endpoint.
pub const OLDEST_PENDING: &str = "outboxd_oldest_pending_age_seconds";
/// Dead deliveries kept (until replayed, cancelled or purged), by endpoint.
pub const DEAD: &str = "outboxd_dead_deliveries";
/// 1 for a disabled endpoint, 0 for an enabled one, by endpoint.
pub const DISABLED: &str = "outboxd_endpoint_disabled";
/// 1 when `/readyz` would answer 200, refreshed on every scrape.
pub const READY: &str = "outboxd_ready";
/// Always 1; the `version` label names the running release.
pub const BUILD_INFO: &str = "outboxd_build_info";
/// Database errors, by operation.
pub const DB_ERRORS: &str = "outboxd_db_errors_total";
/// Reconnections, by connection (`listener`, `dispatcher`, `writer`).
pub const RECONNECTS: &str = "outboxd_reconnects_total";
/// Rows deleted by the retention purge, by table.
pub const PURGED: &str = "outboxd_purged_rows_total";

const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0, 7200.0, 36000.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// How often buffered histogram samples are folded into buckets. Memory
/// held for samples is about one period's worth (tens of bytes per
/// delivery), and a tick costs microseconds.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(1);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first call.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(CLAIM_BATCH.into()), BATCH_BUCKETS)
            })
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first (an embedding
        // application's); then ours renders nothing, which is harmless.
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            start_upkeep(handle.clone());
        }
        handle
    })
}

/// Runs upkeep every [`UPKEEP_PERIOD`] on a thread of its own: `handle` may
/// be called outside a Tokio runtime, and the recorder lives as long as the
/// process, so the thread does too.
fn start_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("outboxd-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_PERIOD);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        // Scrapes still drain the samples; only unscraped memory grows.
        tracing::warn!(%error, "cannot start the metrics upkeep thread");
    }
}

fn describe() {
    describe_counter!(
        DELIVERIES,
        "Ends of attempts and claims handed back unsent, by endpoint and outcome: delivered, \
         retry (failed, will retry), dead (failed for good), released (claimed, not sent before \
         shutdown)."
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        metrics::Unit::Seconds,
        "HTTP attempt duration."
    );
    describe_histogram!(
        DELIVERY_LAG,
        metrics::Unit::Seconds,
        "Message creation to successful delivery."
    );
    describe_histogram!(CLAIM_BATCH, "Deliveries taken by one claim statement.");
    describe_gauge!(IN_FLIGHT, "HTTP requests in flight in this process.");
    describe_gauge!(
        BACKLOG,
        "Pending deliveries per endpoint (the same from every replica: use max)."
    );
    describe_gauge!(
        OLDEST_PENDING,
        metrics::Unit::Seconds,
        "Age of the oldest pending delivery per endpoint."
    );
    describe_gauge!(DEAD, "Dead deliveries kept per endpoint (awaiting replay).");
    describe_gauge!(DISABLED, "1 when the endpoint is disabled, else 0.");
    describe_gauge!(
        READY,
        "1 when /readyz would answer 200, else 0 (refreshed per scrape)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the release.");
    describe_counter!(DB_ERRORS, "Database errors, by operation.");
    describe_counter!(RECONNECTS, "Database reconnections, by connection.");
    describe_counter!(PURGED, "Rows deleted by the retention purge, by table.");
}

/// Records one claim of `rows` rows.
pub fn claimed(rows: usize) {
    histogram!(CLAIM_BATCH).record(rows as f64);
}

/// Marks a request as started (`+1`) or finished (`-1`).
pub fn in_flight(delta: f64) {
    gauge!(IN_FLIGHT).increment(delta);
}

/// Records a finished attempt (or release) at `endpoint`: `outcome` names
/// what became of the delivery; `duration` is the request's, when one was
/// made; `lag`, from the message's creation to its delivery.
pub fn outcome(
    endpoint: &str,
    outcome: &'static str,
    duration: Option<Duration>,
    lag: Option<Duration>,
) {
    let endpoint = endpoint.to_owned();
    counter!(DELIVERIES, "endpoint" => endpoint.clone(), "outcome" => outcome).increment(1);
    if let Some(duration) = duration {
        histogram!(ATTEMPT_DURATION, "endpoint" => endpoint.clone()).record(duration.as_secs_f64());
    }
    if let Some(lag) = lag {
        histogram!(DELIVERY_LAG, "endpoint" => endpoint).record(lag.as_secs_f64());
    }
}

/// Counts a database error during `operation`.
pub fn db_error(operation: &'static str) {
    counter!(DB_ERRORS, "operation" => operation).increment(1);
}

/// Counts a (re)connection of `connection`.
pub fn reconnect(connection: &'static str) {
    counter!(RECONNECTS, "connection" => connection).increment(1);
}

/// What the housekeeping reads per endpoint for the gauges.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    /// Pending deliveries.
    pub pending: i64,
    /// Age of the oldest pending delivery, if any.
    pub oldest: Option<Duration>,
    /// Dead deliveries kept.
    pub dead: i64,
    /// Whether the endpoint is enabled.
    pub enabled: bool,
}

/// Publishes an endpoint's backlog, dead count and whether it is disabled.
pub fn backlog(endpoint: &str, backlog: Backlog) {
    gauge!(BACKLOG, "endpoint" => endpoint.to_owned()).set(backlog.pending as f64);
    gauge!(OLDEST_PENDING, "endpoint" => endpoint.to_owned())
        .set(backlog.oldest.map_or(0.0, |d| d.as_secs_f64()));
    gauge!(DEAD, "endpoint" => endpoint.to_owned()).set(backlog.dead as f64);
    gauge!(DISABLED, "endpoint" => endpoint.to_owned()).set(if backlog.enabled {
        0.0
    } else {
        1.0
    });
}

/// Publishes whether the sidecar is ready (as `/readyz` answers).
pub fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// Counts purged rows of `table`.
pub fn purged(table: &'static str, rows: u64) {
    counter!(PURGED, "table" => table).increment(rows);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Set in the child process that
    /// `unscraped_histograms_do_not_grow_memory` starts.
    const CHILD: &str = "OUTBOXD_TELEMETRY_MEMORY_CHILD";
    const CHILD_TEST: &str = "telemetry::tests::record_for_a_while_without_scraping";
    /// Samples per second the child records (one `claimed` each).
    const RATE: u64 = 1_000_000;

    /// Resident set size of this process, in KiB.
    fn rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        pages * page / 1024
    }

    /// Records `RATE` samples a second for `duration`, paced in 10 ms
    /// slices so that the rate, not the machine's speed, sets the volume.
    fn record_for(duration: Duration) -> u64 {
        let start = Instant::now();
        let mut recorded = 0;
        while start.elapsed() < duration {
            let due = RATE * start.elapsed().as_millis() as u64 / 1000 + RATE / 100;
            while recorded < due {
                claimed(1);
                recorded += 1;
            }
            // Pacing, not synchronisation: nothing is awaited here.
            std::thread::sleep(Duration::from_millis(10));
        }
        recorded
    }

    #[test]
    #[ignore = "the child of unscraped_histograms_do_not_grow_memory"]
    fn record_for_a_while_without_scraping() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        handle();
        // Warm up: the allocator holds what at most one upkeep period of
        // samples needs; from here on the resident size should stay flat.
        let warm = record_for(Duration::from_millis(1500));
        let before = rss_kib();
        let measured = record_for(Duration::from_secs(4));
        println!(
            "samples={} rss_growth_kib={}",
            warm + measured,
            rss_kib().saturating_sub(before)
        );
    }

    /// Histogram samples are buffered until upkeep drains them into
    /// buckets; without upkeep (and without scrapes) they pile up. Measured
    /// in a child process, where nothing else allocates.
    #[test]
    fn unscraped_histograms_do_not_grow_memory() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                CHILD_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("re-running the test binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let growth: u64 = stdout
            .split_whitespace()
            .find_map(|word| word.strip_prefix("rss_growth_kib="))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no measurement in {stdout}"));
        // Four million samples unscraped held 50 to 75 MB before upkeep
        // ran; with it, at most a period's worth stays, even when a busy
        // machine delays an upkeep.
        assert!(
            growth < 12 * 1024,
            "resident size grew by {growth} KiB: {stdout}"
        );
    }
}
