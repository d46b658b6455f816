//! The usage spool: every session's cumulative totals, written atomically
//! before each report, so a restart (even after SIGKILL) neither loses nor
//! recounts what was reported (the ledger ignores totals it has).

use std::collections::HashMap;
use std::path::Path;

/// The spool file's content (`{"sessions":{"<id>":[up,down]}}`).
#[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq, Eq)]
struct Spool {
    sessions: HashMap<String, (u64, u64)>,
}

/// The spool's bytes for `totals` (sessions that moved nothing are left
/// out).
fn encode(totals: impl IntoIterator<Item = (String, u64, u64)>) -> serde_json::Result<Vec<u8>> {
    let spool = Spool {
        sessions: totals
            .into_iter()
            .filter(|(_, u, d)| u.saturating_add(*d) > 0)
            .map(|(id, u, d)| (id, (u, d)))
            .collect(),
    };
    serde_json::to_vec(&spool)
}

/// The totals in a spool's bytes, if they are one.
fn decode(bytes: &[u8]) -> Option<HashMap<String, (u64, u64)>> {
    serde_json::from_slice::<Spool>(bytes)
        .ok()
        .map(|s| s.sessions)
}

/// Writes `totals` to `path` (through a temporary file and a rename).
pub(crate) fn write(path: &Path, totals: impl IntoIterator<Item = (String, u64, u64)>) {
    let tmp = path.with_extension("tmp");
    let written = encode(totals)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(error = %e, "writing the usage spool");
    }
}

/// The totals spooled at `path`; none when there is no spool, and none
/// (with a warning) when it cannot be read.
pub(crate) fn read(path: &Path) -> HashMap<String, (u64, u64)> {
    let Ok(bytes) = std::fs::read(path) else {
        return HashMap::new();
    };
    decode(&bytes).unwrap_or_else(|| {
        tracing::warn!(path = %path.display(), "unreadable usage spool ignored");
        HashMap::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_survive_a_round_trip_without_idle_sessions() {
        let bytes = encode([
            ("s1".to_owned(), 10, 20),
            ("s2".to_owned(), 0, 0),
            ("s3".to_owned(), u64::MAX, 1),
        ])
        .expect("encode");
        let back = decode(&bytes).expect("decode");
        assert_eq!(back.len(), 2);
        assert_eq!(back.get("s1"), Some(&(10, 20)));
        assert_eq!(back.get("s3"), Some(&(u64::MAX, 1)));
    }

    #[test]
    fn the_format_is_the_one_earlier_gateways_wrote() {
        let back = decode(br#"{"sessions":{"a":[1,2]}}"#).expect("decode");
        assert_eq!(back.get("a"), Some(&(1, 2)));
        assert_eq!(
            encode([("a".to_owned(), 1, 2)]).expect("encode"),
            br#"{"sessions":{"a":[1,2]}}"#
        );
    }

    #[test]
    fn damaged_spools_are_not_read() {
        for bad in [&b""[..], b"{", b"[]", br#"{"sessions":{"a":[-1,2]}}"#] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
