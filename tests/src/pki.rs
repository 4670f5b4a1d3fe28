//! Certificates made at test time with rcgen: CAs, server certificates,
//! mesh identities (osm-edge's `sa.ns.cluster.local` names and SPIFFE URIs),
//! expired ones; and rustls client/server configs built from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    serial: std::sync::atomic::AtomicU64,
}

/// What a leaf certificate says.
#[derive(Default, Clone)]
pub struct Leaf<'a> {
    pub cn: &'a str,
    pub dns: &'a [&'a str],
    pub uris: &'a [&'a str],
    pub ips: &'a [std::net::IpAddr],
    /// Valid in 2019 only.
    pub expired: bool,
}

/// A certificate (leaf only, PEM) and its key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Ca { issuer, serial: std::sync::atomic::AtomicU64::new(1) }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn issue(&self, leaf: &Leaf<'_>) -> Issued {
        let mut params =
            CertificateParams::new(leaf.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).expect("leaf params");
        for uri in leaf.uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into().expect("URI SAN")));
        }
        for ip in leaf.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        if !leaf.cn.is_empty() {
            params.distinguished_name.push(DnType::CommonName, leaf.cn);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number =
            Some(self.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed).wrapping_add(1000).into());
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A server certificate for these DNS names (the first is the CN).
    pub fn server(&self, names: &[&str]) -> Issued {
        self.issue(&Leaf { cn: names[0], dns: names, ips: &["127.0.0.1".parse().unwrap()], ..Leaf::default() })
    }

    /// A mesh identity as osm-edge issues it: CN and DNS SAN
    /// `sa.ns.cluster.local`, plus the SPIFFE URI.
    pub fn identity(&self, sa: &str, ns: &str) -> Issued {
        let cn = format!("{sa}.{ns}.cluster.local");
        let uri = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
        self.issue(&Leaf { cn: &cn, dns: &[&cn], uris: &[&uri], ..Leaf::default() })
    }
}

impl Issued {
    /// Writes `NAME.crt` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// Replaces the files atomically (write aside, rename over), as
    /// certificate managers do.
    pub fn replace(&self, cert: &Path, key: &Path) {
        for (path, text) in [(key, &self.key_pem), (cert, &self.cert_pem)] {
            let aside = path.with_extension("tmp");
            std::fs::write(&aside, text).expect("write aside");
            std::fs::rename(&aside, path).expect("rename over");
        }
    }

    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()).collect::<Result<_, _>>().expect("PEM")
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM")
    }
}

pub fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    roots
}

/// A client trusting `ca_pem`, optionally presenting `identity`.
pub fn client_config(ca_pem: &str, identity: Option<&Issued>, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots(ca_pem));
    let mut config = match identity {
        Some(issued) => builder.with_client_auth_cert(issued.chain(), issued.key()).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A server presenting `issued`, requiring client certificates of
/// `client_ca` when given.
pub fn server_config(issued: &Issued, client_ca: Option<&str>, alpn: &[&str]) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(ca))).build().expect("client verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(issued.chain(), issued.key()).expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Opens a TLS connection to `addr` asking for `sni`.
pub async fn connect(
    addr: std::net::SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// One HTTP/1.1 GET over a new TLS connection; the status and body, and
/// the subject CN of the certificate the server presented.
pub async fn https_get(
    addr: std::net::SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut tls = connect(addr, sni, config).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // A server may end TLS without close_notify after `connection: close`.
    match tls.read_to_end(&mut response).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(error) => return Err(error),
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}
