//! `outboxd endpoint add|list|enable|disable|rotate-secret|test`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use tokio_postgres::Client;

use super::database::DatabaseArgs;
use super::usage::Usage;
use crate::db::DbError;
use crate::delivery::shown_url::redacted_url;
use crate::signature::ed25519::PUBLIC_KEY_PREFIX;
use crate::signature::{Secret, SigningKey};
use crate::table;

/// `outboxd endpoint ...`.
#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(subcommand)]
    command: EndpointCommand,
}

/// The endpoint subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum EndpointCommand {
    /// Register an endpoint; prints a generated signing secret once.
    Add {
        /// A short name, e.g. billing.
        id: String,
        /// Where to POST, http:// or https://.
        url: String,
        /// Subscribe to this event type (repeatable); none means every type.
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// Sign with this whsec_ secret or whsk_ ed25519 secret key (outboxd keygen) instead
        /// of a generated whsec_ secret.
        #[arg(long, env = "OUTBOXD_ENDPOINT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Request timeout for this endpoint (default: the sidecar's).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// The customer (tenant) it belongs to: it receives only that
        /// tenant's messages (none: messages without a tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List endpoints (secrets are never shown; URL credentials and query
    /// strings are masked).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enable an endpoint: its pending deliveries resume.
    Enable {
        /// The endpoint.
        id: String,
    },
    /// Disable an endpoint: its deliveries stay pending until enabled.
    Disable {
        /// The endpoint.
        id: String,
        /// Why (stored in disabled_reason).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start signing with a new secret (kept beside the old ones until --drop-old).
    RotateSecret {
        /// The endpoint.
        id: String,
        /// Sign with this whsec_ secret or whsk_ ed25519 secret key instead of a generated
        /// whsec_ secret.
        #[arg(long, env = "OUTBOXD_ENDPOINT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Keep only the newest secret (alone: end a rotation).
        #[arg(long)]
        drop_old: bool,
    },
    /// Send a signed test event through the running sidecar and show the answer.
    Test {
        /// The endpoint.
        id: String,
        /// How long to wait for the attempt.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

const ADD: &str = include_str!("../../sql/queries/endpoints_add.sql");
const LIST: &str = include_str!("../../sql/queries/endpoints_list.sql");
const SET_ENABLED: &str = include_str!("../../sql/queries/endpoints_set_enabled.sql");
const ENABLED: &str = include_str!("../../sql/queries/endpoints_enabled.sql");
const ROTATE: &str = include_str!("../../sql/queries/endpoints_rotate_secret.sql");
const DROP_OLD: &str = include_str!("../../sql/queries/endpoints_drop_old_secrets.sql");
const TEST_SEND: &str = include_str!("../../sql/queries/endpoint_test_send.sql");
const TEST_RESULT: &str = include_str!("../../sql/queries/endpoint_test_result.sql");

/// Runs one `outboxd endpoint` subcommand.
pub async fn run(args: EndpointArgs) -> anyhow::Result<()> {
    let client = args.database.connect().await?;
    execute(&client, args.command).await
}

async fn execute(client: &Client, command: EndpointCommand) -> anyhow::Result<()> {
    match command {
        EndpointCommand::Add {
            id,
            url,
            event_types,
            secret,
            timeout,
            tenant,
        } => {
            let new = NewEndpoint {
                id,
                url,
                event_types,
                secret,
                timeout,
                tenant,
            };
            add(client, new).await
        }
        EndpointCommand::List { json } => list(client, json).await,
        EndpointCommand::Enable { id } => set_enabled(client, &id, true, None).await,
        EndpointCommand::Disable { id, reason } => {
            set_enabled(client, &id, false, reason.as_deref()).await
        }
        EndpointCommand::RotateSecret {
            id,
            secret,
            drop_old,
        } => rotate_secret(client, &id, secret, drop_old).await,
        EndpointCommand::Test { id, wait } => test(client, &id, wait).await,
    }
}

/// A new endpoint.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    /// Its name.
    pub id: String,
    /// Where to POST.
    pub url: String,
    /// Subscribed event types; empty means all.
    pub event_types: Vec<String>,
    /// The signing secret; generated (and printed once) when `None`.
    pub secret: Option<String>,
    /// Per-endpoint request timeout.
    pub timeout: Option<Duration>,
    /// The tenant it belongs to, if any.
    pub tenant: Option<String>,
}

/// Registers an endpoint and prints its secret if it was generated.
pub async fn add(client: &Client, new: NewEndpoint) -> anyhow::Result<()> {
    let (secret, generated) = signing_secret(new.secret)?;
    let types = (!new.event_types.is_empty()).then_some(new.event_types);
    let timeout_ms = new
        .timeout
        .map(|t| t.as_millis().min(i32::MAX as u128) as i32);
    client
        .execute(
            ADD,
            &[
                &new.id,
                &new.url,
                &vec![secret.clone()],
                &types,
                &timeout_ms,
                &new.tenant,
            ],
        )
        .await
        .map_err(|e| explain(e, "adding the endpoint"))?;
    match &new.tenant {
        Some(tenant) => println!(
            "endpoint {} added for tenant {tenant}: {}",
            new.id,
            redacted_url(&new.url)
        ),
        None => println!("endpoint {} added: {}", new.id, redacted_url(&new.url)),
    }
    if generated {
        println!("signing secret (shown once, give it to the receiver):\n{secret}");
    }
    Ok(())
}

/// The secret an endpoint signs with: `--secret` checked (a `whsec_` HMAC
/// secret or a `whsk_` ed25519 secret key, as `outboxd keygen` makes;
/// the receiver then holds the `whpk_` public key, printed here), or a
/// generated `whsec_` secret, and whether it was generated.
fn signing_secret(given: Option<String>) -> anyhow::Result<(String, bool)> {
    let Some(text) = given else {
        return Ok((Secret::generate().to_whsec(), true));
    };
    if text.starts_with(PUBLIC_KEY_PREFIX) {
        return Err(Usage::error(
            "--secret: a whpk_ public key cannot sign; give the endpoint the whsk_ secret key              (outboxd keygen prints both) and the receiver the whpk_ public key",
        ));
    }
    match SigningKey::parse(&text) {
        Ok(SigningKey::Ed25519(key)) => {
            println!(
                "receivers verify with the public key {}",
                key.public_key().to_whpk()
            );
        }
        Ok(SigningKey::Hmac(_)) => {}
        Err(error) => {
            return Err(Usage::error(format!(
                "--secret: {error} (a whsec_ secret or a whsk_ key: outboxd keygen [--hmac])"
            )));
        }
    }
    Ok((text, false))
}

/// Prints the endpoints (never their secrets, nor the credentials and
/// query strings of their URLs).
pub async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let rows = client
        .query(LIST, &[])
        .await
        .map_err(DbError::during("listing endpoints"))?;
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.get::<_, String>("id"),
                    "url": redacted_url(r.get("url")),
                    "enabled": r.get::<_, bool>("enabled"),
                    "disabled_reason": r.get::<_, String>("disabled_reason"),
                    "event_types": r.get::<_, String>("event_types"),
                    "secrets": r.get::<_, i32>("secrets"),
                    "timeout_ms": r.get::<_, String>("timeout_ms"),
                    "max_in_flight": r.get::<_, i32>("max_in_flight"),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no endpoints yet: add one with `outboxd endpoint add ID URL`");
        return Ok(());
    }
    let header = [
        "id",
        "url",
        "enabled",
        "event_types",
        "secrets",
        "timeout_ms",
        "disabled_reason",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.get("id"),
                redacted_url(r.get("url")),
                r.get::<_, bool>("enabled").to_string(),
                r.get("event_types"),
                r.get::<_, i32>("secrets").to_string(),
                r.get("timeout_ms"),
                r.get("disabled_reason"),
            ]
        })
        .collect();
    print!("{}", table::render(&header, &cells));
    Ok(())
}

