//! The SSRF guard: targets (webhook URLs, FTP hosts) that resolve to loopback, private,
//! link-local, metadata or cluster-internal addresses are refused unless the operator was
//! started with `--allow-targets` covering them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

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

    /// Checks one address (also used at connect time against DNS rebinding).
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), TargetError> {
        if self.allowed(ip) {
            return Ok(());
        }
        match blocked_class(ip) {
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

/// The class of a non-public address, or `None` for a public one.
fn blocked_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if o == [169, 254, 169, 254] || o == [100, 100, 100, 200] {
                Some("cloud metadata")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() {
                Some("private")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("carrier-grade NAT")
            } else if o[0] == 198 && (o[1] == 18 || o[1] == 19) {
                Some("benchmarking")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("multicast or reserved")
            } else if v4.is_documentation() {
                Some("documentation")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return blocked_class(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("unique-local (private)")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] == 0x64 && s[1] == 0xff9b {
                // NAT64 can reach any IPv4 address, private ones included.
                Some("NAT64")
            } else if s[0] == 0x2001 && s[1] == 0xdb8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
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
