//! Certificates by ACME (RFC 8555) for the gateway's own names: an account
//! and a certificate kept in a cache directory, ordered when missing, when
//! the names change or once two thirds of the lifetime have passed (a
//! restart orders nothing while the cached one is good), validated by
//! TLS-ALPN-01 (RFC 8737) on the gateway's own TLS port, and swapped in
//! through [`CertFiles`] so open tunnels keep running.
//!
//! Cache layout (`--acme-cache`): `account.json` (the account key and URL,
//! with the directory it belongs to), `cert.pem` (the chain) and `key.pem`,
//! all owner-only.

mod http;
pub mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{DnsName, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::certs::CertFiles;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The first wait after a failed order; doubled up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// The longest wait between failed orders.
pub const MAX_RETRY: Duration = Duration::from_secs(3600);
/// The longest sleep before the held certificate is looked at again.
const LOOK_EVERY: Duration = Duration::from_secs(3600);

/// ACME settings of a gateway.
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// The names the certificate is for (DNS names resolving to this
    /// gateway, port 443 or the port the ACME server validates on).
    pub domains: Vec<String>,
    /// The ACME directory URL (https).
    pub directory: String,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    /// The cache directory (account, certificate, key).
    pub cache: PathBuf,
    /// Extra trusted CA (PEM) for the directory's HTTPS (a private ACME
    /// server).
    pub directory_ca: Option<PathBuf>,
}

/// The setting a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// [`AcmeOptions::domains`].
    Domains,
    /// [`AcmeOptions::directory`].
    Directory,
    /// [`AcmeOptions::contact`].
    Contact,
    /// [`AcmeOptions::directory_ca`].
    DirectoryCa,
}

impl AcmeOptions {
    /// Checks the settings: names that an ACME server can validate by
    /// TLS-ALPN-01, an https directory, `mailto:` contacts, a readable CA
    /// file; an error says which setting is wrong.
    pub fn validate(&self) -> Result<(), (Setting, anyhow::Error)> {
        let at = |s: Setting| move |e: anyhow::Error| (s, e);
        validate_domains(&self.domains).map_err(at(Setting::Domains))?;
        let url = url::Url::parse(&self.directory)
            .map_err(|e| anyhow::anyhow!("{:?} is not a URL ({e})", self.directory))
            .map_err(at(Setting::Directory))?;
        if url.scheme() != "https" {
            return Err((
                Setting::Directory,
                anyhow::anyhow!("{}: an ACME directory is served over https", self.directory),
            ));
        }
        for c in &self.contact {
            if !c.starts_with("mailto:") || c.len() <= "mailto:".len() {
                return Err((
                    Setting::Contact,
                    anyhow::anyhow!("{c:?}: a contact is a mailto: URL"),
                ));
            }
        }
        if let Some(ca) = &self.directory_ca {
            crate::tls::roots(Some(ca)).map_err(at(Setting::DirectoryCa))?;
        }
        Ok(())
    }
}

fn validate_domains(domains: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(!domains.is_empty(), "no domain given");
    for d in domains {
        anyhow::ensure!(
            !d.starts_with("*."),
            "{d:?}: wildcard names cannot be validated by TLS-ALPN-01"
        );
        anyhow::ensure!(
            d.parse::<std::net::IpAddr>().is_err(),
            "{d:?}: an IP address, not a DNS name"
        );
        DnsName::try_from(d.as_str()).map_err(|_| anyhow::anyhow!("{d:?} is not a DNS name"))?;
        anyhow::ensure!(d.contains('.'), "{d:?} is not a fully qualified name");
    }
    Ok(())
}

/// The ACME task of a gateway.
pub struct Acme {
    opts: AcmeOptions,
    files: CertFiles,
}

#[derive(Serialize, Deserialize)]
struct CachedAccount {
    directory: String,
    credentials: AccountCredentials,
}

