//! The routing table: a config compiled into immutable, ready-to-use form.
//!
//! A table is built by [`compile::compile`] and published with one
//! `ArcSwap::store`. A connection or request loads it once and keeps that
//! snapshot until it is done, so a reload never changes the rules under a
//! request in flight. State that must outlive a table (connection pools,
//! endpoint load, metric series) is held beside it, keyed by stable identity:
//! see [`EndpointState`] and [`crate::state::Registry`].

pub mod compile;
pub mod matcher;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config_model::{ClusterProtocol, Config, ForwardedFor, ListenerProtocol};
use http::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::balance::{Balancer, PickInput};
use crate::metrics::{ClusterMetrics, RequestMetrics};
use crate::policy::breaker::DegradeBreaker;
use crate::policy::outlier::{EndpointHealth, OutlierSettings};
use crate::policy::request_limit::RequestLimiter;
use crate::policy::retry::RetryPolicy;
use crate::policy::ClusterState;
use matcher::{RequestView, RouteMatcher};

pub struct RouteTable {
    /// Increases with every published table.
    pub generation: u64,
    pub config: Arc<Config>,
    /// Hash of the config text; an identical text is not recompiled.
    pub config_hash: u64,
    /// Indexed by listener slot ([`crate::state::Registry::listener_slot`]).
    pub listeners: Vec<Option<Arc<ListenerTable>>>,
    pub clusters: Vec<ClusterTable>,
    pub access_log: bool,
    pub access_log_format: config_model::LogFormat,
    /// `SO_MARK` of passed-through connections (0: none).
    pub socket_mark: u32,
}

impl RouteTable {
    pub fn listener(&self, slot: usize) -> Option<&Arc<ListenerTable>> {
        self.listeners.get(slot).and_then(Option::as_ref)
    }
}

pub struct ListenerTable {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub protocol: ListenerProtocol,
    pub detect_timeout: Duration,
    pub http: HttpSettings,
    pub tcp_idle_timeout: Duration,
    pub routes: Vec<Route>,
    /// The route opaque TCP connections take: the first without HTTP criteria.
    pub tcp_route: Option<usize>,
    /// Some route has an SNI, destination or source criterion (connections
    /// pick their route by it).
    pub routes_by_connection: bool,
    /// Some route has a source criterion: connections record their client address.
    pub routes_by_source: bool,
    /// Transparent interception (`SO_ORIGINAL_DST`); `None` for ordinary listeners.
    pub transparent: Option<TransparentSettings>,
    /// TLS termination; `None` for plaintext and passthrough listeners.
    pub tls: Option<Arc<crate::tls::server::ServerTls>>,
    /// Route TLS by the ClientHello's SNI without decrypting.
    pub passthrough: bool,
    /// Who may connect (a route's own list replaces it for its requests).
    pub access: Option<Arc<crate::tls::AllowList>>,
    pub mqtt: MqttSettings,
    pub metrics: ListenerMetrics,
    pub rate_limit: Option<Arc<RequestLimiter>>,
    pub connection_rate_limit: Option<ConnectionRateLimit>,
    pub bandwidth: Option<crate::policy::throttle::BandwidthLimits>,
}

impl ListenerTable {
    pub fn route_for(&self, request: &impl RequestView) -> Option<&Route> {
        self.routes.iter().find(|route| {
            route.mqtt.is_none()
                && route.sni.as_ref().is_none_or(|sni| request.sni().is_some_and(|name| sni.matches(name)))
                && route.destination.as_ref().is_none_or(|matcher| matcher.matches(request.destination()))
                && route.source.as_ref().is_none_or(|matcher| matcher.matches(request.source()))
                && route.matcher.matches(request)
        })
    }

    /// The route of an opaque TCP connection (or a TLS connection passed
    /// through) whose client asked for `sni`.
    pub fn tcp_route_for(&self, facts: &crate::tls::ConnFacts) -> Option<&Route> {
        if !self.routes_by_connection {
            return self.tcp_route.map(|index| &self.routes[index]);
        }
        self.routes.iter().find(|route| {
            (route.matcher.is_empty() || self.protocol == ListenerProtocol::Tcp)
                && route.mqtt.is_none()
                && route.direct.is_none()
                && route.takes_connection(facts)
        })
    }

    /// Whether some route may take a connection to `destination` (its
    /// requests may still match none); else a transparent listener's
    /// `unmatched` rule applies to the whole connection.
    pub fn may_route(&self, destination: std::net::SocketAddr, source: std::net::IpAddr) -> bool {
        self.routes.iter().any(|route| {
            route.destination.as_ref().is_none_or(|m| m.matches(Some(destination)))
                && route.source.as_ref().is_none_or(|m| m.matches(Some(source)))
        })
    }

