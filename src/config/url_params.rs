//! Takes libpq's TLS parameters out of a connection string, in either of
//! its two forms (`postgres://…?sslmode=…` or `host=… sslmode=…`), and hands
//! back the rest for the driver. The driver would reject them:
//! `sslrootcert`, `sslcert` and `sslkey` are unknown to it, and of
//! `sslmode` it knows only disable, prefer and require.
//!
//! The grammar follows the driver's parser (which follows libpq), so that
//! what is left parses exactly as the whole string did before.

use percent_encoding::percent_decode_str;

/// The parameters read here; every other one goes to the driver untouched.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A connection string split in two.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// The connection string without the TLS parameters, for the driver.
    pub driver: String,
    /// The TLS parameters (decoded), in the order given; a later one
    /// overrides an earlier one with the same key, as in libpq.
    pub tls: Vec<(&'static str, String)>,
}

/// Why a connection string could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A TLS parameter's value is not valid percent-encoded UTF-8.
    #[error("the value of {0} is not valid UTF-8 once percent-decoded")]
    NotUtf8(&'static str),
    /// A quoted value in the `key=value` form never ends.
    #[error("unterminated quoted value in the connection string")]
    UnterminatedQuote,
    /// A keyword without `=` in the `key=value` form.
    #[error("expected `=` after `{0}` in the connection string")]
    MissingEquals(String),
}

/// Splits `conn` into the driver's part and the TLS parameters.
pub fn split(conn: &str) -> Result<Split, SplitError> {
    match ["postgres://", "postgresql://"]
        .iter()
        .find(|prefix| conn.starts_with(*prefix))
    {
        Some(prefix) => split_url(conn, prefix.len()),
        None => split_key_values(conn),
    }
}

fn tls_key(key: &str) -> Option<&'static str> {
    TLS_KEYS.iter().copied().find(|k| *k == key)
}

/// `postgres://user:password@hosts/db?key=value&…`: as the driver does, the
/// credentials end at the first `@` and the parameters start at the first
/// `?` after them.
fn split_url(url: &str, prefix_len: usize) -> Result<Split, SplitError> {
    let after_credentials = url[prefix_len..]
        .find('@')
        .map_or(prefix_len, |at| prefix_len + at + 1);
    let Some(query_start) = url[after_credentials..]
        .find('?')
        .map(|q| after_credentials + q)
    else {
        return Ok(Split {
            driver: url.to_owned(),
            tls: Vec::new(),
        });
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for pair in url[query_start + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match tls_key(&percent_decode_str(key).decode_utf8_lossy()) {
            Some(key) => {
                let value = percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| SplitError::NotUtf8(key))?;
                tls.push((key, value.into_owned()));
            }
            None => kept.push(pair),
        }
    }
    let mut driver = url[..query_start].to_owned();
    if !kept.is_empty() {
        driver.push('?');
        driver.push_str(&kept.join("&"));
    }
    Ok(Split { driver, tls })
}

/// `key=value key='quoted value' …`; the parameters kept are written back
/// quoted, which means the same to the driver.
fn split_key_values(conn: &str) -> Result<Split, SplitError> {
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    let mut rest = conn;
    while let Some((key, value, remaining)) = next_pair(rest)? {
        rest = remaining;
        match tls_key(key) {
            Some(key) => tls.push((key, value)),
            None => kept.push(format!("{key}='{}'", quote(&value))),
        }
    }
    Ok(Split {
        driver: kept.join(" "),
        tls,
    })
}

/// The next `key = value` of `s` and what follows it; `None` at the end.
fn next_pair(s: &str) -> Result<Option<(&str, String, &str)>, SplitError> {
    let s = s.trim_start();
    if s.is_empty() {
        return Ok(None);
    }
    let key_end = s
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(s.len());
    let (key, s) = s.split_at(key_end);
    let Some(s) = s.trim_start().strip_prefix('=') else {
        return Err(SplitError::MissingEquals(key.to_owned()));
    };
    let s = s.trim_start();
    let (value, rest) = match s.strip_prefix('\'') {
        Some(quoted) => {
            let (value, end) = unescape(quoted, |c| c == '\'');
            let rest = quoted[end..]
                .strip_prefix('\'')
                .ok_or(SplitError::UnterminatedQuote)?;
            (value, rest)
        }
        None => {
            let (value, end) = unescape(s, char::is_whitespace);
            (value, &s[end..])
        }
    };
    Ok(Some((key, value, rest)))
}

/// Reads up to the first unescaped character for which `ends` holds;
/// a backslash takes the next character literally. Returns the value and
/// the byte offset where it stopped.
fn unescape(s: &str, ends: impl Fn(char) -> bool) -> (String, usize) {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if ends(c) {
            return (value, i);
        }
        if c == '\\' {
            if let Some((_, escaped)) = chars.next() {
                value.push(escaped);
            }
        } else {
            value.push(c);
        }
    }
    (value, s.len())
}

/// Escapes a value for a single-quoted `key='value'`.
fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn urls_lose_their_tls_parameters_and_keep_the_rest() {
        let split = split(
            "postgres://app:p%3Fss@db.example:5432/shop?sslmode=verify-full&application_name=x\
             &sslrootcert=%2Fetc%2Fca%20bundle.pem",
        )
        .unwrap();
        assert_eq!(
            split.driver,
            "postgres://app:p%3Fss@db.example:5432/shop?application_name=x"
        );
        assert_eq!(
            split.tls,
            tls(&[
                ("sslmode", "verify-full"),
                ("sslrootcert", "/etc/ca bundle.pem")
            ])
        );
    }

    #[test]
    fn a_url_without_parameters_or_with_only_tls_ones_keeps_no_question_mark() {
        let plain = "postgresql://u@h/d";
        assert_eq!(split(plain).unwrap().driver, plain);
        let only = split("postgresql://u@h/d?sslmode=require").unwrap();
        assert_eq!(only.driver, plain);
        assert_eq!(only.tls, tls(&[("sslmode", "require")]));
    }

    #[test]
    fn a_question_mark_in_the_password_does_not_start_the_parameters() {
        let split = split("postgres://u:a?b@h/d?sslmode=require").unwrap();
        assert_eq!(split.driver, "postgres://u:a?b@h/d");
        assert_eq!(split.tls, tls(&[("sslmode", "require")]));
    }

    #[test]
    fn key_values_lose_their_tls_parameters_and_keep_the_rest_quoted() {
        let split = split(
            "host=db.example  sslmode = verify-ca password='it\\'s a \\\\secret' \
             sslrootcert='/etc/my ca.pem' dbname=shop",
        )
        .unwrap();
        assert_eq!(
            split.driver,
            "host='db.example' password='it\\'s a \\\\secret' dbname='shop'"
        );
        assert_eq!(
            split.tls,
            tls(&[("sslmode", "verify-ca"), ("sslrootcert", "/etc/my ca.pem")])
        );
        let config: tokio_postgres::Config = split.driver.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's a \\secret"[..]));
    }

    #[test]
    fn malformed_key_values_are_refused() {
        assert_eq!(
            split("host=h sslrootcert='/no/end"),
            Err(SplitError::UnterminatedQuote)
        );
        assert_eq!(
            split("host=h sslmode"),
            Err(SplitError::MissingEquals("sslmode".to_owned()))
        );
        assert_eq!(split("").unwrap().driver, "");
    }
}
