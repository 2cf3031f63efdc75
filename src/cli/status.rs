//! `outboxd status`: backlog, oldest pending, dead and health per endpoint,
//! from the `outbox.endpoint_health` view.

use clap::Args;
use tokio_postgres::Client;

use super::database::DatabaseArgs;
use crate::db::DbError;
use crate::table;

/// Settings of `outboxd status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
    /// Only this tenant's endpoints.
    #[arg(long)]
    tenant: Option<String>,
}

const STATUS: &str = include_str!("../../sql/queries/status_by_endpoint.sql");

/// Prints the status table, or the JSON array with `json`; only `tenant`'s
/// endpoints when given.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.database.connect().await?;
    show(&client, args.json, args.tenant.as_deref()).await
}

async fn show(client: &Client, json: bool, tenant: Option<&str>) -> anyhow::Result<()> {
    let text: String = client
        .query_one(STATUS, &[&tenant])
        .await
        .map_err(DbError::during("reading outbox.endpoint_health"))?
        .get(0);
    if json {
        println!("{text}");
        return Ok(());
    }
    let endpoints: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    if endpoints.is_empty() && tenant.is_some() {
        println!("tenant has no endpoints");
        return Ok(());
    }
    if endpoints.is_empty() {
        println!("no endpoints yet: add one with `outboxd endpoint add ID URL`");
        return Ok(());
    }
    print!("{}", render(&endpoints));
    Ok(())
}

fn render(endpoints: &[serde_json::Value]) -> String {
    let header = [
        "endpoint",
        "tenant",
        "state",
        "pending",
        "in_flight",
        "dead",
        "oldest_pending",
        "last_success",
        "failures",
    ];
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|e| {
            let state = if e["enabled"].as_bool().unwrap_or(false) {
                "enabled".to_owned()
            } else {
                format!(
                    "DISABLED: {}",
                    e["disabled_reason"].as_str().unwrap_or("no reason given")
                )
            };
            let oldest = e["oldest_pending_age_secs"]
                .as_f64()
                .map(|s| {
                    humantime::format_duration(std::time::Duration::from_secs(s.max(0.0) as u64))
                        .to_string()
                })
                .unwrap_or_else(|| "-".into());
            vec![
                e["endpoint_id"].as_str().unwrap_or_default().to_owned(),
                e["tenant_id"].as_str().unwrap_or("-").to_owned(),
                state,
                e["pending"].to_string(),
                e["in_flight"].to_string(),
                e["dead"].to_string(),
                oldest,
                e["last_success_at"]
                    .as_str()
                    .map_or("never".into(), |t| t.chars().take(19).collect()),
                e["failure_streak"].to_string(),
            ]
        })
        .collect();
    table::render(&header, &rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_disabled_endpoints_with_their_reason() {
        let e = serde_json::json!([{
            "endpoint_id": "billing", "enabled": false, "disabled_reason": "410 Gone",
            "pending": 3, "in_flight": 0, "dead": 1, "oldest_pending_age_secs": 90.5,
            "last_success_at": null, "failure_streak": 4
        }]);
        let out = super::render(e.as_array().unwrap());
        assert!(out.contains("DISABLED: 410 Gone"), "{out}");
        assert!(out.contains("1m 30s"), "{out}");
        assert!(out.contains("never"), "{out}");
    }
}
