//! A tiny end-to-end run of the MQTT scenarios: a real mosquitto, the real
//! edgeplane binary and HAProxy (and nginx's stream module) when installed,
//! the built-in MQTT load generator. It checks that messages were delivered
//! through every peer and that every figure is there, never timings.
//!
//! Without mosquitto the run must report the MQTT scenarios as skipped with
//! the install command; with `BENCH_REQUIRE_PEERS=1` a missing mosquitto or
//! HAProxy fails the test instead.

use std::time::Duration;

use bench::model::{PeerResult, Report, ScenarioResult};
use bench::procstat::available_cpus;

const SCENARIOS: [&str; 4] = ["mqtt-qos0", "mqtt-qos1", "mqtt-fixed-rate-50", "mqtt-idle"];
const IDLE: usize = 200;

fn required() -> bool {
    std::env::var("BENCH_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

fn scenario<'a>(report: &'a Report, name: &str) -> &'a ScenarioResult {
    report.scenarios.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} in the report"))
}

fn peer<'a>(report: &'a Report, name: &str, peer: &str) -> &'a PeerResult {
    scenario(report, name)
        .peers
        .iter()
        .find(|p| p.peer == peer)
        .unwrap_or_else(|| panic!("{peer} did not run {name}; skipped: {:?}", scenario(report, name).skipped))
}

#[test]
fn a_tiny_mqtt_run_delivers_through_every_peer() {
    let mosquitto = bench::broker::program();
    let haproxy = bench::peers::find_program("haproxy");
    if required() {
        assert!(mosquitto.is_some(), "BENCH_REQUIRE_PEERS=1: mosquitto is missing: {}", bench::broker::INSTALL);
        assert!(haproxy.is_some(), "BENCH_REQUIRE_PEERS=1: haproxy is missing: apt-get install -y haproxy");
    }
    let edgeplane = edgeplane_tests::process::binary();
    let cpus = available_cpus();
    let mut only = vec!["edgeplane".to_owned()];
    if haproxy.is_some() {
        only.push("haproxy".to_owned());
    }
    let work = tempfile::tempdir().unwrap();
    let options = bench::run::Options {
        // The fixed-rate scenario brings in mqtt-qos0 for its rate by itself.
        scenarios: ["mqtt-fixed-rate-50", "mqtt-qos1", "mqtt-idle"].map(String::from).to_vec(),
        rounds: 2,
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(500),
        connections: 4,
        streams: 1,
        payload: 64,
        proxy_threads: 1,
        proxy_cpus: vec![*cpus.last().unwrap()],
        load_cpus: vec![cpus[0]],
        edgeplane,
        user_peers: Vec::new(),
        only: Some(only),
        idle_connections: 20,
        mqtt_idle_connections: IDLE,
        work_dir: work.path().join("work"),
    };
    let mut lines = Vec::new();
    let report = bench::run::run(&options, &mut |line| lines.push(line.to_owned())).expect("the run");
    let names: Vec<&str> = report.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mqtt-qos0", "mqtt-fixed-rate-50", "mqtt-qos1", "mqtt-idle"], "{lines:?}");

    if mosquitto.is_none() {
        for name in SCENARIOS {
            let result = scenario(&report, name);
            assert!(result.peers.is_empty(), "{name} ran without a broker");
            let reasons: Vec<&str> = result.skipped.iter().map(|s| s.reason.as_str()).collect();
            assert!(reasons.iter().any(|r| r.contains("apt-get install -y mosquitto")), "{reasons:?}");
        }
        eprintln!("skipped: mosquitto is not installed ({}; BENCH_REQUIRE_PEERS=1 makes this a failure)", {
            bench::broker::INSTALL
        });
        return;
    }
    assert!(lines.iter().any(|l| l.contains("broker: mosquitto")), "progress lines: {lines:?}");

    let mut proxied = vec!["edgeplane"];
    if haproxy.is_some() {
        proxied.push("haproxy");
    }
    let everyone: Vec<&str> = std::iter::once("direct").chain(proxied.iter().copied()).collect();

    // Messages were delivered end to end through each peer, every round, with no loss.
    for name in ["mqtt-qos0", "mqtt-qos1", "mqtt-fixed-rate-50"] {
        assert_eq!(scenario(&report, name).unit, "msg/s");
        for &who in &everyone {
            let result = peer(&report, name, who);
            assert_eq!(result.rounds.len(), 2, "{name} {who}");
            for round in &result.rounds {
                assert!(round.completed > 0 && round.throughput > 0.0, "{name} {who}: nothing delivered: {round:?}");
                assert_eq!(round.errors, 0, "{name} {who}: {round:?}");
                let latency = &round.latency;
                assert!(latency.p50 > 0 && latency.p50 <= latency.p99 && latency.p99 <= latency.max, "{latency:?}");
            }
            let cpu = result.rounds.iter().all(|r| r.cpu_us_per_request.is_some_and(|c| c > 0.0));
            assert_eq!(cpu, who != "direct", "{name} {who}: CPU per message for proxies only");
        }
    }

    // The open loop runs every peer at half of direct's QoS 0 median.
    let direct_max = peer(&report, "mqtt-qos0", "direct").summary.throughput.median;
    for &who in &everyone {
        for round in &peer(&report, "mqtt-fixed-rate-50", who).rounds {
            let offered = round.offered_rate.expect("an offered rate");
            assert!((offered - direct_max * 0.5).abs() < 1e-6, "{who}: {offered} vs {direct_max}");
        }
    }

    // Idle connections: all held, memory per connection for the proxies
    // and for the broker (the direct row).
    assert_eq!(scenario(&report, "mqtt-idle").unit, "connections");
    for &who in &everyone {
        for round in &peer(&report, "mqtt-idle", who).rounds {
            assert_eq!((round.completed, round.errors), (IDLE as u64, 0), "{who}: {round:?}");
            assert!(round.rss_kib > 0 && round.bytes_per_connection.is_some(), "{who}: {round:?}");
        }
    }

    let out = work.path().join("out");
    bench::report::write(&report, &out).unwrap();
    assert_eq!(bench::report::read(&out).unwrap(), report);
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("## mqtt-qos0") && markdown.contains("| peer | msg/s"), "{markdown}");
    assert!(markdown.contains("RSS per connection"));
    assert!(out.join("charts/mqtt-idle-per-connection.svg").exists());
}
