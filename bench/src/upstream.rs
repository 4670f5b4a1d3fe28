//! The upstream servers the proxies forward to, built in so the harness
//! needs nothing else: a fixed-response HTTP/1.1 server (keep-alive,
//! pipelining-safe), an HTTP/2 (h2c) server, a TCP echo server and a TCP
//! source that writes as fast as the reader takes.
//!
//! They are deliberately minimal: the upstream must never be what limits a
//! measurement (the direct baseline shows that it is not).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamKind {
    Http1,
    Http2,
    TcpEcho,
    TcpSource,
    /// An MQTT broker: mosquitto, an external process ([`crate::broker`]),
    /// not one of these in-process servers.
    MqttBroker,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts on 127.0.0.1 (ephemeral port) on the current tokio runtime.
    /// `payload` is the response body (HTTP) or the chunk written (source).
    pub async fn start(kind: UpstreamKind, payload: usize) -> io::Result<Upstream> {
        if kind == UpstreamKind::MqttBroker {
            return Err(io::Error::other("the MQTT broker is a process of its own: start it with crate::broker"));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let body = Bytes::from(vec![b'x'; payload]);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let _ = match kind {
                        UpstreamKind::Http1 => serve_http1(stream, &body).await,
                        UpstreamKind::Http2 => serve_http2(stream, body).await,
                        UpstreamKind::TcpEcho => echo(stream).await,
                        UpstreamKind::TcpSource => source(stream, &body).await,
                        UpstreamKind::MqttBroker => Ok(()),
                    };
                });
            }
        });
        Ok(Upstream { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The fixed response, head and body in one buffer.
pub fn http1_response(body: &[u8], close: bool) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes();
    response.extend_from_slice(body);
    response
}

async fn serve_http1(mut stream: TcpStream, body: &[u8]) -> io::Result<()> {
    let keep_alive = http1_response(body, false);
    let closing = http1_response(body, true);
    let mut buf = BytesMut::with_capacity(8192);
    let mut out = Vec::with_capacity(keep_alive.len() * 4);
    loop {
        buf.reserve(4096);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        // Answer every complete request in the buffer with one write.
        let mut close = false;
        loop {
            let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 64];
            let mut request = httparse::Request::new(&mut []);
            let head_len = match request.parse_with_uninit_headers(&buf, &mut headers) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return Ok(()),
            };
            let mut body_len = 0usize;
            for header in request.headers.iter() {
                if header.name.eq_ignore_ascii_case("content-length") {
                    body_len = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                } else if header.name.eq_ignore_ascii_case("connection") && header.value.eq_ignore_ascii_case(b"close")
                {
                    close = true;
                }
            }
            if buf.len() < head_len + body_len {
                break;
            }
            buf.advance(head_len + body_len);
            out.extend_from_slice(if close { &closing } else { &keep_alive });
            if close {
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
    }
}

async fn serve_http2(stream: TcpStream, body: Bytes) -> io::Result<()> {
    let service = service_fn(move |_request: http::Request<hyper::body::Incoming>| {
        let body = body.clone();
        async move {
            let mut response = http::Response::new(Full::new(body));
            response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
            Ok::<_, Infallible>(response)
        }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(1000)
        .serve_connection(TokioIo::new(stream), service)
        .await
        .map_err(io::Error::other)
}

async fn echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

async fn source(mut stream: TcpStream, chunk: &[u8]) -> io::Result<()> {
    let chunk = if chunk.is_empty() { &[b'x'; 64 * 1024][..] } else { chunk };
    loop {
        stream.write_all(chunk).await?;
    }
}
