//! The documents a user reads first agree with the code: the version the
//! binary prints, the changelog and the license.

use std::process::Command;

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn version_flag_prints_the_crate_version() {
    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--version")
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("outboxd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn changelog_has_a_section_for_the_current_version() {
    let changelog = repo_file("CHANGELOG.md");
    let heading = format!("## [{}]", env!("CARGO_PKG_VERSION"));
    assert!(
        changelog.lines().any(|l| l.starts_with(&heading)),
        "CHANGELOG.md needs a `{heading} - <date or unreleased>` section for the version in Cargo.toml"
    );
}

#[test]
fn license_file_matches_the_manifest() {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "Apache-2.0");
    let license = repo_file("LICENSE");
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE holds the Apache-2.0 text"
    );
}
