//! outboxd's container image run as the Kubernetes example runs it (user
//! 65532, read-only root file system, no capabilities, no privilege
//! escalation, 128 MiB) against the throwaway cluster on the host network:
//! `migrate`, then the image's default command, delivering signed
//! webhooks, healthy by its own HEALTHCHECK, stopping cleanly on `podman
//! stop`, and as two replicas delivering each message once.
//!
//! Skipped, with a message, where podman is missing or the tests do not
//! run as root.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outboxd::signature::{Secret, Verifier};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::podman::{self, Container, HARDENED, IMAGE};
use crate::common::*;

/// `--env=NAME=VALUE` options.
fn env(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(k, v)| format!("--env={k}={v}"))
        .collect()
}

/// The Kubernetes example's hardening, and `pairs` as the environment.
fn hardened_with(pairs: &[(&str, &str)]) -> Vec<String> {
    let mut options: Vec<String> = HARDENED.iter().map(|s| s.to_string()).collect();
    options.extend(env(pairs));
    options
}

fn free_admin_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// What `/proc/PID/status` says about a process.
fn proc_status(pid: u32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// The mount options of the process's root file system.
fn root_mount_options(pid: u32) -> String {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|fields| fields[4] == "/")
        .map(|fields| fields[5].to_owned())
        .expect("a root mount")
}

