//! The benchmark's result: one JSON object (`--json`, keys with units) or a
//! table for people.

use serde_json::json;

use super::{Bench, Options};
use crate::table;

/// Commit-to-receipt percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The load actually offered, messages per second.
    pub offered_per_sec: f64,
}

/// Single-row inserts per second by 8 producers, per wake-up mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerRates {
    /// The same rows into a plain table with no trigger, no sidecar.
    pub plain_table: f64,
    /// Into `outbox.messages` with the NOTIFY trigger off and no sidecar
    /// running: what the outbox costs the application's insert, on the
    /// same terms as `plain_table`.
    pub no_sidecar: f64,
    /// The NOTIFY trigger off.
    pub no_trigger: f64,
    /// The NOTIFY trigger on, a listener connected.
    pub notify_trigger: f64,
    /// The trigger off, a logical slot being read.
    pub logical: f64,
}

impl ProducerRates {
    /// What the outbox's insert costs: `no_sidecar / plain_table`.
    pub fn no_sidecar_to_plain_table(&self) -> f64 {
        if self.plain_table > 0.0 {
            self.no_sidecar / self.plain_table
        } else {
            0.0
        }
    }

    /// What the outbox and a sidecar delivering beside the producers (on
    /// the same CPUs) leave of the application's insert rate:
    /// `no_trigger / plain_table`.
    pub fn no_trigger_to_plain_table(&self) -> f64 {
        if self.plain_table > 0.0 {
            self.no_trigger / self.plain_table
        } else {
            0.0
        }
    }
}

/// Everything measured in one run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// CPU cores available.
    pub cores: usize,
    /// Memory of the machine.
    pub memory_bytes: u64,
    /// `SHOW server_version`.
    pub postgres_version: String,
    /// What was measured, and how big (the run's options).
    pub options: Options,
    /// Sustained drain rate, outcomes written.
    pub deliveries_per_sec: f64,
    /// Deliveries checked to have arrived exactly once, verified.
    pub delivered_exactly_once: u64,
    /// At half the sustained rate.
    pub latency_ms: Latency,
    /// Single messages 20 ms apart.
    pub latency_low_load_ms: Latency,
    /// The same with logical wake-up (NOTIFY trigger off).
    pub latency_low_load_logical_ms: Latency,
    /// Claim + complete without HTTP.
    pub ceiling_claim_rows_per_sec: f64,
    /// Signed POSTs without the database.
    pub ceiling_http_per_sec: f64,
    /// With a receiver latency, what the HTTP ceiling cannot exceed
    /// whatever the CPU: requests in flight / latency.
    pub ceiling_http_latency_bound_per_sec: Option<f64>,
    /// `1 / (1/claim + 1/http)`.
    pub ceiling_combined_per_sec: f64,
    /// `deliveries_per_sec / ceiling_combined_per_sec`.
    pub efficiency: f64,
    /// Producer insert rates.
    pub producer_inserts_per_sec: ProducerRates,
    /// Median claim time with empty tables.
    pub claim_ms_empty: f64,
    /// Median claim time beside `finished_rows` finished rows.
    pub claim_ms_with_finished: f64,
    /// Largest peak RSS of a sidecar while draining.
    pub peak_rss_bytes: u64,
    /// Connections the receiver accepted from the drain's sidecars (drain
    /// and both latency phases): with connection reuse, about the
    /// requests they had in flight at most, not one per delivery.
    pub receiver_connections_drain: u64,
    /// Sidecar CPU time per 1,000 deliveries while draining.
    pub cpu_ms_per_1k_deliveries: f64,
}

