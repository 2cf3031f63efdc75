//! PgBouncer in transaction mode in front of the test cluster, started on
//! first use and stopped when the test binary exits: the pooler most
//! managed platforms hand out. Like PostgreSQL it refuses to run as root,
//! so as root it runs as the `postgres` OS user. Its pool is kept small
//! (2 server connections per database) so that the sidecar's sessions
//! share server connections and any session state would leak and fail.

use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::TestDb;

pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Mutex<Child>,
}

static PGBOUNCER: OnceLock<Option<PgBouncer>> = OnceLock::new();

const BINARY: &str = "/usr/sbin/pgbouncer";

/// The test cluster's PgBouncer, or `None` (with a message saying why) when
/// PgBouncer is not installed: `.ci/install-test-tools` installs it.
pub fn pgbouncer() -> Option<&'static PgBouncer> {
    PGBOUNCER
        .get_or_init(|| {
            let binary = std::env::var("OUTBOXD_TEST_PGBOUNCER").unwrap_or_else(|_| BINARY.into());
            if !std::path::Path::new(&binary).is_file() {
                eprintln!(
                    "SKIPPED: no PgBouncer at {binary} (Debian: apt-get install pgbouncer, or bash .ci/install-test-tools)"
                );
                return None;
            }
            Some(PgBouncer::start(&binary, super::cluster_port()))
        })
        .as_ref()
}

impl PgBouncer {
    fn start(binary: &str, server_port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("outboxd-pgbouncer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ini = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = 2\n\
             max_client_conn = 1000\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let mut command = Command::new(binary);
        command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = postgres_user() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                chown(entry.unwrap().path(), Some(uid), Some(gid)).unwrap();
            }
            chown(&dir, Some(uid), Some(gid)).unwrap();
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().expect("starting pgbouncer");
        // Stop it when this process exits without dropping the static.
        let _ = Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"while [ -d "/proc/$0" ]; do sleep 0.5; done; kill "$1" 2>/dev/null; rm -rf "$2""#)
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen within 10 s: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            dir,
            child: Mutex::new(child),
        }
    }

    /// `db`'s URL through the pooler.
    pub fn url(&self, db: &TestDb) -> String {
        let name = db.url.rsplit_once('/').unwrap().1;
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// PgBouncer's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.lock().unwrap().kill();
    }
}

/// (uid, gid) of `postgres` when running as root.
fn postgres_user() -> Option<(u32, u32)> {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == "postgres")
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}
