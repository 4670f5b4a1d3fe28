//! The hyper request path: route a request, forward it upstream, shape the
//! response. Serves HTTP/2 clients and the HTTP/1 requests the fast path
//! hands over (upgrades, `Expect: 100-continue`, HTTP/2 clusters).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::{ProxyBody, ResponseBody};
use super::headers::{add_forwarding, is_upgrade_request, strip_hop_by_hop};
use crate::access_log::{millis, HttpRecord};
use crate::balance::PickInput;
use crate::error::ProxyError;
use crate::metrics::RequestMetrics;
use crate::policy::breaker::Admission;
use crate::policy::outlier::TryOutcome;
use crate::policy::request_limit;
use crate::policy::retry::Failure;
use crate::pool::{self, PoolGuard};
use crate::route::matcher::RequestView;
use crate::route::{ClusterRequest, ClusterTable, InFlight, ListenerTable, Route, RouteTable};
use crate::state::Shared;
use config_model::ClusterProtocol;

/// What a request handler knows about its client connection.
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub slot: usize,
    pub client: SocketAddr,
    pub downstream: Version,
    /// SNI and peer identity of a TLS connection.
    pub tls: crate::tls::ConnFacts,
}

/// A request's view for route matching, with its connection's facts.
struct PartsView<'a>(&'a http::request::Parts, Option<&'a crate::tls::ConnFacts>);

