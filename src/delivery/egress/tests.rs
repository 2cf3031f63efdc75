//! The egress policy: every refused range, allow-lists, literals, lookups.

use super::*;
use crate::config::{EgressProxy, parse_network};

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
fn translated_tunnelled_and_documentation_ranges_are_refused() {
    let policy = EgressPolicy::default();
    for (addr, class) in [
        // SIIT IPv4-translated (::ffff:0:0:0/96): the embedded IPv4 decides.
        ("::ffff:0:127.0.0.1", Class::Loopback),
        ("::ffff:0:10.0.0.5", Class::Private),
        ("::ffff:0:169.254.169.254", Class::Metadata),
        // RFC 8215 local-use NAT64, wherever the IPv4 sits in it.
        ("64:ff9b:1::a9fe:a9fe", Class::Reserved),
        ("64:ff9b:1:0a00:0005::", Class::Reserved),
        ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Class::Reserved),
        // Teredo.
        ("2001::1", Class::Reserved),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Class::Reserved),
        // Documentation and TEST-NETs.
        ("2001:db8::1", Class::Reserved),
        ("2001:db8:ffff::1", Class::Reserved),
        ("192.0.2.1", Class::Reserved),
        ("198.51.100.7", Class::Reserved),
        ("203.0.113.255", Class::Reserved),
        // 6to4 relay anycast.
        ("192.88.99.1", Class::Reserved),
    ] {
        assert_eq!(refused(&policy, addr), Some(class), "{addr}");
    }
    for addr in [
        "::ffff:0:8.8.8.8",
        "64:ff9b:2::1",
        "2001:1::1",
        "2001:db9::1",
        "192.0.3.1",
        "198.51.101.1",
        "203.0.114.1",
        "192.88.98.1",
    ] {
        assert_eq!(refused(&policy, addr), None, "{addr} is public");
    }
}

#[test]
fn allow_networks_open_the_newly_refused_ranges_too() {
    let policy = EgressPolicy::new(
        [
            "::ffff:0:0:0/96",
            "64:ff9b:1::/48",
            "2001::/32",
            "2001:db8::/32",
            "192.0.2.0/24",
            "192.88.99.0/24",
        ]
        .iter()
        .map(|net| parse_network(net).unwrap())
        .collect(),
    );
    for addr in [
        "::ffff:0:10.0.0.5",
        "64:ff9b:1::a9fe:a9fe",
        "2001::1",
        "2001:db8::1",
        "192.0.2.1",
        "192.88.99.1",
    ] {
        assert_eq!(refused(&policy, addr), None, "{addr}");
    }
    assert_eq!(refused(&policy, "198.51.100.7"), Some(Class::Reserved));
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
