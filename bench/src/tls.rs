//! TLS for the TLS scenarios: the certificates every peer serves (made at
//! the start of a run with rcgen and written into the run's work directory)
//! and the load generator's TLS client (rustls, aws-lc-rs provider).
//!
//! - The server certificate: one ECDSA P-256 key and a self-signed
//!   certificate for `bench.local` (a DNS SAN, also the SNI the client
//!   sends), served by every peer: `cert.pem`, `key.pem` (PKCS#8) and, for
//!   HAProxy, both in `cert-and-key.pem`.
//! - The mesh: a CA (`mesh/ca.crt`) and two identities it issued, the
//!   outbound sidecar's `bookbuyer.default` and the inbound sidecar's
//!   `bookstore.default` (common name and DNS SAN, plus the SPIFFE URI SAN
//!   `spiffe://cluster.local/ns/default/sa/<name>`).
//!
//! The client offers exactly one protocol version (TLS 1.3), cipher suite
//! (`TLS13_AES_128_GCM_SHA256`), key exchange group (X25519) and ALPN
//! protocol (`http/1.1`), so every peer negotiates the same handshake and
//! does the same cryptographic work per connection; [`probe`] checks that it
//! did. It verifies the server's certificate against the generated one (no
//! "accept anything" verifier; a chain it has verified once is remembered,
//! see [`VerifiedOnce`]) and shares one `ClientConfig` over all its
//! connections.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The server name every peer's certificate carries and the client sends (SNI).
pub const SERVER_NAME: &str = "bench.local";

/// The one ALPN protocol offered and served.
pub const ALPN: &str = "http/1.1";

/// The outbound sidecar's identity (the client side of the mesh hop).
pub const OUTBOUND_IDENTITY: &str = "bookbuyer.default";

/// The inbound sidecar's identity (the server side of the mesh hop).
pub const INBOUND_IDENTITY: &str = "bookstore.default";

/// SPIFFE trust domain of the mesh identities.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The cipher suite the client offers, as rustls names it.
pub const CIPHER_SUITE: &str = "TLS13_AES_128_GCM_SHA256";

/// The key exchange group the client offers.
pub const KX_GROUP: &str = "X25519";

/// The files a TLS-terminating peer serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8).
    pub key: PathBuf,
    /// The certificate followed by the key, in one PEM file (HAProxy's `crt`).
    pub cert_and_key: PathBuf,
}

/// A mesh identity's certificate (PEM, leaf only) and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The mesh CA and the two sidecars' identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshFiles {
    pub ca: PathBuf,
    /// `bookbuyer.default`, the outbound sidecar's.
    pub outbound: IdentityFiles,
    /// `bookstore.default`, the inbound sidecar's.
    pub inbound: IdentityFiles,
}

/// Everything a run's TLS scenarios use, generated once per run.
#[derive(Clone, Debug)]
pub struct Material {
    pub server: ServerFiles,
    /// The server certificate, DER: the client's only trust anchor.
    pub server_cert: CertificateDer<'static>,
    pub mesh: MeshFiles,
}

