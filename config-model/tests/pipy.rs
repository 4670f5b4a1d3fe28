//! The PipyConf corpus (`tests/pipy/*.json`, written from osm-edge's
//! `repo/types.go`) translated and checked field by field.

use config_model::pipy::{translate, ProbeTarget, Probes, SidecarContext, Translation};
use serde_json::{json, Value};

fn corpus(name: &str) -> (Translation, Value) {
    let path = format!("{}/tests/pipy/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let translation = translate(&text, &SidecarContext::default()).unwrap();
    config_model::validate(&translation.config).unwrap_or_else(|errors| panic!("{name}: {errors:?}"));
    let value = serde_json::to_value(&translation.config).unwrap();
    if std::env::var_os("PIPY_DUMP").is_some() {
        eprintln!("{}\n{:#?}", serde_json::to_string_pretty(&value).unwrap(), translation.warnings);
    }
    (translation, value)
}

fn listener<'a>(config: &'a Value, name: &str) -> &'a Value {
    config["listeners"].as_array().unwrap().iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("{name}"))
}

fn route<'a>(listener: &'a Value, name: &str) -> &'a Value {
    listener["routes"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| {
        let names: Vec<_> = listener["routes"].as_array().unwrap().iter().map(|r| r["name"].clone()).collect();
        panic!("no route {name}; have {names:?}")
    })
}

fn cluster<'a>(config: &'a Value, name: &str) -> &'a Value {
    config["clusters"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name}"))
}