    /// Whether a peer may use `route` (the route's `access`, else the listener's).
    pub fn allows(&self, route: Option<&Route>, peer: Option<&crate::tls::PeerIdentity>) -> bool {
        match route.and_then(|route| route.access.as_ref()).or(self.access.as_ref()) {
            Some(list) => list.allows(peer),
            None => true,
        }
    }

    /// The route of an MQTT connection: the first without HTTP criteria or
    /// a direct response whose MQTT criteria (if any) fit the CONNECT.
    pub fn mqtt_route_for(
        &self,
        client_id: &str,
        username: Option<&str>,
        facts: &crate::tls::ConnFacts,
    ) -> Option<&Route> {
        self.routes.iter().find(|route| {
            route.matcher.is_empty()
                && route.direct.is_none()
                && route.takes_connection(facts)
                && route.mqtt.as_ref().is_none_or(|m| m.matches(client_id, username))
        })
    }
}

#[derive(Debug)]
pub struct TransparentSettings {
    pub unmatched: config_model::Unmatched,
    pub connect_timeout: Duration,
}

#[derive(Debug)]
pub struct MqttSettings {
    pub max_packet_size: u32,
    pub connect_timeout: Duration,
    pub keepalive_factor: f64,
    pub publish_rate: Option<crate::mqtt::publish_rate::PublishRate>,
    pub access: crate::mqtt::access::Access,
    pub topic_counts: Option<Arc<crate::mqtt::topic_metrics::TopicCounts>>,
    pub topic_alias_maximum: u16,
}

#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub forwarded_for: ForwardedFor,
    pub forwarded: bool,
    pub max_concurrent_streams: u32,
    /// Plaintext requests get this redirect status towards `https` (with this port).
    pub redirect_https: Option<(http::StatusCode, Option<u16>)>,
}

/// New connections per period on a listener; the bucket outlives reloads.
pub struct ConnectionRateLimit {
    pub bucket: Arc<crate::policy::rate_limit::TokenBucket>,
    /// `edgeplane_rate_limited_total{limiter=".../connections"}`.
    pub refused: Counter,
}

impl ConnectionRateLimit {
    /// Takes a token for a new connection; false (and counted) when there is none.
    pub fn admit(&self) -> bool {
        let admitted = self.bucket.try_acquire(tokio::time::Instant::now()).is_ok();
        if !admitted {
            self.refused.inc();
        }
        admitted
    }
}

/// Per-listener metric handles, resolved at compile time.
pub struct ListenerMetrics {
    pub active: Gauge,
    pub accepted_http1: Counter,
    pub accepted_http2: Counter,
    pub accepted_tcp: Counter,
    /// Transparent connections no route takes, relayed to their original destination.
    pub accepted_unmatched: Counter,
    pub accepted_mqtt: Counter,
    pub bytes_rx: Counter,
    pub bytes_tx: Counter,
    /// Requests answered before a route or cluster was known.
    pub unrouted: RequestMetrics,
    pub local_replies: ReasonCounters,
    pub mqtt: crate::mqtt::metrics::MqttMetrics,
    /// TLS handshakes by result.
    pub tls_handshakes: ReasonCounters,
    /// Refusals by access control, by protocol.
    pub access_denied: ReasonCounters,
}

impl ListenerMetrics {
    pub fn local_reply(&self, reason: &'static str) {
        self.local_replies.inc(reason);
    }
}

pub struct Route {
    pub name: Arc<str>,
    /// The TLS server name the client must have asked for.
    pub sni: Option<matcher::HostMatcher>,
    /// Where the connection must have been going (transparent listeners).
    pub destination: Option<matcher::DestinationMatcher>,
    /// Where the connection must come from.
    pub source: Option<matcher::SourceMatcher>,
    /// Who may use the route; the listener's list when absent.
    pub access: Option<Arc<crate::tls::AllowList>>,
    /// Tokens every request must carry.
    pub jwt: Option<Arc<crate::policy::jwt::JwtVerifier>>,
    pub matcher: RouteMatcher,
    /// MQTT criteria; a route with them takes only MQTT connections.
    pub mqtt: Option<matcher::MqttMatcher>,
    /// Answer from the proxy instead of forwarding; `split` is empty then.
    pub direct: Option<DirectResponse>,
    pub split: Split,
    /// Until response headers; `None` disables.
    pub timeout: Option<Duration>,
    pub request_edits: HeaderEdits,
    pub response_edits: HeaderEdits,
    pub retry: Option<RetryPolicy>,
    pub rate_limit: Option<Arc<RequestLimiter>>,
    /// New connections relayed as TCP through this route.
    pub connection_rate_limit: Option<ConnectionRateLimit>,
}

