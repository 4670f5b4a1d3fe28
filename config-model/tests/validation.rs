use config_model::{from_json_str, from_yaml_str, validate, Config, Endpoint, HeaderMatch, PathMatch};

const EXAMPLE: &str = r#"
admin: { bind: 127.0.0.1:15000 }
listeners:
  - name: web
    bind: 0.0.0.0:8080
    protocol: auto
    routes:
      - match: { host: api.example.com, path: { prefix: /v1 }, headers: { x-canary: "true" }, method: GET }
        split: [ { cluster: api-v1, weight: 90 }, { cluster: api-v2, weight: 10 } ]
        timeout: 5s
        request_headers: { add: { x-via: edgeplane }, remove: [ x-debug ] }
      - match: { path: { prefix: / } }
        cluster: web
  - name: db
    bind: 127.0.0.1:13306
    protocol: tcp
    routes: [ { cluster: mysql } ]
clusters:
  - name: api-v1
    endpoints: [ 127.0.0.1:9001, { address: 127.0.0.1:9002, weight: 2 } ]
    lb: round_robin
    protocol: http1
  - name: api-v2
    endpoints: [ 127.0.0.1:9003 ]
    protocol: http2
  - name: web
    endpoints: [ localhost:9004 ]
    lb: ring_hash
    hash_on: { header: x-user }
  - name: mysql
    endpoints: [ 127.0.0.1:3306 ]
"#;

fn errors(config: &Config) -> Vec<String> {
    validate(config).err().unwrap_or_default().iter().map(ToString::to_string).collect()
}

#[test]
fn the_issue_example_is_valid() {
    let config = from_yaml_str(EXAMPLE).unwrap();
    assert_eq!(errors(&config), Vec::<String>::new());
    let route = &config.listeners[0].routes[0];
    assert_eq!(route.matches.host.as_deref(), Some("api.example.com"));
    assert_eq!(route.matches.path, Some(PathMatch::Prefix("/v1".into())));
    assert_eq!(route.matches.headers["x-canary"], HeaderMatch::Exact("true".into()));
    assert_eq!(route.split.as_ref().unwrap()[1].weight, 10);
    assert!(matches!(config.clusters[0].endpoints[1], Endpoint::Detailed(_)));
    assert_eq!(config.clusters[0].endpoints[1].weight(), 2);
}

#[test]
fn json_and_yaml_give_the_same_config() {
    let from_yaml = from_yaml_str(EXAMPLE).unwrap();
    let json = serde_json::to_string(&from_yaml).unwrap();
    let from_json = from_json_str(&json).unwrap();
    assert_eq!(from_yaml, from_json);
}

