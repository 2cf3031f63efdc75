//! The admin HTTP server for probes and scrapes: `/metrics` (Prometheus
//! text), `/healthz` (the process is alive) and `/readyz` (the database
//! answers and, in notify mode, a `LISTEN` is active). It serves nothing
//! else and holds no state beyond a probe connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::telemetry;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks.
pub struct Readiness {
    db: Db,
    /// `Some` unless in poll mode: whether the wake-up watcher is
    /// subscribed (LISTEN active, or replication slot held).
    listening: Option<Arc<AtomicBool>>,
    /// Set once shutdown begins.
    draining: AtomicBool,
    probe: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Readiness {
    /// Readiness for a sidecar on `db`; `listening` unless in poll mode.
    pub fn new(db: Db, listening: Option<Arc<AtomicBool>>) -> Self {
        Self {
            db,
            listening,
            draining: AtomicBool::new(false),
            probe: tokio::sync::Mutex::new(None),
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
        if probe.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            let client = tokio::time::timeout(PROBE_TIMEOUT, self.db.connect())
                .await
                .map_err(|_| "database: connect timed out".to_owned())?
                .map_err(|e| format!("database: {e}"))?;
            *probe = Some(client);
        }
        let client = probe.as_ref().expect("connected just above");
        match tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                *probe = None;
                Err(format!("database: {e}"))
            }
            Err(_) => {
                *probe = None;
                Err("database: probe timed out".into())
            }
        }
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, readiness: Arc<Readiness>, shutdown: CancellationToken) {
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
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| route(readiness.clone(), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

async fn route(
    readiness: Arc<Readiness>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()));
    }
    Ok(match request.uri().path() {
        "/metrics" => {
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
