//! Limits: cluster thresholds (max_requests, max_connections,
//! max_pending_requests), request rate limits (burst, keys, backlog,
//! sustained rate), bandwidth limits, the connection rate limit and the
//! slow-loris guard.
//!
//! Timing assertions measure elapsed time with tolerances; the tests that
//! make them hold [`TIMING`] so that they do not compete with each other for
//! the machine's cores.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use edgeplane_tests::client::{simple_request, Http1Conn, Http2Conn};
use edgeplane_tests::harness::{eventually, guard, TestProxy};
use edgeplane_tests::upstream::{bytes_pattern, FaultyUpstream, HttpProto, HttpUpstream, Mode, TcpEcho};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

const HOST: &str = "limits.test";

/// Held by the tests whose assertions are about elapsed time.
static TIMING: Mutex<()> = Mutex::const_new(());

fn get(path: &str) -> Request<Full<Bytes>> {
    simple_request("GET", path, HOST, &[])
}

fn get_as(path: &str, user: &str) -> Request<Full<Bytes>> {
    simple_request("GET", path, HOST, &[("x-user", user)])
}

fn upstream_of(res: &Response<Bytes>) -> &str {
    res.headers().get("x-upstream").map_or("<proxy>", |v| v.to_str().expect("ascii x-upstream"))
}

/// Listener `web` (extra listener lines given, indented by 4) with one route
/// (a YAML flow mapping) to cluster `app` with one endpoint and extra lines.
fn config(listener_extra: &str, route: &str, endpoint: SocketAddr, cluster_extra: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n{listener_extra}    routes:\n      - {route}\nclusters:\n  - name: app\n    endpoints: [ \"{endpoint}\" ]\n{cluster_extra}"
    )
}

async fn cluster_view(proxy: &TestProxy) -> Value {
    let (status, body) = proxy.admin_get("/clusters").await;
    assert_eq!(status, 200, "{body}");
    let dump: Value = serde_json::from_str(&body).expect("/clusters is JSON");
    dump["clusters"][0].clone()
}

async fn overflow(proxy: &TestProxy, limit: &str) -> Option<f64> {
    proxy.metric("edgeplane_upstream_overflow_total", &[("cluster", "app"), ("limit", limit)]).await
}

fn assert_overloaded(res: &Response<Bytes>, limit: &str) {
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{:?}", res.body());
    assert_eq!(res.headers().get("x-edgeplane-overloaded").map(|v| v.to_str().unwrap()), Some(limit));
    assert_eq!(upstream_of(res), "<proxy>");
}

/// Sends one GET on its own connection, keeping the connection: the
/// response status and the connection, for a follow-up request.
fn spawn_get(addr: SocketAddr, path: &'static str) -> tokio::task::JoinHandle<(StatusCode, Http1Conn)> {
    tokio::spawn(async move {
        let mut conn = Http1Conn::connect(addr).await;
        let res = conn.send(get(path)).await.expect("response");
        (res.status(), conn)
    })
}

