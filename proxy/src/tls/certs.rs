//! Reading certificates and keys, and checking them before they are used:
//! a chain that is expired, not yet valid, or whose key does not match is
//! refused with a message naming the source, so a bad rotation keeps the
//! previous certificate in service.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use config_model::{KeySource, PemSource};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::identity::PeerIdentity;

/// What `/certs` and the expiry metric show of a certificate in use.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertInfo {
    /// Where it is used, e.g. `listener https` or `identity`.
    pub used_by: String,
    /// `file:/path` or `inline`.
    pub source: String,
    pub subject: String,
    pub names: Vec<String>,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    pub fn seconds_left(&self, now: i64) -> i64 {
        self.not_after - now
    }
}

pub fn describe(source: &PemSource) -> String {
    match source {
        PemSource::File(path) => format!("file:{path}"),
        PemSource::Pem(_) => "inline".into(),
    }
}

pub fn read_pem(source: &PemSource) -> Result<Vec<u8>, String> {
    match source {
        PemSource::File(path) => std::fs::read(path).map_err(|error| format!("{path}: {error}")),
        PemSource::Pem(text) => Ok(text.as_bytes().to_vec()),
    }
}

/// Every certificate in a PEM source; at least one.
pub fn load_chain(source: &PemSource) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(source)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: invalid PEM: {error}", describe(source)))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", describe(source)));
    }
    Ok(chain)
}

pub fn load_key(source: &KeySource) -> Result<PrivateKeyDer<'static>, String> {
    let source = source.as_pem_source();
    let pem = read_pem(&source)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|error| format!("{}: no usable private key: {error}", describe(&source)))
}

/// A trust store from a CA bundle; at least one CA.
pub fn load_roots(source: &PemSource) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(source)? {
        roots.add(cert).map_err(|error| format!("{}: unusable CA certificate: {error}", describe(source)))?;
    }
    Ok(Arc::new(roots))
}

/// The system's trust store (`/etc/ssl/certs` and friends).
pub fn system_roots() -> Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(ToString::to_string).unwrap_or_else(|| "none installed".into());
        return Err(format!("no system CA certificates ({why}); set `ca`"));
    }
    Ok(Arc::new(roots))
}

/// A chain and its key, checked: the key matches the leaf, and the leaf is
/// valid now.
pub fn certified_key(
    cert: &PemSource,
    key: &KeySource,
    provider: &CryptoProvider,
    used_by: &str,
) -> Result<(Arc<CertifiedKey>, CertInfo), String> {
    let chain = load_chain(cert)?;
    let key_der = load_key(key)?;
    let info = inspect(&chain[0], used_by, &describe(cert))?;
    let now = unix_now();
    if info.not_after < now {
        return Err(format!("{}: certificate expired at {}", describe(cert), rfc3339(info.not_after)));
    }
    if info.not_before > now {
        return Err(format!("{}: certificate not valid before {}", describe(cert), rfc3339(info.not_before)));
    }
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| format!("{}: unusable private key: {error}", describe(&key.as_pem_source())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|error| {
        format!("{}: the private key does not belong to the certificate ({error})", describe(&key.as_pem_source()))
    })?;
    Ok((Arc::new(certified), info))
}

/// Subject, names and validity of a certificate.
pub fn inspect(der: &CertificateDer<'_>, used_by: &str, source: &str) -> Result<CertInfo, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| format!("{source}: unreadable certificate: {error}"))?;
    let identity = PeerIdentity::from_parsed(&parsed);
    Ok(CertInfo {
        used_by: used_by.to_string(),
        source: source.to_string(),
        subject: parsed.subject().to_string(),
        names: identity.names().map(str::to_string).collect(),
        serial: parsed.raw_serial_as_string(),
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// The DNS names of a certificate (for SNI selection when `server_names`
/// is not given).
pub fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `2026-12-02T05:08:24Z`, for messages.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = crate::access_log::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_186_904), "2026-12-02T04:48:24Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
