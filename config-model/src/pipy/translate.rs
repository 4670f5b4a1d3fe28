//! PipyConf → edgeplane config. The translation builds the edgeplane config
//! as JSON and reads it with the ordinary loader, so the result has exactly
//! the defaults and checks of a hand-written config.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::conf::*;
use super::{SidecarContext, Translation};
use crate::LoadError;

/// The methods osm-edge's sidecar serves on a rule without `Methods`.
const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"];
/// osm-edge's answer to a request no inbound rule allows (`inbound-http-default.js`).
const ACCESS_DENIED: &str = "Access denied";
/// osm-edge's degraded answer (`outbound-circuit-breaker.js`).
const DEGRADED_BODY: &str = "Coming soon ...";

/// Parses a PipyConf and translates it.
pub fn translate(text: &str, context: &SidecarContext) -> Result<Translation, LoadError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let conf: PipyConf = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| LoadError::Parse {
        at: error.path().to_string(),
        message: format!("not a PipyConf: {}", error.into_inner()),
    })?;
    let mut translator =
        Translator { context, warnings: Vec::new(), clusters: BTreeMap::new(), retries: BTreeMap::new() };
    let value = translator.config(&conf);
    let probes = super::probes::resolve(conf.spec.probes.as_ref(), conf.inbound.as_ref(), &mut |w| translator.warn(w));
    let config = crate::from_json_str(&value.to_string()).map_err(|error| LoadError::Parse {
        at: String::new(),
        message: format!("the translated PipyConf does not load ({error}); please report this"),
    })?;
    Ok(Translation { config, warnings: translator.warnings, probes })
}

/// Response headers osm-edge's inbound sidecars add for the caller's
/// sidecar (one header in current releases, four in older ones).
const OSM_STATS_HEADERS: [&str; 5] =
    ["osm-stats", "osm-stats-namespace", "osm-stats-kind", "osm-stats-name", "osm-stats-pod"];

struct Translator<'a> {
    context: &'a SidecarContext,
    warnings: Vec<String>,
    /// Edgeplane clusters by name.
    clusters: BTreeMap<String, Value>,
    /// Outbound retry policies by cluster, for the routes to those clusters.
    retries: BTreeMap<String, Value>,
}