impl Route {
    /// Whether the route's connection-level criteria (SNI, original
    /// destination) hold for a connection.
    pub fn takes_connection(&self, facts: &crate::tls::ConnFacts) -> bool {
        self.sni.as_ref().is_none_or(|matcher| facts.sni.as_deref().is_some_and(|name| matcher.matches(name)))
            && self.destination.as_ref().is_none_or(|matcher| matcher.matches(facts.destination))
            && self.source.as_ref().is_none_or(|matcher| matcher.matches(facts.source))
    }
}

/// A response the proxy makes itself.
pub struct DirectResponse {
    pub status: http::StatusCode,
    pub body: bytes::Bytes,
    pub content_type: HeaderValue,
    pub metrics: RequestMetrics,
}

/// Where a route sends traffic: one or more clusters with weights.
pub struct Split {
    targets: Box<[Target]>,
    total_weight: u32,
}

pub struct Target {
    /// Index into [`RouteTable::clusters`].
    pub cluster: usize,
    pub weight: u32,
    pub metrics: RequestMetrics,
    /// Present on routes that can carry opaque TCP (no HTTP criteria).
    pub tcp_bytes: Option<TcpBytes>,
}

/// `edgeplane_tcp_bytes_total` series of one (listener, cluster).
pub struct TcpBytes {
    pub rx: Counter,
    pub tx: Counter,
}

impl Split {
    pub fn new(targets: Vec<Target>) -> Self {
        let total_weight = targets.iter().map(|t| t.weight).sum();
        Split { targets: targets.into_boxed_slice(), total_weight }
    }

    pub fn pick(&self) -> &Target {
        if self.targets.len() == 1 {
            return &self.targets[0];
        }
        let mut draw = fastrand::u32(..self.total_weight);
        for target in self.targets.iter() {
            if draw < target.weight {
                return target;
            }
            draw -= target.weight;
        }
        &self.targets[self.targets.len() - 1]
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
}

/// Header edits with names and values parsed once.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Whether a header of this name is dropped from the original message
    /// (removed, or replaced by a `set`).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove.iter().any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
            || self.set.iter().any(|(n, _)| n.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    /// The headers this edit adds to a message, in order.
    pub fn additions(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.set.iter().chain(self.add.iter())
    }
}

pub struct ClusterTable {
    pub name: Arc<str>,
    /// TLS towards the endpoints.
    pub tls: Option<Arc<crate::tls::client::ClientTls>>,
    pub protocol: ClusterProtocol,
    pub connect_timeout: Duration,
    pub pool: PoolSettings,
    pub endpoints: Box<[Arc<EndpointState>]>,
    /// Weight of each endpoint, in `endpoints` order.
    pub weights: Box<[u32]>,
    pub lb: config_model::LbPolicy,
    /// Priority levels, lowest (preferred) first; most clusters have one.
    pub levels: Box<[Level]>,
    /// Envoy's overprovisioning factor, in percent (140 = 1.4).
    pub overprovisioning_percent: u32,
    /// Header whose value `ring_hash` hashes.
    pub hash_header: Option<HeaderName>,
    /// `ring_hash` hashes the MQTT client identifier.
    pub hash_client_id: bool,
    /// Load, limits and availability counts; survives reloads.
    pub state: Arc<ClusterState>,
    pub outlier: Option<OutlierSettings>,
    pub breaker: Option<Arc<BreakerPolicy>>,
    pub rate_limit: Option<Arc<RequestLimiter>>,
    pub health_check: Option<crate::health::HealthCheckSpec>,
}

/// The endpoints of one priority level and their balancer.
pub struct Level {
    pub priority: u32,
    /// Indexes into [`ClusterTable::endpoints`].
    pub members: Box<[u32]>,
    pub balancer: Balancer,
}

/// A cluster's degrade breaker and the response it gives while open.
#[derive(Debug)]
pub struct BreakerPolicy {
    pub breaker: Arc<DegradeBreaker>,
    pub status: http::StatusCode,
    pub body: bytes::Bytes,
}

/// Most tries at finding an available endpoint with the balancer before
/// scanning for one.
const PICK_TRIES: usize = 3;

impl ClusterTable {
    pub fn pick(&self, input: &PickInput<'_>) -> Option<&Arc<EndpointState>> {
        if self.state.unavailable.load(Ordering::Relaxed) == 0 {
            // Everything is available: the preferred level takes all traffic.
            return self.pick_in(self.levels.first()?, input);
        }
        self.pick_degraded(input)
    }

