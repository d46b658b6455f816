//! Enrollment: a gateway or node trades the one-time token of its
//! enrollment string (the token it was registered or re-keyed with) for a
//! machine token of its own. The swap is a compare-and-set on the stored
//! hash, so a string is good for one redemption however many are tried at
//! once; a second one finds the token gone (401).
//!
//! A string expires [`ENROLLMENT_TTL`] after it was printed (or after the
//! lifetime its issuer chose, [`EnrollmentTtl`]: 1 h to 30 days) unless
//! it was redeemed or its token used as the machine's own before
//! (`--token`; the first use counts as the enrollment): a string copied
//! somewhere and forgotten stops being a machine credential. An expired one
//! gets 401 as a spent one does; `rotate` prints a new one.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::machines::{Machine, find_machine};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::schema::{audit_log, gateway_nodes, outline_nodes};
use crate::db_tx;
use crate::error::{AppError, AppResult};
use crate::{audit, auth};

/// How long an enrollment string works if neither redeemed nor used,
/// unless its issuer chose otherwise.
pub const ENROLLMENT_TTL: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// The longest lifetime a string may be given, in hours (30 days).
pub const MAX_ENROLLMENT_TTL_HOURS: i64 = 30 * 24;

/// The lifetime of an enrollment string: whole hours, 1 to
/// [`MAX_ENROLLMENT_TTL_HOURS`]; [`ENROLLMENT_TTL`] by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrollmentTtl(chrono::TimeDelta);

impl Default for EnrollmentTtl {
    fn default() -> Self {
        EnrollmentTtl(ENROLLMENT_TTL)
    }
}

/// The lifetime in hours, as `--ttl-hours` takes it.
impl std::fmt::Display for EnrollmentTtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.num_hours())
    }
}

impl EnrollmentTtl {
    /// `hours`, or the default when `None`; a bad-input error naming
    /// `field` when out of range.
    pub fn hours(field: &str, hours: Option<i64>) -> AppResult<Self> {
        match hours {
            None => Ok(Self::default()),
            Some(h) => {
                let h = crate::validate::range(field, h, 1, MAX_ENROLLMENT_TTL_HOURS)?;
                Ok(EnrollmentTtl(chrono::TimeDelta::hours(h)))
            }
        }
    }

    /// Until when a string printed at `issued` works.
    pub fn expires(self, issued: chrono::NaiveDateTime) -> chrono::NaiveDateTime {
        issued + self.0
    }
}

/// What a redeemed enrollment gives the machine.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// `gateway` or `node`.
    pub kind: &'static str,
    /// The machine's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its new machine token (shown once).
    pub token: String,
}

/// Redeems the one-time token `presented`: replaces it with a new machine
/// token, which is returned; the presented one stops working. Only a token
/// still waiting for its enrollment (printed by `add` or `rotate`, not
/// expired, neither redeemed nor used as the machine's own) is taken: a
/// machine's own token is not a string, and redeeming it again and again
/// let whoever held it re-key the machine. With `expected`, the kind of
/// the machine redeeming, a string issued for the other kind is refused
/// and stays unspent (a node's string edited to say "gateway" spent the
/// node's enrollment and left its token in a gateway's file).
pub async fn redeem(db: &Db, presented: &str, expected: Option<&str>) -> AppResult<Enrolled> {
    // Always from the database: a cached answer could outlive the swap.
    let machine = find_machine(db, presented).await?;
    match (&machine, expected) {
        (Machine::Gateway(_), Some("node")) => {
            return Err(AppError::Refused(
                "this enrollment string is a gateway's, not a node's",
            ));
        }
        (Machine::Outline(_), Some("gateway")) => {
            return Err(AppError::Refused(
                "this enrollment string is a node's, not a gateway's",
            ));
        }
        _ => {}
    }
    let at = crate::db::models::now();
    let old = auth::hash_token(presented);
    let token = auth::new_token();
    let new = auth::hash_token(&token);
    let (kind, id, name) = match &machine {
        Machine::Gateway(g) => ("gateway", g.id.to_string(), g.name.clone()),
        Machine::Outline(n) => ("node", n.id.to_string(), n.name.clone()),
    };
    let entry = audit::entry(
        &Actor::Operator,
        "enroll",
        if kind == "gateway" {
            "gateway_node"
        } else {
            "outline_node"
        },
        Some(&id),
        serde_json::json!({"name": name}),
    );
    db_tx!(db, |conn, _| {
        let swapped = match &machine {
            Machine::Gateway(g) => {
                diesel::update(
                    gateway_nodes::table
                        .find(g.id)
                        .filter(gateway_nodes::token_hash.eq(&old))
                        .filter(gateway_nodes::enroll_expires_at.gt(at)),
                )
                .set((
                    gateway_nodes::token_hash.eq(&new),
                    gateway_nodes::enroll_expires_at.eq(None::<chrono::NaiveDateTime>),
                ))
                .execute(conn)
                .await?
            }
            Machine::Outline(n) => {
                diesel::update(
                    outline_nodes::table
                        .find(n.id)
                        .filter(outline_nodes::token_hash.eq(&old))
                        .filter(outline_nodes::enroll_expires_at.gt(at)),
                )
                .set((
                    outline_nodes::token_hash.eq(&new),
                    outline_nodes::enroll_expires_at.eq(None::<chrono::NaiveDateTime>),
                ))
                .execute(conn)
                .await?
            }
        };
        if swapped == 0 {
            // Redeemed (or re-keyed) by someone else meanwhile, expired, or
            // not a string's token at all.
            return Err(AppError::Unauthenticated);
        }
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok(())
    })?;
    Ok(Enrolled {
        kind,
        id,
        name,
        token,
    })
}

