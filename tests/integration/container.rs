//! The container image's definition, and its binary run the way the image
//! runs it: the Dockerfile's facts, the test images' definition
//! (.ci/Containerfile) in step with it, the binary's shared libraries
//! against what the distroless/cc runtime provides, and the binary alone
//! in a directory with an environment of `DATABASE_URL` and `OUTBOXD_*`
//! only, health check included. None of this needs a container engine;
//! image.rs and compose.rs run the built images under podman.
//!
//! The tests here use the debug binary that `cargo test` builds; the
//! release binary of the image links the same libraries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use outboxd::signature::Secret;

use crate::common::*;

const BINARY: &str = env!("CARGO_BIN_EXE_outboxd");

/// What gcr.io/distroless/cc-debian12 ships: glibc (libc6, with its
/// compatibility stubs) and libgcc-s1.
const DISTROLESS_CC_LIBRARIES: &[&str] = &[
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libgcc_s.so.1",
];

/// A Dockerfile's instructions as (KEYWORD, arguments), comments dropped,
/// continuation lines joined and runs of white space made one space.
pub fn instructions(file: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let joined = current.split_whitespace().collect::<Vec<_>>().join(" ");
                let (keyword, rest) = joined.split_once(' ').unwrap_or((&joined, ""));
                instructions.push((keyword.to_uppercase(), rest.to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// The stages of a Dockerfile's instructions, each from its FROM on.
pub fn stages(instructions: &[(String, String)]) -> Vec<&[(String, String)]> {
    let starts: Vec<usize> = (0..instructions.len())
        .filter(|&i| instructions[i].0 == "FROM")
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(instructions.len());
            &instructions[start..end]
        })
        .collect()
}

fn dockerfile() -> Vec<(String, String)> {
    instructions("Dockerfile")
}

/// A JSON-array (exec form) argument list.
pub fn exec_form(arguments: &str) -> Vec<String> {
    serde_json::from_str(arguments)
        .unwrap_or_else(|e| panic!("not an exec-form array: {arguments} ({e})"))
}

#[test]
fn dockerfile_builds_a_distroless_image_that_runs_outboxd_as_non_root() {
    let instructions = dockerfile();
    let stages: Vec<usize> = (0..instructions.len())
        .filter(|&i| instructions[i].0 == "FROM")
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    assert!(
        instructions[stages[0]].1.starts_with("rust:"),
        "built in the official Rust image: {:?}",
        instructions[stages[0]]
    );
    // The last stage is what `docker build .` produces.
    let last = *stages.last().unwrap();
    let runtime = &instructions[last..];
    assert!(
        runtime[0]
            .1
            .starts_with("gcr.io/distroless/cc-debian12:nonroot@sha256:"),
        "distroless/cc, pinned by digest: {:?}",
        runtime[0]
    );
    let get = |keyword: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
            .collect()
    };
    assert_eq!(get("USER"), ["65532:65532"], "numeric, for runAsNonRoot");
    assert_eq!(get("ENV"), ["OUTBOXD_ADMIN_ADDR=0.0.0.0:9090"]);
    assert_eq!(get("EXPOSE"), ["9090"]);
    let entrypoint = exec_form(get("ENTRYPOINT")[0]);
    assert_eq!(entrypoint, ["/usr/local/bin/outboxd"]);
    assert_eq!(
        exec_form(get("CMD")[0]),
        ["run"],
        "`outboxd run` by default"
    );
    let copied: Vec<&str> = get("COPY");
    assert_eq!(copied.len(), 1, "the image holds the binary alone");
    assert!(
        copied[0].ends_with(&format!(" {}", entrypoint[0])),
        "{copied:?}"
    );

    // The health check runs the binary itself (no shell or curl there),
    // with arguments that it accepts.
    let healthcheck = get("HEALTHCHECK")[0];
    let command = exec_form(
        healthcheck
            .split_once("CMD ")
            .expect("HEALTHCHECK ... CMD")
            .1,
    );
    assert_eq!(command[0], entrypoint[0]);
    let mut argv = vec!["outboxd".to_owned()];
    argv.extend(command[1..].iter().cloned());
    let parsed = <outboxd::cli::Cli as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("HEALTHCHECK {argv:?}: {e}"));
    assert!(matches!(
        parsed.command,
        outboxd::cli::Command::Healthcheck(_)
    ));

    // Everything the build stage copies exists, and the context keeps it.
    let ignored =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .expect("reading .dockerignore");
    let ignored: Vec<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        ignored.contains(&"target/"),
        "no build output in the context"
    );
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "sql",
        "tests",
        "examples",
    ] {
        assert!(
            !ignored.iter().any(|i| i.trim_end_matches('/') == needed),
            ".dockerignore must not drop {needed}: cargo build --locked needs it"
        );
    }
}

