//! `outboxd healthcheck`: for container health checks where the image has
//! no curl. One `GET` over a plain TCP connection: the admin server speaks
//! HTTP/1.1 on loopback, so no HTTP client (or TLS) is needed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::usage::Usage;
use crate::config::defaults;

/// Settings of `outboxd healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The sidecar's --admin-addr; 0.0.0.0 (as in containers) is asked on 127.0.0.1.
    #[arg(long, env = "OUTBOXD_ADMIN_ADDR", default_value = defaults::ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// What to ask: /healthz (the process is alive) or /readyz (it can deliver now).
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Report unhealthy when there is no answer within this time.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Asks `--admin-addr` for `--path` and fails unless it answers 2xx.
pub async fn run(args: &HealthcheckArgs) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if !args.path.starts_with('/') {
        return Err(Usage::error("--path must start with /, e.g. /healthz"));
    }
    let mut addr = args.admin_addr;
    if addr.ip().is_unspecified() {
        let loopback: std::net::IpAddr = match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        addr.set_ip(loopback);
    }
    let url = format!("http://{addr}{}", args.path);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n",
            args.path
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(4096).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(args.timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("unhealthy: {url} did not answer within {:?}", args.timeout))?
        .with_context(|| format!("unhealthy: cannot ask {url} (is `outboxd run` up?)"))?;
    let status = response.split(' ').nth(1).unwrap_or("no status");
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b.trim());
    if !status.starts_with('2') {
        bail!("unhealthy: {url} answered {status}: {body}");
    }
    println!("healthy: {url} answered {status}");
    Ok(())
}
