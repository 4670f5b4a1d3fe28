//! HTTP routing through the proxy: every match kind, header edits,
//! forwarding headers, HTTP/1.1 and HTTP/2 clients, HTTP/2 upstreams.

use bytes::Bytes;
use edgeplane_tests::client::{Http1Conn, Http2Conn};
use edgeplane_tests::harness::{cluster, guard, TestProxy};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

fn request(method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path).header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// Sends over HTTP/1.1 and returns (status, upstream name or "", JSON body or Null).
async fn send1(addr: std::net::SocketAddr, req: Request<Full<Bytes>>) -> (StatusCode, String, Value) {
    let mut conn = Http1Conn::connect(addr).await;
    let res = conn.send(req).await.expect("response");
    let upstream = res.headers().get("x-upstream").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = serde_json::from_slice(res.body()).unwrap_or(Value::Null);
    (res.status(), upstream, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_match_kind_routes_to_its_cluster() {
    guard(async {
        let names =
            ["host", "wild", "exact", "prefix", "regex", "hdr-exact", "hdr-regex", "hdr-absent", "method", "fallback"];
        let mut upstreams = Vec::new();
        for name in names {
            upstreams.push(HttpUpstream::start(name, HttpProto::Http1).await);
        }
        let mut clusters = String::new();
        for upstream in &upstreams {
            clusters.push_str(&cluster(upstream.name(), &[upstream.addr()]));
        }
        let yaml = format!(
            r#"
listeners:
  - name: web
    bind: 127.0.0.1:0
    routes:
      - match: {{ host: api.example.com }}
        cluster: host
      - match: {{ host: "*.example.org" }}
        cluster: wild
      - match: {{ path: {{ exact: /exact }} }}
        cluster: exact
      - match: {{ path: {{ prefix: /v1/ }} }}
        cluster: prefix
      - match: {{ path: {{ regex: "/items/[0-9]+" }} }}
        cluster: regex
      - match: {{ headers: {{ x-canary: "true" }} }}
        cluster: hdr-exact
      - match: {{ headers: {{ x-user: {{ regex: "user-[a-f]+" }} }} }}
        cluster: hdr-regex
      - match: {{ path: {{ prefix: /needs-absent }}, headers: {{ x-debug: {{ present: false }} }} }}
        cluster: hdr-absent
      - match: {{ method: [ DELETE, PATCH ] }}
        cluster: method
      - match: {{ path: {{ prefix: / }} }}
        cluster: fallback
clusters:
{clusters}"#
        );
        let proxy = TestProxy::start(&yaml);
        let addr = proxy.addr("web");
        let cases: Vec<(Request<Full<Bytes>>, &str)> = vec![
            (request("GET", "/x", "api.example.com", &[]), "host"),
            (request("GET", "/x", "API.Example.com:8080", &[]), "host"),
            (request("GET", "/x", "a.b.example.org", &[]), "wild"),
            (request("GET", "/x", "example.org", &[]), "fallback"),
            (request("GET", "/exact", "h", &[]), "exact"),
            (request("GET", "/exact?query=1", "h", &[]), "exact"),
            (request("GET", "/exact/more", "h", &[]), "fallback"),
            (request("GET", "/v1/users", "h", &[]), "prefix"),
            (request("GET", "/v1", "h", &[]), "fallback"),
            (request("GET", "/items/42", "h", &[]), "regex"),
            (request("GET", "/items/42/x", "h", &[]), "fallback"),
            (request("GET", "/x", "h", &[("x-canary", "true")]), "hdr-exact"),
            (request("GET", "/x", "h", &[("x-canary", "false")]), "fallback"),
            (request("GET", "/x", "h", &[("x-user", "user-abc")]), "hdr-regex"),
            (request("GET", "/x", "h", &[("x-user", "user-abcz")]), "fallback"),
            (request("GET", "/needs-absent", "h", &[]), "hdr-absent"),
            (request("GET", "/needs-absent", "h", &[("x-debug", "1")]), "fallback"),
            (request("DELETE", "/x", "h", &[]), "method"),
            (request("PATCH", "/x", "h", &[]), "method"),
            (request("POST", "/x", "h", &[]), "fallback"),
        ];
        for (req, want) in cases {
            let description =
                format!("{} {} host={:?} {:?}", req.method(), req.uri(), req.headers()["host"], req.headers());
            let (status, upstream, _) = send1(addr, req).await;
            assert_eq!(status, StatusCode::OK, "{description}");
            assert_eq!(upstream, want, "{description}");
        }
        // The same matching over HTTP/2 (authority instead of Host).
        let h2 = Http2Conn::connect(addr).await;
        let res = h2.send(request("GET", "http://api.example.com/x", "api.example.com", &[])).await.unwrap();
        assert_eq!(res.headers()["x-upstream"], "host");
        let res = h2.send(request("GET", "http://h/items/7", "h", &[])).await.unwrap();
        assert_eq!(res.headers()["x-upstream"], "regex");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_404() {
    guard(async {
        let up = HttpUpstream::start("only", HttpProto::Http1).await;
        let yaml = format!(
            "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n      - match: {{ path: {{ prefix: /api }} }}\n        cluster: only\nclusters:\n{}",
            cluster("only", &[up.addr()])
        );
        let proxy = TestProxy::start(&yaml);
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;
        let res = conn.send(request("GET", "/other", "h", &[])).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(&res.body()[..], b"no route\n");
        // The connection stays usable after a local reply.
        let res = conn.send(request("GET", "/api/x", "h", &[])).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(up.requests(), 1);
        let local = proxy
            .metric("edgeplane_http_local_replies_total", &[("listener", "web"), ("reason", "no_route")])
            .await;
        assert_eq!(local, Some(1.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_and_forwarding_headers() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let yaml = format!(
            r#"
listeners:
  - name: web
    bind: 127.0.0.1:0
    http: {{ forwarded: true }}
    routes:
      - cluster: app
        request_headers: {{ add: {{ x-via: edgeplane, x-multi: second }}, set: {{ x-env: prod }}, remove: [ x-debug ] }}
        response_headers: {{ add: {{ x-served-by: edgeplane }}, remove: [ x-upstream ] }}
clusters:
{}"#,
            cluster("app", &[up.addr()])
        );
        let proxy = TestProxy::start(&yaml);
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;
        let req = request(
            "GET",
            "/",
            "h",
            &[
                ("x-debug", "1"),
                ("x-env", "dev"),
                ("x-multi", "first"),
                ("x-forwarded-for", "203.0.113.9"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret"),
            ],
        );
        let res = conn.send(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-served-by"], "edgeplane");
        assert!(res.headers().get("x-upstream").is_none());
        let seen: Value = serde_json::from_slice(res.body()).unwrap();
        let headers = &seen["headers"];
        assert_eq!(headers["x-via"], "edgeplane");
        assert_eq!(headers["x-env"], "prod");
        assert_eq!(headers["x-multi"], serde_json::json!(["first", "second"]));
        assert!(headers.get("x-debug").is_none(), "{headers}");
        assert!(headers.get("x-hop").is_none(), "hop-by-hop header named in Connection was forwarded: {headers}");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["forwarded"], "for=127.0.0.1;proto=http");
        assert_eq!(headers["host"], "h");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_and_http2_upstreams() {
    guard(async {
        let h1 = HttpUpstream::start("h1", HttpProto::Http1).await;
        let h2 = HttpUpstream::start("h2", HttpProto::Http2).await;
        let yaml = format!(
            r#"
listeners:
  - name: web
    bind: 127.0.0.1:0
    routes:
      - match: {{ path: {{ prefix: /to-h2 }} }}
        cluster: h2
      - match: {{ headers: {{ x-to: h2 }} }}
        cluster: h2
      - cluster: h1
clusters:
{}  - name: h2
    protocol: http2
    endpoints: [ "{}" ]
"#,
            cluster("h1", &[h1.addr()]),
            h2.addr()
        );
        let proxy = TestProxy::start(&yaml);
        let addr = proxy.addr("web");
        // HTTP/1 client → HTTP/2 upstream.
        let (status, upstream, body) = send1(addr, request("POST", "/to-h2/x?q=1", "svc.local", &[])).await;
        assert_eq!((status, upstream.as_str()), (StatusCode::OK, "h2"));
        assert_eq!(body["version"], "HTTP/2.0");
        assert_eq!(body["path"], "/to-h2/x?q=1");
        // HTTP/2 client → HTTP/1 upstream, which needs a Host header.
        let client = Http2Conn::connect(addr).await;
        let res = client.send(request("GET", "http://svc.local/plain", "svc.local", &[])).await.unwrap();
        let body: Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["version"], "HTTP/1.1");
        assert_eq!(body["headers"]["host"], "svc.local");
        // HTTP/2 client → HTTP/2 upstream, with a large body echoed back.
        let payload = Bytes::from(vec![b'z'; 3 * 1024 * 1024]);
        let req = Request::post("http://svc.local/echo").header("x-to", "h2").body(Full::new(payload.clone())).unwrap();
        let res = client.send(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.body(), &payload);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses_on_both_http_paths() {
    guard(async {
        let yaml = r#"
listeners:
  - name: web
    bind: 127.0.0.1:0
    routes:
      - match: { path: { exact: /healthz } }
        direct_response: { status: 200, body: "ok\n" }
        response_headers: { add: { x-served-by: edgeplane } }
      - direct_response: { status: 503, body: "<h1>maintenance</h1>", content_type: text/html }
"#;
        let proxy = TestProxy::start(yaml);
        let addr = proxy.addr("web");
        // HTTP/1 (the fast path).
        let mut conn = Http1Conn::connect(addr).await;
        let res = conn.send(request("GET", "/healthz", "h", &[])).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&res.body()[..], b"ok\n");
        assert_eq!(res.headers()["content-type"], "text/plain");
        assert_eq!(res.headers()["x-served-by"], "edgeplane");
        let res = conn.send(request("HEAD", "/healthz", "h", &[])).await.unwrap();
        assert_eq!(res.headers()["content-length"], "3");
        assert!(res.body().is_empty());
        let res = conn.send(request("GET", "/other", "h", &[])).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["content-type"], "text/html");
        assert_eq!(&res.body()[..], b"<h1>maintenance</h1>");
        // HTTP/2 (hyper).
        let h2 = Http2Conn::connect(addr).await;
        let res = h2.send(request("GET", "http://h/healthz", "h", &[])).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&res.body()[..], b"ok\n");
        assert_eq!(res.headers()["x-served-by"], "edgeplane");
        let served = proxy
            .metric("edgeplane_http_requests_total", &[("listener", "web"), ("route", "route-0"), ("class", "2xx")])
            .await;
        assert_eq!(served, Some(3.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_edits_win_over_forwarding_headers_on_both_paths() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let yaml = format!(
            r#"
listeners:
  - name: web
    bind: 127.0.0.1:0
    http: {{ forwarded: true }}
    routes:
      - cluster: app
        request_headers: {{ remove: [ x-forwarded-for, forwarded ], set: {{ x-forwarded-proto: https }} }}
clusters:
{}"#,
            cluster("app", &[up.addr()])
        );
        let proxy = TestProxy::start(&yaml);
        let addr = proxy.addr("web");
        let check = |body: &[u8]| {
            let seen: Value = serde_json::from_slice(body).unwrap();
            let headers = &seen["headers"];
            assert!(headers.get("x-forwarded-for").is_none(), "{headers}");
            assert!(headers.get("forwarded").is_none(), "{headers}");
            assert_eq!(headers["x-forwarded-proto"], "https", "{headers}");
            assert_eq!(headers["te"], "trailers", "{headers}");
        };
        let te = [("x-forwarded-for", "203.0.113.9"), ("te", "trailers")];
        let mut conn = Http1Conn::connect(addr).await;
        check(conn.send(request("GET", "/", "h", &te)).await.unwrap().body());
        let h2 = Http2Conn::connect(addr).await;
        check(h2.send(request("GET", "http://h/", "h", &te)).await.unwrap().body());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_stops_at_the_response_head_not_the_body() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let yaml = format!(
            "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes: [ {{ cluster: app, timeout: 300ms }} ]\nclusters:\n{}",
            cluster("app", &[up.addr()])
        );
        let proxy = TestProxy::start(&yaml);
        let addr = proxy.addr("web");
        // The body ends 600 ms after the head, twice the route timeout.
        let started = std::time::Instant::now();
        let mut conn = Http1Conn::connect(addr).await;
        let res = conn.send(request("GET", "/slow-body/600", "h", &[])).await.expect("HTTP/1 response");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&res.body()[..], b"start\nend\n");
        assert!(started.elapsed() >= std::time::Duration::from_millis(600));
        let h2 = Http2Conn::connect(addr).await;
        let res = h2.send(request("GET", "http://h/slow-body/600", "h", &[])).await.expect("HTTP/2 response");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&res.body()[..], b"start\nend\n");
        // The same keep-alive connection is still good afterwards.
        let res = conn.send(request("GET", "/", "h", &[])).await.expect("response");
        assert_eq!(res.status(), StatusCode::OK);
    })
    .await;
}

/// HTTP/2 clients reach HTTP/1 upstreams through the proxy's own HTTP/1
/// client: framing both ways, trailers, HEAD, 204, streamed bodies, an
/// upstream that dies mid-body, and connection reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_through_the_http1_client() {
    guard(async {
        let up = HttpUpstream::start("h1", HttpProto::Http1).await;
        let yaml = format!(
            "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes: [ {{ cluster: h1 }} ]\nclusters:\n{}",
            cluster("h1", &[up.addr()])
        );
        let proxy = TestProxy::start(&yaml);
        let client = Http2Conn::connect(proxy.addr("web")).await;

        // A chunked response with a trailer becomes data frames and a trailers frame.
        let res = client.send(request("GET", "http://h/chunked", "h", &[("te", "trailers")])).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&res.body()[..], edgeplane_tests::upstream::CHUNKS.concat().as_bytes());
        let trailers = edgeplane_tests::client::trailers(&res).expect("trailers");
        assert_eq!(trailers["x-trailer"], "done");

        // A 3 MiB request body streamed without a length, echoed back.
        let payload = Bytes::from((0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let res = client.send(Request::post("http://h/echo").body(Full::new(payload.clone())).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.body(), &payload);

        // Bodiless answers.
        let res = client.send(request("HEAD", "http://h/bytes/1000", "h", &[])).await.unwrap();
        assert_eq!(res.headers()["content-length"], "1000");
        assert!(res.body().is_empty());
        let res = client.send(request("GET", "http://h/status/204", "h", &[])).await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);

        // An upstream that dies mid-body: the stream fails, the connection lives on.
        assert!(client.send(request("GET", "http://h/abort", "h", &[])).await.is_err());
        let res = client.send(request("GET", "http://h/bytes/100000", "h", &[])).await.unwrap();
        assert_eq!(res.body().len(), 100_000);

        // Sequential requests reuse upstream connections.
        let before = up.connections();
        for _ in 0..50 {
            let res = client.send(request("GET", "http://h/", "h", &[])).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        assert!(up.connections() <= before + 2, "{} new upstream connections", up.connections() - before);
    })
    .await;
}
