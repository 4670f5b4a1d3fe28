//! The configuration types. Every field is documented here; the docs become the
//! JSON Schema descriptions and the basis of `docs/configuration.md`.
//!
//! Shape rules: unknown fields are errors (typos must not pass silently), every
//! optional section has a default, and values that need parsing (durations,
//! addresses, regexes) are kept as strings so that validation can report all of
//! their problems at once.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::jwt::JwtAuth;
use crate::mqtt::MqttOptions;
use crate::policy::*;
use crate::tls::{AccessControl, ClusterTls, Identity, ListenerTls};
use crate::values::{BindAddress, Duration, UpstreamAddress};

/// The whole edgeplane configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Free-form version label of this config (set by a control plane, or by hand).
    /// Reported in `/config` and as the `edgeplane_config_info` metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The admin server (readiness, metrics, config and cluster dumps).
    #[serde(default)]
    pub admin: Admin,
    /// How long a graceful shutdown waits for in-flight requests and connections
    /// before closing them.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
    /// Access logging: one structured line per HTTP request or TCP connection.
    #[serde(default)]
    pub access_log: AccessLog,
    /// Netfilter mark (`SO_MARK`) set on every upstream socket the proxy
    /// opens (routed, passed through, health checks), so interception rules
    /// can exempt its traffic by mark (`edgeplane-init --mark`) rather than
    /// by UID. Setting it needs CAP_NET_ADMIN; unset, sockets are unmarked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mark: Option<u32>,
    /// Where traffic enters.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Where traffic goes: named groups of upstream endpoints.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// This proxy's mesh identity (sidecar mTLS); see `tls.mesh` on
    /// listeners and clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
}

/// The admin server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin server. Keep it on loopback: the admin API has no
    /// authentication (mutating endpoints answer loopback callers only).
    #[serde(default = "defaults::admin_bind")]
    pub bind: BindAddress,
}

impl Default for Admin {
    fn default() -> Self {
        Self { bind: defaults::admin_bind() }
    }
}

/// Access log settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// Write an access log line per request (HTTP) or connection (TCP), to standard output.
    #[serde(default)]
    pub enabled: bool,
    /// Line format.
    #[serde(default)]
    pub format: LogFormat,
}

/// Format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// `key=value` text.
    Text,
}

/// A listening socket and the routes for the traffic it accepts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name; used in metrics and logs.
    pub name: String,
    /// Address to listen on.
    pub bind: BindAddress,
    /// How to treat accepted connections.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// How long protocol detection (`auto`, `http`) waits for the client's
    /// first bytes. A client that stays silent (a server-first protocol such as
    /// MySQL or SMTP) is then treated as TCP on an `auto` listener.
    #[serde(default = "defaults::detect_timeout")]
    pub detect_timeout: Duration,
    /// HTTP settings, used for connections detected (or declared) as HTTP.
    #[serde(default)]
    pub http: HttpOptions,
    /// TCP settings, used for opaque connections.
    #[serde(default)]
    pub tcp: TcpOptions,
    /// MQTT settings, used for connections declared (or detected) as MQTT.
    #[serde(default)]
    pub mqtt: MqttOptions,
    /// Routes, tried in order; the first that matches wins. HTTP requests use
    /// routes whose `match` fits the request; opaque TCP connections use the
    /// first route without HTTP match criteria and without a direct response.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Rate limit of all HTTP requests the listener takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// New connections accepted per period; excess connections are closed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_limit: Option<ConnectionRateLimit>,
    /// Bandwidth limits of client connections (bytes per second).
    #[serde(default, skip_serializing_if = "Bandwidth::is_unlimited")]
    pub bandwidth: Bandwidth,
    /// TLS termination or passthrough; plaintext when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Who may connect, by verified peer identity; everyone when absent.
    /// A route's own `access` replaces this for its requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessControl>,
    /// Connections redirected here by netfilter (`REDIRECT`, as
    /// `edgeplane-init` sets up for a sidecar): each connection's original
    /// destination is read from the socket (`SO_ORIGINAL_DST`), routes can
    /// match it (`match.destination`), and a connection no route takes is
    /// passed through to it or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent: Option<Transparent>,
}

