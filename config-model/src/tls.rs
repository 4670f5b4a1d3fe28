//! TLS settings: listener termination and passthrough, cluster origination,
//! the proxy's mesh identity and identity-based access control.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};

use crate::values::Duration;

/// PEM text: a file (re-read when it changes, so certificates rotate without
/// a restart) or inline.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PemSource {
    /// Path of a PEM file.
    File(String),
    /// PEM text.
    Pem(String),
}

/// A private key in PEM (PKCS#8, PKCS#1 or SEC1): a file or inline. Inline
/// keys are never shown by `/config`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// Path of a PEM file.
    File(String),
    /// PEM text.
    Pem(String),
}

impl Serialize for KeySource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            KeySource::File(path) => PemSource::File(path.clone()).serialize(serializer),
            KeySource::Pem(_) => PemSource::Pem("(redacted)".into()).serialize(serializer),
        }
    }
}

impl KeySource {
    pub fn as_pem_source(&self) -> PemSource {
        match self {
            KeySource::File(path) => PemSource::File(path.clone()),
            KeySource::Pem(text) => PemSource::Pem(text.clone()),
        }
    }
}

/// This proxy's mesh identity: the certificate it presents to mesh peers
/// (inbound `tls.mesh` listeners and outbound `tls.mesh` clusters) and the
/// mesh CA it trusts them by. The identity is the certificate's SPIFFE URI
/// SAN (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`,
/// read as `<service account>.<namespace>`), its DNS SANs and its common
/// name, as osm-edge issues them (`<sa>.<ns>.<trust domain>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Certificate chain (leaf first).
    pub cert: PemSource,
    /// Private key of the leaf certificate.
    pub key: KeySource,
    /// Mesh CA bundle: the trust anchors for peer certificates.
    pub ca: PemSource,
}

/// TLS protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// What a TLS listener does with the connections it accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Terminate TLS here and serve the decrypted traffic (HTTP, TCP or MQTT).
    #[default]
    Terminate,
    /// Do not decrypt: read the ClientHello's server name, route on it
    /// (`match.sni`) and relay the TLS bytes as they are.
    Passthrough,
}

/// TLS on a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// `terminate` (default) or `passthrough`.
    #[serde(default)]
    pub mode: TlsMode,
    /// Server certificates, chosen by the client's SNI. With one certificate
    /// it serves every connection; with several, the one marked `default`
    /// serves clients whose SNI matches none (or who send none), and without
    /// a default such clients are refused (`unrecognized_name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<ServerCertificate>,
    /// Sidecar mTLS: serve the proxy's `identity` certificate and require a
    /// client certificate issued by the mesh CA (`identity.ca`). The peer's
    /// identity is then available to `access` rules and the access log.
    #[serde(default)]
    pub mesh: bool,
    /// ALPN protocols offered, in order of preference. Default: `[h2,
    /// http/1.1]` on `auto` and `http` listeners, none otherwise. A
    /// negotiated `h2` or `http/1.1` decides the protocol; without ALPN the
    /// decrypted bytes go through protocol detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
    /// Lowest TLS version accepted. Default `1.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
    /// Highest TLS version accepted. Default `1.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<TlsVersion>,
    /// Cipher suites allowed, by their IANA names (e.g.
    /// `TLS13_AES_128_GCM_SHA256`, `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`).
    /// Default: the provider's safe defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// Session resumption (TLS 1.3 tickets, TLS 1.2 session ids).
    #[serde(default = "tls_defaults::yes")]
    pub session_resumption: bool,
    /// Client certificates: who must present one and which CA they chain to.
    /// `mesh: true` implies `{ mode: require }` with the mesh CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// Mixed mode (osm-edge's `SourceIPRanges`): clients from these CIDRs
    /// may also connect in plaintext (a connection whose first byte is not a
    /// TLS handshake is served unencrypted, without a peer identity). Others
    /// must use TLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plaintext_sources: Vec<String>,
    /// Time allowed for the TLS handshake.
    #[serde(default = "tls_defaults::handshake_timeout")]
    pub handshake_timeout: Duration,
}

/// A server certificate and the names it serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerCertificate {
    /// Certificate chain (leaf first).
    pub cert: PemSource,
    /// Private key of the leaf certificate.
    pub key: KeySource,
    /// Server names (SNI) this certificate serves; `*.example.com` covers one
    /// label. Default: the certificate's DNS names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// Serves clients whose SNI matches no certificate, or who send none.
    #[serde(default)]
    pub default: bool,
}

/// Whether clients must present a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// A client without a valid certificate is refused in the handshake.
    #[default]
    Require,
    /// A client may present no certificate (it then has no identity); one
    /// that presents an invalid certificate is refused.
    Optional,
}

/// Client certificate verification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// `require` (default) or `optional`.
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// CA bundle client certificates must chain to. Default: the mesh CA
    /// (`identity.ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PemSource>,
}

/// TLS towards a cluster's endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// Sidecar mTLS: present the proxy's `identity` certificate and verify
    /// the upstream by the mesh CA and its identity (`identities`) instead
    /// of a host name.
    #[serde(default)]
    pub mesh: bool,
    /// Identities the upstream may have (`sa.ns`, a DNS name or a SPIFFE
    /// URI), with `mesh`. Empty: any certificate of the mesh CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Server name sent as SNI and verified in the upstream's certificate.
    /// Default: the endpoint's host name (for endpoints given by IP address,
    /// the certificate must carry that IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// CA bundle the upstream's certificate must chain to. Default: the
    /// system's roots (`/etc/ssl/certs`), or the mesh CA with `mesh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PemSource>,
    /// Client certificate chain to present (not with `mesh`, which presents
    /// the identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PemSource>,
    /// Private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySource>,
    /// ALPN protocols offered. Default: `h2` for `http2` clusters,
    /// `http/1.1` for `http1` clusters; none for clusters used for TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
}

/// Who may use a listener or route, by the peer identity of its verified
/// client certificate (SMI TrafficTarget).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessControl {
    /// Allow everyone, identity or not (osm-edge's permissive mode).
    #[serde(default)]
    pub permissive: bool,
    /// Identities allowed: `sa.ns` (matches a SPIFFE URI
    /// `spiffe://*/ns/ns/sa/sa`, and a DNS SAN or common name that is
    /// `sa.ns` or starts with `sa.ns.`), or a full SPIFFE URI. Denied: `403`
    /// for HTTP, the connection closed for TCP, CONNACK "not authorized" for
    /// MQTT.
    #[serde(default)]
    pub allow: Vec<String>,
}

pub(crate) mod tls_defaults {
    use std::time::Duration as StdDuration;

    use crate::values::Duration;

    pub fn yes() -> bool {
        true
    }
    pub fn handshake_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(10))
    }
}