#[test]
fn every_error_is_reported_with_its_path() {
    let config = from_yaml_str(
        r#"
admin: { bind: "nonsense" }
drain_timeout: 10 parsecs
listeners:
  - name: web
    bind: 0.0.0.0:8080
    detect_timeout: 5x
    routes:
      - match:
          path: { regex: "([a-z" }
          headers: { "bad header": x, x-ok: { regex: "(" }, x-two: { exact: a, present: true } }
          method: [ GET, "BAD METHOD" ]
        split: [ { cluster: a, weight: 1 }, { cluster: missing, weight: 1 }, { cluster: b, weight: 0 } ]
      - match: { path: { prefix: v1 }, host: "bad host!" }
        cluster: a
        cluster_typo_is_not_here: 1
"#,
    );
    // Unknown fields are rejected while parsing, with their path.
    let error = config.unwrap_err().to_string();
    assert!(error.contains("listeners[0].routes[1]"), "{error}");
    assert!(error.contains("cluster_typo_is_not_here"), "{error}");

    let config = from_yaml_str(
        r#"
admin: { bind: "nonsense" }
drain_timeout: 10 parsecs
listeners:
  - name: web
    bind: 0.0.0.0:8080
    detect_timeout: 5x
    routes:
      - match:
          path: { regex: "([a-z" }
          headers: { "bad header": x, x-ok: { regex: "(" }, x-two: { exact: a, present: true } }
          method: [ GET, "BAD METHOD" ]
        split: [ { cluster: a, weight: 1 }, { cluster: missing, weight: 1 }, { cluster: b, weight: 0 } ]
      - match: { path: { prefix: v1 }, host: "bad host!" }
        cluster: a
        timeout: forever
        request_headers: { add: { content-length: "1" }, remove: [ "a b" ] }
  - name: web
    bind: 127.0.0.1:8080
    protocol: tcp
    routes: [ { cluster: a, match: { path: { prefix: / } } }, { cluster: b } ]
clusters:
  - name: a
    endpoints: [ "127.0.0.1", { address: 127.0.0.1:1, weight: 20000 }, "127.0.0.1:1" ]
    connect_timeout: 0s
    hash_on: source_ip
  - name: b
    endpoints: []
  - name: a
"#,
    )
    .unwrap();
    let errors = errors(&config);
    let expected = [
        "admin.bind: invalid address \"nonsense\"",
        "drain_timeout: invalid duration \"10 parsecs\"",
        "listeners[0].detect_timeout: invalid duration \"5x\"",
        "listeners[0].routes[0].match.path.regex: invalid regex \"([a-z\"",
        "listeners[0].routes[0].match.headers.bad header: invalid header name",
        "listeners[0].routes[0].match.headers.x-ok.regex: invalid regex",
        "listeners[0].routes[0].match.headers.x-two: give exactly one of exact, regex, present",
        "listeners[0].routes[0].match.method[1]: invalid method \"BAD METHOD\"",
        "listeners[0].routes[0].split[1].cluster: unknown cluster \"missing\"",
        "listeners[0].routes[0].split[2].weight: must be between 1 and 10000",
        "listeners[0].routes[1].match.host: invalid host \"bad host!\"",
        "listeners[0].routes[1].match.path.prefix: \"v1\" must start with \"/\"",
        "listeners[0].routes[1].timeout: invalid duration \"forever\"",
        "listeners[0].routes[1].request_headers.add.content-length: \"content-length\" is managed by the proxy",
        "listeners[0].routes[1].request_headers.remove[0]: invalid header name \"a b\"",
        "listeners[1].name: duplicate listener name \"web\" (also listeners[0])",
        "listeners[1].bind: address 127.0.0.1:8080 conflicts with listeners[0].bind",
        "listeners[1].routes[0].match: HTTP match criteria on a tcp listener",
        "listeners[1].routes[1]: unreachable: routes[0] has no `match.sni`, `match.destination` or `match.source` and takes every connection",
        "clusters[0].endpoints[0]: invalid address \"127.0.0.1\"",
        "clusters[0].endpoints[1].weight: must be between 1 and 10000",
        "clusters[0].endpoints[2]: duplicate endpoint \"127.0.0.1:1\"",
        "clusters[0].connect_timeout: must be greater than 0",
        "clusters[0].hash_on: only used with lb: ring_hash",
        "clusters[2].name: duplicate cluster name \"a\" (also clusters[0])",
    ];
    for want in expected {
        assert!(errors.iter().any(|e| e.starts_with(want)), "missing error {want:?} in:\n{}", errors.join("\n"));
    }
    assert_eq!(errors.len(), expected.len(), "unexpected extra errors:\n{}", errors.join("\n"));
}

#[test]
fn parse_errors_name_the_path() {
    let error = from_yaml_str("listeners: [ { name: a, bind: 127.0.0.1:1, protocol: quic } ]").unwrap_err().to_string();
    assert!(error.starts_with("listeners[0].protocol: "), "{error}");
    assert!(error.contains("quic"), "{error}");

    let error = from_json_str(r#"{"clusters": [{"name": "a", "lb": "fastest"}]}"#).unwrap_err().to_string();
    assert!(error.starts_with("clusters[0].lb: "), "{error}");

    let error = from_yaml_str("listeners: [ { name: a ").unwrap_err().to_string();
    assert!(!error.is_empty());

    let error = from_json_str("{} trailing").unwrap_err().to_string();
    assert!(error.contains("trailing"), "{error}");
}

#[test]
fn defaults_fill_an_empty_config() {
    let config = from_yaml_str("{}").unwrap();
    assert_eq!(config.admin.bind.as_str(), "127.0.0.1:15000");
    assert_eq!(config.drain_timeout.as_str(), "30s");
    assert!(validate(&config).is_ok());
}

#[test]
fn schema_describes_the_model() {
    let schema = config_model::json_schema();
    let text = schema.to_string();
    for field in ["listeners", "clusters", "split", "max_header_bytes", "ring_hash", "forwarded_for"] {
        assert!(text.contains(field), "schema lacks {field}");
    }
    assert_eq!(schema["type"], "object");
}

#[test]
fn scalar_or_structured_fields_explain_their_errors() {
    let error = from_yaml_str("clusters: [ {name: a, endpoints: [ {address: 1.2.3.4:5, wieght: 3} ] } ]")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("clusters[0].endpoints[0].wieght: "), "{error}");
    assert!(error.contains("unknown field `wieght`"), "{error}");

    // YAML booleans and numbers are read as the strings they look like.
    let config = from_yaml_str(
        "listeners: [ { name: a, bind: 1.2.3.4:5, routes: [ { cluster: c, match: { headers: { x-canary: true, x-n: 5 } } } ] } ]",
    )
    .unwrap();
    let headers = &config.listeners[0].routes[0].matches.headers;
    assert_eq!(headers["x-canary"], HeaderMatch::Exact("true".into()));
    assert_eq!(headers["x-n"], HeaderMatch::Exact("5".into()));
}

