//! What each console URL does: the GET pages (read with `store`, drawn by
//! `pages`) and the POST actions, which call the recovery functions of
//! 0015 with `console` as who asked. Every action answers with a page that
//! says what happened and links back.

use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use percent_encoding::percent_decode_str;

use super::form::field;
use super::layout::{done, problem};
use super::pages::{self, endpoint_href};
use super::{Console, html, store};
use crate::config::Since;
use crate::retry::RetryPolicy;

/// Recorded in `outbox.events` as who asked.
const TRIGGERED_BY: &str = "console";
/// Rows of the attempt and dead lists.
const RECENT: i64 = 50;

type Answer = Response<Full<Bytes>>;
type Fields = [(String, String)];

/// A GET page.
pub async fn show(console: &Console, csrf: &str, path: &str, query: &Fields) -> Answer {
    let result = match path {
        "/console" | "/console/" => console
            .store
            .query(store::ENDPOINTS, &[])
            .await
            .map(|rows| html(StatusCode::OK, pages::endpoints(csrf, &rows))),
        "/console/messages" => match field(query, "event_id") {
            Some(event_id) => message(console, csrf, event_id).await,
            None => return super::redirect("/console", None),
        },
        "/console/dead" => {
            let endpoint = field(query, "endpoint");
            console
                .store
                .query(store::DEAD, &[&endpoint, &(RECENT * 2)])
                .await
                .map(|rows| html(StatusCode::OK, pages::dead(csrf, endpoint, &rows)))
        }
        _ => match path.strip_prefix("/console/endpoints/") {
            Some(id) if !id.contains('/') => endpoint(console, csrf, &decode(id)).await,
            _ => Ok(not_found(csrf, "No such page.")),
        },
    };
    result.unwrap_or_else(|error| failed(csrf, &error.to_string()))
}

async fn message(
    console: &Console,
    csrf: &str,
    event_id: &str,
) -> Result<Answer, store::StoreError> {
    let Some(message) = console
        .store
        .query(store::MESSAGE, &[&event_id])
        .await?
        .pop()
    else {
        return Ok(not_found(
            csrf,
            &format!("No message has event id {event_id:?} (or the retention purge deleted it)."),
        ));
    };
    let id: i64 = message.get("id");
    let deliveries = console
        .store
        .query(store::MESSAGE_DELIVERIES, &[&id])
        .await?;
    let ids: Vec<i64> = deliveries.iter().map(|d| d.get("id")).collect();
    let attempts = console
        .store
        .query(store::DELIVERY_ATTEMPTS, &[&ids])
        .await?;
    Ok(html(
        StatusCode::OK,
        pages::message(csrf, &message, &deliveries, &attempts),
    ))
}

async fn endpoint(console: &Console, csrf: &str, id: &str) -> Result<Answer, store::StoreError> {
    let Some(endpoint) = console.store.query(store::ENDPOINT, &[&id]).await?.pop() else {
        return Ok(not_found(csrf, &format!("No endpoint {id:?}.")));
    };
    let attempts = console
        .store
        .query(store::ENDPOINT_ATTEMPTS, &[&id, &RECENT])
        .await?;
    let dead = console
        .store
        .query(store::DEAD, &[&Some(id), &RECENT])
        .await?;
    Ok(html(
        StatusCode::OK,
        pages::endpoint(csrf, &endpoint, &attempts, &dead),
    ))
}

/// A POST action (the CSRF token is checked already).
pub async fn act(console: &Console, csrf: &str, path: &str, fields: &Fields) -> Answer {
    let result = if let Some(rest) = path.strip_prefix("/console/deliveries/") {
        match rest.split_once('/') {
            Some((id, verb)) => match id.parse::<i64>() {
                Ok(id) => delivery_action(console, csrf, id, verb, back(fields)).await,
                Err(_) => Ok(not_found(csrf, "No such delivery.")),
            },
            None => Ok(not_found(csrf, "No such page.")),
        }
    } else if let Some(rest) = path.strip_prefix("/console/endpoints/") {
        match rest.split_once('/') {
            Some((id, verb)) => endpoint_action(console, csrf, &decode(id), verb, fields).await,
            None => Ok(not_found(csrf, "No such page.")),
        }
    } else {
        Ok(not_found(csrf, "No such page."))
    };
    result.unwrap_or_else(|error| failed(csrf, &error))
}

