//! The documents a user reads first agree with the code: the version the
//! binary prints, the changelog and the license, the README's opening
//! commands, its configuration table (generated from the clap definitions:
//! `UPDATE_README=1 cargo test --test integration readme` rewrites it) and
//! its tutorial's SQL.

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

const TABLE_BEGIN: &str = "<!-- BEGIN GENERATED: outboxd run --help (UPDATE_README=1 cargo test --test integration readme) -->";
const TABLE_END: &str = "<!-- END GENERATED -->";

/// The README's configuration table, rendered from the clap definitions of
/// `outboxd run` (and the global options), grouped by help heading.
fn configuration_table() -> String {
    use clap::CommandFactory as _;
    let mut cli = outboxd::cli::Cli::command();
    cli.build();
    let run = cli.find_subcommand("run").expect("a run subcommand");
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let group = match arg.get_help_heading() {
            Some(heading) => heading.to_owned(),
            None if arg.is_global_set() => "All commands".to_owned(),
            None => "Other".to_owned(),
        };
        let env = arg
            .get_env()
            .map_or("".to_owned(), |e| format!("`{}`", e.to_string_lossy()));
        let takes_value = arg.get_action().takes_values();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if arg.is_required_set() {
            "required".to_owned()
        } else if !takes_value {
            "off".to_owned()
        } else if defaults.is_empty() {
            "".to_owned()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let mut meaning = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_owned())
            .collect();
        if takes_value && !values.is_empty() && !values.iter().all(|v| meaning.contains(v.as_str()))
        {
            let listed: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
            meaning.push_str(&format!("; one of {}", listed.join(", ")));
        }
        let row = format!(
            "| `--{long}` | {env} | {default} | {} |",
            meaning.replace('|', "\\|")
        );
        match groups.iter_mut().find(|(name, _)| *name == group) {
            Some((_, rows)) => rows.push(row),
            None => groups.push((group, vec![row])),
        }
    }
    let mut table = String::from("| flag | env | default | meaning |\n| --- | --- | --- | --- |\n");
    for (group, rows) in groups {
        table.push_str(&format!("| **{group}** | | | |\n"));
        for row in rows {
            table.push_str(&row);
            table.push('\n');
        }
    }
    table
}

#[test]
fn readme_configuration_table_matches_the_cli() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = repo_file("README.md");
    let (before, rest) = readme
        .split_once(TABLE_BEGIN)
        .expect("README.md has the BEGIN GENERATED marker of the configuration table");
    let (current, after) = rest
        .split_once(TABLE_END)
        .expect("README.md has the END GENERATED marker");
    let expected = configuration_table();
    if current.trim_start_matches('\n') == expected {
        return;
    }
    if std::env::var_os("UPDATE_README").is_some() {
        let updated = format!("{before}{TABLE_BEGIN}\n{expected}{TABLE_END}{after}");
        std::fs::write(&path, updated).expect("rewriting README.md");
        return;
    }
    panic!(
        "README.md's configuration table differs from the flags in src/cli.rs.\n\
         Regenerate it with\n\n    UPDATE_README=1 cargo test --test integration readme\n\n\
         or put this between the GENERATED markers:\n\n{expected}"
    );
}

#[test]
fn readme_opens_with_the_two_commands() {
    let readme = repo_file("README.md");
    let first_block = readme
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert!(first_block.contains("bash .ci/install-postgres && cargo run --release -- demo"));
    assert!(first_block.contains("bash .ci/install-postgres && cargo test"));
}

#[tokio::test]
async fn readme_tutorial_sql_runs_and_queues_a_delivery() {
    let db = crate::common::fresh_db().await;
    db.client
        .batch_execute(include_str!("../../examples/sql/orders.sql"))
        .await
        .unwrap();
    let readme = repo_file("README.md");
    let tutorial = readme
        .split("## Tutorial")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Tutorial section");
    let blocks: Vec<&str> = tutorial
        .split("```sql\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 3, "endpoint, transaction, status query");
    for block in &blocks[..2] {
        db.client
            .batch_execute(block)
            .await
            .unwrap_or_else(|e| panic!("README tutorial:\n{block}\n{e}"));
    }
    // The sidecar routes the committed event to its endpoints.
    crate::common::route(&db.client).await;
    let rows = db
        .client
        .query(blocks[2].trim().trim_end_matches(';'), &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one delivery of order.created to billing");
    assert_eq!(rows[0].get::<_, String>("endpoint_id"), "billing");
    assert_eq!(rows[0].get::<_, String>("status"), "pending");
}
