//! deploy/docker-compose.yml run for real with podman-compose: the example's
//! documented session (publish an order with psql as the application's
//! login, see the receiver verify it, read its status and outboxd's
//! metrics) against the file's own services, commands, environments,
//! volumes, health checks and network.
//!
//! What is not the file's own, and why:
//! - images: none can be pulled here, so an override file points the
//!   services at the images .ci/container builds: outboxd's and the
//!   receiver's from the Dockerfile's stages (see image.rs), and for
//!   `postgres:17` a stand-in made of the machine's Debian PostgreSQL with
//!   an entrypoint that does what the official one does for this file
//!   (.ci/compose-postgres.Containerfile). `pull_policy: never` everywhere.
//! - Debian 12's podman-compose (1.0.3) ignores three things the file
//!   relies on, so the test does them itself: the network's fixed subnet
//!   (`ipam`; the test creates the network with it, and
//!   OUTBOXD_ALLOW_NETWORKS names it), `depends_on` conditions (the test
//!   starts each service once the one it depends on is healthy or has
//!   exited 0, as the conditions say) and `profiles` (the monitoring
//!   services are never created). It also runs `CMD` health checks through
//!   `/bin/sh -c`, which the outboxd image does not have: the test runs the
//!   file's outboxd check with `podman exec` instead.
//!
//! The services talk over the file's bridge network (podman's CNI bridge,
//! with its iptables rules, on this machine only; removed with the
//! network at the end) and outboxd's admin port is published on
//! 127.0.0.1:9090, as the file says.
//!
//! Skipped, with a message, where podman-compose, the stand-in image, the
//! dnsname CNI plugin (service names as host names) or the port the file
//! publishes (127.0.0.1:9090) is missing.

use std::path::Path;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use crate::common::podman::{self, Podman};
use crate::common::*;

const POSTGRES_IMAGE: &str = "localhost/outboxd-compose-postgres:test";
const COMPOSE_FILE: &str = "deploy/docker-compose.yml";
/// The image of each service the test runs; the monitoring profile's are
/// never created.
const IMAGES: &[(&str, &str)] = &[
    ("postgres", POSTGRES_IMAGE),
    ("setup", POSTGRES_IMAGE),
    ("migrate", podman::IMAGE),
    ("outboxd", podman::IMAGE),
    ("receiver", podman::RECEIVER_IMAGE),
];
/// Where the compose file publishes outboxd's admin port.
const ADMIN: &str = "127.0.0.1:9090";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose_file() -> Yaml {
    let text = std::fs::read_to_string(repo().join(COMPOSE_FILE)).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// Why the compose example cannot run here, if it cannot.
async fn missing(podman: &Podman) -> Option<String> {
    let on_path = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    };
    if !on_path("podman-compose") {
        return Some(
            "podman-compose is not installed (bash .ci/install-podman installs it)".to_owned(),
        );
    }
    if !podman
        .run(&["image", "exists", POSTGRES_IMAGE])
        .await
        .status
        .success()
    {
        return Some(format!(
            "{POSTGRES_IMAGE}, the stand-in for postgres:17, was not built: .ci/container \
             found no PostgreSQL server (bash .ci/install-postgres, then bash .ci/container)"
        ));
    }
    let dnsname = ["/usr/lib/cni/dnsname", "/usr/libexec/cni/dnsname"];
    if !dnsname.iter().any(|p| Path::new(p).is_file()) {
        return Some(
            "the dnsname CNI plugin is missing, so services could not reach each other by \
             name (bash .ci/install-podman installs it)"
                .to_owned(),
        );
    }
    if std::net::TcpListener::bind(ADMIN).is_err() {
        return Some(format!(
            "{ADMIN}, where the compose file publishes outboxd's admin port, is in use"
        ));
    }
    None
}

/// One run of the example: its project's containers and network are
/// removed when dropped, whatever happened.
struct Project {
    name: String,
    dir: std::path::PathBuf,
    podman: &'static Podman,
}

impl Project {
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    /// `podman-compose -p NAME -f deploy/docker-compose.yml -f OVERRIDE ARGS`.
    async fn compose(&self, args: &[&str]) -> std::process::Output {
        let mut command = tokio::process::Command::new("podman-compose");
        command
            .args(["-p", &self.name, "-f"])
            .arg(repo().join(COMPOSE_FILE))
            .arg("-f")
            .arg(self.dir.join("override.yml"))
            .args(args)
            .env("CONTAINERS_CONF", repo().join(".ci/containers.conf"))
            // The file's default secret, whatever this shell has.
            .env_remove("WEBHOOK_SECRET")
            .kill_on_drop(true);
        let output = tokio::time::timeout(WAIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("podman-compose {args:?} still runs after {WAIT:?}"))
            .unwrap();
        assert!(
            output.status.success(),
            "podman-compose {args:?}: {}\n{}",
            output.status,
            podman::text(&output)
        );
        output
    }

    async fn logs(&self, service: &str) -> String {
        podman::text(&self.podman.run(&["logs", &self.container(service)]).await)
    }

    /// Starts `service` (created before) and waits until `ready` holds.
    async fn start<F, Fut>(&self, service: &str, ready: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.compose(&["start", service]).await;
        let ready = eventually(WAIT, ready).await;
        assert!(
            ready,
            "{service} never ready:\n{}",
            self.logs(service).await
        );
    }

