//! TLS: termination (SNI certificates, ALPN, client certificates), passthrough
//! by SNI, origination, mesh identities and rotation of certificate files.
//!
//! rustls with the aws-lc-rs provider; see docs/ARCHITECTURE.md ("TLS") for
//! the measurement behind the choice.

pub mod certs;
pub mod client;
pub mod client_hello;
pub mod identity;
pub mod server;
pub mod watch;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use config_model::Cidr;
pub use identity::{AllowList, PeerIdentity};

/// What a client connection established beyond its address, for routing
/// and logs: its TLS handshake's facts and, on a transparent listener, where
/// it was going before it was intercepted.
#[derive(Debug, Default)]
pub struct ConnFacts {
    /// TLS was terminated here (`https` in forwarding headers).
    pub terminated: bool,
    /// The SNI the client sent (lowercase).
    pub sni: Option<Box<str>>,
    /// From the verified client certificate.
    pub peer: Option<PeerIdentity>,
    /// The original destination (`SO_ORIGINAL_DST`) on a transparent listener.
    pub destination: Option<std::net::SocketAddr>,
    /// The client's address, for `match.source`: set when some route of the
    /// listener has a source criterion.
    pub source: Option<std::net::IpAddr>,
}

impl ConnFacts {
    pub fn scheme(&self) -> &'static str {
        if self.terminated {
            "https"
        } else {
            "http"
        }
    }
}

/// The crypto provider, with the cipher suites restricted to `names` (IANA
/// names, e.g. `TLS13_AES_128_GCM_SHA256`) when any are given.
pub fn provider(names: &[String]) -> Result<Arc<CryptoProvider>, String> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !names.is_empty() {
        let mut chosen = Vec::new();
        for name in names {
            let suite = provider
                .cipher_suites
                .iter()
                .find(|suite| format!("{:?}", suite.suite()).eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    let known: Vec<String> =
                        provider.cipher_suites.iter().map(|suite| format!("{:?}", suite.suite())).collect();
                    format!("unknown cipher suite {name:?} (known: {})", known.join(", "))
                })?;
            chosen.push(*suite);
        }
        provider.cipher_suites = chosen;
    }
    Ok(Arc::new(provider))
}

/// A short metric reason for a failed handshake.
pub fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::{AlertDescription, CertificateError, Error};
    let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed",
            _ => "io_error",
        };
    };
    match tls {
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            "not_tls"
        }
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "client_certificate_expired"
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "client_certificate_untrusted",
        Error::InvalidCertificate(_) => "client_certificate_invalid",
        Error::General(message) if message.contains("no server certificate") => "unknown_server_name",
        Error::AlertReceived(AlertDescription::UnknownCA | AlertDescription::BadCertificate) => {
            "client_refused_certificate"
        }
        Error::AlertReceived(_) => "alert_received",
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "incompatible",
        _ => "handshake_error",
    }
}

/// Every reason [`handshake_failure_reason`] gives, plus the proxy's own.
pub const HANDSHAKE_RESULTS: &[&str] = &[
    "ok",
    "timeout",
    "closed",
    "io_error",
    "not_tls",
    "no_client_certificate",
    "client_certificate_expired",
    "client_certificate_untrusted",
    "client_certificate_invalid",
    "unknown_server_name",
    "client_refused_certificate",
    "alert_received",
    "incompatible",
    "handshake_error",
    "plaintext",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_their_addresses() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn cipher_suites_are_chosen_by_name() {
        let provider = provider(&["TLS13_AES_128_GCM_SHA256".into()]).unwrap();
        assert_eq!(provider.cipher_suites.len(), 1);
        let error = provider_error(&["TLS_NOPE".into()]);
        assert!(error.contains("unknown cipher suite \"TLS_NOPE\""), "{error}");
    }

    fn provider_error(names: &[String]) -> String {
        match provider(names) {
            Ok(_) => panic!("accepted"),
            Err(error) => error,
        }
    }
}