/// Enables or disables an endpoint.
pub async fn set_enabled(
    client: &Client,
    id: &str,
    enabled: bool,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let reason = reason.unwrap_or("disabled by an operator");
    let found = client
        .query_opt(SET_ENABLED, &[&id, &enabled, &reason])
        .await
        .map_err(DbError::during("updating the endpoint"))?;
    if found.is_none() {
        bail!("no endpoint {id:?}");
    }
    if enabled {
        println!("endpoint {id} enabled: its pending deliveries resume");
    } else {
        println!("endpoint {id} disabled: its deliveries stay pending until it is enabled again");
    }
    Ok(())
}

/// Adds a new signing secret (generated unless given) in front of the old
/// ones, or with `drop_old` alone, removes all but the newest.
pub async fn rotate_secret(
    client: &Client,
    id: &str,
    secret: Option<String>,
    drop_old: bool,
) -> anyhow::Result<()> {
    if drop_old && secret.is_none() {
        let left = client
            .query_opt(DROP_OLD, &[&id])
            .await
            .map_err(DbError::during("dropping old secrets"))?;
        if left.is_none() {
            bail!("no endpoint {id:?}");
        }
        println!("endpoint {id} now signs with its newest secret only");
        return Ok(());
    }
    let (secret, generated) = signing_secret(secret)?;
    let count: i32 = client
        .query_opt(ROTATE, &[&id, &secret, &drop_old])
        .await
        .map_err(|e| explain(e, "rotating the secret"))?
        .with_context(|| format!("no endpoint {id:?}"))?
        .get(0);
    if generated {
        println!("new signing secret (shown once):\n{secret}");
    }
    if count > 1 {
        println!(
            "endpoint {id} signs with {count} secrets; once receivers use the new one, run \
             `outboxd endpoint rotate-secret {id} --drop-old`"
        );
    } else {
        println!("endpoint {id} signs with the new secret only");
    }
    Ok(())
}