/// Transparent interception settings of a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transparent {
    /// What happens to a connection whose original destination no route
    /// takes: `passthrough` relays it as bytes to that destination (egress
    /// allowed, like Envoy's `ALLOW_ANY`), `refuse` closes it.
    #[serde(default)]
    pub unmatched: Unmatched,
    /// Time allowed to connect to the original destination of a passed-through connection.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
}

/// What a transparent listener does with connections no route takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    #[default]
    Passthrough,
    Refuse,
}

/// The original destination of a connection on a transparent listener.
/// All given criteria must hold; within a list, any entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationMatch {
    /// Addresses or networks (`10.96.0.0/12`, `fd00::/8`, `10.0.0.7`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Ports (`[8080, 9090]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// Protocol handling for a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// Detect from the first bytes: HTTP/2 preface, HTTP/1 request line, else opaque TCP.
    #[default]
    Auto,
    /// HTTP only: HTTP/2 with prior knowledge or HTTP/1.x; anything else gets `400`.
    Http,
    /// Opaque TCP: no detection, bytes are relayed as they are.
    Tcp,
    /// MQTT (3.1, 3.1.1, 5): the CONNECT is read and routed on; packets are
    /// framed and checked, then relayed as they are.
    Mqtt,
}

/// HTTP settings of a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {
    /// Largest request head (request line plus headers) accepted, in bytes;
    /// larger heads get `431 Request Header Fields Too Large`.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: u32,
    /// Most header fields accepted in a request; more get `431`.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: u32,
    /// Time allowed for a client to send a complete request head once it has
    /// started one (slow-loris guard); exceeded → `408` and close. HTTP/1.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Duration,
    /// How long an idle HTTP/1 keep-alive client connection is kept open.
    /// (Connections handed to the general HTTP/1 path — upgrades, `Expect`,
    /// HTTP/1.0, large bodies, `http2` clusters — are closed after
    /// `header_read_timeout` of idleness instead.)
    #[serde(default = "defaults::http_idle_timeout")]
    pub idle_timeout: Duration,
    /// What to do with `X-Forwarded-For`.
    #[serde(default)]
    pub forwarded_for: ForwardedFor,
    /// Also add an RFC 7239 `Forwarded` element (`for=…;proto=…`) for the client.
    #[serde(default)]
    pub forwarded: bool,
    /// Most concurrent streams per HTTP/2 client connection.
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Answer every plaintext request with a redirect to the same URL over
    /// `https` (the listener's routes are not used for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_https: Option<HttpsRedirect>,
}

/// A redirect from `http` to `https`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpsRedirect {
    /// Port of the HTTPS listener; default 443 (left out of the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `301` (default), `302`, `303`, `307` or `308`.
    #[serde(default = "defaults::redirect_status")]
    pub status: u16,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            header_read_timeout: defaults::header_read_timeout(),
            idle_timeout: defaults::http_idle_timeout(),
            forwarded_for: ForwardedFor::default(),
            forwarded: false,
            max_concurrent_streams: defaults::max_concurrent_streams(),
            redirect_https: None,
        }
    }
}

/// Handling of `X-Forwarded-For`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedFor {
    /// Append the client address to any value the client sent (a proxy behind trusted proxies).
    #[default]
    Append,
    /// Replace any value the client sent with the client address (the first proxy at an edge).
    Replace,
    /// Pass the header through untouched.
    Off,
}

/// TCP settings of a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpOptions {
    /// Close a relayed connection after this long without bytes in either direction.
    #[serde(default = "defaults::tcp_idle_timeout")]
    pub idle_timeout: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self { idle_timeout: defaults::tcp_idle_timeout() }
    }
}

