//! `outboxd adopt` and `outboxd unadopt`: feed `outbox.messages` from an
//! application's existing outbox table (Debezium's column names by default)
//! through the SQL functions `outbox.adopt` and `outbox.unadopt`, and on
//! request send the rows written before the adoption (`--backfill-since`)
//! in bounded, idempotent batches through `outbox.adopt_backfill`.
//!
//! The work is in SQL (`sql/migrations/0007_adopt.sql`), so applications
//! can adopt from their own migrations instead; this module only builds the
//! mapping from flags, drives the batches and prints what happened.

use std::time::SystemTime;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Map, Value};
use tokio_postgres::Client;

use super::database::DatabaseArgs;
use crate::config::Since;
use crate::db::DbError;

const CREATE: &str = include_str!("../../sql/queries/adoptions_create.sql");
const DROP: &str = include_str!("../../sql/queries/adoptions_drop.sql");
const BACKFILL: &str = include_str!("../../sql/queries/adoptions_backfill.sql");
const CLOCK_AGO: &str = include_str!("../../sql/queries/clock_ago.sql");

/// The mapping keys, in the order they are shown.
const KEYS: [&str; 7] = [
    "event_id",
    "event_type",
    "payload",
    "ordering_key",
    "endpoint_id",
    "deliver_after",
    "timestamp",
];

/// Settings of `outboxd adopt`.
#[derive(Debug, Clone, Args)]
pub struct AdoptArgs {
    /// Where the outbox lives.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The application's outbox table, e.g. outboxevent or app.outbox_events.
    pub table: String,
    /// The whole mapping as JSON instead of the column flags, e.g.
    /// '{"event_type": "kind", "ordering_key": null}'.
    #[arg(long, value_name = "JSON", conflicts_with_all = KEYS)]
    pub mapping: Option<String>,
    /// Column holding the event id, sent as webhook-id (default: id).
    #[arg(long, value_name = "COLUMN")]
    pub event_id: Option<String>,
    /// Column holding the event type (default: type).
    #[arg(long, value_name = "COLUMN")]
    pub event_type: Option<String>,
    /// Column holding the payload: jsonb, json, or text holding JSON (default: payload).
    #[arg(long, value_name = "COLUMN")]
    pub payload: Option<String>,
    /// Column whose value orders deliveries (default: aggregateid, if the table has it).
    #[arg(long, value_name = "COLUMN")]
    pub ordering_key: Option<String>,
    /// Column naming the one endpoint to deliver to (NULL in it: fan out by event type).
    #[arg(long, value_name = "COLUMN")]
    pub endpoint_id: Option<String>,
    /// Column holding a time not to deliver before.
    #[arg(long, value_name = "COLUMN")]
    pub deliver_after: Option<String>,
    /// Column saying when a row was written (needed by --backfill-since).
    #[arg(long, value_name = "COLUMN")]
    pub timestamp: Option<String>,
    /// Also send the rows written before the adoption since this time
    /// (RFC 3339, 2026-11-28T12:00:00+01:00; a time without an offset is UTC)
    /// or this long ago (24h); safe to repeat.
    #[arg(long, value_name = "TIME")]
    pub backfill_since: Option<Since>,
    /// Rows per backfill transaction.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..))]
    pub batch_size: i32,
}

/// Settings of `outboxd unadopt`.
#[derive(Debug, Clone, Args)]
pub struct UnadoptArgs {
    /// Where the outbox lives.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The adopted table.
    pub table: String,
}

/// Adopts the table, then backfills if asked, and says what changed.
/// Installs the adoption `args` describe. The table is named as the
/// user's `search_path` resolves it; the statements only call outbox's own
/// (pinned) functions.
pub async fn adopt(args: AdoptArgs) -> anyhow::Result<()> {
    let client = args.database.connect_unpinned().await?;
    install(&client, &args).await
}

/// Removes what `outboxd adopt` installed for `args.table`.
pub async fn unadopt(args: UnadoptArgs) -> anyhow::Result<()> {
    let client = args.database.connect_unpinned().await?;
    uninstall(&client, &args.table).await
}

async fn install(client: &Client, args: &AdoptArgs) -> anyhow::Result<()> {
    let mapping = mapping(args)?;
    if args.backfill_since.is_some() && mapping.get("timestamp").is_none_or(Value::is_null) {
        bail!(
            "--backfill-since needs the column that says when a row was written: add --timestamp COLUMN"
        );
    }
    let row = client
        .query_one(CREATE, &[&args.table, &mapping.to_string()])
        .await
        .map_err(|e| explain(e, "adopting the table"))?;
    let (effective, source): (String, String) = (row.get("mapping"), row.get("source"));
    println!("adopted {source}: {}", describe(&effective)?);
    println!(
        "every row inserted into {source} now also becomes an outbox.messages row in the same transaction"
    );
    let Some(since) = args.backfill_since else {
        println!("rows already in {source} are not sent (--backfill-since sends them)");
        return Ok(());
    };
    let (scanned, inserted) = backfill(client, &source, since, args.batch_size).await?;
    println!(
        "backfill: {scanned} rows of {source} written before the adoption, {inserted} sent now, {} sent before",
        scanned - inserted
    );
    Ok(())
}

