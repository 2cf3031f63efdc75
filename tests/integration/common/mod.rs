//! Shared test harness: one throwaway PostgreSQL cluster per test binary
//! (or the server in `OUTBOXD_TEST_DATABASE_URL`), a fresh database per
//! test cloned from a migrated template, loopback receivers, and the real
//! sidecar run in-process with its own shutdown token.

#![allow(dead_code)]

pub mod pgbouncer;
pub mod podman;
pub mod tls;
pub mod tls_postgres;

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outboxd::config::{Config, DatabaseUrl};
use outboxd::embedded::postgres::{Options, TempPostgres};
use outboxd::retry::RetryPolicy;
use outboxd::sidecar::SidecarError;
use outboxd::signature::Secret;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub use outboxd::embedded::receiver::{Receiver, Reply};

/// Set to a superuser URL (e.g. postgres://postgres@127.0.0.1/postgres) to
/// test against an existing server instead of a throwaway cluster.
const EXTERNAL: &str = "OUTBOXD_TEST_DATABASE_URL";
const TEMPLATE: &str = "outbox_template";

struct Cluster {
    /// URL of a maintenance database, without the database name.
    base: String,
    template: String,
    _server: Option<TempPostgres>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static LOGICAL_CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        // Its own thread and runtime: tests call this from inside theirs.
        std::thread::spawn(|| start_cluster(Vec::new(), true))
            .join()
            .expect("starting the test cluster")
    })
}

/// A second throwaway cluster with `wal_level = logical`, started on first
/// use (always throwaway: it needs settings an existing server may lack).
fn logical_cluster() -> &'static Cluster {
    LOGICAL_CLUSTER.get_or_init(|| {
        let settings = vec![
            ("wal_level".to_owned(), "logical".to_owned()),
            ("max_replication_slots".to_owned(), "40".to_owned()),
        ];
        std::thread::spawn(move || start_cluster(settings, false))
            .join()
            .expect("starting the logical test cluster")
    })
}

fn start_cluster(settings: Vec<(String, String)>, external_allowed: bool) -> Cluster {
    let external = std::env::var(EXTERNAL).ok().filter(|_| external_allowed);
    let (server, admin_url) = match external {
        Some(url) => (None, url),
        None => {
            let server = TempPostgres::start(&Options {
                unsafe_fast: true,
                settings,
            })
            .expect("throwaway PostgreSQL (is the server installed? see .ci/install-postgres)");
            let url = server.url("postgres");
            (Some(server), url)
        }
    };
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .expect("URL with a database name");
    let template = match server {
        Some(_) => TEMPLATE.to_owned(),
        None => format!("{TEMPLATE}_{}", std::process::id()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {template}"))
            .await
            .expect("creating the template database");
        let mut client = connect(&format!("{base}/{template}")).await;
        outboxd::db::migrate::run(&mut client)
            .await
            .expect("migrating the template");
    });
    Cluster {
        base,
        template,
        _server: server,
    }
}

/// The port of the test cluster on 127.0.0.1 (an external server's port).
pub fn cluster_port() -> u16 {
    let base = &cluster().base;
    let host_port = base.rsplit_once('@').map_or(base.as_str(), |(_, h)| h);
    host_port
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(5432)
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connecting");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of one's own.
pub struct TestDb {
    pub url: String,
    pub client: Client,
}

impl TestDb {
    /// Another connection to the same database.
    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }
}

/// A fresh, migrated database.
pub async fn fresh_db() -> TestDb {
    create_db(cluster(), &cluster().template).await
}

/// A fresh, migrated database on a server with `wal_level = logical`.
pub async fn fresh_logical_db() -> TestDb {
    let cluster = logical_cluster();
    create_db(cluster, &cluster.template).await
}

/// A fresh database without the outbox schema.
pub async fn empty_db() -> TestDb {
    create_db(cluster(), "template0").await
}

async fn create_db(cluster: &Cluster, template: &str) -> TestDb {
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let admin = connect(&format!("{}/postgres", cluster.base)).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .await
        .expect("creating a test database");
    let url = format!("{}/{name}", cluster.base);
    let client = connect(&url).await;
    TestDb { url, client }
}

static NEXT_ROLE: AtomicU32 = AtomicU32::new(0);

/// A login role that is a member of `group` (e.g. `outbox_writer`), with
/// its URL and a connection: the roles a real deployment uses. Roles are
/// cluster-wide, so the name is unique per test process.
pub async fn login_as(db: &TestDb, group: &str) -> (String, Client) {
    let name = format!(
        "{group}_login_{}_{}",
        std::process::id(),
        NEXT_ROLE.fetch_add(1, Ordering::Relaxed)
    );
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {name} LOGIN PASSWORD 'pw' IN ROLE {group}"
        ))
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&name).unwrap();
    url.set_password(Some("pw")).unwrap();
    let url = url.to_string();
    let client = connect(&url).await;
    (url, client)
}