// Optional policies of routes and clusters are boxed: most routes and
// clusters of a big config have none of them, and an absent boxed policy costs
// a pointer rather than the policy's size (Route 968 → 480 bytes, Cluster
// 824 → 216). Serde and the JSON Schema see through the box. (A plain comment:
// doc comments become schema descriptions.)

/// A route: match criteria and where matching traffic goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name used in metrics and logs; defaults to `route-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the request must look like; all given criteria must hold. Empty
    /// matches everything.
    #[serde(rename = "match", default, skip_serializing_if = "RouteMatch::is_empty")]
    pub matches: RouteMatch,
    /// Send everything to this cluster. Exactly one of `cluster`, `split` and
    /// `direct_response` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Split traffic across clusters in proportion to their weights (SMI TrafficSplit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<WeightedCluster>>,
    /// Answer from the proxy itself, without an upstream (like nginx's
    /// `return`): health endpoints, maintenance pages, redirects. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<Box<DirectResponse>>,
    /// Time allowed from the start of a request until the upstream's response
    /// headers arrive; exceeded → `504`. Streaming bodies after the headers are
    /// not limited by it. Default `60s`; `0s` disables it. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Header edits applied to requests before they go upstream.
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    /// Header edits applied to responses before they go to the client.
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
    /// Retries of failed tries; none when absent. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Box<RetryPolicy>>,
    /// Rate limit of the requests this route takes. HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Box<RateLimit>>,
    /// New TCP connections per period this route takes (opaque TCP routes
    /// only); excess connections are closed at once. osm-edge's per-port
    /// connection limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_limit: Option<Box<ConnectionRateLimit>>,
    /// Verify a JSON Web Token on every request of this route; failures get `401`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Box<JwtAuth>>,
    /// Who may use this route, by verified peer identity (replaces the
    /// listener's `access`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Box<AccessControl>>,
}

/// Request match criteria. All that are given must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Host (HTTP/1 `Host`, HTTP/2 `:authority`), compared case-insensitively
    /// without the port. `*.example.com` matches any subdomain of example.com.
    /// A pattern with a port (`example.com:8080`) is compared with the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path criterion (the query string is not part of the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Header criteria by header name (case-insensitive names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
    /// Request method or methods (`GET` or `[GET, HEAD]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<OneOrMany>,
    /// MQTT: the client identifier of the CONNECT (`exact`, `prefix` or `regex`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<PathMatch>,
    /// MQTT: the user name of the CONNECT (`exact`, `prefix` or `regex`); a
    /// CONNECT without one does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<PathMatch>,
    /// TLS server name (SNI) the client asked for: exact, or `*.example.com`
    /// for one label. Used by `passthrough` listeners to route TLS connections
    /// they do not decrypt, and by terminating listeners for every protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Where the connection was going before it was intercepted (transparent
    /// listeners only): outbound, the service's address and port; inbound,
    /// the application's port. Evaluated per connection, like `sni`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<DestinationMatch>,
    /// Where the connection comes from: the client's address must be in one
    /// of these addresses or networks (`10.244.1.7`, `10.244.0.0/16`). Evaluated
    /// per connection, like `destination`; a source allow-list for the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceMatch>,
}

/// The client address of a connection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceMatch {
    /// Addresses or networks.
    pub addresses: Vec<String>,
}

impl RouteMatch {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Whether any criterion needs an HTTP request to be evaluated.
    pub fn has_http_criteria(&self) -> bool {
        self.host.is_some() || self.path.is_some() || !self.headers.is_empty() || self.method.is_some()
    }

    /// Whether any criterion needs an MQTT CONNECT to be evaluated.
    pub fn has_mqtt_criteria(&self) -> bool {
        self.client_id.is_some() || self.username.is_some()
    }
}

/// A path criterion: exactly one of `exact`, `prefix`, `regex`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathMatch {
    /// The path equals this string.
    Exact(String),
    /// The path starts with this string (plain string prefix, as Envoy's `prefix`).
    Prefix(String),
    /// The whole path matches this regular expression (Rust `regex` syntax, anchored).
    Regex(String),
}

