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

    /// `2026-11-28T12:00:00Z`, `2026-11-28T12:00:00+01:00` (RFC 3339; a
    /// time without an offset is UTC) or a duration such as `2h`.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(ago) = humantime::parse_duration(text) {
            return Ok(Self::Ago(ago));
        }
        parse_time(text.trim()).map(Self::At).ok_or_else(|| {
            format!(
                "{text:?} is neither a time like 2026-11-28T12:00:00Z or \
                 2026-11-28T12:00:00+01:00 nor a duration like 2h"
            )
        })
    }
}

/// An RFC 3339 time with `Z`, a `±HH:MM` offset or none (UTC).
fn parse_time(text: &str) -> Option<SystemTime> {
    let Some((local, offset)) = split_offset(text) else {
        // `Z`, or no offset at all: humantime reads both as UTC.
        return humantime::parse_rfc3339_weak(text).ok();
    };
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    // 12:00+01:00 is 11:00 UTC: subtract an eastern offset, add a western.
    if offset.is_negative() {
        local.checked_add(Duration::from_secs(offset.unsigned_abs()))
    } else {
        local.checked_sub(Duration::from_secs(offset.unsigned_abs()))
    }
}

/// Splits `...T12:00:00+01:00` into the local time and the offset in
/// seconds east of UTC; `None` when the text ends in no numeric offset.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    let at = text.len().checked_sub(6)?;
    let (local, offset) = (text.get(..at)?, text.get(at..)?);
    // The date's own dashes must not pass for an offset: a time comes first.
    if !local.contains(':') {
        return None;
    }
    let bytes = offset.as_bytes();
    let sign = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if bytes[3] != b':' {
        return None;
    }
    let hours: i64 = offset[1..3].parse().ok()?;
    let minutes: i64 = offset[4..6].parse().ok()?;
    if hours > 23 || minutes > 59 || !offset[1..].bytes().all(|b| b == b':' || b.is_ascii_digit()) {
        return None;
    }
    Some((local, sign * (hours * 3600 + minutes * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        match text.parse::<Since>() {
            Ok(Since::At(at)) => at,
            other => panic!("{text}: {other:?}"),
        }
    }

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

    #[test]
    fn offsets_are_applied_and_a_bare_time_is_utc() {
        let utc = at("2026-11-28T11:00:00Z");
        assert_eq!(at("2026-11-28T12:00:00+01:00"), utc);
        assert_eq!(at("2026-11-28T06:30:00-04:30"), utc);
        assert_eq!(at("2026-11-28T11:00:00+00:00"), utc);
        assert_eq!(at("2026-11-28 11:00:00"), utc);
        assert_eq!(at("2026-11-28T11:00:00.000Z"), utc);
        assert_eq!(
            at("2026-11-28T12:00:00.5+01:00"),
            utc + Duration::from_millis(500)
        );
        for bad in [
            "2026-11-28T12:00:00+1:00",
            "2026-11-28T12:00:00+24:00",
            "2026-11-28T12:00:00+01:60",
            "2026-11-28T12:00:00+0100",
        ] {
            assert!(bad.parse::<Since>().is_err(), "{bad}");
        }
    }
}
