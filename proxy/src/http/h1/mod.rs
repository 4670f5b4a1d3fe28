//! The HTTP/1.1 fast path.
//!
//! Most HTTP/1 traffic is small keep-alive requests to HTTP/1 upstreams. For
//! those this path parses the head with httparse on the connection's own
//! buffer, routes on offsets into it, writes the upstream head (hop-by-hop
//! headers out, forwarding headers and edits in) plus the buffered body in one
//! write to a pooled plain TCP connection, and relays the response the same
//! way. Nothing is allocated per request once a connection's buffers exist.
//!
//! Everything else is handed to hyper ([`crate::http::server::serve_http1`])
//! for the rest of the connection, at a request boundary, with the unread
//! bytes replayed: upgrades, `Expect: 100-continue`, HTTP/1.0, absolute-form
//! targets, CONNECT, request bodies larger than [`MAX_BUFFERED_BODY`], and
//! routes to HTTP/2 clusters.

pub mod chunked;
pub mod client;
pub mod head;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use config_model::ClusterProtocol;
use http::{StatusCode, Version};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::Instant;

use self::chunked::ChunkedScanner;
use self::head::{parse_response, Framing, HeadError, RequestHead, RequestHeadView, ResponseContext, ResponseHead};
use crate::access_log::{millis, HttpRecord};
use crate::balance::PickInput;
use crate::buffers;
use crate::error::{LocalReply, ProxyError};
use crate::http::forward::ConnContext;
use crate::http::server::serve_http1;
use crate::io::{Metered, PrefixedIo, UpstreamStream};
use crate::metrics::RequestMetrics;
use crate::policy::breaker::Admission;
use crate::policy::outlier::TryOutcome;
use crate::policy::request_limit;
use crate::policy::retry::Failure;
use crate::pool::raw;
use crate::route::{
    ClusterRequest, ClusterTable, EndpointState, HeaderEdits, InFlight, ListenerTable, Route, RouteTable,
};
use crate::state::{draining, Shared};
use crate::stream::ClientStream;
use crate::tls::ConnFacts;
use crate::upstream;

/// Largest request body the fast path buffers whole; larger bodies are
/// streamed by the hyper path.
const MAX_BUFFERED_BODY: usize = 64 * 1024;
/// Read size for client and upstream buffers.
const READ_CHUNK: usize = 8 * 1024;
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Serves an HTTP/1 client connection; `buffer` holds bytes already read.
pub async fn serve(
    stream: ClientStream,
    buffer: BytesMut,
    shared: Arc<Shared>,
    slot: usize,
    client: SocketAddr,
    tls: ConnFacts,
) {
    let mut connection = Connection {
        tls,
        drain: shared.lifecycle.drain_signal(),
        shared,
        slot,
        client,
        stream,
        buf: buffer,
        head: RequestHead::default(),
        out: Vec::new(),
        upstream_buf: BytesMut::new(),
    };
    if connection.run().await != Next::Handover {
        connection.release_buffers();
        return;
    }
    let Connection { shared, slot, client, stream, buf, tls, .. } = connection;
    let table = shared.table.load_full();
    let Some(listener) = table.listener(slot).cloned() else { return };
    let context = Arc::new(ConnContext { shared, slot, client, downstream: Version::HTTP_11, tls });
    let metrics = &listener.metrics;
    let io = Metered::new(PrefixedIo::new(buf, stream), metrics.bytes_rx.clone(), metrics.bytes_tx.clone());
    serve_http1(io, context, &listener.http).await;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
    /// Let hyper serve the rest of the connection, starting at the current request.
    Handover,
}

struct Connection {
    shared: Arc<Shared>,
    slot: usize,
    client: SocketAddr,
    stream: ClientStream,
    /// SNI and peer identity of a TLS connection.
    tls: ConnFacts,
    /// Client bytes not yet consumed; starts at the current request.
    buf: BytesMut,
    head: RequestHead,
    /// Heads (and small bodies) being written, in either direction.
    out: Vec<u8>,
    upstream_buf: BytesMut,
    drain: watch::Receiver<bool>,
}

/// How reading the next request went.
enum Incoming {
    /// A complete head (and, for the fast path, a complete body) is buffered.
    Request {
        body_len: usize,
    },
    Closed,
    Handover,
    Reject(ProxyError),
}