async fn delivery_action(
    console: &Console,
    csrf: &str,
    id: i64,
    verb: &str,
    back: &str,
) -> Result<Answer, String> {
    let (sql, title, yes, no) = match verb {
        "replay" => (
            store::REPLAY,
            "Replayed",
            "is pending again: it will be sent at once",
            "was not dead (someone replayed it already?)",
        ),
        "resend" => (
            store::RESEND,
            "Resent",
            "is pending again: it will be sent at once",
            "is pending or in flight already",
        ),
        _ => return Ok(not_found(csrf, "No such action.")),
    };
    let changed: bool = console
        .store
        .query_one(sql, &[&id, &TRIGGERED_BY])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let (title, what) = if changed {
        (title, format!("Delivery {id} {yes}."))
    } else {
        (
            "Nothing changed",
            format!("Delivery {id} {no}; nothing changed."),
        )
    };
    Ok(html(StatusCode::OK, done(csrf, title, &what, back)))
}

async fn endpoint_action(
    console: &Console,
    csrf: &str,
    id: &str,
    verb: &str,
    fields: &Fields,
) -> Result<Answer, String> {
    let back = endpoint_href(id);
    let what = match verb {
        "replay-dead" => {
            let since = at(console, field(fields, "since"), "since").await?;
            let n: i32 = console
                .store
                .query_one(
                    store::REPLAY_DEAD,
                    &[&id, &since, &TRIGGERED_BY, &None::<f64>],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            format!("{n} dead deliveries of endpoint {id} are pending again.")
        }
        "recover" => {
            let since = at(console, field(fields, "since"), "since").await?;
            let until = match field(fields, "until") {
                Some(until) => Some(at(console, Some(until), "until").await?),
                None => None,
            };
            let types: Option<Vec<String>> = field(fields, "event_types").map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            });
            let n: i32 = console
                .store
                .query_one(
                    store::RECOVER,
                    &[&id, &since, &until, &types, &TRIGGERED_BY],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            format!("{n} missed messages are on their way to endpoint {id}.")
        }
        "retry-schedule" => {
            let delays: Option<Vec<f64>> = match field(fields, "schedule") {
                Some(text) => Some(
                    RetryPolicy::parse(text, Duration::ZERO)
                        .map_err(|e| format!("retry schedule: {e}"))?
                        .delays()
                        .iter()
                        .map(|d| d.as_secs_f64())
                        .collect(),
                ),
                None => None,
            };
            console
                .store
                .query(store::SET_RETRY_SCHEDULE, &[&id, &delays, &TRIGGERED_BY])
                .await
                .map_err(|e| e.to_string())?;
            match field(fields, "schedule") {
                Some(text) => format!("Endpoint {id} retries on {text}."),
                None => format!("Endpoint {id} retries on the sidecar's schedule."),
            }
        }
        _ => return Ok(not_found(csrf, "No such action.")),
    };
    Ok(html(StatusCode::OK, done(csrf, "Done", &what, &back)))
}

/// A form's time: a duration ago (database clock) or an RFC 3339 time.
async fn at(console: &Console, text: Option<&str>, name: &str) -> Result<SystemTime, String> {
    let text = text.ok_or_else(|| format!("{name} is required"))?;
    match text.parse::<Since>()? {
        Since::At(at) => Ok(at),
        Since::Ago(ago) => console.store.ago(ago).await.map_err(|e| e.to_string()),
    }
}

/// Where a delivery action's page links back to: a console page only.
fn back(fields: &Fields) -> &str {
    match field(fields, "back") {
        Some(back)
            if back.starts_with("/console") && !back.contains("//") && !back.contains('\\') =>
        {
            back
        }
        _ => "/console",
    }
}

fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

fn not_found(csrf: &str, what: &str) -> Answer {
    html(
        StatusCode::NOT_FOUND,
        problem(Some(csrf), "Not found", what),
    )
}

fn failed(csrf: &str, what: &str) -> Answer {
    html(
        StatusCode::UNPROCESSABLE_ENTITY,
        problem(Some(csrf), "That did not work", what),
    )
}