impl Translator<'_> {
    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    fn extra(&mut self, path: &str, extra: &Extra) {
        for key in extra.keys() {
            let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            self.warn(format!("{at}: unknown field, ignored"));
        }
    }

    fn config(&mut self, conf: &PipyConf) -> Value {
        self.extra("", &conf.extra);
        self.spec(&conf.spec);
        if conf.forward.as_ref().is_some_and(|v| !v.is_null()) {
            self.warn("Forward: egress gateways are not supported; egress goes direct".into());
        }
        if conf.dns_resolve_db.as_ref().is_some_and(|v| !v.is_null()) {
            self.warn("DNSResolveDB: the local DNS proxy is not supported".into());
        }
        for (chain, modules) in &conf.chains {
            for module in modules.iter().filter(|m| !m.starts_with("modules/")) {
                self.warn(format!("Chains.{chain}: plugin {module:?} is not run (only the built-in modules are)"));
            }
        }
        let mut config = Map::new();
        if let Some(version) = &conf.version {
            let version = version.as_str().map(str::to_owned).unwrap_or_else(|| version.to_string());
            config.insert("version".into(), json!(version));
        }
        let mesh_tls = match &conf.certificate {
            Some(cert) if !cert.cert_chain.is_empty() && !cert.private_key.is_empty() => {
                self.extra("Certificate", &cert.extra);
                config.insert(
                    "identity".into(),
                    json!({
                        "cert": { "pem": cert.cert_chain },
                        "key": { "pem": cert.private_key },
                        "ca": { "pem": if cert.issuing_ca.is_empty() { &cert.cert_chain } else { &cert.issuing_ca } },
                    }),
                );
                true
            }
            Some(_) => {
                self.warn("Certificate: no CertChain or PrivateKey; sidecar traffic is plaintext".into());
                false
            }
            None => false,
        };
        let timeout = conf.spec.sidecar_timeout.filter(|t| *t > 0.0).map(seconds);
        let mut listeners = Vec::new();
        if let Some(outbound) = &conf.outbound {
            listeners.push(self.outbound(outbound, conf.spec.traffic.enable_egress, mesh_tls, timeout.as_ref()));
        } else if conf.spec.traffic.enable_egress {
            listeners.push(json!({
                "name": "outbound", "bind": self.context.outbound_bind,
                "transparent": { "unmatched": "passthrough" },
            }));
        }
        if let Some(inbound) = &conf.inbound {
            if !inbound.traffic_matches.is_empty() {
                listeners.push(self.inbound(inbound, conf.allowed_endpoints.as_ref(), mesh_tls, timeout.as_ref()));
            }
        }
        config.insert("listeners".into(), Value::Array(listeners));
        config.insert("clusters".into(), Value::Array(std::mem::take(&mut self.clusters).into_values().collect()));
        Value::Object(config)
    }

    fn spec(&mut self, spec: &Spec) {
        self.extra("Spec", &spec.extra);
        self.extra("Spec.Traffic", &spec.traffic.extra);
        for (flag, value) in &spec.feature_flags {
            if value.as_bool() == Some(true) {
                self.warn(format!("Spec.FeatureFlags.{flag}: not supported, ignored"));
            }
        }
        if spec.cluster_set.as_ref().is_some_and(|set| !set.is_empty()) {
            self.warn("Spec.ClusterSet: multicluster identity labels are not used".into());
        }
        if spec.local_dns_proxy.as_ref().is_some_and(|v| !v.is_null()) {
            self.warn("Spec.LocalDNSProxy: the local DNS proxy is not supported".into());
        }
    }

    fn outbound(&mut self, outbound: &Outbound, egress: bool, mesh_tls: bool, timeout: Option<&String>) -> Value {
        self.extra("Outbound", &outbound.extra);
        for (name, cluster) in &outbound.clusters_configs {
            if let Some(retry) = &cluster.retry_policy {
                let path = format!("Outbound.ClustersConfigs.{name}.RetryPolicy");
                self.extra(&path, &retry.extra);
                if let Some(value) = self.retry(&path, retry) {
                    self.retries.insert(name.clone(), value);
                }
            }
        }
        // The sidecar picks entries by original port, then the first whose
        // ranges hold the original address, then one without ranges (egress):
        // all ranged entries come first so that order holds across ports.
        let mut ranged = Vec::new();
        let mut unranged = Vec::new();
        for (port_key, entries) in &outbound.traffic_matches {
            for (index, entry) in entries.iter().enumerate() {
                let path = format!("Outbound.TrafficMatches.{port_key}[{index}]");
                self.extra(&path, &entry.extra);
                let Some(port) = entry.port.or_else(|| port_key.parse().ok()) else {
                    self.warn(format!("{path}: no port; entry ignored"));
                    continue;
                };
                let destination = if entry.destination_ip_ranges.is_empty() {
                    json!({ "ports": [port] })
                } else {
                    json!({ "addresses": entry.destination_ip_ranges.keys().collect::<Vec<_>>(), "ports": [port] })
                };
                let routes = self.outbound_entry(&path, entry, port, &destination, timeout);
                if entry.destination_ip_ranges.is_empty() {
                    unranged.extend(routes);
                } else {
                    ranged.extend(routes);
                }
            }
        }
        ranged.extend(unranged);
        // Clusters: endpoints and policies from ClustersConfigs.
        for (name, cluster) in &outbound.clusters_configs {
            let path = format!("Outbound.ClustersConfigs.{name}");
            let value = self.outbound_cluster(&path, name, cluster, mesh_tls);
            if let Some(existing) = self.clusters.get_mut(name) {
                merge(existing, value);
            } else {
                self.warn(format!("{path}: no route sends traffic to it"));
            }
        }
        self.fill_missing_clusters("Outbound");
        json!({
            "name": "outbound",
            "bind": self.context.outbound_bind,
            "transparent": { "unmatched": if egress { "passthrough" } else { "refuse" } },
            "routes": ranged,
        })
    }

    fn outbound_entry(
        &mut self,
        path: &str,
        entry: &OutboundMatch,
        port: u16,
        destination: &Value,
        timeout: Option<&String>,
    ) -> Vec<Value> {
        let mut routes = Vec::new();
        match entry.protocol.as_str() {
            "http" | "grpc" => {
                let protocol = if entry.protocol == "grpc" { "http2" } else { "http1" };
                let single = entry.http_service_route_rules.len() == 1;
                for (service, rules) in &entry.http_service_route_rules {
                    let rules_path = format!("{path}.HttpServiceRouteRules.{service}");
                    self.extra(&rules_path, &rules.extra);
                    self.service_extras(&rules_path, rules);
                    let hosts = hosts_of(&entry.http_host_port2_service, service);
                    let identity = rules.service_identity.clone();
                    for (index, rule) in rules.route_rules.iter().enumerate() {
                        let rule_path = format!("{rules_path}.RouteRules[{index}]");
                        let Some(split) = self.split(&rule_path, &rule.target_clusters, protocol) else { continue };
                        let mut base = self.rule_match(&rule_path, rule);
                        base.insert("destination".into(), destination.clone());
                        let mut route = Map::new();
                        route.insert("name".into(), json!(format!("outbound/{port}/{service}/{index}")));
                        insert_split(&mut route, split);
                        if let Some(timeout) = timeout {
                            route.insert("timeout".into(), json!(timeout));
                        }
                        if let Some(identity) = &identity {
                            route.insert("request_headers".into(), json!({ "set": { "serviceidentity": identity } }));
                        }
                        // The upstream sidecar's identity header is for this sidecar's stats, not the app.
                        route.insert("response_headers".into(), json!({ "remove": OSM_STATS_HEADERS }));
                        if let Some(retry) = self.retry_of(&rule.target_clusters) {
                            route.insert("retry".into(), retry);
                        }
                        if let Some(limit) = self.http_rate_limit(&rule_path, rule.rate_limit.as_ref()) {
                            route.insert("rate_limit".into(), limit);
                        }
                        routes.extend(per_host(route, base, &hosts, single));
                    }
                }
            }
            "tcp" | "https" | "tcp-server-first" => {
                if entry.protocol == "https" && entry.server_names.as_ref().is_some_and(|names| !names.is_empty()) {
                    self.warn(format!("{path}.ServerNames: egress is matched by address and port, not by SNI"));
                }
                let Some(rules) = &entry.tcp_service_route_rules else {
                    if entry.allowed_egress_traffic == Some(true) {
                        // Allowed egress without a cluster: relayed to the original destination.
                        return routes;
                    }
                    self.warn(format!("{path}: a {} entry without TcpServiceRouteRules; ignored", entry.protocol));
                    return routes;
                };
                self.extra(&format!("{path}.TcpServiceRouteRules"), &rules.extra);
                if rules.plugins.as_ref().is_some_and(|p| !p.is_null()) {
                    self.warn(format!("{path}.TcpServiceRouteRules.Plugins: plugins are not run"));
                }
                if entry.egress_forward_gateway.as_ref().is_some_and(|p| !p.is_null()) {
                    self.warn(format!("{path}.EgressForwardGateway: egress gateways are not supported"));
                }
                if let Some(split) = self.split(path, &rules.target_clusters, "http1") {
                    let mut route = Map::new();
                    route.insert("name".into(), json!(format!("outbound/{port}/tcp/{}", routes.len())));
                    route.insert("match".into(), json!({ "destination": destination }));
                    insert_split(&mut route, split);
                    routes.push(Value::Object(route));
                }
            }
            other => self.warn(format!("{path}.Protocol: {other:?} is not supported; entry ignored")),
        }
        routes
    }

    fn outbound_cluster(&mut self, path: &str, name: &str, cluster: &OutboundCluster, mesh_tls: bool) -> Value {
        self.extra(path, &cluster.extra);
        let any_weighted = cluster.endpoints.values().any(|a| a.as_ref().and_then(|a| a.weight).unwrap_or(0) > 0);
        let mut endpoints = Vec::new();
        for (address, attributes) in &cluster.endpoints {
            let weight = attributes.as_ref().and_then(|a| a.weight).unwrap_or(0);
            if let Some(attributes) = attributes {
                self.extra(&format!("{path}.Endpoints.{address}"), &attributes.extra);
                if attributes.path.is_some() || attributes.key.is_some() {
                    self.warn(format!(
                        "{path}.Endpoints.{address}: multicluster Key/Path are not sent; the endpoint is dialled directly"
                    ));
                }
            }
            // Weight 0 marks multicluster failover endpoints while local ones
            // exist: they take traffic only when no weighted endpoint is healthy.
            let (weight, priority) = match weight {
                0 if any_weighted => (100, 1),
                0 => (100, 0),
                w => (w.min(crate::MAX_WEIGHT), 0),
            };
            endpoints.push(json!({ "address": address, "weight": weight, "priority": priority }));
        }
        let mut value = Map::new();
        value.insert("name".into(), json!(name));
        value.insert("endpoints".into(), Value::Array(endpoints));
        if any_weighted && cluster.endpoints.values().any(|a| a.as_ref().and_then(|a| a.weight).unwrap_or(0) == 0) {
            // Failover endpoints take traffic when the weighted ones are
            // unhealthy: passive health (failed connections, 5xx) tells.
            value.insert("outlier_detection".into(), json!({}));
        }
        if mesh_tls && is_mesh_cluster(name) {
            value.insert("tls".into(), json!({ "mesh": true }));
        }
        if let Some(settings) = &cluster.connection_settings {
            self.extra(&format!("{path}.ConnectionSettings"), &settings.extra);
            let mut limits = Map::new();
            if let Some(tcp) = &settings.tcp {
                self.extra(&format!("{path}.ConnectionSettings.tcp"), &tcp.extra);
                if let Some(max) = tcp.max_connections {
                    limits.insert("max_connections".into(), json!(max));
                }
                if let Some(timeout) = tcp.connect_timeout.filter(|t| *t > 0.0) {
                    value.insert("connect_timeout".into(), json!(seconds(timeout)));
                }
            }
            if let Some(http) = &settings.http {
                let http_path = format!("{path}.ConnectionSettings.http");
                self.extra(&http_path, &http.extra);
                for (field, setting) in [
                    ("max_requests", http.max_requests),
                    ("max_pending_requests", http.max_pending_requests),
                    ("max_retries", http.max_retries),
                    ("max_requests_per_connection", http.max_requests_per_connection),
                ] {
                    if let Some(setting) = setting {
                        limits.insert(field.into(), json!(setting));
                    }
                }
                if let Some(breaking) = &http.circuit_breaking {
                    self.extra(&format!("{http_path}.CircuitBreaking"), &breaking.extra);
                    value.insert("breaker".into(), breaker(breaking));
                }
            }
            if !limits.is_empty() {
                value.insert("limits".into(), Value::Object(limits));
            }
        }
        if cluster.source_cert.as_ref().is_some_and(|v| !v.is_null()) {
            self.warn(format!("{path}.SourceCert: egress TLS origination is not supported"));
        }
        Value::Object(value)
    }

    fn retry_of(&mut self, targets: &BTreeMap<String, u32>) -> Option<Value> {
        // Retries are per cluster in osm-edge and per route here: a route
        // takes the policy of its target (of the first, if several differ).
        targets.keys().find_map(|name| self.retries.get(name).cloned())
    }

    fn inbound(
        &mut self,
        inbound: &Inbound,
        allowed: Option<&BTreeMap<String, String>>,
        mesh_tls: bool,
        timeout: Option<&String>,
    ) -> Value {
        self.extra("Inbound", &inbound.extra);
        let known_sources: Vec<String> = allowed.map(|a| a.keys().cloned().collect()).unwrap_or_default();
        let mut routes = Vec::new();
        let mut plaintext_sources = BTreeSet::new();
        let mut connection_limit = None;
        for (port_key, matched) in &inbound.traffic_matches {
            let path = format!("Inbound.TrafficMatches.{port_key}");
            self.extra(&path, &matched.extra);
            let Some(port) = matched.port.or_else(|| port_key.parse().ok()) else {
                self.warn(format!("{path}: no port; ignored"));
                continue;
            };
            let destination = json!({ "ports": [port] });
            // Ingress and other ranged sources: allowed from their CIDRs,
            // for any host, plaintext when the range says mTLS is off.
            let mut ingress_sources = Vec::new();
            let mut principals = BTreeSet::new();
            for (cidr, range) in &matched.source_ip_ranges {
                ingress_sources.push(cidr.clone());
                match range {
                    Some(range) => {
                        self.extra(&format!("{path}.SourceIPRanges.{cidr}"), &range.extra);
                        if !range.mtls {
                            plaintext_sources.insert(cidr.clone());
                        }
                        if range.skip_client_cert_validation {
                            self.warn(format!(
                                "{path}.SourceIPRanges.{cidr}.SkipClientCertValidation: client certificates are always verified"
                            ));
                        }
                        principals.extend(range.authenticated_principals.iter().cloned());
                    }
                    None => {
                        plaintext_sources.insert(cidr.clone());
                    }
                }
            }
            match matched.protocol.as_str() {
                "http" | "grpc" => {
                    let protocol = if matched.protocol == "grpc" { "http2" } else { "http1" };
                    let single = matched.http_service_route_rules.len() == 1;
                    for (service, rules) in &matched.http_service_route_rules {
                        let rules_path = format!("{path}.HttpServiceRouteRules.{service}");
                        self.extra(&rules_path, &rules.extra);
                        self.service_extras(&rules_path, rules);
                        let hosts = hosts_of(&matched.http_host_port2_service, service);
                        let sources: Vec<String> = match &rules.allowed_endpoints {
                            Some(endpoints) => endpoints.keys().cloned().collect(),
                            None => known_sources.clone(),
                        };
                        let service_limit = self.http_rate_limit(&rules_path, rules.rate_limit.as_ref());
                        let stats_identity = self.stats_identity();
                        // Rules for named identities first: osm-edge looks a
                        // request up by its `serviceidentity` header before the
                        // rules open to every identity.
                        let mut ordered: Vec<(usize, &RouteRule)> = rules.route_rules.iter().enumerate().collect();
                        ordered.sort_by_key(|(_, rule)| rule.allowed_services.is_none());
                        for (index, rule) in ordered {
                            let rule_path = format!("{rules_path}.RouteRules[{index}]");
                            let Some(split) = self.split(&rule_path, &rule.target_clusters, protocol) else {
                                continue;
                            };
                            if let Some(limit) = &service_limit {
                                self.service_rate_limit(&rules_path, &split, limit);
                            }
                            let mut base = self.rule_match(&rule_path, rule);
                            if let Some(services) = &rule.allowed_services {
                                base.insert("headers".into(), merge_header(base.get("headers"), services));
                            }
                            base.insert("destination".into(), destination.clone());
                            let mut route = Map::new();
                            insert_split(&mut route, split);
                            if let Some(timeout) = timeout {
                                route.insert("timeout".into(), json!(timeout));
                            }
                            if let Some(limit) = self.http_rate_limit(&rule_path, rule.rate_limit.as_ref()) {
                                route.insert("rate_limit".into(), limit);
                            }
                            if let Some(identity) = &stats_identity {
                                route.insert("response_headers".into(), json!({ "set": { "osm-stats": identity } }));
                            }
                            if !sources.is_empty() {
                                let mut from_pods = base.clone();
                                from_pods.insert("source".into(), json!({ "addresses": sources }));
                                let mut named = route.clone();
                                named.insert("name".into(), json!(format!("inbound/{port}/{service}/{index}")));
                                routes.extend(per_host(named, from_pods, &hosts, single));
                            }
                            // Ranged sources (ingress) carry no `serviceidentity`:
                            // they reach only the rules open to every identity.
                            if !ingress_sources.is_empty() && rule.allowed_services.is_none() {
                                let mut from_ranges = base.clone();
                                from_ranges.insert("source".into(), json!({ "addresses": ingress_sources }));
                                let mut named = route.clone();
                                named.insert("name".into(), json!(format!("inbound/{port}/{service}/{index}/ranges")));
                                if !principals.is_empty() {
                                    named.insert("access".into(), json!({ "allow": principals }));
                                }
                                named.insert("match".into(), Value::Object(from_ranges));
                                routes.push(Value::Object(named));
                            }
                        }
                    }
                    // What no rule allows gets osm-edge's 403 (from a known source).
                    let mut everyone: Vec<String> = known_sources.clone();
                    everyone.extend(ingress_sources.iter().cloned());
                    if !everyone.is_empty() {
                        routes.push(json!({
                            "name": format!("inbound/{port}/denied"),
                            "match": { "destination": destination, "source": { "addresses": everyone } },
                            "direct_response": { "status": 403, "body": ACCESS_DENIED },
                        }));
                    }
                }
                "tcp" | "tcp-server-first" => {
                    let Some(rules) = &matched.tcp_service_route_rules else {
                        self.warn(format!("{path}: a tcp match without TcpServiceRouteRules; ignored"));
                        continue;
                    };
                    self.extra(&format!("{path}.TcpServiceRouteRules"), &rules.extra);
                    if rules.plugins.as_ref().is_some_and(|p| !p.is_null()) {
                        self.warn(format!("{path}.TcpServiceRouteRules.Plugins: plugins are not run"));
                    }
                    let Some(split) = self.split(&path, &rules.target_clusters, "http1") else { continue };
                    let mut sources = known_sources.clone();
                    sources.extend(ingress_sources.iter().cloned());
                    let mut route = Map::new();
                    route.insert("name".into(), json!(format!("inbound/{port}/tcp")));
                    let mut matches = Map::new();
                    matches.insert("destination".into(), destination.clone());
                    if !sources.is_empty() {
                        matches.insert("source".into(), json!({ "addresses": sources }));
                    }
                    route.insert("match".into(), Value::Object(matches));
                    insert_split(&mut route, split);
                    if !sources.is_empty() {
                        routes.push(Value::Object(route));
                    }
                }
                other => self.warn(format!("{path}.Protocol: {other:?} is not supported; ignored")),
            }
            if let Some(limit) = &matched.rate_limit {
                self.extra(&format!("{path}.RateLimit"), &limit.extra);
                if let Some(local) = &limit.local {
                    self.extra(&format!("{path}.RateLimit.Local"), &local.extra);
                    let value = json!({
                        "connections": local.connections,
                        "per": seconds(local.stat_time_window.filter(|s| *s > 0.0).unwrap_or(1.0)),
                        "burst": local.burst.filter(|b| *b > 0),
                    });
                    // A TCP port's limit is its route's, as osm-edge limits per port.
                    let tcp_route = format!("inbound/{port}/tcp");
                    let route = routes.iter_mut().find(|r| r["name"] == tcp_route.as_str());
                    if let Some(route) = route {
                        route["connection_rate_limit"] = value;
                    } else if connection_limit.replace(value).is_some() {
                        self.warn(format!(
                            "{path}.RateLimit: connection limits of HTTP ports are per listener here; the last \
                             port's limit applies to all of them"
                        ));
                    }
                }
            }
        }
        for (name, endpoints) in &inbound.clusters_configs {
            let endpoints: Vec<Value> = endpoints
                .iter()
                .map(|(address, weight)| json!({ "address": address, "weight": (*weight).clamp(1, crate::MAX_WEIGHT) }))
                .collect();
            match self.clusters.get_mut(name) {
                Some(existing) => {
                    existing["endpoints"] = Value::Array(endpoints);
                }
                None => self.warn(format!("Inbound.ClustersConfigs.{name}: no route sends traffic to it")),
            }
        }
        self.fill_missing_clusters("Inbound");
        let mut listener = json!({
            "name": "inbound",
            "bind": self.context.inbound_bind,
            "transparent": { "unmatched": "refuse" },
            "routes": routes,
        });
        if mesh_tls {
            listener["tls"] = json!({ "mesh": true, "plaintext_sources": plaintext_sources });
        }
        if let Some(limit) = connection_limit {
            listener["connection_rate_limit"] = limit;
        }
        if allowed.is_none() {
            self.warn("AllowedEndpoints: absent, so no client may use the inbound listener (as in osm-edge)".into());
        }
        listener
    }

    /// Clusters a route names but ClustersConfigs does not define: kept with
    /// no endpoints (their requests get 503), reported.
    fn fill_missing_clusters(&mut self, side: &str) {
        let missing: Vec<String> =
            self.clusters.iter().filter(|(_, v)| v.get("endpoints").is_none()).map(|(k, _)| k.clone()).collect();
        for name in missing {
            self.warn(format!("{side}: cluster {name:?} is routed to but not in ClustersConfigs"));
            self.clusters.get_mut(&name).expect("listed")["endpoints"] = json!([]);
        }
    }

    fn service_extras(&mut self, path: &str, rules: &ServiceRules) {
        if rules.plugins.as_ref().is_some_and(|p| !p.is_null()) {
            self.warn(format!("{path}.Plugins: plugins are not run"));
        }
        if rules.egress_forward_gateway.as_ref().is_some_and(|p| !p.is_null()) {
            self.warn(format!("{path}.EgressForwardGateway: egress gateways are not supported"));
        }
    }

    /// The `osm-stats` value the inbound side puts on responses, as
    /// osm-edge's sidecar does (`namespace,kind,name,pod`), so the caller's
    /// sidecar can label its request durations by destination. None (with
    /// a warning, once) when the pod's environment would not make a header value.
    fn stats_identity(&mut self) -> Option<String> {
        let context = self.context;
        let identity = [&context.namespace, &context.controller_kind, &context.service_account, &context.pod_name]
            .map(String::as_str)
            .join(",");
        if identity.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Some(identity);
        }
        if !self.warnings.iter().any(|w| w.starts_with("osm-stats:")) {
            self.warn(format!("osm-stats: {identity:?} is not a header value; responses carry no osm-stats"));
        }
        None
    }

    /// A service's limit, shared by all its rules as osm-edge's one bucket
    /// per service: the `rate_limit` of the local clusters its rules send
    /// to, which only that service's routes use. Route limits apply on top.
    fn service_rate_limit(&mut self, service_path: &str, split: &[(String, u32)], limit: &Value) {
        for (cluster, _) in split {
            let Some(entry) = self.clusters.get_mut(cluster) else { continue };
            match entry.get("rate_limit") {
                None => entry["rate_limit"] = limit.clone(),
                Some(existing) if existing == limit => {}
                Some(_) => self.warn(format!(
                    "{service_path}.RateLimit: cluster {cluster:?} also serves another service with its own \
                     limit; that limit applies to both"
                )),
            }
        }
    }

    /// The split of a rule's TargetClusters; registers the clusters.
    fn split(&mut self, path: &str, targets: &BTreeMap<String, u32>, protocol: &str) -> Option<Vec<(String, u32)>> {
        let split: Vec<(String, u32)> =
            targets.iter().filter(|(_, w)| **w > 0).map(|(c, w)| (c.clone(), (*w).min(crate::MAX_WEIGHT))).collect();
        if split.is_empty() {
            self.warn(format!("{path}.TargetClusters: no cluster with a weight; rule ignored"));
            return None;
        }
        for (cluster, _) in &split {
            let entry = self.clusters.entry(cluster.clone()).or_insert_with(|| json!({ "name": cluster }));
            if protocol == "http2" {
                entry["protocol"] = json!("http2");
            }
        }
        Some(split)
    }

    /// The HTTP criteria of a rule, with osm-edge's semantics: regexes are
    /// searched, not anchored; no methods means the six common ones.
    fn rule_match(&mut self, path: &str, rule: &RouteRule) -> Map<String, Value> {
        self.extra(path, &rule.extra);
        let mut matches = Map::new();
        let pattern = rule.path.clone().unwrap_or_else(|| ".*".into());
        match rule.kind.as_deref().unwrap_or("Regex") {
            "Exact" => {
                matches.insert("path".into(), json!({ "exact": pattern }));
            }
            "Prefix" => {
                matches.insert("path".into(), json!({ "prefix": pattern }));
            }
            kind => {
                if kind != "Regex" {
                    self.warn(format!("{path}.Type: {kind:?} is unknown; read as Regex"));
                }
                if !matches!(pattern.as_str(), ".*" | "" | "/.*") {
                    matches.insert("path".into(), json!({ "regex": searched(&pattern) }));
                }
            }
        }
        if !rule.headers.is_empty() {
            let headers: Map<String, Value> = rule
                .headers
                .iter()
                .map(|(name, regex)| (name.to_ascii_lowercase(), json!({ "regex": searched(regex) })))
                .collect();
            matches.insert("headers".into(), Value::Object(headers));
        }
        let methods: Vec<String> = match &rule.methods {
            Some(methods) if !methods.is_empty() && !methods.iter().any(|m| m == "*") => {
                methods.iter().map(|m| m.to_ascii_uppercase()).collect()
            }
            _ => DEFAULT_METHODS.iter().map(|m| (*m).to_owned()).collect(),
        };
        matches.insert("method".into(), json!(methods));
        matches
    }

    fn http_rate_limit(&mut self, path: &str, holder: Option<&HttpRateLimitHolder>) -> Option<Value> {
        let holder = holder?;
        self.extra(&format!("{path}.RateLimit"), &holder.extra);
        let local = holder.local.as_ref()?;
        self.extra(&format!("{path}.RateLimit.Local"), &local.extra);
        if local.requests == 0 {
            self.warn(format!("{path}.RateLimit.Local.Requests: 0; no limit applied"));
            return None;
        }
        let headers: Map<String, Value> =
            local.response_headers_to_add.iter().map(|h| (h.name.clone(), json!(h.value))).collect();
        Some(json!({
            "requests": local.requests,
            "per": seconds(local.stat_time_window.filter(|s| *s > 0.0).unwrap_or(1.0)),
            "burst": local.burst.filter(|b| *b > 0),
            "status": local.response_status_code.filter(|s| (400..=599).contains(s)).unwrap_or(429),
            "response_headers": headers,
        }))
    }
}

