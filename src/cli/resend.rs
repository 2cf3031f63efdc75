//! `outboxd resend`: send a message to one of its endpoints again, whether
//! it was delivered, died or was cancelled (`outbox.resend`). Receivers
//! see the same `webhook-id` again and may deduplicate it.

use anyhow::bail;
use clap::Args;
use tokio_postgres::Client;

use super::database::DatabaseArgs;
use super::tenant_guard;
use crate::db::DbError;

const FIND: &str = include_str!("../../sql/queries/deliveries_find.sql");
const DELIVERY: &str = include_str!("../../sql/queries/deliveries_get.sql");
const RESEND: &str = include_str!("../../sql/queries/deliveries_resend.sql");

/// Settings of `outboxd resend`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["delivery", "event_id"])))]
pub struct ResendArgs {
    /// Where the outbox lives.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Resend this delivery (outbox.deliveries.id).
    #[arg(long)]
    pub delivery: Option<i64>,
    /// Resend the message with this event_id (webhook-id)...
    #[arg(long, requires = "endpoint")]
    pub event_id: Option<String>,
    /// ...to this endpoint.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Refuse unless the delivery belongs to this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Why, recorded in outbox.events (e.g. a ticket number).
    #[arg(long)]
    pub note: Option<String>,
}

/// Resends and says so, or fails with why not.
pub async fn run(args: ResendArgs) -> anyhow::Result<()> {
    let client = args.database.connect().await?;
    execute(&client, &args).await
}

async fn execute(client: &Client, args: &ResendArgs) -> anyhow::Result<()> {
    let (what, row) = match (&args.delivery, &args.event_id, &args.endpoint) {
        (Some(id), _, _) => (
            format!("delivery {id}"),
            client.query_opt(DELIVERY, &[id]).await,
        ),
        (None, Some(event_id), Some(endpoint)) => (
            format!("the delivery of {event_id} to endpoint {endpoint}"),
            client.query_opt(FIND, &[event_id, endpoint]).await,
        ),
        _ => bail!("give --delivery ID, or --event-id ID with --endpoint ID"),
    };
    let Some(row) = row.map_err(DbError::during("looking up the delivery"))? else {
        bail!(
            "{what} does not exist (a message goes to an endpoint it was routed to; see outboxd recover)"
        );
    };
    let (id, status): (i64, String) = (row.get(0), row.get(1));
    tenant_guard::check(&what, row.get::<_, Option<&str>>(2), args.tenant.as_deref())?;
    let who = tenant_guard::triggered_by("resend", args.note.as_deref());
    let resent: bool = client
        .query_one(RESEND, &[&id, &who])
        .await
        .map_err(DbError::during("resending"))?
        .get(0);
    if !resent {
        bail!("delivery {id} is {status}: it is on its way already; nothing changed");
    }
    println!("delivery {id} ({status}) is pending again");
    Ok(())
}