/// A header criterion: a plain string means `exact`.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum HeaderMatch {
    /// The header's value equals this string.
    Exact(String),
    /// A criterion with an explicit kind.
    Rule(HeaderRule),
}

/// An explicit header criterion: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    /// The value equals this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The whole value matches this regular expression (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the header must be present (any value); `false`: it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// One value or a list of values.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one),
            OneOrMany::Many(many) => many,
        }
    }
}

/// A response made by the proxy itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// Status code, 200 to 599.
    pub status: u16,
    /// Response body (at most 64 KiB).
    #[serde(default)]
    pub body: String,
    /// `Content-Type` of the body.
    #[serde(default = "defaults::content_type")]
    pub content_type: String,
}

/// A cluster and its share of a split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// Name of a cluster in `clusters`.
    pub cluster: String,
    /// Relative weight, 1 to 10000.
    pub weight: u32,
}

/// Header edits: `remove` first, then `set`, then `add`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Headers to append (kept beside any existing value of the same name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers to set (replacing any existing value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// A named group of upstream endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name, referenced by routes.
    pub name: String,
    /// The upstream endpoints. May be empty (requests then get `503`).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is chosen for each request or connection.
    #[serde(default)]
    pub lb: LbPolicy,
    /// What `ring_hash` hashes. Default: the client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Protocol spoken to HTTP upstreams. `http2` multiplexes many requests,
    /// including those of HTTP/1 clients, over few connections.
    #[serde(default)]
    pub protocol: ClusterProtocol,
    /// Time allowed to establish an upstream TCP connection; exceeded → `502`
    /// (HTTP) or the client connection is closed (TCP).
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// Upstream connection pool settings.
    #[serde(default)]
    pub pool: PoolOptions,
    /// Connection and request limits (Envoy's circuit breaker thresholds).
    #[serde(default)]
    pub limits: ClusterLimits,
    /// The osm-edge degrade breaker; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Box<DegradeBreaker>>,
    /// Per-endpoint outlier ejection; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Box<OutlierDetection>>,
    /// Active health checks; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<HealthCheck>>,
    /// How much a priority level's health is inflated before traffic spills
    /// to the next level: with 1.4, a level keeps all its traffic while at
    /// least 1/1.4 ≈ 72% of its endpoints are healthy.
    #[serde(default = "crate::policy::policy_defaults::overprovisioning_factor")]
    pub overprovisioning_factor: f64,
    /// Rate limit of all requests to the cluster (the service), over all routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Box<RateLimit>>,
    /// TLS to the endpoints (origination, or sidecar mTLS with `mesh`);
    /// plaintext when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<ClusterTls>>,
}

/// An upstream endpoint: `"ADDRESS"` or `{ address, weight }`.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Endpoint {
    /// Just the address, weight 1.
    Address(UpstreamAddress),
    /// Address with options.
    Detailed(EndpointSpec),
}

impl Endpoint {
    pub fn address(&self) -> &UpstreamAddress {
        match self {
            Endpoint::Address(address) => address,
            Endpoint::Detailed(spec) => &spec.address,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            Endpoint::Address(_) => 1,
            Endpoint::Detailed(spec) => spec.weight,
        }
    }

    pub fn priority(&self) -> u32 {
        match self {
            Endpoint::Address(_) => 0,
            Endpoint::Detailed(spec) => spec.priority,
        }
    }
}

/// An endpoint with options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// IP:PORT or HOSTNAME:PORT.
    pub address: UpstreamAddress,
    /// Relative weight, 1 to 10000.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
    /// Failover level: 0 is preferred (the local POP), then 1 (a neighbour
    /// POP) and so on. Traffic moves to a higher level as the lower ones lose
    /// healthy endpoints, and back when they recover.
    #[serde(default)]
    pub priority: u32,
}

