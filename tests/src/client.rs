//! Low-level HTTP and TCP clients with precise control over connections:
//! one [`Http1Conn`] or [`Http2Conn`] is exactly one TCP connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Response trailers, stored in the extensions of a response returned by
/// [`Http1Conn::send`] / [`Http2Conn::send`] when the response had any.
#[derive(Debug, Clone)]
pub struct Trailers(pub HeaderMap);

/// The trailers of a collected response, if it had any.
pub fn trailers<T>(response: &Response<T>) -> Option<&HeaderMap> {
    response.extensions().get::<Trailers>().map(|t| &t.0)
}

/// Collects a response body; trailers go to the [`Trailers`] extension.
async fn collect(response: Response<hyper::body::Incoming>) -> Result<Response<Bytes>, hyper::Error> {
    let (mut parts, body) = response.into_parts();
    let collected = body.collect().await?;
    if let Some(trailers) = collected.trailers() {
        parts.extensions.insert(Trailers(trailers.clone()));
    }
    Ok(Response::from_parts(parts, collected.to_bytes()))
}

async fn tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One HTTP/1.1 connection, reused for every request sent on it.
///
/// Requests are sent as given: set the `host` header yourself (this is
/// the raw hyper connection API, which adds nothing).
pub struct Http1Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: JoinHandle<()>,
}

impl Http1Conn {
    /// Connects; panics if the connection or handshake fails.
    pub async fn connect(addr: SocketAddr) -> Http1Conn {
        Self::try_connect(addr).await.unwrap_or_else(|e| panic!("HTTP/1.1 connection to {addr}: {e}"))
    }

    pub async fn try_connect(addr: SocketAddr) -> Result<Http1Conn, Box<dyn std::error::Error + Send + Sync>> {
        let stream = tcp_connect(addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http1Conn { sender, conn })
    }

    /// Connects from a chosen local IP (ephemeral port), e.g. a non-loopback
    /// address of this host, so the server sees that address as the peer.
    pub async fn try_connect_from(
        local: IpAddr,
        addr: SocketAddr,
    ) -> Result<Http1Conn, Box<dyn std::error::Error + Send + Sync>> {
        let socket = if local.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http1Conn { sender, conn })
    }

    /// Sends one request and collects the whole response. Fails if the
    /// connection was closed (check [`Http1Conn::is_closed`]) or breaks.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(req).await?;
        collect(response).await
    }

    /// Whether the connection has been closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Drop for Http1Conn {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// One HTTP/2 connection (prior knowledge, cleartext). `send` takes `&self`,
/// so concurrent requests share the connection as separate streams.
pub struct Http2Conn {
    addr: SocketAddr,
    sender: http2::SendRequest<Full<Bytes>>,
    conn: JoinHandle<()>,
}

impl Http2Conn {
    /// Connects; panics if the connection or handshake fails.
    pub async fn connect(addr: SocketAddr) -> Http2Conn {
        Self::try_connect(addr).await.unwrap_or_else(|e| panic!("HTTP/2 connection to {addr}: {e}"))
    }

    pub async fn try_connect(addr: SocketAddr) -> Result<Http2Conn, Box<dyn std::error::Error + Send + Sync>> {
        let stream = tcp_connect(addr).await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http2Conn { addr, sender, conn })
    }

    /// Sends one request on a new stream and collects the whole response.
    ///
    /// A request URI without scheme and authority (e.g. `/path`) gets
    /// `http://` and the authority from its `host` header, or else the
    /// connected address, since HTTP/2 needs `:scheme` and `:authority`.
    pub async fn send(&self, mut req: Request<Full<Bytes>>) -> Result<Response<Bytes>, hyper::Error> {
        if req.uri().authority().is_none() {
            let authority = req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<Authority>().ok())
                .unwrap_or_else(|| self.addr.to_string().parse().expect("socket address is an authority"));
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(authority);
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some("/".parse().expect("valid path"));
            }
            *req.uri_mut() = Uri::from_parts(parts).expect("absolute URI from valid parts");
        }
        let mut sender = self.sender.clone();
        sender.ready().await?;
        let response = sender.send_request(req).await?;
        collect(response).await
    }

    /// Whether the connection has been closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Drop for Http2Conn {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// `GET path` with `host: host` on a fresh HTTP/1.1 connection; panics on
/// any error. Returns status, headers and the whole body.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let mut conn = Http1Conn::connect(addr).await;
    let req = Request::get(path)
        .header(HOST, HeaderValue::from_str(host).expect("valid host header"))
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let response = conn.send(req).await.unwrap_or_else(|e| panic!("GET {path} (host {host}) via {addr}: {e}"));
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body)
}

/// A request with an empty body, a `host` header and extra headers.
pub fn simple_request(method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path).header(HOST, host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).expect("valid request")
}

/// `method path` with `host: host` on a fresh HTTP/1.1 connection; panics on
/// any error. Returns status, headers and the whole body.
pub async fn call(addr: SocketAddr, method: &str, host: &str, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let mut conn = Http1Conn::connect(addr).await;
    let response = conn
        .send(simple_request(method, path, host, &[]))
        .await
        .unwrap_or_else(|e| panic!("{method} {path} (host {host}) via {addr}: {e}"));
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body)
}

/// How long [`raw_exchange`] waits for the peer to close.
pub const RAW_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `bytes` to a new TCP connection, half-closes it and reads until
/// EOF, a reset or [`RAW_EXCHANGE_TIMEOUT`], whichever comes first; returns
/// everything read. Panics if it cannot connect or write.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = tcp_connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.write_all(bytes).await.expect("write raw request");
    // The peer may already have closed (and reset) after a bad request.
    let _ = stream.shutdown().await;

    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + RAW_EXCHANGE_TIMEOUT;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    received
}
