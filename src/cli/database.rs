//! Where the outbox lives, for every command that connects: the
//! `--database-url` option and the sessions made from it. Imports nothing
//! from the rest of the CLI.

use clap::Args;

use crate::config::DatabaseUrl;
use crate::db::Db;

/// Where the outbox lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string, e.g. postgres://user:pass@host/db?sslmode=verify-full (TLS: sslmode, sslrootcert, sslcert, sslkey as in libpq).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

impl DatabaseArgs {
    /// A session whose names resolve in `pg_catalog` only (see
    /// [`Db::with_pinned_search_path`]): operators often run commands as a
    /// privileged role.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let db = Db::new(&DatabaseUrl::new(self.database_url.clone()))?.with_pinned_search_path();
        Ok(db.connect().await?)
    }

    /// A session with the user's own `search_path`.
    pub async fn connect_unpinned(&self) -> anyhow::Result<tokio_postgres::Client> {
        let db = Db::new(&DatabaseUrl::new(self.database_url.clone()))?;
        Ok(db.connect().await?)
    }
}
