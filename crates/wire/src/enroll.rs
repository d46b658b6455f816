//! Enrollment: the one-time string the control plane's CLI prints for a new
//! gateway or node (`httvps gateway add`, `httvps node add`), and the answer
//! of `POST /api/v1/enroll`, which turns it into the machine's stored
//! credential.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::Secret;

/// What every enrollment string starts with.
pub const PREFIX: &str = "httvps-enroll:";

/// A certificate pin as the enrollment string carries it (`sha256:` and 64
/// lowercase hex digits), from the forms operators paste: with or without
/// the prefix (either case), the digits in any case, bytes separated by
/// colons or not (as `openssl x509 -fingerprint -sha256` prints them).
pub fn canonical_pin(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let hex = raw
        .strip_prefix("sha256:")
        .or_else(|| raw.strip_prefix("SHA256:"))
        .unwrap_or(raw)
        .replace(':', "");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be sha256: and 64 hex digits".into());
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// What an enrollment string carries (base64url JSON after [`PREFIX`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// `gateway` or `node`.
    pub kind: String,
    /// The control plane's base URL as the machine reaches it.
    pub url: String,
    /// SHA-256 pin (`sha256:<hex>`) of the certificate the machine trusts
    /// for that URL (the control plane's private CA), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The one-time token: good for one `POST /api/v1/enroll`.
    pub token: Secret,
}

impl Enrollment {
    /// The printable string.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Reads a string made by [`Enrollment::encode`].
    pub fn decode(raw: &str) -> Result<Enrollment, String> {
        let body = raw
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("an enrollment string starts with {PREFIX}"))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "the enrollment string is damaged (not base64url)".to_owned())?;
        let e: Enrollment = serde_json::from_slice(&json)
            .map_err(|_| "the enrollment string is damaged (not its JSON)".to_owned())?;
        if e.kind != "gateway" && e.kind != "node" {
            return Err("the enrollment string is for neither a gateway nor a node".into());
        }
        Ok(e)
    }
}

/// The answer of `POST /api/v1/enroll`: the machine's own token, replacing
/// the one-time token (which stops working).
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    /// `gateway` or `node`.
    pub kind: String,
    /// The machine's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The machine token to store and use from now on.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub token: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_damage_is_refused() {
        let e = Enrollment {
            kind: "node".into(),
            url: "https://cp.example.com".into(),
            pin: Some(format!("sha256:{}", "ab".repeat(32))),
            token: "tok".into(),
        };
        let s = e.encode();
        assert!(s.starts_with(PREFIX));
        let back = Enrollment::decode(&s).expect("decodes");
        assert_eq!(
            (
                back.kind,
                back.url,
                back.pin,
                back.token.expose().to_owned()
            ),
            (e.kind, e.url, e.pin, "tok".to_owned())
        );
        assert!(Enrollment::decode("httvps-enroll:!!").is_err());
        assert!(Enrollment::decode("eyJ9").is_err());
        assert!(Enrollment::decode(&format!("{PREFIX}e30")).is_err());
    }

    #[test]
    fn a_pin_is_read_in_every_form_operators_paste() {
        let want = format!("sha256:{}", "ab".repeat(32));
        let colons = vec!["AB"; 32].join(":");
        for given in [
            want.clone(),
            "AB".repeat(32),
            format!("SHA256:{}", "Ab".repeat(32)),
            colons.clone(),
            format!("sha256:{colons}"),
            format!("  {want}\n"),
        ] {
            assert_eq!(
                canonical_pin(&given).as_deref(),
                Ok(want.as_str()),
                "{given}"
            );
        }
        for bad in [
            String::new(),
            "sha256:".into(),
            "ab".repeat(31),
            "ab".repeat(33),
            format!("sha256:{}zz", "ab".repeat(31)),
            format!("md5:{}", "ab".repeat(32)),
        ] {
            assert!(canonical_pin(&bad).is_err(), "{bad}");
        }
    }
}
