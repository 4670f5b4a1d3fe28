//! Bad input from clients and failing upstreams: the proxy answers with a
//! clear error, never panics, hangs or crashes, and keeps serving. Every test
//! ends with a normal request through the same proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use edgeplane_tests::client::{get, raw_exchange, Http1Conn};
use edgeplane_tests::harness::{cluster, guard, TestProxy};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Host of the catch-all route; any other host has no route.
const HOST: &str = "app.test";
/// How long a test waits for the proxy to close a connection before calling it a hang.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);
/// The `http.header_read_timeout` and route `timeout` of the test listener.
const SHORT_TIMEOUT: Duration = Duration::from_millis(300);

/// Panics on the proxy's own threads (`edgeplane-worker-N`,
/// `edgeplane-control`). A panicking connection task only looks like a closed
/// connection from outside, so the tests watch for panics directly.
static PROXY_PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_proxy_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name().is_some_and(|name| name.starts_with("edgeplane-")) {
                PROXY_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// A proxy with one `protocol: http` listener `web` in front of the `app`
/// upstream. Routes: `x-route: slow` → app with a 300 ms timeout,
/// `x-route: empty` → a cluster without endpoints, `x-route: closed` → an
/// endpoint whose port is closed, host `app.test` → app.
struct Env {
    proxy: TestProxy,
    app: HttpUpstream,
    addr: SocketAddr,
}

impl Env {
    async fn start() -> Env {
        watch_proxy_panics();
        let app = HttpUpstream::start("app", HttpProto::Http1).await;
        let closed = closed_port().await;
        let yaml = format!(
            r#"
listeners:
  - name: web
    bind: 127.0.0.1:0
    protocol: http
    http: {{ max_header_bytes: 2048, max_headers: 20, header_read_timeout: 300ms }}
    routes:
      - name: slow
        match: {{ headers: {{ x-route: slow }} }}
        timeout: 300ms
        cluster: app
      - name: empty
        match: {{ headers: {{ x-route: empty }} }}
        cluster: empty
      - name: closed
        match: {{ headers: {{ x-route: closed }} }}
        cluster: closed
      - name: app
        match: {{ host: {HOST} }}
        cluster: app
clusters:
{}  - name: empty
    endpoints: []
{}"#,
            cluster("app", &[app.addr()]),
            cluster("closed", &[closed]),
        );
        let proxy = TestProxy::start(&yaml);
        let addr = proxy.addr("web");
        Env { proxy, app, addr }
    }

    /// A normal request through the same proxy still works, and no proxy
    /// thread has panicked (in any test of this file: they share the process).
    async fn assert_still_serves(&self) {
        let before = self.app.requests();
        let (status, headers, body) = get(self.addr, HOST, "/after-bad-input").await;
        assert_eq!(status, StatusCode::OK, "normal request after bad input");
        assert_eq!(headers["x-upstream"], "app");
        let seen: Value = serde_json::from_slice(&body).expect("JSON from the upstream");
        assert_eq!(seen["path"], "/after-bad-input");
        assert_eq!(self.app.requests(), before + 1);
        assert_eq!(PROXY_PANICS.load(Ordering::SeqCst), 0, "a proxy thread panicked (message above)");
    }

    async fn local_replies(&self, reason: &str) -> Option<f64> {
        self.proxy.metric("edgeplane_http_local_replies_total", &[("listener", "web"), ("reason", reason)]).await
    }
}

/// An address on which nothing listens (bound once, then released).
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    drop(listener);
    addr
}

fn request(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(path).header("host", HOST);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).expect("valid request")
}

/// What came back on a raw connection.
struct RawReply {
    bytes: Vec<u8>,
    /// The proxy closed the connection (EOF or reset) within [`CLOSE_LIMIT`].
    closed: bool,
    /// From just before our write until the close (or the limit).
    elapsed: Duration,
}

impl RawReply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response, if a response head came.
    fn status(&self) -> Option<u16> {
        let text = self.text();
        let rest = text.strip_prefix("HTTP/1.1 ").or_else(|| text.strip_prefix("HTTP/1.0 "))?;
        rest.get(..3)?.parse().ok()
    }

    /// Whether the head of the first response has this header name.
    fn has_header(&self, name: &str) -> bool {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        head.lines().skip(1).any(|line| line.split(':').next().is_some_and(|n| n.trim().eq_ignore_ascii_case(name)))
    }
}