impl Translator<'_> {
    fn retry(&mut self, path: &str, retry: &RetryPolicy) -> Option<Value> {
        let retries = retry.num_retries.unwrap_or(1);
        if retries == 0 {
            return None;
        }
        // osm-edge's sidecar replays a failed request (any method) when the
        // connection fails or the status is listed in RetryOn.
        let mut retry_on = vec!["connect-failure".to_owned(), "reset".to_owned()];
        let mut codes = Vec::new();
        for item in retry.retry_on.as_deref().unwrap_or("5xx").split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "5xx" => retry_on.push("5xx".into()),
                "gateway-error" => retry_on.push("gateway-error".into()),
                "connect-failure" | "reset" => {}
                code => match code.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => codes.push(code),
                    _ => self.warn(format!("{path}.RetryOn: {code:?} is not supported")),
                },
            }
        }
        if !codes.is_empty() {
            retry_on.push("retriable-status-codes".into());
        }
        retry_on.dedup();
        let mut value = json!({
            "attempts": retries,
            "retry_on": retry_on,
            "retry_non_idempotent": true,
        });
        if !codes.is_empty() {
            value["status_codes"] = json!(codes);
        }
        if let Some(per_try) = retry.per_try_timeout.filter(|t| *t > 0.0) {
            value["per_try_timeout"] = json!(seconds(per_try));
        }
        if let Some(base) = retry.retry_backoff_base_interval.filter(|t| *t > 0.0) {
            // The sidecar caps the base at 1 s and the delay at ten bases.
            let base = base.min(1.0);
            value["backoff_base"] = json!(seconds(base));
            value["max_backoff"] = json!(seconds(base * 10.0));
        }
        Some(value)
    }
}

