//! The real `outboxd run` as a child process: configured through the
//! environment (never the developer's own: the environment is cleared),
//! stderr kept in a log file for diagnosis, stopped with SIGKILL or SIGTERM.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_outboxd");

/// Settings every fault test starts from; a test overrides what it is about.
/// The lease outlasts the request timeout by the required 5 s and no more,
/// so a killed replica's rows come back quickly.
const DEFAULTS: &[(&str, &str)] = &[
    // The receivers are on loopback, which the SSRF guard refuses by default.
    ("OUTBOXD_ALLOW_NETWORKS", "127.0.0.0/8"),
    // Many sidecars run at once: none may take the admin port.
    ("OUTBOXD_NO_ADMIN", "true"),
    ("OUTBOXD_POLL_INTERVAL", "500ms"),
    ("OUTBOXD_REQUEST_TIMEOUT", "2s"),
    ("OUTBOXD_LEASE", "7s"),
    ("OUTBOXD_RETRY_SCHEDULE", "0s,100ms,200ms,400ms,800ms"),
    ("OUTBOXD_SHUTDOWN_GRACE", "5s"),
    ("OUTBOXD_CONCURRENCY", "32"),
    ("RUST_LOG", "info"),
    ("RUST_BACKTRACE", "1"),
];

/// How a sidecar will be started.
pub struct Launch {
    worker_id: String,
    env: Vec<(String, String)>,
    /// Run inside this network namespace (`ip netns exec`).
    netns: Option<String>,
}

impl Launch {
    /// `outboxd run` against `database_url` as `worker_id`, which also
    /// becomes the connections' `application_name` so that tests can find
    /// its backends in `pg_stat_activity`.
    pub fn new(database_url: &str, worker_id: &str) -> Self {
        let separator = if database_url.contains('?') { '&' } else { '?' };
        let mut env: Vec<(String, String)> = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push((
            "DATABASE_URL".into(),
            format!("{database_url}{separator}application_name={worker_id}"),
        ));
        env.push(("OUTBOXD_WORKER_ID".into(), worker_id.into()));
        Self {
            worker_id: worker_id.into(),
            env,
            netns: None,
        }
    }

    /// Runs the process inside network namespace `name` (needs root).
    pub fn in_netns(mut self, name: &str) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Sets (or overrides) an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the process.
    pub fn spawn(self) -> Outboxd {
        let log = log_path(&self.worker_id);
        let stderr = std::fs::File::create(&log).expect("creating the sidecar log");
        let mut command = match &self.netns {
            // `ip netns exec` execs the program: the child is outboxd.
            Some(netns) => {
                let mut command = Command::new("/usr/sbin/ip");
                command.args(["netns", "exec", netns, BIN]);
                command
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("run")
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("starting outboxd");
        Outboxd {
            worker_id: self.worker_id,
            child,
            log,
            peak_rss_kib: 0,
        }
    }
}

/// `target/tmp/faults/<test name>/<worker>.log`, kept after the run.
fn log_path(worker_id: &str) -> PathBuf {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", "-");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("faults")
        .join(test);
    std::fs::create_dir_all(&dir).expect("creating the log directory");
    dir.join(format!("{worker_id}.log"))
}

/// A running (or finished) `outboxd run`. Dropping it kills the process.
pub struct Outboxd {
    /// Its `--worker-id` and `application_name`.
    pub worker_id: String,
    child: Child,
    log: PathBuf,
    peak_rss_kib: u64,
}

impl Outboxd {
    fn pid(&self) -> i32 {
        self.child.id().expect("the process is still running") as i32
    }

    /// The peak resident set size so far (VmHWM), in KiB. Call it before
    /// stopping the process: the figure dies with it.
    pub fn peak_rss_kib(&mut self) -> u64 {
        if let Some(pid) = self.child.id()
            && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
        self.peak_rss_kib
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("sending SIGKILL");
        self.child.wait().await.expect("reaping outboxd");
    }

    /// SIGTERM, then waits at most `within` for the exit.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.peak_rss_kib();
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own unreaped child, so it cannot have been reused.
        let sent = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(sent, 0, "sending SIGTERM");
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("reaping outboxd"),
            Err(_) => panic!(
                "{} did not exit within {within:?} of SIGTERM; log:\n{}",
                self.worker_id,
                self.log_tail(40)
            ),
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Outboxd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}), last lines:\n{}",
                self.worker_id,
                self.log.display(),
                self.log_tail(30)
            );
        }
    }
}
