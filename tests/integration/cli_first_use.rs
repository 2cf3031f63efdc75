//! What a new user meets first, run with the real binary: flags where users
//! put them, one exit-code scheme, errors that name the flag, booleans as
//! environments write them, times with offsets, a complete
//! `--print-config`, JSON fatal errors, and a sidecar that survives its log
//! reader going away.

use std::borrow::BorrowMut;
use std::process::{Output, Stdio};

use outboxd::signature::ed25519;
use tokio::process::Command;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_outboxd");
/// Nothing listens there: commands that get this far fail to connect.
const NO_DB: &str = "postgres://nobody@127.0.0.1:1/none";

/// The binary with a clean environment for the variables it reads.
fn outboxd(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for (name, _) in std::env::vars() {
        if name == "DATABASE_URL" || name.starts_with("OUTBOXD_") {
            command.env_remove(name);
        }
    }
    command
}

async fn output(mut command: impl BorrowMut<Command>) -> Output {
    command
        .borrow_mut()
        .output()
        .await
        .expect("running outboxd")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit 2 and a message that contains `says`.
fn assert_usage(output: &Output, says: &str) {
    assert_eq!(output.status.code(), Some(2), "{}", stderr(output));
    assert!(stderr(output).contains(says), "{}", stderr(output));
}

#[tokio::test]
async fn database_url_is_accepted_after_the_subcommand() {
    let db = fresh_db().await;
    let url = db.url.as_str();
    let added = output(outboxd(&[
        "endpoint",
        "add",
        "billing",
        "https://hooks.example.com/in",
        "--database-url",
        url,
    ]))
    .await;
    assert!(added.status.success(), "{}", stderr(&added));
    // Before the endpoint subcommand, as before, and after a leaf command.
    let listed = output(outboxd(&["endpoint", "--database-url", url, "list"])).await;
    assert!(stdout(&listed).contains("billing"), "{}", stderr(&listed));
    let status = output(outboxd(&["status", "--json", "--database-url", url])).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let migrated = output(outboxd(&["migrate", "--database-url", url])).await;
    assert!(migrated.status.success(), "{}", stderr(&migrated));

    let missing = output(outboxd(&["endpoint", "list"])).await;
    assert_usage(&missing, "give --database-url");
}

#[tokio::test]
async fn a_bad_database_url_is_a_usage_error_said_once_by_every_command() {
    let bogus = "postgres://app:pw@127.0.0.1:1/shop?sslmode=bogus";
    for args in [
        &["migrate"][..],
        &["run"],
        &["run", "--print-config"],
        &["endpoint", "list"],
    ] {
        let out = output(outboxd(args).env("DATABASE_URL", bogus)).await;
        assert_usage(&out, "--database-url, DATABASE_URL");
        assert_eq!(
            stderr(&out).matches("sslmode must be").count(),
            1,
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "nothing printed: {}", stdout(&out));
    }
}

#[tokio::test]
async fn print_config_shows_every_setting() {
    let out = output(
        outboxd(&["run", "--print-config", "--migrate"])
            .args(["--allow-network", "10.20.0.0/16,127.0.0.1/32"])
            .args([
                "--egress-proxy",
                "http://squid:pr0xy-pw@egress.internal:3128",
            ])
            .args(["--reconnect-max", "30s"])
            .env("DATABASE_URL", NO_DB)
            .env("OUTBOXD_CONSOLE_TOKEN", "a-console-token-of-24-ch"),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "allow_networks = 10.20.0.0/16,127.0.0.1/32",
        "egress_proxy = http://squid:",
        "reconnect_max = 30s",
        "migrate = true",
        "console = on",
        "admin_addr = 127.0.0.1:9090",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(!text.contains("pr0xy-pw"), "{text}");
    assert!(!text.contains("a-console-token"), "{text}");
}

#[tokio::test]
async fn invalid_settings_exit_2_and_name_the_flag() {
    let schedule = output(outboxd(&[
        "run",
        "--database-url",
        NO_DB,
        "--retry-schedule",
        "5x",
    ]))
    .await;
    assert_usage(&schedule, "--retry-schedule");
    let from_env = output(
        outboxd(&["run", "--print-config"])
            .env("DATABASE_URL", NO_DB)
            .env("OUTBOXD_RETRY_SCHEDULE", "soon"),
    )
    .await;
    assert_usage(&from_env, "--retry-schedule (OUTBOXD_RETRY_SCHEDULE)");
    let lease = output(outboxd(&["run", "--database-url", NO_DB, "--lease", "5s"])).await;
    assert_usage(&lease, "--lease (5s) must exceed --request-timeout");
    let network = output(outboxd(&[
        "run",
        "--database-url",
        NO_DB,
        "--allow-network",
        "lan",
    ]))
    .await;
    assert_usage(&network, "--allow-network");
    let unknown = output(outboxd(&["status", "--colour"])).await;
    assert_eq!(unknown.status.code(), Some(2));
    // A command that ran and failed: 1.
    let refused = output(outboxd(&["status", "--database-url", NO_DB])).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));

    let body = std::env::temp_dir().join("outboxd-no-such-body.json");
    let unreadable = output(outboxd(&[
        "verify",
        "--secret",
        &outboxd::signature::Secret::generate().to_whsec(),
        "--id",
        "msg_1",
        "--timestamp",
        "1",
        "--signature",
        "v1,AAAA",
        "--body",
        &body.display().to_string(),
    ]))
    .await;
    assert_usage(&unreadable, "--body: cannot read");

    let help = output(outboxd(&["--help"])).await;
    assert!(
        stdout(&help).contains("Exit status: 0 success; 1 the command ran and failed"),
        "{}",
        stdout(&help)
    );
}

