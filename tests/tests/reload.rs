//! Config reloads: many reloads under continuous load without a failed
//! request, unchanged files, rejected configs (the old one keeps serving),
//! and listeners added, removed and moved by a reload.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use edgeplane::ReloadOutcome;
use edgeplane_tests::client::{simple_request, Http1Conn, Http2Conn};
use edgeplane_tests::harness::{cluster, guard, TestProxy};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use http::StatusCode;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The two configs the load test alternates between: `x-config` response
/// header `a` or `b`, and mirrored split weights over two clusters that both
/// point at `up`.
fn flip_config(up: SocketAddr, which: usize) -> String {
    let (name, w1, w2) = if which == 0 { ("a", 3, 1) } else { ("b", 1, 3) };
    format!(
        r#"
listeners:
  - name: web
    bind: 127.0.0.1:0
    routes:
      - split: [ {{ cluster: one, weight: {w1} }}, {{ cluster: two, weight: {w2} }} ]
        response_headers: {{ set: {{ x-config: {name} }} }}
clusters:
{}{}"#,
        cluster("one", &[up]),
        cluster("two", &[up])
    )
}

/// What the load clients saw.
#[derive(Default)]
struct Observed {
    /// Responses carrying `x-config: a` and `x-config: b`.
    counts: [usize; 2],
    failures: Vec<String>,
}

/// Classifies one response: which config served it, or why it failed.
fn classify(result: Result<http::Response<bytes::Bytes>, hyper::Error>) -> Result<usize, String> {
    let res = result.map_err(|e| format!("request failed: {e}"))?;
    if res.status() != StatusCode::OK {
        return Err(format!("status {}: {:?}", res.status(), res.body()));
    }
    match res.headers().get("x-config").map(|v| v.as_bytes()) {
        Some(b"a") => Ok(0),
        Some(b"b") => Ok(1),
        other => Err(format!("unexpected x-config {other:?}")),
    }
}

fn record(observed: &watch::Sender<Observed>, result: Result<usize, String>) {
    observed.send_modify(|o| match result {
        Ok(which) => o.counts[which] += 1,
        Err(failure) => o.failures.push(failure),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_reloads_under_load_fail_no_request() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let configs = [flip_config(up.addr(), 0), flip_config(up.addr(), 1)];
        let proxy = TestProxy::start(&configs[0]);
        let addr = proxy.addr("web");

        let (observed, mut seen) = watch::channel(Observed::default());
        let observed = Arc::new(observed);
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        // Three HTTP/1 and one HTTP/2 client, each on one keep-alive
        // connection for the whole test, sending one request after another.
        for c in 0..4 {
            let observed = observed.clone();
            let stop = stop.clone();
            clients.push(tokio::spawn(async move {
                let mut sent = 0usize;
                if c == 3 {
                    let conn = Http2Conn::connect(addr).await;
                    while !stop.load(Ordering::Relaxed) {
                        record(&observed, classify(conn.send(simple_request("GET", "/", "reload.test", &[])).await));
                        sent += 1;
                    }
                } else {
                    let mut conn = Http1Conn::connect(addr).await;
                    while !stop.load(Ordering::Relaxed) {
                        record(&observed, classify(conn.send(simple_request("GET", "/", "reload.test", &[])).await));
                        sent += 1;
                    }
                }
                sent
            }));
        }

        let reloads = 1000;
        for i in 0..reloads {
            let which = (i + 1) % 2;
            let before = seen.borrow().counts[which];
            let outcome = proxy.reload(&configs[which]).await.unwrap_or_else(|e| panic!("reload {i} failed: {e}"));
            assert_eq!(outcome, ReloadOutcome::Applied(i as u64 + 2));
            // Pace the reloads by the load: each config serves at least one
            // response before the next reload (and both are observed).
            let state = seen.wait_for(|o| o.counts[which] > before || !o.failures.is_empty()).await.unwrap();
            if !state.failures.is_empty() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for client in clients {
            sent += client.await.expect("client task panicked");
        }

        let state = seen.borrow();
        assert!(state.failures.is_empty(), "{} failed requests, first: {}", state.failures.len(), state.failures[0]);
        assert_eq!(state.counts[0] + state.counts[1], sent);
        assert!(state.counts[0] > 0 && state.counts[1] > 0, "both configs served: {:?}", state.counts);
        assert_eq!(proxy.handle().table().generation, reloads as u64 + 1);
        assert_eq!(up.requests(), sent);
        // The pools outlived every reload: per worker and cluster, at most one
        // upstream connection per client connection (4 clients, 2 clusters,
        // 2 workers); a pool lost on reload would have cost ~1000 connections.
        assert!(up.connections() <= 8, "{} upstream connections after {reloads} reloads", up.connections());
        let successes = proxy.metric("edgeplane_config_reloads_total", &[("result", "success")]).await;
        assert_eq!(successes, Some(reloads as f64));
        eprintln!("{sent} requests during {reloads} reloads: {:?} per config", state.counts);
    })
    .await;
}

fn simple_config(up: SocketAddr, header: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n      - cluster: app\n        response_headers: {{ set: {{ x-config: {header} }} }}\nclusters:\n{}",
        cluster("app", &[up])
    )
}

