//! The `outboxd` binary: parse, set up logging, run, map to an exit code
//! (the scheme is in `cli::usage`).

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use outboxd::cli::{Cli, Command, LogFormat, exit_code};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return clap_error(&error),
    };
    // The demo narrates on stdout; only problems belong on stderr there.
    let default_filter = match cli.command {
        Command::Demo(_) => "error",
        _ => "info",
    };
    let format = cli.log_format;
    init_logging(format, default_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            let error = anyhow::Error::new(error).context("cannot start the async runtime");
            fatal(format, &error);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(outboxd::cli::execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            fatal(format, &error);
            ExitCode::from(exit_code(&error))
        }
    }
}

/// Prints why the command failed: `error: ...` for people, or one JSON log
/// line under `--log-format json`, which log collectors would otherwise
/// drop. A closed stderr loses the message, never panics.
fn fatal(format: LogFormat, error: &anyhow::Error) {
    match format {
        LogFormat::Json => tracing::error!(error = format!("{error:#}"), "fatal"),
        LogFormat::Text => {
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
        }
    }
}

/// clap's own message (help and --version included) and exit code; a usage
/// error is a JSON line when JSON logs were asked for.
fn clap_error(error: &clap::Error) -> ExitCode {
    let code = error.exit_code();
    if error.use_stderr() && json_requested() {
        init_logging(LogFormat::Json, "info");
        let text = error.to_string();
        let first = text.lines().next().unwrap_or_default();
        tracing::error!(error = first.trim_start_matches("error: "), "fatal");
    } else {
        // Help and --version go to stdout; a closed pipe loses them quietly.
        let _ = error.print();
    }
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}

/// Whether the command line that clap refused asked for JSON logs.
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let flag = args
        .windows(2)
        .rev()
        .find_map(|pair| match pair[0].as_str() {
            "--log-format" => Some(pair[1].clone()),
            _ => None,
        })
        .or_else(|| {
            args.iter()
                .rev()
                .find_map(|a| a.strip_prefix("--log-format=").map(str::to_owned))
        });
    flag.or_else(|| std::env::var("OUTBOXD_LOG_FORMAT").ok())
        .is_some_and(|format| format == "json")
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
    // A log line that cannot be written (stderr a closed pipe: the reader
    // went away) is dropped. Reporting it would write to stderr again, and
    // tracing-subscriber's report panics there: losing the log reader must
    // never stop the sidecar.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}