impl RequestView for PartsView<'_> {
    fn sni(&self) -> Option<&str> {
        self.1.and_then(|facts| facts.sni.as_deref())
    }

    fn destination(&self) -> Option<std::net::SocketAddr> {
        self.1.and_then(|facts| facts.destination)
    }

    fn source(&self) -> Option<std::net::IpAddr> {
        self.1.and_then(|facts| facts.source)
    }

    fn method(&self) -> &str {
        self.0.method.as_str()
    }

    fn path(&self) -> &str {
        self.0.uri.path()
    }

    fn host(&self) -> Option<&str> {
        self.0
            .uri
            .authority()
            .map(Authority::as_str)
            .or_else(|| self.0.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
    }

    fn header_values<'a>(&'a self, name: &'a http::HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0.headers.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// hyper service entry point.
pub async fn handle(
    mut request: Request<Incoming>,
    conn: Arc<ConnContext>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let table = conn.shared.table.load_full();
    let Some(listener) = table.listener(conn.slot) else {
        return Ok(local_reply(&conn, None, started, &RequestLog::default(), ProxyError::ListenerGone));
    };
    let upgrade = (conn.downstream != Version::HTTP_2 && is_upgrade_request(request.headers()))
        .then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let log = if table.access_log { RequestLog::capture(&parts) } else { RequestLog::default() };
    if let (Some((status, port)), false) = (listener.http.redirect_https, conn.tls.terminated) {
        return Ok(https_redirect(&conn, &table, listener, started, &log, &parts, status, port));
    }

    let Some(route) = listener.route_for(&PartsView(&parts, Some(&conn.tls))) else {
        let error = ProxyError::NoRoute;
        return Ok(local_reply(
            &conn,
            Some((&table, listener, &listener.metrics.unrouted, "", "")),
            started,
            &log,
            error,
        ));
    };
    if !listener.allows(Some(route), conn.tls.peer.as_ref()) {
        listener.metrics.access_denied.inc("http");
        let context = Some((&*table, &**listener, &listener.metrics.unrouted, &*route.name, ""));
        return Ok(local_reply(&conn, context, started, &log, ProxyError::Forbidden));
    }
    let mut parts = parts;
    if let Some(jwt) = &route.jwt {
        // The verifier looks at the headers once per token source.
        let headers: Vec<(&[u8], &[u8])> =
            parts.headers.iter().map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())).collect();
        match jwt.verify(headers.iter().copied(), std::time::SystemTime::now()) {
            Ok(verified) => {
                for name in jwt.claim_headers().iter().chain(jwt.strip_headers()) {
                    parts.headers.remove(name);
                }
                for (name, value) in verified.forward {
                    parts.headers.insert(name, value);
                }
            }
            Err(why) => {
                tracing::debug!(route = %route.name, reason = why.reason(), "JWT refused");
                let context = Some((&*table, &**listener, &listener.metrics.unrouted, &*route.name, ""));
                return Ok(local_reply(&conn, context, started, &log, ProxyError::Unauthorized(why)));
            }
        }
    }
    if let Some(direct) = &route.direct {
        let context = Some((&*table, &**listener, &direct.metrics, &*route.name, ""));
        record(&conn, context, started, &log, direct.status.as_u16(), None, None);
        let mut response = Response::new(ResponseBody::local(ProxyBody::Full(Some(direct.body.clone()))));
        *response.status_mut() = direct.status;
        response.headers_mut().insert(header::CONTENT_TYPE, direct.content_type.clone());
        finish_response(&mut response, route, &conn, false);
        return Ok(response);
    }
    let target = route.split.pick();
    let cluster = &table.clusters[target.cluster];
    let context = Some((&*table, &**listener, &target.metrics, &*route.name, &*cluster.name));
    if let Err(error) = admit(listener, route, cluster, &conn, &parts).await {
        return Ok(local_reply(&conn, context, started, &log, error));
    }
    let ticket = match &cluster.breaker {
        None => None,
        Some(policy) => match policy.breaker.admit(Instant::now()) {
            Admission::Pass(ticket) => Some(ticket),
            Admission::Reject => {
                return Ok(local_reply(&conn, context, started, &log, ProxyError::Degraded(policy.clone())));
            }
        },
    };
    let cluster_request = match ClusterRequest::admit(cluster) {
        Ok(admitted) => admitted,
        Err(limit) => return Ok(local_reply(&conn, context, started, &log, ProxyError::Overloaded(limit))),
    };
    let retry_policy = route.retry.as_ref().filter(|_| upgrade.is_none());
    let idempotent = is_idempotent(&parts.method);
    // A request that may be retried needs its body again: a small one is
    // read whole first; a large or streaming one is only retried when it
    // never left (connect failures), which `Failure::Connect` covers below.
    let (body, replayable) = match retry_policy {
        Some(_) => match buffer_small_body(&parts, body).await {
            Ok(buffered) => buffered,
            Err(error) => return Ok(local_reply(&conn, context, started, &log, error)),
        },
        None => (ProxyBody::Incoming(body), false),
    };
    // The ring-hash key outlives `parts`, which the upstream request takes.
    let hash_header = cluster.hash_header.as_ref().and_then(|name| parts.headers.get(name)).cloned();
    let pick = PickInput { client_ip: conn.client.ip(), hash_header: hash_header.as_ref().map(HeaderValue::as_bytes) };
    let Some(first_endpoint) = cluster.pick(&pick).cloned() else {
        return Ok(local_reply(&conn, context, started, &log, ProxyError::NoEndpoint));
    };
    let request =
        match upstream_request(parts, body, &conn, listener, route, cluster, first_endpoint.addr, upgrade.is_some()) {
            Ok(request) => request,
            Err(error) => return Ok(local_reply(&conn, context, started, &log, error)),
        };
    let template = replayable.then(|| RequestTemplate::of(&request));
    let mut request = Some(request);

    let deadline = route.timeout.map(|limit| started + limit);
    let mut endpoint = first_endpoint;
    let mut retry = 0;
    let mut _retry_slot = None;
    let (mut response, lease, in_flight) = loop {
        let in_flight = InFlight::start(&endpoint);
        let Some(this_try) = request.take().or_else(|| template.as_ref().map(RequestTemplate::build)) else {
            return Ok(local_reply(&conn, context, started, &log, ProxyError::NoEndpoint));
        };
        let exchange = async {
            if upgrade.is_some() {
                if cluster.protocol == ClusterProtocol::Http2 {
                    return Err(ProxyError::Unsupported("upgrade to an HTTP/2 cluster"));
                }
                let response = pool::send_upgrade(&endpoint, cluster.connect_timeout, this_try).await?;
                Ok((response.map(ProxyBody::Incoming), PoolGuard::None))
            } else {
                pool::send(&endpoint, &cluster.pool, cluster.connect_timeout, this_try).await
            }
        };
        let try_deadline = match retry_policy.and_then(|policy| policy.per_try_timeout) {
            Some(per_try) => Some(deadline.map_or(Instant::now() + per_try, |d| d.min(Instant::now() + per_try))),
            None => deadline,
        };
        // hyper drops this future when the client goes away (a closed
        // connection, an HTTP/2 reset): the watch counts that.
        let watch = endpoint.metrics.watch_try();
        let result = match try_deadline {
            Some(at) => tokio::time::timeout_at(at, exchange).await.unwrap_or(Err(ProxyError::UpstreamTimeout)),
            None => exchange.await,
        };
        watch.settled();
        if let Err(error) = &result {
            endpoint.metrics.try_failed(error);
        }
        let failure = match result.as_ref().map_err(Failure::of) {
            Ok((response, _)) => Failure::Status(response.status().as_u16()),
            Err(Some(failure)) => failure,
            // Not an upstream failure (a bad request body, an overload): no retry can help.
            Err(None) => {
                let error = result.err().unwrap_or(ProxyError::NoEndpoint);
                return Ok(local_reply(&conn, context, started, &log, error));
            }
        };
        cluster.observe(
            &endpoint,
            match failure {
                Failure::Status(status) => TryOutcome::Response(status),
                Failure::Connect => TryOutcome::ConnectFailure,
                Failure::RefusedStream | Failure::Reset => TryOutcome::Failure,
            },
        );
        if let Some(policy) = retry_policy {
            let time_left = deadline.is_none_or(|d| Instant::now() < d);
            // A streamed body went with the first try: only a held one can be sent again.
            if time_left && template.is_some() {
                if let Some(slot) = policy.admit(retry + 1, failure, idempotent, &cluster.state) {
                    retry += 1;
                    endpoint.metrics.retries.inc();
                    drop(result);
                    policy.wait_backoff(retry, deadline).await;
                    _retry_slot = Some(slot);
                    // Another endpoint if there is one, else the same again.
                    if let Some(next) = cluster.pick_untried(&pick, &[endpoint.id]).or_else(|| cluster.pick(&pick)) {
                        endpoint = next.clone();
                    }
                    continue;
                }
            }
        }
        if let (Some(ticket), Some(policy)) = (ticket, &cluster.breaker) {
            let error = !matches!(failure, Failure::Status(status) if status < 500);
            ticket.record(&policy.breaker, Instant::now(), error, started.elapsed());
        }
        match result {
            Ok((response, lease)) => break (response, lease, in_flight.holding(cluster_request)),
            Err(error) => return Ok(local_reply(&conn, context, started, &log, error)),
        }
    };

    let status = response.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
    if switching {
        if let Some(downstream) = upgrade {
            tunnel(&conn, downstream, hyper::upgrade::on(&mut response), in_flight);
        }
        finish_response(&mut response, route, &conn, true);
        record(&conn, context, started, &log, status.as_u16(), Some(endpoint.addr), None);
        return Ok(response.map(|_| ResponseBody::local(ProxyBody::empty())));
    }
    finish_response(&mut response, route, &conn, false);
    record(&conn, context, started, &log, status.as_u16(), Some(endpoint.addr), None);
    Ok(response.map(|body| ResponseBody::upstream(body, lease, in_flight)))
}

