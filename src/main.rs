//! The `outboxd` binary: parse, set up logging, run, map to an exit code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use outboxd::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; only problems belong on stderr there.
    let default_filter = match cli.command {
        Command::Demo(_) => "error",
        _ => "info",
    };
    init_logging(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(outboxd::cli::execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // tokio_postgres logs every statement's parameters at debug level, and
    // those can be endpoint secrets: only a directive naming it turns that on.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("tokio_postgres")) {
        filter = filter.add_directive(
            "tokio_postgres::query=info"
                .parse()
                .expect("a valid constant directive"),
        );
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}