/// How an upstream exchange failed.
enum ExchangeError {
    /// Nothing was sent to the client yet: answer with this error.
    BeforeResponse(ProxyError),
    /// The response had started; the client connection must be cut.
    DuringResponse,
}

impl Connection {
    async fn run(&mut self) -> Next {
        // Reading a request uses the previous snapshot's limits; the request
        // itself is served by the table current once it has arrived.
        let mut table = self.shared.table.load_full();
        loop {
            let Some(listener) = table.listener(self.slot) else { return Next::Close };
            let incoming = self.read_request(listener).await;
            table = self.shared.table.load_full();
            let Some(listener) = table.listener(self.slot) else { return Next::Close };
            let body_len = match incoming {
                Incoming::Request { body_len } => body_len,
                Incoming::Closed => return Next::Close,
                Incoming::Handover => return Next::Handover,
                Incoming::Reject(error) => {
                    let metrics = &listener.metrics.unrouted;
                    self.local_reply(&table, listener, metrics, ("", ""), Instant::now(), error).await;
                    return Next::Close;
                }
            };
            let next = self.handle(&table, listener, body_len).await;
            if next != Next::KeepAlive {
                return next;
            }
            self.buf.advance(self.head.len + body_len);
        }
    }

    /// Reads until a whole request is buffered (or the request must go to hyper).
    async fn read_request(&mut self, listener: &ListenerTable) -> Incoming {
        let settings = &listener.http;
        let mut head_deadline = None;
        loop {
            if !self.buf.is_empty() {
                match self.head.parse(&self.buf, settings.max_headers, settings.max_header_bytes) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(HeadError::TooLarge) => return Incoming::Reject(ProxyError::HeadersTooLarge),
                    Err(HeadError::Malformed(why)) => return Incoming::Reject(ProxyError::BadRequest(why)),
                }
            }
            // Idle between requests: wait up to the idle timeout, and close
            // at once when draining. Mid-head: the head must complete within
            // the header read timeout (slow-loris guard).
            let deadline = if self.buf.is_empty() {
                if self.shared.lifecycle.is_draining() {
                    return Incoming::Closed;
                }
                Instant::now() + settings.idle_timeout
            } else {
                *head_deadline.get_or_insert_with(|| Instant::now() + settings.header_read_timeout)
            };
            if self.buf.is_empty() {
                // Idle: hand the buffers back to the worker's pool and wait
                // for the next request without holding any.
                self.release_buffers();
                let ready = tokio::select! {
                    biased;
                    ready = tokio::time::timeout_at(deadline, self.stream.readable()) => ready,
                    _ = draining(&mut self.drain) => return Incoming::Closed,
                };
                match ready {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return Incoming::Closed,
                }
                self.buf = buffers::bytes();
                self.buf.reserve(READ_CHUNK);
                match self.stream.try_read_buf(&mut self.buf) {
                    Ok(0) => return Incoming::Closed,
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Incoming::Closed,
                }
                continue;
            }
            self.buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Incoming::Closed,
                Ok(Ok(_)) => {}
                Err(_elapsed) => return Incoming::Reject(ProxyError::RequestTimeout),
            }
        }
        if self.head.handover.is_some() {
            return Incoming::Handover;
        }
        // The fast path sends a request in one write, so its body must be
        // here whole; a large or slow body goes to hyper, which streams.
        let head_len = self.head.len;
        let mut scanner = ChunkedScanner::new();
        let mut scanned = 0;
        loop {
            let available = self.buf.len() - head_len;
            let body_len = match self.head.framing {
                Framing::None | Framing::UntilClose => Some(0),
                Framing::Length(length) if length as usize > MAX_BUFFERED_BODY => return Incoming::Handover,
                Framing::Length(length) => Some(length as usize).filter(|l| *l <= available),
                Framing::Chunked => {
                    match scanner.scan(&self.buf[head_len + scanned..]) {
                        Ok(n) => scanned += n,
                        Err(_) => return Incoming::Reject(ProxyError::BadRequest("invalid chunked body")),
                    }
                    if scanner.is_done() {
                        Some(scanned)
                    } else if available > MAX_BUFFERED_BODY {
                        return Incoming::Handover;
                    } else {
                        None
                    }
                }
            };
            if let Some(body_len) = body_len {
                return Incoming::Request { body_len };
            }
            self.buf.reserve(READ_CHUNK);
            let deadline = Instant::now() + settings.idle_timeout;
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Incoming::Closed,
                Ok(Ok(_)) => {}
                Err(_elapsed) => return Incoming::Reject(ProxyError::RequestTimeout),
            }
        }
    }

    /// Returns the buffers to the worker's pool (the connection is idle).
    fn release_buffers(&mut self) {
        buffers::recycle_bytes(std::mem::take(&mut self.buf));
        buffers::recycle_bytes(std::mem::take(&mut self.upstream_buf));
        buffers::recycle_vec(std::mem::take(&mut self.out));
    }

    async fn handle(&mut self, table: &RouteTable, listener: &Arc<ListenerTable>, body_len: usize) -> Next {
        let started = Instant::now();
        if self.out.capacity() == 0 {
            self.out = buffers::vec();
        }
        if self.upstream_buf.capacity() == 0 {
            self.upstream_buf = buffers::bytes();
        }
        if listener.http.redirect_https.is_some() && !self.tls.terminated {
            return Next::Handover;
        }
        let view = RequestHeadView {
            head: &self.head,
            buf: &self.buf,
            sni: self.tls.sni.as_deref(),
            destination: self.tls.destination,
            source: self.tls.source,
        };
        let Some(route) = listener.route_for(&view) else {
            let metrics = &listener.metrics.unrouted;
            return self.local_reply(table, listener, metrics, ("", ""), started, ProxyError::NoRoute).await;
        };
        if !listener.allows(Some(route), self.tls.peer.as_ref()) {
            listener.metrics.access_denied.inc("http");
            let metrics = &listener.metrics.unrouted;
            let names = (&*route.name, "");
            return self.local_reply(table, listener, metrics, names, started, ProxyError::Forbidden).await;
        }
        if let Some(direct) = &route.direct {
            let close = self.head.close || self.shared.lifecycle.is_draining();
            self.out.clear();
            let body = if self.head.is_head(&self.buf) { &[][..] } else { &direct.body[..] };
            let response = Response { status: direct.status, content_type: direct.content_type.as_bytes(), body };
            write_response(&mut self.out, &response, direct.body.len(), &route.response_edits, close);
            let written = self.write_client(listener).await;
            let names = (&*route.name, "");
            self.record(table, listener, &direct.metrics, names, started, direct.status.as_u16(), None);
            return if written.is_err() || close { Next::Close } else { Next::KeepAlive };
        }
        // Verified claims become request headers: hyper's path edits them.
        if route.jwt.is_some() {
            return Next::Handover;
        }
        let target = route.split.pick();
        let cluster = &table.clusters[target.cluster];
        if cluster.protocol == ClusterProtocol::Http2 {
            return Next::Handover;
        }
        let names = (&*route.name, &*cluster.name);
        let metrics = &target.metrics;
        if let Err(error) = self.admit(listener, route, cluster).await {
            return self.local_reply(table, listener, metrics, names, started, error).await;
        }
        let ticket = match &cluster.breaker {
            None => None,
            Some(policy) => match policy.breaker.admit(Instant::now()) {
                Admission::Pass(ticket) => Some(ticket),
                Admission::Reject => {
                    let error = ProxyError::Degraded(policy.clone());
                    return self.local_reply(table, listener, metrics, names, started, error).await;
                }
            },
        };
        let _cluster_request = match ClusterRequest::admit(cluster) {
            Ok(admitted) => admitted,
            Err(limit) => {
                return self.local_reply(table, listener, metrics, names, started, ProxyError::Overloaded(limit)).await
            }
        };

        // The route timeout covers every try up to the response head, not a
        // body that streams after it.
        let deadline = route.timeout.map(|limit| started + limit);
        let mut retry = 0;
        let mut _retry_slot = None;
        let mut previous = None;
        loop {
            let Some(endpoint) = self.pick_endpoint(cluster, previous) else {
                return self.local_reply(table, listener, metrics, names, started, ProxyError::NoEndpoint).await;
            };
            let _in_flight = InFlight::start(endpoint);
            let try_deadline = match route.retry.as_ref().and_then(|policy| policy.per_try_timeout) {
                Some(per_try) => Some(deadline.map_or(Instant::now() + per_try, |d| d.min(Instant::now() + per_try))),
                None => deadline,
            };
            let head = self.exchange_head(listener, route, cluster, endpoint, body_len);
            let result = match try_deadline {
                Some(at) => tokio::time::timeout_at(at, head)
                    .await
                    .unwrap_or(Err(ExchangeError::BeforeResponse(ProxyError::UpstreamTimeout))),
                None => head.await,
            };
            if let Err(ExchangeError::BeforeResponse(error)) = &result {
                endpoint.metrics.try_failed(error);
            }
            let (failure, outcome) = match &result {
                Ok((_, response, _)) => (Failure::Status(response.status), TryOutcome::Response(response.status)),
                Err(ExchangeError::BeforeResponse(error)) => match Failure::of(error) {
                    Some(Failure::Connect) => (Failure::Connect, TryOutcome::ConnectFailure),
                    Some(failure) => (failure, TryOutcome::Failure),
                    None => {
                        let error = match result {
                            Err(ExchangeError::BeforeResponse(error)) => error,
                            _ => ProxyError::NoEndpoint,
                        };
                        return self.local_reply(table, listener, metrics, names, started, error).await;
                    }
                },
                Err(ExchangeError::DuringResponse) => return Next::Close,
            };
            cluster.observe(endpoint, outcome);
            if let Some(policy) = &route.retry {
                let time_left = deadline.is_none_or(|d| Instant::now() < d);
                let idempotent = self.head.is_idempotent(&self.buf);
                if time_left {
                    if let Some(slot) = policy.admit(retry + 1, failure, idempotent, &cluster.state) {
                        retry += 1;
                        endpoint.metrics.retries.inc();
                        previous = Some(endpoint.id);
                        // The failed try's response (if any) is dropped with its connection.
                        drop(result);
                        policy.wait_backoff(retry, deadline).await;
                        _retry_slot = Some(slot);
                        continue;
                    }
                }
            }
            let head_latency = started.elapsed();
            if let (Some(ticket), Some(policy)) = (ticket, &cluster.breaker) {
                let error = !matches!(failure, Failure::Status(status) if status < 500);
                ticket.record(&policy.breaker, Instant::now(), error, head_latency);
            }
            let (upstream, response, close_client) = match result {
                Ok(exchanged) => exchanged,
                Err(ExchangeError::BeforeResponse(error)) => {
                    return self.local_reply(table, listener, metrics, names, started, error).await;
                }
                Err(ExchangeError::DuringResponse) => return Next::Close,
            };
            if self.relay_body(listener, endpoint, upstream, &response).await.is_err() {
                return Next::Close;
            }
            // Latency is to the response head (as for the hyper path); the
            // access log has the whole exchange.
            metrics.record(response.status, head_latency);
            self.log(table, listener, names, started, response.status, Some(endpoint.addr), None);
            let close = close_client || response.framing == Framing::UntilClose;
            return if close { Next::Close } else { Next::KeepAlive };
        }
    }

    /// Applies the rate limits the request meets (listener, route, cluster).
    async fn admit(&self, listener: &ListenerTable, route: &Route, cluster: &ClusterTable) -> Result<(), ProxyError> {
        if listener.rate_limit.is_none() && route.rate_limit.is_none() && cluster.rate_limit.is_none() {
            return Ok(());
        }
        let limiters = [&listener.rate_limit, &route.rate_limit, &cluster.rate_limit].into_iter().flatten();
        let (head, buf) = (&self.head, &self.buf);
        request_limit::admit(limiters, self.client.ip(), |name| head.header(buf, name))
            .await
            .map_err(|(limiter, retry_after)| ProxyError::RateLimited(limiter, retry_after))
    }

    /// An endpoint for a try; a retry avoids the endpoint that just failed
    /// when the balancer offers another.
    fn pick_endpoint<'t>(&self, cluster: &'t ClusterTable, previous: Option<usize>) -> Option<&'t Arc<EndpointState>> {
        let hash_header = cluster.hash_header.as_ref().and_then(|name| self.head.header(&self.buf, name));
        let pick = PickInput { client_ip: self.client.ip(), hash_header };
        match previous {
            // Another endpoint if there is one, else the same again.
            Some(previous) => cluster.pick_untried(&pick, &[previous]).or_else(|| cluster.pick(&pick)),
            None => cluster.pick(&pick),
        }
    }

    /// Writes the request upstream and reads the final response head,
    /// passing any interim (1xx) heads on. Leaves the client's head in `out`
    /// and the bytes after the upstream's head in `upstream_buf`.
    async fn exchange_head(
        &mut self,
        listener: &ListenerTable,
        route: &Route,
        cluster: &ClusterTable,
        endpoint: &Arc<EndpointState>,
        body_len: usize,
    ) -> Result<(UpstreamStream, ResponseHead, bool), ExchangeError> {
        let head_len = self.head.len;
        self.out.clear();
        self.head.write_upstream(
            &self.buf,
            &mut self.out,
            &listener.http,
            &route.request_edits,
            self.client.ip(),
            self.tls.scheme(),
            endpoint.addr,
        );
        self.out.extend_from_slice(&self.buf[head_len..head_len + body_len]);
        listener.metrics.bytes_rx.inc_by((head_len + body_len) as u64);

        // A pooled connection may have been closed by the upstream an instant
        // ago; when that shows before any response byte, try another
        // connection, as long as repeating the request is harmless.
        let retry_allowed = self.head.is_idempotent(&self.buf);
        let mut upstream;
        loop {
            let reused = raw::checkout(endpoint, &cluster.pool);
            let was_reused = reused.is_some();
            upstream = match reused {
                Some(connection) => connection,
                None => upstream::connect(endpoint, cluster.connect_timeout)
                    .await
                    .map_err(|e| ExchangeError::BeforeResponse(ProxyError::Connect(e)))?,
            };
            upstream.start_request();
            self.upstream_buf.clear();
            let waiting = send_and_read_head(&mut upstream, &self.out, &mut self.upstream_buf);
            let Some(sent) = until_client_leaves(&mut self.stream, &mut self.buf, waiting).await else {
                // Nobody is waiting for the answer any more: drop the upstream
                // connection, which also tells the upstream to stop.
                endpoint.metrics.cancelled.inc();
                return Err(ExchangeError::DuringResponse);
            };
            match sent {
                Ok(()) => break,
                Err(_) if was_reused && retry_allowed => continue,
                Err(error) => {
                    let reason = if was_reused { "upstream closed a reused connection" } else { "upstream closed" };
                    tracing::debug!(%error, endpoint = %endpoint.addr, "{reason}");
                    return Err(ExchangeError::BeforeResponse(ProxyError::Upstream(error.to_string())));
                }
            }
        }

        let draining = self.shared.lifecycle.is_draining();
        let close_client = self.head.close || draining;
        let context = ResponseContext {
            head_request: self.head.is_head(&self.buf),
            edits: &route.response_edits,
            close: close_client,
        };
        // Read heads until a final (non-1xx) one; interim ones go straight on.
        let response = loop {
            self.out.clear();
            let parsed = match parse_response(&self.upstream_buf, MAX_RESPONSE_HEAD, &mut self.out, &context) {
                Ok(Some(response)) => response,
                Ok(None) => {
                    if read_more(&mut upstream, &mut self.upstream_buf).await? == 0 {
                        return Err(ExchangeError::BeforeResponse(ProxyError::Upstream(
                            "upstream closed before a complete response head".into(),
                        )));
                    }
                    continue;
                }
                Err(why) => return Err(ExchangeError::BeforeResponse(ProxyError::Upstream(why.into()))),
            };
            if parsed.status == 101 {
                return Err(ExchangeError::BeforeResponse(ProxyError::Upstream("unexpected 101".into())));
            }
            if (100..200).contains(&parsed.status) {
                self.write_client(listener).await?;
                self.upstream_buf.advance(parsed.len);
                continue;
            }
            break parsed;
        };
        self.upstream_buf.advance(response.len);
        Ok((upstream, response, close_client))
    }

    /// Sends the response head (in `out`) with the first body bytes, then the
    /// rest of the body; returns the upstream connection to the pool when
    /// the exchange ended cleanly.
    async fn relay_body(
        &mut self,
        listener: &ListenerTable,
        endpoint: &Arc<EndpointState>,
        mut upstream: UpstreamStream,
        response: &ResponseHead,
    ) -> Result<(), ExchangeError> {
        // The first body bytes travel with the head.
        let mut scanner = ChunkedScanner::new();
        let (first, mut remaining) = match response.framing {
            Framing::None => (0, Some(0)),
            Framing::Length(length) => {
                let first = (length as usize).min(self.upstream_buf.len());
                (first, Some(length - first as u64))
            }
            Framing::Chunked => {
                let first = scanner.scan(&self.upstream_buf).map_err(|_| {
                    ExchangeError::BeforeResponse(ProxyError::Upstream("invalid chunked response".into()))
                })?;
                (first, None)
            }
            Framing::UntilClose => (self.upstream_buf.len(), None),
        };
        self.out.extend_from_slice(&self.upstream_buf[..first]);
        self.upstream_buf.advance(first);
        self.write_client(listener).await?;

        // The rest of the body.
        let mut upstream_clean = true;
        loop {
            let done = match response.framing {
                Framing::None | Framing::Length(_) => remaining == Some(0),
                Framing::Chunked => scanner.is_done(),
                Framing::UntilClose => false,
            };
            if done {
                break;
            }
            self.upstream_buf.clear();
            let limit = match remaining {
                Some(left) => (left as usize).min(READ_CHUNK),
                None => READ_CHUNK,
            };
            self.upstream_buf.reserve(limit);
            let n = read_limited(&mut upstream, &mut self.upstream_buf, limit)
                .await
                .map_err(|_| ExchangeError::DuringResponse)?;
            if n == 0 {
                if response.framing == Framing::UntilClose {
                    upstream_clean = false;
                    break;
                }
                return Err(ExchangeError::DuringResponse);
            }
            let forward = match response.framing {
                // The head is out: a broken body can only cut the connection.
                Framing::Chunked => scanner.scan(&self.upstream_buf).map_err(|_| ExchangeError::DuringResponse)?,
                _ => n,
            };
            if let Some(left) = remaining.as_mut() {
                *left -= forward as u64;
            }
            self.out.clear();
            self.out.extend_from_slice(&self.upstream_buf[..forward]);
            self.write_client(listener).await?;
            if forward < n {
                // Bytes after the end of the body: the upstream broke framing.
                upstream_clean = false;
            }
        }
        upstream.finish_request();
        if upstream_clean && !response.upstream_close && self.upstream_buf.is_empty() {
            raw::checkin(endpoint, upstream);
        }
        Ok(())
    }

    async fn write_client(&mut self, listener: &ListenerTable) -> Result<(), ExchangeError> {
        crate::io::write_out(&mut self.stream, &self.out).await.map_err(|_| ExchangeError::DuringResponse)?;
        listener.metrics.bytes_tx.inc_by(self.out.len() as u64);
        Ok(())
    }

    /// Answers a request the proxy cannot forward.
    async fn local_reply(
        &mut self,
        table: &RouteTable,
        listener: &ListenerTable,
        metrics: &RequestMetrics,
        names: (&str, &str),
        started: Instant,
        error: ProxyError,
    ) -> Next {
        let reply = error.reply();
        tracing::debug!(client = %self.client, %error, status = reply.status.as_u16(), "local reply");
        let close = reply.close || self.head.close || self.shared.lifecycle.is_draining();
        self.out.clear();
        let head_request = self.head.is_head(&self.buf);
        write_local_reply(&mut self.out, &reply, head_request, close);
        self.record(table, listener, metrics, names, started, reply.status.as_u16(), Some(reply.reason));
        if crate::io::write_out(&mut self.stream, &self.out).await.is_err() || close {
            return Next::Close;
        }
        listener.metrics.bytes_tx.inc_by(self.out.len() as u64);
        Next::KeepAlive
    }

    /// Metrics and the access log for a response the proxy made itself.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        table: &RouteTable,
        listener: &ListenerTable,
        metrics: &RequestMetrics,
        names: (&str, &str),
        started: Instant,
        status: u16,
        local_reply: Option<&'static str>,
    ) {
        metrics.record(status, started.elapsed());
        if let Some(reason) = local_reply {
            listener.metrics.local_reply(reason);
        }
        self.log(table, listener, names, started, status, None, local_reply);
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        table: &RouteTable,
        listener: &ListenerTable,
        (route, cluster): (&str, &str),
        started: Instant,
        status: u16,
        upstream: Option<SocketAddr>,
        local_reply: Option<&'static str>,
    ) {
        if table.access_log {
            let elapsed = started.elapsed();
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            let target = text(self.head.target(&self.buf));
            self.shared.access_log.http(
                table.access_log_format,
                &HttpRecord {
                    listener: &listener.name,
                    route,
                    cluster,
                    client: self.client,
                    method: &text(self.head.method(&self.buf)),
                    authority: &self.head.host(&self.buf).map(text).unwrap_or_default(),
                    path: &target,
                    protocol: "HTTP/1.1",
                    status,
                    upstream,
                    local_reply,
                    duration_ms: millis(elapsed),
                    sni: self.tls.sni.as_deref(),
                    peer: self.tls.peer.as_ref().map(|peer| peer.primary()),
                },
            );
        }
    }
}

