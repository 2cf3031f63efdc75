//! How an endpoint URL is shown to people (CLI, console, logs): never its
//! credentials or query string, which often carry tokens.

/// An endpoint URL fit to print: `scheme://host[:port]/path`, with any
/// user name and password shown as `***@` and any query as `?***` (they
/// often carry tokens); a fragment is dropped. A URL that does not parse is
/// not shown at all.
pub fn redacted_url(url: &str) -> String {
    let Ok(url) = reqwest::Url::parse(url) else {
        return "<not a valid URL>".to_owned();
    };
    let credentials = if url.username().is_empty() && url.password().is_none() {
        ""
    } else {
        "***@"
    };
    let query = match url.query() {
        Some(query) if !query.is_empty() => "?***",
        _ => "",
    };
    let port = url
        .port()
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    format!(
        "{}://{credentials}{}{port}{}{query}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.path()
    )
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn printed_urls_keep_where_but_not_who_or_what() {
        for (stored, shown) in [
            (
                "https://hooks.example.com/in",
                "https://hooks.example.com/in",
            ),
            ("http://h.example:8080/a/b?", "http://h.example:8080/a/b"),
            ("https://h.example/?key=k1#top", "https://h.example/?***"),
            ("https://user@h.example", "https://***@h.example/"),
            ("https://:pw@h.example:443/x", "https://***@h.example/x"),
            ("http://token@h.example:99999/", "<not a valid URL>"),
        ] {
            assert_eq!(redacted_url(stored), shown, "{stored}");
        }
    }
}