/// GET / on a new connection; returns the `x-config` response header.
async fn served_config(addr: SocketAddr) -> String {
    let mut conn = Http1Conn::connect(addr).await;
    let res = conn.send(simple_request("GET", "/", "reload.test", &[])).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    res.headers().get("x-config").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_an_identical_file_changes_nothing() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let yaml = simple_config(up.addr(), "v1");
        let proxy = TestProxy::start(&yaml);
        let generation = proxy.handle().table().generation;
        assert_eq!(generation, 1);

        assert_eq!(proxy.reload(&yaml).await, Ok(ReloadOutcome::Unchanged));
        assert_eq!(proxy.reload(&yaml).await, Ok(ReloadOutcome::Unchanged));
        assert_eq!(proxy.handle().table().generation, generation);
        assert_eq!(proxy.metric("edgeplane_config_reloads_total", &[("result", "unchanged")]).await, Some(2.0));
        assert_eq!(proxy.metric("edgeplane_config_generation", &[]).await, Some(1.0));
        assert_eq!(served_config(proxy.addr("web")).await, "v1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_configs_keep_the_old_one_serving() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let good = simple_config(up.addr(), "good");
        let proxy = TestProxy::start(&good);
        let addr = proxy.addr("web");
        // A keep-alive connection opened before the bad reloads, and used after.
        let mut kept = Http1Conn::connect(addr).await;

        let cases = [
            (
                "unknown cluster",
                good.replace("      - cluster: app\n", "      - cluster: nope\n"),
                vec!["listeners[0].routes[0].cluster", "nope"],
            ),
            (
                "YAML syntax error",
                // The unclosed `{` is only detected further down, so the
                // error names the enclosing path and the line it stopped at.
                good.replace("      - cluster: app\n", "      - { cluster: app\n"),
                vec!["listeners[0].routes", "line "],
            ),
            (
                "invalid enum value",
                good.replace("  - name: app\n", "  - name: app\n    lb: fastest\n"),
                vec!["clusters[0].lb", "fastest"],
            ),
        ];
        for (n, (what, yaml, must_name)) in cases.iter().enumerate() {
            assert_ne!(yaml, &good, "{what}: the test's edit did not apply");
            let error = proxy.reload(yaml).await.expect_err(what);
            for needle in must_name {
                assert!(error.contains(needle), "{what}: the error does not name {needle:?}: {error}");
            }
            assert_eq!(proxy.handle().table().generation, 1, "{what}");
            assert_eq!(served_config(addr).await, "good", "{what}: the old config must keep serving");
            let res = kept.send(simple_request("GET", "/", "reload.test", &[])).await.expect("kept connection");
            assert_eq!(res.headers()["x-config"], "good");
            let failures = proxy.metric("edgeplane_config_reloads_total", &[("result", "failure")]).await;
            assert_eq!(failures, Some(n as f64 + 1.0), "{what}: failure not counted");
        }
        assert_eq!(proxy.metric("edgeplane_config_generation", &[]).await, Some(1.0));

        // The good file again is byte-for-byte the live one; then a real
        // change still applies after the failures.
        assert_eq!(proxy.reload(&good).await, Ok(ReloadOutcome::Unchanged));
        assert_eq!(proxy.reload(&simple_config(up.addr(), "newer")).await, Ok(ReloadOutcome::Applied(2)));
        assert_eq!(served_config(addr).await, "newer");
    })
    .await;
}

