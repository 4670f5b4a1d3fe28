//! HTTP/1.1 to upstreams for requests that come through hyper (HTTP/2
//! clients, and HTTP/1 connections the fast path handed over).
//!
//! It speaks HTTP/1 on the same pooled plain sockets as the fast path, so
//! an endpoint has one HTTP/1 pool whichever way requests arrive, and a
//! request costs a head serialised into one write and a response parsed with
//! httparse, instead of hyper's client machinery (a task and two channels
//! per connection).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

use super::chunked::ChunkedScanner;
use crate::buffers;
use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::io::UpstreamStream;
use crate::pool::raw;
use crate::route::{EndpointState, PoolSettings};
use crate::upstream;

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest trailer section kept from a chunked response.
const MAX_TRAILERS: usize = 16 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Sends a request over a pooled (or new) connection and returns the
/// response with a body that reads the rest from the connection and puts
/// the connection back in the pool when it ends.
pub async fn send(
    endpoint: &Arc<EndpointState>,
    settings: &PoolSettings,
    connect_timeout: Duration,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, mut body) = request.into_parts();
    let framing = request_framing(&parts.headers, &body);
    let mut request_head = buffers::vec();
    write_head(&mut request_head, &parts, framing);
    // A body the proxy holds whole travels with the head, and can be sent
    // again on another connection.
    let replayable = match &mut body {
        ProxyBody::Full(bytes) => {
            if let Some(bytes) = bytes.take() {
                request_head.extend_from_slice(&bytes);
            }
            true
        }
        _ => body.is_end_stream(),
    };
    let retry_allowed = replayable && is_idempotent(&parts.method);
    let head_request = parts.method == Method::HEAD;

    loop {
        let reused = raw::checkout(endpoint, settings);
        let was_reused = reused.is_some();
        let mut connection = match reused {
            Some(connection) => connection,
            None => upstream::connect(endpoint, connect_timeout).await?,
        };
        connection.start_request();
        let mut buf = buffers::bytes();
        let sent = async {
            crate::io::write_out(&mut connection, &request_head).await.map_err(Sent::Io)?;
            if !replayable {
                send_body(&mut connection, &mut body, framing).await?;
            }
            read_head(&mut connection, &mut buf, head_request).await
        }
        .await;
        let head = match sent {
            Ok(head) => head,
            Err(Sent::Io(_)) if was_reused && retry_allowed => continue,
            Err(Sent::Io(error)) => return Err(ProxyError::Upstream(error.to_string())),
            Err(Sent::Body(error)) => return Err(error),
        };
        buffers::recycle_vec(request_head);
        return Ok(response(connection, buf, head, endpoint.clone()));
    }
}

/// How a request body is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    /// Content-Length: the client's header, or (`Some`) one the proxy adds.
    Length(Option<u64>),
    Chunked,
}

fn request_framing(headers: &HeaderMap, body: &ProxyBody) -> Framing {
    if headers.contains_key(header::CONTENT_LENGTH) {
        Framing::Length(None)
    } else if body.is_end_stream() {
        Framing::Empty
    } else if let Some(size) = body.size_hint().exact() {
        // An HTTP/2 request may leave the length out.
        Framing::Length(Some(size))
    } else {
        Framing::Chunked
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Writes the request line and headers (hop-by-hop headers are already
/// gone: the forwarder removed them).
fn write_head(out: &mut Vec<u8>, parts: &http::request::Parts, framing: Framing) {
    use std::io::Write as _;
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(Some(size)) => {
            let _ = write!(out, "content-length: {size}\r\n");
        }
        Framing::Length(None) | Framing::Empty => {}
    }
    out.extend_from_slice(b"\r\n");
}

enum Sent {
    Io(io::Error),
    Body(ProxyError),
}

/// Streams a request body that was not buffered.
async fn send_body(connection: &mut UpstreamStream, body: &mut ProxyBody, framing: Framing) -> Result<(), Sent> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Sent::Body(ProxyError::BadRequest("invalid request body")))?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if framing == Framing::Chunked {
            let size = format!("{:x}\r\n", data.len());
            crate::io::write_out(connection, size.as_bytes()).await.map_err(Sent::Io)?;
            crate::io::write_out(connection, &data).await.map_err(Sent::Io)?;
            crate::io::write_out(connection, b"\r\n").await.map_err(Sent::Io)?;
        } else {
            crate::io::write_out(connection, &data).await.map_err(Sent::Io)?;
        }
    }
    if framing == Framing::Chunked {
        crate::io::write_out(connection, b"0\r\n\r\n").await.map_err(Sent::Io)?;
    }
    Ok(())
}