#[tokio::test]
async fn boolean_variables_take_the_usual_spellings() {
    let shown = |name: &'static str, value: &'static str| async move {
        output(
            outboxd(&["run", "--print-config"])
                .env("DATABASE_URL", NO_DB)
                .env(name, value),
        )
        .await
    };
    for yes in ["1", "true", "yes", "on", "YES"] {
        let out = shown("OUTBOXD_NO_ADMIN", yes).await;
        assert!(
            stdout(&out).contains("admin_addr = off"),
            "{yes}: {}",
            stderr(&out)
        );
        let out = shown("OUTBOXD_MIGRATE", yes).await;
        assert!(
            stdout(&out).contains("migrate = true"),
            "{yes}: {}",
            stderr(&out)
        );
    }
    for no in ["0", "false", "no", "off"] {
        let out = shown("OUTBOXD_NO_PURGE", no).await;
        assert!(
            stdout(&out).contains("retention = 7days"),
            "{no}: {}",
            stderr(&out)
        );
        let out = shown("OUTBOXD_ASYNC_COMMIT", no).await;
        assert!(
            stdout(&out).contains("async_commit = false"),
            "{no}: {}",
            stderr(&out)
        );
    }
    let out = shown("OUTBOXD_NO_PURGE", "on").await;
    assert!(stdout(&out).contains("retention = off"), "{}", stderr(&out));
    assert_usage(&shown("OUTBOXD_NO_ADMIN", "maybe").await, "--no-admin");
}

#[tokio::test]
async fn since_takes_rfc3339_offsets_and_says_a_bare_time_is_utc() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "billing").await;
    for since in [
        "2026-11-28T12:00:00+01:00",
        "2026-11-28T12:00:00-05:30",
        "2026-11-28T12:00:00Z",
        "2026-11-28 12:00:00",
        "2h",
    ] {
        let out = output(
            outboxd(&["replay", "--endpoint", "billing", "--since", since])
                .env("DATABASE_URL", &db.url),
        )
        .await;
        assert!(out.status.success(), "{since}: {}", stderr(&out));
    }
    let out = output(
        outboxd(&["replay", "--endpoint", "billing", "--since", "noon"])
            .env("DATABASE_URL", &db.url),
    )
    .await;
    assert_usage(&out, "2026-11-28T12:00:00+01:00");
    for command in ["replay", "recover", "adopt"] {
        let help = output(outboxd(&[command, "--help"])).await;
        let text = stdout(&help)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(text.contains("without an offset"), "{command}: {text}");
        assert!(text.contains("is UTC"), "{command}: {text}");
    }
}

