//! The usage spool: every session's cumulative totals, written atomically
//! (a temporary file, fsync, rename, fsync of the directory) on a blocking
//! thread, every `spool_every` and before each report. A restart (even
//! after SIGKILL) reports its totals again and counts the sessions afresh
//! (see `Sessions::restore`): what was reported is never counted twice
//! (the spool is never behind a report; the ledger ignores totals it has),
//! and at most what moved since the last write is lost, unless the node
//! witnessed it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::Gateway;
use super::sessions::Counted;

/// The spool file's content (`{"sessions":{"<id>":[up,down,epoch]}}`).
#[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq, Eq)]
struct Spool {
    sessions: HashMap<String, Entry>,
    /// Further counts of sessions in `sessions`: a session restored from
    /// an earlier run is counted afresh under a new epoch while its
    /// restored totals wait to be reported again, so it has two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    more: Vec<(String, u64, u64, u64)>,
}

/// One session's spooled count.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Eq)]
#[serde(untagged)]
enum Entry {
    /// Bytes up, bytes down, the count's epoch.
    Counted(u64, u64, u64),
    /// What gateways wrote before counts had epochs (epoch 0, as they
    /// reported them).
    Before(u64, u64),
}

/// The spool's bytes for `totals` (sessions that moved nothing are left
/// out; a session's second count goes to `more`).
fn encode(totals: impl IntoIterator<Item = Counted>) -> serde_json::Result<Vec<u8>> {
    let mut spool = Spool::default();
    for (id, u, d, e) in totals {
        if u.saturating_add(d) == 0 {
            continue;
        }
        let epoch = e.max(0).unsigned_abs();
        match spool.sessions.entry(id) {
            std::collections::hash_map::Entry::Occupied(taken) => {
                spool.more.push((taken.key().clone(), u, d, epoch));
            }
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(Entry::Counted(u, d, epoch));
            }
        }
    }
    serde_json::to_vec(&spool)
}

/// The totals in a spool's bytes (id, bytes up, down, epoch), if they are
/// one.
fn decode(bytes: &[u8]) -> Option<Vec<Counted>> {
    let spool = serde_json::from_slice::<Spool>(bytes).ok()?;
    let more = spool
        .more
        .into_iter()
        .map(|(id, u, d, epoch)| Some((id, u, d, i64::try_from(epoch).ok()?)));
    spool
        .sessions
        .into_iter()
        .map(|(id, e)| match e {
            Entry::Counted(u, d, epoch) => Some((id, u, d, i64::try_from(epoch).ok()?)),
            Entry::Before(u, d) => Some((id, u, d, 0)),
        })
        .chain(more)
        .collect()
}

