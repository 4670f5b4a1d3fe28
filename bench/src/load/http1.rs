//! HTTP/1.1 load: a minimal client (one fixed request, responses framed by
//! Content-Length or chunked encoding) so the generator stays far cheaper
//! than anything it measures. Plaintext, or over TLS with the shared
//! [`TlsClient`] (the TLS scenarios).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{finished, next_send, record, LoadResult, Pacer, Window};
use crate::tls::TlsClient;

const KEEP_ALIVE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: bench.local\r\nuser-agent: edgeplane-bench\r\n\r\n";
const CLOSE_REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nhost: bench.local\r\nuser-agent: edgeplane-bench\r\nconnection: close\r\n\r\n";

pub async fn keep_alive(
    target: SocketAddr,
    tls: Option<TlsClient>,
    window: Window,
    pacer: Option<Pacer>,
) -> LoadResult {
    match tls {
        None => keep_alive_on(Plain(target), window, pacer).await,
        Some(client) => keep_alive_on(Tls { target, client }, window, pacer).await,
    }
}

pub async fn new_connections(
    target: SocketAddr,
    tls: Option<TlsClient>,
    window: Window,
    pacer: Option<Pacer>,
) -> LoadResult {
    match tls {
        None => new_connections_on(Plain(target), window, pacer).await,
        Some(client) => new_connections_on(Tls { target, client }, window, pacer).await,
    }
}

/// How a connection to the target is opened: plain TCP or TLS over it.
/// Each load function is compiled once per kind, so the plaintext path has
/// no TLS branch in it.
trait Connect {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;
    fn connect(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

struct Plain(SocketAddr);

impl Connect for Plain {
    type Stream = TcpStream;
    async fn connect(&self) -> io::Result<TcpStream> {
        connect(self.0).await
    }
}

/// A TCP connection and a full TLS handshake (or a resumption, when the
/// client resumes).
struct Tls {
    target: SocketAddr,
    client: TlsClient,
}

impl Connect for Tls {
    type Stream = tokio_rustls::client::TlsStream<TcpStream>;
    async fn connect(&self) -> io::Result<Self::Stream> {
        let tcp = connect(self.target).await?;
        self.client.handshake(tcp).await
    }
}

async fn keep_alive_on<C: Connect>(connector: C, window: Window, mut pacer: Option<Pacer>) -> LoadResult {
    let mut result = LoadResult::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut stream = None;
    while let Some(sent) = next_send(&mut pacer, &window).await {
        if stream.is_none() {
            match connector.connect().await {
                Ok(connected) => {
                    buf.clear();
                    stream = Some(connected);
                }
                Err(_) => {
                    record(&mut result, &window, sent, Instant::now(), false);
                    backoff().await;
                    continue;
                }
            }
        }
        let Some(connection) = stream.as_mut() else { continue };
        let outcome = exchange(connection, KEEP_ALIVE_REQUEST, &mut buf).await;
        let done = Instant::now();
        finished(&mut pacer, done);
        match outcome {
            Ok(response) => {
                record(&mut result, &window, sent, done, response.ok);
                if response.close {
                    stream = None;
                }
            }
            Err(_) => {
                record(&mut result, &window, sent, done, false);
                stream = None;
            }
        }
    }
    result
}

async fn new_connections_on<C: Connect>(connector: C, window: Window, mut pacer: Option<Pacer>) -> LoadResult {
    let mut result = LoadResult::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    while let Some(sent) = next_send(&mut pacer, &window).await {
        buf.clear();
        let outcome = match connector.connect().await {
            Ok(mut stream) => exchange(&mut stream, CLOSE_REQUEST, &mut buf).await,
            Err(error) => Err(error),
        };
        let done = Instant::now();
        finished(&mut pacer, done);
        let ok = outcome.map(|r| r.ok).unwrap_or(false);
        record(&mut result, &window, sent, done, ok);
        if !ok {
            backoff().await;
        }
    }
    result
}

async fn connect(target: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// After a failure, do not spin: an absent server would otherwise turn the
/// generator into a busy loop of failed connects.
async fn backoff() {
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
}

pub struct Response {
    /// A 2xx status.
    pub ok: bool,
    /// The connection cannot carry another request.
    pub close: bool,
}

/// Writes the request and reads one whole response.
pub async fn exchange<S>(stream: &mut S, request: &[u8], buf: &mut BytesMut) -> io::Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(request).await?;
    // A no-op on a socket; TLS may still hold records back.
    stream.flush().await?;
    loop {
        if let Some((consumed, response)) = parse(buf)? {
            buf.advance(consumed);
            return Ok(response);
        }
        buf.reserve(8192);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-response"));
        }
    }
}

/// A complete response at the start of `buf`: its length and what it said.
pub fn parse(buf: &[u8]) -> io::Result<Option<(usize, Response)>> {
    // Uninitialised slots: initialising them would cost a memset per response.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 32];
    let mut response = httparse::Response::new(&mut []);
    let head_len =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
        };
    let status = response.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = header.value.eq_ignore_ascii_case(b"chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    let body = &buf[head_len..];
    let body_len = if chunked {
        match chunked_length(body)? {
            Some(len) => len,
            None => return Ok(None),
        }
    } else {
        match length {
            Some(len) if body.len() >= len => len,
            Some(_) => return Ok(None),
            None if (100..200).contains(&status) || status == 204 || status == 304 => 0,
            None => return Err(io::Error::new(io::ErrorKind::InvalidData, "response without a length")),
        }
    };
    Ok(Some((head_len + body_len, Response { ok: (200..300).contains(&status), close })))
}

/// Length of a complete chunked body at the start of `body` (trailers
/// included), or `None` when more bytes are needed.
fn chunked_length(body: &[u8]) -> io::Result<Option<usize>> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "bad chunked body");
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&body[at..]) else { return Ok(None) };
        let line = &body[at..at + line_end];
        let digits = line.split(|b| *b == b';').next().unwrap_or(line);
        let size = usize::from_str_radix(std::str::from_utf8(digits).map_err(|_| invalid())?.trim(), 16)
            .map_err(|_| invalid())?;
        at += line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(end) = find_crlf(&body[at..]) else { return Ok(None) };
                at += end + 2;
                if end == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if body.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let (len, response) = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloNEXT").unwrap().unwrap();
        assert_eq!(len, 43);
        assert!(response.ok && !response.close);
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel").unwrap().is_none());
        let (_, response) =
            parse(b"HTTP/1.1 503 No\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!response.ok && response.close);
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx: y\r\n\r\nNEXT";
        let (len, _) = parse(chunked).unwrap().unwrap();
        assert_eq!(&chunked[len..], b"NEXT");
        assert!(parse(&chunked[..chunked.len() - 8]).unwrap().is_none());
        assert!(parse(b"garbage\r\n\r\n").is_err());
    }
}
