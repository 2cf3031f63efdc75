//! How the admin server keeps clients from holding its connections.

use std::time::Duration;

/// A client has this long from connecting (or from its previous response)
/// to send a whole request head. Probes and scrapes send theirs at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once; a new one beyond this closes the oldest.
pub const MAX_CONNECTIONS: usize = 64;
/// No connection stays open longer, whatever its client does.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// How the admin server keeps clients from holding connections (and file
/// descriptors, which deliveries and reconnects need) open. The defaults
/// are the constants above; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// How long a client has to send a request head (default 10 s).
    pub header_read_timeout: Duration,
    /// Connections open at once (default 64).
    pub max_connections: usize,
    /// The longest a connection stays open (default 60 s).
    pub max_lifetime: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_lifetime: MAX_CONNECTION_LIFETIME,
        }
    }
}