const POLICIES: &str = r#"
listeners:
  - name: web
    bind: 127.0.0.1:8080
    rate_limit: { requests: 100, per: 1s, burst: 20, key: client_ip, backlog: 10, response_headers: { x-limited: "1" } }
    connection_rate_limit: { connections: 50, per: 1s }
    bandwidth: { per_connection: { download: 256KiB }, listener: { upload: 1MB, download: 4000000 } }
    routes:
      - cluster: api
        retry: { attempts: 2, retry_on: [5xx, retriable-status-codes], status_codes: [429], per_try_timeout: 1s }
        rate_limit: { requests: 10, key: { header: x-user } }
clusters:
  - name: api
    endpoints: [ 127.0.0.1:9001, { address: 127.0.0.1:9002, priority: 1 } ]
    limits: { max_connections: 100, max_pending_requests: 10, max_requests: 50, max_retries: 5, max_requests_per_connection: 1000 }
    breaker: { min_requests: 20, error_ratio: 0.5, slow_time: 2s, slow_count: 10, degraded_window: 10s }
    outlier_detection: { consecutive_5xx: 3, base_ejection_time: 10s, max_ejection_percent: 50 }
    health_check: { kind: http, path: /healthz, expected_statuses: [200, "204-299"], interval: 2s, timeout: 500ms }
    overprovisioning_factor: 1.2
"#;

#[test]
fn resilience_policies_validate() {
    let config = from_yaml_str(POLICIES).expect("parses");
    assert_eq!(errors(&config), Vec::<String>::new());
    assert_eq!(config.clusters[0].endpoints[1].priority(), 1);
    let bandwidth = &config.listeners[0].bandwidth;
    assert_eq!(bandwidth.per_connection.download.as_ref().unwrap().parse(), Ok(256 * 1024));
    assert_eq!(bandwidth.listener.download.as_ref().unwrap().parse(), Ok(4_000_000));
}

