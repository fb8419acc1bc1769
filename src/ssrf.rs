//! The SSRF guard: targets (webhook URLs, FTP hosts) that resolve to loopback, private,
//! link-local, metadata or cluster-internal addresses are refused unless the operator was
//! started with `--allow-targets` covering them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "{host} resolves to {addr}, a {class} address; the operator refuses it unless --allow-targets covers it"
    )]
    NotAllowed {
        host: String,
        addr: IpAddr,
        class: &'static str,
    },
    #[error(
        "{host} is a cluster-internal name; the operator refuses it unless --allow-targets covers its addresses"
    )]
    InternalName { host: String },
    #[error("cannot resolve {host}: {message}")]
    Unresolvable { host: String, message: String },
}

impl TargetError {
    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            TargetError::NotAllowed { .. } | TargetError::InternalName { .. } => "TargetNotAllowed",
            TargetError::Unresolvable { .. } => "TargetUnresolvable",
        }
    }
}

/// Parses `--allow-targets`: CIDRs or single addresses, comma separated.
pub fn parse_allow_list(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("--allow-targets: {p:?} is not a CIDR or IP address"))
        })
        .collect()
}

#[derive(Clone, Debug, Default)]
pub struct TargetGuard {
    allow: Vec<IpNet>,
}

impl TargetGuard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        TargetGuard { allow }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|n| n.contains(&ip))
    }

    /// The class of `ip` if the guard refuses it; `None` if it may be connected to.
    pub fn refused_class(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allowed(ip) {
            None
        } else {
            blocked_class(ip)
        }
    }

    /// Checks one address (also used at connect time against DNS rebinding).
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), TargetError> {
        match self.refused_class(ip) {
            Some(class) => Err(TargetError::NotAllowed {
                host: host.to_string(),
                addr: ip,
                class,
            }),
            None => Ok(()),
        }
    }

    /// Resolves `host` and checks every address it resolves to.
    pub async fn check_host(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, TargetError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = if let Ok(ip) = bare.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else {
            let lookup = tokio::net::lookup_host((bare, port));
            match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    return Err(TargetError::Unresolvable {
                        host: host.into(),
                        message: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(TargetError::Unresolvable {
                        host: host.into(),
                        message: format!("DNS lookup timed out after {timeout:?}"),
                    });
                }
            }
        };
        if addrs.is_empty() {
            return Err(TargetError::Unresolvable {
                host: host.into(),
                message: "no addresses".into(),
            });
        }
        if is_internal_name(bare) && !addrs.iter().all(|a| self.allowed(a.ip())) {
            return Err(TargetError::InternalName { host: host.into() });
        }
        for a in &addrs {
            self.check_ip(host, a.ip())?;
        }
        Ok(addrs)
    }
}

fn is_internal_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h.ends_with(".svc")
        || h.ends_with(".cluster.local")
        || h.ends_with(".internal")
        || !h.contains('.')
}

/// IPv4 blocks refused unless `--allow-targets` covers them: every row of the IANA IPv4
/// Special-Purpose Address Registry (followed as last updated 2020-09-04), plus multicast
/// from the multicast registry. Most specific first: the first match names the class.
/// The registry marks a few rows globally reachable (192.0.0.9/32 PCP and 192.0.0.10/32 TURN
/// anycast, AS112, AMT); they are refused too: the anycast ones answer from the local network's
/// own gateway, and none of them hosts a webhook receiver or an FTP server.
const V4_BLOCKED: &[(Ipv4Net, &str)] = &[
    (v4([169, 254, 169, 254], 32), "cloud metadata"),
    (v4([100, 100, 100, 200], 32), "cloud metadata"),
    (v4([0, 0, 0, 0], 8), "\"this network\""),
    (v4([10, 0, 0, 0], 8), "private"),
    (v4([100, 64, 0, 0], 10), "carrier-grade NAT"),
    (v4([127, 0, 0, 0], 8), "loopback"),
    (v4([169, 254, 0, 0], 16), "link-local"),
    (v4([172, 16, 0, 0], 12), "private"),
    // 192.0.0.0/29 DS-Lite, .8 dummy, .9 PCP, .10 TURN, .170/.171 NAT64 discovery, ...
    (v4([192, 0, 0, 0], 24), "IETF protocol assignment"),
    (v4([192, 0, 2, 0], 24), "documentation"),
    (v4([192, 31, 196, 0], 24), "AS112 DNS"),
    (v4([192, 52, 193, 0], 24), "AMT relay"),
    // Includes 192.88.99.2/32, the 6a44 relay anycast address.
    (v4([192, 88, 99, 0], 24), "6to4 relay anycast"),
    (v4([192, 168, 0, 0], 16), "private"),
    (v4([192, 175, 48, 0], 24), "AS112 DNS"),
    (v4([198, 18, 0, 0], 15), "benchmarking"),
    (v4([198, 51, 100, 0], 24), "documentation"),
    (v4([203, 0, 113, 0], 24), "documentation"),
    (v4([224, 0, 0, 0], 4), "multicast"),
    (v4([255, 255, 255, 255], 32), "broadcast"),
    (v4([240, 0, 0, 0], 4), "reserved"),
];

