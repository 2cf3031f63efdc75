//! The built container images, as podman sees them: the images of
//! `.ci/container` (the Dockerfile's runtime stages on a base made here,
//! see .ci/Containerfile) carry the Dockerfile's configuration (user,
//! working directory, entrypoint, command, port, environment, health
//! check), and outboxd's holds its binary, the CA bundle and no shell.
//! sidecar_container.rs runs it.
//!
//! Skipped, with a message, where podman is missing or the tests do not
//! run as root.

use tokio::io::AsyncWriteExt as _;

use crate::common::podman::{self, IMAGE, Podman, RECEIVER_IMAGE};
use crate::container::{exec_form, instructions, stages};

/// A Go duration as podman prints it in nanoseconds, from a Dockerfile
/// option value such as `10s`.
fn nanoseconds(value: &str) -> u64 {
    humantime::parse_duration(value).unwrap().as_nanos() as u64
}

/// The Dockerfile's runtime stage `index` (0: receiver, 1: outboxd) as
/// (KEYWORD, arguments).
fn runtime_stage(index: usize) -> Vec<(String, String)> {
    let all = instructions("Dockerfile");
    let runtime: Vec<_> = stages(&all)
        .into_iter()
        .filter(|stage| stage[0].1.starts_with("gcr.io/distroless/"))
        .collect();
    runtime[index].to_vec()
}

fn last(stage: &[(String, String)], keyword: &str) -> String {
    stage
        .iter()
        .rev()
        .find(|(k, _)| k == keyword)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {keyword} in {stage:?}"))
}

/// The built images' configurations say what the Dockerfile's runtime
/// stages say, as podman reads them.
async fn check_image_config(podman: &Podman, image: &str, stage: &[(String, String)]) {
    let inspected = podman.inspect(image).await;
    let config = &inspected["Config"];
    assert_eq!(config["User"], last(stage, "USER"), "{image}");
    assert_eq!(config["WorkingDir"], "/home/nonroot", "{image}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(exec_form(&last(stage, "ENTRYPOINT"))),
        "{image}"
    );
    let cmd = stage
        .iter()
        .find(|(k, _)| k == "CMD")
        .map(|(_, v)| exec_form(v));
    assert_eq!(config["Cmd"], serde_json::json!(cmd), "{image}");
    let ports: Vec<String> = config["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(ports, [format!("{}/tcp", last(stage, "EXPOSE"))], "{image}");
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for (_, setting) in stage.iter().filter(|(k, _)| k == "ENV") {
        assert!(
            env.contains(&setting.as_str()),
            "{image}: {setting} not in {env:?}"
        );
    }
    let Some((_, healthcheck)) = stage.iter().find(|(k, _)| k == "HEALTHCHECK") else {
        assert!(inspected["Healthcheck"].is_null(), "{image}");
        return;
    };
    let (options, command) = healthcheck.split_once("CMD ").unwrap();
    let mut test = vec!["CMD".to_owned()];
    test.extend(exec_form(command));
    assert_eq!(inspected["Healthcheck"]["Test"], serde_json::json!(test));
    for option in options.split_whitespace() {
        let (name, value) = option.trim_start_matches("--").split_once('=').unwrap();
        let (field, expected) = match name {
            "interval" => ("Interval", nanoseconds(value)),
            "timeout" => ("Timeout", nanoseconds(value)),
            "start-period" => ("StartPeriod", nanoseconds(value)),
            "retries" => ("Retries", value.parse().unwrap()),
            other => panic!("HEALTHCHECK option {other} not checked"),
        };
        assert_eq!(inspected["Healthcheck"][field], expected, "{image}: {name}");
    }
}

/// Every path in the image's file system.
async fn files_of(podman: &Podman, image: &str) -> Vec<String> {
    let name = podman::unique_name("export");
    podman
        .ok(&["create", "--pull=never", "--name", &name, image])
        .await;
    let tar = podman.run(&["export", &name]).await;
    podman.ok(&["rm", &name]).await;
    assert!(tar.status.success(), "{}", podman::text(&tar));
    let mut list = tokio::process::Command::new("tar")
        .args(["-t", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = list.stdin.take().unwrap();
    stdin.write_all(&tar.stdout).await.unwrap();
    drop(stdin);
    let listed = list.wait_with_output().await.unwrap();
    assert!(listed.status.success());
    String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| format!("/{}", l.trim_start_matches("./").trim_end_matches('/')))
        .collect()
}

#[tokio::test]
async fn built_images_carry_the_dockerfile_configuration_and_no_shell() {
    let Some(podman) =
        podman::podman("built_images_carry_the_dockerfile_configuration_and_no_shell")
    else {
        return;
    };
    check_image_config(podman, IMAGE, &runtime_stage(1)).await;
    check_image_config(podman, RECEIVER_IMAGE, &runtime_stage(0)).await;

    let files = files_of(podman, IMAGE).await;
    for needed in [
        "/usr/local/bin/outboxd",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/passwd",
        "/home/nonroot",
        "/tmp",
    ] {
        assert!(
            files.iter().any(|f| f == needed),
            "{needed} missing: {files:?}"
        );
    }
    for absent in ["/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/curl"] {
        assert!(!files.iter().any(|f| f == absent), "{absent} in the image");
    }
}