/// Sends a test event through the normal path and prints the receiver's
/// answer. Needs a running `outboxd run` against the same database.
pub async fn test(client: &Client, id: &str, wait: Duration) -> anyhow::Result<()> {
    let enabled: Option<bool> = client
        .query_opt(ENABLED, &[&id])
        .await
        .map_err(DbError::during("reading the endpoint"))?
        .map(|r| r.get(0));
    match enabled {
        None => bail!("no endpoint {id:?}"),
        Some(false) => {
            bail!("endpoint {id} is disabled; enable it first (`outboxd endpoint enable {id}`)")
        }
        Some(true) => {}
    }
    let row = client
        .query_opt(TEST_SEND, &[&id])
        .await
        .map_err(DbError::during("inserting the test event"))?
        .with_context(|| format!("endpoint {id} does not exist"))?;
    let (message_id, event_id): (i64, String) = (row.get(0), row.get(1));
    println!("sent test event {event_id} to {id}; waiting for the sidecar...");
    let started = Instant::now();
    loop {
        if let Some(r) = client
            .query_opt(TEST_RESULT, &[&message_id])
            .await
            .map_err(DbError::during("reading the test result"))?
        {
            let code: Option<i32> = r.get("status_code");
            let error: Option<String> = r.get("error");
            let duration_ms: i32 = r.get("duration_ms");
            let excerpt: String = r.get("response_excerpt");
            match (code, error) {
                (Some(code), None) => println!("HTTP {code} in {duration_ms} ms"),
                (_, Some(error)) => println!("failed after {duration_ms} ms: {error}"),
                (None, None) => println!("no answer after {duration_ms} ms"),
            }
            if !excerpt.is_empty() {
                println!(
                    "response: {}",
                    excerpt.chars().take(500).collect::<String>()
                );
            }
            if code.is_some_and(|c| (200..300).contains(&c)) {
                return Ok(());
            }
            bail!(
                "the endpoint did not accept the test event (it will be retried on the normal schedule)"
            );
        }
        if started.elapsed() > wait {
            bail!(
                "no attempt within {}: is `outboxd run` running against this database? \
                 (the event stays queued and will be delivered when it is)",
                humantime::format_duration(wait)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's own sentence (and hint), which names the problem, or a
/// plainer one for a duplicate id.
fn explain(error: tokio_postgres::Error, doing: &'static str) -> anyhow::Error {
    if let Some(db) = error.as_db_error() {
        let hint = db.hint().map(|h| format!(" ({h})")).unwrap_or_default();
        return match db.code().code() {
            "23505" => anyhow::anyhow!("an endpoint with this id already exists"),
            _ => anyhow::anyhow!("{doing}: {}{hint}", db.message()),
        };
    }
    DbError::during(doing)(error).into()
}
