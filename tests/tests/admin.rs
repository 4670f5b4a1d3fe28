//! The admin server: health endpoints, metrics after known traffic, config
//! and cluster dumps, drain, method checks, and the loopback-only rule for
//! mutating endpoints.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use edgeplane_tests::client::{simple_request, Http1Conn};
use edgeplane_tests::harness::{cluster, find_metric, guard, TestProxy};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use http::StatusCode;
use serde_json::Value;
use tokio::net::TcpStream;

fn web_config(up: SocketAddr) -> String {
    format!(
        "version: v1\nlisteners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n      - name: api\n        cluster: app\nclusters:\n{}",
        cluster("app", &[up])
    )
}

/// Waits until connecting to `addr` is refused (the proxy closes sockets
/// asynchronously after a command is acknowledged); the loop is bounded.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_methods_and_unknown_paths() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let proxy = TestProxy::start(&web_config(up.addr()));
        assert_eq!(proxy.admin_get("/ready").await, (200, "ready\n".to_owned()));
        assert_eq!(proxy.admin_get("/live").await, (200, "live\n".to_owned()));
        assert!(proxy.handle().is_ready());

        for path in ["/nope", "/metrics/extra", "/ready/"] {
            assert_eq!(proxy.admin_get(path).await.0, 404, "GET {path}");
        }
        // Mutating endpoints want POST; the rest want GET.
        for path in ["/drain", "/quitquitquit", "/reload"] {
            let (status, _, _) = proxy.admin_request("GET", path).await;
            assert_eq!(status, 405, "GET {path}");
        }
        for (method, path) in [("POST", "/ready"), ("PUT", "/metrics"), ("DELETE", "/config")] {
            let (status, _, _) = proxy.admin_request(method, path).await;
            assert_eq!(status, 405, "{method} {path}");
        }
        // None of that drained or stopped anything.
        assert_eq!(proxy.admin_get("/ready").await.0, 200);
        let (status, _, _) = edgeplane_tests::client::get(proxy.addr("web"), "h", "/").await;
        assert_eq!(status, StatusCode::OK);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reflect_known_traffic() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let proxy = TestProxy::start(&web_config(up.addr()));
        let addr = proxy.addr("web");

        // 7 successes on one connection, 3 upstream 503s on another.
        let mut ok = Http1Conn::connect(addr).await;
        for _ in 0..7 {
            let res = ok.send(simple_request("GET", "/", "h", &[])).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        let mut failing = Http1Conn::connect(addr).await;
        for _ in 0..3 {
            let res = failing.send(simple_request("GET", "/status/503", "h", &[])).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        }

        let (status, headers, text) = proxy.admin_request("GET", "/metrics").await;
        assert_eq!(status, 200);
        let content_type = headers.get("content-type").expect("content-type").to_str().unwrap();
        assert!(content_type.starts_with("application/openmetrics-text"), "content-type {content_type}");
        assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");

        let route = [("listener", "web"), ("route", "api"), ("cluster", "app")];
        let class = |class| [route[0], route[1], route[2], ("class", class)];
        let requests = |labels: [(&str, &str); 4]| find_metric(&text, "edgeplane_http_requests_total", &labels);
        assert_eq!(requests(class("2xx")), Some(7.0), "{text}");
        assert_eq!(requests(class("5xx")), Some(3.0), "{text}");
        assert_eq!(requests(class("4xx")), Some(0.0), "{text}");
        // Exactly these labels, nothing else on the series.
        let line = r#"edgeplane_http_requests_total{listener="web",route="api",cluster="app",class="2xx"} 7"#;
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");

        let bucket = |le| [route[0], route[1], route[2], ("le", le)];
        let duration = "edgeplane_http_request_duration_seconds";
        assert_eq!(find_metric(&text, &format!("{duration}_count"), &route), Some(10.0), "{text}");
        let sum = find_metric(&text, &format!("{duration}_sum"), &route).expect("duration sum");
        assert!(sum > 0.0 && sum < 60.0, "duration sum {sum}");
        // Buckets are cumulative: the 60 s bucket holds all 10.
        assert_eq!(find_metric(&text, &format!("{duration}_bucket"), &bucket("60.0")), Some(10.0), "{text}");

        let conns = [("listener", "web"), ("protocol", "http1")];
        assert_eq!(find_metric(&text, "edgeplane_downstream_connections_total", &conns), Some(2.0), "{text}");
        assert_eq!(find_metric(&text, "edgeplane_config_generation", &[]), Some(1.0), "{text}");
        assert_eq!(find_metric(&text, "edgeplane_config_info", &[("version", "v1")]), Some(1.0), "{text}");
        // One pooled upstream connection per worker that served a client
        // connection: 1 or 2, and exactly what the upstream accepted.
        let upstream_conns = find_metric(&text, "edgeplane_upstream_connections_total", &[("cluster", "app")]);
        assert!((1..=2).contains(&up.connections()), "{} upstream connections", up.connections());
        assert_eq!(upstream_conns, Some(up.connections() as f64), "{text}");

        // Every Prometheus/OpenMetrics histogram ends with an `le="+Inf"`
        // bucket equal to its count (checked last so the checks above run).
        let inf = find_metric(&text, &format!("{duration}_bucket"), &bucket("+Inf"));
        let buckets: Vec<&str> =
            text.lines().filter(|l| l.contains("_bucket") && l.contains("route=\"api\"")).collect();
        assert_eq!(inf, Some(10.0), "no le=\"+Inf\" bucket; the buckets are:\n{}", buckets.join("\n"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_clusters_dumps() {
    guard(async {
        let app = HttpUpstream::start("app", HttpProto::Http1).await;
        let p1 = HttpUpstream::start("p1", HttpProto::Http2).await;
        let p2 = HttpUpstream::start("p2", HttpProto::Http2).await;
        let yaml = format!(
            r#"version: dump-test
listeners:
  - name: web
    bind: 127.0.0.1:0
    http: {{ forwarded: true }}
    routes:
      - name: to-pair
        match: {{ path: {{ prefix: /pair }} }}
        cluster: pair
        timeout: 5s
      - split: [ {{ cluster: app, weight: 2 }}, {{ cluster: pair, weight: 1 }} ]
clusters:
{}  - name: pair
    lb: random
    protocol: http2
    endpoints: [ "{}", {{ address: "{}", weight: 3 }} ]
"#,
            cluster("app", &[app.addr()]),
            p1.addr(),
            p2.addr()
        );
        let proxy = TestProxy::start(&yaml);

        // /config is the loaded config, defaults filled in.
        let (status, body) = proxy.admin_get("/config").await;
        assert_eq!(status, 200);
        let dumped: Value = serde_json::from_str(&body).expect("/config is JSON");
        let expected = serde_json::to_value(config_model::from_yaml_str(&yaml).unwrap()).unwrap();
        assert_eq!(dumped, expected);
        assert_eq!(dumped["version"], "dump-test");
        assert_eq!(dumped["listeners"][0]["routes"][0]["name"], "to-pair");
        assert_eq!(dumped["clusters"][1]["endpoints"][1]["weight"], 3);
        assert_eq!(dumped["drain_timeout"], "30s");

        // /clusters: every cluster and endpoint with its settings.
        let (status, body) = proxy.admin_get("/clusters").await;
        assert_eq!(status, 200);
        let dump: Value = serde_json::from_str(&body).expect("/clusters is JSON");
        assert_eq!(dump["generation"], 1);
        let clusters = dump["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2, "{dump}");
        assert_eq!(clusters[0]["name"], "app");
        assert_eq!(clusters[0]["lb"], "round_robin");
        assert_eq!(clusters[0]["protocol"], "http1");
        assert_eq!(clusters[0]["endpoints"].as_array().unwrap().len(), 1);
        assert_eq!(clusters[0]["endpoints"][0]["address"], app.addr().to_string());
        assert_eq!(clusters[0]["endpoints"][0]["weight"], 1);
        assert_eq!(clusters[1]["name"], "pair");
        assert_eq!(clusters[1]["lb"], "random");
        assert_eq!(clusters[1]["protocol"], "http2");
        let pair: Vec<(String, u64)> = clusters[1]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["address"].as_str().unwrap().to_owned(), e["weight"].as_u64().unwrap()))
            .collect();
        assert_eq!(pair, vec![(p1.addr().to_string(), 1), (p2.addr().to_string(), 3)]);
        for endpoint in clusters.iter().flat_map(|c| c["endpoints"].as_array().unwrap()) {
            assert_eq!(endpoint["active_requests"], 0, "{endpoint}");
            assert_eq!(endpoint["connections"], 0, "no traffic yet: {endpoint}");
            assert_eq!(endpoint["idle_connections"], 0, "{endpoint}");
        }

        // After a reload both dumps show the new config.
        let reloaded = yaml.replace("version: dump-test", "version: dump-test-2");
        assert_eq!(proxy.reload(&reloaded).await, Ok(edgeplane::ReloadOutcome::Applied(2)));
        let dumped: Value = serde_json::from_str(&proxy.admin_get("/config").await.1).unwrap();
        assert_eq!(dumped["version"], "dump-test-2");
        let dump: Value = serde_json::from_str(&proxy.admin_get("/clusters").await.1).unwrap();
        assert_eq!(dump["generation"], 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_from_loopback_stops_readiness_and_accepting() {
    guard(async {
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let proxy = TestProxy::start(&web_config(up.addr()));
        let web = proxy.addr("web");
        let (status, _, _) = edgeplane_tests::client::get(web, "h", "/").await;
        assert_eq!(status, StatusCode::OK);

        // POST /reload from loopback is accepted (the file is unchanged).
        let (status, _, _) = proxy.admin_request("POST", "/reload").await;
        assert_eq!(status, 200);

        assert_eq!(proxy.admin_request("GET", "/drain").await.0, 405);
        assert_eq!(proxy.admin_get("/ready").await.0, 200, "GET /drain must not drain");

        let (status, _, body) = proxy.admin_request("POST", "/drain").await;
        assert_eq!((status, body.as_str()), (200, "OK\n"));
        // The admin server hands commands to the control loop in order; a
        // reload asked for now is answered after the drain (and the /reload
        // above) were handled, and is refused because the proxy is draining.
        let error = proxy.handle().reload().await.expect_err("reloads are refused while draining");
        assert!(error.contains("draining"), "{error}");
        assert_eq!(proxy.metric("edgeplane_config_reloads_total", &[("result", "unchanged")]).await, Some(1.0));

        assert_eq!(proxy.admin_get("/ready").await, (503, "draining\n".to_owned()));
        assert!(!proxy.handle().is_ready());
        assert_eq!(proxy.admin_get("/live").await.0, 200, "draining is still live");
        wait_until_refused(web, "listener after drain").await;

        // Quit from loopback: the proxy stops and its admin server with it.
        let admin = proxy.admin();
        let (status, _, _) = proxy.admin_request("POST", "/quitquitquit").await;
        assert_eq!(status, 200);
        wait_until_refused(admin, "admin server after /quitquitquit").await;
    })
    .await;
}

/// A non-loopback IPv4 address of this host, if it has one.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    // `ip -4 -o addr show scope global`: "2: eth0    inet 192.0.2.2/24 brd …".
    if let Ok(output) = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output()
    {
        let text = String::from_utf8_lossy(&output.stdout);
        let found = text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            let ip: Ipv4Addr = words.next()?.split('/').next()?.parse().ok()?;
            (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
        });
        if found.is_some() {
            return found;
        }
    }
    // Without `ip`: the source address the kernel would pick for an outside
    // destination. Connecting a UDP socket only looks the route up; nothing
    // is sent. The address must also be bindable here (i.e. ours).
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("203.0.113.1:9").ok()?;
    let ip = match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => ip,
        _ => return None,
    };
    std::net::TcpListener::bind((ip, 0)).ok().map(|_| ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_endpoints_refuse_non_loopback_callers() {
    guard(async {
        let Some(ip) = non_loopback_ipv4() else {
            eprintln!(
                "SKIPPED mutating_endpoints_refuse_non_loopback_callers: this machine has no non-loopback IPv4 \
                 address, so a non-loopback admin caller cannot be made; the 403 rule was NOT checked"
            );
            return;
        };
        let up = HttpUpstream::start("app", HttpProto::Http1).await;
        let proxy = TestProxy::start_with_admin(&web_config(up.addr()), "0.0.0.0:0".parse().unwrap());
        let admin = SocketAddr::new(IpAddr::V4(ip), proxy.admin().port());

        // From `ip` to `ip`: the connection stays on this host, and the admin
        // server sees a non-loopback peer.
        let send_from_outside = move |method: &'static str, path: &'static str| async move {
            let mut conn = Http1Conn::try_connect_from(IpAddr::V4(ip), admin)
                .await
                .unwrap_or_else(|e| panic!("connect from {ip} to {admin}: {e}"));
            let res = conn.send(simple_request(method, path, "admin", &[])).await.expect("admin response");
            (res.status().as_u16(), String::from_utf8_lossy(res.body()).into_owned())
        };
        // Reading is allowed from anywhere.
        assert_eq!(send_from_outside("GET", "/ready").await.0, 200);
        assert_eq!(send_from_outside("POST", "/quitquitquit").await.0, 403);
        assert_eq!(send_from_outside("POST", "/drain").await.0, 403);
        assert_eq!(send_from_outside("POST", "/reload").await.0, 403);
        // Method checks come first.
        assert_eq!(send_from_outside("GET", "/quitquitquit").await.0, 405);

        // Nothing happened: still ready, still serving, nothing reloaded.
        assert_eq!(proxy.admin_get("/ready").await.0, 200);
        assert!(proxy.handle().is_ready());
        let (status, _, _) = edgeplane_tests::client::get(proxy.addr("web"), "h", "/").await;
        assert_eq!(status, StatusCode::OK);
        // A reload through the control loop answers only after every command
        // the admin server passed on before it: had the refused calls gone
        // through, this would fail (draining) or count a second reload.
        assert_eq!(proxy.handle().reload().await, Ok(edgeplane::ReloadOutcome::Unchanged));
        assert_eq!(proxy.admin_get("/ready").await.0, 200);
        let reloads = proxy.metric("edgeplane_config_reloads_total", &[("result", "unchanged")]).await;
        assert_eq!(reloads, Some(1.0), "a refused POST /reload ran anyway");
        // And the loopback address of the same 0.0.0.0 admin server may quit.
        let (status, _, _) = proxy.admin_request("POST", "/drain").await;
        assert_eq!(status, 200);
        let error = proxy.handle().reload().await.expect_err("draining");
        assert!(error.contains("draining"), "{error}");
        assert_eq!(proxy.admin_get("/ready").await.0, 503);
    })
    .await;
}
