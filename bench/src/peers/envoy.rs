//! Envoy (a binary the user gives with `--peer envoy=PATH`): a static v3
//! bootstrap (`envoy.yaml`) and
//! `envoy -c FILE --concurrency N --log-level warn --disable-hot-restart`.
//!
//! Configured after Envoy's FAQ "What are best practices for benchmarking
//! Envoy?" (envoyproxy.io, `faq/performance/how_to_benchmark_envoy`):
//! `--concurrency` equal to the other peers' threads, circuit breaking out of
//! the way (every threshold 1e9, both priorities), `generate_request_id:
//! false`, the router's `dynamic_stats: false`, HTTP/2 stream concurrency the
//! same as the other peers', and nothing but the router in the filter chain.
//! The router's `x-envoy-*` headers are suppressed (the other peers add no
//! such headers); no access log. `--disable-hot-restart` means no shared
//! memory or domain socket, so several Envoys can run side by side without a
//! `--base-id` each (Envoy's CLI docs: the base id only names hot-restart
//! shared memory).
//!
//! HTTP: `http_connection_manager` with `codec_type: AUTO` (HTTP/1.1 and h2c
//! prior knowledge on one listener), one route to the STATIC cluster
//! `upstream`, which speaks HTTP/1.1 or HTTP/2 through
//! `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`. TCP and MQTT: `tcp_proxy`.
//! The admin server listens on `Topology::admin`.
//!
//! Not run here (no Envoy binary on this machine): the tests check the
//! document's structure only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{check_sides, Launch, Peer, Topology, Wire, H2_MAX_CONCURRENT_STREAMS, IDLE_TIMEOUT_SECS};

/// The bootstrap file's name inside the scenario's directory.
pub const CONFIG_FILE: &str = "envoy.yaml";

/// Circuit-breaker thresholds high enough never to trip.
const UNLIMITED: u64 = 1_000_000_000;

pub struct Envoy {
    program: PathBuf,
}

impl Envoy {
    pub fn new(program: PathBuf) -> Self {
        Self { program }
    }
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// The bootstrap as a JSON value (see [`config`] for the YAML text).
pub fn bootstrap(topology: &Topology) -> Value {
    let network_filter = if topology.downstream.is_http() {
        json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "bench",
                "codec_type": "AUTO",
                "generate_request_id": false,
                "http2_protocol_options": { "max_concurrent_streams": H2_MAX_CONCURRENT_STREAMS },
                "common_http_protocol_options": { "idle_timeout": format!("{IDLE_TIMEOUT_SECS}s") },
                "route_config": {
                    "name": "bench",
                    "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{
                            "match": { "prefix": "/" },
                            "route": { "cluster": "upstream", "timeout": "60s" }
                        }]
                    }]
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                        "dynamic_stats": false,
                        "suppress_envoy_headers": true
                    }
                }]
            }
        })
    } else {
        json!({
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "bench",
                "cluster": "upstream"
            }
        })
    };
    let thresholds: Vec<Value> = ["DEFAULT", "HIGH"]
        .into_iter()
        .map(|priority| {
            json!({
                "priority": priority,
                "max_connections": UNLIMITED,
                "max_pending_requests": UNLIMITED,
                "max_requests": UNLIMITED,
                "max_retries": UNLIMITED
            })
        })
        .collect();
    let mut cluster = json!({
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": { "thresholds": thresholds },
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(topology.upstream_addr) } }] }]
        }
    });
    if topology.upstream.is_http() {
        let explicit = if topology.upstream == Wire::Http2 {
            json!({ "http2_protocol_options": { "max_concurrent_streams": H2_MAX_CONCURRENT_STREAMS } })
        } else {
            json!({ "http_protocol_options": {} })
        };
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": { "idle_timeout": format!("{IDLE_TIMEOUT_SECS}s") },
                "explicit_http_config": explicit
            }
        });
    }
    json!({
        "admin": { "address": socket_address(topology.admin) },
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": socket_address(topology.listen),
                "filter_chains": [{ "filters": [network_filter] }]
            }],
            "clusters": [cluster]
        }
    })
}

/// Envoy's bootstrap for `topology`, as YAML.
pub fn config(topology: &Topology) -> String {
    // Plain scalars only: no folded (`>-`) blocks for the long `@type` URLs.
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    let yaml =
        serde_saphyr::to_string_with_options(&bootstrap(topology), options).expect("a JSON value always serializes");
    format!("# Envoy benchmark bootstrap, generated by edgeplane's bench crate\n{yaml}")
}

