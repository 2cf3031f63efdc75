//! Schema migrations: the numbered files in `sql/migrations`, embedded in the
//! binary and applied in order, each recorded in `outbox.schema_migrations`.
//! Everything runs in one transaction under an advisory lock, so running
//! `outboxd migrate` twice, or from several processes at once, is safe.

use tokio_postgres::Client;

use super::{Db, DbError, locks};

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The number the file name starts with.
    pub version: i32,
    /// The file name, for `schema_migrations` and messages.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $file,
            sql: include_str!(concat!("../../sql/migrations/", $file)),
        }
    };
}

/// Every migration, in order. A test checks that this lists every file.
/// Numbers may have gaps while branches that reserved them are in review.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_schema.sql"),
    migration!(2, "0002_message_status.sql"),
    migration!(3, "0003_operations.sql"),
    migration!(4, "0004_security.sql"),
    migration!(5, "0005_attempt_worker.sql"),
    migration!(6, "0006_ordering_and_fairness.sql"),
    migration!(7, "0007_adopt.sql"),
    migration!(8, "0008_logical_wakeup.sql"),
    migration!(9, "0009_role_grants.sql"),
    migration!(10, "0010_notify_when_waiting.sql"),
    migration!(11, "0011_cheaper_claims.sql"),
    migration!(12, "0012_hardening.sql"),
    migration!(13, "0013_tenants_and_routing.sql"),
    migration!(14, "0014_fleet_claims.sql"),
    migration!(15, "0015_recovery_tools.sql"),
    migration!(16, "0016_schema_notes.sql"),
    migration!(18, "0018_waiting_reason.sql"),
    migration!(19, "0019_routing_vs_endpoint_changes.sql"),
    migration!(20, "0020_generic_routing_plans.sql"),
];

const LOCK: &str = include_str!("../../sql/queries/migrations_lock.sql");
const BOOTSTRAP: &str = include_str!("../../sql/queries/migrations_bootstrap.sql");
const APPLIED: &str = include_str!("../../sql/queries/migrations_applied.sql");
const TABLE_EXISTS: &str = include_str!("../../sql/queries/migrations_table_exists.sql");
const RECORD: &str = include_str!("../../sql/queries/migrations_record.sql");

/// Applies every pending migration; returns the names of those it applied.
pub async fn run(client: &mut Client) -> Result<Vec<&'static str>, DbError> {
    let tx = client
        .transaction()
        .await
        .map_err(DbError::during("starting the migration transaction"))?;
    apply(tx).await
}

/// [`run`] on a connection to `db`, with `db`'s settings on the
/// transaction: all in one transaction, so this works through a
/// transaction-mode pooler as well.
pub async fn run_on(db: &Db, client: &mut Client) -> Result<Vec<&'static str>, DbError> {
    let tx = db
        .transaction(client, "starting the migration transaction")
        .await?;
    apply(tx).await
}

async fn apply(tx: tokio_postgres::Transaction<'_>) -> Result<Vec<&'static str>, DbError> {
    tx.execute(LOCK, &[&locks::MIGRATION])
        .await
        .map_err(DbError::during("taking the migration lock"))?;
    tx.batch_execute(BOOTSTRAP)
        .await
        .map_err(DbError::during("creating outbox.schema_migrations"))?;
    let applied: Vec<i32> = tx
        .query(APPLIED, &[])
        .await
        .map_err(DbError::during("reading outbox.schema_migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut newly = Vec::new();
    for migration in missing(&applied) {
        tx.batch_execute(migration.sql)
            .await
            .map_err(|cause| DbError::Migration {
                name: migration.name,
                cause,
            })?;
        tx.execute(RECORD, &[&migration.version, &migration.name])
            .await
            .map_err(DbError::during("recording a migration"))?;
        newly.push(migration.name);
    }
    tx.commit()
        .await
        .map_err(DbError::during("committing the migrations"))?;
    Ok(newly)
}

/// The newest applied migration, 0 when the schema does not exist.
pub async fn schema_version(client: &Client) -> Result<i32, DbError> {
    Ok(applied_versions(client)
        .await?
        .into_iter()
        .max()
        .unwrap_or(0))
}

/// Every applied migration's version; none when the schema does not exist.
pub async fn applied_versions(client: &Client) -> Result<Vec<i32>, DbError> {
    let during = DbError::during("reading the schema version");
    // Unnamed statements: one round trip each, and they work through a
    // transaction-mode pooler.
    let exists: bool = client
        .query_typed_one(TABLE_EXISTS, &[])
        .await
        .map_err(during)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query_typed(APPLIED, &[])
        .await
        .map_err(DbError::during("reading the schema version"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The migrations embedded in this binary that `applied` lacks. Every one,
/// not just those above the newest applied: numbers merged from parallel
/// work may fill a gap below it.
pub fn missing(applied: &[i32]) -> impl Iterator<Item = &'static Migration> + '_ {
    MIGRATIONS.iter().filter(|m| !applied.contains(&m.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_sql_migrations_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, embedded);
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "{pair:?}");
        }
        for m in MIGRATIONS {
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }
}
