//! An HTTP/1.1 and HTTP/2 (h2c) upstream whose behaviour is chosen by the
//! request path. See [`HttpUpstream`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRAILER};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

use super::{bind_loopback, InFlight, ServerTask};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// Which HTTP versions an [`HttpUpstream`] speaks (all in cleartext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProto {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 with prior knowledge (h2c) only.
    Http2,
    /// Both, detected per connection from the HTTP/2 preface.
    Auto,
}

/// Header naming the upstream that answered, on every response.
pub const X_UPSTREAM: &str = "x-upstream";

/// Body of `/abort`: announced length and what is actually sent.
const ABORT_ANNOUNCED_LEN: usize = 1000;
const ABORT_SENT: &[u8] = b"0123456789";
/// How long `/abort` waits after its partial body before failing. Without it
/// hyper may tear the connection down before flushing the head and the 10
/// bytes, and the client would see no response at all.
const ABORT_FLUSH_GRACE: Duration = Duration::from_millis(50);

/// A test HTTP server. Dispatch is on the path (the query is ignored):
///
/// | path | response |
/// | --- | --- |
/// | `/status/<code>` | that status, empty body |
/// | `/delay/<ms>` | sleeps, then like the default |
/// | `/bytes/<n>` | exactly n bytes (`abc…z` repeated), Content-Length set |
/// | `/echo` | streams the request body back frame by frame, same content-type |
/// | `/chunked` | several chunks, no Content-Length, trailer `x-trailer: done` (declared in `trailer`) |
/// | `/abort` | `content-length: 1000`, 10 bytes, then the connection/stream dies |
/// | `/hang` | never answers |
/// | `/slow-body/<ms>` | 200 and `start\n` at once, `end\n` after `<ms>` (chunked on HTTP/1) |
/// | `/close` | like the default plus `connection: close` on HTTP/1 |
/// | anything else | 200 JSON describing the request |
///
/// The default JSON is `{"upstream", "method", "path" (path and query),
/// "version" ("HTTP/1.1" / "HTTP/2.0"), "headers" (lowercase name → value, or
/// array of values when repeated), "body_len"}`. Every response carries
/// `x-upstream: <name>`.
pub struct HttpUpstream {
    name: Arc<str>,
    addr: SocketAddr,
    state: Arc<State>,
    task: ServerTask,
}

struct State {
    name: Arc<str>,
    connections: Arc<AtomicUsize>,
    requests: AtomicUsize,
    in_flight: InFlight,
    /// Woken on every request arrival, for [`HttpUpstream::wait_for_requests`].
    arrived: Notify,
}

impl HttpUpstream {
    /// Starts the server on an ephemeral loopback port.
    pub async fn start(name: &str, proto: HttpProto) -> HttpUpstream {
        Self::start_with(name, move |state, stream| serve_connection(state, proto, stream)).await
    }

    /// Serves on a socket bound elsewhere (e.g. inside a network namespace
    /// the test made), instead of an ephemeral loopback port.
    pub async fn start_on(name: &str, proto: HttpProto, listener: std::net::TcpListener) -> HttpUpstream {
        listener.set_nonblocking(true).expect("non-blocking listener");
        let listener = tokio::net::TcpListener::from_std(listener).expect("a listening socket");
        Self::serve_on(name, listener, move |state, stream| serve_connection(state, proto, stream))
    }

    /// Binds a loopback port and serves each accepted connection with `serve`.
    async fn start_with<F, Fut>(name: &str, serve: F) -> HttpUpstream
    where
        F: Fn(Arc<State>, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (listener, _) = bind_loopback().await;
        Self::serve_on(name, listener, serve)
    }

    fn serve_on<F, Fut>(name: &str, listener: tokio::net::TcpListener, serve: F) -> HttpUpstream
    where
        F: Fn(Arc<State>, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr().expect("a bound listener");
        let name: Arc<str> = Arc::from(name);
        let connections = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(State {
            name: name.clone(),
            connections: connections.clone(),
            requests: AtomicUsize::new(0),
            in_flight: InFlight::default(),
            arrived: Notify::new(),
        });
        let conn_state = state.clone();
        let task =
            ServerTask::spawn_accept_loop(listener, connections, move |stream| serve(conn_state.clone(), stream));
        HttpUpstream { name, addr, state, task }
    }

    /// Starts the server speaking TLS with `config` (its ALPN decides the
    /// HTTP version with [`HttpProto::Auto`]).
    pub async fn start_tls(name: &str, proto: HttpProto, config: Arc<rustls::ServerConfig>) -> HttpUpstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        Self::start_with(name, move |state, stream| {
            let acceptor = acceptor.clone();
            async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_connection(state, proto, tls).await;
                }
            }
        })
        .await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far (counted when the request head arrives, so
    /// `/hang` requests count too).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests whose handler has not returned a response head yet.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.current()
    }

    /// The highest number of requests in flight at once so far.
    pub fn max_concurrent_requests(&self) -> usize {
        self.state.in_flight.max()
    }

    /// Waits until at least `n` requests have arrived. Lets a test know a
    /// request reached the upstream (e.g. a `/hang` one) without sleeping.
    pub async fn wait_for_requests(&self, n: usize) {
        super::wait_for_count(&self.state.arrived, || self.requests(), n).await;
    }

    /// Stops the server and waits until its listener and connections are closed.
    pub async fn shutdown(self) {
        self.task.shutdown().await;
    }
}

