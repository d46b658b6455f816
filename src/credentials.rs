//! The relay's credentials: from flags (`--backend`, `--token`), from the
//! file an enrollment wrote, or by redeeming an enrollment string on first
//! start (`--enroll`), which writes that file (owner-only) so later starts
//! need nothing but the file. The file remembers which string it came from
//! (its SHA-256): started with a different string (a rotation printed a
//! new one), the machine redeems the new string and replaces the file; the
//! same string again (a restart with unchanged settings) reads the file.

use std::path::Path;

use anyhow::Context as _;
use httvps_dataplane::backend::{Backend, BackendError};
use httvps_dataplane::link::{Link, Pin};
use httvps_wire::Secret;
use httvps_wire::enroll::Enrollment;
use serde::{Deserialize, Serialize};

/// What an enrolled machine keeps.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    kind: String,
    backend: String,
    #[serde(default)]
    pin: Option<String>,
    token: Secret,
    /// SHA-256 (hex) of the enrollment string redeemed for this file.
    #[serde(default)]
    enrollment: Option<String>,
}

/// What a credentials file remembers of the string it came from.
fn digest(enrollment: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(enrollment.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `stored` beside `file`, then renames it over the file: a
/// rotation replaces the old credentials whole, and a crash leaves one
/// file or the other.
fn store(file: &Path, stored: &Stored) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(stored).context("credentials")?;
    let fresh = file.with_extension("new");
    let _ = std::fs::remove_file(&fresh);
    httvps_dataplane::files::write_private(&fresh, &json)
        .and_then(|()| std::fs::rename(&fresh, file))?;
    Ok(())
}

/// A client from a stored file.
fn from_stored(stored: &Stored, s: &Sources<'_>) -> anyhow::Result<Backend> {
    let p = s.prefix;
    // The file's URL is the one its token was issued by; a different one
    // given beside it (often an example's default) is not taken, but said.
    if let Some(given) = s.backend.as_deref()
        && given.trim_end_matches('/') != stored.backend.trim_end_matches('/')
    {
        tracing::warn!(
            given,
            stored = %stored.backend,
            file = %s.file.display(),
            "{p}_BACKEND_URL differs from the control plane the credentials file was enrolled with; \
             the file's is used (enroll again to change it)"
        );
    }
    let link = Link {
        pin: stored
            .pin
            .as_deref()
            .map(Pin::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        ..s.link.clone()
    };
    Backend::connect(&stored.backend, stored.token.expose(), &link)
        .with_context(|| format!("{p}_CREDENTIALS: {}", s.file.display()))
}

/// Where the credentials of one command come from.
#[derive(Debug)]
pub struct Sources<'a> {
    /// `gateway` or `node`.
    pub kind: &'static str,
    /// Variable prefix: `GATEWAY` or `NODE`.
    pub prefix: &'static str,
    /// `--backend`.
    pub backend: Option<String>,
    /// `--token`.
    pub token: Option<Secret>,
    /// `--enroll`.
    pub enroll: Option<String>,
    /// `--credentials`.
    pub file: &'a Path,
    /// `--backend-ca`, `--backend-pin`, `--private-link`.
    pub link: Link,
}

/// Pauses between redemptions the control plane could not answer (its
/// database down, or throttling this address): about a minute in all, a throttle's
/// window, before the start gives up or falls back on stored credentials.
const REDEEM_RETRIES: [u64; 5] = [2, 4, 8, 16, 30];

/// Redeems an enrollment string through `once`, asked again while the
/// answer says only "not now" (its database is down, or 429): a replacement string
/// answered 429 was dropped for the stored credentials it was given to
/// replace, which the control plane no longer took.
async fn redeem(
    once: &Backend,
    kind: &str,
) -> Result<httvps_wire::enroll::EnrollResponse, BackendError> {
    use httvps_wire::Unavailable;
    let mut pauses = REDEEM_RETRIES.iter();
    loop {
        let e = match once.enroll_as(kind).await {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        // Reached, and told "not now"; one not reached fails at once, as
        // a wrong URL does.
        let not_now = matches!(
            e,
            BackendError::Status { status: 429, .. }
                | BackendError::Unavailable(Unavailable::DatabaseUnavailable)
        );
        match pauses.next() {
            Some(secs) if not_now => {
                tracing::warn!(error = %e, retry_in_secs = secs, "enrollment string not redeemed yet: trying again");
                tokio::time::sleep(std::time::Duration::from_secs(*secs)).await;
            }
            _ => return Err(e),
        }
    }
}

/// The enrollment string in `{prefix}_ENROLL`, decoded, for a machine of
/// `kind`.
fn read_enrollment(raw: &str, kind: &str, prefix: &str) -> anyhow::Result<Enrollment> {
    let e = Enrollment::decode(raw).map_err(|why| anyhow::anyhow!("{prefix}_ENROLL: {why}"))?;
    anyhow::ensure!(
        e.kind == kind,
        "{prefix}_ENROLL: this string enrolls a {}, not a {kind}",
        e.kind
    );
    Ok(e)
}

/// A control-plane client with the resolved credentials. With `check`, an
/// enrollment string is only read, not redeemed.
pub async fn resolve(s: Sources<'_>, check: bool) -> anyhow::Result<Backend> {
    let p = s.prefix;
    // Said as itself, whichever way the credentials come.
    if s.link.ca_file.is_some() {
        s.link
            .client_config()
            .with_context(|| format!("{p}_BACKEND_CA (--backend-ca)"))?;
    }
    if let Some(token) = s.token {
        // A string beside a token is read, so a damaged or wrong one is
        // named, and said to go unused: the token is what connects.
        if let Some(raw) = s.enroll.as_deref() {
            read_enrollment(raw, s.kind, p)?;
            tracing::warn!(
                "{p}_ENROLL is not redeemed: {p}_TOKEN is given, and is what this {} uses",
                s.kind
            );
        }
        let url = s.backend.with_context(|| {
            format!("{p}_BACKEND_URL (--backend) is missing: the control plane's URL")
        })?;
        return Backend::connect(&url, token.expose(), &s.link)
            .with_context(|| format!("{p}_BACKEND_URL"));
    }
    let stored = if s.file.exists() {
        let raw = std::fs::read(s.file)
            .with_context(|| format!("{p}_CREDENTIALS: reading {}", s.file.display()))?;
        let stored: Stored = serde_json::from_slice(&raw)
            .with_context(|| format!("{p}_CREDENTIALS: {} is damaged", s.file.display()))?;
        anyhow::ensure!(
            stored.kind == s.kind,
            "{p}_CREDENTIALS: {} holds a {}'s credentials",
            s.file.display(),
            stored.kind
        );
        // The file stands unless a string it did not come from is given.
        let newer = match (s.enroll.as_deref(), stored.enrollment.as_deref()) {
            (Some(given), Some(had)) => digest(given) != had,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !newer {
            return from_stored(&stored, &s);
        }
        Some(stored)
    } else {
        None
    };
    let raw = s.enroll.clone().with_context(|| {
        format!(
            "{p}_TOKEN (--token) is missing and no credentials are stored in {} \
             ({p}_CREDENTIALS): give this {kind}'s machine token, or an enrollment \
             string in {p}_ENROLL (--enroll): `httvps {kind} add` prints one for a new \
             {kind}, `httvps {kind} rotate` a new one for a registered {kind} whose \
             credentials were lost",
            s.file.display(),
            kind = s.kind
        )
    })?;
    let e = read_enrollment(&raw, s.kind, p)?;
    // As from a stored file: the string's URL is the one its token is
    // issued by; another given beside it is said, not taken.
    if let Some(given) = s.backend.as_deref()
        && given.trim_end_matches('/') != e.url.trim_end_matches('/')
    {
        tracing::warn!(
            given,
            enrolled = %e.url,
            "{p}_BACKEND_URL differs from the control plane the enrollment string names; \
             the string's is used"
        );
    }
    let pin = e
        .pin
        .as_deref()
        .map(Pin::parse)
        .transpose()
        .map_err(|why| anyhow::anyhow!("{p}_ENROLL: the pin {why}"))?;
    let link = Link {
        pin: pin.or(s.link.pin),
        ..s.link.clone()
    };
    let once = Backend::connect(&e.url, e.token.expose(), &link).with_context(|| {
        format!(
            "{p}_ENROLL: the string's control-plane URL (BACKEND_PUBLIC_URL where it was printed; the string is not spent)"
        )
    })?;
    if check {
        return match &stored {
            Some(stored) => from_stored(stored, &s),
            None => Ok(once),
        };
    }
    // Fail before redeeming when the file cannot be written: a redeemed
    // string cannot be used again.
    if let Some(dir) = s.file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{p}_CREDENTIALS: creating {}", dir.display()))?;
    }
    let probe = s.file.with_extension("probe");
    httvps_dataplane::files::write_private(&probe, b"")
        .with_context(|| format!("{p}_CREDENTIALS: {} is not writable", s.file.display()))?;
    let _ = std::fs::remove_file(&probe);
    let url = e.url.clone();
    let answer = match redeem(&once, s.kind).await {
        Ok(answer) => answer,
        // A file written before files remembered their string, or a
        // rotation that cannot be redeemed now: the stored token stands.
        Err(e) => {
            if let Some(mut stored) = stored {
                tracing::warn!(error = %e, file = %s.file.display(),
                    "{p}_ENROLL was not redeemed; using the stored credentials");
                // A spent or retired string stays so: remembered, it is not
                // tried again at the next start.
                if matches!(
                    e,
                    httvps_dataplane::backend::BackendError::Status { status: 401, .. }
                ) {
                    stored.enrollment = Some(digest(&raw));
                    if let Err(e) = store(s.file, &stored) {
                        tracing::warn!(error = %e, "{p}_CREDENTIALS: not updated");
                    }
                }
                return from_stored(&stored, &s);
            }
            return Err(not_redeemed(p, s.kind, &url, &e));
        }
    };
    // A control plane that does not check the kind: its token is not ours
    // to keep.
    anyhow::ensure!(
        answer.kind == s.kind,
        "{p}_ENROLL: the string was a {}'s, not a {}'s: it is spent; print a new one for this machine with `httvps {} rotate <id>`",
        answer.kind,
        s.kind,
        answer.kind
    );
    let stored = Stored {
        kind: s.kind.to_owned(),
        backend: e.url.clone(),
        pin: pin.map(|p| p.to_string()),
        token: answer.token,
        enrollment: Some(digest(&raw)),
    };
    store(s.file, &stored)
        .with_context(|| format!("{p}_CREDENTIALS: writing {}", s.file.display()))?;
    tracing::info!(kind = s.kind, id = %answer.id, name = %answer.name, file = %s.file.display(), "enrolled");
    Backend::connect(&e.url, stored.token.expose(), &link).context("the control plane's URL")
}

/// Why an enrollment string was not redeemed, and what to do: only a
/// refusal spends or retires a string; when the control plane was not
/// reached, or is not at the string's URL, the same string works later.
fn not_redeemed(
    p: &str,
    kind: &str,
    url: &str,
    e: &httvps_dataplane::backend::BackendError,
) -> anyhow::Error {
    use httvps_dataplane::backend::BackendError;
    if matches!(e, BackendError::Status { status: 404, .. }) {
        return anyhow::anyhow!(
            "{p}_ENROLL: {url} has no enrollment route ({e}): the string's URL is not the control plane's base URL; the string is not spent: set BACKEND_PUBLIC_URL to the base URL (no path) and print the string again with `httvps {kind} rotate <id>`"
        );
    }
    if e.is_untrusted() {
        return anyhow::anyhow!(
            "{p}_ENROLL: the control plane's certificate at {url} was not accepted ({e}): the string's host must be one the certificate names, and its pin the certificate's (BACKEND_PUBLIC_URL, BACKEND_TLS_CERT); the string is not spent"
        );
    }
    // Something answered, but not in the scheme asked: plain HTTP where
    // TLS was expected or the other way round, another service's port.
    let said = e.to_string();
    if e.is_outage()
        && [
            "invalid HTTP version",
            "InvalidContentType",
            "corrupt message",
            "wrong version number",
        ]
        .iter()
        .any(|m| said.contains(m))
    {
        return anyhow::anyhow!(
            "{p}_ENROLL: {url} answered, but not as the control plane ({e}): the string's scheme or port is wrong; the string is not spent: set BACKEND_PUBLIC_URL to the control plane's URL and print the string again with `httvps {kind} rotate <id>`"
        );
    }
    if e.is_outage() {
        return anyhow::anyhow!(
            "{p}_ENROLL: the control plane did not answer ({e}); the string is not spent: start again once it answers"
        );
    }
    if matches!(e, BackendError::Status { status: 401, .. }) {
        return anyhow::anyhow!(
            "{p}_ENROLL: the control plane refused the enrollment ({e}); a string works once, until it expires (24 h unless `--ttl-hours` said otherwise): print a new one with `httvps {kind} rotate <id>`"
        );
    }
    if matches!(e, BackendError::Status { status: 403, .. }) {
        return anyhow::anyhow!(
            "{p}_ENROLL: the control plane refused the enrollment ({e}); the string is not spent: a string is for the kind of machine it was printed for (`httvps gateway add` or `httvps node add`)"
        );
    }
    // Any other answer is no refusal of the token: the string stands.
    anyhow::anyhow!(
        "{p}_ENROLL: {url} did not take the enrollment ({e}); the string is not spent: if its URL is not the control plane's base URL, set BACKEND_PUBLIC_URL to it and print the string again with `httvps {kind} rotate <id>`, else start again"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use httvps_dataplane::backend::BackendError;

    #[test]
    fn an_unredeemed_string_says_what_went_wrong_and_what_to_do() {
        let says =
            |e: BackendError| not_redeemed("NODE", "node", "https://cp:8443/api", &e).to_string();
        let missing = says(BackendError::Status {
            status: 404,
            code: "NOT_FOUND".into(),
            message: "route not found".into(),
        });
        assert!(
            missing.contains("not the control plane's base URL") && missing.contains("not spent"),
            "{missing}"
        );
        let tls = says(BackendError::Unreachable(
            "invalid peer certificate: NotValidForName".into(),
        ));
        assert!(
            tls.contains("certificate names") && tls.contains("not spent"),
            "{tls}"
        );
        let plain = says(BackendError::Unreachable(
            "received corrupt message of type InvalidContentType".into(),
        ));
        assert!(
            plain.contains("scheme or port is wrong") && plain.contains("not spent"),
            "{plain}"
        );
        let down = says(BackendError::Unreachable("connection refused".into()));
        assert!(down.contains("start again once it answers"), "{down}");
        let spent = says(BackendError::Status {
            status: 401,
            code: "UNAUTHENTICATED".into(),
            message: String::new(),
        });
        assert!(spent.contains("httvps node rotate"), "{spent}");
        let other = says(BackendError::Status {
            status: 405,
            code: "METHOD_NOT_ALLOWED".into(),
            message: String::new(),
        });
        assert!(other.contains("not spent"), "{other}");
    }
}