// ---------------------------------------------------------------------------
// Cluster limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_refuses_fast_and_recovers() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        up.set_mode(Mode::Hang);
        let proxy = TestProxy::start(&config("", "{ cluster: app }", up.addr(), "    limits: { max_requests: 2 }\n"));
        let addr = proxy.addr("web");

        let hung = [spawn_get(addr, "/hang-1"), spawn_get(addr, "/hang-2")];
        up.wait_for_requests(2).await;
        assert_eq!(cluster_view(&proxy).await["active_requests"], 2);

        // The third request is refused at once, over HTTP/1 and HTTP/2.
        let mut conn = Http1Conn::connect(addr).await;
        let started = Instant::now();
        let res = conn.send(get("/third")).await.expect("response");
        let elapsed = started.elapsed();
        assert_overloaded(&res, "max_requests");
        assert_eq!(&res.body()[..], b"upstream overloaded\n");
        assert!(elapsed < Duration::from_secs(1), "refusal took {elapsed:?}");
        let h2 = Http2Conn::connect(addr).await;
        let res = h2.send(get("/third-h2")).await.expect("response");
        assert_overloaded(&res, "max_requests");
        assert_eq!(up.requests(), 2, "a request over the limit reached the upstream");
        assert_eq!(overflow(&proxy, "max_requests").await, Some(2.0));
        let replies =
            proxy.metric("edgeplane_http_local_replies_total", &[("listener", "web"), ("reason", "overloaded")]).await;
        assert_eq!(replies, Some(2.0));

        // Released: the hung requests complete and the limit frees up.
        up.set_mode(Mode::Ok);
        up.release_hung();
        for task in hung {
            let (status, _) = task.await.expect("client task");
            assert_eq!(status, StatusCode::OK);
        }
        let p = &proxy;
        eventually("requests finished", Duration::from_secs(5), || async move {
            cluster_view(p).await["active_requests"] == 0
        })
        .await;
        for i in 0..5 {
            let res = conn.send(get("/after")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK, "request {i} after the release");
            let res = h2.send(get("/after-h2")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK, "HTTP/2 request {i} after the release");
        }
        assert_eq!(overflow(&proxy, "max_requests").await, Some(2.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_a_new_upstream_connection() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        up.set_mode(Mode::Hang);
        let proxy =
            TestProxy::start(&config("", "{ cluster: app }", up.addr(), "    limits: { max_connections: 2 }\n"));
        let addr = proxy.addr("web");

        // Two hung requests hold one upstream connection each.
        let hung = [spawn_get(addr, "/hang-1"), spawn_get(addr, "/hang-2")];
        up.wait_for_requests(2).await;
        assert_eq!(up.connections(), 2);
        assert_eq!(cluster_view(&proxy).await["connections"], 2);

        let res = Http1Conn::connect(addr).await.send(get("/third")).await.expect("response");
        assert_overloaded(&res, "max_connections");
        assert_eq!(up.connections(), 2, "a connection over the limit was opened");
        assert_eq!(up.requests(), 2);
        assert_eq!(overflow(&proxy, "max_connections").await, Some(1.0));

        // Released: each client connection's next request reuses the pooled
        // upstream connection its worker has, within the limit.
        up.set_mode(Mode::Ok);
        up.release_hung();
        for task in hung {
            let (status, mut conn) = task.await.expect("client task");
            assert_eq!(status, StatusCode::OK);
            let res = conn.send(get("/again")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK);
        }
        assert_eq!(up.connections(), 2);
        assert_eq!(up.requests(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_requests_refuses_while_connects_hang() {
    guard(async {
        // A listener that never accepts, with its accept queue full: the
        // kernel drops new SYNs, so connecting to it hangs.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let blackhole = socket.listen(0).expect("listen");
        let hole = blackhole.local_addr().expect("local_addr");
        let mut queued = Vec::new();
        while let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(hole)).await {
            queued.push(stream);
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        let proxy = TestProxy::start(&config(
            "",
            "{ cluster: app }",
            hole,
            "    connect_timeout: 2s\n    limits: { max_pending_requests: 1 }\n",
        ));
        let addr = proxy.addr("web");

        let waiting = spawn_get(addr, "/waits-for-a-connection");
        let p = &proxy;
        eventually("one request pending", Duration::from_secs(2), || async move {
            cluster_view(p).await["pending_requests"] == 1
        })
        .await;
        let started = Instant::now();
        let res = Http1Conn::connect(addr).await.send(get("/second")).await.expect("response");
        assert_overloaded(&res, "max_pending_requests");
        assert!(started.elapsed() < Duration::from_secs(1), "refusal took {:?}", started.elapsed());
        assert_eq!(overflow(&proxy, "max_pending_requests").await, Some(1.0));

        // The waiting one ends with a connect timeout, which frees the slot.
        let (status, _) = waiting.await.expect("client task");
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(cluster_view(&proxy).await["pending_requests"], 0);
        drop(blackhole);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Request rate limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_passes_the_burst_then_429s() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        let listener = "    rate_limit: { requests: 5, per: 1s, burst: 5, response_headers: { x-limited: \"yes\" } }\n";
        let proxy = TestProxy::start(&config(listener, "{ cluster: app }", up.addr(), ""));
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;

        let started = Instant::now();
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let res = conn.send(get("/burst")).await.expect("response");
            if res.status() == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(res.headers()["retry-after"], "1", "one token every 200ms");
                assert_eq!(res.headers()["x-limited"], "yes");
                assert_eq!(&res.body()[..], b"rate limited\n");
            } else {
                assert_eq!(res.status(), StatusCode::OK);
            }
            statuses.push(res.status().as_u16());
        }
        let elapsed = started.elapsed();
        let passed = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(&statuses[..5], &[200; 5], "the burst did not pass: {statuses:?}");
        // One more token every 200ms.
        let refilled = (elapsed.as_millis() / 200) as usize;
        assert!(passed <= 5 + refilled, "{passed} passed in {elapsed:?}: {statuses:?}");
        assert_eq!(up.requests(), passed);
        let limited =
            proxy.metric("edgeplane_http_local_replies_total", &[("listener", "web"), ("reason", "rate_limited")]);
        assert_eq!(limited.await, Some((20 - passed) as f64));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_keyed_by_header_gives_each_key_its_burst() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        let route = "{ cluster: app, rate_limit: { requests: 3, per: 10s, key: { header: x-user } } }";
        let proxy = TestProxy::start(&config("", route, up.addr(), ""));
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;
        let h2 = Http2Conn::connect(proxy.addr("web")).await;

        async fn send(conn: &mut Http1Conn, h2: &Http2Conn, user: &str, http2: bool) -> u16 {
            let res = if http2 { h2.send(get_as("/k", user)).await } else { conn.send(get_as("/k", user)).await };
            res.expect("response").status().as_u16()
        }
        // One token every 3.3s: none refills during the test.
        for user in ["alice", "bob"] {
            for i in 0..3 {
                assert_eq!(send(&mut conn, &h2, user, i == 1).await, 200, "{user}'s request {i} is within the burst");
            }
            assert_eq!(send(&mut conn, &h2, user, false).await, 429, "{user} is over the burst");
            assert_eq!(send(&mut conn, &h2, user, true).await, 429, "{user} is over the burst (HTTP/2)");
        }
        // A third key, and the requests without the header, have buckets of their own.
        assert_eq!(send(&mut conn, &h2, "carol", false).await, 200);
        let res = conn.send(get("/no-key")).await.expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(up.requests(), 8);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_state_survives_unrelated_reload_and_resets_when_changed() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        let yaml = |requests: u32, extra_route: &str| {
            format!(
                "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n{extra_route}      - {{ name: main, cluster: app, rate_limit: {{ requests: {requests}, per: 60s }} }}\nclusters:\n  - name: app\n    endpoints: [ \"{}\" ]\n",
                up.addr()
            )
        };
        let extra = "      - { name: extra, match: { path: { prefix: /extra } }, direct_response: { status: 204 } }\n";
        let proxy = TestProxy::start(&yaml(3, ""));
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;
        let mut status = async |path: &str| conn.send(get(path)).await.expect("response").status().as_u16();
        for i in 0..3 {
            assert_eq!(status("/main").await, 200, "request {i} is within the burst");
        }
        assert_eq!(status("/main").await, 429);

        // Another route: the limiter and its empty bucket stay.
        let outcome = proxy.reload(&yaml(3, extra)).await.expect("reload");
        assert!(matches!(outcome, edgeplane::ReloadOutcome::Applied(_)), "{outcome:?}");
        assert_eq!(status("/extra").await, 204, "reload not applied");
        assert_eq!(status("/main").await, 429, "the reload refilled an unchanged limiter");

        // A changed limit starts with a full bucket.
        let outcome = proxy.reload(&yaml(4, extra)).await.expect("reload");
        assert!(matches!(outcome, edgeplane::ReloadOutcome::Applied(_)), "{outcome:?}");
        for i in 0..4 {
            assert_eq!(status("/main").await, 200, "request {i} after the change");
        }
        assert_eq!(status("/main").await, 429);
        assert_eq!(up.requests(), 7);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_backlog_queues_a_few_requests() {
    guard(async {
        let _timing = TIMING.lock().await;
        let up = FaultyUpstream::start("app").await;
        // One token per 500ms, a burst of one, and two requests may wait
        // (for at most 2 × 500ms).
        let listener = "    rate_limit: { requests: 2, per: 1s, burst: 1, backlog: 2 }\n";
        let proxy = TestProxy::start(&config(listener, "{ cluster: app }", up.addr(), ""));
        let addr = proxy.addr("web");

        let mut conns = Vec::new();
        for _ in 0..5 {
            conns.push(Http1Conn::connect(addr).await);
        }
        assert_eq!(conns[0].send(get("/first")).await.unwrap().status(), StatusCode::OK);
        // The bucket is empty now. Four requests at once: the first two to
        // arrive wait for the next two tokens (~500 and ~1000ms), the other
        // two find the backlog full and are refused at once.
        let started = Instant::now();
        let tasks: Vec<_> = conns
            .drain(1..)
            .map(|mut conn| {
                tokio::spawn(async move {
                    let res = conn.send(get("/at-once")).await.expect("response");
                    (res, started.elapsed())
                })
            })
            .collect();
        let mut passed = Vec::new();
        let mut refused = Vec::new();
        for task in tasks {
            let (res, elapsed) = task.await.expect("client task");
            match res.status() {
                StatusCode::OK => passed.push(elapsed),
                StatusCode::TOO_MANY_REQUESTS => {
                    assert!(res.headers().contains_key("retry-after"));
                    refused.push(elapsed);
                }
                other => panic!("unexpected {other}"),
            }
        }
        passed.sort();
        assert_eq!((passed.len(), refused.len()), (2, 2), "passed after {passed:?}, refused after {refused:?}");
        assert!(passed[0] >= Duration::from_millis(450), "first waiter passed after {:?}", passed[0]);
        assert!(passed[1] >= Duration::from_millis(950), "second waiter passed after {:?}", passed[1]);
        assert!(passed[1] < Duration::from_secs(2), "waiters passed after {passed:?}");
        for elapsed in &refused {
            assert!(*elapsed < Duration::from_millis(450), "a refusal took {elapsed:?}: it waited");
        }
        assert_eq!(up.requests(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_the_rate_under_sustained_load() {
    guard(async {
        let _timing = TIMING.lock().await;
        let up = FaultyUpstream::start("app").await;
        // A burst of 5 lets a token wait a little for the next request
        // without being lost (with a burst of 1, every delay between a token
        // and the next arrival would lower the rate).
        let listener = "    rate_limit: { requests: 50, per: 1s, burst: 5 }\n";
        let proxy = TestProxy::start(&config(listener, "{ cluster: app }", up.addr(), ""));
        let addr = proxy.addr("web");

        // Two connections send a request every 5ms each for ~2.5s: 400/s,
        // eight times the limit (paced, to leave the cores to the proxy).
        const RUN: Duration = Duration::from_millis(2500);
        let mut conns = vec![Http1Conn::connect(addr).await, Http1Conn::connect(addr).await];
        let started = Instant::now();
        let tasks: Vec<_> = conns
            .drain(..)
            .map(|mut conn| {
                tokio::spawn(async move {
                    let (mut passed, mut refused) = (0usize, 0usize);
                    let mut pace = tokio::time::interval(Duration::from_millis(5));
                    while started.elapsed() < RUN {
                        pace.tick().await;
                        let res = conn.send(get("/load")).await.expect("response");
                        match res.status() {
                            StatusCode::OK => passed += 1,
                            StatusCode::TOO_MANY_REQUESTS => refused += 1,
                            other => panic!("unexpected {other}"),
                        }
                    }
                    (passed, refused)
                })
            })
            .collect();
        let (mut passed, mut refused) = (0, 0);
        for task in tasks {
            let (p, r) = task.await.expect("client task");
            passed += p;
            refused += r;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let expected = 5.0 + 50.0 * elapsed;
        assert!(refused as f64 > expected, "the load ({} requests) was not above the limit", passed + refused);
        assert!(
            (passed as f64 - expected).abs() <= 0.1 * expected,
            "{passed} admitted in {elapsed:.3}s, expected {expected:.0} ± 10% ({refused} refused)"
        );
        assert_eq!(up.requests(), passed);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Bandwidth

/// The time a throttled transfer of `bytes` should take at `rate` bytes/s:
/// the bucket starts with a tenth of a second of traffic.
fn throttled_time(bytes: usize, rate: usize) -> f64 {
    (bytes as f64 - rate as f64 / 10.0) / rate as f64
}

fn assert_within_10_percent(what: &str, elapsed: Duration, expected: f64) {
    let elapsed = elapsed.as_secs_f64();
    assert!((elapsed - expected).abs() <= 0.1 * expected, "{what} took {elapsed:.3}s, expected {expected:.3}s ± 10%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_paces_an_http1_download() {
    guard(async {
        let _timing = TIMING.lock().await;
        let up = HttpUpstream::start("bulk", HttpProto::Http1).await;
        let listener = "    bandwidth: { per_connection: { download: \"200KB\" } }\n";
        let proxy = TestProxy::start(&config(listener, "{ cluster: app }", up.addr(), ""));
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;

        const SIZE: usize = 400_000;
        let started = Instant::now();
        let res = conn.send(get(&format!("/bytes/{SIZE}"))).await.expect("response");
        let elapsed = started.elapsed();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.body()[..] == bytes_pattern(SIZE)[..], "body differs");
        assert_within_10_percent("a 400 KB download at 200 KB/s", elapsed, throttled_time(SIZE, 200_000));

        // Uploads are not limited: a small request goes through at once.
        let started = Instant::now();
        let res = conn.send(get("/small")).await.expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        assert!(started.elapsed() < Duration::from_millis(500), "a small exchange took {:?}", started.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_paces_a_tcp_upload() {
    guard(async {
        let _timing = TIMING.lock().await;
        let echo = TcpEcho::start().await;
        let yaml = format!(
            "listeners:\n  - name: front\n    bind: 127.0.0.1:0\n    protocol: tcp\n    bandwidth: {{ per_connection: {{ upload: 200000 }} }}\n    routes:\n      - cluster: echo\nclusters:\n  - name: echo\n    endpoints: [ \"{}\" ]\n",
            echo.addr()
        );
        let proxy = TestProxy::start(&yaml);
        let stream = TcpStream::connect(proxy.addr("front")).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (mut read, mut write) = stream.into_split();

        const SIZE: usize = 400_000;
        let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            write.write_all(&payload).await.expect("upload");
            write
        });
        let mut received = vec![0u8; SIZE];
        read.read_exact(&mut received).await.expect("echo of the whole upload");
        let elapsed = started.elapsed();
        let _write = writer.await.expect("writer");
        assert!(received == expected, "echoed bytes differ");
        assert_within_10_percent("a 400 KB upload at 200 KB/s", elapsed, throttled_time(SIZE, 200_000));
        assert_eq!(echo.bytes(), SIZE);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Connections: slow loris and connection rate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_heads_do_not_hold_up_other_clients() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        let listener = "    http: { header_read_timeout: 300ms }\n";
        let proxy = TestProxy::start(&config(listener, "{ cluster: app }", up.addr(), ""));
        let addr = proxy.addr("web");

        // 20 connections send the start of a head, then nothing.
        let stalled: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(addr).await.expect("connect");
                    let started = Instant::now();
                    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
                    let mut received = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                            Err(_) => panic!("a stalled connection was kept open for 5s"),
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                        }
                    }
                    (started.elapsed(), received)
                })
            })
            .collect();

        // Meanwhile normal clients, on a kept-alive connection and on new
        // ones, are served promptly until every stalled connection is gone.
        let mut conn = Http1Conn::connect(addr).await;
        let mut served = 0;
        while stalled.iter().any(|task| !task.is_finished()) {
            let started = Instant::now();
            let res = conn.send(get("/normal")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK);
            let res = Http1Conn::connect(addr).await.send(get("/fresh")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK);
            assert!(started.elapsed() < Duration::from_secs(1), "two requests took {:?}", started.elapsed());
            served += 2;
            assert!(served < 100_000, "stalled connections never closed");
        }
        assert!(served >= 2, "no request was served while the heads were stalled");
        for task in stalled {
            let (elapsed, received) = task.await.expect("stalled client");
            assert!(elapsed >= Duration::from_millis(290), "closed after {elapsed:?}, before header_read_timeout");
            assert!(elapsed < Duration::from_millis(1500), "closed only after {elapsed:?}");
            if !received.is_empty() {
                let text = String::from_utf8_lossy(&received);
                assert!(text.starts_with("HTTP/1.1 408"), "unexpected answer to a stalled head: {text}");
            }
        }
        assert_eq!(up.requests(), served, "a stalled request reached the upstream");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_limit_closes_excess_connections() {
    guard(async {
        let echo = TcpEcho::start().await;
        let yaml = format!(
            "listeners:\n  - name: front\n    bind: 127.0.0.1:0\n    protocol: tcp\n    connection_rate_limit: {{ connections: 3, per: 10s }}\n    routes:\n      - cluster: echo\nclusters:\n  - name: echo\n    endpoints: [ \"{}\" ]\n",
            echo.addr()
        );
        let proxy = TestProxy::start(&yaml);
        let addr = proxy.addr("front");

        let mut open = Vec::new();
        for i in 0..3 {
            open.push(echoed_connection(addr, i).await);
        }
        assert_eq!(echo.connections(), 3);

        // The fourth within the period is closed at once, before any upstream connection.
        closed_at_once(addr, "the fourth").await;
        assert_eq!(echo.connections(), 3, "an excess connection reached the upstream");
        let limited =
            proxy.metric("edgeplane_http_local_replies_total", &[("listener", "front"), ("reason", "rate_limited")]);
        assert_eq!(limited.await, Some(1.0));
        let by_limiter = proxy.metric("edgeplane_rate_limited_total", &[("limiter", "listener/front/connections")]);
        assert_eq!(by_limiter.await, Some(1.0));

        // The admitted ones are unaffected.
        for (i, stream) in open.iter_mut().enumerate() {
            stream.write_all(b"pong").await.expect("write");
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).await.unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert_eq!(&buf, b"pong");
        }
    })
    .await;
}

/// A TCP route's own connection limit (osm-edge's per-port limit): the
/// route takes `connections` per period and closes the rest at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_routes_connection_limit_closes_its_excess_connections() {
    guard(async {
        let echo = TcpEcho::start().await;
        let yaml = format!(
            "listeners:\n  - name: front\n    bind: 127.0.0.1:0\n    protocol: tcp\n    routes:\n      - {{ name: db, cluster: echo, connection_rate_limit: {{ connections: 2, per: 10s }} }}\nclusters:\n  - name: echo\n    endpoints: [ \"{}\" ]\n",
            echo.addr()
        );
        let proxy = TestProxy::start(&yaml);
        let addr = proxy.addr("front");
        let _open = [echoed_connection(addr, 0).await, echoed_connection(addr, 1).await];
        closed_at_once(addr, "the third").await;
        assert_eq!(echo.connections(), 2, "an excess connection reached the upstream");
        let refused = proxy.metric("edgeplane_rate_limited_total", &[("limiter", "route/front/db/connections")]);
        assert_eq!(refused.await, Some(1.0));
    })
    .await;
}

/// A connection through the proxy whose `ping` came back.
async fn echoed_connection(addr: SocketAddr, i: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("connection {i}: no echo"))
        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
    assert_eq!(&buf, b"ping");
    stream
}

/// A connection the proxy accepts and closes at once, sending nothing.
async fn closed_at_once(addr: SocketAddr, which: &str) {
    let mut stream = TcpStream::connect(addr).await.expect("the kernel still accepts");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{which} connection was kept open"));
    assert!(matches!(read, Ok(0) | Err(_)), "{which} connection got data: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "closed after {:?}", started.elapsed());
}
