//! Addresses and networks, for decisions made by address: which proxies are trusted
//! (`berth-server`'s `client`), and which webhook targets Berth may call (the events
//! allowlist in `berth-registry`). Pure: parsing and arithmetic, no lookups.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One `address/prefix` network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address or a network (10.0.0.0/8, fd00::/8, 192.0.2.7)")]
pub struct BadNet(pub String);

impl FromStr for IpNet {
    type Err = BadNet;

    fn from_str(s: &str) -> Result<IpNet, BadNet> {
        let bad = || BadNet(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack socket reports) as
/// the IPv4 address they are.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Is `ip` an address a server inside a network can reach but the Internet cannot:
/// loopback, link-local (cloud metadata services live at 169.254.169.254), private
/// (10/8, 172.16/12, 192.168/16, fc00::/7), shared (100.64/10), unspecified, multicast,
/// broadcast or reserved? A webhook target set by a tenant must not be one of these
/// unless an admin allowed it: Berth would otherwise call into its own network for them.
/// IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64 `64:ff9b::/96`) are judged
/// as the IPv4 address they carry.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        // "This network" (0/8), shared address space (100.64/10), IETF protocol
        // assignments (192.0.0/24), benchmarking (198.18/15), reserved (240/4).
        || a == 0
        || (a == 100 && (b & 0xc0) == 64)
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return true;
    }
    // Link-local fe80::/10, site-local fec0::/10 (deprecated, still routed inside some
    // networks), unique local fc00::/7.
    if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 || (s[0] & 0xfe00) == 0xfc00 {
        return true;
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) carry an IPv4 address.
    if s[..6] == [0, 0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return internal_v4(embedded(s[6], s[7]));
    }
    // 6to4 (2002:a.b.c.d::/48) routes to the IPv4 address it names.
    if s[0] == 0x2002 {
        return internal_v4(embedded(s[1], s[2]));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn networks_parse_and_match() {
        let n: IpNet = "10.1.2.3/8".parse().expect("net");
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains(ip("10.200.0.1")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.0.0.9")), "v4-mapped counts as v4");
        let one: IpNet = "192.0.2.7".parse().expect("host");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: IpNet = "fd00::/8".parse().expect("v6 net");
        assert!(v6.contains(ip("fdab::1")) && !v6.contains(ip("fe80::1")));
        let all: IpNet = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::1")));
        for bad in ["10.0.0.0/33", "::/129", "nonsense", "10.0.0.0/x", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn internal_addresses() {
        for inside in [
            "127.0.0.1",
            "127.8.9.1",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(is_internal(ip(inside)), "{inside} is internal");
        }
        for outside in [
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "100.128.0.1",
            "203.0.113.7",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!is_internal(ip(outside)), "{outside} is not internal");
        }
    }
}
