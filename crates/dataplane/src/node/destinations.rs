//! The destinations a node refuses by default (private, loopback,
//! link-local, multicast, reserved): ONE table, from which both the ACL
//! handed to shadowsocks-service (IP literals) and [`is_private`] (names,
//! filtered after resolution) are made, so the two cannot disagree.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use shadowsocks_service::acl::AccessControl;
use shadowsocks_service::shadowsocks::dns_resolver::DnsResolve;

/// A network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateNet {
    /// First address of the network.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl PrivateNet {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        PrivateNet {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(first: u16, prefix: u8) -> Self {
        PrivateNet {
            addr: IpAddr::V6(Ipv6Addr::new(first, 0, 0, 0, 0, 0, 0, 0)),
            prefix,
        }
    }

    /// Whether `ip` (already in canonical form: no v4-mapped IPv6) is in
    /// the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for PrivateNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Every refused network. IPv4 addresses written as v4-mapped IPv6 are
/// refused by their IPv4 entry (both the ACL and [`is_private`] map them).
pub const PRIVATE_NETS: &[PrivateNet] = &[
    // "This network", including the unspecified address.
    PrivateNet::v4(0, 0, 0, 0, 8),
    PrivateNet::v4(10, 0, 0, 0, 8),
    // Carrier-grade NAT.
    PrivateNet::v4(100, 64, 0, 0, 10),
    PrivateNet::v4(127, 0, 0, 0, 8),
    PrivateNet::v4(169, 254, 0, 0, 16),
    PrivateNet::v4(172, 16, 0, 0, 12),
    // IETF protocol assignments.
    PrivateNet::v4(192, 0, 0, 0, 24),
    PrivateNet::v4(192, 168, 0, 0, 16),
    // Benchmarking.
    PrivateNet::v4(198, 18, 0, 0, 15),
    // Multicast.
    PrivateNet::v4(224, 0, 0, 0, 4),
    // Reserved, including the limited broadcast address.
    PrivateNet::v4(240, 0, 0, 0, 4),
    // Unspecified.
    PrivateNet::v6(0, 128),
    // IPv4-compatible (deprecated, never routed; `::` and `::1` within).
    PrivateNet::v6(0, 96),
    // Loopback.
    PrivateNet {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        prefix: 128,
    },
    // Unique local.
    PrivateNet::v6(0xfc00, 7),
    // Link-local.
    PrivateNet::v6(0xfe80, 10),
    // Multicast.
    PrivateNet::v6(0xff00, 8),
    // Local-use NAT64 (RFC 8215): a network's own translator.
    PrivateNet {
        addr: IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0)),
        prefix: 48,
    },
];

/// The well-known NAT64 prefix (RFC 6052), `64:ff9b::/96`: on a network
/// with a translator an address in it reaches the IPv4 address in its last
/// 32 bits, so it is refused exactly when that IPv4 address is.
const NAT64: [u16; 6] = [0x64, 0xff9b, 0, 0, 0, 0];

/// The IPv4 address an IPv6 one reaches: v4-mapped (`::ffff:a.b.c.d`), or
/// through the well-known NAT64 prefix.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    v6.to_ipv4_mapped().or_else(|| {
        let [.., a, b, c, d] = v6.octets();
        (v6.segments()[..6] == NAT64).then_some(Ipv4Addr::new(a, b, c, d))
    })
}

/// The refused IPv4 networks as reached through the NAT64 prefix.
fn nat64_nets() -> impl Iterator<Item = PrivateNet> {
    PRIVATE_NETS.iter().filter_map(|net| match net.addr {
        IpAddr::V4(v4) => {
            let [a, b, c, d, e, f] = NAT64;
            let bits =
                u128::from(Ipv6Addr::new(a, b, c, d, e, f, 0, 0)) | u128::from(u32::from(v4));
            Some(PrivateNet {
                addr: IpAddr::V6(Ipv6Addr::from(bits)),
                prefix: 96 + net.prefix,
            })
        }
        IpAddr::V6(_) => None,
    })
}

