//! `outboxd retry-schedule`: an endpoint's own retry schedule, overriding
//! the sidecar's `--retry-schedule` (`outbox.set_retry_schedule`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use tokio_postgres::Client;

use super::database::DatabaseArgs;
use super::tenant_guard;
use crate::db::DbError;
use crate::retry::RetryPolicy;

const TENANT: &str = include_str!("../../sql/queries/endpoints_tenant.sql");
const SET: &str = include_str!("../../sql/queries/endpoints_set_retry_schedule.sql");

/// Settings of `outboxd retry-schedule`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["schedule", "reset"])))]
pub struct RetryScheduleArgs {
    /// Where the outbox lives.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The endpoint.
    pub endpoint: String,
    /// Delay before each attempt, comma-separated (e.g. 0s,10s,5m,1h); its length is the
    /// endpoint's maximum number of attempts.
    pub schedule: Option<String>,
    /// Go back to the sidecar's schedule.
    #[arg(long)]
    pub reset: bool,
    /// Refuse unless the endpoint belongs to this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Why, recorded in outbox.events.
    #[arg(long)]
    pub note: Option<String>,
}

/// Sets (or resets) the schedule and says so.
pub async fn run(args: RetryScheduleArgs) -> anyhow::Result<()> {
    let client = args.database.connect().await?;
    execute(&client, &args).await
}

async fn execute(client: &Client, args: &RetryScheduleArgs) -> anyhow::Result<()> {
    let delays: Option<Vec<f64>> = match &args.schedule {
        Some(schedule) => Some(parse(schedule)?.iter().map(Duration::as_secs_f64).collect()),
        None => None,
    };
    let Some(row) = client
        .query_opt(TENANT, &[&args.endpoint])
        .await
        .map_err(DbError::during("looking up the endpoint"))?
    else {
        bail!("endpoint {} does not exist", args.endpoint);
    };
    let what = format!("endpoint {}", args.endpoint);
    tenant_guard::check(&what, row.get::<_, Option<&str>>(0), args.tenant.as_deref())?;
    let who = tenant_guard::triggered_by("retry-schedule", args.note.as_deref());
    client
        .execute(SET, &[&args.endpoint, &delays, &who])
        .await
        .map_err(DbError::during("setting the retry schedule"))?;
    match &args.schedule {
        Some(schedule) => println!("endpoint {} retries on {schedule}", args.endpoint),
        None => println!(
            "endpoint {} retries on the sidecar's schedule",
            args.endpoint
        ),
    }
    Ok(())
}

/// The delays of a schedule written as for `--retry-schedule`.
pub fn parse(schedule: &str) -> anyhow::Result<Vec<Duration>> {
    let policy = RetryPolicy::parse(schedule, Duration::ZERO).context("retry schedule")?;
    Ok(policy.delays().to_vec())
}
