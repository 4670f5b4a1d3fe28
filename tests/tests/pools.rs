//! Upstream connection pools: HTTP/1 keep-alive reuse (also across reloads),
//! HTTP/1 clients multiplexed onto HTTP/2 upstreams, the HTTP/2 per-connection
//! stream cap, and the pool view of `/clusters`.
//!
//! Pools are per proxy worker (the tests run 2 workers), so bounds on
//! upstream connections allow one pool per worker.

use std::net::SocketAddr;

use edgeplane_tests::client::{simple_request, Http1Conn};
use edgeplane_tests::harness::{guard, TestProxy};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use http::StatusCode;
use serde_json::Value;

/// One listener `web` routing everything to cluster `app` (given as YAML lines).
fn config(route_extra: &str, cluster_yaml: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n      - cluster: app\n{route_extra}clusters:\n{cluster_yaml}"
    )
}

/// The `/clusters` entry of one endpoint.
async fn endpoint_view(proxy: &TestProxy, cluster: &str, addr: SocketAddr) -> Value {
    let (status, body) = proxy.admin_get("/clusters").await;
    assert_eq!(status, 200);
    let dump: Value = serde_json::from_str(&body).expect("/clusters is JSON");
    let cluster = dump["clusters"]
        .as_array()
        .expect("clusters array")
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("cluster {cluster} not in /clusters: {dump}"))
        .clone();
    cluster["endpoints"]
        .as_array()
        .expect("endpoints array")
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("endpoint {addr} not in /clusters: {cluster}"))
        .clone()
}