    /// Waits until `service` has exited, and asserts it exited 0.
    async fn exited_0(&self, service: &str) {
        let container = self.container(service);
        let code = tokio::time::timeout(WAIT, self.podman.ok(&["wait", &container]))
            .await
            .unwrap_or_else(|_| panic!("{service} still runs"));
        assert_eq!(code.trim(), "0", "{service}:\n{}", self.logs(service).await);
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let podman = |args: &[&str]| {
            let _ = std::process::Command::new("podman")
                .args(args)
                .env("CONTAINERS_CONF", repo().join(".ci/containers.conf"))
                .output();
        };
        let label = format!("label=io.podman.compose.project={}", self.name);
        let listed = std::process::Command::new("podman")
            .args(["ps", "--all", "--quiet", "--filter", &label])
            .env("CONTAINERS_CONF", repo().join(".ci/containers.conf"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in listed.split_whitespace() {
            podman(&["rm", "--force", "--time=0", id]);
        }
        podman(&["network", "rm", "--force", &format!("{}_outbox", self.name)]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `{"services": {NAME: {"image": IMAGE, "pull_policy": "never"}}}`.
fn override_file() -> String {
    let mut services = serde_json::Map::new();
    for (service, image) in IMAGES {
        services.insert(
            service.to_string(),
            serde_json::json!({"image": image, "pull_policy": "never"}),
        );
    }
    // JSON is YAML.
    serde_json::json!({ "services": services }).to_string()
}

#[tokio::test]
async fn compose_example_delivers_a_published_order_to_its_receiver() {
    let test = "compose_example_delivers_a_published_order_to_its_receiver";
    let Some(podman) = podman::podman(test) else {
        return;
    };
    if let Some(why) = missing(podman).await {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let name = podman::unique_name("compose");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("override.yml"), override_file()).unwrap();
    let project = Project { name, dir, podman };

    // The file's network with the file's subnet (podman-compose 1.0.3
    // would create it without).
    let file = compose_file();
    let subnet = file["networks"]["outbox"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap()
        .to_owned();
    let network = format!("{}_outbox", project.name);
    podman
        .ok(&[
            "network",
            "create",
            "--subnet",
            &subnet,
            "--label",
            &format!("io.podman.compose.project={}", project.name),
            &network,
        ])
        .await;

    // Every service of the default profile, created, none started.
    project
        .compose(&["up", "--no-build", "--no-start", "setup"])
        .await;
    project
        .compose(&["up", "--no-build", "--no-start", "receiver"])
        .await;

    // In the order and on the conditions of the file's depends_on.
    let started = std::time::Instant::now();
    let postgres = project.container("postgres");
    project
        .start("postgres", || async {
            // The file's own health check (pg_isready), as podman runs it.
            podman
                .run(&["healthcheck", "run", &postgres])
                .await
                .status
                .success()
        })
        .await;
    project.start("migrate", || async { true }).await;
    project.exited_0("migrate").await;
    let outboxd = project.container("outboxd");
    let mut check: Vec<String> = file["services"]["outboxd"]["healthcheck"]["test"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(check.remove(0), "CMD");
    project
        .start("outboxd", || async {
            let mut exec = vec!["exec".to_owned(), outboxd.clone()];
            exec.extend(check.iter().cloned());
            podman.run(&exec).await.status.success()
        })
        .await;
    project.start("receiver", || async { true }).await;
    project.start("setup", || async { true }).await;
    project.exited_0("setup").await;

    // The session the compose file's header documents.
    let published = project
        .compose(&[
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "shop_app",
            "-d",
            "shop",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "idempotency_key=checkout-1",
            "-v",
            "customer=alice",
            "-v",
            "total_cents=1999",
            "-f",
            "/examples/sql/publish_order.sql",
        ])
        .await;
    let published = String::from_utf8_lossy(&published.stdout).into_owned();
    assert!(published.contains("order-1-created"), "{published}");
    let verified = eventually(WAIT, || async {
        project
            .logs("receiver")
            .await
            .lines()
            .any(|l| l.starts_with("order-1-created order.created"))
    })
    .await;
    assert!(
        verified,
        "the receiver did not verify the order:\n{}\noutboxd:\n{}",
        project.logs("receiver").await,
        project.logs("outboxd").await
    );
    let receiver_log = project.logs("receiver").await;
    assert!(
        receiver_log.contains("\"customer\":\"alice\""),
        "{receiver_log}"
    );

    let status = project
        .compose(&[
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "shop_app",
            "-d",
            "shop",
            "-f",
            "/examples/sql/delivery_status.sql",
        ])
        .await;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status
            .lines()
            .any(|l| l.contains("order-1-created") && l.contains("delivered")),
        "{status}"
    );

    // The published admin port, from the host.
    let line = "outboxd_deliveries_total{endpoint=\"receiver\",outcome=\"delivered\"} 1";
    let scraped = eventually(Duration::from_secs(5), || async {
        metrics()
            .await
            .is_some_and(|m| m.lines().any(|l| l == line))
    })
    .await;
    assert!(scraped, "{:?}", metrics().await);

    project.compose(&["down"]).await;
    eprintln!(
        "compose example: published order verified by the receiver {:.1?} after the first service started",
        started.elapsed()
    );
}

/// `GET /metrics` on the published admin port; `None` without an answer.
async fn metrics() -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(ADMIN).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: outboxd\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    Some(answer)
}
