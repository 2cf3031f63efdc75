//! `sql/schema.sql` is the schema as the migrations leave it, and every
//! advisory lock in it is one of `src/db/locks.rs`.

use std::process::Command;

use outboxd::db::locks;
use outboxd::embedded::postgres;

use crate::common::*;

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/schema.sql");
/// Set to rewrite `sql/schema.sql` from a freshly migrated database.
const UPDATE: &str = "OUTBOXD_UPDATE_SCHEMA";

/// What `pg_dump` prints of the outbox schema, without the lines that vary
/// from run to run (versions, the random `\restrict` key).
fn dump(url: &str) -> Option<(u32, String)> {
    let bin = postgres::bin_dir()?;
    // The server packages .ci/other-postgres unpacks have no pg_dump.
    if !bin.join("pg_dump").is_file() {
        return None;
    }
    let output = Command::new(bin.join("pg_dump"))
        .args([
            "--schema-only",
            "--no-owner",
            "--schema=outbox",
            "--dbname",
            url,
        ])
        .output()
        .expect("running pg_dump");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let version = Command::new(bin.join("pg_dump"))
        .arg("--version")
        .output()
        .expect("pg_dump --version");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let major = version
        .split_whitespace()
        .find_map(|word| word.split('.').next()?.parse().ok())
        .expect("a version number");
    let text = String::from_utf8(output.stdout).expect("UTF-8 dump");
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            !line.starts_with("-- Dumped from")
                && !line.starts_with("-- Dumped by")
                && !line.starts_with("\\restrict")
                && !line.starts_with("\\unrestrict")
        })
        .collect();
    Some((major, kept.join("\n").trim().to_owned() + "\n"))
}

fn header(major: u32) -> String {
    format!(
        "-- The outbox schema as sql/migrations leave it, dumped by pg_dump {major}\n\
         -- (--schema-only --no-owner --schema=outbox). Generated: do not edit; change a\n\
         -- migration, then run OUTBOXD_UPDATE_SCHEMA=1 cargo test --test integration schema_sql.\n\
         -- The explanations are the COMMENT ON statements and the comments inside bodies.\n"
    )
}

#[tokio::test]
async fn schema_sql_is_what_the_migrations_leave() {
    let db = fresh_db().await;
    let Some((major, dumped)) = dump(&db.url) else {
        eprintln!(
            "SKIPPED: pg_dump not found (install the PostgreSQL server, .ci/install-postgres)"
        );
        return;
    };
    let generated = header(major) + &dumped;
    if std::env::var_os(UPDATE).is_some() {
        std::fs::write(SCHEMA, &generated).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(SCHEMA).expect("sql/schema.sql");
    if !stored.starts_with(&header(major)) {
        eprintln!(
            "SKIPPED: sql/schema.sql was dumped by another pg_dump major version than {major} \
             (its output differs between versions)"
        );
        return;
    }
    if stored != generated {
        let first = stored
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(stored.lines().count().min(generated.lines().count()));
        panic!(
            "sql/schema.sql is stale from line {}: run {UPDATE}=1 cargo test --test integration \
             schema_sql and commit it\nstored:    {:?}\ngenerated: {:?}",
            first + 1,
            stored.lines().nth(first),
            generated.lines().nth(first)
        );
    }
}

#[tokio::test]
async fn every_advisory_lock_in_the_schema_is_in_the_list_of_lock_spaces() {
    let db = fresh_db().await;
    let rows = db
        .client
        .query(
            "SELECT 'outbox.' || p.proname, p.prosrc
             FROM pg_proc p
             WHERE p.pronamespace = 'outbox'::regnamespace AND p.prosrc LIKE '%advisory%'",
            &[],
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for row in rows {
        let (function, source): (String, String) = (row.get(0), row.get(1));
        for call in source.split("advisory_").skip(1) {
            // e.g. `xact_lock(1868724225, outbox.ordering_lock_key(...))`
            let Some(args) = call.split_once('(').map(|(_, args)| args) else {
                continue;
            };
            let first = args.split([',', ')']).next().unwrap().trim();
            let space: i32 = first.parse().unwrap_or_else(|_| {
                panic!(
                    "{function}: an advisory lock whose first int is not a listed space: {call:.60}"
                )
            });
            let listed = locks::SPACES
                .iter()
                .find(|s| s.id == space)
                .unwrap_or_else(|| panic!("{function}: lock space {space:#x} is not in db::locks"));
            assert!(
                listed.taken_by.contains(&function.as_str()),
                "{function} takes locks of {space:#x} ({}), which db::locks says only {:?} take",
                listed.guards,
                listed.taken_by
            );
            seen.push(space);
        }
    }
    for space in locks::SPACES
        .iter()
        .filter(|s| s.taken_by[0].starts_with("outbox."))
    {
        assert!(
            seen.contains(&space.id),
            "db::locks lists {:#x} for {:?}, but no schema function takes it",
            space.id,
            space.taken_by
        );
    }
    let ids: Vec<i32> = locks::SPACES.iter().map(|s| s.id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "two spaces share an id");
}
