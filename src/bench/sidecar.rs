//! `outboxd run` as child processes, so the benchmark measures the sidecar
//! alone: its peak resident memory (`VmHWM`) and CPU time (`utime + stime`)
//! come from `/proc`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use super::Options;
use crate::config::DatabaseUrl;

/// Kernel clock ticks per second for `/proc/<pid>/stat` (USER_HZ is 100 on
/// every Linux platform Rust supports).
const TICKS_PER_SEC: f64 = 100.0;

/// Running sidecars.
pub struct Sidecars {
    children: Vec<Child>,
}

impl Sidecars {
    /// Starts `options.replicas` sidecars on `url` with `wakeup`
    /// (`notify` or `logical`).
    pub fn start(options: &Options, url: &DatabaseUrl, wakeup: &str) -> anyhow::Result<Self> {
        let children = (0..options.replicas)
            .map(|i| spawn(&options.sidecar_bin, options, url, i, wakeup))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { children })
    }

    /// CPU time used so far by all of them.
    pub fn cpu(&self) -> Duration {
        self.children.iter().filter_map(|c| cpu_of(c.id())).sum()
    }

    /// The largest peak resident set among them.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.children
            .iter()
            .filter_map(|c| peak_rss_of(c.id()))
            .max()
            .unwrap_or(0)
    }

    /// SIGTERM, then waits (bounded, without blocking the runtime: the
    /// receiver answering their last requests may run on it) for each to
    /// exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for child in &self.children {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.children {
            for _ in 0..1500 {
                if child.try_wait()?.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if child.try_wait()?.is_none() {
                child.kill()?;
                anyhow::bail!("a sidecar did not stop within 30 s of SIGTERM");
            }
        }
        Ok(())
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(
    bin: &Path,
    options: &Options,
    url: &DatabaseUrl,
    index: u32,
    wakeup: &str,
) -> anyhow::Result<Child> {
    Command::new(bin)
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", url.expose())
        .env("OUTBOXD_ALLOW_NETWORKS", "127.0.0.0/8")
        .env("OUTBOXD_CONCURRENCY", options.concurrency.to_string())
        .env("OUTBOXD_BATCH_SIZE", options.batch_size.to_string())
        .env("OUTBOXD_WORKER_ID", format!("bench-{index}"))
        .env("OUTBOXD_NO_ADMIN", "true")
        .env("OUTBOXD_NO_PURGE", "true")
        .env("OUTBOXD_WAKEUP", wakeup)
        // Poll mode is the producers' baseline: it must deliver as it goes
        // (and so use the CPU as the other modes do), not every 5 s.
        .env(
            "OUTBOXD_POLL_INTERVAL",
            if wakeup == "poll" { "20ms" } else { "5s" },
        )
        .env("OUTBOXD_ASYNC_COMMIT", options.async_commit.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(Duration::from_secs_f64(ticks / TICKS_PER_SEC))
}

fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