/// The degrade breaker of osm-edge's `CircuitBreaking`.
fn breaker(breaking: &CircuitBreaking) -> Value {
    let mut value = json!({
        "stat_window": seconds(breaking.stat_time_window.filter(|s| *s > 0.0).unwrap_or(30.0)),
        "min_requests": breaking.min_request_amount.unwrap_or(100),
        "slow_time": seconds(breaking.slow_time_threshold.filter(|s| *s > 0.0).unwrap_or(5.0)),
        "degraded_window": seconds(breaking.degraded_time_window.filter(|s| *s > 0.0).unwrap_or(30.0)),
        "degraded_status": breaking.degraded_status_code.filter(|s| (100..=599).contains(s)).unwrap_or(409),
        "degraded_body": breaking.degraded_response_content.clone().unwrap_or_else(|| DEGRADED_BODY.into()),
    });
    let ratio = |r: Option<f64>| r.filter(|r| *r > 0.0).map(|r| r.min(1.0));
    let count = |c: Option<u32>| c.filter(|c| *c > 0);
    for (field, setting) in [
        ("error_count", count(breaking.error_amount_threshold).map(|c| json!(c))),
        ("error_ratio", ratio(breaking.error_ratio_threshold).map(|r| json!(r))),
        ("slow_count", count(breaking.slow_amount_threshold).map(|c| json!(c))),
        ("slow_ratio", ratio(breaking.slow_ratio_threshold).map(|r| json!(r))),
    ] {
        if let Some(setting) = setting {
            value[field] = setting;
        }
    }
    value
}

