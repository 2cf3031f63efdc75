//! `outboxd keygen`: a new endpoint key, printed once: an ed25519 pair
//! (`whsk_` for `outbox.endpoints.secrets`, `whpk_` for the receiver) or,
//! with `--hmac`, a shared `whsec_` secret.

use clap::Args;

use crate::signature::{Secret, ed25519};

/// Settings of `outboxd keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Print a symmetric whsec_ secret (shared with the receiver) instead of a key pair.
    #[arg(long)]
    pub hmac: bool,
}

/// Prints the key(s) on stdout and what to do with them on stderr.
pub fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    let rng_failed = |_| anyhow::anyhow!("the operating system's random number generator failed");
    if args.hmac {
        let secret = Secret::try_generate().map_err(rng_failed)?;
        println!("{}", secret.to_whsec());
        eprintln!("store it in outbox.endpoints.secrets and give it to the receiver");
        return Ok(());
    }
    let key = ed25519::SecretKey::generate().map_err(rng_failed)?;
    println!("{}", key.to_whsk());
    println!("{}", key.public_key().to_whpk());
    eprintln!(
        "line 1 (whsk_): the secret key, store it in outbox.endpoints.secrets; \
         line 2 (whpk_): the public key, give it to the receiver"
    );
    Ok(())
}
