//! `outboxd bench`: from command-line options to [`crate::bench`] and its
//! report (a table, or one JSON object with `--json`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::config::defaults;

/// Settings of `outboxd bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Create the bench database on this server instead of starting a throwaway one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Messages in the drained backlog.
    #[arg(long, default_value_t = 50_000)]
    pub messages: u64,
    /// `outboxd run` processes draining it.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Requests in flight per sidecar.
    #[arg(long, default_value_t = defaults::CONCURRENCY)]
    pub concurrency: usize,
    /// Rows per claim.
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Endpoints (all on the in-process receiver).
    #[arg(long, default_value_t = 1)]
    pub endpoints: u32,
    /// Endpoints each message goes to (at most --endpoints).
    #[arg(long, default_value_t = 1)]
    pub fan_out: u32,
    /// Spread the endpoints over this many tenants, each message carrying its tenant (0: none).
    #[arg(long, default_value_t = 0)]
    pub tenants: u32,
    /// Finished rows beside the second claim-cost measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub finished_rows: u64,
    /// Seconds for each producer mode and for the steady-load latency.
    #[arg(long, default_value_t = 5.0)]
    pub phase_secs: f64,
    /// Run the sidecars with --async-commit (their outcome writes skip the WAL flush wait).
    #[arg(long)]
    pub async_commit: bool,
    /// The in-process receiver waits this long before answering each request (e.g. 50ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub receiver_latency: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Checks the options, runs every phase and prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.fan_out == 0 || args.fan_out > args.endpoints {
        bail!(
            "--fan-out must be between 1 and --endpoints ({})",
            args.endpoints
        );
    }
    if let Err(problem) =
        crate::bench::tenants::Tenancy::new(args.tenants, args.endpoints, args.fan_out)
    {
        bail!("{problem}");
    }
    let options = crate::bench::Options {
        messages: args.messages,
        replicas: args.replicas.max(1),
        concurrency: args.concurrency.max(1),
        batch_size: args.batch_size.max(1),
        payload_bytes: args.payload_bytes,
        endpoints: args.endpoints,
        fan_out: args.fan_out,
        tenants: args.tenants,
        finished_rows: args.finished_rows,
        phase_secs: args.phase_secs.max(0.5),
        database_url: args.database_url,
        sidecar_bin: std::env::current_exe().context("locating the outboxd executable")?,
        async_commit: args.async_commit,
        receiver_latency: args.receiver_latency,
    };
    let report = crate::bench::run(options).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