/// The inbound side of a bookstore pod: rules per identity, source
/// allow-lists, rate limits, mixed-mode TLS and the 403 of osm-edge.
#[test]
fn bookstore_inbound() {
    let (translation, config) = corpus("bookstore.json");
    assert_eq!(config["version"], "6882559880055383607");
    assert!(config["listeners"].as_array().unwrap().iter().all(|l| l["name"] != "outbound"), "Outbound is null");
    let inbound = listener(&config, "inbound");
    assert_eq!(inbound["bind"], "0.0.0.0:15003");
    assert_eq!(inbound["transparent"]["unmatched"], "refuse");
    assert_eq!(inbound["tls"]["mesh"], true);
    assert_eq!(inbound["tls"]["plaintext_sources"], json!(["10.10.0.0/16"]), "the range with mTLS false");
    assert!(config["identity"]["ca"]["pem"].as_str().unwrap().contains("ca placeholder"));

    // The identity-restricted rule comes before the open one.
    let names: Vec<&str> = inbound["routes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    let service = "inbound/14001/bookstore.bookstore.svc.cluster.local";
    assert_eq!(
        names,
        [
            format!("{service}/1"),
            format!("{service}/0"),
            format!("{service}/0/ranges"),
            "inbound/14001/denied".into(),
            "inbound/9000/tcp".into()
        ]
    );
    let restricted = route(inbound, &format!("{service}/1"));
    assert_eq!(
        restricted["match"]["headers"],
        json!({
            "serviceidentity": { "regex": "bookbuyer\\.bookbuyer|bookwatcher\\.bookbuyer" },
            "user-agent": { "regex": ".*(?:Go-http-client).*" },
        })
    );
    assert_eq!(restricted["match"]["path"], json!({ "prefix": "/books-bought" }));
    assert_eq!(restricted["match"]["method"], json!(["GET"]));
    assert_eq!(restricted["match"]["source"]["addresses"], json!(["10.244.1.7"]), "the service's AllowedEndpoints");
    assert_eq!(restricted["match"]["destination"], json!({ "ports": [14001] }));
    assert!(restricted["match"].get("host").is_none(), "one service on the port: the port decides");
    assert_eq!(restricted["cluster"], "bookstore/bookstore|14001|local");
    assert_eq!(restricted["timeout"], "60s");
    // The pod's identity for the caller's sidecar (`namespace,kind,name,pod`).
    assert_eq!(restricted["response_headers"], json!({ "set": { "osm-stats": "default,Deployment,default," } }));
    let limit = &restricted["rate_limit"];
    assert_eq!((limit["requests"].as_u64(), limit["per"].as_str()), (Some(10), Some("60s")));
    assert_eq!((limit["burst"].as_u64(), limit["status"].as_u64()), (Some(5), Some(429)));
    assert_eq!(limit["response_headers"], json!({ "x-limited": "yes" }));

    let open = route(inbound, &format!("{service}/0"));
    assert!(open["match"].get("path").is_none(), "`.*` matches every path");
    assert_eq!(open["match"]["method"], json!(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]));
    assert!(open.get("rate_limit").is_none(), "the rule has no limit of its own");
    let ranges = route(inbound, &format!("{service}/0/ranges"));
    assert_eq!(ranges["match"]["source"]["addresses"], json!(["10.10.0.0/16"]));

    let denied = route(inbound, "inbound/14001/denied");
    assert_eq!(denied["direct_response"]["status"], 403);
    assert_eq!(denied["direct_response"]["body"], "Access denied");
    assert_eq!(denied["match"]["source"]["addresses"], json!(["10.244.1.7", "10.244.2.9", "10.10.0.0/16"]));

    let tcp = route(inbound, "inbound/9000/tcp");
    assert_eq!(tcp["cluster"], "bookstore/bookstore|9000|local");
    assert_eq!(tcp["match"]["source"]["addresses"], json!(["10.244.1.7", "10.244.2.9"]));
    // osm-edge limits connections per port: the TCP port's route holds it.
    assert_eq!(tcp["connection_rate_limit"], json!({ "connections": 5, "per": "1s", "burst": 10 }));
    assert!(inbound.get("connection_rate_limit").is_none());

    let app = cluster(&config, "bookstore/bookstore|14001|local");
    assert_eq!(app["endpoints"], json!([{ "address": "127.0.0.1:14001", "weight": 100, "priority": 0 }]));
    // The service's limit is one bucket for all its rules (and for pods and
    // ranges alike): its local cluster's; the rules' own limits apply on top.
    assert_eq!(app["rate_limit"]["requests"], 100, "the per-service limit on the service's cluster");
    assert!(app.get("tls").is_none(), "the local app is plaintext");
    assert!(translation.warnings.is_empty(), "{:?}", translation.warnings);
    assert_eq!(
        translation.probes,
        Probes {
            liveness: ProbeTarget::Http { target: "127.0.0.1:9091".parse().unwrap(), path: "/health/alive".into() },
            readiness: ProbeTarget::HealthCheck,
            startup: ProbeTarget::Http { target: "127.0.0.1:9092".parse().unwrap(), path: "/started".into() },
        },
        "rewritten probes by their Original-* headers; a probe not yet rewritten where it points"
    );
}

