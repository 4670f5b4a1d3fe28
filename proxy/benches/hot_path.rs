//! Micro-benchmarks of the proxy's hot pieces: route matching, split and
//! endpoint picks, HTTP/1 head rewriting, protocol detection, and config
//! compilation (the reload path).
//!
//! ```text
//! cargo bench -p edgeplane --bench hot_path                      # everything (~2-3 min)
//! cargo bench -p edgeplane --bench hot_path -- route_match       # one group
//! cargo bench -p edgeplane --bench hot_path -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Inputs are built from config text exactly as the proxy builds them
//! (`from_yaml_str` → `validate` → `compile`), so the benchmarks follow the
//! real data structures rather than hand-made copies of them.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use config_model::{Config, ForwardedFor};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode};
use edgeplane::balance::PickInput;
use edgeplane::detect::{classify, Detected, H2_PREFACE};
use edgeplane::http::h1::head::{parse_response, RequestHead, RequestHeadView, ResponseContext};
use edgeplane::metrics::{Metrics, RequestMetrics};
use edgeplane::route::compile::compile;
use edgeplane::route::{HeaderEdits, HttpSettings, ListenerTable, RouteTable, Split, Target};
use edgeplane::state::Registry;
use http::{HeaderName, HeaderValue};

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// Endpoint weights of a generated cluster, by endpoint index (mixed on purpose).
const ENDPOINT_WEIGHTS: [u32; 10] = [1, 1, 2, 2, 3, 3, 5, 5, 10, 10];

/// Config text with one HTTP listener (`web`) of `routes` routes, the last a
/// catch-all, and `clusters` clusters of `endpoints` IP endpoints each (no DNS).
///
/// Route `i` is of kind `i % 6`, each with criteria unique to `i`:
/// 0. host exact `svc{i}.example.com` + path prefix `/api/v{i}/`
/// 1. host wildcard `*.tenant{i}.example.com` (a 90/10 split)
/// 2. path exact `/health/{i}` + methods GET, HEAD (a direct response)
/// 3. path regex `/users/[0-9]+/orders/{i}` (with a request header edit)
/// 4. header `x-tenant: t{i}`
/// 5. host exact `api{i}.example.com` + path prefix `/v1/` + methods POST, PUT
///    + header regex `x-api-version: 2\.[0-9]+` (with response header edits)
fn config_yaml(routes: usize, clusters: usize, endpoints: usize) -> String {
    assert!(routes >= 1 && clusters >= 2 && endpoints >= 1);
    let mut y = String::with_capacity(routes * 200 + clusters * (160 + endpoints * 48));
    y.push_str("listeners:\n  - name: web\n    bind: 127.0.0.1:18080\n    routes:\n");
    for i in 0..routes - 1 {
        let cluster = i % clusters;
        let _ = writeln!(y, "      - name: r{i}");
        match i % 6 {
            0 => {
                let _ =
                    writeln!(y, "        match: {{ host: 'svc{i}.example.com', path: {{ prefix: '/api/v{i}/' }} }}");
                let _ = writeln!(y, "        cluster: c{cluster}");
            }
            1 => {
                let _ = writeln!(y, "        match: {{ host: '*.tenant{i}.example.com' }}");
                let canary = (cluster + 1) % clusters;
                let _ = writeln!(
                    y,
                    "        split: [ {{ cluster: c{cluster}, weight: 90 }}, {{ cluster: c{canary}, weight: 10 }} ]"
                );
            }
            2 => {
                let _ = writeln!(y, "        match: {{ path: {{ exact: '/health/{i}' }}, method: [GET, HEAD] }}");
                let _ = writeln!(y, "        direct_response: {{ status: 200, body: 'ok' }}");
            }
            3 => {
                let _ = writeln!(y, "        match: {{ path: {{ regex: '/users/[0-9]+/orders/{i}' }} }}");
                let _ = writeln!(y, "        cluster: c{cluster}");
                let _ = writeln!(y, "        request_headers: {{ set: {{ x-route: r{i} }} }}");
            }
            4 => {
                let _ = writeln!(y, "        match: {{ headers: {{ x-tenant: 't{i}' }} }}");
                let _ = writeln!(y, "        cluster: c{cluster}");
                let _ = writeln!(y, "        timeout: 15s");
            }
            _ => {
                let _ = writeln!(
                    y,
                    "        match: {{ host: 'api{i}.example.com', path: {{ prefix: '/v1/' }}, method: [POST, PUT], \
                     headers: {{ x-api-version: {{ regex: '2\\.[0-9]+' }} }} }}"
                );
                let _ = writeln!(y, "        cluster: c{cluster}");
                let _ =
                    writeln!(y, "        response_headers: {{ remove: [server], set: {{ x-frame-options: DENY }} }}");
            }
        }
    }
    y.push_str("      - name: default\n        cluster: c0\n");

    y.push_str("clusters:\n");
    for c in 0..clusters {
        let _ = writeln!(y, "  - name: c{c}");
        match c % 5 {
            0 => y.push_str("    lb: round_robin\n"),
            1 => y.push_str("    lb: least_request\n"),
            2 => y.push_str("    lb: random\n"),
            3 => y.push_str("    lb: ring_hash\n    hash_on: { header: x-session-id }\n"),
            _ => y.push_str("    lb: ring_hash\n    hash_on: source_ip\n"),
        }
        y.push_str("    endpoints:\n");
        for e in 0..endpoints {
            let weight = ENDPOINT_WEIGHTS[e % ENDPOINT_WEIGHTS.len()];
            let _ = writeln!(y, "      - {{ address: '10.{}.{}.{}:8080', weight: {weight} }}", c / 256, c % 256, e + 1);
        }
    }
    y
}