    /// An endpoint for a retry or another connection attempt, other than
    /// those already tried (by id). The balancer's pick when it offers a new
    /// one; otherwise (ring hash gives the same endpoint for the same key)
    /// the next available endpoint after the last one tried, in the
    /// cluster's order: deterministic, so the clients of a dead endpoint all
    /// move to the same one.
    pub fn pick_untried(&self, input: &PickInput<'_>, tried: &[usize]) -> Option<&Arc<EndpointState>> {
        if let Some(picked) = self.pick(input).filter(|picked| !tried.contains(&picked.id)) {
            return Some(picked);
        }
        let Some(last) = tried.last() else { return self.pick(input) };
        let start = self.endpoints.iter().position(|e| e.id == *last).unwrap_or(0);
        (1..=self.endpoints.len())
            .map(|i| &self.endpoints[(start + i) % self.endpoints.len()])
            .find(|e| e.health.is_available() && !tried.contains(&e.id))
    }

    fn pick_in(&self, level: &Level, input: &PickInput<'_>) -> Option<&Arc<EndpointState>> {
        let member = level
            .balancer
            .pick(input, |i| self.endpoints[level.members[i] as usize].active_requests.load(Ordering::Relaxed))?;
        self.endpoints.get(level.members[member] as usize)
    }

    /// Some endpoints are unavailable: spread traffic over the levels by
    /// their health (Envoy's priority load), then pick an available endpoint
    /// in the chosen level.
    fn pick_degraded(&self, input: &PickInput<'_>) -> Option<&Arc<EndpointState>> {
        let level = self.choose_level()?;
        for _ in 0..PICK_TRIES {
            let endpoint = self.pick_in(level, input)?;
            if endpoint.health.is_available() {
                return Some(endpoint);
            }
        }
        // The balancer keeps landing on unavailable endpoints (ring hash
        // always will): take the next available member after a random start.
        let start = fastrand::usize(..level.members.len());
        (0..level.members.len())
            .map(|i| &self.endpoints[level.members[(start + i) % level.members.len()] as usize])
            .find(|endpoint| endpoint.health.is_available())
    }

    /// The level a request goes to, drawn by the levels' shares of the
    /// traffic ([`priority_shares`]); `None` when no endpoint is available.
    fn choose_level(&self) -> Option<&Level> {
        let mut health = [(0u32, 0u32); MAX_LEVELS];
        for (slot, level) in health.iter_mut().zip(self.levels.iter()) {
            let available = level.members.iter().filter(|i| self.endpoints[**i as usize].health.is_available()).count();
            *slot = (available as u32, level.members.len() as u32);
        }
        let shares = priority_shares(&health[..self.levels.len().min(MAX_LEVELS)], self.overprovisioning_percent);
        let total: u32 = shares.iter().sum();
        if total == 0 {
            return None;
        }
        let mut draw = fastrand::u32(..total);
        for (share, level) in shares.iter().zip(self.levels.iter()) {
            if draw < *share {
                return Some(level);
            }
            draw -= share;
        }
        self.levels.last()
    }
}

/// Priority levels a cluster may have (`priority` 0 to 15).
const MAX_LEVELS: usize = 16;

/// Envoy's priority load: each level's share of the traffic, in percent,
/// from its (available, total) endpoints. A level's health is its available
/// share inflated by the overprovisioning factor and capped at 100; each
/// level takes its health out of what the levels before it left. The shares
/// add up to less than 100 when all levels together are short; the caller
/// draws within their sum, which scales them up to 100%.
pub fn priority_shares(levels: &[(u32, u32)], overprovisioning_percent: u32) -> [u32; MAX_LEVELS] {
    let mut shares = [0u32; MAX_LEVELS];
    let mut left = 100u32;
    for (slot, (available, members)) in shares.iter_mut().zip(levels) {
        let health = (available * overprovisioning_percent).checked_div(*members).unwrap_or(0).min(100);
        *slot = health.min(left);
        left -= *slot;
    }
    shares
}

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub idle_timeout: Duration,
    pub max_idle: usize,
    pub max_streams: u32,
}

