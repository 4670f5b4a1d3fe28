//! HTTP/1 message heads for the fast path: parsing with httparse into
//! offsets over the connection's buffer, deciding framing strictly, and
//! writing the head to send on, with hop-by-hop headers removed and the
//! route's edits applied, straight into an output buffer.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use config_model::ForwardedFor;

use crate::route::matcher::RequestView;
use crate::route::{HeaderEdits, HttpSettings};

/// Header slots kept on the stack while parsing; more spill to the heap.
const STACK_HEADERS: usize = 128;

/// Why a request head cannot be handled (each maps to a local reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Syntax error or ambiguous framing → 400.
    Malformed(&'static str),
    /// Too many headers or too many bytes → 431.
    TooLarge,
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    #[default]
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the connection closes.
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Upgrade,
    Te,
    Expect,
    XForwardedFor,
    XForwardedProto,
}

fn kind_of(name: &[u8]) -> Kind {
    let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
    match name.len() {
        2 if is("te") => Kind::Te,
        4 if is("host") => Kind::Host,
        6 if is("expect") => Kind::Expect,
        7 if is("upgrade") => Kind::Upgrade,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::KeepAlive,
        14 if is("content-length") => Kind::ContentLength,
        15 if is("x-forwarded-for") => Kind::XForwardedFor,
        16 if is("proxy-connection") => Kind::ProxyConnection,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        17 if is("x-forwarded-proto") => Kind::XForwardedProto,
        _ => Kind::Other,
    }
}

#[derive(Clone, Debug)]
struct Field {
    name: Range<usize>,
    value: Range<usize>,
    kind: Kind,
}

/// A parsed request head: offsets into the buffer it was parsed from. Its
/// vectors are reused from request to request.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// Length of the head in bytes (the body starts here).
    pub len: usize,
    method: Range<usize>,
    target: Range<usize>,
    /// End of the path within the target (where the query starts).
    path_end: usize,
    pub http10: bool,
    fields: Vec<Field>,
    /// Header names listed in `Connection` (dropped when forwarding).
    connection_names: Vec<Range<usize>>,
    pub framing: Framing,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// Set when the fast path must hand the connection to the full HTTP stack.
    pub handover: Option<&'static str>,
    host: Option<Range<usize>>,
}