/// A parsed final response head.
struct Head {
    len: usize,
    status: StatusCode,
    headers: HeaderMap,
    framing: BodyFraming,
    upstream_close: bool,
}

enum Parsed {
    Incomplete,
    /// A 1xx head of this length, dropped (hyper answers `Expect` itself).
    Interim(usize),
    Final(Head),
}

/// Reads until a final (non-1xx) response head is complete.
async fn read_head(connection: &mut UpstreamStream, buf: &mut BytesMut, head_request: bool) -> Result<Head, Sent> {
    loop {
        match parse_head(buf, head_request)? {
            Parsed::Final(head) => return Ok(head),
            Parsed::Interim(len) => {
                buf.advance(len);
                continue;
            }
            Parsed::Incomplete if buf.len() > MAX_RESPONSE_HEAD => {
                return Err(Sent::Body(ProxyError::Upstream("response head too large".into())));
            }
            Parsed::Incomplete => {}
        }
        buf.reserve(READ_CHUNK);
        if connection.read_buf(buf).await.map_err(Sent::Io)? == 0 {
            return Err(Sent::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed before a response")));
        }
    }
}

/// Parses (once, into owned parts) a response head at the start of `buf`.
/// Synchronous so the header slots never live in a future.
fn parse_head(buf: &[u8], head_request: bool) -> Result<Parsed, Sent> {
    let invalid = |why: &str| Sent::Body(ProxyError::Upstream(why.to_owned()));
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(error) => return Err(invalid(&error.to_string())),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| invalid("invalid status"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(invalid("unexpected 101"));
    }
    if status.is_informational() {
        return Ok(Parsed::Interim(len));
    }
    let mut upstream_close = parsed.version == Some(0);
    let mut content_length = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    // Hop-by-hop headers stay in the map for now: the forwarder strips them
    // (and the headers `Connection` names) from every response alike.
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| invalid("invalid header name"))?;
        let tokens = || field.value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
        match name {
            header::CONNECTION => {
                for token in tokens() {
                    if token.eq_ignore_ascii_case(b"close") {
                        upstream_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        upstream_close = false;
                    }
                }
            }
            header::TRANSFER_ENCODING => {
                transfer_encoding = true;
                chunked = tokens().next_back().is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
                continue;
            }
            header::CONTENT_LENGTH => {
                let length = std::str::from_utf8(field.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| invalid("invalid content-length"))?;
                if content_length.is_some_and(|known| known != length) {
                    return Err(invalid("conflicting content-length"));
                }
                content_length = Some(length);
            }
            _ => {}
        }
        let value = HeaderValue::from_bytes(field.value).map_err(|_| invalid("invalid header value"))?;
        headers.append(name, value);
    }
    let bodiless = head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        BodyFraming::Length(0)
    } else if transfer_encoding {
        // With both, transfer-encoding wins (RFC 9112 §6.3).
        headers.remove(header::CONTENT_LENGTH);
        if chunked {
            BodyFraming::Chunked { scanner: ChunkedScanner::new(), trailers: Vec::new() }
        } else {
            BodyFraming::UntilClose
        }
    } else {
        match content_length {
            Some(length) => BodyFraming::Length(length),
            None => BodyFraming::UntilClose,
        }
    };
    if matches!(framing, BodyFraming::UntilClose) {
        upstream_close = true;
    }
    Ok(Parsed::Final(Head { len, status, headers, framing, upstream_close }))
}

/// The response, with a body that reads the rest from the connection.
fn response(
    connection: UpstreamStream,
    mut buf: BytesMut,
    head: Head,
    endpoint: Arc<EndpointState>,
) -> Response<ProxyBody> {
    buf.advance(head.len);
    let mut body = UpstreamBody {
        connection: Some(connection),
        buf,
        framing: head.framing,
        reusable: !head.upstream_close,
        endpoint,
    };
    body.finish_if_done();
    let mut response = Response::new(ProxyBody::Upstream(body));
    *response.status_mut() = head.status;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = head.headers;
    response
}

