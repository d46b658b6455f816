//! The certificates of the topology: a private CA that signs the control
//! plane's certificate (gateways and nodes pin it), and the gateway's
//! certificate with what a client trusts it by.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use httvps_dataplane::link::Pin;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A private CA: its PEM file, its pin, and what signs leaves.
pub struct Ca {
    /// The CA certificate (PEM).
    pub pem: PathBuf,
    /// `sha256:` of the CA certificate: what enrollment strings carry.
    pub pin: Pin,
    issuer: Issuer<'static, KeyPair>,
}

/// Makes a CA called `name`, its certificate written to `dir/ca.pem`.
pub fn ca(name: &str, dir: &Path) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA");
    let pem = dir.join("ca.pem");
    std::fs::write(&pem, cert.pem()).expect("writing the CA");
    Ca {
        pem,
        pin: Pin::of(cert.der()),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate chain (leaf, then the CA) and its key, as files.
pub struct Leaf {
    /// The chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// Issues a leaf for `addrs` signed by `ca`, written as `dir/<stem>.crt`
/// (the leaf, then the CA: the chain's end is what `httvps gateway add`
/// pins by default) and `dir/<stem>.key`.
pub fn leaf(ca: &Ca, addrs: &[Ipv4Addr], dir: &Path, stem: &str) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let names = addrs.iter().map(ToString::to_string).collect::<Vec<_>>();
    let params = CertificateParams::new(names).expect("params");
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    let ca_pem = std::fs::read_to_string(&ca.pem).expect("CA file");
    let out = Leaf {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&out.cert, format!("{}{ca_pem}", cert.pem())).expect("chain");
    std::fs::write(&out.key, key.serialize_pem()).expect("key");
    out
}

/// How the gateway gets its certificate, and how clients trust it.
pub struct GatewayTls {
    /// The `httvps-relay gateway` flags that give it its certificate.
    pub args: Vec<String>,
    /// The certificate a client adds to its trusted roots for the gateway
    /// (`--ca-cert` of our client, `cert=` of v2ray-plugin).
    pub trust: PathBuf,
}

/// The gateway's certificate for its public address `public`: here a leaf
/// of the private CA, given as files. This is the one place to change for
/// a certificate the gateway obtains itself from an ACME server (Pebble):
/// the flags become `--acme-domain` and its directory, and `trust` the
/// ACME server's root.
pub fn gateway_tls(ca: &Ca, public: Ipv4Addr, dir: &Path) -> GatewayTls {
    let files = leaf(ca, &[public], dir, "gateway");
    GatewayTls {
        args: vec![
            "--cert".into(),
            files.cert.display().to_string(),
            "--key".into(),
            files.key.display().to_string(),
        ],
        trust: ca.pem.clone(),
    }
}
