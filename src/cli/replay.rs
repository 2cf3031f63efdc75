//! `outboxd replay`: send dead deliveries again, one by id or an
//! endpoint's since a time, through `outbox.replay` / `outbox.replay_dead`.

use anyhow::bail;
use clap::Args;
use tokio_postgres::Client;

use super::database::DatabaseArgs;
use super::tenant_guard;
use crate::config::Since;
use crate::db::DbError;

/// Settings of `outboxd replay`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["delivery", "endpoint"])))]
pub struct ReplayArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Replay this dead delivery (outbox.deliveries.id).
    #[arg(long)]
    delivery: Option<i64>,
    /// Replay this endpoint's dead deliveries...
    #[arg(long, requires = "since")]
    endpoint: Option<String>,
    /// ...that died since this time or this long ago: 2026-11-28T12:00:00+01:00 (RFC 3339; a time
    /// without an offset, as 2026-11-28T12:00:00, is UTC) or 2h.
    #[arg(long)]
    since: Option<Since>,
    /// Refuse unless the delivery or endpoint belongs to this tenant
    /// (support staff replaying for one customer).
    #[arg(long)]
    tenant: Option<String>,
}

const REPLAY: &str = include_str!("../../sql/queries/deliveries_replay.sql");
const REPLAY_DEAD: &str = include_str!("../../sql/queries/endpoints_replay_dead.sql");
const DELIVERY_TENANT: &str = include_str!("../../sql/queries/deliveries_tenant.sql");
const ENDPOINT_TENANT: &str = include_str!("../../sql/queries/endpoints_tenant.sql");

/// What to replay.
#[derive(Debug, Clone)]
enum Target {
    /// One delivery.
    Delivery(i64),
    /// An endpoint's dead deliveries that died since a time.
    Endpoint {
        /// The endpoint.
        id: String,
        /// The earliest death to replay.
        since: Since,
    },
}

/// Replays and says how many deliveries are pending again. With `tenant`,
/// refuses a delivery or endpoint of another tenant (or of none).
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let client = args.database.connect().await?;
    let target = match (args.delivery, args.endpoint, args.since) {
        (Some(id), _, _) => Target::Delivery(id),
        (None, Some(id), Some(since)) => Target::Endpoint { id, since },
        _ => bail!("give --delivery ID, or --endpoint ID with --since"),
    };
    replay(&client, &target, args.tenant.as_deref()).await
}

async fn replay(client: &Client, target: &Target, tenant: Option<&str>) -> anyhow::Result<()> {
    if let Some(tenant) = tenant {
        check_tenant(client, target, tenant).await?;
    }
    let who = tenant_guard::triggered_by("replay", None);
    match target {
        Target::Delivery(id) => {
            let replayed: bool = client
                .query_one(REPLAY, &[id, &who])
                .await
                .map_err(DbError::during("replaying"))?
                .get(0);
            if !replayed {
                bail!(
                    "delivery {id} is not dead (or does not exist); only dead deliveries are replayed"
                );
            }
            println!("delivery {id} is pending again");
        }
        Target::Endpoint { id, since } => {
            let (at, ago) = match since {
                Since::At(at) => (Some(*at), None),
                Since::Ago(ago) => (None, Some(ago.as_secs_f64())),
            };
            let count: i32 = client
                .query_one(REPLAY_DEAD, &[id, &at, &who, &ago])
                .await
                .map_err(DbError::during("replaying"))?
                .get(0);
            println!("{count} dead deliveries of endpoint {id} are pending again");
        }
    }
    Ok(())
}

/// Fails unless `target` belongs to `tenant`.
async fn check_tenant(client: &Client, target: &Target, tenant: &str) -> anyhow::Result<()> {
    let (what, row) = match target {
        Target::Delivery(id) => (
            format!("delivery {id}"),
            client.query_opt(DELIVERY_TENANT, &[id]).await,
        ),
        Target::Endpoint { id, .. } => (
            format!("endpoint {id}"),
            client.query_opt(ENDPOINT_TENANT, &[id]).await,
        ),
    };
    let Some(row) = row.map_err(DbError::during("looking up the tenant"))? else {
        bail!("{what} does not exist");
    };
    match row.get::<_, Option<String>>(0) {
        Some(owner) if owner == tenant => Ok(()),
        Some(owner) => bail!("{what} belongs to tenant {owner}, not {tenant}; nothing replayed"),
        None => bail!("{what} belongs to no tenant, not {tenant}; nothing replayed"),
    }
}