impl Material {
    /// New keys and certificates, written into `dir` (created if missing):
    /// `cert.pem`, `key.pem`, `cert-and-key.pem`, and `mesh/` with `ca.crt`,
    /// `bookbuyer.crt`, `bookbuyer.key`, `bookstore.crt`, `bookstore.key`.
    pub fn generate(dir: &Path) -> anyhow::Result<Material> {
        let write = |path: PathBuf, text: &str| -> anyhow::Result<PathBuf> {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name = name(SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let server = ServerFiles {
            cert: write(dir.join("cert.pem"), &cert_pem)?,
            key: write(dir.join("key.pem"), &key_pem)?,
            cert_and_key: write(dir.join("cert-and-key.pem"), &format!("{cert_pem}{key_pem}"))?,
        };

        let mesh_dir = dir.join("mesh");
        std::fs::create_dir_all(&mesh_dir)?;
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("edgeplane bench mesh CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);
        let identity = |service_account: &str| -> anyhow::Result<IdentityFiles> {
            let identity = format!("{service_account}.default");
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::new(vec![identity.clone()])?;
            let uri = format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{service_account}");
            params.subject_alt_names.push(SanType::URI(uri.as_str().try_into()?));
            params.distinguished_name = name(&identity);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &ca)?;
            Ok(IdentityFiles {
                cert: write(mesh_dir.join(format!("{service_account}.crt")), &cert.pem())?,
                key: write(mesh_dir.join(format!("{service_account}.key")), &key.serialize_pem())?,
            })
        };
        let mesh = MeshFiles {
            ca: write(mesh_dir.join("ca.crt"), &ca_cert.pem())?,
            outbound: identity("bookbuyer")?,
            inbound: identity("bookstore")?,
        };
        Ok(Material { server, server_cert: cert.der().clone(), mesh })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// The load generator's TLS client: one shared config, SNI `bench.local`.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    resumption: bool,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field("resumption", &self.resumption)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client that trusts `anchor` only. `resumption: false` never resumes
    /// a session (every connection is a full handshake; session tickets the
    /// server sends are dropped).
    pub fn new(anchor: &CertificateDer<'static>, resumption: bool) -> anyhow::Result<TlsClient> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone()).context("the server certificate as a trust anchor")?;
        let provider = Arc::new(provider());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("the certificate verifier")?;
        let verifier = Arc::new(VerifiedOnce { webpki, verified: std::sync::RwLock::new(Vec::new()) });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.as_bytes().to_vec()];
        if !resumption {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(SERVER_NAME)?.to_owned(),
            resumption,
        })
    }

    /// Whether this client resumes sessions.
    pub fn resumes(&self) -> bool {
        self.resumption
    }

    /// The TLS handshake on a connected socket.
    pub async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}

/// rustls' WebPKI verifier, with its certificate checks remembered: a
/// certificate chain that passed them once for a server name passes again
/// when the server sends the same bytes for the same name, without parsing
/// and checking the chain's signature again. The handshake signature
/// (CertificateVerify, the server's proof that it holds the key) is
/// checked on every connection as usual. It keeps the generator's own work
/// per handshake down to what a TLS client cannot avoid, so that it does not
/// set the pace of `tls-handshake` sooner than it must; a chain that differs
/// in any byte is verified in full (and refused if it does not chain to the
/// generated certificate).
#[derive(Debug)]
struct VerifiedOnce {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    /// Server names and chains (end entity first, DER) that passed.
    verified: std::sync::RwLock<Vec<(ServerName<'static>, Vec<Vec<u8>>)>>,
}

impl VerifiedOnce {
    fn seen(
        &self,
        name: &ServerName<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> bool {
        let Ok(verified) = self.verified.read() else { return false };
        verified.iter().any(|(seen_name, chain)| {
            seen_name == name
                && chain.len() == intermediates.len() + 1
                && chain[0] == end_entity.as_ref()
                && chain[1..].iter().zip(intermediates).all(|(a, b)| a.as_slice() == b.as_ref())
        })
    }
}

impl rustls::client::danger::ServerCertVerifier for VerifiedOnce {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.seen(server_name, end_entity, intermediates) {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        let verified = self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if let Ok(mut seen) = self.verified.write() {
            let chain = std::iter::once(end_entity).chain(intermediates).map(|c| c.as_ref().to_vec()).collect();
            seen.push((server_name.to_owned(), chain));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// aws-lc-rs with one cipher suite and one key exchange group.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider, kx_group};
    let mut provider = default_provider();
    provider.cipher_suites = vec![cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![kx_group::X25519];
    provider
}

/// What a handshake settled on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub version: String,
    pub cipher_suite: String,
    pub kx_group: String,
    pub alpn: Option<String>,
}

impl fmt::Display for Negotiated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}, {}, ALPN {}",
            self.version,
            self.cipher_suite,
            self.kx_group,
            self.alpn.as_deref().unwrap_or("none")
        )
    }
}

impl Negotiated {
    /// `Err(reason)` unless this is the handshake every peer must make:
    /// TLS 1.3, the one suite and group offered, ALPN `http/1.1`.
    pub fn check(&self) -> Result<(), String> {
        let expected = Negotiated {
            version: "TLSv1_3".into(),
            cipher_suite: CIPHER_SUITE.into(),
            kx_group: KX_GROUP.into(),
            alpn: Some(ALPN.into()),
        };
        if *self == expected {
            Ok(())
        } else {
            Err(format!("negotiated {self}, expected {expected}"))
        }
    }
}

/// One TLS connection and one GET to `addr`: what the handshake negotiated,
/// once the response has come back 2xx.
pub async fn probe(addr: SocketAddr, client: &TlsClient) -> anyhow::Result<Negotiated> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = client.handshake(tcp).await.context("TLS handshake")?;
    let negotiated = {
        let (_, connection) = tls.get_ref();
        Negotiated {
            version: connection.protocol_version().map_or("none".into(), |v| format!("{v:?}")),
            cipher_suite: connection.negotiated_cipher_suite().map_or("none".into(), |s| format!("{:?}", s.suite())),
            kx_group: connection.negotiated_key_exchange_group().map_or("none".into(), |g| format!("{:?}", g.name())),
            alpn: connection.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    };
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let request = b"GET / HTTP/1.1\r\nhost: bench.local\r\nuser-agent: edgeplane-bench\r\n\r\n";
    let response = crate::load::http1_exchange(&mut tls, request, &mut buf).await.context("GET / over TLS")?;
    if !response.ok {
        bail!("GET / over TLS: not a 2xx response");
    }
    Ok(negotiated)
}

/// Checks that the inbound sidecar at `addr` really is a mesh mTLS
/// listener, so that a pair measured as mTLS is not plaintext in disguise:
/// a plaintext request gets no answer, a TLS client without a certificate
/// is refused, and one with the outbound's identity (`bookbuyer.default`),
/// verifying the server as `bookstore.default` by the mesh CA, is served.
pub async fn check_mesh_inbound(addr: SocketAddr, mesh: &MeshFiles) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::PrivateKeyDer;
    let request = b"GET / HTTP/1.1\r\nhost: bench.local\r\nuser-agent: edgeplane-bench\r\n\r\n";
    let mut buf = bytes::BytesMut::with_capacity(4096);