/// Registers an endpoint signing with `secret`.
pub async fn add_endpoint(
    client: &Client,
    id: &str,
    url: &str,
    event_types: Option<&[&str]>,
    secret: &Secret,
) {
    let types: Option<Vec<String>> = event_types.map(|t| t.iter().map(|s| s.to_string()).collect());
    client
        .execute(
            // max_in_flight 64 (not the default 16): tests that want a cap set it.
            "INSERT INTO outbox.endpoints (id, url, secrets, event_types, max_in_flight)
             VALUES ($1, $2, ARRAY[$3], $4, 64)",
            &[&id, &url, &secret.to_whsec(), &types],
        )
        .await
        .expect("inserting an endpoint");
}

/// A URL where nothing listens: for tests that claim and write outcomes
/// themselves, or want every attempt to fail.
pub const NOWHERE: &str = "http://127.0.0.1:9/";

/// Registers endpoint `id` at [`NOWHERE`], with a fresh secret.
pub async fn add_unreachable_endpoint(client: &Client, id: &str) {
    add_endpoint(client, id, NOWHERE, None, &Secret::generate()).await;
}

/// The single number `sql` selects, e.g. a `count(*)`.
pub async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Inserts one message (event_id, event_type, payload JSON text).
pub async fn insert_message(client: &Client, event_id: &str, event_type: &str, payload: &str) {
    client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ($1, $2, $3::text::jsonb)",
            &[&event_id, &event_type, &payload],
        )
        .await
        .expect("inserting a message");
}

/// Sidecar settings for tests: quick retries, quick polls, short grace.
pub fn config(db: &TestDb) -> Config {
    let mut config = Config::new(DatabaseUrl::new(db.url.clone()));
    config.poll_interval = Duration::from_millis(200);
    config.retry = RetryPolicy::parse("0s,50ms,50ms", Duration::from_secs(5)).unwrap();
    config.request_timeout = Duration::from_secs(5);
    config.lease = Duration::from_secs(30);
    config.shutdown_grace = Duration::from_secs(5);
    // Receivers listen on loopback, which the SSRF guard refuses by default.
    config.allow_networks = vec!["127.0.0.0/8".parse().unwrap()];
    config
}

/// The real sidecar, in-process.
pub struct Sidecar {
    pub shutdown: CancellationToken,
    handle: JoinHandle<Result<(), SidecarError>>,
}

pub fn spawn(config: Config) -> Sidecar {
    if std::env::var_os("OUTBOXD_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("outboxd=debug"))
            .with_test_writer()
            .try_init();
    }
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(outboxd::sidecar::run(config, false, shutdown.clone()));
    Sidecar { shutdown, handle }
}

impl Sidecar {
    /// Signals shutdown and waits (bounded) for a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("sidecar stops within 30 s")
            .expect("sidecar task did not panic")
            .expect("sidecar exits cleanly");
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Routes every committed message into its deliveries, as a sidecar's
/// claim would, for tests that look at deliveries without running one.
pub async fn route(client: &Client) -> i32 {
    client
        .query_one("SELECT outbox.route(100000)", &[])
        .await
        .expect("routing")
        .get(0)
}

/// Counts deliveries by status.
pub async fn count_status(client: &Client, status: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM outbox.deliveries WHERE status = $1",
            &[&status],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until every message is routed and no delivery is pending or in
/// flight.
pub async fn wait_settled(client: &Client, timeout: Duration) -> bool {
    // One statement: two counts could straddle an in_flight -> pending write.
    eventually(timeout, || async {
        let open: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM outbox.deliveries WHERE status IN ('pending', 'in_flight'))
                      + (SELECT count(*) FROM outbox.messages WHERE NOT routed)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        open == 0
    })
    .await
}

/// A receiver that says 200 to everything and verifies with `secret`.
pub async fn ok_receiver(secret: Option<&Secret>) -> Receiver {
    let verifier = secret.map(|s| outboxd::signature::Verifier::new(vec![s.clone()]));
    Receiver::start(verifier, |_| Reply::ok()).await.unwrap()
}

pub const WAIT: Duration = Duration::from_secs(20);

/// A loopback address nothing listens on yet (for an admin server).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET url`: the status and body, or status 0 and the error when nothing
/// answered.
pub async fn get(url: &str) -> (u16, String) {
    // reqwest is built without a default crypto provider (see Deliverer).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match reqwest::get(url).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(error) => (0, error.to_string()),
    }
}

/// Waits (bounded by [`WAIT`]) until exactly `sessions` sessions of this
/// test's database wait for an advisory lock; says whether they did.
pub async fn advisory_lock_waiters(client: &Client, sessions: i64) -> bool {
    eventually(WAIT, || async {
        count(
            client,
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event = 'advisory' AND datname = current_database()",
        )
        .await
            == sessions
    })
    .await
}
