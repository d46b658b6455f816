//! Pebble, the ACME test server (Debian package `pebble`, installed when
//! missing), on 127.0.0.1 (or another local address): its directory over
//! HTTPS with a certificate the test makes, real validation (TLS-ALPN-01 on
//! a port the test names, HTTP-01 on another) of names that
//! `pebble-challtestsrv`'s DNS resolves to one address. Included by path by
//! the tests that need it.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::common::{self, tempdir::TempDir};

/// Installs Pebble with apt-get when it is missing.
pub fn ensure_installed() {
    common::apt_install(
        &["pebble"],
        &[("pebble", "-h"), ("pebble-challtestsrv", "-h")],
    );
}

/// Where and how Pebble validates.
pub struct PebbleOptions {
    /// The address Pebble, its DNS and its management interface listen on
    /// (127.0.0.1 on one host; the ACME host's in a network namespace).
    pub listen: Ipv4Addr,
    /// The address every A query is answered with (the gateway's host).
    pub answer: Ipv4Addr,
    /// The port TLS-ALPN-01 validations connect to (the gateway's).
    pub tls_port: u16,
    /// Lifetime of the certificates it issues, in seconds.
    pub validity_secs: u64,
    /// A command the two are run under (`["ip", "netns", "exec", "acme"]`
    /// to run them in a network namespace); empty: run directly.
    pub exec_prefix: Vec<String>,
}

/// `bin` run under `prefix`.
fn command(prefix: &[String], bin: &str) -> tokio::process::Command {
    match prefix.split_first() {
        None => tokio::process::Command::new(bin),
        Some((first, rest)) => {
            let mut c = tokio::process::Command::new(first);
            c.args(rest).arg(bin);
            c
        }
    }
}

/// A running Pebble with its DNS; both killed (by PID) on drop.
pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The CA (PEM) that signs the directory's HTTPS certificate.
    pub ca: PathBuf,
    /// Pebble's management interface (`/roots/0`: its issuing root).
    pub management: SocketAddr,
    /// Pebble's log (stdout and stderr).
    pub log: PathBuf,
    pebble: tokio::process::Child,
    dns: tokio::process::Child,
    _dir: TempDir,
}

fn free_udp_and_tcp_port() -> u16 {
    loop {
        let p = common::stable_port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn log_file(path: &Path) -> std::process::Stdio {
    std::fs::File::create(path)
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null())
}

impl Pebble {
    /// Starts the DNS and Pebble and waits (bounded) for the directory.
    /// (The ports are probed free on 127.0.0.1: in a network namespace of
    /// its own Pebble has them all.)
    pub async fn start(o: PebbleOptions) -> Pebble {
        ensure_installed();
        httvps_dataplane::tls::install_provider();
        let dir = TempDir::new();
        let (cert, key) = (dir.path().join("pebble.crt"), dir.path().join("pebble.key"));
        let ip = o.listen.to_string();
        httvps_dataplane::tls::ensure_self_signed(&cert, &key, &["localhost", &ip])
            .expect("Pebble's HTTPS certificate");
        let dns_port = free_udp_and_tcp_port();
        let dns_log = dir.path().join("dns.log");
        let dns = command(&o.exec_prefix, "pebble-challtestsrv")
            .args(["-dns01", &format!("{ip}:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("{ip}:{}", common::stable_port())])
            .args(["-defaultIPv4", &o.answer.to_string(), "-defaultIPv6", ""])
            .kill_on_drop(true)
            .stdout(log_file(&dns_log))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv");
        let (api, management) = (common::stable_port(), common::stable_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("{ip}:{api}"),
            "managementListenAddress": format!("{ip}:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": common::stable_port(),
            "tlsPort": o.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": o.validity_secs,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).expect("pebble config");
        let log = dir.path().join("pebble.log");
        let pebble = command(&o.exec_prefix, "pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("{ip}:{dns_port}")])
            // Real validation, at once; no authorization reused (each
            // order is validated); no nonces refused at random.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .kill_on_drop(true)
            .stdout(log_file(&log))
            .stderr(log_file(&dir.path().join("pebble.err")))
            .spawn()
            .expect("pebble");
        let p = Pebble {
            directory: format!("https://{ip}:{api}/dir"),
            ca: cert,
            management: SocketAddr::from((o.listen, management)),
            log,
            pebble,
            dns,
            _dir: dir,
        };
        let client = p.client();
        for _ in 0..200 {
            if let Ok(r) = client.get(&p.directory).send().await
                && r.status().is_success()
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Pebble did not serve its directory:\n{}", p.logs());
    }

    /// An HTTPS client trusting Pebble's own certificate.
    pub fn client(&self) -> reqwest::Client {
        let roots = httvps_dataplane::tls::roots(Some(&self.ca)).expect("roots");
        let tls = tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    /// The root its certificates chain to (PEM), from the management port.
    pub async fn root(&self) -> String {
        let r = self
            .client()
            .get(format!("https://{}/roots/0", self.management))
            .send()
            .await
            .expect("Pebble's root");
        assert!(r.status().is_success(), "/roots/0: {}", r.status());
        r.text().await.expect("root PEM")
    }

    /// What Pebble logged so far.
    pub fn logs(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default());
        s
    }

    /// Kills Pebble and its DNS (by PID) and reaps them.
    pub async fn stop(mut self) {
        let _ = self.pebble.start_kill();
        let _ = self.pebble.wait().await;
        let _ = self.dns.start_kill();
        let _ = self.dns.wait().await;
    }
}
