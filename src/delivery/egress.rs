//! Where outboxd may connect: the SSRF guard.
//!
//! Endpoint URLs are data that applications (and whoever can write to
//! `outbox.endpoints`) control, so a webhook sender is a classic server-side
//! request forgery vector: `http://169.254.169.254/...` reads cloud
//! credentials, `http://10.0.0.5:9200/` pokes an internal service. By
//! default outboxd refuses every address that is not globally routable
//! (loopback, RFC 1918, CGNAT, link-local and the metadata address,
//! unique-local IPv6, multicast, unspecified, reserved, and the IPv4 forms
//! hidden inside IPv6 addresses); `--allow-network CIDR` opens ranges on
//! purpose.
//!
//! The check runs on every attempt, after DNS resolution, and the connection
//! goes to the checked address: [`GuardedResolver`] is the HTTP client's
//! only resolver and returns only permitted addresses, so no second lookup
//! (which an attacker's DNS could answer differently) happens between check
//! and connect. IP-literal hosts never reach a resolver, so
//! [`EgressPolicy::check_literal`] checks those before the request is sent.
//!
//! With an egress proxy (`--egress-proxy`, for static egress addresses) the
//! HTTP client connects only to the proxy, which the operator chose and
//! which is not checked; the proxy resolves and connects to the target. So
//! before each proxied request outboxd checks the target itself: IP
//! literals always, names by resolving them ([`EgressPolicy::resolve`]) and
//! refusing when every address is refused. That catches misconfigured and
//! casually malicious URLs, but the proxy's own lookup may differ from
//! outboxd's (DNS rebinding), so behind a proxy the proxy must enforce the
//! same policy (e.g. Stripe's Smokescreen) and outboxd's check is defence in
//! depth. When outboxd cannot resolve a name itself (egress networks often
//! leave DNS to the proxy) the request goes to the proxy unchecked.
//!
//! This module owns the policy; it does not build clients or judge outcomes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which non-public address ranges are opened on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allowed: Vec<IpNet>,
}

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// RFC 6598 carrier-grade NAT: `100.64/10`.
    SharedCgnat,
    /// `169.254.169.254` and `fd00:ec2::254`: cloud instance metadata.
    Metadata,
    /// `169.254/16`, `fe80::/10`.
    LinkLocal,
    /// `fc00::/7` (and the deprecated site-local `fec0::/10`).
    UniqueLocal,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `240/4`, `192.0.0/24`, `198.18/15` and other special-purpose blocks.
    Reserved,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "an unspecified address",
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::SharedCgnat => "a shared (CGNAT) address",
            Self::Metadata => "the cloud metadata address",
            Self::LinkLocal => "a link-local address",
            Self::UniqueLocal => "a unique-local address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Reserved => "a reserved address",
        })
    }
}

/// A target address the policy does not allow. Its text is what the
/// delivery records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: {addr} is {class} (open it with --allow-network)")]
pub struct Refused {
    /// The address that was refused.
    pub addr: IpAddr,
    /// Why it is not public.
    pub class: Class,
}

impl EgressPolicy {
    /// Public addresses plus `allowed`.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// Whether outboxd may connect to `addr`.
    pub fn check(&self, addr: IpAddr) -> Result<(), Refused> {
        let Some(class) = classify(addr) else {
            return Ok(());
        };
        // `::ffff:10.0.0.5` is opened by `10.0.0.0/8` too.
        let canonical = addr.to_canonical();
        if self
            .allowed
            .iter()
            .any(|net| net.contains(&addr) || net.contains(&canonical))
        {
            return Ok(());
        }
        Err(Refused { addr, class })
    }

    /// Checks a URL whose host is an IP literal (`http://10.0.0.5/`,
    /// `http://[::1]/`); names are checked by [`GuardedResolver`].
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), Refused> {
        // The URL parser has already normalised every IPv4 spelling
        // (`2130706433`, `0x7f.1`) to dotted quads and brackets IPv6.
        let host = url.host_str().unwrap_or_default();
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        match literal.unwrap_or(host).parse::<IpAddr>() {
            Ok(addr) => self.check(addr),
            Err(_) => Ok(()),
        }
    }

    /// Keeps the permitted addresses of a lookup; refuses when none is.
    pub fn filter(&self, found: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, ResolveError> {
        let mut first_refusal = None;
        let mut permitted = Vec::with_capacity(found.len());
        for addr in found {
            match self.check(addr.ip()) {
                Ok(()) => permitted.push(addr),
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                }
            }
        }
        match (permitted.is_empty(), first_refusal) {
            (false, _) => Ok(permitted),
            (true, Some(refused)) => Err(ResolveError::Refused(refused)),
            (true, None) => Err(ResolveError::NoAddress),
        }
    }

    /// Resolves `host` with the system resolver and filters the answer.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let found = tokio::net::lookup_host((host, 0))
            .await
            .map_err(ResolveError::Lookup)?
            .collect();
        self.filter(found)
    }
}