/// What gcr.io/distroless/cc-debian12:nonroot sets in its image
/// configuration, which the Dockerfile's runtime stages inherit and
/// .ci/Containerfile's write out.
const DISTROLESS_NONROOT_CONFIG: &[(&str, &str)] = &[
    (
        "ENV",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("ENV", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
    ("WORKDIR", "/home/nonroot"),
    ("USER", "65532"),
];

/// The images the tests run (.ci/Containerfile, built by .ci/container)
/// are the Dockerfile's runtime stages on a base made here: the same
/// stages, the distroless base's configuration, and from the binary's
/// COPY on the same instructions (user, environment, port, health check,
/// entrypoint, command), line for line.
#[test]
fn test_images_keep_in_step_with_the_dockerfile() {
    let dockerfile = dockerfile();
    let runtime: Vec<_> = stages(&dockerfile)
        .into_iter()
        .filter(|stage| {
            stage[0]
                .1
                .starts_with("gcr.io/distroless/cc-debian12:nonroot")
        })
        .collect();
    let test_file = instructions(".ci/Containerfile");
    let tested = stages(&test_file);
    assert_eq!(tested.len(), 2, "the receiver and outboxd");
    assert_eq!(
        runtime.len(),
        tested.len(),
        "one test stage per runtime stage"
    );
    for (ours, theirs) in tested.iter().zip(&runtime) {
        let name =
            |stage: &[(String, String)]| stage[0].1.split_once(" AS ").map(|(_, n)| n.to_owned());
        assert_eq!(name(ours), name(theirs), "{ours:?}");
        assert_eq!(ours[0].1.split(' ').next(), Some("scratch"));
        assert_eq!(ours[1], ("ADD".to_owned(), "base.tar /".to_owned()));
        let copy = ours.iter().position(|(k, _)| k == "COPY").expect("a COPY");
        let base: Vec<(&str, &str)> = ours[2..copy]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(base, DISTROLESS_NONROOT_CONFIG);
        // LABELs describe the published image (its base's digest among
        // them); the test images, on a base made here, carry none.
        let without_labels = |stage: &[(String, String)]| -> Vec<(String, String)> {
            stage
                .iter()
                .filter(|(k, _)| k != "LABEL")
                .cloned()
                .collect()
        };
        let (ours, theirs) = (without_labels(&ours[copy..]), without_labels(&theirs[1..]));
        assert_eq!(
            ours.len(),
            theirs.len(),
            "{ours:#?}\nvs the Dockerfile's\n{theirs:#?}"
        );
        for (mine, dockerfile) in ours.iter().zip(&theirs) {
            if mine.0 == "COPY" {
                // The binary comes from the build here, from a build stage there.
                let destination = |args: &str| args.rsplit(' ').next().unwrap().to_owned();
                assert_eq!(dockerfile.0, "COPY");
                assert_eq!(destination(&mine.1), destination(&dockerfile.1));
                assert_eq!(mine.1.split(' ').count(), 2, "{mine:?}");
            } else {
                assert_eq!(
                    mine, dockerfile,
                    ".ci/Containerfile is behind the Dockerfile"
                );
            }
        }
    }
}

#[test]
fn binary_needs_only_libraries_that_distroless_cc_provides() {
    let output = Command::new("ldd")
        .arg(BINARY)
        .output()
        .expect("running ldd");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ldd: {text}");
    let libraries: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.rsplit('/').next().unwrap_or(name))
        .collect();
    assert!(libraries.contains(&"libc.so.6"), "{text}");
    for library in &libraries {
        assert!(
            DISTROLESS_CC_LIBRARIES.contains(library),
            "{library} is not in distroless/cc; the image could not run this binary:\n{text}"
        );
    }
}

/// The binary copied alone into a fresh directory, removed on drop.
struct ImageDir(PathBuf);

impl ImageDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("outboxd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(BINARY, dir.join("outboxd")).unwrap();
        Self(dir)
    }

    /// `outboxd ARGS` from this directory with exactly `env`.
    fn command(&self, args: &[&str], env: &[(&str, String)]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.0.join("outboxd"));
        command
            .args(args)
            .current_dir(&self.0)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)));
        command
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.0.join("outboxd.log")).unwrap_or_default()
    }
}