async fn serve_connection<S>(state: Arc<State>, proto: HttpProto, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    // Errors are the client's business (resets, malformed requests, aborts).
    let _ = match proto {
        HttpProto::Http1 => {
            hyper::server::conn::http1::Builder::new().serve_connection(io, service).await.map_err(BoxError::from)
        }
        HttpProto::Http2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
            .map_err(BoxError::from),
        HttpProto::Auto => {
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(io, service).await
        }
    };
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<ResBody> {
    let _guard = state.in_flight.enter();
    state.requests.fetch_add(1, Ordering::SeqCst);
    state.arrived.notify_waiters();

    let path = req.uri().path().to_owned();
    let mut response = if let Some(code) = path.strip_prefix("/status/") {
        match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
            Some(status) => with_status(status, empty()),
            None => with_status(StatusCode::BAD_REQUEST, empty()),
        }
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                describe(&state, req).await
            }
            Err(_) => with_status(StatusCode::BAD_REQUEST, empty()),
        }
    } else if let Some(ms) = path.strip_prefix("/slow-body/") {
        match ms.parse::<u64>() {
            Ok(ms) => slow_body(Duration::from_millis(ms)),
            Err(_) => with_status(StatusCode::BAD_REQUEST, empty()),
        }
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        match n.parse::<usize>() {
            Ok(n) => bytes_response(n),
            Err(_) => with_status(StatusCode::BAD_REQUEST, empty()),
        }
    } else {
        match path.as_str() {
            "/echo" => echo(req),
            "/chunked" => chunked(),
            "/abort" => abort(),
            "/hang" => std::future::pending().await,
            "/close" => {
                let is_http1 = req.version() < Version::HTTP_2;
                let mut res = describe(&state, req).await;
                if is_http1 {
                    res.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                }
                res
            }
            _ => describe(&state, req).await,
        }
    };
    response
        .headers_mut()
        .insert(X_UPSTREAM, HeaderValue::from_str(&state.name).unwrap_or(HeaderValue::from_static("invalid-name")));
    response
}

fn with_status(status: StatusCode, body: ResBody) -> Response<ResBody> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res
}

fn empty() -> ResBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn full(bytes: impl Into<Bytes>) -> ResBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The default response: the request described as JSON.
async fn describe(state: &State, req: Request<Incoming>) -> Response<ResBody> {
    let (parts, body) = req.into_parts();
    let body_len = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => return with_status(StatusCode::BAD_REQUEST, empty()),
    };
    let path =
        parts.uri.path_and_query().map(|pq| pq.as_str().to_owned()).unwrap_or_else(|| parts.uri.path().to_owned());
    let json = serde_json::json!({
        "upstream": &*state.name,
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "body_len": body_len,
    });
    let mut res = Response::new(full(json.to_string()));
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn headers_json(headers: &HeaderMap) -> serde_json::Value {
    let lossy = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let map = headers
        .keys()
        .map(|name| {
            let mut values = headers.get_all(name).iter().map(lossy).collect::<Vec<_>>();
            let value = if values.len() == 1 {
                serde_json::Value::String(values.remove(0))
            } else {
                serde_json::Value::from(values)
            };
            (name.as_str().to_owned(), value)
        })
        .collect::<serde_json::Map<_, _>>();
    serde_json::Value::Object(map)
}

/// The byte pattern of `/bytes/<n>`: `abcdefghijklmnopqrstuvwxyz` repeated.
pub fn bytes_pattern(n: usize) -> Vec<u8> {
    (b'a'..=b'z').cycle().take(n).collect()
}

fn bytes_response(n: usize) -> Response<ResBody> {
    let mut res = Response::new(full(bytes_pattern(n)));
    res.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    res
}

/// Streams the request body back as it arrives (frames, trailers included).
fn echo(req: Request<Incoming>) -> Response<ResBody> {
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let mut res = Response::new(req.into_body().map_err(BoxError::from).boxed_unsync());
    if let Some(ct) = content_type {
        res.headers_mut().insert(CONTENT_TYPE, ct);
    }
    res
}

/// The chunks `/chunked` sends, in order (its body is their concatenation).
pub const CHUNKS: [&str; 5] = ["chunk-0\n", "chunk-1\n", "chunk-2\n", "chunk-3\n", "chunk-4\n"];

fn chunked() -> Response<ResBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-trailer", HeaderValue::from_static("done"));
    let frames = CHUNKS
        .iter()
        .map(|chunk| Frame::data(Bytes::from_static(chunk.as_bytes())))
        .chain(std::iter::once(Frame::trailers(trailers)))
        .map(Ok::<_, BoxError>);
    // A stream body has no exact size, so hyper uses chunked encoding on HTTP/1.
    let mut res = Response::new(StreamBody::new(stream::iter(frames)).boxed_unsync());
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    // hyper's HTTP/1 encoder only sends trailer fields declared here.
    res.headers_mut().insert(TRAILER, HeaderValue::from_static("x-trailer"));
    res
}

/// Headers and `start\n` at once, `end\n` after `pause`: a body that is
/// still streaming long after the response head.
fn slow_body(pause: Duration) -> Response<ResBody> {
    let frames = stream::unfold(0u8, move |step| async move {
        match step {
            0 => Some((Ok(Frame::data(Bytes::from_static(b"start\n"))), 1)),
            1 => {
                tokio::time::sleep(pause).await;
                Some((Ok(Frame::data(Bytes::from_static(b"end\n"))), 2))
            }
            _ => None,
        }
    });
    let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}

fn abort() -> Response<ResBody> {
    let frames = stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok(Frame::data(Bytes::from_static(ABORT_SENT))), 1)),
            1 => {
                tokio::time::sleep(ABORT_FLUSH_GRACE).await;
                let err: BoxError = std::io::Error::other("test upstream aborts the body").into();
                Some((Err(err), 2))
            }
            _ => None,
        }
    });
    let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
    res.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(ABORT_ANNOUNCED_LEN));
    res
}