/// One upstream endpoint of one cluster. Survives reloads while the cluster
/// keeps the endpoint (same name, address and protocol), so its pools and
/// load counters do too.
pub struct EndpointState {
    /// Index of this endpoint's pools in each worker's pool table.
    pub id: usize,
    pub cluster: Arc<str>,
    pub addr: SocketAddr,
    pub protocol: ClusterProtocol,
    /// TLS towards this endpoint, set by each compile (a rotation or reload
    /// changes it for new connections only).
    pub tls: arc_swap::ArcSwapOption<EndpointTls>,
    pub active_requests: AtomicU32,
    /// Availability (health checks, ejection) and outlier counters.
    pub health: EndpointHealth,
    /// The cluster's load and limits (shared by its endpoints).
    pub cluster_state: Arc<ClusterState>,
    /// Open upstream connections, over all workers.
    pub connections: AtomicU32,
    /// Idle pooled HTTP/1 connections, over all workers.
    pub idle: AtomicU32,
    /// `SO_MARK` of new connections (0: none); set by each compile.
    pub socket_mark: AtomicU32,
    /// The cluster's metric handles (one set per cluster, shared).
    pub metrics: Arc<ClusterMetrics>,
}

impl std::fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointState")
            .field("id", &self.id)
            .field("cluster", &self.cluster)
            .field("addr", &self.addr)
            .finish()
    }
}

/// The TLS an endpoint's new connections use.
pub struct EndpointTls {
    pub tls: Arc<crate::tls::client::ClientTls>,
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub handshake_errors: Counter,
}

/// One counter per reason label, resolved when the config is compiled.
#[derive(Clone)]
pub struct ReasonCounters(Vec<(&'static str, Counter)>);

impl ReasonCounters {
    pub fn new(reasons: &[&'static str], counter: impl Fn(&'static str) -> Counter) -> Self {
        ReasonCounters(reasons.iter().map(|reason| (*reason, counter(reason))).collect())
    }

    pub fn inc(&self, reason: &'static str) {
        if let Some((_, counter)) = self.0.iter().find(|(r, _)| *r == reason) {
            counter.inc();
        }
    }
}

/// Counts a request in flight to an endpoint for as long as it lives (and,
/// when it holds one, the request's admission to its cluster).
pub struct InFlight(Arc<EndpointState>, Option<ClusterRequest>);

impl InFlight {
    pub fn start(endpoint: &Arc<EndpointState>) -> Self {
        endpoint.active_requests.fetch_add(1, Ordering::Relaxed);
        endpoint.metrics.requests_active.inc();
        InFlight(endpoint.clone(), None)
    }

    /// Keeps the cluster admission as long as this count.
    pub fn holding(mut self, request: ClusterRequest) -> Self {
        self.1 = Some(request);
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.requests_active.dec();
    }
}

/// A request admitted to a cluster under its `max_requests`, counted until dropped.
pub struct ClusterRequest(Arc<ClusterState>);

impl ClusterRequest {
    pub fn admit(cluster: &ClusterTable) -> Result<Self, crate::policy::Overload> {
        cluster.state.admit_request()?;
        Ok(ClusterRequest(cluster.state.clone()))
    }
}

impl Drop for ClusterRequest {
    fn drop(&mut self) {
        self.0.finish_request();
    }
}

impl ClusterTable {
    /// Records one try's outcome for outlier detection, and schedules the
    /// endpoint's return when it gets ejected.
    pub fn observe(&self, endpoint: &Arc<EndpointState>, outcome: crate::policy::outlier::TryOutcome) {
        let Some(settings) = &self.outlier else { return };
        let ejected = crate::policy::outlier::observe(settings, endpoint, &self.state, self.endpoints.len(), outcome);
        if ejected.is_some() {
            tokio::spawn(crate::policy::outlier::return_after(endpoint.clone(), self.state.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::priority_shares;

    fn shares(levels: &[(u32, u32)], factor: u32) -> Vec<u32> {
        priority_shares(levels, factor)[..levels.len()].to_vec()
    }

    #[test]
    fn traffic_spills_to_the_next_level_as_health_drops() {
        // All healthy: level 0 takes everything.
        assert_eq!(shares(&[(2, 2), (1, 1)], 140), [100, 0]);
        // 3 of 4 left: 75% × 1.4 ≥ 100%, still everything.
        assert_eq!(shares(&[(3, 4), (1, 1)], 140), [100, 0]);
        // 1 of 2: 70% stays, 30% goes to the neighbour.
        assert_eq!(shares(&[(1, 2), (1, 1)], 140), [70, 30]);
        // Level 0 gone: everything to level 1.
        assert_eq!(shares(&[(0, 2), (1, 1)], 140), [0, 100]);
        // Both short (factor 1.0): 50 and 25, drawn within 75.
        assert_eq!(shares(&[(1, 2), (1, 4)], 100), [50, 25]);
        // Nothing anywhere.
        assert_eq!(shares(&[(0, 2), (0, 1)], 140), [0, 0]);
        // An empty level takes nothing and passes everything on.
        assert_eq!(shares(&[(0, 0), (2, 2)], 140), [0, 100]);
    }
}
