//! `outboxd bench`: from command-line options to [`crate::bench`] and its
//! report (a table, or one JSON object with `--json`).

use anyhow::{Context as _, bail};

use crate::cli::BenchArgs;

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
