//! Scenario: true packet loss. Unlike the freezing proxy (whose kernel
//! still acknowledges), here nothing comes back at all: the real `outboxd`
//! runs in a network namespace joined to the host by a veth pair, and a
//! queue that drops every packet (`tc ... netem loss 100%`, or a
//! zero-length `pfifo` where the kernel has no netem) goes on both ends.
//! Only the statement deadlines, TCP keepalives and the user timeout can
//! notice. Needs root and `ip`/`tc` (iproute2); skipped, saying so,
//! without them.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use outboxd::signature::Secret;
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;
use crate::harness::*;

const IP: &str = "/usr/sbin/ip";
const TC: &str = "/usr/sbin/tc";

/// A namespace with a veth pair to the host; removed on drop.
struct Netns {
    name: String,
    host_dev: String,
    ns_dev: String,
    /// The host's end; the namespace is .2.
    host_addr: Ipv4Addr,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 250;
        let name = format!("outboxd-loss-{}", std::process::id());
        let host_addr = Ipv4Addr::new(10, 254, id as u8, 1);
        let netns = Self {
            name: name.clone(),
            host_dev: format!("obxh{id}"),
            ns_dev: format!("obxn{id}"),
            host_addr,
        };
        run(IP, &["netns", "add", &name])?;
        let (h, n) = (netns.host_dev.as_str(), netns.ns_dev.as_str());
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", name.as_str(), IP];
            all.extend_from_slice(args);
            run(IP, &all)
        };
        run(IP, &["link", "add", h, "type", "veth", "peer", "name", n])?;
        run(IP, &["link", "set", n, "netns", &name])?;
        run(IP, &["addr", "add", &format!("{host_addr}/30"), "dev", h])?;
        run(IP, &["link", "set", h, "up"])?;
        in_ns(&["addr", "add", &format!("10.254.{id}.2/30"), "dev", n])?;
        in_ns(&["link", "set", n, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Every packet in both directions is dropped from now on. Returns the
    /// queue used.
    fn lose_everything(&self) -> Result<&'static str, String> {
        for (kind, args) in [
            ("netem loss 100%", &["netem", "loss", "100%"][..]),
            ("pfifo limit 0", &["pfifo", "limit", "0"][..]),
        ] {
            let host = [
                &["qdisc", "replace", "dev", &self.host_dev, "root"][..],
                args,
            ]
            .concat();
            if run(TC, &host).is_err() {
                continue;
            }
            let ns = [
                &[
                    "netns",
                    "exec",
                    &self.name,
                    TC,
                    "qdisc",
                    "replace",
                    "dev",
                    &self.ns_dev,
                    "root",
                ][..],
                args,
            ]
            .concat();
            run(IP, &ns)?;
            return Ok(kind);
        }
        Err("neither netem nor pfifo can be set on a veth".into())
    }

    fn restore(&self) {
        let _ = run(TC, &["qdisc", "del", "dev", &self.host_dev, "root"]);
        let _ = run(
            IP,
            &[
                "netns",
                "exec",
                &self.name,
                TC,
                "qdisc",
                "del",
                "dev",
                &self.ns_dev,
                "root",
            ],
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(IP, &["link", "del", &self.host_dev]);
        let _ = run(IP, &["netns", "del", &self.name]);
    }
}

/// Forwards `listen` to the cluster on loopback (the test cluster listens
/// on 127.0.0.1 only).
async fn forward(listen: SocketAddr, upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_packet_loss_is_noticed_by_the_deadlines_and_delivery_recovers() {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root || !std::path::Path::new(IP).is_file() || !std::path::Path::new(TC).is_file() {
        eprintln!("SKIPPED: needs root and iproute2 (ip, tc) for a network namespace");
        return;
    }
    let netns = match Netns::create() {
        Ok(netns) => netns,
        Err(error) => {
            eprintln!("SKIPPED: cannot create a network namespace here: {error}");
            return;
        }
    };
    let db = fresh_db().await;
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let upstream = SocketAddr::from(([127, 0, 0, 1], config.get_ports()[0]));
    let pg = forward(SocketAddr::from((netns.host_addr, 0)), upstream).await;
    let receiver = Receiver::start_at(SocketAddr::from((netns.host_addr, 0)), None, |_| {
        Reply::ok()
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let via_netns = db.url.replacen(
        &format!("127.0.0.1:{}", upstream.port()),
        &pg.to_string(),
        1,
    );
    let mut sidecar = Launch::new(&via_netns, "lossy")
        .in_netns(&netns.name)
        .env("OUTBOXD_ALLOW_NETWORKS", "10.254.0.0/16")
        .env("OUTBOXD_RECONNECT_MAX", "2s")
        // The lease outlasts the outage, so nothing is sent twice.
        .env("OUTBOXD_LEASE", "120s")
        .spawn();
    insert_message(&db.client, "before", "t", "{}").await;
    assert!(
        receiver
            .wait_until(WAIT, |r| r.iter().any(|r| r.webhook_id == "before"))
            .await,
        "delivered through the namespace: {}",
        sidecar.log_tail(20)
    );
    assert!(wait_delivered(&db.client, 1, WAIT).await);

    let queue = netns.lose_everything().unwrap();
    let lost = Instant::now();
    insert_message(&db.client, "during", "t", "{}").await;
    // The sidecar's next statements get no answer at all: its deadlines
    // (10 s per statement) must give up on them.
    let noticed = eventually(Duration::from_secs(60), || async {
        sidecar.log().contains("presumed dead")
    })
    .await;
    let noticed_after = lost.elapsed();
    assert!(noticed, "no deadline fired: {}", sidecar.log_tail(30));
    assert_eq!(receiver.count(), 1, "nothing gets through");

    netns.restore();
    let restored = Instant::now();
    assert!(
        receiver
            .wait_until(Duration::from_secs(60), |r| r
                .iter()
                .any(|r| r.webhook_id == "during"))
            .await,
        "delivery recovers once packets flow again: {}",
        sidecar.log_tail(30)
    );
    let recovered_after = restored.elapsed();
    assert!(wait_delivered(&db.client, 2, WAIT).await);
    eprintln!(
        "packet loss ({queue}): noticed after {noticed_after:?}, delivery {recovered_after:?} after it ended"
    );
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());
    assert_eq!(
        extra_receipts(&receipts(&receiver)),
        0,
        "nothing sent twice"
    );
}
