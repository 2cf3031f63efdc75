//! An application that publishes events through outboxd: it writes an
//! order and its `order.created` event in one PostgreSQL transaction, so the
//! event exists if and only if the order does, then reads the delivery
//! status back with SQL. No outboxd code is involved: any PostgreSQL client
//! can do the same (see docs/clients.md).
//!
//! ```sh
//! export DATABASE_URL=postgres://app@localhost/shop
//! outboxd migrate && outboxd run &          # the sidecar
//! cargo run --example app -- alice 1999     # customer, total in cents
//! ```
//!
//! It prints the event id (the `webhook-id` receivers see) and then each
//! delivery's status until every one is delivered or dead (30 s at most).

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// The business table (shared with examples/sql/publish_order.sql).
pub const ORDERS_TABLE: &str = include_str!("sql/orders.sql");

/// What [`place_order`] committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The new `orders.id`.
    pub order_id: i64,
    /// The event's id: `webhook-id` on the wire, your key for status queries.
    pub event_id: String,
}

/// Inserts an order and its event in one transaction. If anything fails,
/// neither is written: dropping an uncommitted transaction rolls it back.
pub async fn place_order(
    client: &mut Client,
    customer: &str,
    total_cents: i64,
) -> Result<Placed, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let order_id: i64 = tx
        .query_one(
            "INSERT INTO orders (customer, total_cents) VALUES ($1, $2) RETURNING id",
            &[&customer, &total_cents],
        )
        .await?
        .get(0);
    // A deterministic id makes retrying this function safe: a second
    // insert of the same event fails (23505) instead of sending it twice.
    let event_id = format!("order-{order_id}-created");
    // The body receivers get, as is; Standard Webhooks suggests this shape.
    let payload = serde_json::json!({
        "type": "order.created",
        "data": { "order_id": order_id, "customer": customer, "total_cents": total_cents },
    });
    tx.execute(
        // Passed as text and cast, so no serde feature of tokio-postgres is
        // needed; with `with-serde_json-1`, pass the Value itself.
        "INSERT INTO outbox.messages (event_id, event_type, payload, ordering_key)
         VALUES ($1, 'order.created', $2::text::jsonb, $3)",
        &[
            &event_id,
            &payload.to_string(),
            &format!("order-{order_id}"),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Placed { order_id, event_id })
}

/// One delivery of an event, as `outbox.message_status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryStatus {
    /// The endpoint it goes to.
    pub endpoint_id: String,
    /// `pending`, `in_flight`, `delivered`, `dead` or `cancelled`.
    pub status: String,
    /// HTTP attempts so far.
    pub attempts: i32,
    /// The receiver's last HTTP status, if it answered.
    pub last_status_code: Option<i32>,
}

impl DeliveryStatus {
    /// Whether outboxd is done with it.
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "delivered" | "dead" | "cancelled")
    }
}

/// The deliveries of `event_id`, one per endpoint.
pub async fn delivery_status(
    client: &Client,
    event_id: &str,
) -> Result<Vec<DeliveryStatus>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT endpoint_id, status, attempts, last_status_code
             FROM outbox.message_status WHERE event_id = $1 ORDER BY endpoint_id",
            &[&event_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| DeliveryStatus {
            endpoint_id: row.get(0),
            status: row.get(1),
            attempts: row.get(2),
            last_status_code: row.get(3),
        })
        .collect())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let mut args = std::env::args().skip(1);
    let customer = args.next().unwrap_or_else(|| "alice".to_owned());
    let total_cents: i64 = args.next().as_deref().unwrap_or("1999").parse()?;

    // TLS to PostgreSQL: use tokio-postgres-rustls or postgres-native-tls.
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("connection error: {error}");
        }
    });
    client.batch_execute(ORDERS_TABLE).await?;

    let placed = place_order(&mut client, &customer, total_cents).await?;
    println!(
        "order {} committed with event {}",
        placed.order_id, placed.event_id
    );

    let mut last = Vec::new();
    for _ in 0..60 {
        let now = delivery_status(&client, &placed.event_id).await?;
        if now != last {
            for d in &now {
                let code = d.last_status_code.map_or("-".to_owned(), |c| c.to_string());
                println!(
                    "  {:<12} {:<10} attempts {} last HTTP status {code}",
                    d.endpoint_id, d.status, d.attempts
                );
            }
            last = now;
        }
        if last.is_empty() {
            println!("no endpoint is subscribed to order.created: nothing to deliver");
            return Ok(());
        }
        if last.iter().all(DeliveryStatus::is_final) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("still in progress; is `outboxd run` running? (SELECT * FROM outbox.message_status)");
    Ok(())
}