impl RequestHead {
    /// Parses a request head at the start of `buf`. `Ok(false)`: incomplete.
    pub fn parse(&mut self, buf: &[u8], max_headers: usize, max_bytes: usize) -> Result<bool, HeadError> {
        // Uninitialised slots: filling 128 empty headers would cost a 4 KiB
        // memset per request.
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap;
        let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS {
            &mut stack[..max_headers]
        } else {
            heap = vec![MaybeUninit::uninit(); max_headers];
            &mut heap
        };
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(buf, slots) {
            Ok(httparse::Status::Complete(len)) if len > max_bytes => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > max_bytes => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed("invalid request head")),
        };
        let base = buf.as_ptr() as usize;
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
            return Err(HeadError::Malformed("invalid request line"));
        };
        self.len = len;
        self.method = span(method.as_bytes());
        self.target = span(target.as_bytes());
        self.path_end = self.target.start + target.find('?').unwrap_or(target.len());
        self.http10 = version == 0;
        self.fields.clear();
        self.connection_names.clear();
        self.host = None;
        self.handover = None;
        self.framing = Framing::None;
        self.close = self.http10;

        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut transfer_encoding = false;
        for header in request.headers.iter() {
            let kind = kind_of(header.name.as_bytes());
            let value = header.value;
            match kind {
                Kind::Host => self.host = Some(span(value)),
                Kind::ContentLength => {
                    let length = parse_length(value).ok_or(HeadError::Malformed("invalid content-length"))?;
                    if content_length.is_some_and(|known| known != length) {
                        return Err(HeadError::Malformed("conflicting content-length"));
                    }
                    content_length = Some(length);
                }
                Kind::TransferEncoding => {
                    transfer_encoding = true;
                    // Only a final `chunked` delimits a request body.
                    chunked = last_token(value).is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
                }
                Kind::Connection => {
                    for token in tokens(value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            self.close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            self.close = false;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            self.handover = Some("upgrade");
                        } else {
                            self.connection_names.push(span(token));
                        }
                    }
                }
                Kind::Expect => self.handover = Some("expect"),
                Kind::Upgrade => {}
                _ => {}
            }
            self.fields.push(Field { name: span(header.name.as_bytes()), value: span(value), kind });
        }
        if transfer_encoding {
            if content_length.is_some() {
                return Err(HeadError::Malformed("both content-length and transfer-encoding"));
            }
            if !chunked || self.http10 {
                return Err(HeadError::Malformed("unsupported transfer-encoding"));
            }
            self.framing = Framing::Chunked;
        } else if let Some(length) = content_length.filter(|l| *l > 0) {
            self.framing = Framing::Length(length);
        }
        if self.http10 {
            // HTTP/1.0 clients cannot read chunked responses; hyper re-frames.
            self.handover = Some("http/1.0");
        }
        let method = &buf[self.method.clone()];
        if method == b"CONNECT" || !buf[self.target.clone()].starts_with(b"/") {
            self.handover = Some("request target form");
        }
        Ok(true)
    }

    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.method.clone()]
    }

    pub fn is_head(&self, buf: &[u8]) -> bool {
        // Checked: a local reply may ask while the head is from an earlier request.
        buf.get(self.method.clone()).is_some_and(|method| method == b"HEAD")
    }

    /// Methods whose retry cannot repeat a side effect (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self, buf: &[u8]) -> bool {
        matches!(self.method(buf), b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE")
    }

    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.target.clone()]
    }

    pub fn host<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.host.clone().map(|r| &buf[r])
    }

    pub fn header<'b>(&self, buf: &'b [u8], name: &http::HeaderName) -> Option<&'b [u8]> {
        let name = name.as_str().as_bytes();
        self.fields.iter().find(|f| buf[f.name.clone()].eq_ignore_ascii_case(name)).map(|f| &buf[f.value.clone()])
    }

    fn values<'a>(&'a self, buf: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |f| buf[f.name.clone()].eq_ignore_ascii_case(name))
            .map(move |f| &buf[f.value.clone()])
    }

    /// Writes the head to send upstream (always HTTP/1.1).
    #[allow(clippy::too_many_arguments)]
    pub fn write_upstream(
        &self,
        buf: &[u8],
        out: &mut Vec<u8>,
        settings: &HttpSettings,
        edits: &HeaderEdits,
        client: IpAddr,
        scheme: &str,
        endpoint: SocketAddr,
    ) {
        out.extend_from_slice(&buf[self.method.clone()]);
        out.push(b' ');
        out.extend_from_slice(&buf[self.target.clone()]);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut forwarded_proto_seen = false;
        // `te: trailers` is how a client says it accepts trailers; it stays
        // meaningful on the next hop. Other TE codings are hop-by-hop.
        let mut te_trailers = false;
        for field in &self.fields {
            let name = &buf[field.name.clone()];
            let skip = match field.kind {
                Kind::Te => {
                    te_trailers |= tokens(&buf[field.value.clone()]).any(|t| t.eq_ignore_ascii_case(b"trailers"));
                    true
                }
                Kind::Connection | Kind::KeepAlive | Kind::ProxyConnection | Kind::Upgrade => true,
                Kind::XForwardedFor => settings.forwarded_for != ForwardedFor::Off,
                Kind::XForwardedProto => {
                    forwarded_proto_seen = true;
                    settings.forwarded_for == ForwardedFor::Replace
                }
                _ => false,
            };
            if skip
                || self.connection_names.iter().any(|n| buf[n.clone()].eq_ignore_ascii_case(name))
                || (!edits.is_empty() && edits.drops(name))
            {
                continue;
            }
            write_field(out, name, &buf[field.value.clone()]);
        }
        // Forwarding headers come first and the route's edits win over them,
        // as on the hyper path: `remove` drops them, `set` replaces them.
        if te_trailers {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        match settings.forwarded_for {
            ForwardedFor::Off => {}
            _ if edits.drops(b"x-forwarded-for") => {}
            mode => {
                out.extend_from_slice(b"x-forwarded-for: ");
                if mode == ForwardedFor::Append {
                    for field in self.fields.iter().filter(|f| f.kind == Kind::XForwardedFor) {
                        out.extend_from_slice(&buf[field.value.clone()]);
                        out.extend_from_slice(b", ");
                    }
                }
                let _ = write!(out, "{client}\r\n");
                if (mode == ForwardedFor::Replace || !forwarded_proto_seen) && !edits.drops(b"x-forwarded-proto") {
                    let _ = write!(out, "x-forwarded-proto: {scheme}\r\n");
                }
            }
        }
        if settings.forwarded && !edits.drops(b"forwarded") {
            match client {
                IpAddr::V4(ip) => {
                    let _ = write!(out, "forwarded: for={ip};proto={scheme}\r\n");
                }
                IpAddr::V6(ip) => {
                    let _ = write!(out, "forwarded: for=\"[{ip}]\";proto={scheme}\r\n");
                }
            }
        }
        if self.host.is_none() {
            let _ = write!(out, "host: {endpoint}\r\n");
        }
        for (name, value) in edits.additions() {
            write_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The view route matching needs.
pub struct RequestHeadView<'a> {
    pub head: &'a RequestHead,
    pub buf: &'a [u8],
    /// The connection's TLS server name.
    pub sni: Option<&'a str>,
    /// The connection's original destination (transparent listeners).
    pub destination: Option<std::net::SocketAddr>,
    /// The connection's client address, when a route matches on it.
    pub source: Option<std::net::IpAddr>,
}

impl RequestView for RequestHeadView<'_> {
    fn sni(&self) -> Option<&str> {
        self.sni
    }

    fn destination(&self) -> Option<std::net::SocketAddr> {
        self.destination
    }

    fn source(&self) -> Option<std::net::IpAddr> {
        self.source
    }

    fn method(&self) -> &str {
        std::str::from_utf8(self.head.method(self.buf)).unwrap_or("")
    }

    fn path(&self) -> &str {
        std::str::from_utf8(&self.buf[self.head.target.start..self.head.path_end]).unwrap_or("")
    }

    fn host(&self) -> Option<&str> {
        self.head.host(self.buf).and_then(|h| std::str::from_utf8(h).ok())
    }

    fn header_values<'a>(&'a self, name: &'a http::HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.head.values(self.buf, name.as_str().as_bytes())
    }
}