/// Writes `bytes` on a new connection *without* half-closing it, then reads
/// until the proxy closes the connection or [`CLOSE_LIMIT`] passes. Any close
/// is therefore the proxy's own decision.
async fn exchange_keep_open(addr: SocketAddr, bytes: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    // Taken before the write: the proxy cannot start any timer earlier.
    let started = Instant::now();
    // The proxy may close (and reset) before it has read everything.
    let _ = stream.write_all(bytes).await;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = started + CLOSE_LIMIT;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    };
    RawReply { bytes: received, closed, elapsed: started.elapsed() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_line_without_colon_is_400_and_closes() {
    guard(async {
        let env = Env::start().await;
        let reply =
            exchange_keep_open(env.addr, b"GET /x HTTP/1.1\r\nHost: app.test\r\nthis line has no colon\r\n\r\n").await;
        assert_eq!(reply.status(), Some(400), "{}", reply.text());
        assert!(reply.closed, "connection left open after a malformed request: {}", reply.text());
        assert_eq!(env.app.requests(), 0, "a malformed request was forwarded");
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_over_max_header_bytes_is_431() {
    guard(async {
        let env = Env::start().await;
        // Control: a 1 KiB header fits in the 2 KiB limit.
        let filler = "a".repeat(1000);
        let mut conn = Http1Conn::connect(env.addr).await;
        let res = conn.send(request("/fits", &[("x-filler", &filler)])).await.expect("response");
        assert_eq!(res.status(), StatusCode::OK);

        // About 4 KiB of headers, in few fields (under max_headers).
        let mut raw = String::from("GET /too-big HTTP/1.1\r\nHost: app.test\r\n");
        for i in 0..4 {
            raw.push_str(&format!("x-filler-{i}: {filler}\r\n"));
        }
        raw.push_str("\r\n");
        assert!(raw.len() > 4000);
        let reply = exchange_keep_open(env.addr, raw.as_bytes()).await;
        assert_eq!(reply.status(), Some(431), "{}", reply.text());
        assert!(reply.closed, "connection left open after 431");
        assert_eq!(env.app.requests(), 1, "only the control request reaches the upstream");
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_headers_than_max_headers_is_431() {
    guard(async {
        let env = Env::start().await;
        // Control: 15 fields plus Host are within the limit of 20.
        let names: Vec<String> = (0..15).map(|i| format!("x-h{i}")).collect();
        let few: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let mut conn = Http1Conn::connect(env.addr).await;
        let res = conn.send(request("/few", &few)).await.expect("response");
        assert_eq!(res.status(), StatusCode::OK);

        let mut raw = String::from("GET /many HTTP/1.1\r\nHost: app.test\r\n");
        for i in 0..30 {
            raw.push_str(&format!("x-h{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert!(raw.len() < 2048, "the head must be small: only the field count is over");
        let reply = exchange_keep_open(env.addr, raw.as_bytes()).await;
        assert_eq!(reply.status(), Some(431), "{}", reply.text());
        assert!(reply.closed, "connection left open after 431");
        assert_eq!(env.app.requests(), 1, "only the control request reaches the upstream");
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_400() {
    guard(async {
        let env = Env::start().await;
        // The classic request-smuggling shape: the two framings disagree about
        // where this request ends and the next one starts.
        let raw = b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n\
                    0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
        let reply = exchange_keep_open(env.addr, raw).await;
        assert_eq!(reply.status(), Some(400), "{}", reply.text());
        assert!(reply.closed, "connection left open after a request with both framings");
        assert_eq!(env.app.requests(), 0, "a request with Content-Length and chunked framing was forwarded");
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_400() {
    guard(async {
        let env = Env::start().await;
        let raw = b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
        let reply = exchange_keep_open(env.addr, raw).await;
        assert_eq!(reply.status(), Some(400), "{}", reply.text());
        assert!(reply.closed, "connection left open after conflicting Content-Length values");
        assert_eq!(env.app.requests(), 0, "a request with conflicting lengths was forwarded");
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunk_size_is_rejected() {
    guard(async {
        let env = Env::start().await;
        let raw =
            b"POST /body HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
        let reply = exchange_keep_open(env.addr, raw).await;
        assert!(reply.closed, "connection left open after an invalid chunked body: {}", reply.text());
        // Either the proxy closes without a response, or it answers 400 itself
        // (not a status relayed from, or blamed on, the upstream).
        if let Some(status) = reply.status() {
            assert_eq!(status, 400, "invalid chunked body answered with: {}", reply.text());
            assert!(!reply.has_header("x-upstream"), "the upstream answered an invalid body: {}", reply.text());
        }
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_bytes_on_http_listener_are_400() {
    guard(async {
        let env = Env::start().await;
        // Looks like a TLS ClientHello: not HTTP/1, not the HTTP/2 preface.
        let reply = exchange_keep_open(env.addr, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03binary").await;
        assert_eq!(reply.status(), Some(400), "{}", reply.text());
        assert!(reply.closed, "connection left open after non-HTTP bytes");
        // Plain text that is not a request line either (half-closed client).
        let raw = raw_exchange(env.addr, b"hello there, proxy\r\n\r\n").await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        assert_eq!(env.app.requests(), 0);
        assert_eq!(env.local_replies("bad_request").await, Some(2.0));
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404() {
    guard(async {
        let env = Env::start().await;
        let (status, headers, body) = get(env.addr, "unknown.test", "/anything").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(&body[..], b"no route\n");
        assert!(headers.get("x-upstream").is_none());
        assert_eq!(env.app.requests(), 0);
        assert_eq!(env.local_replies("no_route").await, Some(1.0));
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_without_endpoints_is_503() {
    guard(async {
        let env = Env::start().await;
        let mut conn = Http1Conn::connect(env.addr).await;
        let res = conn.send(request("/x", &[("x-route", "empty")])).await.expect("response");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(&res.body()[..], b"no healthy upstream\n");
        assert_eq!(env.local_replies("no_endpoint").await, Some(1.0));
        // A 503 does not cost the client its connection.
        let res = conn.send(request("/same-conn", &[])).await.expect("response on the same connection");
        assert_eq!(res.status(), StatusCode::OK);
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_upstream_port_is_502() {
    guard(async {
        let env = Env::start().await;
        let mut conn = Http1Conn::connect(env.addr).await;
        let res = conn.send(request("/x", &[("x-route", "closed")])).await.expect("response");
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(&res.body()[..], b"upstream connect error\n");
        assert_eq!(env.local_replies("connect_error").await, Some(1.0));
        let refused = env
            .proxy
            .metric("edgeplane_upstream_connect_errors_total", &[("cluster", "closed"), ("reason", "refused")])
            .await;
        assert_eq!(refused, Some(1.0));
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504() {
    guard(async {
        let env = Env::start().await;
        let mut conn = Http1Conn::connect(env.addr).await;
        let started = Instant::now();
        let res = conn.send(request("/hang", &[("x-route", "slow")])).await.expect("response");
        let elapsed = started.elapsed();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(&res.body()[..], b"upstream request timeout\n");
        assert!(elapsed >= SHORT_TIMEOUT, "504 after {elapsed:?}, before the 300ms route timeout");
        assert!(elapsed < Duration::from_secs(5), "504 only after {elapsed:?}");
        assert_eq!(env.app.requests(), 1, "the request reached the upstream before timing out");
        assert_eq!(env.local_replies("upstream_timeout").await, Some(1.0));
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_abort_mid_body_is_an_error_for_the_client() {
    guard(async {
        let env = Env::start().await;
        let mut conn = Http1Conn::connect(env.addr).await;
        let result = tokio::time::timeout(CLOSE_LIMIT, conn.send(request("/abort", &[])))
            .await
            .expect("client hangs after the upstream aborted its response");
        match result {
            Err(_incomplete) => {}
            Ok(res) => panic!("a truncated upstream body arrived as complete: {} {:?}", res.status(), res.body()),
        }
        // The same, raw: the head announces 1000 bytes, far fewer arrive, then the close.
        let raw = exchange_keep_open(env.addr, b"GET /abort HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
        assert!(raw.closed, "connection not closed after the upstream aborted: {}", raw.text());
        if let Some(status) = raw.status() {
            let text = raw.text();
            let body_len = text.split_once("\r\n\r\n").map_or(0, |(_, body)| body.len());
            assert!(body_len < 1000, "complete body from an aborted upstream ({status}): {text}");
        }
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_head_is_closed_after_header_read_timeout() {
    guard(async {
        let env = Env::start().await;
        // The request line and one header, then nothing: no blank line ever comes.
        let reply = exchange_keep_open(env.addr, b"GET /slow-loris HTTP/1.1\r\nHost: app.test\r\n").await;
        assert!(reply.closed, "proxy kept a stalled request head open for {:?}", reply.elapsed);
        assert!(reply.elapsed >= SHORT_TIMEOUT, "closed after {:?}, before header_read_timeout", reply.elapsed);
        // Closed silently or with a 408, nothing else.
        if !reply.bytes.is_empty() {
            assert_eq!(reply.status(), Some(408), "{}", reply.text());
        }
        assert_eq!(env.app.requests(), 0);
        env.assert_still_serves().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_timeout_is_502() {
    guard(async {
        watch_proxy_panics();
        // A listener that never accepts, with its accept queue full: the
        // kernel then drops new SYNs, so connecting to it hangs.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let blackhole = socket.listen(0).expect("listen");
        let addr = blackhole.local_addr().expect("local_addr");
        let mut queued = Vec::new();
        while let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
            queued.push(stream);
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        let yaml = format!(
            "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes: [ {{ cluster: hole }} ]\nclusters:\n  - name: hole\n    connect_timeout: 200ms\n    endpoints: [ \"{addr}\" ]\n"
        );
        let proxy = TestProxy::start(&yaml);
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;
        let started = Instant::now();
        let res = conn.send(request("/x", &[])).await.expect("response");
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(&res.body()[..], b"upstream connect timeout\n");
        assert!(started.elapsed() >= Duration::from_millis(200), "gave up after {:?}", started.elapsed());
        let replies =
            proxy.metric("edgeplane_http_local_replies_total", &[("listener", "web"), ("reason", "connect_timeout")]);
        assert_eq!(replies.await, Some(1.0));
        let errors = proxy.metric("edgeplane_upstream_connect_errors_total", &[("cluster", "hole"), ("reason", "timeout")]);
        assert_eq!(errors.await, Some(1.0));
        drop(blackhole);
    })
    .await;
}