#[test]
fn resilience_policy_errors_name_their_paths() {
    let bad = r#"
listeners:
  - name: web
    bind: 127.0.0.1:8080
    rate_limit: { requests: 0, per: 0s, status: 200, key: { header: "bad header" } }
    bandwidth: { per_connection: { download: 10 parsecs } }
    routes:
      - cluster: api
        retry: { attempts: 17, retry_on: [retriable-status-codes], backoff_base: 0s }
      - { match: { path: { prefix: /x } }, cluster: api, connection_rate_limit: { connections: 5 } }
  - name: db
    bind: 127.0.0.1:3306
    protocol: tcp
    routes: [ { cluster: api, retry: {}, connection_rate_limit: { connections: 0 } } ]
clusters:
  - name: api
    endpoints: [ { address: 127.0.0.1:9001, priority: 99 } ]
    limits: { max_requests: 0 }
    breaker: { error_ratio: 1.5 }
    outlier_detection: { base_ejection_time: 60s, max_ejection_time: 10s, max_ejection_percent: 101 }
    health_check: { path: healthz, expected_statuses: ["500-200"], interval: 1s, timeout: 2s, unhealthy_threshold: 0 }
    overprovisioning_factor: 0.5
"#;
    let config = from_yaml_str(bad).expect("parses");
    let found = errors(&config);
    for expected in [
        "listeners[0].rate_limit.requests: must be at least 1",
        "listeners[0].rate_limit.per: must be greater than 0",
        "listeners[0].rate_limit.status: must be between 400 and 599",
        "listeners[0].rate_limit.key.header: invalid header name",
        "listeners[0].bandwidth.per_connection.download: invalid byte rate",
        "listeners[0].routes[0].retry.attempts: must be at most 16",
        "listeners[0].routes[0].retry.status_codes: retriable-status-codes needs at least one status code",
        "listeners[0].routes[0].retry.backoff_base: must be greater than 0",
        "listeners[1].routes[0].retry: HTTP retries on a tcp listener",
        "listeners[1].routes[0].connection_rate_limit.connections: must be at least 1",
        "listeners[0].routes[1].connection_rate_limit: a route's connection limit needs an opaque TCP route",
        "clusters[0].endpoints[0].priority: must be between 0 and 15",
        "clusters[0].limits.max_requests: must be at least 1",
        "clusters[0].breaker.error_ratio: must be greater than 0 and at most 1",
        "clusters[0].outlier_detection.max_ejection_time: must be at least base_ejection_time",
        "clusters[0].outlier_detection.max_ejection_percent: must be between 0 and 100",
        "clusters[0].health_check.path: invalid path",
        "clusters[0].health_check.expected_statuses[0]: status range 500-200",
        "clusters[0].health_check.timeout: must not exceed the interval",
        "clusters[0].health_check.unhealthy_threshold: must be at least 1",
        "clusters[0].overprovisioning_factor: must be between 1.0 and 100.0",
    ] {
        assert!(found.iter().any(|error| error.starts_with(expected)), "missing {expected:?} in {found:#?}");
    }
    // A breaker with no threshold would never open.
    let config = from_yaml_str(&POLICIES.replace("error_ratio: 0.5, slow_time: 2s, slow_count: 10, ", "")).unwrap();
    assert!(
        errors(&config).iter().any(|e| e.starts_with("clusters[0].breaker: needs at least one of")),
        "{:?}",
        errors(&config)
    );
}

#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let config = config_model::load_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(errors(&config), Vec::<String>::new(), "{}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "found {checked} example configs");
    // The control-plane demo serves configs from a directory of its own.
    let served = dir.join("controlplane/edgeplane.yaml");
    let config = config_model::load_file(&served).unwrap_or_else(|e| panic!("{}: {e}", served.display()));
    assert_eq!(errors(&config), Vec::<String>::new(), "{}", served.display());
}

#[test]
fn every_example_bootstrap_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bootstrap");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/bootstrap/") {
        let path = entry.expect("dir entry").path();
        config_model::load_bootstrap(&path).unwrap_or_else(|errors| panic!("{}: {errors:?}", path.display()));
        checked += 1;
    }
    assert!(checked >= 2, "found {checked} example bootstraps");
}

#[test]
fn mqtt_errors_name_their_paths() {
    let bad = r#"
listeners:
  - name: mqtt
    bind: 127.0.0.1:1883
    protocol: mqtt
    mqtt: { max_packet_size: 1, connect_timeout: 0s, keepalive_factor: 0.5, publish_rate: { per: 1s } }
    rate_limit: { requests: 10 }
    routes:
      - { match: { path: { prefix: / } }, cluster: brokers }
      - { match: { client_id: { regex: "(" } }, cluster: brokers }
  - name: web
    bind: 127.0.0.1:8080
    protocol: http
    routes: [ { match: { client_id: { prefix: a } }, cluster: brokers } ]
  - name: both
    bind: 127.0.0.1:8081
    routes: [ { match: { username: { exact: a }, method: GET }, cluster: brokers } ]
clusters:
  - { name: brokers, lb: ring_hash, hash_on: client_id, endpoints: [ 127.0.0.1:1884 ] }
"#;
    let found = errors(&from_yaml_str(bad).expect("parses"));
    for expected in [
        "listeners[0].mqtt.max_packet_size: must be between 16 and",
        "listeners[0].mqtt.connect_timeout: must be greater than 0",
        "listeners[0].mqtt.keepalive_factor: must be between 1.0 and 10.0",
        "listeners[0].mqtt.publish_rate: needs messages, bytes or both",
        "listeners[0].rate_limit: HTTP rate limit on a mqtt listener (use mqtt.publish_rate",
        "listeners[0].routes[0].match: HTTP match criteria on a mqtt listener",
        "listeners[0].routes[1].match.client_id.regex: invalid regex",
        "listeners[1].routes[0].match: MQTT match criteria on an http listener never match",
        "listeners[2].routes[0].match: HTTP and MQTT criteria together never match",
    ] {
        assert!(found.iter().any(|error| error.starts_with(expected)), "missing {expected:?} in {found:#?}");
    }
}