/// A parsed response head; the head sent to the client is written while
/// parsing (the header slices borrow the upstream buffer only here).
#[derive(Clone, Copy, Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The upstream will close (or the body runs to the close).
    pub upstream_close: bool,
}

/// What the client-facing response head must say.
pub struct ResponseContext<'a> {
    pub head_request: bool,
    pub edits: &'a HeaderEdits,
    /// The client connection closes after this response.
    pub close: bool,
}

/// Parses a response head at the start of `buf` and writes the head for the
/// client into `out`. `Ok(None)`: incomplete.
pub fn parse_response(
    buf: &[u8],
    max_bytes: usize,
    out: &mut Vec<u8>,
    context: &ResponseContext<'_>,
) -> Result<Option<ResponseHead>, &'static str> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => return Err("response head too large"),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("invalid response head"),
    };
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return Err("invalid status line");
    };
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut upstream_close = version == 0;
    let mut connection_names: [&[u8]; 8] = [&[]; 8];
    let mut connection_count = 0;
    for header in response.headers.iter() {
        match kind_of(header.name.as_bytes()) {
            Kind::ContentLength => {
                let length = parse_length(header.value).ok_or("invalid content-length")?;
                if content_length.is_some_and(|known| known != length) {
                    return Err("conflicting content-length");
                }
                content_length = Some(length);
            }
            Kind::TransferEncoding => {
                transfer_encoding = true;
                chunked = last_token(header.value).is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
            }
            Kind::Connection => {
                for token in tokens(header.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        upstream_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        upstream_close = false;
                    } else if connection_count < connection_names.len() {
                        connection_names[connection_count] = token;
                        connection_count += 1;
                    }
                }
            }
            _ => {}
        }
    }
    let bodiless = context.head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let framing = if bodiless {
        Framing::None
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match content_length {
            Some(0) => Framing::None,
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        upstream_close = true;
    }
    let close = context.close || framing == Framing::UntilClose;

    let _ = write!(out, "HTTP/1.1 {status} ");
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let interim = (100..200).contains(&status);
    for header in response.headers.iter() {
        let name = header.name.as_bytes();
        let skip = match kind_of(name) {
            Kind::Connection | Kind::KeepAlive | Kind::ProxyConnection | Kind::Upgrade | Kind::Te => true,
            // With both, transfer-encoding wins and content-length must go (RFC 9112 §6.3).
            Kind::ContentLength => transfer_encoding,
            _ => false,
        };
        if skip
            || connection_names[..connection_count].iter().any(|n| n.eq_ignore_ascii_case(name))
            || (!interim && !context.edits.is_empty() && context.edits.drops(name))
        {
            continue;
        }
        write_field(out, name, header.value);
    }
    if !interim {
        for (name, value) in context.edits.additions() {
            write_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead { len, status, framing, upstream_close }))
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A Content-Length value: digits only (RFC 9110 §8.6).
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

fn last_token(value: &[u8]) -> Option<&[u8]> {
    tokens(value).last()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        let mut head = RequestHead::default();
        Ok(head.parse(text, 100, 8192)?.then_some(head))
    }

    #[test]
    fn request_framing() {
        let head = parse(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.framing, Framing::None);
        assert!(!head.close);
        assert_eq!(head.handover, None);
        let head = parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").unwrap().unwrap();
        assert_eq!(head.framing, Framing::Length(5));
        let head = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        let head = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(head.close);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().map(|h| h.len), None);
    }

    #[test]
    fn ambiguous_framing_is_rejected() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        ] {
            assert!(matches!(parse(bad), Err(HeadError::Malformed(_))), "{:?} accepted", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn limits() {
        let many: Vec<u8> = [b"GET / HTTP/1.1\r\n".as_slice(), &b"a: b\r\n".repeat(101), b"\r\n"].concat();
        assert_eq!(parse(&many).err(), Some(HeadError::TooLarge));
        let big = [b"GET / HTTP/1.1\r\nx: ".as_slice(), &[b'a'; 9000], b"\r\n\r\n"].concat();
        assert_eq!(parse(&big).err(), Some(HeadError::TooLarge));
        assert_eq!(parse(&big[..8500]).err(), Some(HeadError::TooLarge));
    }

    #[test]
    fn handovers() {
        let up = parse(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
        assert_eq!(up.handover, Some("upgrade"));
        let expect = parse(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert_eq!(expect.handover, Some("expect"));
        let old = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(old.handover, Some("http/1.0"));
        let absolute = parse(b"GET http://a/ HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert!(absolute.handover.is_some());
    }

    #[test]
    fn upstream_head_rewrites() {
        let text = b"GET /p HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nX-Forwarded-For: 1.1.1.1\r\nx-remove: 1\r\nkeep: 1\r\n\r\n";
        let head = parse(text).unwrap().unwrap();
        let settings = HttpSettings {
            max_header_bytes: 8192,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            forwarded_for: ForwardedFor::Append,
            forwarded: true,
            max_concurrent_streams: 1,
            redirect_https: None,
        };
        let edits = HeaderEdits {
            remove: vec![http::HeaderName::from_static("x-remove")],
            set: vec![],
            add: vec![(http::HeaderName::from_static("x-via"), http::HeaderValue::from_static("edgeplane"))],
        };
        let mut out = Vec::new();
        head.write_upstream(
            text,
            &mut out,
            &settings,
            &edits,
            "10.0.0.1".parse().unwrap(),
            "http",
            "127.0.0.1:1".parse().unwrap(),
        );
        let written = String::from_utf8(out).unwrap();
        assert_eq!(
            written,
            "GET /p HTTP/1.1\r\nHost: h\r\nkeep: 1\r\nx-forwarded-for: 1.1.1.1, 10.0.0.1\r\nx-forwarded-proto: http\r\nforwarded: for=10.0.0.1;proto=http\r\nx-via: edgeplane\r\n\r\n"
        );
    }

    #[test]
    fn response_heads() {
        let edits = HeaderEdits::default();
        let context = ResponseContext { head_request: false, edits: &edits, close: false };
        let mut out = Vec::new();
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello";
        let head = parse_response(text, 8192, &mut out, &context).unwrap().unwrap();
        assert_eq!((head.status, head.framing, head.upstream_close), (200, Framing::Length(5), false));
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");

        out.clear();
        let text = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        let head = parse_response(text, 8192, &mut out, &context).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");

        out.clear();
        let text = b"HTTP/1.0 200 OK\r\n\r\nbody until close";
        let head = parse_response(text, 8192, &mut out, &context).unwrap().unwrap();
        assert_eq!((head.framing, head.upstream_close), (Framing::UntilClose, true));
        assert!(out.ends_with(b"connection: close\r\n\r\n"));

        out.clear();
        let head_context = ResponseContext { head_request: true, edits: &edits, close: false };
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
        let head = parse_response(text, 8192, &mut out, &head_context).unwrap().unwrap();
        assert_eq!(head.framing, Framing::None);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 8192, &mut out, &context).is_err());
    }
}