/// The outbound side of a bookbuyer pod: destination matching, the 80/20
/// TrafficSplit, identity header, retries, limits and the degrade breaker.
#[test]
fn bookbuyer_outbound() {
    let (translation, config) = corpus("bookbuyer.json");
    assert!(translation.warnings.is_empty(), "{:?}", translation.warnings);
    assert_eq!(translation.probes, Probes::default(), "no probes and no inbound port: probe connections are reset");
    let outbound = listener(&config, "outbound");
    assert_eq!(outbound["bind"], "0.0.0.0:15001");
    assert_eq!(outbound["transparent"]["unmatched"], "refuse", "EnableEgress is false");
    let service = "outbound/14001/bookstore.bookstore.svc.cluster.local";
    let canary = route(outbound, &format!("{service}/0"));
    // osm-edge's identity header of the destination sidecar stops here.
    assert_eq!(
        canary["response_headers"]["remove"],
        json!(["osm-stats", "osm-stats-namespace", "osm-stats-kind", "osm-stats-name", "osm-stats-pod"])
    );
    assert_eq!(canary["match"]["path"], json!({ "regex": ".*(?:/books).*" }), "osm-edge searches the path");
    assert_eq!(canary["match"]["headers"], json!({ "x-canary": { "regex": "(?:^yes$)" } }));
    assert_eq!(canary["match"]["method"], json!(["GET", "POST"]));
    assert_eq!(canary["match"]["destination"]["addresses"], json!(["10.244.2.9/32", "10.96.12.34/32"]));
    assert_eq!(canary["match"]["destination"]["ports"], json!([14001]));
    assert_eq!(canary["cluster"], "bookstore/bookstore-v2|14001");
    assert!(canary.get("retry").is_none(), "v2 has no RetryPolicy");

    let split = route(outbound, &format!("{service}/1"));
    assert_eq!(
        split["split"],
        json!([
            { "cluster": "bookstore/bookstore-v1|14001", "weight": 80 },
            { "cluster": "bookstore/bookstore-v2|14001", "weight": 20 },
        ])
    );
    assert_eq!(split["request_headers"]["set"], json!({ "serviceidentity": "bookbuyer.bookbuyer" }));
    assert_eq!(split["timeout"], "30500ms");
    let retry = &split["retry"];
    assert_eq!(retry["attempts"], 5);
    assert_eq!(retry["retry_on"], json!(["connect-failure", "reset", "5xx", "retriable-status-codes"]));
    assert_eq!(retry["status_codes"], json!([429]));
    assert_eq!((retry["per_try_timeout"].as_str(), retry["backoff_base"].as_str()), (Some("1s"), Some("250ms")));
    assert_eq!(retry["retry_non_idempotent"], true);

    let v1 = cluster(&config, "bookstore/bookstore-v1|14001");
    assert_eq!(v1["tls"], json!({ "mesh": true }));
    assert_eq!(v1["connect_timeout"], "5s");
    assert_eq!(
        v1["limits"],
        json!({ "max_connections": 100, "max_pending_requests": 50, "max_requests": 200, "max_retries": 3,
                "max_requests_per_connection": 100 })
    );
    assert_eq!(
        v1["breaker"],
        json!({ "stat_window": "60s", "min_requests": 10, "error_count": 8, "error_ratio": 0.5, "slow_time": "500ms",
                "slow_count": 5, "slow_ratio": 0.3, "degraded_window": "10s", "degraded_status": 409,
                "degraded_body": "Coming soon ..." })
    );
    let weights: Vec<(&str, u64)> = v1["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["address"].as_str().unwrap(), e["weight"].as_u64().unwrap()))
        .collect();
    assert_eq!(weights, [("10.244.2.10:14001", 50), ("10.244.2.9:14001", 100)]);

    let tcp = route(outbound, "outbound/5432/tcp/0");
    assert_eq!(tcp["cluster"], "db/postgres|5432");
    assert!(tcp["match"].get("method").is_none(), "opaque TCP has no HTTP criteria");
    assert_eq!(cluster(&config, "apps/grpc|8443")["protocol"], "http2", "gRPC goes upstream as HTTP/2");
    assert_eq!(cluster(&config, "apps/grpc|8443")["endpoints"][0]["weight"], 100, "a null weight is 100");
    assert!(config.get("identity").is_some());
}

/// Multicluster failover endpoints, egress, hosts sharing a port, and
/// every field edgeplane does not support reported by path.
#[test]
fn multicluster_egress_and_unsupported_fields() {
    let (translation, config) = corpus("multicluster.json");
    let outbound = listener(&config, "outbound");
    assert_eq!(outbound["transparent"]["unmatched"], "passthrough", "EnableEgress");
    let names: Vec<&str> = outbound["routes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "outbound/14001/bookwarehouse.bookwarehouse.svc.cluster.local/0",
            "outbound/80/httpbin.org/0/0",
            "outbound/80/httpbin.org/0/1",
            "outbound/80/www/0/0",
        ],
        "ranged entries first; egress by host when several services share the port"
    );
    assert_eq!(route(outbound, "outbound/80/httpbin.org/0/1")["match"]["host"], "httpbin.org:80");
    assert!(route(outbound, "outbound/80/www/0/0")["match"]["destination"].get("addresses").is_none());
    assert!(cluster(&config, "httpbin.org:80").get("tls").is_none(), "egress is not sidecar mTLS");
    assert!(config.get("identity").is_none(), "no Certificate");

    let warehouse = cluster(&config, "bookwarehouse/bookwarehouse|14001");
    assert_eq!(
        warehouse["endpoints"],
        json!([
            { "address": "10.244.2.9:14001", "weight": 100, "priority": 0 },
            { "address": "192.168.10.5:30001", "weight": 100, "priority": 1 },
        ]),
        "weight 0 is a failover endpoint"
    );
    assert!(warehouse.get("outlier_detection").is_some(), "passive health makes failover happen");

    let warnings = translation.warnings.join("\n");
    for expected in [
        "Surprise: unknown field",
        "Spec.ClusterSet",
        "DNSResolveDB",
        "plugins/wasm-filter.js",
        "Outbound.TrafficMatches.443[0].ServerNames",
        "Endpoints.192.168.10.5:30001: multicluster Key/Path",
        "Spec.Probes.ExecProbes: unknown field",
        "Spec.LocalDNSProxy: the local DNS proxy is not supported",
        "Outbound.ClustersConfigs.httpbin.org:80.SourceCert: egress TLS origination is not supported",
        "Spec.Probes.ReadinessProbes[0].httpGet.port: not a port number",
    ] {
        assert!(warnings.contains(expected), "{expected:?} missing from\n{warnings}");
    }
    assert_eq!(
        translation.probes,
        Probes {
            liveness: ProbeTarget::Tcp { target: "127.0.0.1:5432".parse().unwrap() },
            // No inbound http port to fall back to.
            readiness: ProbeTarget::Refuse,
            // HTTPS without Original-Tcp-Port: relayed to the app's TLS port.
            startup: ProbeTarget::Tcp { target: "127.0.0.1:443".parse().unwrap() },
        }
    );
}

