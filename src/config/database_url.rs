//! The database connection string: kept whole for connecting, shown
//! without its password.

use std::fmt;

/// A database connection string whose `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a libpq-style URL or key=value string.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The full string, for connecting. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match redacted(&self.0) {
            Some(described) => write!(f, "{described}"),
            None => f.write_str("<unparsable database url>"),
        }
    }
}

/// Parses a connection string and describes it without its password; the
/// TLS parameters (a mode and file paths) are kept.
fn redacted(url: &str) -> Option<String> {
    let split = super::url_params::split(url).ok()?;
    let config: tokio_postgres::Config = split.driver.parse().ok()?;
    let tls: Vec<String> = split.tls.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let mut described = format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    );
    if !tls.is_empty() {
        described = format!("{described}?{}", tls.join("&"));
    }
    Some(described)
}