/// Whether a destination is private, loopback, link-local or otherwise not
/// on the public internet (an IPv4 address written as IPv6, v4-mapped or
/// through the NAT64 prefix, counts as that IPv4 address).
pub fn is_private(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    PRIVATE_NETS.iter().any(|net| net.contains(ip))
}

/// The ACL rules refusing [`PRIVATE_NETS`] (and their NAT64 forms), for IP
/// literals. Every name is allowed by the ACL: it would otherwise resolve
/// the name to check it (a blocking lookup, inside the loop that receives
/// every client's UDP packets: one name whose server never answers
/// stopped UDP for everyone), and [`PublicOnly`] checks every address a
/// name resolves to when it is connected to or sent to anyway.
fn acl_rules() -> String {
    let mut rules = String::from("[accept_all]\n[outbound_allow_all]\n[outbound_block_list]\n");
    for net in PRIVATE_NETS.iter().copied().chain(nat64_nets()) {
        rules.push_str(&net.to_string());
        rules.push('\n');
    }
    rules.push_str("[outbound_allow_list]\n.*\n");
    rules
}

/// The ACL refusing private destinations (written to a scratch file: the
/// ACL loads only from files).
pub(super) fn private_block_acl() -> io::Result<AccessControl> {
    let path = std::env::temp_dir().join(format!(
        "httvps-node-acl-{}.conf",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, acl_rules())?;
    let acl = AccessControl::load_from_file(&path);
    let _ = std::fs::remove_file(&path);
    acl
}

/// Resolves names to public addresses only, closing the gap between the
/// ACL's check and the connection's own lookup (DNS rebinding).
pub(super) struct PublicOnly;

/// Longest a lookup may take: the system resolver has no deadline of its
/// own that a client's name cannot stretch.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl DnsResolve for PublicOnly {
    async fn resolve(&self, addr: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let found: Vec<SocketAddr> =
            tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((addr, port)))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "name lookup timed out"))??
                .filter(|a| !is_private(a.ip()))
                .collect();
        if found.is_empty() {
            // Never an empty Ok: shadowsocks asserts on it.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "destination not allowed",
            ));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    /// Addresses inside the table, at the edges of each range.
    const INSIDE: &[&str] = &[
        "0.0.0.0",
        "0.255.255.255",
        "10.0.0.0",
        "10.255.255.255",
        "100.64.0.0",
        "100.127.255.255",
        "127.0.0.1",
        "127.255.255.255",
        "169.254.0.0",
        "169.254.255.255",
        "172.16.0.0",
        "172.31.255.255",
        "192.0.0.0",
        "192.0.0.255",
        "192.168.0.0",
        "192.168.255.255",
        "198.18.0.0",
        "198.19.255.255",
        "224.0.0.0",
        "239.255.255.255",
        "240.0.0.0",
        "255.255.255.255",
        "::",
        "::1",
        "fc00::",
        "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::",
        "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "ff00::",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:0.0.0.0",
        "::2",
        "::127.0.0.1",
        "64:ff9b::a00:5",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::ffff:ffff",
        "64:ff9b:1::",
        "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
    ];

    /// Public addresses, many just outside a range.
    const OUTSIDE: &[&str] = &[
        "1.0.0.0",
        "8.8.8.8",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "191.255.255.255",
        "192.0.1.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "::1:0:0:0",
        "64:ff9b::808:808",
        "64:ff9b::b00:0",
        "64:ff9b:2::1",
        "2001:db8::1",
        "2606:4700::1111",
        "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe00::",
        "fec0::",
        "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:8.8.8.8",
        "::ffff:11.0.0.0",
    ];

    #[test]
    fn the_edges_of_every_range_are_inside_and_their_neighbours_outside() {
        for a in INSIDE {
            assert!(is_private(ip(a)), "{a} should be refused");
        }
        for a in OUTSIDE {
            assert!(!is_private(ip(a)), "{a} should be allowed");
        }
    }

    #[test]
    fn every_network_starts_on_its_prefix_and_holds_its_first_and_last_address() {
        for net in PRIVATE_NETS {
            assert!(net.contains(net.addr), "{net}");
            let last = match net.addr {
                IpAddr::V4(a) => {
                    IpAddr::V4(Ipv4Addr::from(u32::from(a) | (u32::MAX >> net.prefix)))
                }
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
                    u128::from(a) | u128::MAX.checked_shr(u32::from(net.prefix)).unwrap_or(0),
                )),
            };
            assert!(net.contains(last), "{net} ends at {last}");
            // No host bits set: the written address is the network's first.
            let first = match net.addr {
                IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
                IpAddr::V6(a) => u128::from(a),
            };
            let width = if net.addr.is_ipv4() { 32 } else { 128 };
            let host_bits = u128::MAX
                .checked_shr(u32::from(net.prefix) + 128 - width)
                .unwrap_or(0);
            assert_eq!(first & (host_bits << (128 - width)), 0, "{net}");
        }
    }

    #[test]
    fn families_never_match_each_other() {
        let v4 = PrivateNet::v4(0, 0, 0, 0, 0);
        assert!(v4.contains(ip("203.0.113.9")));
        assert!(!v4.contains(ip("2001:db8::1")));
        let v6 = PrivateNet::v6(0, 0);
        assert!(v6.contains(ip("2001:db8::1")));
        assert!(!v6.contains(ip("203.0.113.9")));
    }

    #[test]
    fn the_acl_text_lists_exactly_the_table() {
        let rules = acl_rules();
        let listed: Vec<&str> = rules
            .lines()
            .skip_while(|l| *l != "[outbound_block_list]")
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .collect();
        let table: Vec<String> = PRIVATE_NETS
            .iter()
            .copied()
            .chain(nat64_nets())
            .map(|n| n.to_string())
            .collect();
        assert_eq!(listed, table);
        assert!(rules.ends_with("[outbound_allow_list]\n.*\n"), "{rules}");
    }

    #[tokio::test]
    async fn the_acl_refuses_exactly_what_is_private_refuses() {
        use shadowsocks_service::shadowsocks::config::ServerType;
        use shadowsocks_service::shadowsocks::context::Context;
        use shadowsocks_service::shadowsocks::relay::Address;
        let acl = private_block_acl().expect("acl");
        let ctx = Context::new(ServerType::Server);
        for a in INSIDE.iter().chain(OUTSIDE) {
            let dest = Address::SocketAddress(SocketAddr::new(ip(a), 443));
            assert_eq!(
                acl.check_outbound_blocked(&ctx, &dest).await,
                is_private(ip(a)),
                "ACL and table disagree on {a}"
            );
        }
    }

    /// A resolver that counts its lookups and answers a public address.
    struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl DnsResolve for Counting {
        async fn resolve(&self, _addr: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(vec![SocketAddr::new(ip("203.0.113.9"), port)])
        }
    }

    /// The ACL decides on a name without resolving it: shadowsocks' UDP
    /// server asks it inside the loop that receives every client's
    /// packets, where a lookup that hangs stopped them all.
    #[tokio::test]
    async fn the_acl_passes_names_without_resolving_them() {
        use shadowsocks_service::shadowsocks::config::ServerType;
        use shadowsocks_service::shadowsocks::context::Context;
        use shadowsocks_service::shadowsocks::dns_resolver::DnsResolver;
        use shadowsocks_service::shadowsocks::relay::Address;
        let acl = private_block_acl().expect("acl");
        let lookups = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut ctx = Context::new(ServerType::Server);
        ctx.set_dns_resolver(std::sync::Arc::new(DnsResolver::custom_resolver(Counting(
            lookups.clone(),
        ))));
        for name in [
            "example.com",
            "never-answers.invalid",
            "127.0.0.1",
            "localhost",
        ] {
            let dest = Address::DomainNameAddress(name.to_owned(), 53);
            assert!(!acl.check_outbound_blocked(&ctx, &dest).await, "{name}");
        }
        assert_eq!(lookups.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Literals are still refused by the table.
        let literal = Address::SocketAddress(SocketAddr::new(ip("64:ff9b::a00:5"), 53));
        assert!(acl.check_outbound_blocked(&ctx, &literal).await);
    }
}