/// A failed guarded lookup.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Every address the name resolved to is refused.
    #[error(transparent)]
    Refused(Refused),
    /// The lookup itself failed (worth retrying: DNS may recover).
    #[error("DNS lookup failed: {0}")]
    Lookup(#[source] std::io::Error),
    /// The name has no address.
    #[error("the host name resolved to no address")]
    NoAddress,
}

/// The HTTP client's resolver: the system's lookup, filtered by the policy.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = policy.resolve(&host).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The refusal somewhere in an error's source chain (the HTTP client wraps
/// what the resolver returned), if that is why a request failed.
pub fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        if let Some(ResolveError::Refused(refused)) = error.downcast_ref::<ResolveError>() {
            return Some(refused.clone());
        }
        current = error.source();
    }
    None
}

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

    /// The proxy setting for an HTTP client.
    pub fn to_reqwest(&self) -> reqwest::Proxy {
        self.0.1.clone()
    }
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.0.clone();
        if shown.password().is_some() {
            // Cannot fail: the URL has a host (checked in parse).
            let _ = shown.set_password(Some("<redacted>"));
        }
        write!(f, "EgressProxy({shown})")
    }
}

/// Parses a `--allow-network` value: a CIDR (`10.0.0.0/8`) or one address.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (e.g. 10.0.0.0/8) or an IP address"))
}

