//! Resilience policies against failing upstreams: the degrade breaker,
//! outlier ejection, priority failover driven by health checks, retries
//! (HTTP/1 fast path and HTTP/2 clients), per-try timeouts, policy state
//! across reloads and config validation of the policies.
//!
//! Upstreams are [`FaultyUpstream`]s whose failures the tests switch at run
//! time. State changes are awaited by polling `/clusters` with a deadline;
//! nothing sleeps to synchronise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use edgeplane_tests::client::{simple_request, Http1Conn, Http2Conn};
use edgeplane_tests::harness::{eventually, guard, TestProxy};
use edgeplane_tests::upstream::{FaultyUpstream, Mode, X_BODY_LEN};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tokio::time::Instant;

const HOST: &str = "resilience.test";

/// Longest wait for a state change the proxy should make within a few
/// hundred milliseconds (ejection expiry, health check verdicts, …).
const STATE_CHANGE: Duration = Duration::from_secs(5);

fn get(path: &str) -> Request<Full<Bytes>> {
    simple_request("GET", path, HOST, &[])
}

fn post(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(path).header("host", HOST).body(Full::new(Bytes::from_static(body))).expect("valid request")
}

fn upstream_of(res: &Response<Bytes>) -> &str {
    res.headers().get("x-upstream").map_or("<proxy>", |v| v.to_str().expect("ascii x-upstream"))
}

/// A config with listener `web`, whose routes are the given YAML flow
/// mappings, and these clusters (YAML list items).
fn config(routes: &[&str], clusters: &str) -> String {
    let routes: String = routes.iter().map(|route| format!("      - {route}\n")).collect();
    format!("listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n{routes}clusters:\n{clusters}")
}

/// A cluster list item: `name`, endpoints (YAML flow items) and extra
/// `key: value` lines.
fn cluster(name: &str, endpoints: &[String], settings: &[&str]) -> String {
    let mut yaml = format!("  - name: {name}\n    endpoints: [ {} ]\n", endpoints.join(", "));
    for line in settings {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml
}

fn ep(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

fn ep_priority(addr: SocketAddr, priority: u32) -> String {
    format!("{{ address: \"{addr}\", priority: {priority} }}")
}

/// The `/clusters` entry of a cluster.
async fn cluster_view(proxy: &TestProxy, name: &str) -> Value {
    let (status, body) = proxy.admin_get("/clusters").await;
    assert_eq!(status, 200, "{body}");
    let dump: Value = serde_json::from_str(&body).expect("/clusters is JSON");
    dump["clusters"]
        .as_array()
        .expect("clusters array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("cluster {name} not in /clusters: {dump}"))
        .clone()
}

/// The `/clusters` entry of one endpoint.
async fn endpoint_view(proxy: &TestProxy, cluster: &str, addr: SocketAddr) -> Value {
    let view = cluster_view(proxy, cluster).await;
    view["endpoints"]
        .as_array()
        .expect("endpoints array")
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("endpoint {addr} not in /clusters: {view}"))
        .clone()
}

async fn breaker_view(proxy: &TestProxy, cluster: &str) -> Value {
    cluster_view(proxy, cluster).await["breaker"].clone()
}

/// Sends `total` GETs over `connections` concurrent keep-alive HTTP/1
/// connections; every response must be 200. Counts responses by upstream.
async fn load(addr: SocketAddr, connections: usize, total: usize) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut conn = Http1Conn::connect(addr).await;
            let mut seen = HashMap::new();
            for i in (c..total).step_by(connections) {
                let res = conn.send(get("/load")).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
                assert_eq!(res.status(), StatusCode::OK, "request {i}: {:?}", res.body());
                *seen.entry(upstream_of(&res).to_owned()).or_insert(0) += 1;
            }
            seen
        }));
    }
    let mut all = HashMap::new();
    for task in tasks {
        for (name, n) in task.await.expect("client task panicked") {
            *all.entry(name).or_insert(0) += n;
        }
    }
    all
}

// ---------------------------------------------------------------------------
// Degrade breaker

