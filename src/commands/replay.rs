//! `outboxd replay`: send dead deliveries again, one by id or an
//! endpoint's since a time, through `outbox.replay` / `outbox.replay_dead`.

use std::time::{Duration, SystemTime};

use anyhow::bail;
use tokio_postgres::Client;

use crate::db::DbError;

const REPLAY: &str = include_str!("../../sql/queries/deliveries_replay.sql");
const REPLAY_DEAD: &str = include_str!("../../sql/queries/endpoints_replay_dead.sql");
const DELIVERY_TENANT: &str = include_str!("../../sql/queries/deliveries_tenant.sql");
const ENDPOINT_TENANT: &str = include_str!("../../sql/queries/endpoints_tenant.sql");

/// What to replay.
#[derive(Debug, Clone)]
pub enum Target {
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

/// A point in time given on the command line.
#[derive(Debug, Clone, Copy)]
pub enum Since {
    /// An absolute time.
    At(SystemTime),
    /// This long before now (database clock).
    Ago(Duration),
}

impl std::str::FromStr for Since {
    type Err = String;

    /// `2026-11-28T12:00:00Z` (RFC 3339) or a duration such as `2h`.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(ago) = humantime::parse_duration(text) {
            return Ok(Self::Ago(ago));
        }
        humantime::parse_rfc3339_weak(text)
            .map(Self::At)
            .map_err(|_| {
                format!(
                    "{text:?} is neither a time like 2026-11-28T12:00:00Z nor a duration like 2h"
                )
            })
    }
}

/// Replays and says how many deliveries are pending again. With `tenant`,
/// refuses a delivery or endpoint of another tenant (or of none).
pub async fn run(client: &Client, target: &Target, tenant: Option<&str>) -> anyhow::Result<()> {
    if let Some(tenant) = tenant {
        check_tenant(client, target, tenant).await?;
    }
    match target {
        Target::Delivery(id) => {
            let replayed: bool = client
                .query_one(REPLAY, &[id])
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
                .query_one(REPLAY_DEAD, &[id, &at, &ago])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_durations_and_timestamps() {
        assert!(
            matches!("2h".parse::<Since>(), Ok(Since::Ago(d)) if d == Duration::from_secs(7200))
        );
        assert!(matches!(
            "2026-11-28T12:00:00Z".parse::<Since>(),
            Ok(Since::At(_))
        ));
        assert!("noon".parse::<Since>().unwrap_err().contains("neither"));
    }
}