impl Acme {
    /// Checks `opts`, creates the cache directory (with `create`), and
    /// returns the task with the gateway's acceptor: it serves the cached
    /// certificate at once when there is one, and answers the validations
    /// of the task.
    pub fn prepare(
        opts: AcmeOptions,
        create: bool,
    ) -> anyhow::Result<(Acme, CertFiles, TlsAcceptor)> {
        opts.validate().map_err(|(_, e)| e)?;
        if create {
            std::fs::create_dir_all(&opts.cache)
                .with_context(|| format!("creating {}", opts.cache.display()))?;
        }
        let (files, acceptor) =
            CertFiles::acme_acceptor(&opts.cache.join("cert.pem"), &opts.cache.join("key.pem"))?;
        Ok((
            Acme {
                opts,
                files: files.clone(),
            },
            files,
            acceptor,
        ))
    }

    /// Runs the task until aborted: start it once the gateway listens (the
    /// ACME server validates on its port).
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    fn held(&self) -> Option<plan::Held> {
        if !self.files.has_pair() {
            return None;
        }
        let pem = std::fs::read(self.files.cert_path()).ok()?;
        plan::held_of_pem(&pem).ok()
    }

    async fn run(self) {
        let mut retry = FIRST_RETRY;
        loop {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            match plan::next(now, self.held().as_ref(), &self.opts.domains) {
                plan::Next::RenewIn(wait) => tokio::time::sleep(wait.min(LOOK_EVERY)).await,
                plan::Next::Order => {
                    tracing::info!(domains = ?self.opts.domains, directory = %self.opts.directory, "ordering a certificate");
                    match self.obtain().await {
                        Ok(held) => {
                            retry = FIRST_RETRY;
                            tracing::info!(
                                domains = ?held.names,
                                not_after = held.not_after,
                                renew_at = plan::renew_at(held.not_before, held.not_after),
                                "ACME certificate in use"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(
                                error = format!("{e:#}"),
                                retry_in_secs = retry.as_secs(),
                                "ACME order failed; the certificate in use (if any) stays"
                            );
                            tokio::time::sleep(retry).await;
                            retry = (retry * 2).min(MAX_RETRY);
                        }
                    }
                }
            }
        }
    }

    fn account_file(&self) -> PathBuf {
        self.opts.cache.join("account.json")
    }

    async fn account(&self) -> anyhow::Result<Account> {
        let http = || http::Http::new(self.opts.directory_ca.as_deref());
        let cached = std::fs::read(self.account_file())
            .ok()
            .and_then(|b| serde_json::from_slice::<CachedAccount>(&b).ok())
            .filter(|c| c.directory == self.opts.directory);
        if let Some(c) = cached {
            return Account::builder_with_http(Box::new(http()?))
                .from_credentials(c.credentials)
                .await
                .context("restoring the cached ACME account");
        }
        let contact: Vec<&str> = self.opts.contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(Box::new(http()?))
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.opts.directory.clone(),
                None,
            )
            .await
            .with_context(|| format!("creating an ACME account at {}", self.opts.directory))?;
        let json = serde_json::to_vec_pretty(&CachedAccount {
            directory: self.opts.directory.clone(),
            credentials,
        })?;
        replace_private(&self.account_file(), &json)?;
        tracing::info!(account = account.id(), "ACME account created");
        Ok(account)
    }

    /// One order: challenges answered, certificate fetched, written to the
    /// cache and swapped in.
    async fn obtain(&self) -> anyhow::Result<plan::Held> {
        let account = self.account().await?;
        let result = self.order(&account).await;
        if let Err(e) = &result
            && let Some(instant_acme::Error::Api(p)) = e.downcast_ref::<instant_acme::Error>()
            && p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
        {
            // The server forgot the account (a test server restarted):
            // the next attempt creates one.
            let _ = std::fs::remove_file(self.account_file());
        }
        result
    }

