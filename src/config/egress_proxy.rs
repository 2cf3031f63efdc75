//! Egress settings: `--egress-proxy` and `--allow-network` values.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// An egress proxy (`--egress-proxy`): every request goes through it, for
/// static egress addresses. `Debug` hides a password in the URL.
#[derive(Clone)]
pub struct EgressProxy(Arc<(reqwest::Url, reqwest::Proxy)>);

impl EgressProxy {
    /// Parses `http://[user:password@]host:port` (or `https://`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| format!("the egress proxy is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("the egress proxy must be an http:// or https:// URL with a host".into());
        }
        let proxy = reqwest::Proxy::all(url.clone())
            .map_err(|_| "the egress proxy URL is not usable as a proxy".to_owned())?;
        Ok(Self(Arc::new((url, proxy))))
    }

    /// The URL with its password masked, for `--print-config` and logs.
    pub fn shown(&self) -> String {
        let mut shown = self.0.0.clone();
        if shown.password().is_some() {
            // Cannot fail: the URL has a host (checked in parse).
            let _ = shown.set_password(Some("redacted"));
        }
        shown.to_string()
    }

    /// The proxy setting for an HTTP client.
    pub fn to_reqwest(&self) -> reqwest::Proxy {
        self.0.1.clone()
    }
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EgressProxy({})", self.shown())
    }
}

/// Parses a `--allow-network` value: a CIDR (`10.0.0.0/8`) or one address.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (e.g. 10.0.0.0/8) or an IP address"))
}
