//! Where outboxd may connect: the SSRF guard.
//!
//! Endpoint URLs are data that applications (and whoever can write to
//! `outbox.endpoints`) control, so a webhook sender is a classic server-side
//! request forgery vector: `http://169.254.169.254/...` reads cloud
//! credentials, `http://10.0.0.5:9200/` pokes an internal service. By
//! default outboxd refuses every address that is not globally routable
//! (loopback, RFC 1918, CGNAT, link-local and the metadata address,
//! unique-local IPv6, multicast, unspecified, broadcast, reserved and
//! documentation ranges (TEST-NETs, `2001:db8::/32`), the 6to4 relay
//! anycast `192.88.99/24`, Teredo `2001::/32` and local-use NAT64
//! `64:ff9b:1::/48`), and judges the IPv4 address hidden in IPv4-mapped,
//! IPv4-translated (SIIT), IPv4-compatible, NAT64 and 6to4 addresses as
//! that IPv4 address; `--allow-network CIDR` opens ranges on purpose.
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
    /// `240/4`, `192.0.0/24`, `198.18/15`, the TEST-NETs (`192.0.2/24`,
    /// `198.51.100/24`, `203.0.113/24`), `192.88.99/24` (6to4 relay
    /// anycast), `100::/64`, `64:ff9b:1::/48` (local-use NAT64),
    /// `2001::/32` (Teredo), `2001:db8::/32` (documentation).
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
        // metadata address); 198.18/15 benchmarking; the documentation
        // TEST-NETs; 192.88.99/24 6to4 relay anycast (deprecated, and a
        // relay would forward into IPv6 on our behalf).
        (240..=255, ..)
        | (192, 0, 0 | 2, _)
        | (198, 18..=19, ..)
        | (198, 51, 100, _)
        | (203, 0, 113, _)
        | (192, 88, 99, _) => Class::Reserved,
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
        // 100::/64 discard-only; 64:ff9b:1::/48 local-use NAT64 (RFC
        // 8215: the IPv4 address may sit anywhere, and the translator is
        // inside some network); 2001::/32 Teredo (a relay tunnels to an
        // IPv4 address); 2001:db8::/32 documentation.
        [0x0100, 0, 0, 0, ..]
        | [0x0064, 0xff9b, 0x0001, ..]
        | [0x2001, 0x0000, ..]
        | [0x2001, 0x0db8, ..] => Class::Reserved,
        _ => return None,
    })
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-translated (SIIT, `::ffff:0:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`)
/// address: each can reach that IPv4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0xffff, 0, ..] => Some(low()),
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
mod tests;