    async fn order(&self, account: &Account) -> anyhow::Result<plan::Held> {
        let ids: Vec<Identifier> = self
            .opts
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut answered = Vec::new();
        let mut authorizations = order.authorizations();
        let mut outcome = Ok(());
        while let Some(a) = authorizations.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    outcome = Err(anyhow::anyhow!("authorization {other:?}"));
                    break;
                }
            }
            let Some(mut challenge) = a.challenge(ChallengeType::TlsAlpn01) else {
                outcome = Err(anyhow::anyhow!(
                    "the ACME server offers no tls-alpn-01 challenge"
                ));
                break;
            };
            let Identifier::Dns(name) = challenge.identifier().identifier.clone() else {
                outcome = Err(anyhow::anyhow!("an identifier that is not a DNS name"));
                break;
            };
            let digest = challenge.key_authorization().digest();
            self.files
                .set_challenge(&name, Some(challenge_cert(&name, digest.as_ref())?));
            answered.push(name);
            if let Err(e) = challenge.set_ready().await {
                outcome = Err(e.into());
                break;
            }
        }
        let polled = match outcome {
            Ok(()) => order
                .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(120)))
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        for name in &answered {
            self.files.set_challenge(name, None);
        }
        let status = polled?;
        if status != OrderStatus::Ready {
            return Err(anyhow::anyhow!(
                "order {status:?}: {}",
                validation_errors(&mut order).await
            ));
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order
            .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(120)))
            .await?;
        let held = plan::held_of_pem(chain_pem.as_bytes()).context("the issued certificate")?;
        // Key first: until the chain follows, the pair does not match and
        // the watcher keeps the one in use.
        replace_private(self.files.key_path(), key_pem.as_bytes())?;
        replace_private(self.files.cert_path(), chain_pem.as_bytes())?;
        self.files
            .reload()
            .context("loading the issued certificate")?;
        Ok(held)
    }
}

/// What the server said of the failed challenges of `order`.
async fn validation_errors(order: &mut instant_acme::Order) -> String {
    let mut said = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(a)) = authorizations.next().await {
        for c in &a.challenges {
            if let Some(p) = &c.error {
                said.push(format!("{}: {p}", a.identifier()));
            }
        }
    }
    if said.is_empty() {
        "no detail from the server".to_owned()
    } else {
        said.join("; ")
    }
}

/// The TLS-ALPN-01 certificate for `name`: self-signed, with the critical
/// acmeIdentifier extension holding the key authorization's SHA-256.
fn challenge_cert(name: &str, digest: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let key = rcgen::KeyPair::generate().context("challenge key")?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).context("challenge name")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).context("challenge certificate")?;
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .context("challenge key")?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Writes `bytes` to `path` (owner-only) through a temporary file and a
/// rename: readers see the old content or the new, never a part.
fn replace_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    crate::files::write_private(&tmp, bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> AcmeOptions {
        AcmeOptions {
            domains: vec!["gw1.example.com".to_owned()],
            directory: LETS_ENCRYPT.to_owned(),
            contact: vec!["mailto:ops@example.com".to_owned()],
            cache: PathBuf::from("acme"),
            directory_ca: None,
        }
    }

    #[test]
    fn settings_an_acme_server_cannot_use_are_refused() {
        assert!(opts().validate().is_ok());
        let bad = |f: &dyn Fn(&mut AcmeOptions)| {
            let mut o = opts();
            f(&mut o);
            o.validate().err().map(|(s, _)| s)
        };
        let domains = Some(Setting::Domains);
        assert_eq!(bad(&|o| o.domains.clear()), domains);
        assert_eq!(bad(&|o| o.domains = vec!["*.example.com".into()]), domains);
        assert_eq!(bad(&|o| o.domains = vec!["192.0.2.1".into()]), domains);
        assert_eq!(bad(&|o| o.domains = vec!["not a name".into()]), domains);
        assert_eq!(bad(&|o| o.domains = vec!["localhost".into()]), domains);
        let directory = Some(Setting::Directory);
        assert_eq!(
            bad(&|o| o.directory = "http://acme.example/dir".into()),
            directory
        );
        assert_eq!(bad(&|o| o.directory = "not a url".into()), directory);
        assert_eq!(
            bad(&|o| o.contact = vec!["ops@example.com".into()]),
            Some(Setting::Contact)
        );
        assert_eq!(
            bad(&|o| o.directory_ca = Some("/nonexistent/ca.pem".into())),
            Some(Setting::DirectoryCa)
        );
    }

    #[test]
    fn a_challenge_certificate_names_the_domain_and_carries_the_digest() {
        crate::tls::install_provider();
        let digest = [7u8; 32];
        let ck = challenge_cert("gw1.example.com", &digest).expect("challenge");
        let der = ck.cert.first().expect("cert");
        let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // An OCTET STRING of the 32 bytes.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        let held = plan::held_of_der(der).expect("held");
        assert_eq!(held.names, vec!["gw1.example.com".to_owned()]);
    }
}
