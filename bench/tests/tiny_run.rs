//! A tiny end-to-end run of the harness: real upstreams, the real edgeplane
//! binary (and nginx when it is installed), the built-in load generator.
//! It checks that every figure is there and plausible, never timings.

use std::time::Duration;

use bench::model::{PeerResult, Report};
use bench::procstat::available_cpus;

fn peer<'a>(report: &'a Report, scenario: &str, name: &str) -> Option<&'a PeerResult> {
    report.scenarios.iter().find(|s| s.name == scenario)?.peers.iter().find(|p| p.peer == name)
}

#[test]
fn a_tiny_run_produces_every_figure() {
    let edgeplane = edgeplane_tests::process::binary();
    let cpus = available_cpus();
    let proxy_cpus = vec![*cpus.last().unwrap()];
    let load_cpus = vec![cpus[0]];
    let nginx = bench::peers::find_program("nginx").is_some();
    let mut only = vec!["edgeplane".to_owned()];
    if nginx {
        only.push("nginx".to_owned());
    }
    let work = tempfile::tempdir().unwrap();
    let options = bench::run::Options {
        scenarios: ["http1-keepalive", "http2-multiplexed", "tcp-bulk", "reload-under-load", "idle-connections"]
            .map(String::from)
            .to_vec(),
        rounds: 2,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
        connections: 4,
        streams: 2,
        payload: 64,
        proxy_threads: 1,
        proxy_cpus,
        load_cpus,
        edgeplane,
        user_peers: Vec::new(),
        only: Some(only),
        idle_connections: 20,
        mqtt_idle_connections: 20,
        work_dir: work.path().join("work"),
    };
    let mut lines = Vec::new();
    let report = bench::run::run(&options, &mut |line| lines.push(line.to_owned())).expect("the run");
    assert!(lines.iter().any(|l| l.contains("round 2/2")), "progress lines: {lines:?}");

    // HTTP/1: direct and edgeplane, every figure filled in.
    for name in ["direct", "edgeplane"] {
        let result = peer(&report, "http1-keepalive", name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(result.rounds.len(), 2);
        for round in &result.rounds {
            assert!(round.throughput > 0.0 && round.completed > 0, "{name}: {round:?}");
            assert_eq!(round.errors, 0, "{name}: {round:?}");
            let latency = &round.latency;
            assert!(latency.p50 > 0 && latency.p50 <= latency.p99 && latency.p99 <= latency.max, "{latency:?}");
            assert!(!latency.curve.is_empty());
        }
        assert!(result.summary.throughput.min <= result.summary.throughput.median);
    }
    let edge = peer(&report, "http1-keepalive", "edgeplane").unwrap();
    assert!(edge.version.as_deref().is_some_and(|v| v.starts_with("0.")), "{:?}", edge.version);
    for round in &edge.rounds {
        assert!(round.cpu_us_per_request.is_some_and(|c| c > 0.0 && c < 100_000.0), "{round:?}");
        assert!(round.rss_kib > 1_000 && round.peak_rss_kib >= round.rss_kib, "{round:?}");
    }
    assert!(peer(&report, "http1-keepalive", "direct").unwrap().rounds[0].cpu_us_per_request.is_none());
    if nginx {
        let nginx = peer(&report, "http1-keepalive", "nginx").expect("nginx is installed, so it runs");
        assert!(nginx.rounds.iter().all(|r| r.errors == 0 && r.throughput > 0.0));
    }

    // HTTP/2 through edgeplane, bulk in MB/s, reloads counted, memory held.
    assert!(peer(&report, "http2-multiplexed", "edgeplane").unwrap().summary.throughput.median > 0.0);
    let bulk = report.scenarios.iter().find(|s| s.name == "tcp-bulk").unwrap();
    assert_eq!(bulk.unit, "MB/s");
    assert!(peer(&report, "tcp-bulk", "edgeplane").unwrap().summary.throughput.median > 1.0);
    let reloads = peer(&report, "reload-under-load", "edgeplane").unwrap();
    for round in &reloads.rounds {
        let counted = round.reloads.expect("reload counts");
        assert!(counted.requested >= 2 && counted.applied == counted.requested && counted.failed == 0, "{counted:?}");
        assert_eq!(round.errors, 0);
    }
    let idle = peer(&report, "idle-connections", "edgeplane").unwrap();
    assert_eq!(idle.rounds[0].completed, 20);
    assert!(idle.rounds[0].rss_kib > 1_000);

    // Absent peers are reported, not dropped.
    let skipped: Vec<&str> = report.scenarios[0].skipped.iter().map(|s| s.peer.as_str()).collect();
    assert!(!skipped.contains(&"edgeplane"), "{skipped:?}");
    let scenario = report.scenarios.iter().find(|s| s.name == "reload-under-load").unwrap();
    assert!(scenario.skipped.iter().any(|s| s.peer == "direct"));

    // The machine, and the written report.
    assert!(report.machine.cores >= 1 && !report.machine.arch.is_empty());
    let out = work.path().join("out");
    let written = bench::report::write(&report, &out).unwrap();
    assert!(written.iter().any(|p| p.ends_with("report.md")));
    assert_eq!(bench::report::read(&out).unwrap(), report);
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("## http1-keepalive") && markdown.contains("edgeplane"));
}
