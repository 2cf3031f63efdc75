//! The command line: [`Cli`] and [`Command`] here, and one module per
//! command that owns its options and runs it (`run` makes the validated
//! [`Config`](crate::config::Config)). Shared pieces import nothing from
//! the rest of the CLI but `usage` (the exit-code scheme, which imports
//! nothing): `database`, `tenant_guard`. `anyhow` is used only at this
//! edge.

mod adopt;
mod bench;
mod database;
mod demo;
mod endpoint;
mod healthcheck;
mod keygen;
mod recover;
mod replay;
mod resend;
mod retry_schedule;
mod run;
mod status;
mod tenant_guard;
mod usage;
mod verify;

use clap::{Parser, Subcommand, ValueEnum};

pub use self::adopt::{AdoptArgs, UnadoptArgs};
pub use self::bench::BenchArgs;
pub use self::database::DatabaseArgs;
pub use self::demo::DemoArgs;
pub use self::endpoint::{EndpointArgs, EndpointCommand};
pub use self::healthcheck::HealthcheckArgs;
pub use self::keygen::KeygenArgs;
pub use self::recover::RecoverArgs;
pub use self::replay::ReplayArgs;
pub use self::resend::ResendArgs;
pub use self::retry_schedule::RetryScheduleArgs;
use self::run::RUN_EXAMPLES;
pub use self::run::RunArgs;
pub use self::status::StatusArgs;
pub use self::usage::{EXIT_FAILURE, EXIT_USAGE, Usage, exit_code};
pub use self::verify::VerifyArgs;

/// Transactional-outbox webhook sidecar for PostgreSQL.
///
/// Applications INSERT into outbox.messages in their own transaction;
/// outboxd delivers each row as a signed Standard Webhook, retries, and
/// writes every outcome back for SQL queries.
#[derive(Debug, Parser)]
#[command(name = "outboxd", version, propagate_version = true, after_help = GETTING_STARTED)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr (filter with RUST_LOG, e.g. `info,outboxd=debug`).
    #[arg(long, env = "OUTBOXD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

const GETTING_STARTED: &str = "\
Getting started:
  outboxd demo                   see it work: a throwaway PostgreSQL and receiver, no setup
  outboxd migrate                create schema \"outbox\" in $DATABASE_URL
  outboxd endpoint add ID URL    register a receiver; prints its signing secret
  outboxd run                    deliver; /metrics, /healthz and /readyz on 127.0.0.1:9090

Environment: an option that also reads an environment variable shows it in
`outboxd COMMAND --help` as [env: NAME]. Every setting of `run` does, and
--database-url (DATABASE_URL) and --log-format (OUTBOXD_LOG_FORMAT) do on
every command; the one-off arguments of the other commands (ids, URLs, times)
are read from the command line only. Booleans take 1/0, true/false, yes/no
or on/off.

Exit status: 0 success; 1 the command ran and failed or its answer is no
(invalid signature, unhealthy sidecar, database error); 2 the command line
or environment is wrong (unknown flag, malformed value, settings that cannot
work together, unreadable file argument) and nothing was done.";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: claim due deliveries, sign and POST them, record outcomes.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Ask a running sidecar's admin server whether it is healthy; exit 0 if so, 1 if not.
    ///
    /// For container health checks where there is no shell or curl (the
    /// distroless image): `HEALTHCHECK CMD ["outboxd", "healthcheck"]`.
    #[command(display_order = 100)]
    Healthcheck(HealthcheckArgs),
    /// Create or upgrade the outbox schema (safe to repeat, safe to run concurrently).
    Migrate(DatabaseArgs),
    /// Backlog, oldest pending, dead and health per endpoint.
    Status(StatusArgs),
    /// Add, list, enable, disable, rotate the secret of, or test an endpoint.
    Endpoint(EndpointArgs),
    /// Send dead deliveries again: one by id, or an endpoint's since a time.
    Replay(ReplayArgs),
    /// Send a message to one of its endpoints again, delivered ones included.
    Resend(ResendArgs),
    /// Give an endpoint the messages it missed over a time range (older than it included).
    Recover(RecoverArgs),
    /// Set an endpoint's own retry schedule (overrides the sidecar's), or --reset it.
    RetrySchedule(RetryScheduleArgs),
    /// Start a throwaway Postgres and receiver, send a few events, show their status.
    Demo(DemoArgs),
    /// Check a received webhook's signature (for receivers and debugging).
    Verify(VerifyArgs),
    /// Feed outbox.messages from an existing outbox table (Debezium's columns by default).
    Adopt(AdoptArgs),
    /// Stop feeding outbox.messages from an adopted table (drops only what adopt installed).
    Unadopt(UnadoptArgs),
    /// Generate an endpoint key: an ed25519 pair (whsk_ secret key, whpk_ public key) or,
    /// with --hmac, a whsec_ secret.
    Keygen(KeygenArgs),
    /// Measure throughput, latency, producer cost and claim cost beside the machine's ceilings.
    Bench(BenchArgs),
}

/// Runs a parsed command to completion.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Healthcheck(args) => healthcheck::run(&args).await,
        Command::Migrate(args) => run::migrate(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Endpoint(args) => endpoint::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Resend(args) => resend::run(args).await,
        Command::Recover(args) => recover::run(args).await,
        Command::RetrySchedule(args) => retry_schedule::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Verify(args) => verify::run(&args),
        Command::Keygen(args) => keygen::run(&args),
        Command::Bench(args) => bench::run(args).await,
        Command::Adopt(args) => adopt::adopt(args).await,
        Command::Unadopt(args) => adopt::unadopt(args).await,
    }
}