impl Peer for Envoy {
    fn name(&self) -> &'static str {
        "envoy"
    }

    fn program(&self) -> &Path {
        &self.program
    }

    fn supports(&self, topology: &Topology) -> Result<(), String> {
        check_sides(topology)?;
        if topology.tls.is_some() {
            return Err("the harness writes no TLS config for Envoy (TLS peers: edgeplane, nginx, HAProxy)".into());
        }
        Ok(())
    }

    fn launch(&self, topology: &Topology, dir: &Path) -> Launch {
        let path = dir.join(CONFIG_FILE);
        let args = vec![
            "-c".into(),
            path.display().to_string(),
            "--concurrency".into(),
            topology.threads.to_string(),
            "--log-level".into(),
            "warn".into(),
            "--disable-hot-restart".into(),
        ];
        Launch { program: self.program.clone(), args, files: vec![(path, config(topology))] }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn tls_is_refused() {
        let reason = Envoy::new("envoy".into()).supports(&tls_topology(&fake_tls_files())).unwrap_err();
        assert!(reason.contains("no TLS config"), "{reason}");
    }

    /// The YAML as Envoy would read it, back as a JSON value.
    fn parse(yaml: &str) -> Value {
        serde_saphyr::from_str(yaml).unwrap_or_else(|error| panic!("{error}\n{yaml}"))
    }

    fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
        path.split('.').fold(value, |value, key| match key.parse::<usize>() {
            Ok(index) => &value[index],
            Err(_) => &value[key],
        })
    }

    #[test]
    fn yaml_round_trips() {
        for topology in all_topologies() {
            let yaml = config(&topology);
            assert_eq!(parse(&yaml), bootstrap(&topology), "{yaml}");
            assert!(!yaml.contains(": >") && !yaml.contains(": |"), "plain scalars only: {yaml}");
        }
    }

    #[test]
    fn http_bootstrap_follows_the_benchmarking_faq() {
        let topology = topology(Wire::Http1, Wire::Http1, 2);
        let doc = parse(&config(&topology));
        assert_eq!(at(&doc, "admin.address.socket_address.port_value"), 18099);
        let listener = at(&doc, "static_resources.listeners.0");
        assert_eq!(at(listener, "address.socket_address.address"), "127.0.0.1");
        assert_eq!(at(listener, "address.socket_address.port_value"), 18080);
        let filter = at(listener, "filter_chains.0.filters.0");
        assert_eq!(filter["name"], "envoy.filters.network.http_connection_manager");
        let hcm = &filter["typed_config"];
        assert_eq!(hcm["codec_type"], "AUTO");
        assert_eq!(hcm["generate_request_id"], false);
        assert!(hcm.get("access_log").is_none());
        assert!(hcm.get("tracing").is_none());
        assert_eq!(at(hcm, "http2_protocol_options.max_concurrent_streams"), H2_MAX_CONCURRENT_STREAMS);
        assert_eq!(at(hcm, "route_config.virtual_hosts.0.routes.0.route.cluster"), "upstream");
        let filters = hcm["http_filters"].as_array().unwrap();
        assert_eq!(filters.len(), 1, "the router only");
        assert_eq!(filters[0]["name"], "envoy.filters.http.router");
        assert_eq!(at(&filters[0], "typed_config.dynamic_stats"), false);
        let cluster = at(&doc, "static_resources.clusters.0");
        assert_eq!(cluster["name"], "upstream");
        assert_eq!(cluster["type"], "STATIC");
        for threshold in at(cluster, "circuit_breakers.thresholds").as_array().unwrap() {
            for key in ["max_connections", "max_pending_requests", "max_requests", "max_retries"] {
                assert!(threshold[key].as_u64().unwrap() >= 1_000_000, "{key}");
            }
        }
        let endpoint = at(cluster, "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address");
        assert_eq!(endpoint["address"], "127.0.0.1");
        assert_eq!(endpoint["port_value"], 19090);
        let options =
            &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(options["explicit_http_config"].get("http_protocol_options").is_some());
        assert!(options["explicit_http_config"].get("http2_protocol_options").is_none());
    }

    #[test]
    fn http2_upstream_is_explicit() {
        let doc = parse(&config(&topology(Wire::Http1, Wire::Http2, 1)));
        let options = &at(&doc, "static_resources.clusters.0.typed_extension_protocol_options")
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(options["@type"], "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
        assert_eq!(
            at(options, "explicit_http_config.http2_protocol_options.max_concurrent_streams"),
            H2_MAX_CONCURRENT_STREAMS
        );
    }

    #[test]
    fn tcp_uses_tcp_proxy() {
        for wire in [Wire::Tcp, Wire::Mqtt] {
            let doc = parse(&config(&topology(wire, wire, 1)));
            let filter = at(&doc, "static_resources.listeners.0.filter_chains.0.filters.0");
            assert_eq!(filter["name"], "envoy.filters.network.tcp_proxy");
            assert_eq!(at(filter, "typed_config.cluster"), "upstream");
            assert!(at(&doc, "static_resources.clusters.0").get("typed_extension_protocol_options").is_none());
        }
    }

    #[test]
    fn ipv6_addresses_are_split() {
        let mut topology = topology(Wire::Http1, Wire::Http1, 1);
        topology.listen = "[::1]:18080".parse().unwrap();
        let doc = parse(&config(&topology));
        assert_eq!(at(&doc, "static_resources.listeners.0.address.socket_address.address"), "::1");
    }

    #[test]
    fn launch_matches_the_other_peers_threads() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Envoy::new("/opt/envoy".into()).launch(&topology(Wire::Http2, Wire::Http1, 4), dir.path());
        let path = dir.path().join(CONFIG_FILE);
        assert_eq!(
            launch.args,
            ["-c", path.to_str().unwrap(), "--concurrency", "4", "--log-level", "warn", "--disable-hot-restart"]
        );
        assert_eq!(launch.files[0].0, path);
    }
}
