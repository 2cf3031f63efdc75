//! A loopback webhook receiver: binds 127.0.0.1:0, records every request,
//! checks its signature when given the secret, and answers as a script
//! says (succeed, fail, delay, 429 with `Retry-After`, ...). The demo shows
//! it receiving; tests use it as a real HTTP peer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::signature::{Verifier, VerifyError};

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id` (empty when missing).
    pub webhook_id: String,
    /// `webhook-timestamp` (empty when missing).
    pub timestamp: String,
    /// `webhook-signature` (empty when missing).
    pub signature: String,
    /// All headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Bytes,
    /// When it arrived (before any scripted delay).
    pub at: SystemTime,
    /// 1 for the first request with this `webhook-id`, 2 for the second, ...
    pub nth: u32,
    /// The signature check, when the receiver has a verifier.
    pub verified: Option<Result<(), VerifyError>>,
    /// The status the script answered.
    pub status: u16,
    /// When the answer was handed back (after any scripted delay); `None`
    /// while the request is still being answered.
    pub replied_at: Option<SystemTime>,
}

impl Received {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the receiver answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Bytes,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// `200 OK` with body `ok`.
    pub fn ok() -> Self {
        Self::status(200)
    }

    /// An empty-ish answer with `status`.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::from_static(b"ok"),
            delay: Duration::ZERO,
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Answers only after `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Script = dyn Fn(&Received) -> Reply + Send + Sync;

/// Connections that may wait to be accepted. A sender that opens a
/// thousand connections at once (the benchmark at `--concurrency 1024`)
/// overflowed tokio's default of 1024: the kernel dropped their SYNs and
/// the clients sent them again a second later, so the receiver, not the
/// sender, set the pace. The kernel caps this at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4096;

struct State {
    script: Box<Script>,
    verifier: Option<Verifier>,
    log: Mutex<Vec<Received>>,
    seen: Mutex<HashMap<String, u32>>,
    count: watch::Sender<usize>,
    /// Connections accepted so far.
    connections: AtomicUsize,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Receiver {
    /// Starts a receiver that answers as `script` says and, with a
    /// `verifier`, checks every signature.
    pub async fn start(
        verifier: Option<Verifier>,
        script: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), verifier, script).await
    }

    /// Like [`start`](Self::start), on a given address: a receiver that
    /// comes back on the port of one that was stopped (an outage).
    pub async fn start_at(
        addr: SocketAddr,
        verifier: Option<Verifier>,
        script: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = listen(addr)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            script: Box::new(script),
            verifier,
            log: Mutex::new(Vec::new()),
            seen: Mutex::new(HashMap::new()),
            count: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, state.clone(), stop.clone()));
        Ok(Self { addr, state, stop })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to register as an endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.log).clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        *self.state.count.borrow()
    }

    /// How many connections were accepted so far: with keep-alive, about
    /// as many as requests were ever in flight at once, not one per
    /// request.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Waits until `done` holds for the requests received (checked on every
    /// request and every answer), or `timeout` passes; says which.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let mut changes = self.state.count.subscribe();
        let check = async {
            loop {
                if done(&lock(&self.state.log)) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, check).await.is_ok()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking script must not make every later request panic too.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A listener on `addr` with room for [`ACCEPT_BACKLOG`] connections not
/// yet accepted (as `TcpListener::bind`, which allows 1024).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A receiver started again on the port of a stopped one (an outage)
    // must not wait for its old connections' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(state.clone(), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

async fn handle(
    state: Arc<State>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let at = SystemTime::now();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (webhook_id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let nth = {
        let mut seen = lock(&state.seen);
        let n = seen.entry(webhook_id.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let verified = state
        .verifier
        .as_ref()
        .map(|v| v.verify(&webhook_id, &timestamp, &signature, &body));
    let mut received = Received {
        webhook_id,
        timestamp,
        signature,
        headers,
        body,
        at,
        nth,
        verified,
        status: 0,
        replied_at: None,
    };
    let reply = (state.script)(&received);
    received.status = reply.status;
    let index = {
        let mut log = lock(&state.log);
        log.push(received);
        state.count.send_replace(log.len());
        log.len() - 1
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    lock(&state.log)[index].replied_at = Some(SystemTime::now());
    // Waiters may be waiting for this answer, not only for new requests.
    state.count.send_modify(|_| ());
    let mut response = hyper::Response::new(Full::new(reply.body));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}
