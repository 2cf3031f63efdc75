//! Receivers that misbehave below HTTP, which the scriptable receiver
//! cannot: one resets every connection, one answers 500 with an endless
//! body. Raw TCP on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How the receiver misbehaves.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// Reads the request head, then resets the connection (RST).
    Reset,
    /// Reads the request, answers `500` with a chunked body that never ends
    /// (until the client hangs up or a gigabyte has been offered).
    EndlessError,
}

/// Most bytes [`Misbehaviour::EndlessError`] offers on one connection.
const ENDLESS_LIMIT: u64 = 1 << 30;

#[derive(Default)]
struct Stats {
    requests: AtomicUsize,
    most_bytes_written: AtomicU64,
}

/// A running hostile receiver; stops when dropped.
pub struct Hostile {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

impl Hostile {
    /// Starts one on a free port.
    pub async fn start(how: Misbehaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, how, stats.clone(), stop.clone()));
        Self { addr, stats, stop }
    }

    /// The URL to register as an endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    /// Requests whose head arrived.
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// The most response bytes that one connection accepted before the
    /// client hung up: kernel buffers plus what the client read.
    pub fn most_bytes_written(&self) -> u64 {
        self.stats.most_bytes_written.load(Ordering::SeqCst)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    how: Misbehaviour,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let stats = stats.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = misbehave(stream, how, &stats) => {}
            }
        });
    }
}

async fn misbehave(mut stream: TcpStream, how: Misbehaviour, stats: &Stats) {
    // One request per connection: the answer never leaves it reusable.
    if !read_request(&mut stream).await {
        return;
    }
    stats.requests.fetch_add(1, Ordering::SeqCst);
    match how {
        Misbehaviour::Reset => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Misbehaviour::EndlessError => {
            let written = endless_error(&mut stream).await;
            stats
                .most_bytes_written
                .fetch_max(written, Ordering::SeqCst);
        }
    }
}

/// Reads a request head and its `content-length` body; false on EOF.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            return true;
        }
    }
}

/// Writes a 500 whose chunked body never ends; returns the bytes written.
async fn endless_error(stream: &mut TcpStream) -> u64 {
    let head = b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n\
                 transfer-encoding: chunked\r\n\r\n";
    if stream.write_all(head).await.is_err() {
        return 0;
    }
    let mut chunk = b"10000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'x', 0x10000));
    chunk.extend_from_slice(b"\r\n");
    let mut written = head.len() as u64;
    while written < ENDLESS_LIMIT {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
        written += chunk.len() as u64;
    }
    written
}
