//! Traffic distribution: weighted splits across clusters and every endpoint
//! load-balancing policy (round robin, random, least request, ring hash).
//!
//! Proportions are measured over thousands of real requests. Each tolerance is
//! at least 5 standard deviations of the binomial proportion (σ = √(p(1−p)/n)),
//! so a correct proxy fails one of them with probability below ~1e-6.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use edgeplane_tests::client::{simple_request, Http1Conn};
use edgeplane_tests::harness::{cluster, guard, TestProxy};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use http::StatusCode;
use serde_json::Value;

/// Builds the headers of request `i`.
type HeadersFn = Arc<dyn Fn(usize) -> Vec<(String, String)> + Send + Sync>;

/// Sends `total` GET `path` requests over `connections` keep-alive HTTP/1
/// connections that run concurrently (request `i` goes on connection
/// `i % connections` and carries `headers(i)`). Every response must be 200.
/// Returns `(i, x-upstream)` for every request.
async fn load(
    addr: SocketAddr,
    connections: usize,
    total: usize,
    path: &str,
    headers: HeadersFn,
) -> Vec<(usize, String)> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let headers = headers.clone();
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Http1Conn::connect(addr).await;
            let mut seen = Vec::new();
            for i in (c..total).step_by(connections) {
                let extra = headers(i);
                let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let res = conn
                    .send(simple_request("GET", &path, "balance.test", &extra))
                    .await
                    .unwrap_or_else(|e| panic!("request {i} on connection {c}: {e}"));
                assert_eq!(res.status(), StatusCode::OK, "request {i}: {:?}", res.body());
                let upstream = res.headers().get("x-upstream").expect("x-upstream header").to_str().unwrap();
                seen.push((i, upstream.to_owned()));
            }
            seen
        }));
    }
    let mut all = Vec::with_capacity(total);
    for task in tasks {
        all.extend(task.await.expect("client task panicked"));
    }
    assert_eq!(all.len(), total);
    all
}

fn no_headers() -> HeadersFn {
    Arc::new(|_| Vec::new())
}

fn count(seen: &[(usize, String)]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, upstream) in seen {
        *counts.entry(upstream.clone()).or_insert(0) += 1;
    }
    counts
}

/// Asserts that `name` got `expected` percent of `total` requests, ± `tolerance` points.
fn assert_share(counts: &HashMap<String, usize>, total: usize, name: &str, expected: f64, tolerance: f64) {
    let got = counts.get(name).copied().unwrap_or(0);
    let share = 100.0 * got as f64 / total as f64;
    assert!(
        (share - expected).abs() <= tolerance,
        "{name}: {got}/{total} = {share:.2}%, expected {expected}% ± {tolerance} points (all counts: {counts:?})"
    );
}

/// Every upstream's own request count equals what the clients saw from it.
fn assert_upstreams_agree(counts: &HashMap<String, usize>, upstreams: &[&HttpUpstream]) {
    for upstream in upstreams {
        let seen = counts.get(upstream.name()).copied().unwrap_or(0);
        assert_eq!(upstream.requests(), seen, "upstream {} counted a different number of requests", upstream.name());
    }
    let known: HashSet<&str> = upstreams.iter().map(|u| u.name()).collect();
    for name in counts.keys() {
        assert!(known.contains(name.as_str()), "response from unknown upstream {name:?}");
    }
}

async fn start_upstreams(names: &[&str]) -> Vec<HttpUpstream> {
    let mut upstreams = Vec::new();
    for name in names {
        upstreams.push(HttpUpstream::start(name, HttpProto::Http1).await);
    }
    upstreams
}

/// A listener `web` whose single route is `route` (YAML flow mapping).
fn config(route: &str, clusters: &str) -> String {
    format!("listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n      - {route}\nclusters:\n{clusters}")
}