#[test]
fn mqtt_access_errors_name_their_paths() {
    let bad = r#"
listeners:
  - name: mqtt
    bind: 127.0.0.1:1883
    protocol: mqtt
    mqtt:
      client_ids: { deny: [ { regex: "[" } ] }
      usernames: { allow: [ { exact: a }, { regex: "(" } ] }
      users:
        - { username: a, password: x }
        - { username: a, password_sha256: "abc" }
        - { username: b }
        - { username: c, password: x, password_sha256: "0000000000000000000000000000000000000000000000000000000000000000" }
      acl:
        rules:
          - { permission: allow, topics: [] }
          - { permission: deny, topics: ["a/#/b", "a+", "x/${user}", "ok/+/#"], client_id: { regex: "(" } }
    routes: [ { cluster: brokers } ]
clusters:
  - { name: brokers, endpoints: [ 127.0.0.1:1884 ] }
"#;
    let found = errors(&from_yaml_str(bad).expect("parses"));
    for expected in [
        "listeners[0].mqtt.client_ids.deny[0].regex: invalid regex",
        "listeners[0].mqtt.usernames.allow[1].regex: invalid regex",
        "listeners[0].mqtt.users[1].username: duplicate user \"a\" (also users[0])",
        "listeners[0].mqtt.users[1].password_sha256: must be 64 hex digits",
        "listeners[0].mqtt.users[2]: needs exactly one of password and password_sha256",
        "listeners[0].mqtt.users[3]: needs exactly one of password and password_sha256",
        "listeners[0].mqtt.acl.rules[0].topics: needs at least one topic filter",
        "listeners[0].mqtt.acl.rules[1].topics[0]: \"a/#/b\": '#' must be the last level",
        "listeners[0].mqtt.acl.rules[1].topics[1]: \"a+\": '+' and '#' must fill a whole level",
        "listeners[0].mqtt.acl.rules[1].topics[2]: \"x/${user}\": unknown placeholder ${user}",
        "listeners[0].mqtt.acl.rules[1].client_id.regex: invalid regex",
    ] {
        assert!(found.iter().any(|error| error.starts_with(expected)), "missing {expected:?} in {found:#?}");
    }
    assert!(!found.iter().any(|error| error.contains("topics[3]")), "a valid filter was refused: {found:#?}");
}

const JWT: &str = r#"
listeners:
  - name: web
    bind: 127.0.0.1:8080
    routes:
      - cluster: api
        jwt:
          issuer: https://issuer.example
          audiences: [api, web]
          algorithms: [RS256, ES256]
          keys: { jwks_file: /etc/edgeplane/jwks.json }
          from: [ { header: authorization, prefix: "Bearer " }, { cookie: access_token } ]
          clock_skew: 30s
          require_expiry: false
          forward_claims: { sub: x-jwt-sub, email: x-jwt-email }
          forward_token: false
      - cluster: api
        jwt: { keys: { jwks: '{"keys": []}' } }
clusters:
  - name: api
    endpoints: [ 127.0.0.1:9001 ]
"#;

#[test]
fn jwt_verification_validates() {
    let config = from_yaml_str(JWT).expect("parses");
    assert_eq!(errors(&config), Vec::<String>::new());
    let jwt = config.listeners[0].routes[0].jwt.as_ref().unwrap();
    assert_eq!(jwt.algorithms, [config_model::JwtAlgorithm::RS256, config_model::JwtAlgorithm::ES256]);
    assert_eq!(jwt.from[1].cookie.as_deref(), Some("access_token"));
    assert_eq!(jwt.forward_claims["sub"], "x-jwt-sub");
    assert!(!jwt.forward_token && !jwt.require_expiry);

    // Defaults.
    let jwt = config.listeners[0].routes[1].jwt.as_ref().unwrap();
    assert_eq!(
        jwt.algorithms,
        [config_model::JwtAlgorithm::HS256, config_model::JwtAlgorithm::RS256, config_model::JwtAlgorithm::ES256]
    );
    assert_eq!(jwt.from.len(), 1);
    assert_eq!(jwt.from[0].header.as_deref(), Some("authorization"));
    assert_eq!(jwt.from[0].prefix.as_deref(), Some("Bearer "));
    assert_eq!(jwt.clock_skew.as_str(), "60s");
    assert!(jwt.require_expiry && jwt.forward_token);
    assert!(jwt.issuer.is_none() && jwt.audiences.is_empty() && jwt.forward_claims.is_empty());

    // JSON round trip.
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(from_json_str(&json).unwrap(), config);
}

