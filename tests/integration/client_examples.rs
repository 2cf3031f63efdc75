//! The examples in other languages, run for real against the real sidecar:
//! docs/clients.md's producer snippets (Python with psycopg 3, Node.js with
//! node-postgres) write an order and its event, and the receivers of
//! examples/receivers/ (Python and Node.js, verifying with the official
//! Standard Webhooks libraries) get it, verified. `.ci/install-client-examples`
//! installs the packages from PyPI and npm into target/client-examples;
//! without them (or without python3 or node) each test says so and skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use outboxd::signature::{self, Secret};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::common::*;

const ORDERS_TABLE: &str = include_str!("../../examples/sql/orders.sql");

fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Where `.ci/install-client-examples` put the packages.
fn cache() -> PathBuf {
    repo_path("target/client-examples")
}

/// The one `lang` block of docs/clients.md.
fn snippet(lang: &str) -> String {
    let doc = std::fs::read_to_string(repo_path("docs/clients.md")).unwrap();
    let blocks: Vec<&str> = doc
        .split(&format!("```{lang}\n"))
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 1, "one {lang} block in docs/clients.md");
    blocks[0].to_owned()
}

/// A language's interpreter and where its scripts run, or why not.
struct Runtime {
    /// `python` of the venv, or `node`.
    program: PathBuf,
    /// Scripts are written here (Node resolves `import` from the script's
    /// directory, so its scripts live beside node_modules).
    dir: PathBuf,
    /// The file extension of its scripts.
    ext: &'static str,
}

fn python() -> Result<Runtime, String> {
    let program = cache().join("python/bin/python");
    let ready = std::process::Command::new(&program)
        .args(["-c", "import psycopg, standardwebhooks"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        return Err(format!(
            "{} cannot import psycopg and standardwebhooks",
            program.display()
        ));
    }
    Ok(Runtime {
        program,
        dir: std::env::temp_dir(),
        ext: "py",
    })
}

fn node() -> Result<Runtime, String> {
    let dir = cache().join("node");
    let modules = ["pg", "standardwebhooks"];
    if let Some(missing) = modules
        .iter()
        .find(|m| !dir.join("node_modules").join(m).is_dir())
    {
        return Err(format!(
            "{missing} is not in {}/node_modules",
            dir.display()
        ));
    }
    let found = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Err("node is not on PATH".into());
    }
    Ok(Runtime {
        program: "node".into(),
        dir,
        ext: "mjs",
    })
}

fn skip(test: &str, why: &str) {
    eprintln!(
        "SKIPPED {test}: {why} (bash .ci/install-client-examples installs python3/node packages \
         from PyPI and npm)"
    );
}

impl Runtime {
    /// Writes `code` as a script of this language and returns its path.
    fn script(&self, name: &str, code: &str) -> PathBuf {
        let path = self.dir.join(format!(
            "outboxd-{name}-{}.{}",
            std::process::id(),
            self.ext
        ));
        std::fs::write(&path, code).unwrap();
        path
    }

    fn command(&self, script: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg(script)
            .current_dir(&self.dir)
            .env_remove("DATABASE_URL")
            .kill_on_drop(true);
        command
    }
}

/// A running receiver and its stdout, one JSON object a line.
struct Receiving {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    url: String,
}

impl Receiving {
    async fn start(runtime: &Runtime, file: &str, secret: &Secret) -> Self {
        let code = std::fs::read_to_string(repo_path(file)).unwrap();
        let script = runtime.script("receiver", &code);
        let mut child = runtime
            .command(&script)
            .env("WEBHOOK_SECRET", secret.to_whsec())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = next_json(&mut lines).await;
        let addr = first["listening"].as_str().expect("a listening line");
        Self {
            _child: child,
            lines,
            url: format!("http://{addr}/hooks"),
        }
    }

    async fn next_event(&mut self) -> serde_json::Value {
        next_json(&mut self.lines).await
    }
}

async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> serde_json::Value {
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line within the wait")
        .unwrap()
        .expect("the program is still running");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Posts a webhook signed with `secret` to `url`; returns the status.
async fn post_signed(url: &str, secret: &Secret, id: &str, body: &str) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let header = signature::sign(std::slice::from_ref(secret), id, ts, body.as_bytes());
    reqwest::Client::new()
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", header)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The snippet places one order with one idempotency key (a second run
/// places nothing), the sidecar delivers its event, and the receiver
/// verifies it with the Standard Webhooks library; it refuses what another
/// secret signed.
async fn snippet_and_receiver_deliver_one_verified_event(
    runtime: &Runtime,
    lang: &str,
    receiver_file: &str,
) {
    let db = fresh_db().await;
    db.client.batch_execute(ORDERS_TABLE).await.unwrap();
    let secret = Secret::generate();
    let mut receiver = Receiving::start(runtime, receiver_file, &secret).await;
    add_endpoint(
        &db.client,
        "shop",
        &receiver.url,
        Some(&["order.created"]),
        &secret,
    )
    .await;
    let sidecar = spawn(config(&db));

    let producer = runtime.script("producer", &snippet(lang));
    let mut said = Vec::new();
    for _ in 0..2 {
        let out = runtime
            .command(&producer)
            .env("DATABASE_URL", &db.url)
            .env("IDEMPOTENCY_KEY", "checkout-7f3a")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{lang} snippet: {stderr}");
        said.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    assert!(said[0].contains("committed with its event"), "{said:?}");
    assert_eq!(
        said[1], "request checkout-7f3a was placed already",
        "the retry places nothing"
    );

    let event = receiver.next_event().await;
    assert_eq!(event["id"], "order-1-created", "{event}");
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["data"]["customer"], "alice");
    assert_eq!(event["data"]["total_cents"], 1999);
    assert!(wait_settled(&db.client, WAIT).await);
    let (status, code): (String, Option<i32>) = {
        let row = db
            .client
            .query_one(
                "SELECT status, last_status_code FROM outbox.message_status
                 WHERE event_id = 'order-1-created'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((status.as_str(), code), ("delivered", Some(200)));
    let counts = count(
        &db.client,
        "SELECT (SELECT count(*) FROM orders) * 10 + (SELECT count(*) FROM outbox.messages)",
    )
    .await;
    assert_eq!(counts, 11, "one order, one event");
    sidecar.stop().await;

    // The library really checks: another secret's signature is refused,
    // this secret's accepted (once; then it is a duplicate).
    let body = r#"{"type":"order.created","data":{"order_id":2}}"#;
    let forged = post_signed(&receiver.url, &Secret::generate(), "forged-1", body).await;
    assert_eq!(forged, 400);
    assert_eq!(
        post_signed(&receiver.url, &secret, "direct-1", body).await,
        200
    );
    assert_eq!(receiver.next_event().await["id"], "direct-1");
    let _ = std::fs::remove_file(producer);
}

#[tokio::test]
async fn python_snippet_and_receiver_deliver_one_verified_event() {
    match python() {
        Ok(runtime) => {
            snippet_and_receiver_deliver_one_verified_event(
                &runtime,
                "python",
                "examples/receivers/receiver.py",
            )
            .await
        }
        Err(why) => skip(
            "python_snippet_and_receiver_deliver_one_verified_event",
            &why,
        ),
    }
}

#[tokio::test]
async fn node_snippet_and_receiver_deliver_one_verified_event() {
    match node() {
        Ok(runtime) => {
            snippet_and_receiver_deliver_one_verified_event(
                &runtime,
                "js",
                "examples/receivers/receiver.mjs",
            )
            .await
        }
        Err(why) => skip("node_snippet_and_receiver_deliver_one_verified_event", &why),
    }
}
