//! The shape of opaque access tokens (device, machine and refresh tokens):
//! 256 random bits as 43 URL-safe base64 characters. Checked before any
//! lookup, by the control plane and by gateways alike.

/// Length of an opaque token.
pub const TOKEN_LEN: usize = 43;

/// Whether a string has the shape of our opaque tokens (43 URL-safe chars).
pub fn looks_like_token(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The credential of an `Authorization` value of the Bearer scheme, the
/// scheme's name read in any case (RFC 9110, 11.1), trimmed; `None` for
/// another scheme.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credential.trim())
}

/// Whether a string could be a JWT (three dot-separated parts, bounded).
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() < 4096 && token.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape() {
        assert!(looks_like_token(&"a".repeat(43)));
        assert!(looks_like_token(&format!("-_{}", "Z9".repeat(20) + "x")));
        assert!(!looks_like_token(&"a".repeat(42)));
        assert!(!looks_like_token(&"a".repeat(44)));
        assert!(!looks_like_token(&format!("{}=", "a".repeat(42))));
        assert!(!looks_like_token(&format!("{}é", "a".repeat(41))));
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        for v in ["Bearer t", "bearer t", "BEARER  t ", "bEaReR t"] {
            assert_eq!(bearer(v), Some("t"), "{v}");
        }
        for v in ["Basic t", "Bearert", "t", ""] {
            assert_eq!(bearer(v), None, "{v}");
        }
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt(&format!("a.b.{}", "c".repeat(5000))));
    }
}
