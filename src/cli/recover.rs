//! `outboxd recover`: give an endpoint the messages it missed over a time
//! range, including messages written before it existed (`outbox.recover`).

use std::time::SystemTime;

use anyhow::bail;
use clap::Args;
use tokio_postgres::Client;

use super::database::DatabaseArgs;
use super::tenant_guard;
use crate::config::Since;
use crate::db::DbError;

const TENANT: &str = include_str!("../../sql/queries/endpoints_tenant.sql");
const RECOVER: &str = include_str!("../../sql/queries/endpoints_recover.sql");
const CLOCK_AGO: &str = include_str!("../../sql/queries/clock_ago.sql");

/// Settings of `outboxd recover`.
#[derive(Debug, Clone, Args)]
pub struct RecoverArgs {
    /// Where the outbox lives.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The endpoint that missed messages.
    #[arg(long)]
    pub endpoint: String,
    /// Messages written since this time or this long ago: 2026-11-28T12:00:00+01:00 (RFC 3339; a
    /// time without an offset, as 2026-11-28T12:00:00, is UTC) or 2h.
    #[arg(long)]
    pub since: Since,
    /// ...and before this time or this long ago (default: now).
    #[arg(long)]
    pub until: Option<Since>,
    /// Only this event type (repeatable; default: the types the endpoint subscribes to).
    #[arg(long = "event-type")]
    pub event_types: Vec<String>,
    /// Refuse unless the endpoint belongs to this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Why, recorded in outbox.events (e.g. a ticket number).
    #[arg(long)]
    pub note: Option<String>,
}

/// Recovers and says how many deliveries were made.
pub async fn run(args: RecoverArgs) -> anyhow::Result<()> {
    let client = args.database.connect().await?;
    execute(&client, &args).await
}

async fn execute(client: &Client, args: &RecoverArgs) -> anyhow::Result<()> {
    let Some(row) = client
        .query_opt(TENANT, &[&args.endpoint])
        .await
        .map_err(DbError::during("looking up the endpoint"))?
    else {
        bail!("endpoint {} does not exist", args.endpoint);
    };
    let what = format!("endpoint {}", args.endpoint);
    tenant_guard::check(&what, row.get::<_, Option<&str>>(0), args.tenant.as_deref())?;
    let since = at(client, args.since).await?;
    let until = match args.until {
        Some(until) => Some(at(client, until).await?),
        None => None,
    };
    let types = (!args.event_types.is_empty()).then_some(&args.event_types);
    let who = tenant_guard::triggered_by("recover", args.note.as_deref());
    let made: i32 = client
        .query_one(RECOVER, &[&args.endpoint, &since, &until, &types, &who])
        .await
        .map_err(DbError::during("recovering"))?
        .get(0);
    println!(
        "{made} missed messages are on their way to endpoint {}",
        args.endpoint
    );
    Ok(())
}

/// A time on the database's clock.
async fn at(client: &Client, since: Since) -> anyhow::Result<SystemTime> {
    Ok(match since {
        Since::At(at) => at,
        Since::Ago(ago) => client
            .query_one(CLOCK_AGO, &[&ago.as_secs_f64()])
            .await
            .map_err(DbError::during("reading the database's clock"))?
            .get(0),
    })
}
