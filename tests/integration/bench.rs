//! `outboxd bench` at a tiny size, so it keeps working: every phase runs
//! and every delivery arrives exactly once, verified. Speed is not
//! asserted here (that is what the benchmark itself reports), except what
//! no machine can beat: with a receiver latency, no more requests per
//! second than in flight / latency.

use std::path::PathBuf;
use std::time::Duration;

use outboxd::bench::{self, Options};

use crate::common::count;

#[tokio::test]
async fn a_tiny_benchmark_delivers_everything_exactly_once() {
    let options = Options {
        messages: 300,
        replicas: 2,
        concurrency: 8,
        batch_size: 20,
        payload_bytes: 128,
        endpoints: 2,
        fan_out: 2,
        tenants: 0,
        finished_rows: 2_000,
        phase_secs: 0.5,
        database_url: None,
        sidecar_bin: PathBuf::from(env!("CARGO_BIN_EXE_outboxd")),
        async_commit: false,
        receiver_latency: Duration::from_millis(2),
    };
    let report = bench::run(options).await.expect("the benchmark runs");
    assert_eq!(
        report.delivered_exactly_once, 600,
        "300 messages to 2 endpoints"
    );
    let json = report.to_json();
    for key in [
        "deliveries_per_sec",
        "ceiling_claim_rows_per_sec",
        "ceiling_http_per_sec",
        "ceiling_combined_per_sec",
        "efficiency",
        "claim_ms_empty",
        "claim_ms_with_1m_finished",
        "peak_rss_bytes",
        "cpu_ms_per_1k_deliveries",
    ] {
        assert!(
            json[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {}",
            json[key]
        );
    }
    for mode in [
        "plain_table",
        "no_sidecar",
        "no_trigger",
        "notify_trigger",
        "logical",
    ] {
        assert!(
            json["producer_inserts_per_sec"][mode].as_f64().unwrap() > 0.0,
            "{mode}"
        );
    }
    for latency in [
        "latency_ms",
        "latency_low_load_ms",
        "latency_low_load_logical_ms",
    ] {
        let l = &json[latency];
        assert!(
            l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap(),
            "{latency}: {l}"
        );
    }
    assert_eq!(
        json["machine"]["cores"].as_u64().unwrap() as usize,
        std::thread::available_parallelism().unwrap().get()
    );
    let p = &json["producer_inserts_per_sec"];
    assert_eq!(
        json["producer_no_trigger_to_plain_table"].as_f64().unwrap(),
        p["no_trigger"].as_f64().unwrap() / p["plain_table"].as_f64().unwrap()
    );
    // Keep-alive: connections are reused, not opened per delivery (600 in
    // the drain alone, more in the latency phases).
    let connections = json["receiver_connections_drain"].as_u64().unwrap();
    assert!((1..150).contains(&connections), "{connections} connections");
    assert_eq!(json["options"]["receiver_latency_ms"].as_f64(), Some(2.0));
    // 16 requests in flight, each answered after 2 ms at the earliest.
    let bound = json["ceiling_http_latency_bound_per_sec"].as_f64().unwrap();
    assert_eq!(bound, 8_000.0);
    assert!(
        report.ceiling_http_per_sec <= bound,
        "the receiver answered faster than its latency allows: {} requests/s",
        report.ceiling_http_per_sec
    );
    let table = report.render();
    assert!(table.contains("deliveries/s (drain)"));
    assert!(table.contains("receiver latency 2ms"), "{table}");
}

#[tokio::test]
async fn a_benchmark_on_a_given_server_drops_its_database_afterwards() {
    let db = crate::common::fresh_logical_db().await;
    let options = Options {
        messages: 50,
        replicas: 1,
        concurrency: 4,
        batch_size: 10,
        payload_bytes: 64,
        endpoints: 1,
        fan_out: 1,
        tenants: 0,
        finished_rows: 100,
        phase_secs: 0.5,
        database_url: Some(db.url.clone()),
        sidecar_bin: PathBuf::from(env!("CARGO_BIN_EXE_outboxd")),
        async_commit: false,
        receiver_latency: Duration::ZERO,
    };
    let report = bench::run(options).await.expect("the benchmark runs");
    assert_eq!(report.delivered_exactly_once, 50);
    let left: i64 = count(
        &db.client,
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'outboxd_bench_%'",
    )
    .await;
    assert_eq!(left, 0, "the bench database is dropped");
}

/// Endpoints spread over tenants, every message carrying its endpoints'
/// tenant: everything is delivered once, so no message was refused or
/// routed to nobody. Each message goes to two endpoints, which only the
/// subscriptions' stride keeps in one tenant (consecutive endpoints are
/// in different tenants).
#[tokio::test]
async fn a_tiny_benchmark_with_tenants_delivers_everything_exactly_once() {
    let options = Options {
        messages: 200,
        replicas: 1,
        concurrency: 8,
        batch_size: 20,
        payload_bytes: 64,
        endpoints: 4,
        fan_out: 2,
        tenants: 2,
        finished_rows: 1_000,
        phase_secs: 0.5,
        database_url: None,
        sidecar_bin: PathBuf::from(env!("CARGO_BIN_EXE_outboxd")),
        async_commit: false,
        receiver_latency: Duration::ZERO,
    };
    let report = bench::run(options).await.expect("the benchmark runs");
    assert_eq!(report.delivered_exactly_once, 400, "200 messages x 2");
    assert_eq!(report.to_json()["options"]["tenants"], 2);
}
