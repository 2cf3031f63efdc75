//! `outboxd verify`: check a received webhook's signature (HMAC secrets or
//! ed25519 public keys) from the command line, saying valid or exactly why
//! not.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::usage::Usage;
use crate::signature::{Verifier, VerifyingKey};

/// Settings of `outboxd verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Endpoint secret (whsec_...) or ed25519 public key (whpk_...); repeat during a rotation.
    #[arg(
        long = "secret",
        env = "OUTBOXD_VERIFY_SECRETS",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub secrets: Vec<String>,
    /// The webhook-id header.
    #[arg(long)]
    pub id: String,
    /// The webhook-timestamp header.
    #[arg(long)]
    pub timestamp: String,
    /// The webhook-signature header.
    #[arg(long)]
    pub signature: String,
    /// File holding the exact request body; `-` reads standard input.
    #[arg(long, default_value = "-")]
    pub body: PathBuf,
    /// How far the timestamp may be from this machine's clock.
    #[arg(long, env = "OUTBOXD_VERIFY_TOLERANCE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub tolerance: Duration,
}

/// Prints `valid`, or fails with the reason: exit 1 for a webhook that
/// does not verify, 2 when it cannot be checked (a malformed key, an
/// unreadable body).
pub fn run(args: &VerifyArgs) -> anyhow::Result<()> {
    let secrets = args
        .secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            VerifyingKey::parse(s).map_err(|e| Usage::error(format!("--secret #{}: {e}", i + 1)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = if args.body.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| Usage::error(format!("--body -: cannot read standard input: {e}")))?;
        body
    } else {
        std::fs::read(&args.body).map_err(|e| {
            Usage::error(format!("--body: cannot read {}: {e}", args.body.display()))
        })?
    };
    let verifier = Verifier::with_keys(secrets).with_tolerance(args.tolerance);
    if let Err(error) = verifier.verify(&args.id, &args.timestamp, &args.signature, &body) {
        bail!("invalid: {error}");
    }
    println!("valid");
    Ok(())
}
