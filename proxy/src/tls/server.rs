//! TLS termination: a listener's rustls server config, compiled from its
//! `tls` block, and rebuilt in place when its certificate files change.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use config_model::{ClientAuthMode, Identity, ListenerProtocol, ListenerTls, PemSource, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::certs::{self, CertInfo};
use super::watch::{Live, Sources};
use super::Cidr;

/// Sessions kept for TLS 1.2 resumption by id, per listener.
const SESSION_CACHE: usize = 4096;

/// A listener's TLS: what to do with connections and the current config.
pub struct ServerTls {
    pub handshake_timeout: Duration,
    /// Client addresses that may skip TLS (mixed mode).
    pub plaintext_sources: Box<[Cidr]>,
    /// The rustls config in service; swapped by a rotation.
    pub live: Live<ServerConfig>,
    recipe: Recipe,
}

/// Everything needed to build the rustls config again from its sources.
struct Recipe {
    listener: String,
    path: String,
    spec: ListenerTls,
    identity: Option<Identity>,
    alpn: Vec<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl ServerTls {
    /// `path` is the config path of the `tls` block, for messages.
    pub fn compile(
        listener: &str,
        path: &str,
        spec: &ListenerTls,
        protocol: ListenerProtocol,
        identity: Option<&Identity>,
    ) -> Result<ServerTls, String> {
        let provider = super::provider(&spec.cipher_suites).map_err(|e| format!("{path}.cipher_suites: {e}"))?;
        let alpn = match &spec.alpn {
            Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
            None if matches!(protocol, ListenerProtocol::Auto | ListenerProtocol::Http) => {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            }
            None => Vec::new(),
        };
        let handshake_timeout =
            spec.handshake_timeout.parse().map_err(|e: String| format!("{path}.handshake_timeout: {e}"))?;
        let plaintext_sources = spec
            .plaintext_sources
            .iter()
            .enumerate()
            .map(|(i, text)| text.parse::<Cidr>().map_err(|e| format!("{path}.plaintext_sources[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let recipe = Recipe {
            listener: listener.to_string(),
            path: path.to_string(),
            spec: spec.clone(),
            identity: identity.cloned(),
            alpn,
            provider,
        };
        let sources = Sources::new(recipe.files());
        Ok(ServerTls {
            handshake_timeout,
            plaintext_sources: plaintext_sources.into_boxed_slice(),
            live: Live::new(sources, recipe.build()?),
            recipe,
        })
    }

    /// Re-reads the sources and swaps the new config in; on any error the
    /// config in service stays. Called by the rotation watcher only (one
    /// thread), so rebuilds never race.
    pub fn rebuild(&self) -> Result<(), String> {
        self.live.replace(self.recipe.build()?);
        Ok(())
    }

    pub fn accepts_plaintext_from(&self, ip: IpAddr) -> bool {
        self.plaintext_sources.iter().any(|cidr| cidr.contains(ip))
    }
}

pub(super) fn files_of(sources: &[PemSource]) -> Vec<String> {
    let mut files: Vec<String> = sources
        .iter()
        .filter_map(|source| match source {
            PemSource::File(path) => Some(path.clone()),
            PemSource::Pem(_) => None,
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

impl Recipe {
    /// The files this config is built from (watched for rotation).
    fn files(&self) -> Vec<String> {
        let spec = &self.spec;
        let mut sources: Vec<PemSource> = Vec::new();
        for cert in &spec.certificates {
            sources.push(cert.cert.clone());
            sources.push(cert.key.as_pem_source());
        }
        if let Some(ca) = spec.client_auth.as_ref().and_then(|auth| auth.ca.clone()) {
            sources.push(ca);
        }
        if spec.mesh {
            if let Some(identity) = &self.identity {
                sources.extend([identity.cert.clone(), identity.key.as_pem_source(), identity.ca.clone()]);
            }
        }
        files_of(&sources)
    }

    fn build(&self) -> Result<(ServerConfig, Vec<CertInfo>), String> {
        let spec = &self.spec;
        let path = &self.path;
        let used_by = format!("listener {}", self.listener);
        let mut infos = Vec::new();
        let mut resolver = SniResolver::default();
        if spec.mesh {
            let identity =
                self.identity.as_ref().ok_or_else(|| format!("{path}.mesh: needs the top-level `identity`"))?;
            let (key, info) = certs::certified_key(&identity.cert, &identity.key, &self.provider, &used_by)
                .map_err(|e| format!("identity.cert: {e}"))?;
            resolver.default = Some(key);
            infos.push(info);
        }
        let single = spec.certificates.len() == 1 && !spec.mesh;
        for (i, entry) in spec.certificates.iter().enumerate() {
            let (key, info) = certs::certified_key(&entry.cert, &entry.key, &self.provider, &used_by)
                .map_err(|e| format!("{path}.certificates[{i}]: {e}"))?;
            let names = if entry.server_names.is_empty() {
                certs::dns_names(&key.cert[0])
            } else {
                entry.server_names.iter().map(|n| n.to_ascii_lowercase()).collect()
            };
            for name in names {
                match name.strip_prefix("*.") {
                    Some(suffix) => resolver.wildcard.entry(suffix.to_string()).or_insert_with(|| key.clone()),
                    None => resolver.exact.entry(name).or_insert_with(|| key.clone()),
                };
            }
            if entry.default || single {
                resolver.default = Some(key.clone());
            }
            infos.push(info);
        }
        if resolver.default.is_none() && resolver.exact.is_empty() && resolver.wildcard.is_empty() {
            return Err(format!("{path}: needs `certificates` or `mesh: true`"));
        }

        let versions = versions(spec.min_version, spec.max_version).map_err(|e| format!("{path}: {e}"))?;
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("{path}: {e}"))?;
        let client_auth = match (&spec.client_auth, spec.mesh) {
            (Some(auth), _) => Some((auth.mode, auth.ca.clone())),
            (None, true) => Some((ClientAuthMode::Require, None)),
            (None, false) => None,
        };
        let builder = match client_auth {
            None => builder.with_no_client_auth(),
            Some((mode, ca)) => {
                let ca = match ca {
                    Some(ca) => ca,
                    None => self.identity.as_ref().map(|identity| identity.ca.clone()).ok_or_else(|| {
                        format!("{path}.client_auth.ca: needed (no `identity` to take the mesh CA from)")
                    })?,
                };
                let roots = certs::load_roots(&ca).map_err(|e| format!("{path}.client_auth.ca: {e}"))?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, self.provider.clone());
                let verifier = match mode {
                    ClientAuthMode::Require => verifier,
                    ClientAuthMode::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| format!("{path}.client_auth: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = self.alpn.clone();
        // Every build starts resumption afresh: a session resumed from an
        // older ticket would skip the client-certificate check against the
        // CA bundle now in force (a CA removed by a rotation must stay out).
        if spec.session_resumption {
            config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
            config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
                .map_err(|e| format!("{path}.session_resumption: cannot make a ticket key: {e}"))?;
        } else {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        // Plaintext is handed out as soon as a record is decrypted; the
        // proxy reads in its own sizes.
        config.max_early_data_size = 0;
        Ok((config, infos))
    }
}

pub(super) fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let min = min.unwrap_or(TlsVersion::Tls12);
    let max = max.unwrap_or(TlsVersion::Tls13);
    if min > max {
        return Err("min_version is above max_version".into());
    }
    let mut versions = Vec::new();
    if max >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    Ok(versions)
}

/// Certificates by SNI: exact names, then `*.suffix` for one label, then
/// the default. No match and no default: the handshake fails.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else { return self.default.clone() };
        // rustls hands over the name lowercased and validated.
        if let Some(key) = self.exact.get(name) {
            return Some(key.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return Some(key.clone());
            }
        }
        self.default.clone()
    }
}
