//! `outboxd demo`: the options of [`crate::demo`].

use clap::Args;

/// Settings of `outboxd demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this database instead of a throwaway local cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::demo::run(args.database_url).await
}
