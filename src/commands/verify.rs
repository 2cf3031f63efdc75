//! `outboxd verify`: check a received webhook's signature (HMAC secrets or
//! ed25519 public keys) from the command line, saying valid or exactly why
//! not.

use std::io::Read as _;

use anyhow::{Context as _, bail};

use crate::cli::VerifyArgs;
use crate::signature::{Verifier, VerifyingKey};

/// Prints `valid`, or fails with the reason.
pub fn run(args: &VerifyArgs) -> anyhow::Result<()> {
    let secrets = args
        .secrets
        .iter()
        .enumerate()
        .map(|(i, s)| VerifyingKey::parse(s).with_context(|| format!("--secret #{}", i + 1)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = if args.body.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .context("reading the body from stdin")?;
        body
    } else {
        std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?
    };
    let verifier = Verifier::with_keys(secrets).with_tolerance(args.tolerance);
    if let Err(error) = verifier.verify(&args.id, &args.timestamp, &args.signature, &body) {
        bail!("invalid: {error}");
    }
    println!("valid");
    Ok(())
}