    let mut plain = TcpStream::connect(addr).await?;
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::load::http1_exchange(&mut plain, request, &mut buf),
    )
    .await;
    if let Ok(Ok(response)) = answer {
        if response.ok {
            bail!("the inbound sidecar served a plaintext request");
        }
    }

    let certs = |path: &Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_file_iter(path)?.collect::<Result<_, _>>().with_context(|| format!("{}", path.display()))
    };
    let mut roots = RootCertStore::empty();
    for ca in certs(&mesh.ca)? {
        roots.add(ca)?;
    }
    let roots = Arc::new(roots);
    let builder = || {
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map(|builder| builder.with_root_certificates(roots.clone()))
    };
    let identity = ServerName::try_from(INBOUND_IDENTITY)?;
    let exchange = |config: ClientConfig| {
        let identity = identity.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = TlsConnector::from(Arc::new(config)).connect(identity, tcp).await?;
            let mut buf = bytes::BytesMut::with_capacity(4096);
            crate::load::http1_exchange(&mut tls, request, &mut buf).await
        }
    };

    let anonymous = builder()?.with_no_client_auth();
    if let Ok(response) = exchange(anonymous).await {
        bail!("the inbound sidecar served a client without a certificate (status ok: {})", response.ok);
    }
    let key = PrivateKeyDer::from_pem_file(&mesh.outbound.key).context("the outbound's key")?;
    let outbound = builder()?.with_client_auth_cert(certs(&mesh.outbound.cert)?, key)?;
    match exchange(outbound).await {
        Ok(response) if response.ok => Ok(()),
        Ok(_) => bail!("the inbound sidecar answered {OUTBOUND_IDENTITY} with a non-2xx status"),
        Err(error) => bail!("mTLS as {OUTBOUND_IDENTITY} to the inbound sidecar failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_is_written_and_parses() {
        let dir = tempfile::tempdir().unwrap();
        let material = Material::generate(dir.path()).unwrap();
        for path in [
            &material.server.cert,
            &material.server.key,
            &material.server.cert_and_key,
            &material.mesh.ca,
            &material.mesh.outbound.cert,
            &material.mesh.outbound.key,
            &material.mesh.inbound.cert,
            &material.mesh.inbound.key,
        ] {
            assert!(path.starts_with(dir.path()), "{}", path.display());
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}: {text}", path.display());
        }
        assert_eq!(material.server.cert, dir.path().join("cert.pem"));
        assert_eq!(material.server.key, dir.path().join("key.pem"));
        let combined = std::fs::read_to_string(&material.server.cert_and_key).unwrap();
        assert!(combined.contains("BEGIN CERTIFICATE") && combined.contains("BEGIN PRIVATE KEY"));
        // The client accepts the certificate as its trust anchor.
        let client = TlsClient::new(&material.server_cert, false).unwrap();
        assert!(!client.resumes());
    }

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::ServerConfig;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path).unwrap().map(Result::unwrap).collect()
    }

    fn key(path: &Path) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(path).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// A TLS server on loopback that answers one request per connection.
    async fn serve(config: ServerConfig) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(&crate::upstream::http1_response(b"hello", false)).await;
                    let _ = tls.flush().await;
                });
            }
        });
        addr
    }

    fn server_config() -> rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier> {
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
    }

    /// The client verifies the generated certificate, sends SNI, and makes
    /// the one handshake [`Negotiated::check`] wants.
    #[test]
    fn the_client_verifies_and_negotiates_with_a_tls_server() {
        let dir = tempfile::tempdir().unwrap();
        let material = Material::generate(dir.path()).unwrap();
        let mut config = server_config()
            .with_no_client_auth()
            .with_single_cert(certs(&material.server.cert), key(&material.server.key))
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        runtime().block_on(async {
            let addr = serve(config).await;
            for resume in [true, false] {
                let client = TlsClient::new(&material.server_cert, resume).unwrap();
                let negotiated = probe(addr, &client).await.unwrap();
                assert_eq!(negotiated.check(), Ok(()), "{negotiated}");
            }
            // A certificate of another run is not trusted, the second time either.
            let other = Material::generate(&dir.path().join("other")).unwrap();
            let stranger = TlsClient::new(&other.server_cert, false).unwrap();
            for _ in 0..2 {
                let error = probe(addr, &stranger).await.unwrap_err();
                assert!(format!("{error:#}").contains("certificate"), "{error:#}");
            }
        });
    }

    /// [`check_mesh_inbound`] passes a real mTLS server and fails a
    /// plaintext one and one that takes clients without certificates.
    #[test]
    fn mesh_inbound_check() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = Material::generate(dir.path()).unwrap().mesh;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certs(&mesh.ca));
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let strict = server_config()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&mesh.inbound.cert), key(&mesh.inbound.key))
            .unwrap();
        let lax = server_config()
            .with_no_client_auth()
            .with_single_cert(certs(&mesh.inbound.cert), key(&mesh.inbound.key))
            .unwrap();
        runtime().block_on(async {
            let strict = serve(strict).await;
            check_mesh_inbound(strict, &mesh).await.unwrap();
            let lax = serve(lax).await;
            let error = check_mesh_inbound(lax, &mesh).await.unwrap_err();
            assert!(error.to_string().contains("without a certificate"), "{error:#}");
            let plaintext = crate::upstream::Upstream::start(crate::upstream::UpstreamKind::Http1, 8).await.unwrap();
            let error = check_mesh_inbound(plaintext.addr(), &mesh).await.unwrap_err();
            assert!(error.to_string().contains("plaintext"), "{error:#}");
        });
    }

    /// The mesh identities are what a rustls mTLS server and client accept:
    /// the inbound's certificate for `bookstore.default`, the outbound's as a
    /// client certificate of the mesh CA.
    #[test]
    fn mesh_identities_make_an_mtls_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = Material::generate(dir.path()).unwrap().mesh;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certs(&mesh.ca));
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
        let server = server_config()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&mesh.inbound.cert), key(&mesh.inbound.key))
            .unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&mesh.outbound.cert), key(&mesh.outbound.key))
            .unwrap();
        runtime().block_on(async {
            let addr = serve(server).await;
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from(INBOUND_IDENTITY).unwrap();
            let mut tls = TlsConnector::from(Arc::new(client)).connect(name, tcp).await.unwrap();
            let mut buf = bytes::BytesMut::new();
            let response = crate::load::http1_exchange(&mut tls, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", &mut buf).await;
            assert!(response.unwrap().ok);
            let peer = tls.get_ref().1.peer_certificates().unwrap();
            assert_eq!(peer[0], certs(&mesh.inbound.cert)[0]);
        });
    }

    /// The remembered chains: only the same bytes for the same name pass
    /// without a full check.
    #[test]
    fn verified_chains_are_remembered_exactly() {
        use rustls::client::danger::ServerCertVerifier as _;
        let dir = tempfile::tempdir().unwrap();
        let material = Material::generate(dir.path()).unwrap();
        let other = Material::generate(&dir.path().join("other")).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(material.server_cert.clone()).unwrap();
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
            .build()
            .unwrap();
        let verifier = VerifiedOnce { webpki, verified: std::sync::RwLock::new(Vec::new()) };
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let verify = |cert: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], name: &ServerName<'_>| {
            verifier.verify_server_cert(cert, intermediates, name, &[], now).is_ok()
        };
        assert!(!verifier.seen(&name, &material.server_cert, &[]));
        assert!(verify(&material.server_cert, &[], &name));
        assert!(verifier.seen(&name, &material.server_cert, &[]));
        assert!(verify(&material.server_cert, &[], &name));
        assert_eq!(verifier.verified.read().unwrap().len(), 1);
        // Another name, another certificate, extra certificates: checked in full.
        let wrong_name = ServerName::try_from("other.local").unwrap();
        assert!(!verifier.seen(&wrong_name, &material.server_cert, &[]));
        assert!(!verify(&material.server_cert, &[], &wrong_name));
        assert!(!verify(&other.server_cert, &[], &name));
        assert!(!verifier.seen(&name, &material.server_cert, std::slice::from_ref(&other.server_cert)));
        assert_eq!(verifier.verified.read().unwrap().len(), 1);
    }

    #[test]
    fn negotiation_check() {
        let good = Negotiated {
            version: "TLSv1_3".into(),
            cipher_suite: CIPHER_SUITE.into(),
            kx_group: KX_GROUP.into(),
            alpn: Some("http/1.1".into()),
        };
        assert_eq!(good.check(), Ok(()));
        let h2 = Negotiated { alpn: Some("h2".into()), ..good.clone() };
        assert!(h2.check().unwrap_err().contains("ALPN h2"));
        assert!(Negotiated { alpn: None, ..good }.check().is_err());
    }
}
