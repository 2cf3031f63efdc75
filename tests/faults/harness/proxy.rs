//! A TCP proxy in front of PostgreSQL that can make a connection die
//! silently: it stops forwarding in both directions but keeps both sockets
//! open, so neither side sees a FIN or RST (a NAT or firewall that dropped
//! its state, a peer that froze). The kernel still acknowledges packets, so
//! only an application-level probe or deadline can notice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::config::Host;
use tokio_util::sync::CancellationToken;

struct Link {
    /// The local port of the proxy's socket to PostgreSQL, i.e. the
    /// `client_port` that `pg_stat_activity` shows for this connection.
    upstream_port: u16,
    dead: Arc<AtomicBool>,
    /// Set when either side closed it (before it died).
    closed: Arc<AtomicBool>,
}

/// A running proxy; dropping it closes every connection.
pub struct Proxy {
    port: u16,
    links: Arc<Mutex<Vec<Link>>>,
    stop: CancellationToken,
}

impl Proxy {
    /// A proxy in front of the server of `database_url`, and the URL that
    /// goes through it.
    pub async fn in_front_of(database_url: &str) -> (Self, String) {
        let config: tokio_postgres::Config = database_url.parse().unwrap();
        let (Some(Host::Tcp(host)), Some(port)) =
            (config.get_hosts().first(), config.get_ports().first())
        else {
            panic!("the proxy needs a TCP host and port in {database_url}");
        };
        let upstream = tokio::net::lookup_host((host.as_str(), *port))
            .await
            .unwrap()
            .next()
            .unwrap();
        let proxy = Self::start(upstream).await;
        let via = database_url.replacen(
            &format!("{host}:{port}"),
            &format!("127.0.0.1:{}", proxy.port),
            1,
        );
        assert_ne!(via, database_url, "host:port not found in the URL");
        (proxy, via)
    }

    /// Forwards 127.0.0.1:<port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, links.clone(), stop.clone()));
        Self { port, links, stop }
    }

    /// Silently kills the connection PostgreSQL sees from `client_port`;
    /// says whether there was one.
    pub fn kill_silently(&self, client_port: u16) -> bool {
        let links = self.links.lock().unwrap();
        let found = links.iter().find(|l| l.upstream_port == client_port);
        if let Some(link) = found {
            link.dead.store(true, Ordering::SeqCst);
        }
        found.is_some()
    }

    /// Silently kills every open connection; new ones work. Returns how
    /// many it killed.
    pub fn kill_all_silently(&self) -> usize {
        let links = self.links.lock().unwrap();
        let open = links.iter().filter(|l| !l.closed.load(Ordering::SeqCst));
        open.map(|l| l.dead.store(true, Ordering::SeqCst)).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    links: Arc<Mutex<Vec<Link>>>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let dead = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        links.lock().unwrap().push(Link {
            upstream_port: server.local_addr().unwrap().port(),
            dead: dead.clone(),
            closed: closed.clone(),
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = pipe(client_read, server_write, &dead) => {}
                _ = pipe(server_read, client_write, &dead) => {}
            }
            closed.store(true, Ordering::SeqCst);
        });
    }
}

/// Copies until either side closes; once `dead`, swallows everything and
/// never returns (the sockets stay open).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dead: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if dead.load(Ordering::SeqCst) {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    if dead.load(Ordering::SeqCst) {
        // Hold both halves: no FIN, no RST, just silence.
        let _keep = (from, to);
        std::future::pending::<()>().await;
    }
}