/// IPv6 blocks refused unless `--allow-targets` covers them: every row of the IANA IPv6
/// Special-Purpose Address Registry (followed as of 2025, with the 3fff::/20, 5f00::/16,
/// 2001:1::3/128 and 100:0:0:1::/64 rows), and the deprecated site-local and IPv4-compatible
/// blocks. IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses are judged by the
/// IPv4 address they carry (see [`v6_class`]). As for IPv4, the globally reachable rows inside
/// 2001::/23 (anycast services, AMT, AS112, ORCHIDv2, drone ids) and 2620:4f:8000::/48 are
/// refused: nothing we deliver to lives there.
const V6_BLOCKED: &[(Ipv6Net, &str)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (
        v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "IPv4-compatible (deprecated)",
    ),
    (v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96), "IPv4-translated"),
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "local-use NAT64"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64), "dummy"),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "Teredo"),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignment",
    ),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48), "AS112 DNS"),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (
        v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),
        "SRv6 segment identifier",
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique-local (private)",
    ),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local (deprecated)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const fn v4(o: [u8; 4], len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(o[0], o[1], o[2], o[3]), len)
}

const fn v6(s: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        len,
    )
}

/// NAT64 well-known prefix (RFC 6052): the IPv4 address sits in the last 32 bits.
const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
/// 6to4 (RFC 3056): the IPv4 address sits in bits 16..48.
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
/// Global unicast (IANA IPv6 Address Space registry); the rest is unassigned or special.
const GLOBAL_UNICAST: Ipv6Net = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// The class of a non-public address, or `None` for a public one.
fn blocked_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    V4_BLOCKED
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, class)| *class)
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that carry an IPv4 address reach that address (through the kernel, a NAT64
    // gateway or a 6to4 relay), so they are as public as it is.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    let s = ip.segments();
    if NAT64.contains(&ip) {
        let v4 = Ipv4Addr::from(u128::from(ip) as u32);
        return v4_class(v4).map(|_| "NAT64 address of a non-public IPv4");
    }
    if SIX_TO_FOUR.contains(&ip) {
        let v4 = Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2]));
        return v4_class(v4).map(|_| "6to4 address of a non-public IPv4");
    }
    if let Some((_, class)) = V6_BLOCKED.iter().find(|(net, _)| net.contains(&ip)) {
        return Some(class);
    }
    if !GLOBAL_UNICAST.contains(&ip) {
        return Some("reserved");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_internal_addresses_and_allows_public_ones() {
        let g = TargetGuard::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(g.check_ip("h", ip).is_err(), "{bad} should be refused");
        }
        for good in ["8.8.8.8", "93.184.216.34", "2606:4700::1111"] {
            assert!(g.check_ip("h", good.parse().unwrap()).is_ok(), "{good}");
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum V {
        Refuse,
        Allow,
        /// Judged by the IPv4 address inside; see `embedded_ipv4_is_judged_by_itself`.
        Embedded,
    }
    use V::*;

    /// One row per entry of the IANA registries (IPv4 as updated 2020-09-04, IPv6 as of 2025)
    /// plus the non-registry blocks we refuse: prefix, registry name, the registry's "Globally
    /// Reachable" (None for N/A), our verdict inside, and our verdict for the addresses just
    /// below and just above the block (None when there is none).
    type Row = (
        &'static str,
        &'static str,
        Option<bool>,
        V,
        Option<V>,
        Option<V>,
    );
    #[rustfmt::skip]
    const ROWS: &[Row] = &[
        // IPv4 Special-Purpose Address Registry
        ("0.0.0.0/8", "This network", Some(false), Refuse, None, Some(Allow)),
        ("0.0.0.0/32", "This host on this network", Some(false), Refuse, None, Some(Refuse)),
        ("10.0.0.0/8", "Private-Use", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("100.64.0.0/10", "Shared Address Space", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("127.0.0.0/8", "Loopback", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("169.254.0.0/16", "Link Local", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("172.16.0.0/12", "Private-Use", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("192.0.0.0/24", "IETF Protocol Assignments", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("192.0.0.0/29", "IPv4 Service Continuity Prefix", Some(false), Refuse, Some(Allow), Some(Refuse)),
        ("192.0.0.8/32", "IPv4 dummy address", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("192.0.0.9/32", "Port Control Protocol Anycast", Some(true), Refuse, Some(Refuse), Some(Refuse)),
        ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", Some(true), Refuse, Some(Refuse), Some(Refuse)),
        ("192.0.0.170/32", "NAT64/DNS64 Discovery", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("192.0.0.171/32", "NAT64/DNS64 Discovery", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("192.0.2.0/24", "Documentation (TEST-NET-1)", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("192.31.196.0/24", "AS112-v4", Some(true), Refuse, Some(Allow), Some(Allow)),
        ("192.52.193.0/24", "AMT", Some(true), Refuse, Some(Allow), Some(Allow)),
        ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", None, Refuse, Some(Allow), Some(Allow)),
        ("192.88.99.2/32", "6a44-relay anycast address", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("192.168.0.0/16", "Private-Use", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("192.175.48.0/24", "Direct Delegation AS112 Service", Some(true), Refuse, Some(Allow), Some(Allow)),
        ("198.18.0.0/15", "Benchmarking", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("198.51.100.0/24", "Documentation (TEST-NET-2)", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("203.0.113.0/24", "Documentation (TEST-NET-3)", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("240.0.0.0/4", "Reserved", Some(false), Refuse, Some(Refuse), None),
        ("255.255.255.255/32", "Limited Broadcast", Some(false), Refuse, Some(Refuse), None),
        // Not in the special-purpose registry, refused all the same.
        ("224.0.0.0/4", "Multicast", Some(false), Refuse, Some(Allow), Some(Refuse)),
        // IPv6 Special-Purpose Address Registry
        ("::1/128", "Loopback Address", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("::/128", "Unspecified Address", Some(false), Refuse, None, Some(Refuse)),
        ("::ffff:0:0/96", "IPv4-mapped Address", Some(false), Embedded, Some(Refuse), Some(Refuse)),
        ("64:ff9b::/96", "IPv4-IPv6 Translat.", Some(true), Embedded, Some(Refuse), Some(Refuse)),
        ("64:ff9b:1::/48", "IPv4-IPv6 Translat. (local use)", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("100::/64", "Discard-Only Address Block", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("100:0:0:1::/64", "Dummy IPv6 Prefix", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("2001::/23", "IETF Protocol Assignments", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("2001::/32", "TEREDO", None, Refuse, Some(Allow), Some(Refuse)),
        ("2001:1::1/128", "Port Control Protocol Anycast", Some(true), Refuse, Some(Refuse), Some(Refuse)),
        ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", Some(true), Refuse, Some(Refuse), Some(Refuse)),
        ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", Some(true), Refuse, Some(Refuse), Some(Refuse)),
        ("2001:2::/48", "Benchmarking", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("2001:3::/32", "AMT", Some(true), Refuse, Some(Refuse), Some(Refuse)),
        ("2001:4:112::/48", "AS112-v6", Some(true), Refuse, Some(Refuse), Some(Refuse)),
        ("2001:10::/28", "Deprecated (previously ORCHID)", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("2001:20::/28", "ORCHIDv2", Some(true), Refuse, Some(Refuse), Some(Refuse)),
        ("2001:30::/28", "Drone Remote ID Protocol Entity Tags", Some(true), Refuse, Some(Refuse), Some(Refuse)),
        ("2001:db8::/32", "Documentation", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("2002::/16", "6to4", None, Embedded, Some(Allow), Some(Allow)),
        ("2620:4f:8000::/48", "Direct Delegation AS112 Service", Some(true), Refuse, Some(Allow), Some(Allow)),
        ("3fff::/20", "Documentation", Some(false), Refuse, Some(Allow), Some(Allow)),
        ("5f00::/16", "Segment Routing (SRv6) SIDs", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("fc00::/7", "Unique-Local", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        ("fe80::/10", "Link-Local Unicast", Some(false), Refuse, Some(Refuse), Some(Refuse)),
        // Not in the special-purpose registry, refused all the same.
        ("::/96", "IPv4-compatible (deprecated, RFC 4291)", None, Refuse, None, Some(Refuse)),
        ("::ffff:0:0:0/96", "IPv4-translated (RFC 2765)", None, Refuse, Some(Refuse), Some(Refuse)),
        ("fec0::/10", "Site-local (deprecated, RFC 3879)", None, Refuse, Some(Refuse), Some(Refuse)),
        ("ff00::/8", "Multicast", None, Refuse, Some(Refuse), None),
    ];

    fn verdict(ip: IpAddr) -> V {
        match TargetGuard::default().check_ip("h", ip) {
            Ok(()) => Allow,
            Err(_) => Refuse,
        }
    }

    /// First, middle and last address of a block, and its neighbours below and above.
    fn probes(net: IpNet) -> (Vec<IpAddr>, Option<IpAddr>, Option<IpAddr>) {
        match net {
            IpNet::V4(n) => {
                let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                let inside = [lo, lo + (hi - lo) / 2, hi].map(|a| IpAddr::from(Ipv4Addr::from(a)));
                let below = lo.checked_sub(1).map(|a| IpAddr::from(Ipv4Addr::from(a)));
                let above = hi.checked_add(1).map(|a| IpAddr::from(Ipv4Addr::from(a)));
                (inside.to_vec(), below, above)
            }
            IpNet::V6(n) => {
                let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                let inside = [lo, lo + (hi - lo) / 2, hi].map(|a| IpAddr::from(Ipv6Addr::from(a)));
                let below = lo.checked_sub(1).map(|a| IpAddr::from(Ipv6Addr::from(a)));
                let above = hi.checked_add(1).map(|a| IpAddr::from(Ipv6Addr::from(a)));
                (inside.to_vec(), below, above)
            }
        }
    }

    #[test]
    fn every_special_purpose_block_and_its_boundaries() {
        let mut failures = Vec::new();
        for &(prefix, name, _global, inside, below, above) in ROWS {
            let net: IpNet = prefix.parse().unwrap();
            let (addrs, lo, hi) = probes(net);
            if inside != Embedded {
                for a in addrs {
                    if verdict(a) != inside {
                        failures.push(format!("{a} in {prefix} ({name}): want {inside:?}"));
                    }
                }
            }
            for (edge, want) in [(lo, below), (hi, above)] {
                assert_eq!(
                    edge.is_some(),
                    want.is_some(),
                    "{prefix}: neighbour expectation"
                );
                if let (Some(a), Some(want)) = (edge, want)
                    && verdict(a) != want
                {
                    failures.push(format!("{a} next to {prefix} ({name}): want {want:?}"));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn embedded_ipv4_is_judged_by_itself() {
        for (addr, want) in [
            ("::ffff:8.8.8.8", Allow),
            ("::ffff:127.0.0.1", Refuse),
            ("::ffff:10.0.0.1", Refuse),
            ("::ffff:169.254.169.254", Refuse),
            ("64:ff9b::8.8.8.8", Allow),
            ("64:ff9b::10.0.0.1", Refuse),
            ("64:ff9b::127.0.0.1", Refuse),
            ("64:ff9b::169.254.169.254", Refuse),
            ("64:ff9b::192.0.0.9", Refuse),
            ("64:ff9b::", Refuse),
            ("64:ff9b::ffff:ffff", Refuse),
            ("2002:808:808::", Allow),
            ("2002:808:808:1::1", Allow),
            ("2002:7f00:1::", Refuse),
            ("2002:a00:1::", Refuse),
            ("2002:a9fe:a9fe::1", Refuse),
            ("2002:c0a8:101::", Refuse),
            ("2002:6440::", Refuse),
            ("2002::", Refuse),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Refuse),
            // IPv4-compatible addresses are refused whatever they carry.
            ("::8.8.8.8", Refuse),
            ("::127.0.0.1", Refuse),
        ] {
            assert_eq!(verdict(addr.parse().unwrap()), want, "{addr}");
        }
        let e = TargetGuard::default()
            .check_ip("h", "2002:7f00:1::".parse().unwrap())
            .unwrap_err();
        assert!(
            e.to_string().contains("6to4 address of a non-public IPv4"),
            "{e}"
        );
    }

    #[test]
    fn public_unicast_is_allowed() {
        for good in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.0.1",
            "192.0.1.1",
            "223.255.255.255",
            "2001:200::1",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "2a00:1450:4001::1",
        ] {
            assert_eq!(verdict(good.parse().unwrap()), Allow, "{good}");
        }
    }

    #[test]
    fn allow_list_lets_chosen_ranges_through() {
        let g = TargetGuard::new(parse_allow_list("127.0.0.0/8, ::1").unwrap());
        assert!(g.check_ip("h", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(g.check_ip("h", "::1".parse().unwrap()).is_ok());
        assert!(g.check_ip("h", "10.0.0.1".parse().unwrap()).is_err());
        assert!(parse_allow_list("nonsense").is_err());
    }

    #[tokio::test]
    async fn names_are_resolved_and_checked() {
        let g = TargetGuard::default();
        let t = Duration::from_secs(5);
        let e = g.check_host("localhost", 80, t).await.unwrap_err();
        assert_eq!(e.reason(), "TargetNotAllowed");
        assert!(g.check_host("127.0.0.1", 80, t).await.is_err());
        assert!(g.check_host("[::1]", 80, t).await.is_err());
        let e = g
            .check_host("web.ns.svc.cluster.local", 80, t)
            .await
            .unwrap_err();
        assert!(matches!(
            e.reason(),
            "TargetNotAllowed" | "TargetUnresolvable"
        ));
        let open = TargetGuard::new(parse_allow_list("127.0.0.0/8,::1/128").unwrap());
        assert!(open.check_host("localhost", 80, t).await.is_ok());
        assert!(open.check_host("127.0.0.1", 80, t).await.is_ok());
    }
}
