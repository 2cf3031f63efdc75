//! How every long-lived connection of the sidecar is kept: a [`Slot`] opens
//! its [`Session`] on first use, drops it when the connection is lost, and
//! hands out the reconnect backoff; [`within`] gives every statement a
//! deadline, so that a connection that died silently is replaced instead of
//! stalling its component. Each component (claims, outcomes, routing,
//! housekeeping, the readiness probe, logical wake-up) owns one slot, so
//! none waits on another and none holds a connection across an HTTP call.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::Client;

use super::{Backoff, Db, DbError};
use crate::telemetry;

/// The longest any statement of the sidecar may take before its connection
/// is presumed dead and replaced. A healthy server answers in milliseconds
/// (claims skip locked rows, outcome writes touch only their own claims),
/// so only a dead or wedged connection gets near it; the statement is then
/// also cancelled server-side, in case the server is merely slow.
pub const STATEMENT_DEADLINE: Duration = Duration::from_secs(10);

/// What a slot keeps open: a connection plus whatever is set up on it
/// (prepared statements, a subscription, a replication slot).
pub trait Session: Sized {
    /// What setting a session up needs besides the database (e.g. the
    /// name of its replication slot).
    type Spec: Send + Sync;

    /// Opens a new connection and sets it up.
    fn open(db: &Db, spec: &Self::Spec) -> impl Future<Output = Result<Self, DbError>> + Send;

    /// Whether the connection is gone.
    fn is_closed(&self) -> bool;
}

impl Session for Client {
    type Spec = ();

    async fn open(db: &Db, _: &()) -> Result<Self, DbError> {
        db.connect().await
    }

    fn is_closed(&self) -> bool {
        Client::is_closed(self)
    }
}

/// One component's connection, opened on first use and after every loss.
pub struct Slot<S: Session> {
    db: Db,
    spec: S::Spec,
    /// The component, for the reconnect metric.
    name: &'static str,
    session: Option<S>,
    backoff: Backoff,
    /// Whether a session was opened before: the next open is a reconnect.
    opened: bool,
}

impl<S: Session<Spec = ()>> Slot<S> {
    /// An empty slot for the component `name`; nothing connects yet.
    pub fn new(db: &Db, name: &'static str) -> Self {
        Self::with_spec(db, name, ())
    }
}

impl<S: Session> Slot<S> {
    /// An empty slot for the component `name` whose sessions are set up
    /// as `spec` says; nothing connects yet.
    pub fn with_spec(db: &Db, name: &'static str, spec: S::Spec) -> Self {
        Self {
            db: db.clone(),
            spec,
            name,
            session: None,
            backoff: db.backoff(),
            opened: false,
        }
    }

    /// The open session, opening a new one when there is none or its
    /// connection closed.
    pub async fn get(&mut self) -> Result<&mut S, DbError> {
        if let Some(session) = self.session.take_if(|s| !s.is_closed()) {
            return Ok(self.session.insert(session));
        }
        if self.opened {
            telemetry::reconnect(self.name);
        }
        let session = S::open(&self.db, &self.spec).await?;
        self.opened = true;
        Ok(self.session.insert(session))
    }

    /// The open session, if any, without connecting (e.g. at shutdown).
    pub fn current(&self) -> Option<&S> {
        self.session.as_ref().filter(|s| !s.is_closed())
    }

    /// Work on the session succeeded: the next failure starts the backoff
    /// afresh.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
    }

    /// Work on the session failed with `error`: a lost connection is
    /// dropped (the next [`get`](Self::get) reconnects), and so is one to a
    /// read-only server (after a failover a new connection may reach the
    /// new primary). Returns how long to wait before trying again.
    pub fn failed(&mut self, error: &DbError) -> Duration {
        if error.is_connection_lost() || error.is_read_only() {
            self.session = None;
        }
        self.backoff.next_delay()
    }

    /// Drops the session (e.g. a probe found the server read-only: a new
    /// connection may reach a promoted primary); the next
    /// [`get`](Self::get) reconnects, and counts it.
    pub fn disconnect(&mut self) {
        self.session = None;
    }

    /// The database this slot connects to.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// Runs `statement` for at most `after`: a probe's shorter deadline, with
/// nothing to cancel server-side (its connection is given up).
pub async fn bounded<T>(
    after: Duration,
    context: &'static str,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(after, statement).await {
        Ok(answered) => answered.map_err(DbError::during(context)),
        Err(_) => Err(DbError::Unresponsive { context, after }),
    }
}

/// Runs `statement` on `client` for at most [`STATEMENT_DEADLINE`]. When the
/// deadline passes, the server is asked (on a new connection, in the
/// background) to cancel it, so that a slow but alive server does not go
/// on working for a client that left.
pub async fn within<T>(
    db: &Db,
    client: &Client,
    context: &'static str,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(STATEMENT_DEADLINE, statement).await {
        Ok(result) => result.map_err(DbError::during(context)),
        Err(_) => {
            db.cancel_in_background(client);
            Err(DbError::Unresponsive {
                context,
                after: STATEMENT_DEADLINE,
            })
        }
    }
}