const BREAKER: &str = "breaker: { stat_window: 10s, min_requests: 5, error_ratio: 0.5, degraded_window: 300ms, degraded_status: 409, degraded_body: \"Coming soon ...\" }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_errors_probes_and_closes() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        up.set_mode(Mode::Status(500));
        let proxy = TestProxy::start(&config(&["{ cluster: app }"], &cluster("app", &[ep(up.addr())], &[BREAKER])));
        let addr = proxy.addr("web");
        assert_eq!(breaker_view(&proxy, "app").await, serde_json::json!({ "state": "closed", "opened_total": 0 }));

        // Five errors reach the upstream: the window has its minimum and 100% errors.
        let mut conn = Http1Conn::connect(addr).await;
        for i in 0..5 {
            let res = conn.send(get("/fail")).await.expect("response");
            assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "request {i}");
            assert_eq!(upstream_of(&res), "app", "request {i} was not answered by the upstream");
        }
        assert_eq!(up.requests(), 5);
        assert_eq!(breaker_view(&proxy, "app").await, serde_json::json!({ "state": "open", "opened_total": 1 }));

        // Open: the degraded response, without touching the upstream (HTTP/1 and HTTP/2 clients).
        let h2 = Http2Conn::connect(addr).await;
        for i in 0..5 {
            let res = conn.send(get("/degraded")).await.expect("response");
            assert_eq!(res.status(), StatusCode::CONFLICT, "request {i}");
            assert_eq!(&res.body()[..], b"Coming soon ...");
            let res = h2.send(get("/degraded")).await.expect("HTTP/2 response");
            assert_eq!(res.status(), StatusCode::CONFLICT, "HTTP/2 request {i}");
            assert_eq!(&res.body()[..], b"Coming soon ...");
        }
        assert_eq!(up.requests(), 5, "requests reached the upstream while the breaker was open");

        // After degraded_window a single probe goes through; the upstream still
        // fails, so the breaker opens again for a whole window.
        let p = &proxy;
        eventually("breaker half-open", STATE_CHANGE, || async move {
            breaker_view(p, "app").await["state"] == "half_open"
        })
        .await;
        let res = conn.send(get("/probe")).await.expect("response");
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "the probe reaches the upstream");
        assert_eq!(up.requests(), 6);
        assert_eq!(breaker_view(&proxy, "app").await, serde_json::json!({ "state": "open", "opened_total": 2 }));
        let res = conn.send(get("/degraded")).await.expect("response");
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(up.requests(), 6);

        // Fixed by the next window: the probe succeeds, the breaker closes and traffic flows.
        up.set_mode(Mode::Ok);
        eventually("breaker half-open again", STATE_CHANGE, || async move {
            breaker_view(p, "app").await["state"] == "half_open"
        })
        .await;
        for i in 0..10 {
            let res = conn.send(get("/ok")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK, "request {i} after recovery");
            assert_eq!(upstream_of(&res), "app");
        }
        assert_eq!(up.requests(), 16);
        assert_eq!(breaker_view(&proxy, "app").await, serde_json::json!({ "state": "closed", "opened_total": 2 }));
        let degraded =
            proxy.metric("edgeplane_http_local_replies_total", &[("listener", "web"), ("reason", "degraded")]).await;
        assert_eq!(degraded, Some(11.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_state_survives_unrelated_reload_and_resets_when_changed() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        up.set_mode(Mode::Status(500));
        // A long degraded window: the breaker stays open for the whole test unless reset.
        let breaker = |body: &str| {
            format!("breaker: {{ min_requests: 5, error_ratio: 0.5, degraded_window: 60s, degraded_body: \"{body}\" }}")
        };
        let yaml = |routes: &[&str], body: &str| config(routes, &cluster("app", &[ep(up.addr())], &[&breaker(body)]));
        let main_route = "{ name: main, cluster: app }";
        let proxy = TestProxy::start(&yaml(&[main_route], "closed for now"));
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;
        for _ in 0..5 {
            assert_eq!(conn.send(get("/fail")).await.unwrap().status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
        assert_eq!(breaker_view(&proxy, "app").await["state"], "open");

        // An unrelated change (one more route): the same breaker, still open.
        let extra_route = "{ name: extra, match: { path: { prefix: /extra } }, direct_response: { status: 204 } }";
        let outcome = proxy.reload(&yaml(&[extra_route, main_route], "closed for now")).await.expect("reload");
        assert!(matches!(outcome, edgeplane::ReloadOutcome::Applied(_)), "{outcome:?}");
        assert_eq!(conn.send(get("/extra")).await.unwrap().status(), StatusCode::NO_CONTENT, "reload not applied");
        assert_eq!(breaker_view(&proxy, "app").await, serde_json::json!({ "state": "open", "opened_total": 1 }));
        let res = conn.send(get("/still-open")).await.unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(&res.body()[..], b"closed for now");
        assert_eq!(up.requests(), 5);

        // A changed breaker starts closed, with fresh stats.
        let outcome = proxy.reload(&yaml(&[extra_route, main_route], "back soon")).await.expect("reload");
        assert!(matches!(outcome, edgeplane::ReloadOutcome::Applied(_)), "{outcome:?}");
        assert_eq!(breaker_view(&proxy, "app").await, serde_json::json!({ "state": "closed", "opened_total": 0 }));
        for i in 0..5 {
            let res = conn.send(get("/fail-again")).await.unwrap();
            assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "request {i} after the reset");
        }
        assert_eq!(up.requests(), 10);
        let res = conn.send(get("/open-again")).await.unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(&res.body()[..], b"back soon");
    })
    .await;
}