fn parse_and_validate(text: &str) -> Config {
    let config = config_model::from_yaml_str(text).expect("generated config parses");
    config_model::validate(&config).expect("generated config is valid");
    config
}

fn compile_text(text: &str, registry: &Registry, metrics: &Metrics) -> RouteTable {
    compile(Arc::new(parse_and_validate(text)), 1, 1, registry, metrics).expect("generated config compiles")
}

fn listener(table: &RouteTable) -> &ListenerTable {
    table.listeners.iter().flatten().next().expect("one listener")
}

/// Headers a browser sends with every request (~300 bytes).
const BROWSER_HEADERS: &str = "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                               Chrome/126.0.0.0 Safari/537.36\r\n\
                               Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
                               Accept-Language: en-US,en;q=0.9\r\n\
                               Accept-Encoding: gzip, deflate, br\r\n\
                               Cookie: session=8f14e45fceea167a; theme=dark\r\n\
                               Connection: keep-alive\r\n";

/// A request head that matches route `index` of [`config_yaml`] (and no
/// route before it); `None` gives one that only the catch-all matches.
fn request_for(index: Option<usize>) -> Vec<u8> {
    let (line, extra) = match index {
        None => ("GET /static/js/app.3f9a1c.js HTTP/1.1".to_owned(), "Host: www.example.com\r\n".to_owned()),
        Some(i) => match i % 6 {
            0 => (format!("GET /api/v{i}/items?page=2 HTTP/1.1"), format!("Host: svc{i}.example.com\r\n")),
            1 => ("GET /dashboard HTTP/1.1".to_owned(), format!("Host: app.tenant{i}.example.com\r\n")),
            2 => (format!("GET /health/{i} HTTP/1.1"), "Host: probe.internal\r\n".to_owned()),
            3 => (format!("GET /users/42/orders/{i} HTTP/1.1"), "Host: shop.example.com\r\n".to_owned()),
            4 => ("GET /reports/q3 HTTP/1.1".to_owned(), format!("Host: reports.example.com\r\nX-Tenant: t{i}\r\n")),
            _ => (
                "POST /v1/payments HTTP/1.1".to_owned(),
                format!("Host: api{i}.example.com\r\nX-Api-Version: 2.1\r\nContent-Length: 0\r\n"),
            ),
        },
    };
    format!("{line}\r\n{extra}{BROWSER_HEADERS}\r\n").into_bytes()
}

