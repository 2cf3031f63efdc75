//! Where the outbox lives, for every command that connects: the
//! `--database-url` option and the sessions made from it. Imports nothing
//! from the rest of the CLI but `usage`: a missing or malformed URL is a
//! usage error.

use clap::Args;

use super::usage::Usage;
use crate::config::DatabaseUrl;
use crate::db::Db;

/// Where the outbox lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string (required), e.g. postgres://user:pass@host/db?sslmode=verify-full (TLS: sslmode, sslrootcert, sslcert, sslkey as in libpq).
    // Global: accepted before or after a subcommand (`outboxd endpoint add
    // x URL --database-url ...`). A global argument cannot be required, so
    // its absence is reported by `url()`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    /// The connection string, or a usage error saying how to give one.
    pub fn url(&self) -> anyhow::Result<DatabaseUrl> {
        match &self.database_url {
            Some(url) => Ok(DatabaseUrl::new(url.clone())),
            None => Err(Usage::error(
                "no database: give --database-url postgres://... or set DATABASE_URL",
            )),
        }
    }

    /// The parsed connection settings; a malformed URL is a usage error.
    pub fn db(&self) -> anyhow::Result<Db> {
        Db::new(&self.url()?).map_err(Usage::from_error)
    }

    /// A session whose names resolve in `pg_catalog` only (see
    /// [`Db::with_pinned_search_path`]): operators often run commands as a
    /// privileged role.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(self.db()?.with_pinned_search_path().connect().await?)
    }

    /// A session with the user's own `search_path`.
    pub async fn connect_unpinned(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(self.db()?.connect().await?)
    }
}