/// Writes `totals` to `path` durably: a temporary file readable by its
/// owner only (the spool names sessions), fsync'd, renamed over the spool,
/// and the directory fsync'd so the rename survives a crash of the machine
/// too. A temporary file a crash left behind is replaced. Blocking: call
/// it off the runtime's threads.
fn write(path: &Path, totals: Vec<Counted>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = encode(totals).map_err(std::io::Error::other)?;
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    crate::files::write_private(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One writer at a time, and the totals last written (nothing is written
/// when nothing moved).
#[derive(Debug, Default)]
pub(crate) struct Writer {
    last: tokio::sync::Mutex<Option<Vec<Counted>>>,
}

impl Gateway {
    /// Writes every session's totals to the spool, if there is one and
    /// something changed, on a blocking thread. Totals only grow, and the
    /// snapshot is taken under the writer's lock, so the spool never goes
    /// back and is never behind totals reported after this returns.
    pub(crate) async fn write_spool(&self) {
        let Some(path) = self.opts.spool.clone() else {
            return;
        };
        let mut last = self.spool.last.lock().await;
        let mut totals = self.sessions.snapshot();
        totals.sort_unstable();
        if last.as_ref() == Some(&totals) {
            return;
        }
        let copy = totals.clone();
        let at = path.clone();
        match tokio::task::spawn_blocking(move || write(&path, copy)).await {
            Ok(Ok(())) => *last = Some(totals),
            Ok(Err(e)) => tracing::warn!(
                error = %e,
                spool = %at.display(),
                "writing the usage spool (GATEWAY_SPOOL, or gateway-spool.json in GATEWAY_DATA_DIR)"
            ),
            Err(e) => tracing::warn!(error = %e, "the usage spool writer failed"),
        }
    }
}

/// Writes the spool at `spool_every`, so a SIGKILL loses at most what moved
/// in one such interval.
pub(crate) async fn spool_loop(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(gw.opts.spool_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        gw.write_spool().await;
    }
}

/// The totals spooled at `path`; none when there is no spool, and none
/// (with a warning) when it cannot be read.
pub(crate) fn read(path: &Path) -> Vec<Counted> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    decode(&bytes).unwrap_or_else(|| {
        tracing::warn!(path = %path.display(), "unreadable usage spool ignored");
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoded totals by session (one count each).
    fn by_id(totals: Vec<Counted>) -> HashMap<String, (u64, u64, i64)> {
        totals
            .into_iter()
            .map(|(id, u, d, e)| (id, (u, d, e)))
            .collect()
    }

    #[test]
    fn a_sessions_second_count_is_kept_beside_its_first() {
        let bytes = encode([
            ("s1".to_owned(), 3, 4, 9),
            ("s1".to_owned(), 0, 1, 12),
            ("s2".to_owned(), 5, 0, 12),
        ])
        .expect("encode");
        let mut back = decode(&bytes).expect("decode");
        back.sort_unstable();
        assert_eq!(
            back,
            vec![
                ("s1".to_owned(), 0, 1, 12),
                ("s1".to_owned(), 3, 4, 9),
                ("s2".to_owned(), 5, 0, 12)
            ]
        );
    }

    #[test]
    fn totals_survive_a_round_trip_without_idle_sessions() {
        let bytes = encode([
            ("s1".to_owned(), 10, 20, 7),
            ("s2".to_owned(), 0, 0, 8),
            ("s3".to_owned(), u64::MAX, 1, i64::MAX),
        ])
        .expect("encode");
        let back = by_id(decode(&bytes).expect("decode"));
        assert_eq!(back.len(), 2);
        assert_eq!(back.get("s1"), Some(&(10, 20, 7)));
        assert_eq!(back.get("s3"), Some(&(u64::MAX, 1, i64::MAX)));
    }

    #[test]
    fn earlier_gateways_spools_are_read_as_epoch_zero() {
        let back = by_id(decode(br#"{"sessions":{"a":[1,2],"b":[3,4,5]}}"#).expect("decode"));
        assert_eq!(back.get("a"), Some(&(1, 2, 0)));
        assert_eq!(back.get("b"), Some(&(3, 4, 5)));
        assert_eq!(
            encode([("a".to_owned(), 1, 2, 5)]).expect("encode"),
            br#"{"sessions":{"a":[1,2,5]}}"#
        );
    }

    #[test]
    fn a_written_spool_is_read_back_and_replaces_the_old_one() {
        let dir = std::env::temp_dir().join(format!("spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("spool.json");
        write(&path, vec![("a".to_owned(), 1, 2, 1)]).expect("write");
        write(
            &path,
            vec![("a".to_owned(), 3, 4, 1), ("b".to_owned(), 5, 0, 2)],
        )
        .expect("write");
        let back = by_id(read(&path));
        assert_eq!(back.get("a"), Some(&(3, 4, 1)));
        assert_eq!(back.get("b"), Some(&(5, 0, 2)));
        assert!(!path.with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn the_spool_is_its_owners_only_even_over_a_crashs_leftovers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("spool-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("spool.json");
        // What an earlier gateway left: a world-readable spool and a
        // temporary file from a write a crash cut short.
        std::fs::write(&path, br#"{"sessions":{}}"#).expect("old spool");
        std::fs::write(path.with_extension("tmp"), b"{").expect("leftover");
        for p in [&path, &path.with_extension("tmp")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        write(&path, vec![("a".to_owned(), 1, 2, 3)]).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "spool mode {mode:o}");
        assert_eq!(by_id(read(&path)).get("a"), Some(&(1, 2, 3)));
        assert!(!path.with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_spools_are_not_read() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"sessions":{"a":[-1,2]}}"#,
            br#"{"sessions":{"a":[1,2,-3]}}"#,
            br#"{"sessions":{"a":[1,2,9223372036854775808]}}"#,
            br#"{"sessions":{"a":[1]}}"#,
        ] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