impl Drop for ImageDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn healthcheck(image: &ImageDir, env: &[(&str, String)], args: &[&str]) -> (bool, String) {
    let mut argv = vec!["healthcheck"];
    argv.extend_from_slice(args);
    let output = image.command(&argv, env).output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn binary_runs_alone_with_only_the_image_environment() {
    let image = ImageDir::new("image-run");
    let version = image.command(&["--version"], &[]).output().await.unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("outboxd "));

    // An empty database: `run --migrate` creates the schema, as the
    // compose example relies on.
    let db = empty_db().await;
    let env = [
        ("DATABASE_URL", db.url.clone()),
        ("OUTBOXD_ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
        // The receiver is on loopback, which the SSRF guard refuses by default.
        ("OUTBOXD_ALLOW_NETWORKS", "127.0.0.0/8".to_owned()),
        ("OUTBOXD_POLL_INTERVAL", "200ms".to_owned()),
    ];
    let log = std::fs::File::create(image.0.join("outboxd.log")).unwrap();
    let mut sidecar = image
        .command(&["run", "--migrate"], &env)
        .stdout(Stdio::null())
        .stderr(log)
        // A failing assertion must not leave a sidecar running.
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let healthy = eventually(WAIT, || async { healthcheck(&image, &env, &[]).await.0 }).await;
    assert!(healthy, "never healthy; log:\n{}", image.log());
    // Ready once the wake-up listener has subscribed, a moment later.
    let ready = eventually(WAIT, || async {
        let (ready, text) = healthcheck(&image, &env, &["--path", "/readyz"]).await;
        ready && text.starts_with("healthy: http://127.0.0.1:")
    })
    .await;
    assert!(ready, "never ready; log:\n{}", image.log());

    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "image", &receiver.url(), None, &secret).await;
    insert_message(
        &db.client,
        "from-the-image",
        "image.tested",
        "{\"ok\":true}",
    )
    .await;
    let delivered = receiver
        .wait_until(WAIT, |all| all.iter().any(|r| r.verified == Some(Ok(()))))
        .await;
    assert!(delivered, "not delivered; log:\n{}", image.log());
    assert_eq!(receiver.received()[0].webhook_id, "from-the-image");

    // As `docker stop` does. The shell's built-in kill: no procps needed.
    let pid = sidecar.id().unwrap();
    assert!(
        Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(WAIT, sidecar.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}; log:\n{}", image.log());
    let (healthy, text) = healthcheck(&image, &env, &[]).await;
    assert!(!healthy, "{text}");
    assert!(text.contains("unhealthy: cannot ask"), "{text}");
}

#[tokio::test]
async fn healthcheck_fails_on_an_unhealthy_answer_and_asks_0_0_0_0_on_loopback() {
    let image = ImageDir::new("image-healthcheck");
    let receiver = Receiver::start(None, |_| {
        Reply::status(503).body("not ready: shutting down\n")
    })
    .await
    .unwrap();
    let url = receiver.url();
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/webhook")
        .parse()
        .unwrap();
    let everywhere = format!("0.0.0.0:{}", addr.port());
    let env = [("OUTBOXD_ADMIN_ADDR", everywhere)];
    let (healthy, text) = healthcheck(&image, &env, &["--path", "/readyz"]).await;
    assert!(!healthy);
    assert_eq!(
        text.trim(),
        format!("error: unhealthy: http://{addr}/readyz answered 503: not ready: shutting down")
    );
    assert_eq!(
        receiver.received()[0].header("host"),
        Some(addr.to_string().as_str())
    );
    let (healthy, text) = healthcheck(&image, &env, &["--path", "healthz"]).await;
    assert!(
        !healthy && text.contains("--path must start with /"),
        "{text}"
    );
}
