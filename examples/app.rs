//! An application that publishes events through outboxd: it writes an
//! order and its `order.created` event in one PostgreSQL transaction, so the
//! event exists if and only if the order does, then reads the delivery
//! status back with SQL. No outboxd code is involved: any PostgreSQL client
//! can do the same (see docs/clients.md).
//!
//! ```sh
//! export DATABASE_URL=postgres://app@localhost/shop
//! outboxd migrate && outboxd run &          # the sidecar
//! cargo run --example app -- alice 1999 checkout-7f3a   # customer, cents, idempotency key
//! ```
//!
//! It prints the event id (the `webhook-id` receivers see) and then each
//! delivery's status until every one is delivered or dead (30 s at most).
//! Run it twice with the same key: the second run places nothing and
//! sends nothing, as a retried request must.
//!
//! What makes a retry safe is the **idempotency key** of the request (the
//! client's `Idempotency-Key` header, a form's nonce, the id of the command
//! being processed): the same on every retry, unique in `orders`. A retry
//! of a request that committed finds its order and stops; its event was
//! committed with it. A deterministic event id alone (`order-{id}` from
//! `RETURNING id`) is not enough: a retried transaction makes a new order,
//! with a new id, and so a new event.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// The business table (shared with examples/sql/publish_order.sql).
pub const ORDERS_TABLE: &str = include_str!("sql/orders.sql");

/// What [`place_order`] committed, or found committed by an earlier try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The `orders.id`.
    pub order_id: i64,
    /// The event's id: `webhook-id` on the wire, your key for status queries.
    pub event_id: String,
    /// False when an earlier try with the same idempotency key had placed
    /// the order already: nothing was written, nothing more is sent.
    pub new: bool,
}

/// The event id of an order's `order.created` event.
fn created_event_id(order_id: i64) -> String {
    format!("order-{order_id}-created")
}

/// Inserts an order and its event in one transaction, once per
/// `idempotency_key`: a retry of a request that committed returns the
/// order it placed and writes nothing. If anything fails, neither row is
/// written: dropping an uncommitted transaction rolls it back.
pub async fn place_order(
    client: &mut Client,
    idempotency_key: &str,
    customer: &str,
    total_cents: i64,
) -> Result<Placed, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // A concurrent try with the same key waits here for the first to
    // commit (then finds its order) or roll back (then inserts).
    let inserted = tx
        .query_opt(
            "INSERT INTO orders (idempotency_key, customer, total_cents) VALUES ($1, $2, $3)
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            &[&idempotency_key, &customer, &total_cents],
        )
        .await?;
    let Some(row) = inserted else {
        // Placed by an earlier try, whose event committed with it.
        let order_id: i64 = tx
            .query_one(
                "SELECT id FROM orders WHERE idempotency_key = $1",
                &[&idempotency_key],
            )
            .await?
            .get(0);
        return Ok(Placed {
            order_id,
            event_id: created_event_id(order_id),
            new: false,
        });
    };
    let order_id: i64 = row.get(0);
    // Derived from the order, so one order has one event; it is the
    // idempotency key above that keeps a retry from making a second order.
    let event_id = created_event_id(order_id);
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
    Ok(Placed {
        order_id,
        event_id,
        new: true,
    })
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
    // In a service: the client's Idempotency-Key, the same on every retry.
    let key = args.next().unwrap_or_else(|| "checkout-7f3a".to_owned());

    // TLS to PostgreSQL: use tokio-postgres-rustls or postgres-native-tls.
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("connection error: {error}");
        }
    });
    client.batch_execute(ORDERS_TABLE).await?;

    let placed = place_order(&mut client, &key, &customer, total_cents).await?;
    if placed.new {
        println!(
            "order {} committed with event {}",
            placed.order_id, placed.event_id
        );
    } else {
        println!(
            "order {} was placed by an earlier try with key {key}: nothing new is sent",
            placed.order_id
        );
    }

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
