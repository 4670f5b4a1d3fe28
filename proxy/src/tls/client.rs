//! TLS origination: a cluster's rustls client config, and the verifier of
//! mesh peers (chain to the mesh CA, identity instead of host name).

use std::sync::Arc;

use config_model::{ClusterProtocol, ClusterTls, Identity, PemSource};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::certs::{self, CertInfo};
use super::identity::PeerIdentity;
use super::watch::{Live, Sources};

/// A cluster's TLS: the current client config (swapped by a rotation of
/// its files) and the name to send as SNI.
pub struct ClientTls {
    /// The rustls config in service; swapped by a rotation.
    pub live: Live<ClientConfig>,
    /// SNI and the name verified; `None`: the endpoint's host.
    pub server_name: Option<ServerName<'static>>,
    recipe: Recipe,
}

struct Recipe {
    cluster: String,
    path: String,
    spec: ClusterTls,
    identity: Option<Identity>,
    alpn: Vec<Vec<u8>>,
    provider: Arc<CryptoProvider>,
    sessions: Arc<dyn rustls::client::ClientSessionStore>,
}

impl ClientTls {
    pub fn compile(
        cluster: &str,
        path: &str,
        spec: &ClusterTls,
        protocol: ClusterProtocol,
        identity: Option<&Identity>,
    ) -> Result<ClientTls, String> {
        let alpn = match &spec.alpn {
            Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
            None => match protocol {
                ClusterProtocol::Http2 => vec![b"h2".to_vec()],
                _ => Vec::new(),
            },
        };
        let server_name = match &spec.server_name {
            Some(name) => {
                Some(ServerName::try_from(name.clone()).map_err(|e| format!("{path}.server_name: {name:?}: {e}"))?)
            }
            None => None,
        };
        let recipe = Recipe {
            cluster: cluster.to_string(),
            path: path.to_string(),
            spec: spec.clone(),
            identity: identity.cloned(),
            alpn,
            provider: super::provider(&[]).map_err(|e| format!("{path}: {e}"))?,
            sessions: Arc::new(rustls::client::ClientSessionMemoryCache::new(256)),
        };
        let sources = Sources::new(recipe.files());
        Ok(ClientTls { live: Live::new(sources, recipe.build()?), server_name, recipe })
    }

    pub fn rebuild(&self) -> Result<(), String> {
        self.live.replace(self.recipe.build()?);
        Ok(())
    }

    /// The name to send for an endpoint: the configured one, else the
    /// endpoint's host (a host name, or its IP).
    pub fn name_for(&self, host: Option<&str>, ip: std::net::IpAddr) -> ServerName<'static> {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        host.and_then(|host| ServerName::try_from(host.trim_end_matches('.').to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
    }
}

impl Recipe {
    fn files(&self) -> Vec<String> {
        let spec = &self.spec;
        let mut sources: Vec<PemSource> = Vec::new();
        sources.extend(spec.ca.clone());
        sources.extend(spec.cert.clone());
        sources.extend(spec.key.as_ref().map(|k| k.as_pem_source()));
        if spec.mesh {
            if let Some(identity) = &self.identity {
                sources.extend([identity.cert.clone(), identity.key.as_pem_source(), identity.ca.clone()]);
            }
        }
        super::server::files_of(&sources)
    }

    fn build(&self) -> Result<(ClientConfig, Vec<CertInfo>), String> {
        let spec = &self.spec;
        let path = &self.path;
        let used_by = format!("cluster {}", self.cluster);
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{path}: {e}"))?;
        let mut infos = Vec::new();
        let identity = if spec.mesh {
            Some(self.identity.as_ref().ok_or_else(|| format!("{path}.mesh: needs the top-level `identity`"))?)
        } else {
            None
        };
        let ca = match (&spec.ca, identity) {
            (Some(ca), _) => Some(ca.clone()),
            (None, Some(identity)) => Some(identity.ca.clone()),
            (None, None) => None,
        };
        let roots = match &ca {
            Some(ca) => certs::load_roots(ca).map_err(|e| format!("{path}.ca: {e}"))?,
            None => certs::system_roots().map_err(|e| format!("{path}.ca: {e}"))?,
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| format!("{path}.ca: {e}"))?;
        let builder = if spec.mesh {
            let verifier =
                MeshVerifier { webpki, identities: spec.identities.iter().map(|id| id.to_ascii_lowercase()).collect() };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
        } else {
            builder.with_webpki_verifier(webpki)
        };
        let client_cert = match (identity, &spec.cert, &spec.key) {
            (Some(identity), _, _) => Some((identity.cert.clone(), identity.key.clone(), "identity.cert")),
            (None, Some(cert), Some(key)) => Some((cert.clone(), key.clone(), "cert")),
            (None, Some(_), None) => return Err(format!("{path}.key: needed with `cert`")),
            (None, None, Some(_)) => return Err(format!("{path}.cert: needed with `key`")),
            (None, None, None) => None,
        };
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key, field)) => {
                let (certified, info) = certs::certified_key(&cert, &key, &self.provider, &used_by)
                    .map_err(|e| format!("{path}.{field}: {e}"))?;
                infos.push(info);
                builder.with_client_cert_resolver(Arc::new(FixedClientCert(certified)))
            }
        };
        config.alpn_protocols = self.alpn.clone();
        config.resumption = rustls::client::Resumption::store(self.sessions.clone());
        Ok((config, infos))
    }
}

/// Presents one certificate to every server that asks.
#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a mesh peer: its chain must lead to the mesh CA, and instead of
/// the host name, one of its names must be an expected identity.
#[derive(Debug)]
struct MeshVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    identities: Vec<String>,
}

impl ServerCertVerifier for MeshVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain (and validity) before the name, so a
        // name error means the chain is good.
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(verified) if self.identities.is_empty() => Ok(verified),
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                let peer = PeerIdentity::from_der(end_entity)
                    .ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
                if self.identities.is_empty() || self.identities.iter().any(|id| peer.is(id)) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
                }
            }
            Err(error) => Err(error),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
