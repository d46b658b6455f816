//! A node's address as gateways reach it, checked and kept in one form,
//! and held by one node only.

use crate::error::{AppError, AppResult};
use crate::validate;

/// A node's address as gateways reach it: an IP address (IPv6 with or
/// without brackets, kept without), or a host name, kept in the form DNS
/// is asked in (lower case, an internationalized name in punycode, as a
/// gateway's public URL is): labels of letters, digits, `-` and `_`, none
/// empty, over 63 bytes or edged with `-`, the last not all digits (`1.2.3`
/// and `999.1.1.1` are addresses written wrong). A port, a path or anything
/// else is refused: gateways could not reach it.
pub(super) fn host(value: &str) -> AppResult<String> {
    let h = validate::text("host", value, 1, 253)?;
    let bad = || AppError::bad("host must be a host name or an IP address, without a port");
    let bare = h
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(&h);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        // An IPv4 address written as IPv6 (`::ffff:10.0.0.5`) is the
        // IPv4 address: one server, one form.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        // 0.0.0.0 and :: are where a server listens, not an address to
        // connect to.
        if ip.is_unspecified() {
            return Err(AppError::bad(
                "host must be an address gateways can connect to, not 0.0.0.0 or ::",
            ));
        }
        return Ok(ip.to_string());
    }
    // IDNA: lower case, punycode (but no %-escapes: a name is not a URL).
    if h.contains('%') {
        return Err(bad());
    }
    let ascii = match url::Host::parse(&h) {
        Ok(url::Host::Domain(d)) => d,
        // An address in a form the standard parser above did not take
        // (`1.2.3`, `0x7f.1`): written wrong, or meant to mislead.
        Ok(_) | Err(_) => return Err(bad()),
    };
    // A name ending in a dot is the same DNS name without it: two nodes'
    // hosts would differ only in writing (as a gateway's URL is refused).
    if ascii.ends_with('.') {
        return Err(AppError::bad(
            "host must not end in a dot (it names the same host without it)",
        ));
    }
    let name = ascii.as_str();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let last_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if !name.split('.').all(label_ok) || last_numeric {
        return Err(bad());
    }
    Ok(ascii)
}

/// An Outline node's address held by another of its region: two nodes at
/// one address are one server counted twice (its load, its sessions, its
/// health). Regions are apart: their gateways reach their own nodes, and
/// private addresses repeat from one datacenter to the next.
pub(super) const NODE_ADDRESS_TAKEN: &str = "a node of this region with this host and port exists";

/// Inside a transaction on `$conn`: refuses with CONFLICT
/// [`NODE_ADDRESS_TAKEN`] when an Outline node of the region `$region`
/// other than `$except` has the host `$host` (in [`host`]'s form) and the
/// port `$port`. Taken under the names' lock, as names are.
macro_rules! refuse_address_taken {
    ($conn:expr, $region:expr, $host:expr, $port:expr, $except:expr) => {{
        if let Some(lock) = $crate::names::NAMES_LOCK.on($conn) {
            diesel::sql_query(lock).execute($conn).await?;
        }
        let held: i64 = outline_nodes::table
            .filter(outline_nodes::id.ne($except))
            .filter(outline_nodes::region_id.eq($region))
            .filter(outline_nodes::host.eq($host))
            .filter(outline_nodes::port.eq($port))
            .count()
            .get_result($conn)
            .await?;
        if held > 0 {
            return Err($crate::error::AppError::Conflict(
                super::address::NODE_ADDRESS_TAKEN.into(),
            ));
        }
    }};
}
pub(super) use refuse_address_taken;

#[cfg(test)]
mod tests {
    use super::host;

    #[test]
    fn a_host_is_an_address_or_a_host_name_and_nothing_else() {
        for (given, kept) in [
            ("10.1.0.1", "10.1.0.1"),
            ("::1", "::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("::ffff:10.9.9.9", "10.9.9.9"),
            ("[::FFFF:a09:909]", "10.9.9.9"),
            ("node", "node"),
            ("node-1.eu.example.com", "node-1.eu.example.com"),
            ("my_node", "my_node"),
            ("123.example.com", "123.example.com"),
            ("Node-1.EU.Example.com", "node-1.eu.example.com"),
            ("LOCALHOST", "localhost"),
            ("exämple.com", "xn--exmple-cua.com"),
        ] {
            assert_eq!(host(given).ok().as_deref(), Some(kept), "{given}");
        }
        for bad in [
            "1.2.3.4:80",
            "0.0.0.0",
            "::",
            "[::]",
            "::ffff:0.0.0.0",
            "example.com:443",
            "[::1]:80",
            "999.1.1.1",
            "1.2.3",
            "a..b",
            "-bad-.com",
            "bad-.com",
            "bad host",
            ".",
            "http://example.com",
            "example.com/x",
            "[example.com]",
            "1.0x2",
            "0x7f.0.0.0x1",
            "0x7f",
            "ex%61mple.com",
            "example.com.",
            "EXAMPLE.com.",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
        assert!(
            host(&format!("{}.com", "a".repeat(64))).is_err(),
            "a long label"
        );
    }
}
