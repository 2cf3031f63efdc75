//! The admin HTTP server for probes and scrapes: `/metrics` (Prometheus
//! text), `/healthz` (the process is alive) and `/readyz` (the database
//! answers and, in notify mode, a `LISTEN` is active). It serves nothing
//! else and holds no state beyond a probe connection and the list of open
//! connections.
//!
//! It often listens on every interface (probes come from outside the
//! container), so it bounds what a client can hold ([`AdminLimits`]): a
//! request head must arrive within 10 s, at most 64 connections are open
//! (a new one closes the oldest, so probes still get in), and none lives
//! longer than a minute.
//! Idle clients cannot use up the file descriptors that deliveries and
//! database reconnects need.
//!
//! With `--console-token` it also hands `/console` to [`crate::console`]
//! (404 otherwise).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::AdminLimits;
use crate::console::{self, Console};
use crate::db::Db;
use crate::db::slot::{Slot, bounded};
use crate::telemetry;
use tokio_postgres::SimpleQueryMessage;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks.
pub struct Readiness {
    /// `Some` unless in poll mode: whether the wake-up watcher is
    /// subscribed (LISTEN active, or replication slot held).
    listening: Option<Arc<AtomicBool>>,
    /// Set once shutdown begins.
    draining: AtomicBool,
    probe: tokio::sync::Mutex<Slot<tokio_postgres::Client>>,
}

impl Readiness {
    /// Readiness for a sidecar on `db`; `listening` unless in poll mode.
    pub fn new(db: Db, listening: Option<Arc<AtomicBool>>) -> Self {
        Self {
            probe: tokio::sync::Mutex::new(Slot::new(&db, "readiness")),
            listening,
            draining: AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` answers 503.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, else why not.
    pub async fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if let Some(listening) = &self.listening
            && !listening.load(Ordering::Relaxed)
        {
            return Err("wake-up watcher not subscribed (database connection lost?)".into());
        }
        let mut probe = self.probe.lock().await;
        let client = tokio::time::timeout(PROBE_TIMEOUT, probe.get())
            .await
            .map_err(|_| "database: connect timed out".to_owned())?
            .map_err(|e| format!("database: {e}"))?;
        // A simple query (no named statement, no session state): it works
        // through a transaction-mode pooler too.
        let probe_sql = "SELECT pg_catalog.current_setting('transaction_read_only')";
        let answered = bounded(
            PROBE_TIMEOUT,
            "probing the database",
            client.simple_query(probe_sql),
        )
        .await;
        match answered {
            Ok(messages) => {
                probe.succeeded();
                let read_only = messages
                    .iter()
                    .any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("on")));
                if read_only {
                    // A new connection may reach the new primary.
                    probe.disconnect();
                    return Err(
                        "database is read-only (a standby, or default_transaction_read_only): \
                                no claims until it is writable"
                            .into(),
                    );
                }
                Ok(())
            }
            Err(error) => {
                probe.failed(&error);
                Err(format!("database: {error}"))
            }
        }
    }
}

/// Serves until `shutdown`, within `limits`; `/console` too when `console`
/// is given.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    console: Option<Arc<Console>>,
    limits: AdminLimits,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Connections::new(limits.max_connections));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "admin server accept failed");
                    continue;
                }
            },
        };
        let admitted = connections.admit();
        let readiness = readiness.clone();
        let console = console.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service =
                service_fn(move |request| route(readiness.clone(), console.clone(), request));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            // Each arm but the last drops the connection, closing it.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = admitted.evicted.cancelled() => {}
                _ = tokio::time::sleep(limits.max_lifetime) => {}
                _ = connection => {}
            }
        });
    }
}

/// The open connections, oldest first. A connection over the cap closes
/// the oldest rather than being refused: clients holding every slot would
/// otherwise lock out the probes, and the kubelet would restart a healthy
/// sidecar.
struct Connections {
    max: usize,
    open: Mutex<BTreeMap<u64, CancellationToken>>,
    next_id: AtomicU64,
}

/// A place among [`Connections`], given up when dropped.
struct Admitted {
    connections: Arc<Connections>,
    id: u64,
    /// Cancelled when newer connections push this one out.
    evicted: CancellationToken,
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            open: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Makes room for one more connection (closing the oldest when full).
    fn admit(self: &Arc<Self>) -> Admitted {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        while open.len() >= self.max {
            let Some((_, oldest)) = open.pop_first() else {
                break;
            };
            oldest.cancel();
            tracing::debug!(
                max = self.max,
                "admin server full: closed its oldest connection"
            );
        }
        open.insert(id, evicted.clone());
        Admitted {
            connections: self.clone(),
            id,
            evicted,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

async fn route(
    readiness: Arc<Readiness>,
    console: Option<Arc<Console>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if console::owns(request.uri().path()) {
        return Ok(console::handle(console.as_deref(), request).await);
    }
    if request.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()));
    }
    Ok(match request.uri().path() {
        "/metrics" => {
            telemetry::ready(readiness.check().await.is_ok());
            let mut response = text(StatusCode::OK, telemetry::handle().render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness.check().await {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