#[test]
fn jwt_errors_name_their_paths() {
    let bad = r#"
listeners:
  - name: web
    bind: 127.0.0.1:8080
    routes:
      - cluster: api
        jwt:
          issuer: ""
          audiences: [ "" ]
          algorithms: []
          keys: { jwks_file: /a.json, jwks: '{"keys": []}' }
          from:
            - { header: "bad header", prefix: "Bearer " }
            - { cookie: "bad cookie" }
            - { header: x-token, cookie: token }
            - { }
            - { cookie: token, prefix: "x" }
            - { header: x-token, prefix: "Bearer\n" }
          clock_skew: 11m
          forward_claims: { "": x-empty, sub: "bad header", email: connection, a: x-same, b: X-Same }
      - cluster: api
        jwt: { keys: {} }
      - cluster: api
        jwt: { keys: { jwks: 'not json' }, from: [], clock_skew: soon }
      - cluster: api
        jwt: { keys: { jwks: '{"keys": {}}' } }
      - cluster: api
        jwt: { keys: { jwks_file: "" } }
  - name: db
    bind: 127.0.0.1:3306
    protocol: tcp
    routes: [ { cluster: api, jwt: { keys: { jwks_file: /a.json } } } ]
clusters:
  - name: api
    endpoints: [ 127.0.0.1:9001 ]
"#;
    let found = errors(&from_yaml_str(bad).expect("parses"));
    let expected = [
        "listeners[0].routes[0].jwt.issuer: must not be empty",
        "listeners[0].routes[0].jwt.audiences[0]: must not be empty",
        "listeners[0].routes[0].jwt.algorithms: must list at least one algorithm",
        "listeners[0].routes[0].jwt.keys: give exactly one of jwks_file, jwks",
        "listeners[0].routes[0].jwt.from[0].header: invalid header name \"bad header\"",
        "listeners[0].routes[0].jwt.from[1].cookie: invalid cookie name \"bad cookie\"",
        "listeners[0].routes[0].jwt.from[2]: give exactly one of header, cookie",
        "listeners[0].routes[0].jwt.from[3]: give exactly one of header, cookie",
        "listeners[0].routes[0].jwt.from[4].prefix: only used with header",
        "listeners[0].routes[0].jwt.from[5].prefix: invalid prefix",
        "listeners[0].routes[0].jwt.clock_skew: must be at most 10m",
        "listeners[0].routes[0].jwt.forward_claims.: claim name must not be empty",
        "listeners[0].routes[0].jwt.forward_claims.sub: invalid header name \"bad header\"",
        "listeners[0].routes[0].jwt.forward_claims.email: \"connection\" is managed by the proxy",
        "listeners[0].routes[0].jwt.forward_claims.b: header \"X-Same\" is also set from claim \"a\"",
        "listeners[0].routes[1].jwt.keys: give exactly one of jwks_file, jwks",
        "listeners[0].routes[2].jwt.keys.jwks: invalid JSON",
        "listeners[0].routes[2].jwt.from: must list at least one token source",
        "listeners[0].routes[2].jwt.clock_skew: invalid duration \"soon\"",
        "listeners[0].routes[3].jwt.keys.jwks: must be a JSON Web Key Set",
        "listeners[0].routes[4].jwt.keys.jwks_file: must not be empty",
        "listeners[1].routes[0].jwt: JWT verification needs HTTP, not a tcp listener",
    ];
    assert_exactly(&found, &expected);
}

#[test]
fn jwt_parse_errors_name_their_paths() {
    let text = r#"
listeners:
  - name: web
    bind: 127.0.0.1:8080
    routes: [ { cluster: api, jwt: { keys: { jwks_file: /a.json }, algorithms: [ none ] } } ]
"#;
    let error = from_yaml_str(text).unwrap_err().to_string();
    assert!(error.starts_with("listeners[0].routes[0].jwt.algorithms[0]: "), "{error}");

    let text = r#"
listeners:
  - name: web
    bind: 127.0.0.1:8080
    routes: [ { cluster: api, jwt: { keys: { jwks_url: "https://x" } } } ]
"#;
    let error = from_yaml_str(text).unwrap_err().to_string();
    assert!(error.starts_with("listeners[0].routes[0].jwt.keys"), "{error}");
    assert!(error.contains("jwks_url"), "{error}");

    let text = r#"
listeners:
  - name: web
    bind: 127.0.0.1:8080
    routes: [ { cluster: api, jwt: { issuer: x } } ]
"#;
    let error = from_yaml_str(text).unwrap_err().to_string();
    assert!(error.contains("keys"), "{error}");
}

