//! Reading `application/x-www-form-urlencoded` bodies and query strings,
//! which is all the console's forms send.

use percent_encoding::percent_decode_str;

/// The pairs of an urlencoded string (`+` is a space), decoded as UTF-8
/// (invalid bytes replaced).
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The first value of `name`, trimmed; `None` when missing or blank.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_percent() {
        let pairs = parse("event_id=order%2F1+a&csrf=x&empty=&flag");
        assert_eq!(field(&pairs, "event_id"), Some("order/1 a"));
        assert_eq!(field(&pairs, "csrf"), Some("x"));
        assert_eq!(field(&pairs, "empty"), None);
        assert_eq!(field(&pairs, "missing"), None);
    }
}
