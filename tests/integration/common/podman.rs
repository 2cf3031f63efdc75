//! Podman, for the tests that run the container images: whether it can run
//! here, the images (built by `.ci/container` on first use, which is quick
//! when they are up to date), and containers that are removed when
//! dropped.
//!
//! Podman runs as root with `.ci/containers.conf` (cgroupfs, runc, the
//! caller's ulimits), as `.ci/container` does. Nothing is pulled: every
//! `run` says `--pull never`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The outboxd image: the Dockerfile's default target.
pub const IMAGE: &str = "localhost/outboxd:test";
/// The sample receiver: the Dockerfile's `receiver` target.
pub const RECEIVER_IMAGE: &str = "localhost/outboxd-example-receiver:test";

/// Podman, usable, with both images built.
pub struct Podman {
    conf: PathBuf,
}

static PODMAN: OnceLock<Result<Podman, String>> = OnceLock::new();

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Podman with the images built from the current sources, or `None` after
/// saying why `test` is skipped (no podman, or not root). A failing image
/// build fails the test.
pub fn podman(test: &str) -> Option<&'static Podman> {
    match PODMAN.get_or_init(prepare) {
        Ok(podman) => Some(podman),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

fn prepare() -> Result<Podman, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root; these tests run podman as root \
                    (rootless podman needs subordinate ids and a user session)"
            .to_owned());
    }
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("podman").is_file()));
    if !found {
        return Err(
            "podman is not installed; `bash .ci/install-podman` installs \
                    podman and runc from Debian packages"
                .to_owned(),
        );
    }
    let conf = repo().join(".ci/containers.conf");
    let started = std::time::Instant::now();
    let mut script = std::process::Command::new("bash");
    script
        .arg(repo().join(".ci/container"))
        .env("CONTAINERS_CONF", &conf);
    // What `cargo test` sets for this process, not for the script's cargo:
    // build scripts' fingerprints read some of them (ring's reads
    // CARGO_MANIFEST_DIR), and the release build would be redone from
    // scratch every time the tests and a shell take turns.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let from_cargo_test = [
            "CARGO_PKG_",
            "CARGO_BIN_EXE_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix));
        if from_cargo_test {
            script.env_remove(name.as_ref());
        }
    }
    let output = script.output().expect("running bash .ci/container");
    assert!(
        output.status.success(),
        "bash .ci/container failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "container tests: images built or found up to date by .ci/container in {:.1?}",
        started.elapsed()
    );
    Ok(Podman { conf })
}

/// Standard output and error of a finished command, for messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl Podman {
    /// `podman ARGS`, finished.
    pub async fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        tokio::process::Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .kill_on_drop(true)
            .output()
            .await
            .expect("running podman")
    }

    /// `podman ARGS`, which must succeed; its standard output.
    pub async fn ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "podman {:?}: {}\n{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            output.status,
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The image's (or container's) `podman inspect` document.
    pub async fn inspect(&self, what: &str) -> serde_json::Value {
        let json = self.ok(&["inspect", what]).await;
        let mut all: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        all.remove(0)
    }
}

static NEXT_NAME: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or test run) uses.
pub fn unique_name(what: &str) -> String {
    format!(
        "outboxd-test-{what}-{}-{}",
        std::process::id(),
        NEXT_NAME.fetch_add(1, Ordering::Relaxed)
    )
}

/// Hardening the Kubernetes example asks for, as podman options:
/// runAsUser/runAsGroup 65532, readOnlyRootFilesystem (and no tmpfs that
/// Kubernetes would not mount), capabilities drop ALL,
/// allowPrivilegeEscalation false, the RuntimeDefault seccomp profile
/// (podman's default) and its memory limit. Host network: the throwaway
/// cluster and the receivers listen on 127.0.0.1.
pub const HARDENED: &[&str] = &[
    "--user=65532:65532",
    "--read-only",
    "--read-only-tmpfs=false",
    "--cap-drop=all",
    "--security-opt=no-new-privileges",
    "--memory=128m",
    "--network=host",
];

/// A container, removed (killed first if need be) when dropped.
pub struct Container {
    pub name: String,
    podman: &'static Podman,
}

impl Container {
    /// `podman run --detach` of `image` with `options` (e.g. `-e K=V`) and
    /// `args` after the image; also killed by conmon after 10 minutes
    /// should the test process die without removing it.
    pub async fn start(
        podman: &'static Podman,
        what: &str,
        image: &str,
        options: &[String],
        args: &[&str],
    ) -> Self {
        let name = unique_name(what);
        let mut argv: Vec<String> = [
            "run",
            "--detach",
            "--pull=never",
            "--timeout=600",
            "--name",
            &name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(options.iter().cloned());
        argv.push(image.to_owned());
        argv.extend(args.iter().map(|s| s.to_string()));
        podman.ok(&argv).await;
        Self { name, podman }
    }

    /// Its `podman inspect` document.
    pub async fn inspect(&self) -> serde_json::Value {
        self.podman.inspect(&self.name).await
    }

    /// Everything it wrote to stdout and stderr so far.
    pub async fn logs(&self) -> String {
        text(&self.podman.run(&["logs", &self.name]).await)
    }

    /// `podman healthcheck run`: whether the image's health check passed.
    pub async fn healthy(&self) -> bool {
        let output = self.podman.run(&["healthcheck", "run", &self.name]).await;
        output.status.success()
    }

    /// Waits (at most `timeout`) until it has exited; its exit code.
    pub async fn wait(&self, timeout: Duration) -> i64 {
        let code = tokio::time::timeout(timeout, self.podman.ok(&["wait", &self.name]))
            .await
            .unwrap_or_else(|_| panic!("{} still runs after {timeout:?}", self.name));
        code.trim().parse().expect("an exit code")
    }

    /// The host pid of its main process.
    pub async fn pid(&self) -> u32 {
        self.inspect().await["State"]["Pid"]
            .as_u64()
            .expect("a running container") as u32
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rm", "--force", "--time=0", &self.name])
            .env("CONTAINERS_CONF", &self.podman.conf)
            .output();
    }
}
