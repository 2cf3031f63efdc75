//! The console's pages, from the rows of `store`'s statements: the
//! endpoint list, one endpoint (its recent attempts, dead deliveries and
//! recovery forms), one message (its deliveries and their attempts) and
//! the dead deliveries. Nothing here can show a secret or a header: the
//! statements do not read them, and the URL is redacted.

use maud::{Markup, html};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio_postgres::Row;

use super::layout::{page, post_form, status};
use crate::delivery::shown_url::redacted_url;

/// A link to a message's page.
pub fn message_href(event_id: &str) -> String {
    format!(
        "/console/messages?event_id={}",
        utf8_percent_encode(event_id, NON_ALPHANUMERIC)
    )
}

/// A link to an endpoint's page (endpoint ids are URL-safe, but encode
/// anyway).
pub fn endpoint_href(id: &str) -> String {
    format!(
        "/console/endpoints/{}",
        utf8_percent_encode(id, NON_ALPHANUMERIC)
    )
}

/// `/console`: every endpoint with its health, and the search form.
pub fn endpoints(csrf: &str, rows: &[Row]) -> Markup {
    page(
        "Endpoints",
        Some(csrf),
        html! {
            h1 { "Endpoints" }
            form method="get" action="/console/messages" {
                fieldset {
                    label for="event_id" { "Find a message by event id (webhook-id)" }
                    input #event_id type="text" name="event_id" size="40" required;
                    " "
                    button.primary type="submit" { "Search" }
                }
            }
            @if rows.is_empty() {
                p.muted { "No endpoints yet: add one with outboxd endpoint add ID URL." }
            } @else {
                table #endpoints {
                    thead { tr {
                        th { "Endpoint" } th { "Tenant" } th { "State" } th { "Pending" }
                        th { "In flight" } th { "Dead" } th { "Last success" } th { "Failure streak" }
                    } }
                    tbody {
                        @for row in rows {
                            @let id: &str = row.get("endpoint_id");
                            @let enabled: bool = row.get("enabled");
                            tr {
                                td { a href=(endpoint_href(id)) { (id) } }
                                td { (row.get::<_, Option<&str>>("tenant_id").unwrap_or("—")) }
                                td {
                                    (status(if enabled { "enabled" } else { "disabled" }))
                                    @if let Some(reason) = row.get::<_, Option<&str>>("disabled_reason") {
                                        " " span.muted { (reason) }
                                    }
                                }
                                td.n { (row.get::<_, i64>("pending")) }
                                td.n { (row.get::<_, i64>("in_flight")) }
                                td.n {
                                    @let dead: i64 = row.get("dead");
                                    @if dead > 0 { a href={ "/console/dead?endpoint=" (id) } { (dead) } } @else { "0" }
                                }
                                td { (row.get::<_, Option<&str>>("last_success").unwrap_or("never")) }
                                td.n { (row.get::<_, i32>("failure_streak")) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// One endpoint: what it is, its recent attempts, its dead deliveries, and
/// the replay, recover and retry-schedule forms.
pub fn endpoint(csrf: &str, endpoint: &Row, attempts: &[Row], dead: &[Row]) -> Markup {
    let id: &str = endpoint.get("id");
    let action = |what: &str| format!("{}/{what}", endpoint_href(id));
    let types: Option<Vec<String>> = endpoint.get("event_types");
    let schedule: Option<Vec<String>> = endpoint.get("retry_schedule");
    let enabled: bool = endpoint.get("enabled");
    page(
        id,
        Some(csrf),
        html! {
            h1 { "Endpoint " code { (id) } }
            table.facts {
                tr { th { "Tenant" } td { (endpoint.get::<_, Option<&str>>("tenant_id").unwrap_or("—")) } }
                tr { th { "URL" } td { code { (redacted_url(endpoint.get("url"))) } } }
                tr { th { "Event types" } td { (types.map_or("every type".to_owned(), |t| t.join(", "))) } }
                tr { th { "State" } td {
                    (status(if enabled { "enabled" } else { "disabled" }))
                    @if let Some(reason) = endpoint.get::<_, Option<&str>>("disabled_reason") { " " (reason) }
                } }
                tr { th { "Pending / in flight / dead" } td {
                    (endpoint.get::<_, i64>("pending")) " / " (endpoint.get::<_, i64>("in_flight")) " / "
                    (endpoint.get::<_, i64>("dead"))
                } }
                tr { th { "Last success" } td { (endpoint.get::<_, Option<&str>>("last_success").unwrap_or("never")) } }
                tr { th { "Failure streak" } td { (endpoint.get::<_, i32>("failure_streak")) } }
                tr { th { "Retry schedule" } td {
                    (schedule.as_ref().map_or("the sidecar's".to_owned(), |s| s.join(", ")))
                } }
            }
            h2 { "Recent attempts" }
            (attempt_table(attempts, true))
            h2 { "Dead deliveries" }
            (dead_table(csrf, dead, false, &endpoint_href(id)))
            form method="post" action=(action("replay-dead")) {
                fieldset {
                    legend { "Replay every dead delivery" }
                    input type="hidden" name="csrf" value=(csrf);
                    label { "that died since " input type="text" name="since" value="24h" size="24"; }
                    button type="submit" { "Replay dead" }
                    span.muted { " a duration (2h) or a time (2026-11-28T12:00:00Z)" }
                }
            }
            form method="post" action=(action("recover")) {
                fieldset {
                    legend { "Recover: send the messages this endpoint has no delivery for" }
                    input type="hidden" name="csrf" value=(csrf);
                    label { "written since " input type="text" name="since" value="24h" size="24"; }
                    label { "until " input type="text" name="until" placeholder="now" size="24"; }
                    label { "event types " input type="text" name="event_types" placeholder="its subscription" size="30"; }
                    button type="submit" { "Recover" }
                    p.muted { "Messages of its tenant only, older than the endpoint included; event types comma-separated." }
                }
            }
            form method="post" action=(action("retry-schedule")) {
                fieldset {
                    legend { "Retry schedule of this endpoint" }
                    input type="hidden" name="csrf" value=(csrf);
                    label { "delays " input type="text" name="schedule" size="40"
                        placeholder="e.g. 0s,10s,5m,1h (empty: the sidecar's)"
                        value=[schedule.as_ref().map(|s| s.join(","))]; }
                    button type="submit" { "Save" }
                }
            }
        },
    )
}

/// A message and its deliveries, each with its attempts and actions.
pub fn message(csrf: &str, message: &Row, deliveries: &[Row], attempts: &[Row]) -> Markup {
    let event_id: &str = message.get("event_id");
    let routed: bool = message.get("routed");
    page(
        event_id,
        Some(csrf),
        html! {
            h1 { "Message " code #event-id { (event_id) } }
            table.facts {
                tr { th { "Event type" } td { (message.get::<_, &str>("event_type")) } }
                tr { th { "Tenant" } td { (message.get::<_, Option<&str>>("tenant_id").unwrap_or("—")) } }
                tr { th { "Written" } td { (message.get::<_, &str>("created")) } }
                @if let Some(key) = message.get::<_, Option<&str>>("ordering_key") {
                    tr { th { "Ordering key" } td { code { (key) } } }
                }
                @if let Some(to) = message.get::<_, Option<&str>>("endpoint_id") {
                    tr { th { "Addressed to" } td { a href=(endpoint_href(to)) { (to) } } }
                }
            }
            @if !routed {
                p.notice { "Not routed yet: outboxd makes its deliveries right after the commit (is a sidecar running?)." }
            }
            h2 { "Deliveries" }
            @if deliveries.is_empty() && routed {
                p.muted { "No endpoint was subscribed to this event type when the message was written. Recover sends it to an endpoint added since." }
            }
            @for delivery in deliveries {
                @let id: i64 = delivery.get("id");
                @let state: &str = delivery.get("status");
                @let endpoint: &str = delivery.get("endpoint_id");
                section.delivery id={ "delivery-" (id) } {
                    h2 {
                        "To " a href=(endpoint_href(endpoint)) { (endpoint) } " " (status(state))
                        span.muted { " delivery " (id) ", " (delivery.get::<_, i32>("attempts")) " attempts" }
                    }
                    p {
                        @if let Some(at) = delivery.get::<_, Option<&str>>("next_attempt") { "Next attempt: " (at) ". " }
                        @if let Some(at) = delivery.get::<_, Option<&str>>("delivered") { "Delivered: " (at) ". " }
                        @if state == "dead" {
                            (post_form(&format!("/console/deliveries/{id}/replay"), csrf, "Replay", &[("back", &message_href(event_id))]))
                        }
                        @if matches!(state, "delivered" | "dead" | "cancelled") {
                            " " (post_form(&format!("/console/deliveries/{id}/resend"), csrf, "Resend", &[("back", &message_href(event_id))]))
                        }
                    }
                    @let mine: Vec<&Row> = attempts.iter().filter(|a| a.get::<_, i64>("delivery_id") == id).collect();
                    (attempt_rows(&mine, false))
                }
            }
        },
    )
}

/// `/console/dead`: the most recently dead deliveries.
pub fn dead(csrf: &str, endpoint: Option<&str>, rows: &[Row]) -> Markup {
    page(
        "Dead deliveries",
        Some(csrf),
        html! {
            h1 {
                "Dead deliveries"
                @if let Some(endpoint) = endpoint { " of " a href=(endpoint_href(endpoint)) { (endpoint) } }
            }
            (dead_table(csrf, rows, true, "/console/dead"))
        },
    )
}

fn dead_table(csrf: &str, rows: &[Row], with_endpoint: bool, back: &str) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { "None." }
        } @else {
            table.dead {
                thead { tr {
                    th { "Event id" } th { "Type" }
                    @if with_endpoint { th { "Endpoint" } th { "Tenant" } }
                    th { "Attempts" } th { "Last answer" } th { "Died" } th {}
                } }
                tbody {
                    @for row in rows {
                        @let id: i64 = row.get("id");
                        @let event_id: &str = row.get("event_id");
                        tr {
                            td { a href=(message_href(event_id)) { code { (event_id) } } }
                            td { (row.get::<_, &str>("event_type")) }
                            @if with_endpoint {
                                @let endpoint: &str = row.get("endpoint_id");
                                td { a href=(endpoint_href(endpoint)) { (endpoint) } }
                                td { (row.get::<_, Option<&str>>("tenant_id").unwrap_or("—")) }
                            }
                            td.n { (row.get::<_, i32>("attempts")) }
                            td {
                                @match (row.get::<_, Option<&str>>("last_error"), row.get::<_, Option<i32>>("last_status_code")) {
                                    (Some(error), _) => span.err { (error) },
                                    (None, Some(code)) => { "HTTP " (code) },
                                    (None, None) => "",
                                }
                            }
                            td { (row.get::<_, &str>("died")) }
                            td { (post_form(&format!("/console/deliveries/{id}/replay"), csrf, "Replay", &[("back", back)])) }
                        }
                    }
                }
            }
        }
    }
}

fn attempt_table(rows: &[Row], with_message: bool) -> Markup {
    let rows: Vec<&Row> = rows.iter().collect();
    attempt_rows(&rows, with_message)
}

fn attempt_rows(rows: &[&Row], with_message: bool) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { "No attempts yet." }
        } @else {
            table.attempts {
                thead { tr {
                    @if with_message { th { "Event id" } th { "Type" } }
                    th { "#" } th { "Started" } th { "Duration" } th { "Status" } th { "Error" } th { "Response (excerpt)" }
                } }
                tbody {
                    @for row in rows {
                        tr {
                            @if with_message {
                                @let event_id: &str = row.get("event_id");
                                td { a href=(message_href(event_id)) { code { (event_id) } } }
                                td { (row.get::<_, &str>("event_type")) }
                            }
                            td.n { (row.get::<_, i32>("attempt")) }
                            td { (row.get::<_, &str>("started")) }
                            td.n { (row.get::<_, i32>("duration_ms")) " ms" }
                            td { @if let Some(code) = row.get::<_, Option<i32>>("status_code") { (code) } @else { "—" } }
                            td.err { (row.get::<_, Option<&str>>("error").unwrap_or("")) }
                            td { @if let Some(body) = row.get::<_, Option<&str>>("excerpt") { pre { (body) } } }
                        }
                    }
                }
            }
        }
    }
}
