//! A point in time as operators write it (`--since`, the console's
//! forms): a time, or a duration ago.

use std::time::{Duration, SystemTime};

/// A point in time given on the command line.
#[derive(Debug, Clone, Copy)]
pub enum Since {
    /// An absolute time.
    At(SystemTime),
    /// This long before now (database clock).
    Ago(Duration),
}

impl std::str::FromStr for Since {
    type Err = String;

    /// `2026-11-28T12:00:00Z` (RFC 3339) or a duration such as `2h`.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(ago) = humantime::parse_duration(text) {
            return Ok(Self::Ago(ago));
        }
        humantime::parse_rfc3339_weak(text)
            .map(Self::At)
            .map_err(|_| {
                format!(
                    "{text:?} is neither a time like 2026-11-28T12:00:00Z nor a duration like 2h"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_durations_and_timestamps() {
        assert!(
            matches!("2h".parse::<Since>(), Ok(Since::Ago(d)) if d == Duration::from_secs(7200))
        );
        assert!(matches!(
            "2026-11-28T12:00:00Z".parse::<Since>(),
            Ok(Since::At(_))
        ));
        assert!("noon".parse::<Since>().unwrap_err().contains("neither"));
    }
}
