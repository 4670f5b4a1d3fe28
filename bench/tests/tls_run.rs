//! A tiny end-to-end run of the TLS scenarios: the real edgeplane binary
//! (and nginx and HAProxy when installed) terminating TLS with the
//! certificate the run makes, and the edgeplane sidecar pairs, plaintext and
//! mTLS. It checks that requests went through every peer and that every
//! figure is there, never timings. With `BENCH_REQUIRE_PEERS=1` a missing
//! nginx or HAProxy fails the test.

use std::time::Duration;

use bench::model::{PeerResult, Report, ScenarioResult};
use bench::procstat::available_cpus;

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

fn served(result: &PeerResult) {
    for round in &result.rounds {
        assert!(round.completed > 0 && round.throughput > 0.0, "{}: {round:?}", result.peer);
        assert_eq!(round.errors, 0, "{}: {round:?}", result.peer);
        assert!(round.cpu_us_per_request.is_some_and(|c| c > 0.0), "{}: {round:?}", result.peer);
        assert!(round.rss_kib > 1_000, "{}: {round:?}", result.peer);
    }
}

#[test]
fn a_tiny_tls_run_goes_through_every_peer() {
    let required = std::env::var("BENCH_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let mut only = vec!["edgeplane".to_owned()];
    for (name, package) in [("nginx", "nginx-light"), ("haproxy", "haproxy")] {
        if bench::peers::find_program(name).is_some() {
            only.push(name.to_owned());
        } else {
            assert!(!required, "BENCH_REQUIRE_PEERS=1: {name} is missing: apt-get install -y {package}");
            eprintln!("{name} is not installed ({package}): not checked");
        }
    }
    let cpus = available_cpus();
    let work = tempfile::tempdir().unwrap();
    let options = bench::run::Options {
        scenarios: ["tls-keepalive", "tls-handshake", "mtls-sidecar-pair"].map(String::from).to_vec(),
        rounds: 1,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
        connections: 4,
        streams: 2,
        payload: 64,
        proxy_threads: 1,
        proxy_cpus: vec![*cpus.last().unwrap()],
        load_cpus: vec![cpus[0]],
        edgeplane: edgeplane_tests::process::binary(),
        user_peers: Vec::new(),
        only: Some(only.clone()),
        idle_connections: 20,
        mqtt_idle_connections: 20,
        work_dir: work.path().join("work"),
    };
    let mut lines = Vec::new();
    let report = bench::run::run(&options, &mut |line| lines.push(line.to_owned())).expect("the run");
    let names: Vec<&str> = report.scenarios.iter().map(|s| s.name.as_str()).collect();
    // The pair's capacity is measured first: the fixed rate is set from it.
    assert_eq!(names, ["tls-keepalive", "tls-handshake", "sidecar-pair-max", "mtls-sidecar-pair"], "{lines:?}");

    // One certificate for all, in the run's work directory.
    for file in ["cert.pem", "key.pem", "cert-and-key.pem", "mesh/ca.crt", "mesh/bookbuyer.crt", "mesh/bookstore.key"] {
        assert!(work.path().join("work").join(file).is_file(), "{file}");
    }
    for name in ["tls-keepalive", "tls-handshake"] {
        for peer_name in &only {
            served(peer(&report, name, peer_name));
            assert!(
                lines.iter().any(|l| l.contains(&format!("{peer_name}: TLS checked: TLSv1_3"))),
                "{peer_name}: {lines:?}"
            );
        }
        let direct = scenario(&report, name).skipped.iter().find(|s| s.peer == "direct").expect("direct skipped");
        assert!(direct.reason.contains("TLS"), "{direct:?}");
    }
    assert_eq!(scenario(&report, "tls-handshake").unit, "handshakes/s");
    assert!(lines.iter().any(|l| l.contains("no resumption")), "{lines:?}");

    // The pairs: closed loop, then both (and direct) at one rate.
    for name in ["sidecar-pair-max", "mtls-sidecar-pair"] {
        for pair in [bench::pair::PLAIN, bench::pair::MTLS] {
            served(peer(&report, name, pair));
        }
    }
    assert!(lines.iter().any(|l| l.contains("mTLS checked")), "{lines:?}");
    let max = peer(&report, "sidecar-pair-max", bench::pair::PLAIN).summary.throughput.median;
    for target in ["direct", bench::pair::PLAIN, bench::pair::MTLS] {
        let offered = peer(&report, "mtls-sidecar-pair", target).rounds[0].offered_rate.expect("open loop");
        assert!((offered - max * 0.5).abs() < 1e-6, "{target}: {offered} for a maximum of {max}");
    }
    let markdown = bench::report::markdown(&report);
    assert!(
        markdown.contains("**mTLS between the sidecars** (edgeplane-mtls-pair against edgeplane-pair"),
        "{markdown}"
    );
    assert!(markdown.contains("CPU µs/handshake"), "{markdown}");
}
