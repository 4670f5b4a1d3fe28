//! The generated 5,000-service mesh config (benches/support/scale_config.rs)
//! parses from JSON and from YAML, validates and compiles, and the compiled
//! table holds what the generator put in. No timing here: the figures come
//! from `benches/config_scale.rs` and `examples/config_scale.rs`.

#[path = "../benches/support/scale_config.rs"]
mod scale_config;

use std::collections::HashSet;
use std::sync::Arc;

use config_model::{Config, Format, ListenerProtocol};
use edgeplane::metrics::Metrics;
use edgeplane::route::compile::compile;
use edgeplane::route::RouteTable;
use edgeplane::state::Registry;

fn parse_and_validate(text: &str, format: Format) -> Config {
    let config = config_model::from_str(text, format).unwrap_or_else(|e| panic!("{format:?} parses: {e}"));
    if let Err(errors) = config_model::validate(&config) {
        let shown: Vec<String> = errors.iter().take(20).map(ToString::to_string).collect();
        panic!("{format:?}: {} validation errors, first: {shown:#?}", errors.len());
    }
    config
}

fn compile_text(text: &str, format: Format) -> RouteTable {
    let config = parse_and_validate(text, format);
    let hash = edgeplane::balance::hash64(text.as_bytes());
    compile(Arc::new(config), hash, 1, &Registry::default(), &Metrics::new())
        .unwrap_or_else(|e| panic!("{format:?} compiles: {e}"))
}

fn check_table(table: &RouteTable, services: usize) {
    let expected = scale_config::expected(services);
    assert_eq!(table.clusters.len(), expected.clusters, "clusters");
    let endpoints: usize = table.clusters.iter().map(|c| c.endpoints.len()).sum();
    assert_eq!(endpoints, expected.endpoints, "endpoints");
    let addrs: HashSet<_> = table.clusters.iter().flat_map(|c| c.endpoints.iter().map(|e| e.addr)).collect();
    assert_eq!(addrs.len(), expected.endpoints, "every endpoint address is distinct");
    let ids: HashSet<_> = table.clusters.iter().flat_map(|c| c.endpoints.iter().map(|e| e.id)).collect();
    assert_eq!(ids.len(), expected.endpoints, "every endpoint has its own state");

    let listeners: Vec<_> = table.listeners.iter().flatten().collect();
    assert_eq!(listeners.len(), expected.listeners, "listeners");
    let http: Vec<_> = listeners.iter().filter(|l| l.protocol == ListenerProtocol::Http).collect();
    assert_eq!(http.len(), 1, "one HTTP listener");
    assert_eq!(http[0].routes.len(), expected.http_routes, "HTTP routes");
    let splits = http[0].routes.iter().filter(|r| r.split.targets().len() == 2).count();
    assert_eq!(splits, expected.split_routes, "split routes");
    let tcp: Vec<_> = listeners.iter().filter(|l| l.protocol == ListenerProtocol::Tcp).collect();
    assert_eq!(tcp.len(), expected.tcp_listeners, "TCP listeners");
    for listener in tcp {
        assert_eq!(listener.tcp_route, Some(0), "{} relays through its route", listener.name);
    }
}

#[test]
fn five_thousand_services_parse_validate_and_compile_from_json_and_yaml() {
    let services = scale_config::SERVICES;
    let expected = scale_config::expected(services);
    assert_eq!(expected.endpoints, 20_000);
    assert_eq!(expected.clusters, 5_500);
    assert_eq!(expected.http_routes, 6_101);
    assert_eq!(expected.tcp_listeners, 10);

    let json = scale_config::json_text(services);
    let yaml = scale_config::yaml_text(services);
    check_table(&compile_text(&json, Format::Json), services);
    check_table(&compile_text(&yaml, Format::Yaml), services);

    // Both texts are the same config.
    assert_eq!(parse_and_validate(&json, Format::Json), parse_and_validate(&yaml, Format::Yaml));
}

#[test]
fn small_configs_hold_their_counts_too() {
    for services in [1, 2, 7, 11, 52, 501] {
        let json = scale_config::json_text(services);
        check_table(&compile_text(&json, Format::Json), services);
        let yaml = scale_config::yaml_text(services);
        check_table(&compile_text(&yaml, Format::Yaml), services);
    }
}

#[test]
fn the_generator_is_deterministic() {
    assert_eq!(scale_config::json_text(300), scale_config::json_text(300));
    assert_eq!(scale_config::yaml_text(300), scale_config::yaml_text(300));
}