/// Largest request body held in memory so that a retry can send it again.
const MAX_REPLAYABLE_BODY: u64 = 64 * 1024;

/// Reads a small request body whole, so a retry can resend it. Returns the
/// body to send and whether it can be sent again.
async fn buffer_small_body(parts: &http::request::Parts, body: Incoming) -> Result<(ProxyBody, bool), ProxyError> {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    if body.is_end_stream() {
        return Ok((ProxyBody::empty(), true));
    }
    let small = body.size_hint().upper().is_some_and(|upper| upper <= MAX_REPLAYABLE_BODY);
    if !small || parts.headers.contains_key(header::EXPECT) {
        return Ok((ProxyBody::Incoming(body), false));
    }
    let collected = body.collect().await.map_err(|_| ProxyError::BadRequest("invalid request body"))?;
    Ok((ProxyBody::Full(Some(collected.to_bytes())), true))
}

/// What is needed to send a request again: the head and the buffered body.
struct RequestTemplate {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
    body: Option<bytes::Bytes>,
}

impl RequestTemplate {
    fn of(request: &Request<ProxyBody>) -> Self {
        let body = match request.body() {
            ProxyBody::Full(bytes) => bytes.clone(),
            _ => None,
        };
        RequestTemplate {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            body,
        }
    }