// ---------------------------------------------------------------------------
// Outlier ejection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_takes_a_failing_endpoint_out_and_back() {
    guard(async {
        let bad = FaultyUpstream::start("bad").await;
        let good = FaultyUpstream::start("good").await;
        bad.set_mode(Mode::Status(500));
        let clusters = cluster(
            "app",
            &[ep(bad.addr()), ep(good.addr())],
            &[
                "lb: round_robin",
                "outlier_detection: { consecutive_5xx: 3, base_ejection_time: 1s, max_ejection_time: 5s, max_ejection_percent: 50 }",
            ],
        );
        let proxy = TestProxy::start(&config(&["{ cluster: app }"], &clusters));
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;

        // Round robin alternates; the bad endpoint's third 500 ejects it.
        let mut seen = Vec::new();
        while bad.requests() < 3 {
            let res = conn.send(get("/rr")).await.expect("response");
            let expected = if upstream_of(&res) == "bad" { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
            assert_eq!(res.status(), expected);
            seen.push(upstream_of(&res).to_owned());
            assert!(seen.len() <= 6, "round robin did not alternate: {seen:?}");
        }
        let ejected_at = Instant::now();
        let view = endpoint_view(&proxy, "app", bad.addr()).await;
        assert_eq!(view["state"], "ejected", "{view}");
        assert_eq!(view["times_ejected"], 1, "{view}");
        assert_eq!(view["health_check"], "none", "{view}");
        assert_eq!(endpoint_view(&proxy, "app", good.addr()).await["state"], "active");
        assert_eq!(proxy.metric("edgeplane_upstream_ejections_total", &[("cluster", "app")]).await, Some(1.0));

        // Ejected (for 1s, plenty for what follows): everything goes to the good endpoint.
        let bad_before = bad.requests();
        for i in 0..20 {
            let res = conn.send(get("/ejected")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK, "request {i}");
            assert_eq!(upstream_of(&res), "good", "request {i} went to an ejected endpoint");
        }
        assert_eq!(bad.requests(), bad_before);

        // max_ejection_percent 50 of 2 endpoints: the good one cannot be
        // ejected too, even when it fails as often.
        good.set_mode(Mode::Status(500));
        for i in 0..5 {
            let res = conn.send(get("/both-bad")).await.expect("response");
            assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "request {i}");
            assert_eq!(upstream_of(&res), "good", "request {i}");
        }
        let view = endpoint_view(&proxy, "app", good.addr()).await;
        assert_eq!(view["state"], "active", "over the ejection cap: {view}");
        assert_eq!(view["times_ejected"], 0, "{view}");
        good.set_mode(Mode::Ok);

        // base_ejection_time later the bad endpoint is back and gets traffic again.
        let p = &proxy;
        let bad_addr = bad.addr();
        eventually("bad endpoint returns", STATE_CHANGE, || async move {
            endpoint_view(p, "app", bad_addr).await["state"] == "active"
        })
        .await;
        let first_ejection = ejected_at.elapsed();
        assert!(first_ejection >= Duration::from_millis(950), "first ejection lasted {first_ejection:?}, expected 1s");
        let before = bad.requests();
        for _ in 0..4 {
            let _ = conn.send(get("/back")).await.expect("response");
        }
        assert_eq!(bad.requests(), before + 2, "the returned endpoint gets its round-robin share");

        // Still failing: ejected again (after one more 500: the run goes on), for twice as long.
        while endpoint_view(&proxy, "app", bad.addr()).await["state"] == "active" {
            let _ = conn.send(get("/again")).await.expect("response");
            assert!(bad.requests() <= before + 3, "not ejected again after {} more 500s", bad.requests() - before);
        }
        let second = Instant::now();
        let view = endpoint_view(&proxy, "app", bad.addr()).await;
        assert_eq!(view["state"], "ejected", "{view}");
        assert_eq!(view["times_ejected"], 2, "{view}");
        eventually("bad endpoint returns again", STATE_CHANGE, || async move {
            endpoint_view(p, "app", bad_addr).await["state"] == "active"
        })
        .await;
        let second_ejection = second.elapsed();
        assert!(
            second_ejection >= Duration::from_millis(1900),
            "second ejection lasted {second_ejection:?}, expected 2 × 1s (first: {first_ejection:?})"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// Priority failover with active health checks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_levels_fail_over_by_health() {
    guard(async {
        let p0a = FaultyUpstream::start("p0a").await;
        let p0b = FaultyUpstream::start("p0b").await;
        let p1 = FaultyUpstream::start("p1").await;
        let clusters = cluster(
            "app",
            &[ep_priority(p0a.addr(), 0), ep_priority(p0b.addr(), 0), ep_priority(p1.addr(), 1)],
            &[
                // Three failures in a row before a verdict: a probe that times out
                // because the machine is busy (the suite runs tests in parallel)
                // must not flip an endpoint in the middle of a measurement.
                "health_check: { kind: http, path: /healthz, interval: 100ms, timeout: 100ms, jitter: 0s, healthy_threshold: 1, unhealthy_threshold: 3 }",
                "overprovisioning_factor: 1.4",
            ],
        );
        let proxy = TestProxy::start(&config(&["{ cluster: app }"], &clusters));
        let addr = proxy.addr("web");
        let p = &proxy;
        let all = [&p0a, &p0b, &p1];
        let check_states = |states: [&'static str; 3]| {
            let addrs = all.map(|u| u.addr());
            move || async move {
                for (addr, state) in addrs.iter().zip(states) {
                    if endpoint_view(p, "app", *addr).await["health_check"] != state {
                        return false;
                    }
                }
                true
            }
        };
        // Probes run and pass.
        let p1_ref = &p1;
        eventually("health checks probing", STATE_CHANGE, || async move { p1_ref.health_checks() >= 2 }).await;
        eventually("all passing", STATE_CHANGE, check_states(["passing", "passing", "passing"])).await;
        let view = endpoint_view(&proxy, "app", p1.addr()).await;
        assert_eq!(view["priority"], 1, "{view}");
        assert_eq!(view["state"], "active", "{view}");

        // Healthy level 0 takes everything.
        let counts = load(addr, 4, 200).await;
        assert_eq!(counts.get("p1"), None, "priority 1 got traffic while level 0 is healthy: {counts:?}");
        assert_eq!(p1.requests(), 0);

        // One of two level-0 endpoints fails: level 0 health = min(100, ½ × 140) = 70%.
        p0a.set_health(503);
        eventually("p0a failing", STATE_CHANGE, check_states(["failing", "passing", "passing"])).await;
        let view = endpoint_view(&proxy, "app", p0a.addr()).await;
        assert_eq!(view["state"], "unhealthy", "{view}");
        let healthy = |u: &FaultyUpstream| {
            let endpoint = u.addr().to_string();
            async move {
                p.metric("edgeplane_upstream_endpoint_healthy", &[("cluster", "app"), ("endpoint", &endpoint)]).await
            }
        };
        assert_eq!(healthy(&p0a).await, Some(0.0));
        assert_eq!(healthy(&p0b).await, Some(1.0));
        let before = all.map(|u| u.requests());
        const N: usize = 2000;
        let counts = load(addr, 4, N).await;
        let after = all.map(|u| u.requests());
        assert_eq!(after[0], before[0], "an unhealthy endpoint got traffic: {counts:?}");
        let p0b_share = 100.0 * counts.get("p0b").copied().unwrap_or(0) as f64 / N as f64;
        // σ of the share over 2,000 requests is √(0.7 × 0.3 / 2000) ≈ 1.02 points; allow 5.5 σ.
        assert!((p0b_share - 70.0).abs() <= 5.6, "p0b got {p0b_share:.1}% (expected 70%): {counts:?}");
        assert_eq!(counts.get("p0b").copied().unwrap_or(0) + counts.get("p1").copied().unwrap_or(0), N);
        assert_eq!(after[2] - before[2], counts.get("p1").copied().unwrap_or(0), "p1 counted differently");

        // Both level-0 endpoints fail: everything goes to level 1.
        p0b.set_health(503);
        eventually("p0a and p0b failing", STATE_CHANGE, check_states(["failing", "failing", "passing"])).await;
        assert_eq!(healthy(&p0b).await, Some(0.0));
        let counts = load(addr, 4, 200).await;
        assert_eq!(counts.get("p1").copied(), Some(200), "{counts:?}");

        // Both recover: back to level 0 only.
        p0a.set_health(200);
        p0b.set_health(200);
        eventually("all passing again", STATE_CHANGE, check_states(["passing", "passing", "passing"])).await;
        assert_eq!(healthy(&p0a).await, Some(1.0));
        let p1_before = p1.requests();
        let counts = load(addr, 4, 200).await;
        assert_eq!(counts.get("p1"), None, "{counts:?}");
        assert_eq!(p1.requests(), p1_before);
        assert!(counts.get("p0a").copied().unwrap_or(0) > 0 && counts.get("p0b").copied().unwrap_or(0) > 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Retries

const RETRY_5XX: &str =
    "{ attempts: 3, retry_on: [\"5xx\"], backoff_base: 1ms, budget_percent: 100, min_retry_concurrency: 100 }";

/// Routes: `/strict…` retries only idempotent requests, `/any…` retries
/// POSTs too, everything else as `/strict`.
fn retry_config(up: &FaultyUpstream) -> String {
    let any = "{ name: any, match: { path: { prefix: /any } }, cluster: app, retry: { attempts: 3, retry_on: [\"5xx\"], backoff_base: 1ms, budget_percent: 100, min_retry_concurrency: 100, retry_non_idempotent: true } }";
    let strict = format!("{{ name: strict, cluster: app, retry: {RETRY_5XX} }}");
    config(&[any, &strict], &cluster("app", &[ep(up.addr())], &["limits: { max_retries: 1000 }"]))
}

/// Indexes the upstream uses for `n` sequential requests when requests
/// `i % 10 < 3` fail and each request may be tried 4 times: every block of
/// 10 serves 7 requests, the first of them after 3 retries.
fn pattern_tries(n: usize) -> usize {
    let (blocks, rest) = (n / 7, n % 7);
    blocks * 10 + if rest == 0 { 0 } else { 3 + rest }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_30_percent_failure_rate_http1() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        up.set_mode(Mode::FailPattern { every: 10, first: 3, status: 503 });
        let proxy = TestProxy::start(&retry_config(&up));
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;
        // Sequential, so the tries of one request are consecutive upstream
        // requests: at most 3 failures in a row, and 3 retries are enough.
        for i in 0..1000 {
            let res = conn.send(get("/strict/get")).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(res.status(), StatusCode::OK, "request {i}");
        }
        assert_eq!(up.requests(), pattern_tries(1000));
        assert!(up.requests() > 1000);
        let retries = proxy.metric("edgeplane_upstream_retries_total", &[("cluster", "app")]).await;
        assert_eq!(retries, Some((pattern_tries(1000) - 1000) as f64));
        assert_eq!(cluster_view(&proxy, "app").await["active_retries"], 0);

        // A POST that reached the upstream is not retried …
        up.set_mode(Mode::Status(503));
        let res = conn.send(post("/strict/post", b"payload")).await.expect("response");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(upstream_of(&res), "app");
        assert_eq!(up.requests_by_method("POST"), 1, "a POST was retried without retry_non_idempotent");

        // … unless the route says so; each try carries the whole body.
        up.set_mode(Mode::FailPattern { every: 10, first: 3, status: 503 });
        let res = conn.send(post("/any/post", b"payload")).await.expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[X_BODY_LEN], "7");
        assert_eq!(up.requests_by_method("POST"), 1 + 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_30_percent_failure_rate_http2() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        up.set_mode(Mode::FailPattern { every: 10, first: 3, status: 503 });
        let proxy = TestProxy::start(&retry_config(&up));
        let h2 = Http2Conn::connect(proxy.addr("web")).await;
        for i in 0..300 {
            let res = h2.send(get("/strict/get")).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(res.status(), StatusCode::OK, "request {i}");
        }
        assert_eq!(up.requests(), pattern_tries(300));

        up.set_mode(Mode::Status(503));
        let res = h2.send(post("/strict/post", b"payload")).await.expect("response");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(up.requests_by_method("POST"), 1, "a POST was retried without retry_non_idempotent");

        up.set_mode(Mode::FailPattern { every: 10, first: 3, status: 503 });
        let res = h2.send(post("/any/post", b"payload")).await.expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[X_BODY_LEN], "7");
        assert_eq!(up.requests_by_method("POST"), 1 + 4);

        // All tries fail: the client gets the last upstream answer.
        up.set_mode(Mode::Status(503));
        let res = h2.send(get("/strict/all-fail")).await.expect("response");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(upstream_of(&res), "app");
        assert_eq!(up.requests_by_method("GET"), pattern_tries(300) + 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_endpoint() {
    guard(async {
        // A port that was bound and closed again: connecting is refused.
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("local_addr")
        };
        let live = FaultyUpstream::start("live").await;
        let clusters = cluster("app", &[ep(dead), ep(live.addr())], &["lb: round_robin"]);
        let route = "{ cluster: app, retry: { attempts: 1, retry_on: [connect-failure], backoff_base: 1ms } }";
        let proxy = TestProxy::start(&config(&[route], &clusters));
        let addr = proxy.addr("web");

        let mut conn = Http1Conn::connect(addr).await;
        let h2 = Http2Conn::connect(addr).await;
        for i in 0..20 {
            let res = conn.send(get("/h1")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK, "HTTP/1 request {i}");
            assert_eq!(upstream_of(&res), "live");
            let res = h2.send(get("/h2")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK, "HTTP/2 request {i}");
            // A request that never reached an upstream is safe to repeat, POST included.
            let res = conn.send(post("/post", b"x")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK, "HTTP/1 POST {i}");
            let res = h2.send(post("/post", b"x")).await.expect("response");
            assert_eq!(res.status(), StatusCode::OK, "HTTP/2 POST {i}");
        }
        assert_eq!(live.requests(), 80);
        let refused =
            proxy.metric("edgeplane_upstream_connect_errors_total", &[("cluster", "app"), ("reason", "refused")]).await;
        let retries = proxy.metric("edgeplane_upstream_retries_total", &[("cluster", "app")]).await;
        // Round robin sends every other try to the dead endpoint.
        assert!(refused.unwrap_or(0.0) >= 20.0, "refused connects: {refused:?}");
        assert_eq!(retries, refused, "every refused connect was retried");
        // Each refused connect failed its try (osm-edge's `rq_pending_failure_eject`).
        let failed = proxy.metric("edgeplane_upstream_connect_failed_requests_total", &[("cluster", "app")]).await;
        assert_eq!(failed, refused);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_retries_a_hung_try() {
    guard(async {
        let up = FaultyUpstream::start("app").await;
        let route = "{ cluster: app, timeout: 5s, retry: { attempts: 1, retry_on: [reset], per_try_timeout: 200ms, backoff_base: 1ms } }";
        let proxy = TestProxy::start(&config(&[route], &cluster("app", &[ep(up.addr())], &[])));
        let addr = proxy.addr("web");

        up.set_mode(Mode::HangFirst(1));
        let mut conn = Http1Conn::connect(addr).await;
        let started = Instant::now();
        let res = conn.send(get("/h1")).await.expect("response");
        let elapsed = started.elapsed();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(up.requests(), 2, "the hung try was not retried");
        assert!(elapsed >= Duration::from_millis(200), "answered after {elapsed:?}, before the per-try timeout");
        assert!(elapsed < Duration::from_secs(2), "answered after {elapsed:?}");

        up.set_mode(Mode::HangFirst(1));
        let h2 = Http2Conn::connect(addr).await;
        let started = Instant::now();
        let res = h2.send(get("/h2")).await.expect("response");
        let elapsed = started.elapsed();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(up.requests(), 4, "the hung HTTP/2 try was not retried");
        assert!(elapsed >= Duration::from_millis(200), "answered after {elapsed:?}, before the per-try timeout");
        assert!(elapsed < Duration::from_secs(2), "answered after {elapsed:?}");

        // Every try hangs: 504 once the last try times out.
        up.set_mode(Mode::Hang);
        let started = Instant::now();
        let res = conn.send(get("/all-hang")).await.expect("response");
        let elapsed = started.elapsed();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(up.requests(), 6);
        assert!(elapsed >= Duration::from_millis(400), "two tries of 200ms took {elapsed:?}");
        up.release_hung();
        // Counted per cluster: each timed-out try (HTTP/1 and HTTP/2 paths), and the answers by code.
        let app = [("cluster", "app")];
        assert_eq!(proxy.metric("edgeplane_upstream_timeouts_total", &app).await, Some(4.0));
        assert_eq!(proxy.metric("edgeplane_upstream_resets_total", &app).await, Some(0.0));
        let code = |code| [("cluster", "app"), ("code", code)];
        assert_eq!(proxy.metric("edgeplane_upstream_responses_total", &code("200")).await, Some(2.0));
        assert_eq!(proxy.metric("edgeplane_upstream_responses_total", &code("504")).await, Some(1.0));
        // A timed-out try is one edgeplane gave up (osm-edge's `rq_tx_reset`),
        // and its HTTP/1 connection went with it, request and all.
        assert_eq!(proxy.metric("edgeplane_upstream_cancelled_total", &app).await, Some(4.0));
        const CLOSED: &str = "edgeplane_upstream_connections_closed_mid_request_total";
        assert_eq!(proxy.metric(CLOSED, &[("cluster", "app"), ("by", "local")]).await, Some(4.0));
        assert_eq!(proxy.metric(CLOSED, &[("cluster", "app"), ("by", "remote")]).await, Some(0.0));
    })
    .await;
}

/// An upstream that reads the request and closes without an answer: a
/// 502, counted as a reset of the cluster (osm-edge's `rq_rx_reset`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_hangs_up_before_answering_counts_as_a_reset() {
    use tokio::io::AsyncReadExt;
    guard(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        let proxy = TestProxy::start(&config(&["{ cluster: app }"], &cluster("app", &[ep(addr)], &[])));
        let mut conn = Http1Conn::connect(proxy.addr("web")).await;
        let res = conn.send(get("/")).await.expect("response");
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        let h2 = Http2Conn::connect(proxy.addr("web")).await;
        assert_eq!(h2.send(get("/")).await.expect("response").status(), StatusCode::BAD_GATEWAY);
        let app = [("cluster", "app")];
        assert_eq!(proxy.metric("edgeplane_upstream_resets_total", &app).await, Some(2.0));
        assert_eq!(proxy.metric("edgeplane_upstream_timeouts_total", &app).await, Some(0.0));
        let code = [("cluster", "app"), ("code", "502")];
        assert_eq!(proxy.metric("edgeplane_upstream_responses_total", &code).await, Some(2.0));
        let closed = [("cluster", "app"), ("by", "remote")];
        assert_eq!(proxy.metric("edgeplane_upstream_connections_closed_mid_request_total", &closed).await, Some(2.0));
        assert_eq!(proxy.metric("edgeplane_upstream_cancelled_total", &app).await, Some(0.0));
    })
    .await;
}

/// A client that leaves while its request waits for the upstream: the try
/// is given up (osm-edge's `rq_tx_reset`), and an HTTP/1 upstream
/// connection is closed under it (`cx_destroy_local_with_active_rq`); an
/// HTTP/2 one only loses the stream. An upstream that dies under waiting
/// requests is counted on its side (`cx_destroy_remote_with_active_rq`),
/// whichever the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_under_a_request_are_counted_by_the_side_that_cut_them() {
    guard(async {
        let h1_up = FaultyUpstream::start("h1").await;
        let h2_up = FaultyUpstream::start("h2").await;
        h1_up.set_mode(Mode::Hang);
        h2_up.set_mode(Mode::Hang);
        let clusters = format!(
            "{}{}",
            cluster("h1", &[ep(h1_up.addr())], &[]),
            cluster("h2", &[ep(h2_up.addr())], &["protocol: http2"])
        );
        let routes = ["{ match: { path: { prefix: /h2 } }, cluster: h2 }", "{ cluster: h1 }"];
        let proxy = TestProxy::start(&config(&routes, &clusters));
        let addr = proxy.addr("web");
        let metric = |name: &'static str, cluster: &'static str, by: Option<&'static str>| {
            let proxy = &proxy;
            async move {
                let mut labels = vec![("cluster", cluster)];
                labels.extend(by.map(|by| ("by", by)));
                proxy.metric(name, &labels).await.unwrap_or(0.0)
            }
        };
        const CANCELLED: &str = "edgeplane_upstream_cancelled_total";
        const CLOSED: &str = "edgeplane_upstream_connections_closed_mid_request_total";

        // HTTP/1 client (the fast path), then an HTTP/2 client (hyper's
        // server), each leaving once the upstream holds its request.
        for (round, path) in ["/h1-fast", "/h1-via-h2"].into_iter().enumerate() {
            let client = if round == 0 {
                let mut conn = Http1Conn::connect(addr).await;
                tokio::spawn(async move { conn.send(get(path)).await.map(drop) })
            } else {
                let conn = Http2Conn::connect(addr).await;
                tokio::spawn(async move { conn.send(get(path)).await.map(drop) })
            };
            h1_up.wait_for_requests(round + 1).await;
            client.abort();
            let _ = client.await;
            let want = (round + 1) as f64;
            eventually("the h1 try counted as given up", STATE_CHANGE, || async {
                metric(CANCELLED, "h1", None).await == want && metric(CLOSED, "h1", Some("local")).await == want
            })
            .await;
        }
        // HTTP/2 upstream: the stream is reset, the connection stays.
        let conn = Http2Conn::connect(addr).await;
        let client = tokio::spawn(async move { conn.send(get("/h2")).await.map(drop) });
        h2_up.wait_for_requests(1).await;
        client.abort();
        let _ = client.await;
        eventually("the h2 try counted as given up", STATE_CHANGE, || async {
            metric(CANCELLED, "h2", None).await == 1.0
        })
        .await;
        assert_eq!(metric(CLOSED, "h2", Some("local")).await, 0.0);

        // The upstreams die under waiting requests: 502s, counted on their side.
        let mut h1_conn = Http1Conn::connect(addr).await;
        let h1_waiting = tokio::spawn(async move { h1_conn.send(get("/h1")).await.map(|r| r.status()) });
        let h2_conn = Http2Conn::connect(addr).await;
        let h2_waiting = tokio::spawn(async move { h2_conn.send(get("/h2")).await.map(|r| r.status()) });
        h1_up.wait_for_requests(3).await;
        h2_up.wait_for_requests(2).await;
        h1_up.die().await;
        h2_up.die().await;
        assert_eq!(h1_waiting.await.expect("h1 client").expect("h1 response"), StatusCode::BAD_GATEWAY);
        assert_eq!(h2_waiting.await.expect("h2 client").expect("h2 response"), StatusCode::BAD_GATEWAY);
        assert_eq!(metric(CLOSED, "h1", Some("remote")).await, 1.0);
        eventually("the h2 connection counted as cut by the upstream", STATE_CHANGE, || async {
            metric(CLOSED, "h2", Some("remote")).await == 1.0
        })
        .await;
        assert_eq!(metric(CLOSED, "h1", Some("local")).await, 2.0);
        assert_eq!(metric(CANCELLED, "h1", None).await, 2.0);
        assert_eq!(metric(CANCELLED, "h2", None).await, 1.0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Validation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_rejected_with_their_path() {
    guard(async {
        let cases = [
            (
                "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes: [ { cluster: app } ]\nclusters:\n  - name: app\n    endpoints: [ \"127.0.0.1:1\" ]\n    breaker: {}\n",
                "clusters[0].breaker",
                "needs at least one of",
            ),
            (
                "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    bandwidth: { per_connection: { download: \"lots\" } }\n    routes: [ { cluster: app } ]\nclusters:\n  - name: app\n    endpoints: [ \"127.0.0.1:1\" ]\n",
                "listeners[0].bandwidth.per_connection.download",
                "invalid byte rate",
            ),
            (
                "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes: [ { cluster: app, retry: { retry_on: [] } } ]\nclusters:\n  - name: app\n    endpoints: [ \"127.0.0.1:1\" ]\n",
                "listeners[0].routes[0].retry.retry_on",
                "at least one",
            ),
            (
                "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes: [ { cluster: app } ]\nclusters:\n  - name: app\n    endpoints: [ \"127.0.0.1:1\" ]\n    outlier_detection: { base_ejection_time: 10s, max_ejection_time: 1s }\n",
                "clusters[0].outlier_detection.max_ejection_time",
                "at least base_ejection_time",
            ),
        ];
        for (yaml, path, message) in cases {
            let error = match TestProxy::try_start(yaml, 1) {
                Ok(_) => panic!("accepted an invalid config:\n{yaml}"),
                Err(error) => error.to_string(),
            };
            let line = error
                .lines()
                .find(|line| line.trim_start().starts_with(path))
                .unwrap_or_else(|| panic!("no error at {path}: {error}"));
            assert!(line.contains(message), "error at {path} does not say {message:?}: {line}");
        }
    })
    .await;
}