/// A cluster `name` with `lb` and endpoints given as (address, weight).
fn weighted_cluster(name: &str, lb: &str, endpoints: &[(SocketAddr, u32)], extra: &str) -> String {
    let list: Vec<String> =
        endpoints.iter().map(|(addr, weight)| format!("{{ address: \"{addr}\", weight: {weight} }}")).collect();
    format!("  - name: {name}\n    lb: {lb}\n{extra}    endpoints: [ {} ]\n", list.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_across_two_clusters() {
    guard(async {
        let ups = start_upstreams(&["a", "b"]).await;
        let clusters = cluster("a", &[ups[0].addr()]) + &cluster("b", &[ups[1].addr()]);
        let yaml = config("split: [ { cluster: a, weight: 90 }, { cluster: b, weight: 10 } ]", &clusters);
        let proxy = TestProxy::start(&yaml);

        let total = 10_000;
        let seen = load(proxy.addr("web"), 8, total, "/", no_headers()).await;
        let counts = count(&seen);
        // σ = √(0.9·0.1/10000) = 0.3 points; ±2 points is 6.7σ.
        assert_share(&counts, total, "a", 90.0, 2.0);
        assert_share(&counts, total, "b", 10.0, 2.0);
        assert_upstreams_agree(&counts, &[&ups[0], &ups[1]]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_50_30_20_across_three_clusters() {
    guard(async {
        let ups = start_upstreams(&["x", "y", "z"]).await;
        let clusters: String = ups.iter().map(|u| cluster(u.name(), &[u.addr()])).collect();
        let yaml = config(
            "split: [ { cluster: x, weight: 50 }, { cluster: y, weight: 30 }, { cluster: z, weight: 20 } ]",
            &clusters,
        );
        let proxy = TestProxy::start(&yaml);

        // 7,500 requests rather than 5,000: the widest σ (the 50% share) is
        // √(0.25/7500) = 0.58 points, so ±3 points is 5.2σ (at 5,000 it would be 4.2σ).
        let total = 7_500;
        let seen = load(proxy.addr("web"), 8, total, "/", no_headers()).await;
        let counts = count(&seen);
        assert_share(&counts, total, "x", 50.0, 3.0);
        assert_share(&counts, total, "y", 30.0, 3.0);
        assert_share(&counts, total, "z", 20.0, 3.0);
        assert_upstreams_agree(&counts, &[&ups[0], &ups[1], &ups[2]]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_with_weights_is_exact() {
    guard(async {
        let ups = start_upstreams(&["one", "two"]).await;
        let clusters = weighted_cluster("rr", "round_robin", &[(ups[0].addr(), 1), (ups[1].addr(), 2)], "");
        let proxy = TestProxy::start(&config("cluster: rr", &clusters));
        let addr = proxy.addr("web");

        // Sequential requests, rotated over four connections so that both
        // workers pick: the schedule counter is shared by all workers, so
        // every full cycle of 3 picks is one + two + two, exactly.
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(Http1Conn::connect(addr).await);
        }
        let mut counts = HashMap::new();
        for i in 0..300 {
            let res = conns[i % 4].send(simple_request("GET", "/", "rr.test", &[])).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            *counts.entry(res.headers()["x-upstream"].to_str().unwrap().to_owned()).or_insert(0usize) += 1;
        }
        assert_eq!(counts.get("one"), Some(&100), "{counts:?}");
        assert_eq!(counts.get("two"), Some(&200), "{counts:?}");
        assert_upstreams_agree(&counts, &[&ups[0], &ups[1]]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_follows_endpoint_weights() {
    guard(async {
        let ups = start_upstreams(&["light", "heavy"]).await;
        let clusters = weighted_cluster("rnd", "random", &[(ups[0].addr(), 1), (ups[1].addr(), 3)], "");
        let proxy = TestProxy::start(&config("cluster: rnd", &clusters));

        // 6,000 requests rather than 4,000: σ = √(0.25·0.75/6000) = 0.56
        // points, so ±3 points is 5.4σ (at 4,000 it would be 4.4σ).
        let total = 6_000;
        let seen = load(proxy.addr("web"), 8, total, "/", no_headers()).await;
        let counts = count(&seen);
        assert_share(&counts, total, "light", 25.0, 3.0);
        assert_share(&counts, total, "heavy", 75.0, 3.0);
        assert_upstreams_agree(&counts, &[&ups[0], &ups[1]]);
    })
    .await;
}

/// Waits until one more request than `before` has arrived at `a` or `b`;
/// returns 0 for `a`, 1 for `b`.
async fn next_arrival(a: &HttpUpstream, b: &HttpUpstream, before: (usize, usize)) -> usize {
    tokio::select! {
        _ = a.wait_for_requests(before.0 + 1) => 0,
        _ = b.wait_for_requests(before.1 + 1) => 1,
    }
}

/// `active_requests` of every endpoint of `cluster` in `/clusters`, by address.
async fn active_requests(proxy: &TestProxy, cluster: &str) -> HashMap<String, u64> {
    let (status, body) = proxy.admin_get("/clusters").await;
    assert_eq!(status, 200);
    let dump: Value = serde_json::from_str(&body).unwrap();
    let cluster = dump["clusters"].as_array().unwrap().iter().find(|c| c["name"] == cluster).expect("cluster listed");
    cluster["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["address"].as_str().unwrap().to_owned(), e["active_requests"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_balances_in_flight_requests() {
    guard(async {
        let ups = start_upstreams(&["a", "b"]).await;
        let (a, b) = (&ups[0], &ups[1]);
        let clusters = weighted_cluster("lr", "least_request", &[(a.addr(), 1), (b.addr(), 1)], "");
        let proxy = TestProxy::start(&config("cluster: lr", &clusters));
        let addr = proxy.addr("web");

        // 20 /hang requests, each on its own connection, all left in flight.
        // Each is sent once the previous one has reached an upstream, so every
        // pick sees the true in-flight counts. With two endpoints the power of
        // two choices always compares both, so it always takes the less
        // loaded one: the counts can never differ by more than one, and after
        // 20 requests they are exactly 10 and 10.
        let mut hung: Vec<(usize, tokio::task::JoinHandle<()>)> = Vec::new();
        for i in 0..20 {
            let before = (a.requests(), b.requests());
            let task = tokio::spawn(async move {
                let mut conn = Http1Conn::connect(addr).await;
                // Never answers; an early answer would show in the in-flight counts.
                let _ = conn.send(simple_request("GET", "/hang", "lr.test", &[])).await;
            });
            let target = next_arrival(a, b, before).await;
            assert_eq!(a.requests() + b.requests(), i + 1, "one request, one arrival");
            hung.push((target, task));
        }
        assert_eq!((a.requests(), b.requests()), (10, 10));
        assert_eq!((a.in_flight(), b.in_flight()), (10, 10));
        let active = active_requests(&proxy, "lr").await;
        assert_eq!(active[&a.addr().to_string()], 10, "{active:?}");
        assert_eq!(active[&b.addr().to_string()], 10, "{active:?}");

        // Let 3 of a's requests go: closing their client connections cancels
        // them in the proxy. Wait until the proxy counts 7 in flight at a.
        let mut dropped = 0;
        for (target, task) in &hung {
            if *target == 0 && dropped < 3 {
                task.abort();
                dropped += 1;
            }
        }
        loop {
            let active = active_requests(&proxy, "lr").await;
            assert_eq!(active[&b.addr().to_string()], 10, "{active:?}");
            if active[&a.addr().to_string()] == 7 {
                break;
            }
            tokio::task::yield_now().await;
        }

        // Now a has 7 in flight and b 10: every further request goes to a,
        // whichever endpoint the two random choices start with.
        let mut conn = Http1Conn::connect(addr).await;
        for _ in 0..5 {
            let res = conn.send(simple_request("GET", "/", "lr.test", &[])).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["x-upstream"], "a", "least request must pick the endpoint with fewer in flight");
        }
        assert_eq!(b.requests(), 10);
        for (_, task) in hung {
            task.abort();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_on_header_is_sticky_per_key() {
    guard(async {
        let ups = start_upstreams(&["h0", "h1", "h2"]).await;
        let endpoints: Vec<(SocketAddr, u32)> = ups.iter().map(|u| (u.addr(), 1)).collect();
        let clusters = weighted_cluster("rh", "ring_hash", &endpoints, "    hash_on: { header: x-user }\n");
        let proxy = TestProxy::start(&config("cluster: rh", &clusters));

        // 20 users × 50 requests, interleaved over 8 concurrent connections.
        let users = 20;
        let total = users * 50;
        let headers: HeadersFn = Arc::new(move |i| vec![("x-user".to_owned(), format!("user-{}", i % users))]);
        let seen = load(proxy.addr("web"), 8, total, "/", headers).await;

        let mut by_user: HashMap<usize, HashSet<String>> = HashMap::new();
        for (i, upstream) in &seen {
            by_user.entry(i % users).or_default().insert(upstream.clone());
        }
        assert_eq!(by_user.len(), users);
        for (user, upstreams) in &by_user {
            assert_eq!(upstreams.len(), 1, "user-{user} reached several endpoints: {upstreams:?}");
        }
        // The ring depends on the (ephemeral) endpoint ports, so which
        // endpoint a user lands on varies per run; all 20 users on one of
        // three equal endpoints has probability about 3·(1/3)^20 ≈ 1e-9.
        let used: HashSet<&String> = by_user.values().flatten().collect();
        assert!(used.len() >= 2, "20 users all hashed to one endpoint: {used:?}");
        assert_upstreams_agree(&count(&seen), &[&ups[0], &ups[1], &ups[2]]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_on_source_ip_uses_one_endpoint() {
    guard(async {
        let ups = start_upstreams(&["s0", "s1", "s2"]).await;
        let endpoints: Vec<(SocketAddr, u32)> = ups.iter().map(|u| (u.addr(), 1)).collect();
        let clusters = weighted_cluster("src", "ring_hash", &endpoints, "");
        let proxy = TestProxy::start(&config("cluster: src", &clusters));

        // Varying x-user headers must not matter: without hash_on the key is
        // the client IP, always 127.0.0.1 here.
        let headers: HeadersFn = Arc::new(|i| vec![("x-user".to_owned(), format!("user-{i}"))]);
        let total = 200;
        let seen = load(proxy.addr("web"), 4, total, "/", headers).await;
        let counts = count(&seen);
        assert_eq!(counts.len(), 1, "requests from one client IP reached several endpoints: {counts:?}");
        assert_eq!(counts.values().next(), Some(&total));
        assert_upstreams_agree(&counts, &[&ups[0], &ups[1], &ups[2]]);
    })
    .await;
}