/// Float seconds as an edgeplane duration.
fn seconds(value: f64) -> String {
    let millis = (value * 1000.0).round().max(1.0) as u64;
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// A JavaScript `RegExp.test` (a search) as an anchored regex.
fn searched(pattern: &str) -> String {
    let start = if pattern.starts_with('^') { "" } else { ".*" };
    let end = if pattern.ends_with('$') && !pattern.ends_with("\\$") { "" } else { ".*" };
    format!("{start}(?:{pattern}){end}")
}

/// The `serviceidentity` criterion of a rule's AllowedServices, beside the rule's own header criteria.
fn merge_header(existing: Option<&Value>, services: &[String]) -> Value {
    let mut headers = existing.and_then(Value::as_object).cloned().unwrap_or_default();
    let alternatives: Vec<String> = services.iter().map(|s| regex::escape(s)).collect();
    headers.insert("serviceidentity".into(), json!({ "regex": alternatives.join("|") }));
    Value::Object(headers)
}

/// The host names and host:port forms mapped to a service.
fn hosts_of(map: &BTreeMap<String, String>, service: &str) -> Vec<String> {
    map.iter().filter(|(_, s)| *s == service).map(|(host, _)| host.clone()).collect()
}

/// A route for each host of its service, or one without a host criterion
/// when the service is the only one of its port (the port decides then).
fn per_host(route: Map<String, Value>, matches: Map<String, Value>, hosts: &[String], single: bool) -> Vec<Value> {
    let with = |host: Option<&String>, suffix: Option<usize>| {
        let mut route = route.clone();
        let mut matches = matches.clone();
        if let Some(host) = host {
            matches.insert("host".into(), json!(host));
        }
        if let (Some(index), Some(Value::String(name))) = (suffix, route.get("name").cloned()) {
            route.insert("name".into(), json!(format!("{name}/{index}")));
        }
        route.insert("match".into(), Value::Object(matches));
        Value::Object(route)
    };
    if single || hosts.is_empty() {
        vec![with(None, None)]
    } else {
        hosts.iter().enumerate().map(|(index, host)| with(Some(host), Some(index))).collect()
    }
}

fn insert_split(route: &mut Map<String, Value>, split: Vec<(String, u32)>) {
    if split.len() == 1 {
        route.insert("cluster".into(), json!(split[0].0));
    } else {
        let entries: Vec<Value> = split.into_iter().map(|(c, w)| json!({ "cluster": c, "weight": w })).collect();
        route.insert("split".into(), Value::Array(entries));
    }
}

/// Clusters of mesh services (`ns/svc|port`) are dialled over sidecar mTLS;
/// egress clusters are not.
fn is_mesh_cluster(name: &str) -> bool {
    name.contains('/') && name.contains('|')
}

/// Adds `extra`'s fields to `target` (both objects).
fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        for (key, value) in extra {
            if key == "protocol" && target.contains_key("protocol") {
                continue;
            }
            target.insert(key, value);
        }
    }
}
