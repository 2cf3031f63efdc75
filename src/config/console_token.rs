//! `--console-token`: who may sign in to the web console.

use std::fmt;

/// The shortest token accepted: a console is a way to resend webhooks.
pub const MIN_TOKEN_LEN: usize = 16;

/// The console's sign-in token (`--console-token`); `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleToken(String);

impl ConsoleToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for signing sessions with. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in bytes (for validation).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ConsoleToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsoleToken(***)")
    }
}