/// Runs `per_connection` sequential GETs on each of `connections` concurrent
/// HTTP/1 client connections; every response must be 200 from `expect_upstream`.
async fn concurrent_load(addr: SocketAddr, connections: usize, per_connection: usize, expect_upstream: &str) {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let expect_upstream = expect_upstream.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Http1Conn::connect(addr).await;
            for i in 0..per_connection {
                let res = conn
                    .send(simple_request("GET", "/", "pool.test", &[]))
                    .await
                    .unwrap_or_else(|e| panic!("connection {c}, request {i}: {e}"));
                assert_eq!(res.status(), StatusCode::OK, "connection {c}, request {i}: {:?}", res.body());
                assert_eq!(res.headers()["x-upstream"], expect_upstream.as_str());
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_connections_are_reused() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let proxy = TestProxy::start(&config("", &format!("  - name: app\n    endpoints: [ \"{}\" ]\n", up.addr())));

        // 2,000 requests over 4 concurrent client connections. Each client
        // connection has one request in flight at a time, so a worker needs at
        // most as many upstream connections as it has client connections.
        concurrent_load(proxy.addr("web"), 4, 500, "app").await;
        assert_eq!(up.requests(), 2000);
        let opened = up.connections();
        assert!(
            (1..=8).contains(&opened),
            "2,000 requests from 4 client connections opened {opened} upstream connections"
        );

        // The proxy's view: every upstream connection it opened is still open
        // (none was closed) and back in its pool as idle (every response is
        // complete; a connection returns to the pool before the client gets
        // the end of its response).
        let view = endpoint_view(&proxy, "app", up.addr()).await;
        assert_eq!(view["connections"], opened, "{view}");
        assert_eq!(view["idle_connections"], opened, "{view}");
        assert_eq!(view["active_requests"], 0, "{view}");
        let idle_metric = proxy.metric("edgeplane_upstream_pool_idle_connections", &[("cluster", "app")]).await;
        assert_eq!(idle_metric, Some(opened as f64));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_survives_a_reload_that_keeps_the_cluster() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let cluster_yaml = format!("  - name: app\n    endpoints: [ \"{}\" ]\n", up.addr());
        let with_header = |value: &str| {
            config(&format!("        response_headers: {{ set: {{ x-config: {value} }} }}\n"), &cluster_yaml)
        };
        let proxy = TestProxy::start(&with_header("one"));
        let addr = proxy.addr("web");

        // Three client connections, used strictly one request at a time: each
        // worker then needs exactly one upstream connection, reused throughout.
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(Http1Conn::connect(addr).await);
        }
        async fn round(conns: &mut [Http1Conn], expect: &str) {
            for _ in 0..20 {
                for conn in conns.iter_mut() {
                    let res = conn.send(simple_request("GET", "/", "pool.test", &[])).await.unwrap();
                    assert_eq!(res.status(), StatusCode::OK);
                    assert_eq!(res.headers()["x-config"], expect);
                }
            }
        }
        round(&mut conns, "one").await;
        let before = up.connections();
        assert!((1..=2).contains(&before), "sequential requests opened {before} upstream connections");

        let outcome = proxy.reload(&with_header("two")).await.expect("reload");
        assert_eq!(outcome, edgeplane::ReloadOutcome::Applied(2));
        round(&mut conns, "two").await;
        assert_eq!(up.requests(), 120);
        assert_eq!(up.connections(), before, "the reload dropped pooled upstream connections");
        let view = endpoint_view(&proxy, "app", up.addr()).await;
        assert_eq!(view["connections"], before, "{view}");
        assert_eq!(view["idle_connections"], before, "{view}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_are_multiplexed_onto_an_http2_upstream() {
    guard(async {
        let up = HttpUpstream::start("h2app", HttpProto::Http2).await;
        let cluster_yaml = format!("  - name: app\n    protocol: http2\n    endpoints: [ \"{}\" ]\n", up.addr());
        let proxy = TestProxy::start(&config("", &cluster_yaml));
        let addr = proxy.addr("web");

        // One request held in flight for the whole test: every other request
        // overlaps it, so the upstream sees concurrent streams whatever the timing.
        let holder = tokio::spawn(async move {
            let mut conn = Http1Conn::connect(addr).await;
            let _ = conn.send(simple_request("GET", "/hang", "pool.test", &[])).await;
        });
        up.wait_for_requests(1).await;

        // 200 concurrent HTTP/1 client connections × 5 requests.
        concurrent_load(addr, 200, 5, "h2app").await;
        assert_eq!(up.requests(), 1 + 1000);
        // Per worker: one connection carries up to 100 streams (the default
        // cap), a second is opened only when it is full; ≤ 6 over 2 workers.
        let connections = up.connections();
        assert!((1..=6).contains(&connections), "1,001 requests used {connections} HTTP/2 connections");
        assert!(up.max_concurrent_requests() > 1, "streams were not multiplexed");

        let view = endpoint_view(&proxy, "app", up.addr()).await;
        assert_eq!(view["connections"], connections, "{view}");
        assert_eq!(view["active_requests"], 1, "only the held request is in flight: {view}");
        holder.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_cap_opens_more_connections() {
    guard(async {
        let up = HttpUpstream::start("capped", HttpProto::Http2).await;
        let cluster_yaml = format!(
            "  - name: app\n    protocol: http2\n    pool: {{ max_concurrent_streams: 10 }}\n    endpoints: [ \"{}\" ]\n",
            up.addr()
        );
        let proxy = TestProxy::start(&config("", &cluster_yaml));
        let addr = proxy.addr("web");

        // 50 requests that never finish, each on its own client connection.
        let mut hung = Vec::new();
        for _ in 0..50 {
            hung.push(tokio::spawn(async move {
                let mut conn = Http1Conn::connect(addr).await;
                let _ = conn.send(simple_request("GET", "/hang", "pool.test", &[])).await;
            }));
        }
        up.wait_for_requests(50).await;
        assert_eq!(up.in_flight(), 50);

        // A worker with n of them needs ⌈n/10⌉ connections; n₁ + n₂ = 50 over
        // the two workers gives 5 or 6.
        let connections = up.connections();
        assert!(
            (5..=7).contains(&connections),
            "50 concurrent streams with a cap of 10 per connection used {connections} connections"
        );

        let view = endpoint_view(&proxy, "app", up.addr()).await;
        assert_eq!(view["connections"], connections, "proxy and upstream disagree on open connections: {view}");
        assert_eq!(view["idle_connections"], 0, "no HTTP/1 pool here: {view}");
        assert_eq!(view["active_requests"], 50, "{view}");
        for task in hung {
            task.abort();
        }
    })
    .await;
}
