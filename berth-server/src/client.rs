//! Who the client is, by address: the peer of the connection, or, when that peer is a
//! proxy the operator trusts (`[security] trusted_proxies`), the address the proxies
//! recorded in `X-Forwarded-For`.
//!
//! Every defence that counts per client (login throttling, refusal aggregation in the
//! audit log, connection caps) uses [`client_ip`] and [`group`], so behind an ingress they
//! see the real clients rather than one shared ingress address, and a client cannot pick
//! its own address by sending the header itself.

use std::net::{IpAddr, Ipv6Addr};

pub use berth_auth::net::{BadNet, IpNet, canonical};

use http::HeaderMap;

/// The proxies whose `X-Forwarded-For` entries are believed. Empty (the default): none,
/// and the header is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, BadNet> {
        entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Entries of `X-Forwarded-For` looked at, from the right: a chain of proxies is a few
/// hops; a long header is a client padding it.
const MAX_HOPS: usize = 16;

/// The client's address. The connection's peer, unless the peer is a trusted proxy: then
/// the rightmost `X-Forwarded-For` entry that is not itself a trusted proxy (entries to
/// its left were written by the client and prove nothing). A malformed entry, or a chain
/// longer than [`MAX_HOPS`], ends the walk at the last proxy that was trusted, since
/// nothing it forwarded can be believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(v) = value.to_str() else {
            return peer;
        };
        entries.extend(v.split(','));
    }
    let mut current = peer;
    for raw in entries.iter().rev().take(MAX_HOPS) {
        let Some(ip) = parse_entry(raw) else {
            return current;
        };
        if !trusted.contains(ip) {
            return ip;
        }
        current = ip;
    }
    current
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`), as some proxies write it.
fn parse_entry(raw: &str) -> Option<IpAddr> {
    let s = raw.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside.parse::<Ipv6Addr>().ok().map(|v| canonical(v.into()));
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The key per-client limits count under: an IPv4 address as it is, an IPv6 address by
/// its /64 (see `berth_auth::address_group`, which the login throttle applies itself).
pub fn group(ip: IpAddr) -> IpAddr {
    berth_auth::address_group(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                "x-forwarded-for",
                v.parse().expect("test header value is ASCII"),
            );
        }
        h
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_send() {
        let none = TrustedProxies::default();
        let h = xff(&["198.51.100.1"]);
        assert_eq!(client_ip(ip("203.0.113.5"), &h, &none), ip("203.0.113.5"));
        let some = TrustedProxies::parse(&["10.0.0.0/8"]).expect("parse");
        assert_eq!(client_ip(ip("203.0.113.5"), &h, &some), ip("203.0.113.5"));
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).expect("parse");
        // The client forged its own first entry; the ingress appended the real address.
        let h = xff(&["1.2.3.4, 198.51.100.9"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("198.51.100.9"));
        // Two trusted hops: the second proxy's entry is skipped.
        let h = xff(&["1.2.3.4", "198.51.100.9, 10.0.0.3"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("198.51.100.9"));
        // Ports, brackets and mapped addresses.
        let h = xff(&["[2001:db8::7]:443"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("2001:db8::7"));
        let h = xff(&["198.51.100.9:5000"]);
        assert_eq!(client_ip(ip("::ffff:10.0.0.2"), &h, &t), ip("198.51.100.9"));
    }

    #[test]
    fn garbage_or_absent_headers_stop_at_the_last_trusted_hop() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).expect("parse");
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &t),
            ip("10.0.0.2")
        );
        let h = xff(&["198.51.100.9, not-an-address, 10.0.0.3"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("10.0.0.3"));
        // All trusted: the leftmost is the best that is known.
        let h = xff(&["10.9.9.9, 10.0.0.3"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("10.9.9.9"));
        // A padded chain longer than any real one stops the walk.
        let long = vec!["10.1.1.1"; 40].join(", ");
        let h = xff(&[&format!("198.51.100.9, {long}")]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &t), ip("10.1.1.1"));
    }

    #[test]
    fn ipv6_groups_by_64() {
        assert_eq!(group(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            group(ip("2001:db8:1:2:ffff::9")),
            group(ip("2001:db8:1:2::1"))
        );
        assert_ne!(group(ip("2001:db8:1:3::1")), group(ip("2001:db8:1:2::1")));
        assert_eq!(group(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(group(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
