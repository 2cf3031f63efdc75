//! `outboxd demo` as a user runs it (here against a fresh database instead
//! of a throwaway cluster, which is quicker): it narrates, shows progress
//! while the flaky event is retried, and ends with a summary table.

use crate::common::*;

#[tokio::test]
async fn demo_shows_progress_and_ends_with_a_summary_table() {
    let db = fresh_db().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("demo")
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for step in 1..=8 {
        assert!(
            stdout.contains(&format!("\n[{step}/8] ")),
            "step {step}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("... 4 of 5 delivered"),
        "progress while the retry waits:\n{stdout}"
    );
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("event_id "))
        .take(7)
        .collect();
    assert_eq!(table.len(), 7, "header, rule and five rows:\n{stdout}");
    for header in [
        "event_type",
        "status",
        "attempts",
        "answers",
        "insert to delivered",
    ] {
        assert!(table[0].contains(header), "{}", table[0]);
    }
    let flaky: Vec<&str> = table
        .iter()
        .find(|l| l.trim_start().starts_with("demo-order-3-paid"))
        .expect("the flaky event's row")
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        flaky[..5],
        [
            "demo-order-3-paid",
            "order.paid",
            "delivered",
            "3",
            "503, 503, 200"
        ]
    );
    assert!(flaky[5].ends_with(" ms"), "{flaky:?}");
    assert!(
        stdout
            .contains("5 events: 5 delivered, 0 dead; 7 HTTP requests, 7 with a valid signature."),
        "{stdout}"
    );
}