impl Report {
    /// A report with the machine and the options filled in.
    pub async fn new(bench: &Bench) -> anyhow::Result<Self> {
        let version: String = bench
            .client
            .query_one("SHOW server_version", &[])
            .await?
            .get(0);
        Ok(Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: memory_bytes(),
            postgres_version: version,
            options: bench.options.clone(),
            ..Self::default()
        })
    }

    /// Derives the combined ceiling and the efficiency.
    pub fn finish(&mut self) {
        let latency = self.options.receiver_latency.as_secs_f64();
        if latency > 0.0 {
            let in_flight = self.options.concurrency as f64 * f64::from(self.options.replicas);
            self.ceiling_http_latency_bound_per_sec = Some(in_flight / latency);
        }
        let (claim, http) = (self.ceiling_claim_rows_per_sec, self.ceiling_http_per_sec);
        if claim > 0.0 && http > 0.0 {
            self.ceiling_combined_per_sec = 1.0 / (1.0 / claim + 1.0 / http);
            self.efficiency = self.deliveries_per_sec / self.ceiling_combined_per_sec;
        }
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let latency = |l: &Latency| json!({"p50": l.p50, "p95": l.p95, "p99": l.p99, "offered_per_sec": l.offered_per_sec});
        json!({
            "deliveries_per_sec": self.deliveries_per_sec,
            "delivered_exactly_once": self.delivered_exactly_once,
            "latency_ms": latency(&self.latency_ms),
            "latency_low_load_ms": latency(&self.latency_low_load_ms),
            "latency_low_load_logical_ms": latency(&self.latency_low_load_logical_ms),
            "ceiling_claim_rows_per_sec": self.ceiling_claim_rows_per_sec,
            "ceiling_http_per_sec": self.ceiling_http_per_sec,
            "ceiling_http_latency_bound_per_sec": self.ceiling_http_latency_bound_per_sec,
            "ceiling_combined_per_sec": self.ceiling_combined_per_sec,
            "efficiency": self.efficiency,
            "producer_inserts_per_sec": {
                "plain_table": self.producer_inserts_per_sec.plain_table,
                "no_sidecar": self.producer_inserts_per_sec.no_sidecar,
                "no_trigger": self.producer_inserts_per_sec.no_trigger,
                "notify_trigger": self.producer_inserts_per_sec.notify_trigger,
                "logical": self.producer_inserts_per_sec.logical,
            },
            "producer_no_trigger_to_plain_table": self.producer_inserts_per_sec.no_trigger_to_plain_table(),
            "producer_no_sidecar_to_plain_table": self.producer_inserts_per_sec.no_sidecar_to_plain_table(),
            "claim_ms_empty": self.claim_ms_empty,
            "claim_ms_with_1m_finished": self.claim_ms_with_finished,
            "finished_rows": self.options.finished_rows,
            "peak_rss_bytes": self.peak_rss_bytes,
            "receiver_connections_drain": self.receiver_connections_drain,
            "cpu_ms_per_1k_deliveries": self.cpu_ms_per_1k_deliveries,
            "options": {
                "messages": self.options.messages, "replicas": self.options.replicas, "concurrency": self.options.concurrency,
                "batch_size": self.options.batch_size, "payload_bytes": self.options.payload_bytes,
                "endpoints": self.options.endpoints, "fan_out": self.options.fan_out,
                "tenants": self.options.tenants,
                "async_commit": self.options.async_commit,
                "receiver_latency_ms": self.options.receiver_latency.as_secs_f64() * 1000.0,
            },
            "machine": {
                "cores": self.cores,
                "memory_bytes": self.memory_bytes,
                "postgres_version": self.postgres_version,
            },
        })
    }

    /// The report as a table.
    pub fn render(&self) -> String {
        let lat = |l: &Latency| {
            format!(
                "p50 {:.2} / p95 {:.2} / p99 {:.2} ms at {:.0}/s",
                l.p50, l.p95, l.p99, l.offered_per_sec
            )
        };
        let p = &self.producer_inserts_per_sec;
        let ratio = |x: f64| {
            if p.no_trigger > 0.0 {
                x / p.no_trigger
            } else {
                0.0
            }
        };
        let rows = vec![
            (
                "deliveries/s (drain)",
                format!(
                    "{:.0}  ({} deliveries, each once, verified)",
                    self.deliveries_per_sec, self.delivered_exactly_once
                ),
            ),
            (
                "ceiling: claim+complete rows/s",
                format!("{:.0}", self.ceiling_claim_rows_per_sec),
            ),
            ("ceiling: signed HTTP requests/s", self.http_ceiling()),
            (
                "ceiling: both sharing the CPU",
                format!("{:.0}", self.ceiling_combined_per_sec),
            ),
            ("efficiency", format!("{:.2}", self.efficiency)),
            ("latency, low load", lat(&self.latency_low_load_ms)),
            ("latency, half the drain rate", lat(&self.latency_ms)),
            (
                "latency, low load, logical wake-up",
                lat(&self.latency_low_load_logical_ms),
            ),
            (
                "producers, plain table (no outbox)",
                format!("{:.0} inserts/s", p.plain_table),
            ),
            (
                "producers, outbox, no sidecar",
                format!(
                    "{:.0} inserts/s ({:.2}x the plain table)",
                    p.no_sidecar,
                    p.no_sidecar_to_plain_table()
                ),
            ),
            (
                "producers, no wake-up trigger",
                format!(
                    "{:.0} inserts/s ({:.2}x the plain table)",
                    p.no_trigger,
                    p.no_trigger_to_plain_table()
                ),
            ),
            (
                "producers, NOTIFY trigger",
                format!(
                    "{:.0} inserts/s ({:.2}x)",
                    p.notify_trigger,
                    ratio(p.notify_trigger)
                ),
            ),
            (
                "producers, logical wake-up",
                format!("{:.0} inserts/s ({:.2}x)", p.logical, ratio(p.logical)),
            ),
            (
                "claim, empty tables",
                format!("{:.2} ms", self.claim_ms_empty),
            ),
            (
                "claim, beside finished rows",
                format!(
                    "{:.2} ms ({} rows)",
                    self.claim_ms_with_finished, self.options.finished_rows
                ),
            ),
            (
                "sidecar peak RSS",
                format!("{:.1} MiB", self.peak_rss_bytes as f64 / 1048576.0),
            ),
            (
                "receiver connections, drain",
                format!(
                    "{}  (drain and latency phases; at most {} requests in flight)",
                    self.receiver_connections_drain,
                    self.options.concurrency * self.options.replicas as usize
                ),
            ),
            (
                "sidecar CPU per 1,000 deliveries",
                format!("{:.1} ms", self.cpu_ms_per_1k_deliveries),
            ),
            (
                "machine",
                format!(
                    "{} cores, {:.1} GiB, PostgreSQL {}",
                    self.cores,
                    self.memory_bytes as f64 / 1073741824.0,
                    self.postgres_version
                ),
            ),
            (
                "run",
                format!(
                    "{} messages, {} sidecar(s) x {} in flight, batch {}, {} B payload, {} endpoint(s), {} tenant(s), fan-out {}, receiver latency {}",
                    self.options.messages,
                    self.options.replicas,
                    self.options.concurrency,
                    self.options.batch_size,
                    self.options.payload_bytes,
                    self.options.endpoints,
                    self.options.tenants,
                    self.options.fan_out,
                    humantime::format_duration(self.options.receiver_latency)
                ),
            ),
        ];
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|(k, v)| vec![k.to_owned(), v])
            .collect();
        table::render(&["measure", "result"], &rows)
    }

    /// The HTTP ceiling, and with a receiver latency the bound it cannot
    /// pass: then it measures the latency more than the client.
    fn http_ceiling(&self) -> String {
        match self.ceiling_http_latency_bound_per_sec {
            Some(bound) => format!(
                "{:.0}  (receiver latency {}: at most {:.0} with {} in flight)",
                self.ceiling_http_per_sec,
                humantime::format_duration(self.options.receiver_latency),
                bound,
                self.options.concurrency * self.options.replicas as usize
            ),
            None => format!("{:.0}", self.ceiling_http_per_sec),
        }
    }
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}