/// Where enrollment strings send machines: the control plane's URL as they
/// reach it, and the pin of the certificate they trust for it.
#[derive(Debug, Clone)]
pub struct EnrollTarget {
    /// The control plane's base URL.
    pub url: String,
    /// `sha256:<hex>` of the trusted certificate, if any.
    pub pin: Option<String>,
}

impl EnrollTarget {
    /// The enrollment string of a `kind` (`gateway` or `node`) with its
    /// one-time `token`.
    pub fn string(&self, kind: &str, token: &str) -> String {
        httvps_wire::enroll::Enrollment {
            kind: kind.to_owned(),
            url: self.url.clone(),
            pin: self.pin.clone(),
            token: token.into(),
        }
        .encode()
    }
}

/// What is said when the certificate file holds one certificate: the
/// strings then pin the server's own certificate, not a CA.
const LEAF_PINNED: &str = "BACKEND_TLS_CERT holds one certificate, and enrollment strings pin the last one: renewing it will cut off every gateway and node enrolled with it. Put the CA that signed it after it in the file (README, Production, Certificates), or set BACKEND_ENROLL_PIN";

/// `sha256:<hex>` of the last certificate of a PEM chain (the CA when the
/// chain ends with it); a chain of one certificate is pinned too, with a
/// warning.
pub fn pin_of_chain_end(path: &std::path::Path) -> Result<String, String> {
    use sha2::Digest;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let (mut last, mut count) = (None, 0);
    for c in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
        last = Some(c.map_err(|e| e.to_string())?);
        count += 1;
    }
    let cert = last.ok_or_else(|| format!("{} holds no certificate", path.display()))?;
    if count == 1 {
        tracing::warn!(cert = %path.display(), "{LEAF_PINNED}");
    }
    let digest = sha2::Sha256::digest(&cert);
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_is_whole_hours_from_one_to_thirty_days() {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0)
            .expect("a time")
            .naive_utc();
        assert_eq!(
            EnrollmentTtl::hours("ttl", None)
                .expect("default")
                .expires(at),
            at + chrono::TimeDelta::hours(24)
        );
        assert_eq!(
            EnrollmentTtl::hours("ttl", Some(1))
                .expect("one hour")
                .expires(at),
            at + chrono::TimeDelta::hours(1)
        );
        assert_eq!(
            EnrollmentTtl::hours("ttl", Some(720))
                .expect("30 days")
                .expires(at),
            at + chrono::TimeDelta::days(30)
        );
        assert_eq!(EnrollmentTtl::default().to_string(), "24");
        for bad in [0, -1, 721, i64::MAX] {
            let e = EnrollmentTtl::hours("ttl", Some(bad)).expect_err("out of range");
            assert!(matches!(e, AppError::BadRequest(_)), "{bad}: {e:?}");
        }
    }
}