enum BodyFraming {
    Length(u64),
    Chunked { scanner: ChunkedScanner, trailers: Vec<u8> },
    UntilClose,
}

/// A response body read from a pooled HTTP/1 connection.
pub struct UpstreamBody {
    /// `None` once the body has ended (the connection went back to the pool
    /// or was closed).
    connection: Option<UpstreamStream>,
    /// Bytes read but not yet passed on.
    buf: BytesMut,
    framing: BodyFraming,
    reusable: bool,
    endpoint: Arc<EndpointState>,
}

impl UpstreamBody {
    fn is_done(&self) -> bool {
        match &self.framing {
            BodyFraming::Length(remaining) => *remaining == 0,
            BodyFraming::Chunked { scanner, .. } => scanner.is_done(),
            BodyFraming::UntilClose => false,
        }
    }

    /// Returns the connection to the pool when the body has ended cleanly.
    fn finish_if_done(&mut self) {
        if self.is_done() {
            if let Some(mut connection) = self.connection.take() {
                connection.finish_request();
                // Bytes beyond the body mean the upstream broke framing.
                if self.reusable && self.buf.is_empty() {
                    raw::checkin(&self.endpoint, connection);
                    buffers::recycle_bytes(std::mem::take(&mut self.buf));
                }
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(connection) = self.connection.as_mut() else { return Poll::Ready(Ok(0)) };
        self.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(connection), cx, &mut self.buf)
    }
}

fn broken(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        loop {
            match &mut this.framing {
                BodyFraming::Length(0) => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                BodyFraming::Length(remaining) if !this.buf.is_empty() => {
                    let n = (*remaining).min(this.buf.len() as u64) as usize;
                    *remaining -= n as u64;
                    let data = this.buf.split_to(n).freeze();
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::UntilClose if !this.buf.is_empty() => {
                    let data = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::Chunked { scanner, trailers } if scanner.is_done() => {
                    let trailers = std::mem::take(trailers);
                    this.finish_if_done();
                    if trailers.len() <= 2 {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(parse_trailers(&trailers).map(|map| Ok(Frame::trailers(map))));
                }
                BodyFraming::Chunked { scanner, trailers } if !this.buf.is_empty() => {
                    let ahead = scanner.data_ahead();
                    if ahead > 0 {
                        let n = ahead.min(this.buf.len() as u64) as usize;
                        scanner.consume_data(n as u64);
                        return Poll::Ready(Some(Ok(Frame::data(this.buf.split_to(n).freeze()))));
                    }
                    let in_trailers = scanner.in_trailers();
                    let n = scanner.scan_framing(&this.buf).map_err(|_| broken("invalid chunked response"))?;
                    if in_trailers {
                        if trailers.len() + n > MAX_TRAILERS {
                            return Poll::Ready(Some(Err(broken("response trailers too large"))));
                        }
                        trailers.extend_from_slice(&this.buf[..n]);
                    }
                    this.buf.advance(n);
                    continue;
                }
                _ => {}
            }
            // Nothing buffered: read more.
            if ready!(this.poll_fill(cx))? == 0 {
                if let (Some(connection), BodyFraming::UntilClose) = (this.connection.as_mut(), &this.framing) {
                    connection.finish_request();
                }
                this.connection = None;
                return Poll::Ready(match this.framing {
                    BodyFraming::UntilClose => None,
                    _ => Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed mid-body"))),
                });
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_done() && !matches!(&self.framing, BodyFraming::Chunked { trailers, .. } if trailers.len() > 2)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(remaining) => SizeHint::with_exact(remaining),
            _ => SizeHint::default(),
        }
    }
}

/// Trailer fields of a chunked body (`name: value` lines and the final empty line).
fn parse_trailers(section: &[u8]) -> Option<HeaderMap> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut slots) else {
        return None;
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
        {
            map.append(name, value);
        }
    }
    (!map.is_empty()).then_some(map)
}
