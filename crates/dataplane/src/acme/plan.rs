//! When to order a certificate: the pure decision of the ACME task, and the
//! facts of a held certificate it is made from.

use std::time::Duration;

/// What a held certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// End of validity (Unix seconds).
    pub not_after: i64,
    /// Its DNS names (subject alternative names), lower case.
    pub names: Vec<String>,
}

/// The next step of the ACME task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Order a certificate now.
    Order,
    /// The held certificate is good; look again after this long.
    RenewIn(Duration),
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// once two thirds of its lifetime have passed (Let's Encrypt's 90 days:
/// 30 days ahead of expiry).
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let life = (not_after - not_before).max(0);
    not_before + life * 2 / 3
}

/// The decision at Unix time `now` for the domains `wanted`: order when no
/// certificate is held, when it misses a wanted name, or when its renewal
/// time has come; otherwise wait for that time.
pub fn next(now: i64, held: Option<&Held>, wanted: &[String]) -> Next {
    let Some(held) = held else {
        return Next::Order;
    };
    let covers = wanted
        .iter()
        .all(|w| held.names.iter().any(|n| n.eq_ignore_ascii_case(w)));
    if !covers {
        return Next::Order;
    }
    let at = renew_at(held.not_before, held.not_after);
    if now >= at {
        return Next::Order;
    }
    Next::RenewIn(Duration::from_secs(u64::try_from(at - now).unwrap_or(0)))
}

/// The facts of the first (leaf) certificate of a PEM chain.
pub fn held_of_pem(pem: &[u8]) -> anyhow::Result<Held> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate in the chain"))??;
    held_of_der(&leaf)
}

/// The facts of a DER certificate.
pub fn held_of_der(der: &[u8]) -> anyhow::Result<Held> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(Held {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(names: &[&str]) -> Held {
        Held {
            not_before: 1_000,
            not_after: 1_000 + 90 * 86_400,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_the_lifetime() {
        let h = held(&["gw1.example.com"]);
        let wanted = vec!["gw1.example.com".to_owned()];
        let at = 1_000 + 60 * 86_400;
        assert_eq!(renew_at(h.not_before, h.not_after), at);
        assert_eq!(
            next(at - 10, Some(&h), &wanted),
            Next::RenewIn(Duration::from_secs(10))
        );
        assert_eq!(next(at, Some(&h), &wanted), Next::Order);
        assert_eq!(next(h.not_after + 1, Some(&h), &wanted), Next::Order);
        // A restart soon after issuance does not order again.
        assert!(matches!(next(2_000, Some(&h), &wanted), Next::RenewIn(_)));
    }

    #[test]
    fn nothing_held_or_a_missing_name_orders() {
        let wanted = vec!["gw1.example.com".to_owned(), "GW2.example.com".to_owned()];
        assert_eq!(next(0, None, &wanted), Next::Order);
        assert_eq!(
            next(2_000, Some(&held(&["gw1.example.com"])), &wanted),
            Next::Order
        );
        assert!(matches!(
            next(
                2_000,
                Some(&held(&["gw2.example.com", "gw1.example.com"])),
                &wanted
            ),
            Next::RenewIn(_)
        ));
    }

    #[test]
    fn a_backwards_validity_is_renewed_at_once() {
        let h = Held {
            not_before: 5_000,
            not_after: 4_000,
            names: vec!["a.example".to_owned()],
        };
        assert_eq!(
            next(5_000, Some(&h), &["a.example".to_owned()]),
            Next::Order
        );
    }

    #[test]
    fn dates_and_names_are_read_from_a_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["Gw1.Example.com".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1);
        let cert = params.self_signed(&key).expect("cert");
        let h = held_of_pem(cert.pem().as_bytes()).expect("held");
        assert_eq!(h.names, vec!["gw1.example.com".to_owned()]);
        assert_eq!(h.not_before, 1_767_225_600);
        assert_eq!(h.not_after, 1_767_225_600 + 90 * 86_400);
        assert!(held_of_pem(b"no pem here").is_err());
    }
}
