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
use crate::pool::{self, PoolGuard};
use crate::route::matcher::RequestView;
use crate::route::{ClusterTable, InFlight, ListenerTable, Route, RouteTable};
use crate::state::Shared;
use config_model::ClusterProtocol;

/// What a request handler knows about its client connection.
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub slot: usize,
    pub client: SocketAddr,
    pub downstream: Version,
}

/// A request's view for route matching.
struct PartsView<'a>(&'a http::request::Parts);

impl RequestView for PartsView<'_> {
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

    let Some(route) = listener.route_for(&PartsView(&parts)) else {
        let error = ProxyError::NoRoute;
        return Ok(local_reply(
            &conn,
            Some((&table, listener, &listener.metrics.unrouted, "", "")),
            started,
            &log,
            error,
        ));
    };
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
    let hash_header = cluster.hash_header.as_ref().and_then(|name| parts.headers.get(name)).map(HeaderValue::as_bytes);
    let pick = PickInput { client_ip: conn.client.ip(), hash_header };
    let Some(endpoint) = cluster.pick(&pick).cloned() else {
        return Ok(local_reply(&conn, context, started, &log, ProxyError::NoEndpoint));
    };
    let in_flight = InFlight::start(&endpoint);

    let request = match upstream_request(parts, body, &conn, listener, route, cluster, endpoint.addr, upgrade.is_some())
    {
        Ok(request) => request,
        Err(error) => return Ok(local_reply(&conn, context, started, &log, error)),
    };
    let exchange = async {
        if upgrade.is_some() {
            if cluster.protocol == ClusterProtocol::Http2 {
                return Err(ProxyError::Unsupported("upgrade to an HTTP/2 cluster"));
            }
            let response = pool::send_upgrade(&endpoint, cluster.connect_timeout, request).await?;
            Ok((response.map(ProxyBody::Incoming), PoolGuard::None))
        } else {
            pool::send(&endpoint, &cluster.pool, cluster.connect_timeout, request).await
        }
    };
    let result = match route.timeout {
        Some(limit) => tokio::time::timeout(limit, exchange).await.unwrap_or(Err(ProxyError::UpstreamTimeout)),
        None => exchange.await,
    };
    let (mut response, lease) = match result {
        Ok(exchange) => exchange,
        Err(error) => return Ok(local_reply(&conn, context, started, &log, error)),
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

/// Rewrites a client request for the upstream: hop-by-hop headers out,
/// forwarding headers and route edits in, URI and `Host` in the form the
/// upstream protocol wants.
#[allow(clippy::too_many_arguments)]
fn upstream_request(
    mut parts: http::request::Parts,
    body: Incoming,
    conn: &ConnContext,
    listener: &ListenerTable,
    route: &Route,
    cluster: &ClusterTable,
    endpoint: SocketAddr,
    upgrade: bool,
) -> Result<Request<ProxyBody>, ProxyError> {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    add_forwarding(&mut parts.headers, &listener.http, conn.client);
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
    Ok(Request::from_parts(parts, ProxyBody::Incoming(body)))
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
    let mut response = Response::new(ResponseBody::local(ProxyBody::text(reply.body)));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if conn.downstream != Version::HTTP_2 && (reply.close || conn.shared.lifecycle.is_draining()) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