/// Why `addr` is not a public address, or `None` when it is.
pub fn classify(addr: IpAddr) -> Option<Class> {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Class> {
    let [a, b, c, d] = ip.octets();
    Some(match (a, b, c, d) {
        (169, 254, 169, 254) => Class::Metadata,
        (0, ..) => Class::Unspecified,
        (127, ..) => Class::Loopback,
        (10, ..) | (172, 16..=31, ..) | (192, 168, ..) => Class::Private,
        (100, 64..=127, ..) => Class::SharedCgnat,
        (169, 254, ..) => Class::LinkLocal,
        (224..=239, ..) => Class::Multicast,
        (255, 255, 255, 255) => Class::Broadcast,
        // 240/4 future use; 192.0.0/24 IETF assignments (also an old
        // metadata address); 198.18/15 benchmarking.
        (240..=255, ..) | (192, 0, 0, _) | (198, 18..=19, ..) => Class::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Class> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let segments = ip.segments();
    Some(match segments {
        _ if ip.is_unspecified() => Class::Unspecified,
        _ if ip.is_loopback() => Class::Loopback,
        // AWS's IPv6 instance metadata endpoint.
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] => Class::Metadata,
        [s, ..] if s & 0xfe00 == 0xfc00 => Class::UniqueLocal,
        [s, ..] if s & 0xffc0 == 0xfec0 => Class::UniqueLocal,
        [s, ..] if s & 0xffc0 == 0xfe80 => Class::LinkLocal,
        [s, ..] if s & 0xff00 == 0xff00 => Class::Multicast,
        // 100::/64 discard-only.
        [0x0100, 0, 0, 0, ..] => Class::Reserved,
        _ => return None,
    })
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4
/// (`2002:aabb:ccdd::`) address: each can reach that IPv4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] => Some(low()),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(low()),
        [0x0064, 0xff9b, 0, 0, 0, 0, ..] => Some(low()),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn refused(policy: &EgressPolicy, text: &str) -> Option<Class> {
        policy.check(ip(text)).err().map(|r| r.class)
    }

    #[test]
    fn default_policy_refuses_every_non_public_range() {
        let policy = EgressPolicy::default();
        for (addr, class) in [
            ("127.0.0.1", Class::Loopback),
            ("127.255.0.9", Class::Loopback),
            ("::1", Class::Loopback),
            ("10.0.0.5", Class::Private),
            ("172.16.0.1", Class::Private),
            ("172.31.255.255", Class::Private),
            ("192.168.1.1", Class::Private),
            ("100.64.0.1", Class::SharedCgnat),
            ("100.127.255.255", Class::SharedCgnat),
            ("169.254.169.254", Class::Metadata),
            ("fd00:ec2::254", Class::Metadata),
            ("169.254.10.1", Class::LinkLocal),
            ("fe80::1", Class::LinkLocal),
            ("fc00::1", Class::UniqueLocal),
            ("fd12:3456::1", Class::UniqueLocal),
            ("224.0.0.1", Class::Multicast),
            ("ff02::1", Class::Multicast),
            ("0.0.0.0", Class::Unspecified),
            ("0.1.2.3", Class::Unspecified),
            ("::", Class::Unspecified),
            ("255.255.255.255", Class::Broadcast),
            ("240.0.0.1", Class::Reserved),
            ("192.0.0.192", Class::Reserved),
            // IPv4 hidden in IPv6.
            ("::ffff:127.0.0.1", Class::Loopback),
            ("::ffff:10.0.0.5", Class::Private),
            ("::ffff:169.254.169.254", Class::Metadata),
            ("::10.0.0.5", Class::Private),
            ("64:ff9b::a9fe:a9fe", Class::Metadata),
            ("2002:c0a8:0101::1", Class::Private),
        ] {
            assert_eq!(refused(&policy, addr), Some(class), "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let policy = EgressPolicy::default();
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert_eq!(refused(&policy, addr), None, "{addr}");
        }
    }

    #[test]
    fn allow_networks_open_exactly_their_ranges() {
        let policy = EgressPolicy::new(vec![
            parse_network("127.0.0.0/8").unwrap(),
            parse_network("10.1.2.3").unwrap(),
        ]);
        assert_eq!(refused(&policy, "127.0.0.1"), None);
        assert_eq!(refused(&policy, "::ffff:127.0.0.2"), None, "mapped form");
        assert_eq!(refused(&policy, "10.1.2.3"), None);
        assert_eq!(refused(&policy, "10.1.2.4"), Some(Class::Private));
        assert_eq!(refused(&policy, "::1"), Some(Class::Loopback));
        assert_eq!(refused(&policy, "169.254.169.254"), Some(Class::Metadata));
    }

    #[test]
    fn refusals_say_what_and_how_to_open_it() {
        let error = EgressPolicy::default().check(ip("10.0.0.5")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "refused: 10.0.0.5 is a private address (open it with --allow-network)"
        );
    }

    #[test]
    fn literal_hosts_are_checked_in_every_spelling() {
        let policy = EgressPolicy::default();
        for url in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "https://10.0.0.5/",
        ] {
            let url = reqwest::Url::parse(url).unwrap();
            assert!(policy.check_literal(&url).is_err(), "{url}");
        }
        let named = reqwest::Url::parse("https://example.com/").unwrap();
        assert!(policy.check_literal(&named).is_ok());
    }

    #[test]
    fn filtering_keeps_permitted_addresses_and_refuses_when_none_is() {
        let policy = EgressPolicy::default();
        let sock = |text: &str| SocketAddr::new(ip(text), 443);
        let kept = policy
            .filter(vec![sock("10.0.0.1"), sock("93.184.216.34")])
            .unwrap();
        assert_eq!(kept, [sock("93.184.216.34")]);
        let error = policy
            .filter(vec![sock("10.0.0.1"), sock("127.0.0.1")])
            .unwrap_err();
        assert!(
            matches!(&error, ResolveError::Refused(r) if r.addr == ip("10.0.0.1")),
            "{error}"
        );
        assert!(matches!(
            policy.filter(Vec::new()),
            Err(ResolveError::NoAddress)
        ));
    }

    #[test]
    fn proxy_urls_are_checked_and_their_passwords_hidden() {
        let proxy = EgressProxy::parse("http://egress:hunter2@10.0.0.9:3128").unwrap();
        let shown = format!("{proxy:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("egress:") && shown.contains("10.0.0.9:3128"),
            "{shown}"
        );
        assert!(EgressProxy::parse("socks5://10.0.0.9:1080").is_err());
        assert!(EgressProxy::parse("10.0.0.9:3128").is_err());
    }

    #[test]
    fn network_parsing_accepts_cidrs_and_addresses() {
        assert_eq!(
            parse_network(" 10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(parse_network("::1").unwrap().to_string(), "::1/128");
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("intranet").is_err());
    }

    #[tokio::test]
    async fn resolver_refuses_names_of_loopback_addresses() {
        let error = EgressPolicy::default()
            .resolve("localhost")
            .await
            .unwrap_err();
        let refused = refusal_in(&error).expect("a refusal");
        assert_eq!(refused.class, Class::Loopback);
        let opened = EgressPolicy::new(vec![
            parse_network("127.0.0.0/8").unwrap(),
            parse_network("::1").unwrap(),
        ]);
        assert!(!opened.resolve("localhost").await.unwrap().is_empty());
    }
}