/// `GET path` from the admin server at `addr`, from outside the container.
async fn admin_get(addr: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: outboxd\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// How many messages the first test delivers before the one in flight at
/// SIGTERM.
const MESSAGES: usize = 20;

#[tokio::test]
async fn sidecar_image_migrates_delivers_and_stops_cleanly_under_kubernetes_hardening() {
    let test = "sidecar_image_migrates_delivers_and_stops_cleanly_under_kubernetes_hardening";
    let Some(podman) = podman::podman(test) else {
        return;
    };
    // The schema's owner migrates, from the image, as a Job would.
    let db = empty_db().await;
    let migrate = Container::start(
        podman,
        "migrate",
        IMAGE,
        &hardened_with(&[("DATABASE_URL", &db.url)]),
        &["migrate"],
    )
    .await;
    assert_eq!(migrate.wait(WAIT).await, 0, "{}", migrate.logs().await);
    let applied: i64 = db
        .client
        .query_one("SELECT count(*) FROM outbox.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert!(applied > 10, "{applied} migrations");

    // outboxd logs in as a member of outbox_sidecar only.
    let (sidecar_url, _) = login_as(&db, "outbox_sidecar").await;
    let secret = Secret::generate();
    let receiver = Receiver::start(Some(Verifier::new(vec![secret.clone()])), |r| {
        if r.webhook_id == "in-flight-at-sigterm" {
            Reply::ok().delay(Duration::from_secs(3))
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "image", &receiver.url(), None, &secret).await;
    let admin = free_admin_addr();
    // No arguments: the image's CMD, `run`.
    let sidecar = Container::start(
        podman,
        "run",
        IMAGE,
        &hardened_with(&[
            ("DATABASE_URL", &sidecar_url),
            ("OUTBOXD_ADMIN_ADDR", &admin),
            ("OUTBOXD_ALLOW_NETWORKS", "127.0.0.0/8"),
            ("OUTBOXD_POLL_INTERVAL", "200ms"),
            ("RUST_LOG", "info"),
        ]),
        &[],
    )
    .await;
    let healthy = eventually(WAIT, || sidecar.healthy()).await;
    assert!(
        healthy,
        "podman healthcheck run: unhealthy\n{}",
        sidecar.logs().await
    );

    // The process as the kernel sees it.
    let pid = sidecar.pid().await;
    let status = proc_status(pid);
    assert_eq!(status["Uid"], "65532 65532 65532 65532");
    assert_eq!(status["Gid"], "65532 65532 65532 65532");
    assert_eq!(status["CapEff"], "0000000000000000");
    assert_eq!(status["CapPrm"], "0000000000000000");
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(
        status["Seccomp"], "2",
        "filtered by podman's default profile"
    );
    let root = root_mount_options(pid);
    assert!(root.split(',').any(|o| o == "ro"), "root mounted {root}");

    let started = Instant::now();
    for n in 0..MESSAGES {
        insert_message(
            &db.client,
            &format!("image-{n}"),
            "image.tested",
            "{\"n\":1}",
        )
        .await;
    }
    let delivered = receiver
        .wait_until(WAIT, |all| {
            all.iter().filter(|r| r.verified == Some(Ok(()))).count() == MESSAGES
        })
        .await;
    assert!(delivered, "not delivered:\n{}", sidecar.logs().await);
    eprintln!(
        "{MESSAGES} delivered from the container in {:.1?}",
        started.elapsed()
    );
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.verified == Some(Ok(())))
    );

    // Scraped from outside the container, as Prometheus would; counted
    // once the outcomes are written, a moment after the answers.
    let line =
        format!("outboxd_deliveries_total{{endpoint=\"image\",outcome=\"delivered\"}} {MESSAGES}");
    let counted = eventually(WAIT, || async {
        admin_get(&admin, "/metrics")
            .await
            .lines()
            .any(|l| l == line)
    })
    .await;
    assert!(counted, "{}", admin_get(&admin, "/metrics").await);

    // `podman stop` (SIGTERM, then SIGKILL after the Kubernetes example's
    // terminationGracePeriodSeconds) while a request is in flight: outboxd
    // waits for the answer, writes the outcome and exits 0.
    insert_message(&db.client, "in-flight-at-sigterm", "image.tested", "{}").await;
    let in_flight = receiver
        .wait_until(WAIT, |all| {
            all.iter().any(|r| r.webhook_id == "in-flight-at-sigterm")
        })
        .await;
    assert!(in_flight);
    let stopping = Instant::now();
    podman.ok(&["stop", "--time=30", &sidecar.name]).await;
    let stopped_in = stopping.elapsed();
    let code = sidecar.wait(Duration::from_secs(5)).await;
    let logs = sidecar.logs().await;
    assert_eq!(code, 0, "exit code after SIGTERM\n{logs}");
    assert!(
        stopped_in < Duration::from_secs(25),
        "{stopped_in:?}\n{logs}"
    );
    let row = db
        .client
        .query_one(
            "SELECT d.status, d.attempts, d.last_status_code
               FROM outbox.deliveries d JOIN outbox.messages m ON m.id = d.message_id
              WHERE m.event_id = 'in-flight-at-sigterm'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "delivered", "{logs}");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(row.get::<_, Option<i32>>(2), Some(200));
    assert_eq!(
        count_status(&db.client, "delivered").await,
        MESSAGES as i64 + 1
    );
    let attempts: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM outbox.attempts WHERE status_code = 200",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, MESSAGES as i64 + 1, "every outcome written");
    eprintln!("podman stop with a request in flight: exit 0 after {stopped_in:.1?}");
}

#[tokio::test]
async fn two_sidecar_containers_deliver_each_message_exactly_once() {
    let test = "two_sidecar_containers_deliver_each_message_exactly_once";
    let Some(podman) = podman::podman(test) else {
        return;
    };
    let db = fresh_db().await;
    let (sidecar_url, _) = login_as(&db, "outbox_sidecar").await;
    let secret = Secret::generate();
    // Slow enough, with few requests per replica, that both get work.
    let receiver = Receiver::start(Some(Verifier::new(vec![secret.clone()])), |_| {
        Reply::ok().delay(Duration::from_millis(20))
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "replicas", &receiver.url(), None, &secret).await;
    let mut replicas = Vec::new();
    for worker in ["replica-a", "replica-b"] {
        let admin = free_admin_addr();
        let container = Container::start(
            podman,
            worker,
            IMAGE,
            &hardened_with(&[
                ("DATABASE_URL", &sidecar_url),
                ("OUTBOXD_ADMIN_ADDR", &admin),
                ("OUTBOXD_ALLOW_NETWORKS", "127.0.0.0/8"),
                ("OUTBOXD_POLL_INTERVAL", "200ms"),
                ("OUTBOXD_CONCURRENCY", "4"),
                ("OUTBOXD_WORKER_ID", worker),
            ]),
            &["run"],
        )
        .await;
        replicas.push(container);
    }
    for replica in &replicas {
        // Ready: the wake-up listener is subscribed.
        let ready = eventually(WAIT, || async {
            podman
                .run(&[
                    "exec",
                    &replica.name,
                    "/usr/local/bin/outboxd",
                    "healthcheck",
                    "--path",
                    "/readyz",
                ])
                .await
                .status
                .success()
        })
        .await;
        assert!(
            ready,
            "{} never ready\n{}",
            replica.name,
            replica.logs().await
        );
    }

    const COUNT: i64 = 200;
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload)
             SELECT 'replicated-' || g, 't', '{}' FROM generate_series(1, $1::int) g",
            &[&(COUNT as i32)],
        )
        .await
        .unwrap();
    assert!(wait_settled(&db.client, WAIT).await, "not all delivered");
    for replica in &replicas {
        podman.ok(&["stop", "--time=30", &replica.name]).await;
        assert_eq!(
            replica.wait(Duration::from_secs(5)).await,
            0,
            "{}",
            replica.logs().await
        );
    }

    let mut per_id: HashMap<String, usize> = HashMap::new();
    for request in receiver.received() {
        assert_eq!(request.verified, Some(Ok(())));
        *per_id.entry(request.webhook_id).or_default() += 1;
    }
    assert_eq!(per_id.len() as i64, COUNT);
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "POSTed more than once: {twice:?}");
    let by_worker: HashMap<String, i64> = db
        .client
        .query(
            "SELECT worker_id, count(*) FROM outbox.attempts GROUP BY worker_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(by_worker.values().sum::<i64>(), COUNT, "{by_worker:?}");
    for worker in ["replica-a", "replica-b"] {
        assert!(
            by_worker.get(worker).is_some_and(|&n| n > 0),
            "{by_worker:?}"
        );
    }
    eprintln!("two containers, {COUNT} messages, attempts per replica: {by_worker:?}");
}