    fn build(&self) -> Request<ProxyBody> {
        let mut request = Request::new(ProxyBody::Full(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Applies the rate limits the request meets (listener, route, cluster).
async fn admit(
    listener: &ListenerTable,
    route: &Route,
    cluster: &ClusterTable,
    conn: &ConnContext,
    parts: &http::request::Parts,
) -> Result<(), ProxyError> {
    if listener.rate_limit.is_none() && route.rate_limit.is_none() && cluster.rate_limit.is_none() {
        return Ok(());
    }
    let limiters = [&listener.rate_limit, &route.rate_limit, &cluster.rate_limit].into_iter().flatten();
    request_limit::admit(limiters, conn.client.ip(), |name| parts.headers.get(name).map(HeaderValue::as_bytes))
        .await
        .map_err(|(limiter, retry_after)| ProxyError::RateLimited(limiter, retry_after))
}

/// Rewrites a client request for the upstream: hop-by-hop headers out,
/// forwarding headers and route edits in, URI and `Host` in the form the
/// upstream protocol wants.
#[allow(clippy::too_many_arguments)]
fn upstream_request(
    mut parts: http::request::Parts,
    body: ProxyBody,
    conn: &ConnContext,
    listener: &ListenerTable,
    route: &Route,
    cluster: &ClusterTable,
    endpoint: SocketAddr,
    upgrade: bool,
) -> Result<Request<ProxyBody>, ProxyError> {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    add_forwarding(&mut parts.headers, &listener.http, conn.client, conn.tls.scheme());
    route.request_edits.apply(&mut parts.headers);
    match cluster.protocol {
        ClusterProtocol::Http1 => {
            if let Some(authority) = parts.uri.authority() {
                if !parts.headers.contains_key(header::HOST) {
                    let host = HeaderValue::from_str(authority.as_str())
                        .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
                    parts.headers.insert(header::HOST, host);
                }
                let origin_form = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                parts.uri = Uri::try_from(origin_form).map_err(|_| ProxyError::BadRequest("invalid path"))?;
            }
            parts.version = Version::HTTP_11;
        }
        ClusterProtocol::Http2 => {
            let authority = match parts.uri.authority() {
                Some(authority) => authority.clone(),
                None => match parts.headers.get(header::HOST) {
                    Some(host) => Authority::try_from(host.as_bytes())
                        .map_err(|_| ProxyError::BadRequest("invalid host header"))?,
                    None => Authority::try_from(endpoint.to_string().as_str())
                        .map_err(|_| ProxyError::BadRequest("invalid authority"))?,
                },
            };
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(authority);
            if uri.path_and_query.is_none() {
                uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid uri"))?;
            parts.headers.remove(header::HOST);
            parts.version = Version::HTTP_2;
        }
    }
    Ok(Request::from_parts(parts, body))
}

/// `example.com:80` → `example.com`, `[::1]:80` → `[::1]`.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

/// A redirect to the same URL over `https`.
#[allow(clippy::too_many_arguments)]
fn https_redirect(
    conn: &ConnContext,
    table: &RouteTable,
    listener: &ListenerTable,
    started: Instant,
    log: &RequestLog,
    parts: &http::request::Parts,
    status: StatusCode,
    port: Option<u16>,
) -> Response<ResponseBody> {
    let view = PartsView(parts, None);
    let host = view.host().map(without_port).unwrap_or("");
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = match port {
        Some(443) | None => format!("https://{host}{target}"),
        Some(port) => format!("https://{host}:{port}{target}"),
    };
    listener.metrics.local_reply("https_redirect");
    record(
        conn,
        Some((table, listener, &listener.metrics.unrouted, "", "")),
        started,
        log,
        status.as_u16(),
        None,
        None,
    );
    let mut response = Response::new(ResponseBody::local(ProxyBody::Full(None)));
    *response.status_mut() = status;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

fn finish_response<B>(response: &mut Response<B>, route: &Route, conn: &ConnContext, switching: bool) {
    let headers = response.headers_mut();
    strip_hop_by_hop(headers, switching);
    route.response_edits.apply(headers);
    if conn.downstream != Version::HTTP_2 {
        if conn.shared.lifecycle.is_draining() && !switching {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        *response.version_mut() = Version::HTTP_11;
    } else {
        *response.version_mut() = Version::HTTP_2;
    }
}

/// Splices an upgraded client connection to the upgraded upstream connection.
fn tunnel(
    conn: &ConnContext,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
) {
    // The client connection's task ends at the upgrade; keep the tunnel
    // counted so a drain waits for it.
    let guard = conn.shared.connections.open();
    tokio::spawn(async move {
        let _guard = guard;
        let _in_flight = in_flight;
        let (downstream, upstream) = match tokio::join!(downstream, upstream) {
            (Ok(d), Ok(u)) => (d, u),
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, "upgrade failed");
                return;
            }
        };
        let mut downstream = TokioIo::new(downstream);
        let mut upstream = TokioIo::new(upstream);
        if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
            tracing::debug!(%error, "upgraded connection ended with an error");
        }
    });
}

/// Request details kept for the access log (only when it is on).
#[derive(Default)]
struct RequestLog {
    method: Option<http::Method>,
    uri: Option<Uri>,
    host: Option<HeaderValue>,
    version: Option<Version>,
}

impl RequestLog {
    fn capture(parts: &http::request::Parts) -> Self {
        RequestLog {
            method: Some(parts.method.clone()),
            uri: Some(parts.uri.clone()),
            host: parts.headers.get(header::HOST).cloned(),
            version: Some(parts.version),
        }
    }
}

type Context<'a> = Option<(&'a RouteTable, &'a ListenerTable, &'a RequestMetrics, &'a str, &'a str)>;

fn record(
    conn: &ConnContext,
    context: Context<'_>,
    started: Instant,
    log: &RequestLog,
    status: u16,
    upstream: Option<SocketAddr>,
    local_reply: Option<&'static str>,
) {
    let Some((table, listener, metrics, route, cluster)) = context else { return };
    let elapsed = started.elapsed();
    metrics.record(status, elapsed);
    if let Some(reason) = local_reply {
        listener.metrics.local_reply(reason);
    }
    if table.access_log {
        write_access_log(conn, table, listener, route, cluster, log, status, upstream, local_reply, elapsed);
    }
}

#[allow(clippy::too_many_arguments)]
fn write_access_log(
    conn: &ConnContext,
    table: &RouteTable,
    listener: &ListenerTable,
    route: &str,
    cluster: &str,
    log: &RequestLog,
    status: u16,
    upstream: Option<SocketAddr>,
    local_reply: Option<&'static str>,
    elapsed: Duration,
) {
    let authority = log
        .uri
        .as_ref()
        .and_then(Uri::authority)
        .map(Authority::as_str)
        .or_else(|| log.host.as_ref().and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let protocol = match log.version {
        Some(Version::HTTP_2) => "HTTP/2",
        Some(Version::HTTP_10) => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    conn.shared.access_log.http(
        table.access_log_format,
        &HttpRecord {
            listener: &listener.name,
            route,
            cluster,
            client: conn.client,
            method: log.method.as_ref().map_or("", http::Method::as_str),
            authority,
            path: log.uri.as_ref().and_then(Uri::path_and_query).map_or("", |pq| pq.as_str()),
            protocol,
            status,
            upstream,
            local_reply,
            duration_ms: millis(elapsed),
            sni: conn.tls.sni.as_deref(),
            peer: conn.tls.peer.as_ref().map(|peer| peer.primary()),
        },
    );
}

/// The proxy's own answer to a failed request.
fn local_reply(
    conn: &ConnContext,
    context: Context<'_>,
    started: Instant,
    log: &RequestLog,
    error: ProxyError,
) -> Response<ResponseBody> {
    let reply = error.reply();
    tracing::debug!(client = %conn.client, %error, status = reply.status.as_u16(), "local reply");
    record(conn, context, started, log, reply.status.as_u16(), None, Some(reply.reason));
    let mut response = Response::new(ResponseBody::local(ProxyBody::Full(Some(reply.body))));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    for (name, value) in reply.headers {
        headers.append(name, value);
    }
    if conn.downstream != Version::HTTP_2 && (reply.close || conn.shared.lifecycle.is_draining()) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
