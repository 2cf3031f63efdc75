//! The fault suite's own harness, on top of the integration harness
//! (`common`: shared cluster, fresh databases, receivers): the real binary
//! as child processes ([`process`]), clusters a test may stop and restart
//! ([`OwnCluster`]), a proxy that kills connections silently ([`proxy`]),
//! receivers that misbehave below HTTP ([`hostile`]), and the queries the
//! scenarios assert with.

pub mod hostile;
pub mod process;
pub mod proxy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outboxd::embedded::postgres::{Options, TempPostgres};
use tokio_postgres::Client;

use crate::common::{self, Receiver, TestDb};

pub use process::{Launch, Outboxd};

/// A throwaway cluster of one's own, for tests that stop PostgreSQL. Crash
/// safe (synchronous commit, full page writes), unlike the shared one: an
/// immediate stop must not lose commits that were acknowledged. fsync stays
/// off because the machine itself does not crash.
pub struct OwnCluster {
    server: Arc<TempPostgres>,
    /// The migrated `postgres` database.
    pub db: TestDb,
}

impl OwnCluster {
    /// Starts and migrates a cluster.
    pub async fn start() -> Self {
        let server = tokio::task::spawn_blocking(|| {
            TempPostgres::start(&Options {
                unsafe_fast: false,
                settings: vec![("fsync".into(), "off".into())],
            })
        })
        .await
        .unwrap()
        .expect("a throwaway PostgreSQL of the test's own");
        let url = server.url("postgres");
        let mut client = common::connect(&url).await;
        outboxd::db::migrate::run(&mut client).await.unwrap();
        Self {
            server: Arc::new(server),
            db: TestDb { url, client },
        }
    }

    /// `pg_ctl stop -m <mode>`: `fast` or `immediate`.
    pub async fn stop(&self, mode: &'static str) {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || server.stop(mode))
            .await
            .unwrap()
            .expect("stopping PostgreSQL");
    }

    /// Starts the stopped server on the same port.
    pub async fn restart(&self) {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || server.restart())
            .await
            .unwrap()
            .expect("restarting PostgreSQL");
    }
}

/// Inserts `count` messages `<prefix>-<n>` (n from `first`) in one statement.
pub async fn insert_batch(client: &Client, prefix: &str, first: i64, count: i64) {
    client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload)
             SELECT $1 || '-' || g, 'fault.test', jsonb_build_object('n', g)
             FROM generate_series($2::bigint, $2 + $3 - 1) g",
            &[&prefix, &first, &count],
        )
        .await
        .expect("inserting messages");
}

/// How many times each `webhook-id` arrived.
pub fn receipts(receiver: &Receiver) -> HashMap<String, usize> {
    let mut per_id = HashMap::new();
    for r in receiver.received() {
        *per_id.entry(r.webhook_id).or_default() += 1;
    }
    per_id
}

/// Receipts beyond the first, summed over ids.
pub fn extra_receipts(per_id: &HashMap<String, usize>) -> usize {
    per_id.values().map(|n| n - 1).sum()
}

/// Deliveries by status.
pub async fn statuses(client: &Client) -> HashMap<String, i64> {
    client
        .query(
            "SELECT status, count(*) FROM outbox.deliveries GROUP BY status",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until `count` deliveries are `delivered`.
pub async fn wait_delivered(client: &Client, count: i64, timeout: Duration) -> bool {
    common::eventually(timeout, || async {
        common::count_status(client, "delivered").await == count
    })
    .await
}

/// Logged attempts per `attempts.worker_id`.
pub async fn attempts_by_worker(client: &Client) -> HashMap<String, i64> {
    client
        .query(
            "SELECT coalesce(worker_id, '?'), count(*) FROM outbox.attempts GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Rows of `outbox.attempts`.
pub async fn attempt_rows(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM outbox.attempts", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until PostgreSQL has no session left for `worker_id` (a killed
/// process's backends end when they notice the closed socket).
pub async fn wait_sessions_gone(client: &Client, worker_id: &str) -> bool {
    common::eventually(Duration::from_secs(10), || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1",
                &[&worker_id],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await
}