fn listeners_config(up: SocketAddr, listeners: &[(&str, &str)]) -> String {
    let mut yaml = String::from("listeners:\n");
    for (name, bind) in listeners {
        yaml.push_str(&format!("  - name: {name}\n    bind: \"{bind}\"\n    routes: [ {{ cluster: app }} ]\n"));
    }
    yaml.push_str("clusters:\n");
    yaml.push_str(&cluster("app", &[up]));
    yaml
}

async fn assert_serves(addr: SocketAddr, what: &str) {
    let mut conn = Http1Conn::try_connect(addr).await.unwrap_or_else(|e| panic!("{what} ({addr}): connect: {e}"));
    let res = conn
        .send(simple_request("GET", "/", "reload.test", &[]))
        .await
        .unwrap_or_else(|e| panic!("{what} ({addr}): {e}"));
    assert_eq!(res.status(), StatusCode::OK, "{what} ({addr})");
}

/// A request to a listener that left the config gets no response: the
/// connection is refused, or accepted and closed.
async fn assert_not_served(addr: SocketAddr, what: &str) {
    if let Ok(mut conn) = Http1Conn::try_connect(addr).await {
        let result = conn.send(simple_request("GET", "/", "reload.test", &[])).await;
        assert!(result.is_err(), "{what} ({addr}) still served a request: {result:?}");
    }
}

/// Waits until connecting to `addr` is refused, i.e. the proxy's workers
/// have closed its sockets (they do so after the reload returns). Connections
/// that still get through are closed right away; the loop is bounded.
async fn wait_until_refused(addr: SocketAddr, what: &str) {
    for _ in 0..10_000 {
        match TcpStream::connect(addr).await {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => return,
            // Caught in the backlog of a socket that was just closed.
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(error) => panic!("{what} ({addr}): unexpected connect error {error}"),
            Ok(stream) => drop(stream),
        }
        tokio::task::yield_now().await;
    }
    panic!("{what} ({addr}) still accepts connections");
}

/// A port that was free a moment ago (bound and released at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_removed_and_moved() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let any = "127.0.0.1:0";
        let proxy = TestProxy::start(&listeners_config(up.addr(), &[("main", any), ("gone", any), ("moving", any)]));
        let main = proxy.addr("main");
        let gone = proxy.addr("gone");
        let moving = proxy.addr("moving");
        for (addr, what) in [(main, "main"), (gone, "gone"), (moving, "moving")] {
            assert_serves(addr, what).await;
        }

        // Added.
        let four = listeners_config(up.addr(), &[("main", any), ("gone", any), ("moving", any), ("extra", any)]);
        assert_eq!(proxy.reload(&four).await, Ok(ReloadOutcome::Applied(2)));
        let extra = proxy.addr("extra");
        assert_serves(extra, "added listener").await;
        assert_serves(main, "main").await;

        // Removed: no request is served there any more and the port closes;
        // the other listeners are unaffected.
        let three = listeners_config(up.addr(), &[("main", any), ("moving", any), ("extra", any)]);
        assert_eq!(proxy.reload(&three).await, Ok(ReloadOutcome::Applied(3)));
        assert!(proxy.handle().listener_addr("gone").is_none());
        assert_not_served(gone, "removed listener").await;
        wait_until_refused(gone, "removed listener").await;
        assert_serves(main, "main").await;
        assert_serves(extra, "extra").await;
        assert_serves(moving, "moving").await;

        // Moved to another port. The port is picked free just before; if
        // something else takes it in between, the reload fails and we retry.
        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let port = free_port();
            let moved = format!("127.0.0.1:{port}");
            let yaml = listeners_config(up.addr(), &[("main", any), ("moving", &moved), ("extra", any)]);
            match proxy.reload(&yaml).await {
                Ok(outcome) => {
                    assert_eq!(outcome, ReloadOutcome::Applied(4));
                    break port;
                }
                Err(error) if error.contains("cannot bind") && attempt < 5 => continue,
                Err(error) => panic!("moving the listener failed: {error}"),
            }
        };
        let moved = proxy.addr("moving");
        assert_eq!(moved.port(), port);
        assert_ne!(moved, moving);
        assert_serves(moved, "moved listener").await;
        wait_until_refused(moving, "moved listener's old port").await;
        assert_serves(main, "main").await;
        assert_serves(extra, "extra").await;
    })
    .await;
}
