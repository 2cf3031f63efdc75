//! The admin server under clients that hold connections open: half-sent
//! requests are closed after the header timeout, a connection cap bounds
//! the file descriptors they take without locking probes out, and no
//! connection outlives its maximum lifetime.

use std::net::SocketAddr;
use std::time::Duration;

use outboxd::config::AdminLimits;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::*;

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: outboxd\r\nConnection: close\r\n\r\n";
/// Slack for a loaded machine on top of a limit under test.
const MARGIN: Duration = Duration::from_secs(3);

/// A sidecar whose admin server has `limits`, answering once this returns.
async fn sidecar_with(limits: AdminLimits) -> (Sidecar, SocketAddr) {
    let db = fresh_db().await;
    let mut cfg = config(&db);
    let addr = free_addr();
    cfg.admin_addr = Some(addr);
    cfg.admin_limits = limits;
    let sidecar = spawn(cfg);
    assert!(
        eventually(WAIT, || async { healthz(addr).await == Some(200) }).await,
        "the admin server answers"
    );
    (sidecar, addr)
}

/// The status of `GET /healthz` on a new connection; `None` if no answer.
async fn healthz(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(HEALTHZ).await.ok()?;
    status_of(&mut stream).await
}

/// Reads an answer to its end and returns its status code.
async fn status_of(stream: &mut TcpStream) -> Option<u16> {
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    String::from_utf8_lossy(&answer)
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()
}

/// `count` clients that send half a request line, then nothing.
async fn stalled_clients(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /heal").await.unwrap();
        clients.push(stream);
    }
    clients
}

/// Whether the server closes `stream` within `within`: end of file or a
/// reset (a connection closed before its bytes were read), after whatever
/// the server said first.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0; 1024];
    tokio::time::timeout(within, async {
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn stalled_requests_are_closed_and_probes_still_answer() {
    let limits = AdminLimits {
        header_read_timeout: Duration::from_millis(500),
        max_connections: 16,
        ..AdminLimits::default()
    };
    let (sidecar, addr) = sidecar_with(limits).await;
    let mut stalled = stalled_clients(addr, 3 * limits.max_connections).await;

    let probe = tokio::time::timeout(Duration::from_secs(1), healthz(addr)).await;
    assert_eq!(
        probe,
        Ok(Some(200)),
        "/healthz answers among stalled clients"
    );
    for (nth, client) in stalled.iter_mut().enumerate() {
        assert!(
            closed_within(client, limits.header_read_timeout + MARGIN).await,
            "stalled client {nth} is still connected"
        );
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_close_the_oldest_at_once() {
    // Header timeout and lifetime far beyond the test: only the cap closes.
    let limits = AdminLimits {
        header_read_timeout: Duration::from_secs(600),
        max_connections: 8,
        max_lifetime: Duration::from_secs(600),
    };
    let (sidecar, addr) = sidecar_with(limits).await;
    let mut stalled = stalled_clients(addr, 20).await;

    let over = stalled.len() - limits.max_connections;
    for (nth, client) in stalled[..over].iter_mut().enumerate() {
        assert!(
            closed_within(client, MARGIN).await,
            "client {nth} is still connected, over the cap"
        );
    }
    assert_eq!(healthz(addr).await, Some(200), "a probe gets in");
    let newest = stalled.last_mut().unwrap();
    newest
        .write_all(b"thz HTTP/1.1\r\nHost: outboxd\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        status_of(newest).await,
        Some(200),
        "the newest connection was kept"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn no_connection_outlives_its_lifetime() {
    let limits = AdminLimits {
        header_read_timeout: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(1),
        ..AdminLimits::default()
    };
    let (sidecar, addr) = sidecar_with(limits).await;
    // A keep-alive client that asks once and then holds on.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: outboxd\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0; 1024];
    while !answer.ends_with(b"ok\n") {
        let read = client.read(&mut chunk).await.unwrap();
        assert!(read > 0, "closed before answering");
        answer.extend_from_slice(&chunk[..read]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));

    assert!(
        closed_within(&mut client, limits.max_lifetime + MARGIN).await,
        "the connection outlived its lifetime"
    );
    sidecar.stop().await;
}