#[test]
fn tls_errors_are_reported_with_their_paths() {
    let bad = r#"
listeners:
  - name: https
    bind: 127.0.0.1:8443
    tls:
      certificates:
        - { cert: { file: "" }, key: { pem: "not pem" }, server_names: [ "bad name" ], default: true }
        - { cert: { file: /a.crt }, key: { file: /a.key }, default: true }
      alpn: [ "" ]
      min_version: "1.3"
      max_version: "1.2"
      cipher_suites: [ AES128 ]
      plaintext_sources: [ 10.0.0.0/33, nope ]
      handshake_timeout: 0s
    access: { allow: [] }
    routes:
      - { match: { sni: "bad..name" }, cluster: app }
  - name: passthrough
    bind: 127.0.0.1:8444
    tls: { mode: passthrough, mesh: true }
    routes: [ { cluster: app } ]
  - name: mesh
    bind: 127.0.0.1:8445
    tls: { mesh: true }
    routes: [ { cluster: app, access: { allow: [ "spiffe://" ] } } ]
  - name: plain
    bind: 127.0.0.1:8446
    access: { allow: [ a.b ] }
    http: { redirect_https: { status: 200 } }
    routes: [ { match: { sni: a.example.com }, cluster: app } ]
  - name: empty
    bind: 127.0.0.1:8447
    tls: {}
    routes: [ { cluster: app } ]
clusters:
  - name: app
    endpoints: [ 127.0.0.1:9000 ]
    tls: { identities: [ a.b ], cert: { file: /c.crt }, server_name: "not a name!" }
  - name: mesh
    endpoints: [ 127.0.0.1:9001 ]
    tls: { mesh: true, cert: { file: /c.crt }, key: { file: /c.key } }
"#;
    let found = errors(&from_yaml_str(bad).expect("parses"));
    let expected = [
        "clusters[0].tls.identities: only with `mesh: true`",
        "clusters[0].tls.key: needed with `cert`",
        "clusters[0].tls.server_name: invalid server name \"not a name!\"",
        "clusters[1].tls.mesh: needs the top-level `identity`",
        "clusters[1].tls.cert: mesh clusters present the identity; no `cert`/`key`",
        "listeners[0].routes[0].match.sni: invalid server name \"bad..name\"",
        "listeners[0].access.allow: empty: nobody could connect",
        "listeners[0].access: identities come from verified client certificates",
        "listeners[0].tls.certificates: at most one certificate may be the default",
        "listeners[0].tls.certificates[0].cert.file: empty path",
        "listeners[0].tls.certificates[0].key.pem: not PEM text",
        "listeners[0].tls.certificates[0].server_names[0]: invalid server name \"bad name\"",
        "listeners[0].tls.alpn[0]: must be 1 to 255 bytes",
        "listeners[0].tls.min_version: is above max_version",
        "listeners[0].tls.cipher_suites[0]: \"AES128\" is not an IANA suite name",
        "listeners[0].tls.plaintext_sources[0]: invalid CIDR \"10.0.0.0/33\": prefix must be 0 to 32",
        "listeners[0].tls.plaintext_sources[1]: invalid CIDR \"nope\"",
        "listeners[0].tls.handshake_timeout: must be greater than 0",
        "listeners[1].tls.mode: passthrough needs `protocol: tcp`",
        "listeners[1].tls: passthrough takes no certificates",
        "listeners[2].routes[0].access.allow[0]: \"spiffe://\" is neither sa.ns, a DNS name nor a SPIFFE URI",
        "listeners[2].tls.mesh: needs the top-level `identity`",
        "listeners[3].routes[0].match.sni: needs a listener with `tls`",
        "listeners[3].access: identities come from verified client certificates",
        "listeners[3].http.redirect_https.status: must be 301, 302, 303, 307 or 308",
        "listeners[4].tls.certificates: needs at least one certificate (or `mesh: true`)",
    ];
    assert_exactly(&found, &expected);
}

