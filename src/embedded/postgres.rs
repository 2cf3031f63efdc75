//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory,
//! `pg_ctl start` on a free loopback port, trust authentication, and removal
//! when dropped. PostgreSQL refuses to run as root, so as root the server
//! runs as the `postgres` OS user (Debian's packages create it).
//!
//! A watchdog process stops the cluster and deletes its directory when the
//! owning process exits without dropping it (a test binary's static, a
//! Ctrl-C), so no server outlives its user.

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Options for [`TempPostgres::start`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Trade durability for speed (fsync, synchronous_commit and
    /// full_page_writes off): right for tests, wrong for benchmarks.
    pub unsafe_fast: bool,
    /// Extra `postgresql.conf` lines, e.g. `("wal_level", "logical")`.
    pub settings: Vec<(String, String)>,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No `initdb`/`pg_ctl` on PATH or under /usr/lib/postgresql.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under \
         /usr/lib/postgresql/*/bin; install them (Debian: apt-get install postgresql) \
         or set DATABASE_URL"
    )]
    NoBinaries,
    /// Running as root without a `postgres` user to run the server as.
    #[error(
        "running as root, PostgreSQL needs an unprivileged OS user named `postgres`; create one"
    )]
    NoPostgresUser,
    /// A command failed; its output says why.
    #[error("{command} failed: {output}")]
    Command {
        /// What ran.
        command: String,
        /// Its stderr/stdout, or the server log.
        output: String,
    },
    /// File-system trouble.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A running throwaway cluster. Dropping it stops the server and deletes
/// the data.
#[derive(Debug)]
pub struct TempPostgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
}

impl TempPostgres {
    /// Creates and starts a cluster (blocking: a few hundred ms to seconds).
    pub fn start(options: &Options) -> Result<Self, EmbeddedError> {
        let bin = find_bin_dir().ok_or(EmbeddedError::NoBinaries)?;
        let run_as = if is_root() {
            Some(lookup_user("postgres")?.ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        let root = std::env::temp_dir().join(format!(
            "outboxd-pg-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir(&root)?;
        if let Some((uid, gid)) = run_as {
            chown(&root, Some(uid), Some(gid))?;
        }
        let cluster = Self {
            root,
            bin,
            port: 0,
            run_as,
        };
        cluster.spawn_watchdog()?;
        cluster.initdb(options)?;
        cluster.start_on_free_port()
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started on a
    /// free port. It never waits for a synchronous standby of its own, so
    /// once promoted it accepts commits at once.
    pub fn standby_of(primary: &TempPostgres) -> Result<Self, EmbeddedError> {
        let root = std::env::temp_dir().join(format!(
            "outboxd-pg-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir(&root)?;
        if let Some((uid, gid)) = primary.run_as {
            chown(&root, Some(uid), Some(gid))?;
        }
        let standby = Self {
            root,
            bin: primary.bin.clone(),
            port: 0,
            run_as: primary.run_as,
        };
        standby.spawn_watchdog()?;
        let data = standby.data_dir();
        standby.run(
            standby
                .command("pg_basebackup")
                .args([
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                ])
                .arg("-p")
                .arg(primary.port.to_string())
                .arg("-D")
                .arg(&data),
        )?;
        let path = data.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&path)?;
        conf.push_str(&format!(
            "\n# standby\nunix_socket_directories = '{}'\nsynchronous_standby_names = ''\n",
            data.display()
        ));
        std::fs::write(&path, conf)?;
        standby.start_on_free_port()
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting until it is).
    pub fn promote(&self) -> Result<(), EmbeddedError> {
        let data = self.data_dir();
        self.run(
            self.command("pg_ctl")
                .args(["promote", "-w", "-t", "60", "-D"])
                .arg(&data),
        )
    }

    /// A connection URL for `database` (trust auth, user `postgres`).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Stops the server: `fast` (clean) or `immediate` (crash-like) mode.
    pub fn stop(&self, mode: &str) -> Result<(), EmbeddedError> {
        let data = self.data_dir();
        self.run(
            self.command("pg_ctl")
                .args(["stop", "-w", "-m", mode, "-D"])
                .arg(&data),
        )
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    pub fn restart(&self) -> Result<(), EmbeddedError> {
        let data = self.data_dir();
        let log = self.root.join("server.log");
        self.run(
            self.command("pg_ctl")
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(format!("-p {}", self.port)),
        )
        .map_err(|e| self.with_log(e))
    }

    fn initdb(&self, options: &Options) -> Result<(), EmbeddedError> {
        let data = self.data_dir();
        self.run(
            self.command("initdb")
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "-N",
                    "-D",
                ])
                .arg(&data),
        )?;
        let mut conf = String::from(
            "\n# outboxd throwaway cluster\nlisten_addresses = '127.0.0.1'\nmax_connections = 400\n\
             shared_buffers = 128MB\n",
        );
        conf.push_str(&format!("unix_socket_directories = '{}'\n", data.display()));
        if options.unsafe_fast {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        for (name, value) in &options.settings {
            conf.push_str(&format!("{name} = '{value}'\n"));
        }
        let path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&path)?;
        existing.push_str(&conf);
        std::fs::write(&path, existing)?;
        Ok(())
    }

    fn start_on_free_port(mut self) -> Result<Self, EmbeddedError> {
        let mut last = None;
        for _ in 0..5 {
            self.port = free_port()?;
            match self.restart() {
                Ok(()) => return Ok(self),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(&self.root).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn run(&self, command: &mut Command) -> Result<(), EmbeddedError> {
        let output = command.output()?;
        if output.status.success() {
            return Ok(());
        }
        Err(EmbeddedError::Command {
            command: format!("{:?}", command.get_program()),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            ),
        })
    }

    fn with_log(&self, error: EmbeddedError) -> EmbeddedError {
        match error {
            EmbeddedError::Command { command, output } => {
                let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                EmbeddedError::Command {
                    command,
                    output: format!(
                        "{output}\nserver log (last lines):\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                }
            }
            other => other,
        }
    }

    /// Stops the cluster and removes its directory once this process is
    /// gone, however it ends.
    fn spawn_watchdog(&self) -> Result<(), EmbeddedError> {
        let script = r#"while [ -d "/proc/$0" ]; do sleep 0.5; done
"$1/pg_ctl" stop -D "$2/data" -m immediate >/dev/null 2>&1
rm -rf "$2""#;
        let mut watchdog = Command::new("/bin/sh");
        watchdog
            .arg("-c")
            .arg(script)
            .arg(std::process::id().to_string())
            .arg(&self.bin)
            .arg(&self.root)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            watchdog.uid(uid).gid(gid);
        }
        watchdog.spawn()?;
        Ok(())
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.port != 0 {
            let _ = self.stop("immediate");
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The directory of the PostgreSQL binaries a throwaway cluster uses
/// (`initdb` on PATH, else the newest `/usr/lib/postgresql/<major>/bin`).
pub fn bin_dir() -> Option<PathBuf> {
    find_bin_dir()
}

fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    if let Some(dir) = on_path {
        // Follow symlinks (Debian links initdb into /usr/local/bin) so the
        // sibling binaries are found too.
        let real = std::fs::canonicalize(dir.join("initdb")).ok()?;
        return real.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // /proc/self is owned by the effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// (uid, gid) of `name` from /etc/passwd.
fn lookup_user(name: &str) -> io::Result<Option<(u32, u32)>> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    Ok(passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    }))
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