/// A sidecar gets no listener for a side the controller left out; bad
/// documents are errors that name where, never panics.
#[test]
fn empty_and_bad_documents() {
    let empty = translate(r#"{"Ts": null, "Version": "1", "Spec": {}}"#, &SidecarContext::default()).unwrap();
    assert!(empty.config.listeners.is_empty() && empty.config.clusters.is_empty());
    config_model::validate(&empty.config).unwrap();

    let moved = SidecarContext { outbound_bind: "127.0.0.1:25001".into(), ..SidecarContext::default() };
    let egress = translate(r#"{"Spec": {"Traffic": {"EnableEgress": true}}}"#, &moved).unwrap();
    assert_eq!(egress.config.listeners[0].bind.as_str(), "127.0.0.1:25001");

    for (text, at) in [
        (r#"{"Inbound": {"TrafficMatches": {"80": {"Port": "eighty"}}}}"#, "Inbound.TrafficMatches.80.Port"),
        (r#"{"Outbound": {"TrafficMatches": {"80": {}}}}"#, "Outbound.TrafficMatches.80"),
        ("[1, 2]", ""),
        ("{", ""),
    ] {
        let error = translate(text, &SidecarContext::default()).err().unwrap_or_else(|| panic!("{text} translated"));
        assert!(error.to_string().contains(at), "{text}: {error}");
    }
    // Probes of the wrong shape: reported, and the probes refused, never a panic.
    for probes in [r#""yes""#, "[1]", r#"{"LivenessProbes": "x"}"#, r#"{"LivenessProbes": [{"httpGet": 5}]}"#] {
        let text = format!(r#"{{"Spec": {{"Probes": {probes}}}}}"#);
        let translation = translate(&text, &SidecarContext::default()).unwrap();
        assert_eq!(translation.probes, Probes::default(), "{probes}");
    }
    let odd = translate(r#"{"Spec": {"Probes": [1]}}"#, &SidecarContext::default()).unwrap();
    assert!(odd.warnings.iter().any(|w| w == "Spec.Probes: not an object; ignored"), "{:?}", odd.warnings);
    assert!(config_model::pipy::looks_like_pipyconf(r#"{"Spec": {}, "Version": "3"}"#));
    assert!(!config_model::pipy::looks_like_pipyconf(r#"{"listeners": []}"#));
    assert_eq!(config_model::Format::Json.sniff(r#"{"Inbound": null}"#), config_model::Format::PipyConf);
}

/// Probes with no target of their own go to the app's HTTP port, chosen as
/// osm-edge's probes.js chooses it.
#[test]
fn probes_without_a_target_go_to_the_app_port() {
    let text = json!({
        "Spec": { "Probes": {
            "LivenessProbes": [{ "httpGet": { "port": 15901, "scheme": "HTTP", "path": "/osm-liveness-probe" } }],
            "StartupProbes": [{ "httpGet": { "port": 15903, "scheme": "HTTP",
                                "httpHeaders": [{ "name": "original-http-path", "value": "started?full=1" }] } }],
            "ReadinessProbes": [{ "httpGet": { "port": 15902, "scheme": "HTTP",
                                  "httpHeaders": [{ "name": "Original-Http-Port", "value": "http" }] } }],
        } },
        "Inbound": { "TrafficMatches": {
            "8080": { "Port": 8080, "Protocol": "http", "SourceIPRanges": { "10.0.0.0/8": { "mTLS": true } } },
            "9000": { "Port": 9000, "Protocol": "http" },
            "14001": { "Port": 14001, "Protocol": "http" },
            "22": { "Port": 22, "Protocol": "tcp" },
        } },
    })
    .to_string();
    let translation = translate(&text, &SidecarContext::default()).unwrap();
    let app = "127.0.0.1:14001".parse().unwrap();
    assert_eq!(
        translation.probes,
        Probes {
            liveness: ProbeTarget::Http { target: app, path: "/".into() },
            readiness: ProbeTarget::Http { target: app, path: "/".into() },
            startup: ProbeTarget::Http { target: app, path: "/started?full=1".into() },
        },
        "ports in numeric order; the last open to every source; a path gets its leading slash"
    );
    assert!(
        translation
            .warnings
            .iter()
            .any(|w| w.contains("ReadinessProbes[0].httpGet.httpHeaders[0]: Original-Http-Port")),
        "{:?}",
        translation.warnings
    );
}

/// Two services whose rules send to one local cluster: the cluster holds one
/// service limit, and the other service's different limit is reported.
#[test]
fn a_cluster_shared_by_two_limited_services_keeps_one_limit_and_says_so() {
    let limit = |requests: u32| json!({ "Local": { "Requests": requests, "StatTimeWindow": 1 } });
    let service = |requests: u32| {
        json!({
            "RouteRules": [{ "Path": ".*", "Type": "Regex", "TargetClusters": { "ns/app|8080|local": 100 } }],
            "RateLimit": limit(requests),
        })
    };
    let text = json!({
        "AllowedEndpoints": { "10.0.0.5": "client.ns" },
        "Inbound": {
            "TrafficMatches": { "8080": {
                "Port": 8080, "Protocol": "http",
                "HttpHostPort2Service": { "a": "a.ns.svc.cluster.local", "b": "b.ns.svc.cluster.local" },
                "HttpServiceRouteRules": { "a.ns.svc.cluster.local": service(10), "b.ns.svc.cluster.local": service(20) },
            } },
            "ClustersConfigs": { "ns/app|8080|local": { "127.0.0.1:8080": 100 } },
        },
    })
    .to_string();
    let translation = translate(&text, &SidecarContext::default()).unwrap();
    config_model::validate(&translation.config).unwrap();
    let config = serde_json::to_value(&translation.config).unwrap();
    assert_eq!(cluster(&config, "ns/app|8080|local")["rate_limit"]["requests"], 10);
    let warned = translation.warnings.iter().any(|w| {
        w.starts_with("Inbound.TrafficMatches.8080.HttpServiceRouteRules.b.ns.svc.cluster.local.RateLimit: cluster")
    });
    assert!(warned, "{:?}", translation.warnings);
}