/// Drops what `adopt` installed on the table.
async fn uninstall(client: &Client, table: &str) -> anyhow::Result<()> {
    let row = client
        .query_one(DROP, &[&table])
        .await
        .map_err(|e| explain(e, "unadopting the table"))?;
    let (adopted, source): (bool, String) = (row.get("adopted"), row.get("source"));
    if !adopted {
        bail!("{source} is not adopted");
    }
    println!(
        "{source} is no longer adopted: its trigger and trigger function are dropped, its rows and outbox.messages are untouched"
    );
    Ok(())
}

/// The mapping from `--mapping` or the column flags.
fn mapping(args: &AdoptArgs) -> anyhow::Result<Value> {
    if let Some(json) = &args.mapping {
        return serde_json::from_str(json)
            .with_context(|| format!("--mapping {json:?} is not JSON"));
    }
    let columns = [
        &args.event_id,
        &args.event_type,
        &args.payload,
        &args.ordering_key,
        &args.endpoint_id,
        &args.deliver_after,
        &args.timestamp,
    ];
    let map: Map<String, Value> = KEYS
        .iter()
        .zip(columns)
        .filter_map(|(key, column)| Some((key.to_string(), Value::from(column.clone()?))))
        .collect();
    Ok(Value::Object(map))
}

/// `event_id <- id, event_type <- type, ...` from the effective mapping.
fn describe(effective: &str) -> anyhow::Result<String> {
    let mapping: Map<String, Value> =
        serde_json::from_str(effective).context("outbox.adopt returned an odd mapping")?;
    Ok(KEYS
        .iter()
        .filter_map(|key| Some(format!("{key} <- {}", mapping.get(*key)?.as_str()?)))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Runs backfill batches, one transaction each, until a short batch;
/// returns (rows scanned, messages inserted).
async fn backfill(
    client: &Client,
    source: &str,
    since: Since,
    batch_size: i32,
) -> anyhow::Result<(i64, i64)> {
    // Fixed once, so every batch reads the same range.
    let since: SystemTime = match since {
        Since::At(at) => at,
        Since::Ago(ago) => client
            .query_one(CLOCK_AGO, &[&ago.as_secs_f64()])
            .await
            .map_err(DbError::during("reading the database clock"))?
            .get(0),
    };
    let (mut after_at, mut after_id): (Option<SystemTime>, Option<String>) = (None, None);
    let (mut scanned, mut inserted) = (0_i64, 0_i64);
    loop {
        let row = client
            .query_one(
                BACKFILL,
                &[&source, &since, &batch_size, &after_at, &after_id],
            )
            .await
            .map_err(|e| explain(e, "backfilling"))?;
        let batch: i32 = row.get("scanned");
        scanned += i64::from(batch);
        inserted += i64::from(row.get::<_, i32>("inserted"));
        tracing::debug!(source, batch, scanned, inserted, "backfill batch");
        if batch < batch_size {
            return Ok((scanned, inserted));
        }
        (after_at, after_id) = (row.get("last_at"), row.get("last_id"));
    }
}

/// The server's message and hint on one line (the SQL functions word their
/// errors for people), or the connection failure.
fn explain(error: tokio_postgres::Error, doing: &'static str) -> anyhow::Error {
    match error.as_db_error() {
        Some(db) => {
            let hint = db.hint().map(|h| format!(" ({h})")).unwrap_or_default();
            anyhow::anyhow!("{}{hint}", db.message())
        }
        None => DbError::during(doing)(error).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AdoptArgs,
    }

    fn parse(args: &[&str]) -> Result<AdoptArgs, clap::Error> {
        let base = ["adopt", "--database-url", "postgres://x@y/z"];
        Cli::try_parse_from(base.iter().chain(args)).map(|cli| cli.args)
    }

    #[test]
    fn flags_become_a_mapping_of_the_given_keys_only() {
        let args = parse(&["events", "--event-type", "kind", "--timestamp", "at"]).unwrap();
        assert_eq!(
            mapping(&args).unwrap(),
            serde_json::json!({"event_type": "kind", "timestamp": "at"})
        );
        let none = parse(&["outboxevent"]).unwrap();
        assert_eq!(mapping(&none).unwrap(), serde_json::json!({}));
    }

    #[test]
    fn mapping_json_excludes_column_flags() {
        let args = parse(&["t", "--mapping", r#"{"ordering_key": null}"#]).unwrap();
        assert_eq!(
            mapping(&args).unwrap(),
            serde_json::json!({"ordering_key": null})
        );
        assert!(parse(&["t", "--mapping", "{}", "--payload", "body"]).is_err());
        let bad = parse(&["t", "--mapping", "{nope"]).unwrap();
        assert!(
            mapping(&bad)
                .unwrap_err()
                .to_string()
                .contains("is not JSON")
        );
    }

    #[test]
    fn effective_mappings_read_in_key_order() {
        let text = r#"{"payload": "body", "event_id": "id", "ordering_key": "aggregateid", "event_type": "type"}"#;
        assert_eq!(
            describe(text).unwrap(),
            "event_id <- id, event_type <- type, payload <- body, ordering_key <- aggregateid"
        );
    }
}