/// Load-balancing policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices: pick two endpoints at random (by weight), use the
    /// one with fewer requests in flight relative to its weight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on `hash_on`: the same key reaches the same endpoint
    /// while the endpoint set is stable, and few keys move when it changes.
    RingHash,
}

/// The key `ring_hash` hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HashOn {
    /// The client's IP address.
    SourceIp,
    /// The value of this request header (HTTP only); requests without it fall
    /// back to the client IP.
    Header(String),
    /// The MQTT client identifier (MQTT only), so a reconnecting client
    /// reaches the broker that holds its session; other traffic falls back
    /// to the client IP.
    ClientId,
}

/// Protocol spoken to upstream HTTP endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterProtocol {
    /// HTTP/1.1 with a keep-alive pool per endpoint.
    #[default]
    Http1,
    /// HTTP/2 (prior knowledge): requests are multiplexed as streams.
    Http2,
}

/// Upstream connection pool settings (per endpoint, per worker thread).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolOptions {
    /// Close pooled connections that have been idle this long.
    #[serde(default = "defaults::pool_idle_timeout")]
    pub idle_timeout: Duration,
    /// Most idle HTTP/1 connections kept per endpoint and worker.
    #[serde(default = "defaults::max_idle_per_endpoint")]
    pub max_idle_per_endpoint: u32,
    /// Most concurrent streams edgeplane opens on one HTTP/2 upstream
    /// connection before it opens another.
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            idle_timeout: defaults::pool_idle_timeout(),
            max_idle_per_endpoint: defaults::max_idle_per_endpoint(),
            max_concurrent_streams: defaults::max_concurrent_streams(),
        }
    }
}

// The untagged forms above get hand-written deserializers: serde's untagged
// enums answer any mistake with "data did not match any variant", which hides
// the actual problem (an unknown field, a wrong type).

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::string_or::string_or_map(
            deserializer,
            "an address string or { address, weight, priority }",
            |text| Endpoint::Address(UpstreamAddress::from(text)),
            Endpoint::Detailed,
        )
    }
}

impl<'de> Deserialize<'de> for HeaderMatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::string_or::string_or_map(
            deserializer,
            "a value string or { exact | regex | present }",
            |text| HeaderMatch::Exact(text.to_owned()),
            HeaderMatch::Rule,
        )
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::string_or::string_or_seq(deserializer, "a string or a list of strings", OneOrMany::One, OneOrMany::Many)
    }
}

/// Default values, shared by serde and the docs.
pub mod defaults {
    use super::*;

    pub fn admin_bind() -> BindAddress {
        BindAddress::from("127.0.0.1:15000")
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(30))
    }
    pub fn detect_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(1))
    }
    pub fn max_header_bytes() -> u32 {
        64 * 1024
    }
    pub fn max_headers() -> u32 {
        100
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(10))
    }
    pub fn http_idle_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(60))
    }
    pub fn max_concurrent_streams() -> u32 {
        100
    }
    pub fn redirect_status() -> u16 {
        301
    }
    pub fn tcp_idle_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(3600))
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(5))
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(30))
    }
    pub fn max_idle_per_endpoint() -> u32 {
        128
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn mqtt_max_packet_size() -> u32 {
        1024 * 1024
    }
    pub fn mqtt_connect_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(10))
    }
    pub fn mqtt_keepalive_factor() -> f64 {
        1.5
    }
    pub fn mqtt_rate_per() -> Duration {
        Duration::from_std(StdDuration::from_secs(1))
    }
    pub fn acl_no_match() -> crate::mqtt::AclPermission {
        crate::mqtt::AclPermission::Allow
    }
    pub fn topic_alias_maximum() -> u16 {
        32
    }
    pub fn topic_metric_levels() -> u8 {
        1
    }
    pub fn topic_metric_series() -> u32 {
        100
    }
    pub fn content_type() -> String {
        "text/plain".into()
    }
    /// The timeout of a route that sets none.
    pub fn route_timeout() -> StdDuration {
        StdDuration::from_secs(60)
    }
}