/// Runs `work` while watching the client connection: `None` if the client
/// closes first. Bytes the client sends meanwhile (a pipelined request) are
/// kept in `buf`, up to a bound past which the client is no longer watched.
async fn until_client_leaves<F: std::future::Future>(
    client: &mut ClientStream,
    buf: &mut BytesMut,
    work: F,
) -> Option<F::Output> {
    tokio::pin!(work);
    loop {
        let watch = buf.len() < MAX_BUFFERED_BODY;
        tokio::select! {
            biased;
            output = &mut work => return Some(output),
            ready = client.readable(), if watch => {
                if ready.is_err() {
                    return None;
                }
                buf.reserve(READ_CHUNK);
                match client.try_read_buf(buf) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
            }
        }
    }
}

/// Writes the request and reads until some response bytes arrive.
async fn send_and_read_head(upstream: &mut UpstreamStream, request: &[u8], buf: &mut BytesMut) -> std::io::Result<()> {
    crate::io::write_out(upstream, request).await?;
    buf.reserve(READ_CHUNK);
    if upstream.read_buf(buf).await? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before responding"));
    }
    Ok(())
}

async fn read_more(upstream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<usize, ExchangeError> {
    if buf.len() > MAX_RESPONSE_HEAD {
        return Err(ExchangeError::BeforeResponse(ProxyError::Upstream("response head too large".into())));
    }
    buf.reserve(READ_CHUNK);
    upstream.read_buf(buf).await.map_err(|e| ExchangeError::BeforeResponse(ProxyError::Upstream(e.to_string())))
}

/// Reads at most `limit` bytes, so a body read never runs into bytes that
/// are not part of it.
async fn read_limited(upstream: &mut UpstreamStream, buf: &mut BytesMut, limit: usize) -> std::io::Result<usize> {
    let mut limited = (&mut *upstream).take(limit as u64);
    limited.read_buf(buf).await
}

/// `HTTP/1.1 <status>` with a short text body.
fn write_local_reply(out: &mut Vec<u8>, reply: &LocalReply, head_request: bool, close: bool) {
    let body = if head_request { &[][..] } else { &reply.body[..] };
    let response = Response { status: reply.status, content_type: b"text/plain", body };
    let extra = HeaderEdits { add: reply.headers.clone(), ..HeaderEdits::default() };
    write_response(out, &response, reply.body.len(), &extra, close);
}

/// A response made by the proxy itself.
struct Response<'a> {
    status: StatusCode,
    content_type: &'a [u8],
    body: &'a [u8],
}

/// Writes a whole response. `length` is the Content-Length, which differs
/// from the body's length for HEAD requests.
fn write_response(out: &mut Vec<u8>, response: &Response<'_>, length: usize, edits: &HeaderEdits, close: bool) {
    use std::io::Write as _;
    let status = response.status;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    if !edits.drops(b"content-type") {
        out.extend_from_slice(b"content-type: ");
        out.extend_from_slice(response.content_type);
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "content-length: {length}\r\n");
    for (name, value) in edits.additions() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(response.body);
}
