//! Secrets carried by the contract (node keys, device JWTs): a string that
//! cannot leak by accident. `Debug` and `Display` print `[redacted]`, so a
//! `{:?}` in a log line or a panic message shows nothing; serde sees the
//! plain string, so the JSON is the same as with a `String`; the memory is
//! zeroed on drop (`secrecy`). Reading it takes an explicit
//! [`Secret::expose`].

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};

/// What [`Secret`]'s `Debug` and `Display` print instead of the value.
pub const REDACTED: &str = "[redacted]";

/// A secret string: redacted when formatted, plain on the wire.
#[derive(Clone, Default)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The value itself, for the one place that needs it (a cipher, an
    /// `Authorization` header, a document sent to its owner).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

/// Parsing never fails: any string can be a secret (command-line flags).
impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "s3cr3t-node-key";

    #[test]
    fn formatting_never_shows_the_value() {
        let s = Secret::from(VALUE);
        for shown in [
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{s}"),
            format!("{s:>40}"),
            s.to_string(),
        ] {
            assert!(!shown.contains(VALUE), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
        assert_eq!(s.expose(), VALUE);
        assert_eq!(s.clone().expose(), VALUE);
    }

    #[test]
    fn the_wire_sees_the_plain_string() {
        let s = Secret::from(VALUE);
        assert_eq!(serde_json::to_string(&s).ok(), Some(format!("\"{VALUE}\"")));
        let back: Secret = serde_json::from_str("\"a\\\"b\"").expect("a JSON string");
        assert_eq!(back.expose(), "a\"b");
        assert!(serde_json::from_str::<Secret>("42").is_err());
        assert!(Secret::default().is_empty());
        assert_eq!("x".parse::<Secret>().map(|s| s.is_empty()), Ok(false));
    }
}