#[tokio::test]
async fn endpoint_add_takes_an_ed25519_secret_key() {
    let db = fresh_db().await;
    let key = ed25519::SecretKey::generate().unwrap();
    let added = output(
        outboxd(&["endpoint", "add", "signed", "https://hooks.example.com/in"])
            .args(["--secret", &key.to_whsk()])
            .env("DATABASE_URL", &db.url),
    )
    .await;
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(
        stdout(&added).contains(&key.public_key().to_whpk()),
        "the receiver's public key is shown: {}",
        stdout(&added)
    );
    let stored: Vec<String> = db
        .client
        .query_one(
            "SELECT secrets FROM outbox.endpoints WHERE id = 'signed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, [key.to_whsk()]);

    let public = output(
        outboxd(&["endpoint", "add", "other", "https://hooks.example.com/in"])
            .args(["--secret", &key.public_key().to_whpk()])
            .env("DATABASE_URL", &db.url),
    )
    .await;
    assert_usage(&public, "a whpk_ public key cannot sign");
    let rotated = output(
        outboxd(&["endpoint", "rotate-secret", "signed"])
            .args([
                "--secret",
                &ed25519::SecretKey::generate().unwrap().to_whsk(),
            ])
            .env("DATABASE_URL", &db.url),
    )
    .await;
    assert!(rotated.status.success(), "{}", stderr(&rotated));
}

#[tokio::test]
async fn fatal_errors_are_json_lines_under_log_format_json() {
    let cases: [&[&str]; 3] = [
        &[
            "run",
            "--database-url",
            NO_DB,
            "--lease",
            "5s",
            "--log-format",
            "json",
        ],
        &["--log-format", "json", "status", "--database-url", NO_DB],
        &["run", "--log-format=json", "--no-such-flag"],
    ];
    for args in cases {
        let out = output(outboxd(args)).await;
        assert!(!out.status.success());
        let text = stderr(&out);
        let lines: Vec<&str> = text.lines().collect();
        let last: serde_json::Value = serde_json::from_str(lines.last().unwrap())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{text}"));
        assert_eq!(last["level"], "ERROR", "{text}");
        assert!(last["fields"]["error"].as_str().is_some(), "{text}");
        for line in lines {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("{args:?}: a line that is not JSON ({e}): {line}"));
        }
    }
}

#[tokio::test]
async fn a_closed_stderr_does_not_stop_the_sidecar() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(
        &db.client,
        "hooks",
        &receiver.url(),
        None,
        &outboxd::signature::Secret::generate(),
    )
    .await;
    let mut child = outboxd(&["run", "--no-admin", "--allow-network", "127.0.0.1/32"])
        .args(["--poll-interval", "200ms"])
        .env("DATABASE_URL", &db.url)
        // Every statement logged: many writes to the closed pipe.
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The log reader goes away (as `outboxd run 2>&1 | head -5` does).
    drop(child.stderr.take());
    insert_message(&db.client, "order-1", "order.paid", r#"{"order": 1}"#).await;
    assert!(
        receiver.wait_until(WAIT, |got| !got.is_empty()).await,
        "delivered with nobody reading the logs"
    );
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "a clean shutdown, not a panic");
}

/// What `outboxd --help` says about the environment holds: every setting
/// of `run` (its actions aside) reads a variable, and so do the options
/// accepted on every command.
#[test]
fn every_run_setting_reads_an_environment_variable_as_the_help_says() {
    use clap::CommandFactory as _;
    let mut cli = outboxd::cli::Cli::command();
    cli.build();
    let help = cli.render_long_help().to_string();
    assert!(help.contains("Every setting of `run` does"), "{help}");
    let run = cli.find_subcommand("run").unwrap();
    let without: Vec<&str> = run
        .get_arguments()
        .filter(|arg| arg.get_env().is_none())
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "help" | "version" | "print-config"))
        .collect();
    assert!(
        without.is_empty(),
        "run flags without a variable: {without:?}"
    );
    for command in cli.get_subcommands() {
        for arg in command.get_arguments() {
            if matches!(arg.get_long(), Some("database-url" | "log-format")) {
                assert!(
                    arg.get_env().is_some(),
                    "{}: {:?}",
                    command.get_name(),
                    arg.get_long()
                );
            }
        }
    }
}
