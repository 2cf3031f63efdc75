//! The exit-code scheme, in one place: a [`Usage`] error anywhere in an
//! error's chain makes the process exit 2, like clap's own parse errors;
//! any other error exits 1 (the help's "Exit status" says the same).
//! Imports nothing from the rest of the CLI.

use std::fmt;

/// Exit status: the command ran and failed, or its answer is no (an
/// invalid signature, an unhealthy sidecar, a database that refused).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: the command line or environment is wrong (an unknown flag,
/// a malformed value, settings that cannot work together, a file argument
/// that cannot be read); nothing was done. clap exits 2 for its own checks.
pub const EXIT_USAGE: u8 = 2;

/// A mistake in how the command was invoked, found before anything ran.
#[derive(Debug)]
pub struct Usage(String);

impl Usage {
    /// A usage error with this message.
    pub fn error(message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Self(message.into()))
    }

    /// A usage error carrying another error's whole message (its causes
    /// joined by `: `), so it is printed once.
    pub fn from_error(error: impl Into<anyhow::Error>) -> anyhow::Error {
        Self::error(format!("{:#}", error.into()))
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit status for a command that failed with `error`.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|cause| cause.is::<Usage>()) {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}
