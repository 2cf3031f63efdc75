//! A webhook receiver for outboxd (or any Standard Webhooks sender): it
//! verifies each request's signature with `outboxd::signature`, processes
//! every `webhook-id` once although outboxd delivers at least once, and
//! answers `200` (processed, or a duplicate) or `400` (not signed by us,
//! malformed). Anything but 2xx makes outboxd retry, so a request is
//! acknowledged only once the event is safely handed over.
//!
//! ```sh
//! WEBHOOK_SECRET=whsec_... LISTEN_ADDR=127.0.0.1:8080 cargo run --example receiver
//! ```
//!
//! `WEBHOOK_SECRET` takes several comma-separated secrets during a
//! rotation. The container image of deploy/docker-compose.yml runs this
//! program (`docker build --target receiver .`).

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use outboxd::signature::{Secret, Verifier};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Larger bodies are refused before they are read whole.
const MAX_BODY: usize = 1024 * 1024;

/// A verified webhook, seen for the first time.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// `webhook-id`: the outbox message's `event_id`, the same on every retry.
    pub id: String,
    /// The payload's `type`, when it has one.
    pub event_type: Option<String>,
    /// The body.
    pub payload: serde_json::Value,
}

/// The receiver's state: who may sign, which ids were processed, and where
/// new events go.
pub struct Receiver {
    verifier: Verifier,
    /// Processed ids. In memory for the example; in production, insert the
    /// id into a table with a unique key in the same transaction as the
    /// event's side effects, and keep ids longer than the sender retries
    /// (outboxd's default schedule spans about 28 hours).
    seen: Mutex<HashSet<String>>,
    events: mpsc::UnboundedSender<Webhook>,
}

impl Receiver {
    /// A receiver accepting signatures by any of `secrets`, handing new
    /// events to `events`.
    pub fn new(secrets: Vec<Secret>, events: mpsc::UnboundedSender<Webhook>) -> Self {
        Self {
            verifier: Verifier::new(secrets),
            seen: Mutex::new(HashSet::new()),
            events,
        }
    }

    /// Judges one request: verify first (so forged requests can never mark
    /// an id as seen), then deduplicate, then hand the event over.
    pub fn accept(&self, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let id = header("webhook-id");
        if let Err(error) = self.verifier.verify(
            id,
            header("webhook-timestamp"),
            header("webhook-signature"),
            body,
        ) {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid signature: {error}"),
            );
        }
        let Ok(payload) = serde_json::from_slice::<serde_json::Value>(body) else {
            return (StatusCode::BAD_REQUEST, "body is not JSON".to_owned());
        };
        // A poisoned lock only means another request panicked mid-insert;
        // the set itself is still usable.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(id) {
            return (StatusCode::OK, "duplicate, already processed".to_owned());
        }
        let event_type = payload["type"].as_str().map(str::to_owned);
        let webhook = Webhook {
            id: id.to_owned(),
            event_type,
            payload,
        };
        if self.events.send(webhook).is_err() {
            // Not processed: let the sender retry later.
            return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
        }
        seen.insert(id.to_owned());
        (StatusCode::OK, "processed".to_owned())
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "POST only".to_owned());
        }
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large".to_owned()),
        };
        let (status, text) = self.accept(&parts.headers, &body);
        reply(status, text)
    }
}

fn reply(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text + "\n")));
    *response.status_mut() = status;
    response
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    receiver: Arc<Receiver>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    eprintln!("accept failed: {error}");
                    continue;
                }
            },
        };
        let receiver = receiver.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let receiver = receiver.clone();
                async move { Ok::<_, Infallible>(receiver.handle(request).await) }
            });
            // A client that hangs up mid-request is not our problem.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Completes on SIGTERM (`docker stop`) or Ctrl-C.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secrets = std::env::var("WEBHOOK_SECRET")
        .map_err(|_| "set WEBHOOK_SECRET to the endpoint's whsec_ secret")?
        .split(',')
        .map(|s| Secret::parse(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());

    // The application's side: here, print each event once.
    let (events, mut incoming) = mpsc::unbounded_channel::<Webhook>();
    tokio::spawn(async move {
        while let Some(webhook) = incoming.recv().await {
            let kind = webhook.event_type.as_deref().unwrap_or("(no type)");
            println!("{} {kind} {}", webhook.id, webhook.payload["data"]);
        }
    });

    let listener = TcpListener::bind(&addr).await?;
    println!("receiving webhooks on http://{}/", listener.local_addr()?);
    serve(
        listener,
        Arc::new(Receiver::new(secrets, events)),
        stop_signal(),
    )
    .await;
    Ok(())
}