#[test]
fn tls_configs_parse_and_validate() {
    let good = r#"
identity: { cert: { file: /id.crt }, key: { file: /id.key }, ca: { file: /ca.crt } }
listeners:
  - name: https
    bind: 127.0.0.1:8443
    tls:
      certificates: [ { cert: { file: /a.crt }, key: { file: /a.key }, server_names: [ "*.example.com" ] } ]
      client_auth: { mode: optional }
    access: { allow: [ bookbuyer.default, "spiffe://cluster.local/ns/default/sa/bookbuyer" ] }
    routes: [ { cluster: app } ]
  - name: edge
    bind: 127.0.0.1:8444
    protocol: tcp
    tls: { mode: passthrough }
    routes: [ { match: { sni: a.example.com }, cluster: app }, { cluster: app } ]
  - name: inbound
    bind: 127.0.0.1:15003
    tls: { mesh: true, plaintext_sources: [ 10.0.0.0/8, "fd00::/8" ] }
    access: { permissive: true }
    http: { redirect_https: { port: 8443 } }
    routes: [ { cluster: app } ]
clusters:
  - name: app
    endpoints: [ 127.0.0.1:9000 ]
    tls: { mesh: true, identities: [ bookstore.default ] }
"#;
    let config = from_yaml_str(good).expect("parses");
    assert_eq!(errors(&config), Vec::<String>::new());
    // Inline keys never show in a dump of the config.
    let inline = good.replace("key: { file: /id.key }", "key: { pem: \"-----BEGIN PRIVATE KEY-----\\nsecret\\n\" }");
    let dump = serde_json::to_string(&from_yaml_str(&inline).expect("parses")).unwrap();
    assert!(!dump.contains("secret"), "{dump}");
    assert!(dump.contains("(redacted)"), "{dump}");
}

/// Every expected error (by prefix) is among `found`, and nothing else is.
fn assert_exactly(found: &[String], expected: &[&str]) {
    for want in expected {
        assert!(found.iter().any(|error| error.starts_with(want)), "missing {want:?} in {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "unexpected extra errors: {found:#?}");
}

#[test]
fn destination_criteria_need_a_transparent_listener_and_valid_values() {
    let config = from_yaml_str(
        r#"
listeners:
  - name: plain
    bind: 127.0.0.1:8080
    routes:
      - match: { destination: { ports: [80] } }
        cluster: app
  - name: outbound
    bind: 127.0.0.1:15001
    transparent: { unmatched: refuse, connect_timeout: 0s }
    routes:
      - match: { destination: {} }
        cluster: app
      - match: { destination: { addresses: [10.0.0.0/33, nonsense, "fd00::/8"], ports: [0, 443] } }
        cluster: app
clusters:
  - { name: app, endpoints: ["127.0.0.1:9000"] }
"#,
    )
    .unwrap();
    assert_eq!(
        errors(&config),
        [
            "listeners[0].routes[0].match.destination: only a transparent listener knows a connection's original destination (set `transparent`)",
            "listeners[1].routes[0].match.destination: give addresses, ports or both",
            "listeners[1].routes[1].match.destination.addresses[0]: invalid CIDR \"10.0.0.0/33\": prefix must be 0 to 32",
            "listeners[1].routes[1].match.destination.addresses[1]: invalid CIDR \"nonsense\"",
            "listeners[1].routes[1].match.destination.ports[0]: must be 1 to 65535",
            "listeners[1].transparent.connect_timeout: must be greater than 0",
        ]
    );
}

#[test]
fn a_tcp_route_with_a_destination_does_not_hide_the_next() {
    let config = from_yaml_str(
        r#"
listeners:
  - name: inbound
    bind: 127.0.0.1:15003
    protocol: tcp
    transparent: {}
    routes:
      - match: { destination: { ports: [5432] } }
        cluster: db
      - cluster: app
      - cluster: db
clusters:
  - { name: app, endpoints: ["127.0.0.1:9000"] }
  - { name: db, endpoints: ["127.0.0.1:9001"] }
"#,
    )
    .unwrap();
    assert_eq!(
        errors(&config),
        ["listeners[0].routes[2]: unreachable: routes[1] has no `match.sni`, `match.destination` or `match.source` and takes every connection"]
    );
}

#[test]
fn a_socket_mark_of_zero_is_refused() {
    let config = from_yaml_str("socket_mark: 0\n").unwrap();
    assert_eq!(errors(&config), ["socket_mark: must be at least 1 (leave it out for unmarked sockets)"]);
    assert_eq!(errors(&from_yaml_str("socket_mark: 42\n").unwrap()), Vec::<String>::new());
}