fn parsed(buf: &[u8]) -> RequestHead {
    let mut head = RequestHead::default();
    assert!(head.parse(buf, 100, 64 * 1024).expect("valid request head"), "complete request head");
    head
}

// ---------------------------------------------------------------------------
// 1. Route matching
// ---------------------------------------------------------------------------

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for routes in [10usize, 1000, 10_000] {
        let (registry, metrics) = (Registry::default(), Metrics::new());
        let table = compile_text(&config_yaml(routes, 20, 2), &registry, &metrics);
        let listener = listener(&table);
        assert_eq!(listener.routes.len(), routes);
        let middle = routes / 2;
        let cases = [
            ("first", request_for(Some(0)), "r0".to_owned()),
            ("middle", request_for(Some(middle)), format!("r{middle}")),
            ("catch_all", request_for(None), "default".to_owned()),
        ];
        for (case, buf, expected) in cases {
            let head = parsed(&buf);
            let view = RequestHeadView { head: &head, buf: &buf, sni: None, destination: None, source: None };
            let hit = listener.route_for(&view).map(|route| &*route.name);
            assert_eq!(hit, Some(expected.as_str()), "{case} request with {routes} routes");
            group.bench_function(BenchmarkId::new(routes.to_string(), case), |b| {
                b.iter(|| listener.route_for(black_box(&view)).map(|route| route.split.targets().len()))
            });
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// 2. Weighted split
// ---------------------------------------------------------------------------

fn split_pick(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("split_pick");
    for weights in [&[100u32][..], &[90, 10], &[40, 25, 15, 12, 8]] {
        let targets = weights
            .iter()
            .enumerate()
            .map(|(cluster, &weight)| Target {
                cluster,
                weight,
                metrics: RequestMetrics::new(&metrics, "web", "split", &format!("c{cluster}")),
                tcp_bytes: None,
            })
            .collect();
        let split = Split::new(targets);
        group.bench_function(BenchmarkId::from_parameter(weights.len()), |b| {
            b.iter(|| black_box(&split).pick().cluster)
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// 3. Endpoint pick
// ---------------------------------------------------------------------------

const LB_CONFIG: &str = "
listeners:
  - name: web
    bind: 127.0.0.1:18080
    routes: [ { cluster: round_robin } ]
clusters:
  - { name: round_robin, lb: round_robin, endpoints: &endpoints [
      { address: '10.0.0.1:8080', weight: 1 }, { address: '10.0.0.2:8080', weight: 1 },
      { address: '10.0.0.3:8080', weight: 2 }, { address: '10.0.0.4:8080', weight: 2 },
      { address: '10.0.0.5:8080', weight: 3 }, { address: '10.0.0.6:8080', weight: 3 },
      { address: '10.0.0.7:8080', weight: 5 }, { address: '10.0.0.8:8080', weight: 5 },
      { address: '10.0.0.9:8080', weight: 10 }, { address: '10.0.0.10:8080', weight: 10 } ] }
  - { name: random, lb: random, endpoints: *endpoints }
  - { name: least_request, lb: least_request, endpoints: *endpoints }
  - { name: ring_hash_header, lb: ring_hash, hash_on: { header: x-session-id }, endpoints: *endpoints }
  - { name: ring_hash_client_ip, lb: ring_hash, hash_on: source_ip, endpoints: *endpoints }
";

/// Distinct keys per iteration, so ring-hash lookups do not hit one cached
/// path of the binary search.
const KEYS: usize = 1024;

fn lb_pick(c: &mut Criterion) {
    let (registry, metrics) = (Registry::default(), Metrics::new());
    let table = compile_text(LB_CONFIG, &registry, &metrics);
    let session_ids: Vec<String> =
        (0..KEYS).map(|i| format!("s-{:016x}", (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
    let client_ips: Vec<IpAddr> =
        (0..KEYS).map(|i| IpAddr::V4(Ipv4Addr::new(192, 168, (i >> 8) as u8, i as u8))).collect();
    let mut group = c.benchmark_group("lb_pick");
    for cluster in table.clusters.iter() {
        assert_eq!(cluster.endpoints.len(), 10);
        // Some load, so least_request compares unequal candidates.
        for (i, endpoint) in cluster.endpoints.iter().enumerate() {
            endpoint.active_requests.store((i % 4) as u32, Ordering::Relaxed);
        }
        let by_header = cluster.hash_header.is_some();
        let mut turn = 0usize;
        group.bench_function(&*cluster.name, |b| {
            b.iter(|| {
                turn = (turn + 1) % KEYS;
                let input = PickInput {
                    client_ip: client_ips[turn],
                    hash_header: by_header.then(|| session_ids[turn].as_bytes()),
                };
                cluster.pick(black_box(&input)).map(|endpoint| endpoint.id)
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// 4. HTTP/1 head rewriting
// ---------------------------------------------------------------------------

/// A typical browser request head behind one proxy hop (~560 bytes).
const BROWSER_REQUEST: &[u8] = b"GET /api/v1/users/42/profile?include=settings&lang=en HTTP/1.1\r\n\
Host: app.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://app.example.com/dashboard\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
X-Debug-Trace: 1\r\n\
Sec-Fetch-Mode: navigate\r\n\
Connection: keep-alive\r\n\
\r\n";

/// A typical JSON API response head (~400 bytes).
const API_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Date: Tue, 14 May 2024 10:21:33 GMT\r\n\
Content-Type: application/json; charset=utf-8\r\n\
Content-Length: 1532\r\n\
Connection: keep-alive\r\n\
Keep-Alive: timeout=5\r\n\
Cache-Control: no-cache, no-store, must-revalidate\r\n\
ETag: \"33a64df551425fcc55e4d42a148795d9f25f89d4\"\r\n\
Vary: Accept-Encoding, Origin\r\n\
Server: nginx/1.25.4\r\n\
X-Request-Id: 7f9c2ba4-e88f-4e4a-9d1c-3c2f7b6e1a90\r\n\
Strict-Transport-Security: max-age=63072000; includeSubDomains\r\n\
\r\n";

fn http_settings() -> HttpSettings {
    HttpSettings {
        max_header_bytes: 64 * 1024,
        max_headers: 100,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        forwarded_for: ForwardedFor::Append,
        forwarded: false,
        max_concurrent_streams: 100,
        redirect_https: None,
    }
}

fn header_rewrite(c: &mut Criterion) {
    let settings = http_settings();
    let edits = HeaderEdits {
        remove: vec![HeaderName::from_static("x-debug-trace")],
        set: vec![(HeaderName::from_static("x-request-source"), HeaderValue::from_static("edge"))],
        add: vec![(HeaderName::from_static("x-via"), HeaderValue::from_static("edgeplane"))],
    };
    let client: IpAddr = "198.51.100.23".parse().unwrap();
    let endpoint: SocketAddr = "10.0.0.5:8080".parse().unwrap();
    let buf = BROWSER_REQUEST;
    let mut head = parsed(buf);
    // The connection reuses its output buffer from request to request.
    let mut out = Vec::with_capacity(2048);
    head.write_upstream(buf, &mut out, &settings, &edits, client, "http", endpoint);
    let written = std::str::from_utf8(&out).unwrap();
    assert!(written.contains("x-forwarded-for: 203.0.113.7, 198.51.100.23\r\n"), "{written}");
    assert!(!written.contains("X-Debug-Trace") && !written.contains("Connection:"), "{written}");

    let mut group = c.benchmark_group("header_rewrite");
    group.bench_function("parse_request", |b| {
        b.iter(|| head.parse(black_box(buf), settings.max_headers, settings.max_header_bytes))
    });
    group.bench_function("write_upstream", |b| {
        b.iter(|| {
            out.clear();
            head.write_upstream(black_box(buf), &mut out, &settings, &edits, client, "http", endpoint);
            out.len()
        })
    });
    group.bench_function("parse_and_write_upstream", |b| {
        b.iter(|| {
            head.parse(black_box(buf), settings.max_headers, settings.max_header_bytes).unwrap();
            out.clear();
            head.write_upstream(buf, &mut out, &settings, &edits, client, "http", endpoint);
            out.len()
        })
    });
    group.finish();

    let response_edits = HeaderEdits {
        remove: vec![HeaderName::from_static("server")],
        set: vec![(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"))],
        add: vec![],
    };
    let context = ResponseContext { head_request: false, edits: &response_edits, close: false };
    out.clear();
    let response = parse_response(API_RESPONSE, 64 * 1024, &mut out, &context).unwrap().expect("complete head");
    assert_eq!((response.status, response.len), (200, API_RESPONSE.len()));
    let mut group = c.benchmark_group("response_head");
    group.bench_function("parse_and_rewrite", |b| {
        b.iter(|| {
            out.clear();
            parse_response(black_box(API_RESPONSE), 64 * 1024, &mut out, &context).map(|head| head.map(|h| h.len))
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// 5. Protocol detection
// ---------------------------------------------------------------------------

fn detect(c: &mut Criterion) {
    let http1 = b"GET /api/v1/users/42?include=profile HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: curl/8.5.0\r\n\
                  Accept: */*\r\n\r\n"
        .to_vec();
    // The preface and the client's first SETTINGS and WINDOW_UPDATE frames, as one read.
    let http2 = [
        H2_PREFACE,
        &[0, 0, 18, 0x4, 0, 0, 0, 0, 0],
        &[0, 0x2, 0, 0, 0, 0, 0, 0x3, 0, 0, 0, 100, 0, 0x4, 0, 0x60, 0, 0],
        &[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0xef, 0, 0x1],
    ]
    .concat();
    // A TLS 1.3 ClientHello's first bytes: record header, handshake header,
    // version, random, session id, cipher suites.
    let tls = [
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03][..],
        &[0x5a; 32],
        &[0x20],
        &[0xc3; 32],
        &[0x00, 0x08, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0x00, 0xff, 0x01, 0x00],
    ]
    .concat();
    // MQTT 3.1.1 CONNECT: fixed header, "MQTT", level 4, clean session,
    // keep-alive 60, client id "edgeplane-bench".
    let mqtt = [&[0x10, 27, 0x00, 0x04][..], b"MQTT", &[0x04, 0x02, 0x00, 0x3c, 0x00, 15], b"edgeplane-bench"].concat();
    assert_eq!(mqtt.len(), 2 + 27);

    let mut group = c.benchmark_group("detect");
    for (name, bytes, expected) in [
        ("http1_request", http1, Detected::Http1),
        ("http2_preface", http2, Detected::Http2),
        ("tls_client_hello", tls, Detected::Tcp),
        ("mqtt_connect", mqtt, Detected::Mqtt),
    ] {
        assert_eq!(classify(&bytes), Some(expected), "{name}");
        group.bench_function(name, |b| b.iter(|| classify(black_box(&bytes))));
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// 6. Config compilation (reload)
// ---------------------------------------------------------------------------

fn config_compile(c: &mut Criterion) {
    // 1,000 routes, 200 clusters × 10 endpoints (2,000 endpoints).
    let text = config_yaml(1000, 200, 10);
    let config = Arc::new(parse_and_validate(&text));
    // A reload finds the endpoints and metric series of the previous table.
    let (registry, metrics) = (Registry::default(), Metrics::new());
    drop(compile(config.clone(), 1, 1, &registry, &metrics).unwrap());

    // Dropping the table a benchmark built is left out of its time (a
    // reload drops the old table later, wherever its last user lets go).
    let mut group = c.benchmark_group("config_compile");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.bench_function("parse_yaml", |b| b.iter(|| config_model::from_yaml_str(black_box(&text)).unwrap()));
    group.bench_function("validate", |b| b.iter(|| config_model::validate(black_box(&config))));
    group.bench_function("compile_reload", |b| {
        b.iter_with_large_drop(|| compile(black_box(config.clone()), 1, 2, &registry, &metrics).unwrap())
    });
    group.bench_function("compile_first", |b| {
        b.iter_batched_ref(
            || (Registry::default(), Metrics::new()),
            |(registry, metrics)| compile(black_box(config.clone()), 1, 1, registry, metrics).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("parse_validate_compile", |b| {
        b.iter_with_large_drop(|| {
            let config = Arc::new(parse_and_validate(black_box(&text)));
            compile(config, 1, 2, &registry, &metrics).unwrap()
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// 7. Policy checks per request
// ---------------------------------------------------------------------------

const POLICY_CONFIG: &str = "
listeners:
  - name: web
    bind: 127.0.0.1:18080
    routes: [ { cluster: failover } ]
clusters:
  - name: failover
    endpoints: [ 10.0.0.1:8080, 10.0.0.2:8080, 10.0.0.3:8080, 10.0.0.4:8080,
                 { address: '10.1.0.1:8080', priority: 1 }, { address: '10.1.0.2:8080', priority: 1 } ]
    outlier_detection: { consecutive_5xx: 5 }
    breaker: { min_requests: 100, error_ratio: 0.5 }
    rate_limit: { requests: 1000000000, per: 1s }
    limits: { max_requests: 1000000 }
";

/// What the resilience policies add to a request that trips none of them:
/// the rate-limit bucket, the breaker's admission and record, the cluster's
/// request count, the outlier record; and the endpoint pick with every
/// endpoint available versus with some unavailable (priority levels by health).
fn policy_checks(c: &mut Criterion) {
    use edgeplane::policy::breaker::Admission;
    use edgeplane::policy::outlier::{TryOutcome, EJECTED};
    use edgeplane::route::ClusterRequest;

    let (registry, metrics) = (Registry::default(), Metrics::new());
    let table = compile_text(POLICY_CONFIG, &registry, &metrics);
    let cluster = &table.clusters[0];
    let input = PickInput { client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), hash_header: None };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let _context = runtime.enter();
    let mut group = c.benchmark_group("policy_checks");
    group.bench_function("rate_limit", |b| {
        let limiter = cluster.rate_limit.as_ref().unwrap();
        b.iter(|| {
            matches!(limiter.decide(black_box(input.client_ip), None), edgeplane::policy::rate_limit::Decision::Allow)
        })
    });
    group.bench_function("breaker_admit_record", |b| {
        let policy = cluster.breaker.as_ref().unwrap();
        b.iter(|| {
            let now = tokio::time::Instant::now();
            if let Admission::Pass(ticket) = policy.breaker.admit(now) {
                ticket.record(&policy.breaker, now, false, Duration::from_micros(200));
            }
        })
    });
    group.bench_function("max_requests", |b| b.iter(|| ClusterRequest::admit(black_box(cluster)).is_ok()));
    group.bench_function("outlier_record", |b| {
        let endpoint = &cluster.endpoints[0];
        b.iter(|| cluster.observe(black_box(endpoint), TryOutcome::Response(200)))
    });
    group.bench_function("pick_all_available", |b| b.iter(|| cluster.pick(black_box(&input)).map(|e| e.id)));
    // One of four priority-0 endpoints ejected: levels by health, unavailable skipped.
    cluster.endpoints[0].health.set_flag(&cluster.state, EJECTED, true);
    group.bench_function("pick_one_unavailable", |b| b.iter(|| cluster.pick(black_box(&input)).map(|e| e.id)));
    cluster.endpoints[0].health.set_flag(&cluster.state, EJECTED, false);
    group.finish();
}

criterion_group! {
    name = benches;
    // Quicker than criterion's defaults (3 s + 5 s) so the whole file runs in
    // a few minutes; command-line options still override these.
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = route_match, split_pick, lb_pick, header_rewrite, detect, config_compile, policy_checks
}
criterion_main!(benches);
