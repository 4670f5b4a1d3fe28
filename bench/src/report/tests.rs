use std::fs;
use std::path::Path;

use super::*;
use crate::model::{Latency, Machine, Round, Settings, Skipped, Summary};

/// A latency curve shaped like a real one: flat body, rising tail.
fn curve(p50: u64) -> Vec<(f64, u64)> {
    [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 99.999]
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, p50 * (8 + (i as u64).pow(2)) / 20))
        .collect()
}

/// A closed-loop request/response round.
fn round(throughput: f64, p50: u64, cpu: Option<f64>, rss_kib: u64) -> Round {
    Round {
        throughput,
        completed: (throughput * 10.0) as u64,
        errors: 0,
        offered_rate: None,
        latency: Latency {
            mean: p50 as f64 * 1.1,
            p50,
            p90: p50 * 2,
            p99: p50 * 4,
            p999: p50 * 10,
            max: p50 * 30,
            curve: curve(p50),
        },
        cpu_seconds: cpu.map_or(0.0, |c| c * throughput * 10.0 / 1e6),
        cpu_us_per_request: cpu,
        rss_kib,
        // No proxy process (direct): no memory either.
        peak_rss_kib: if rss_kib == 0 { 0 } else { rss_kib + 1024 },
        reloads: None,
        bytes_per_connection: None,
    }
}

/// A bulk-transfer round: MB/s, no latency, no CPU per request.
fn bulk_round(mb_per_sec: f64, rss_kib: u64) -> Round {
    Round {
        throughput: mb_per_sec,
        completed: (mb_per_sec * 1e7) as u64,
        errors: 0,
        offered_rate: None,
        latency: Latency::default(),
        cpu_seconds: 4.2,
        cpu_us_per_request: None,
        rss_kib,
        peak_rss_kib: rss_kib * 2,
        reloads: None,
        bytes_per_connection: None,
    }
}

fn peer(name: &str, version: Option<&str>, rounds: Vec<Round>) -> PeerResult {
    let summary = Summary::of(&rounds);
    PeerResult { peer: name.into(), version: version.map(String::from), rounds, summary }
}

fn skipped(peer: &str, reason: &str) -> Skipped {
    Skipped { peer: peer.into(), reason: reason.into() }
}

fn sample() -> Report {
    let keepalive = ScenarioResult {
        name: "http1-keepalive".into(),
        description: "HTTP/1.1 keep-alive, 64 B responses".into(),
        unit: "req/s".into(),
        peers: vec![
            // direct: medians 100,000 req/s; edgeplane 60,000 -> 0.60x direct.
            peer(
                "direct",
                None,
                vec![round(99_000.0, 60, None, 0), round(100_000.0, 62, None, 0), round(101_500.0, 61, None, 0)],
            ),
            peer(
                "edgeplane",
                Some("0.1.0"),
                vec![
                    round(59_000.0, 85, Some(16.1), 8_600),
                    round(60_000.0, 84, Some(16.2), 8_704),
                    round(61_000.0, 90, Some(16.5), 8_700),
                ],
            ),
            // nginx: 54,000 -> 0.90x edgeplane.
            peer(
                "nginx",
                Some("1.22.1"),
                vec![
                    round(53_000.0, 95, Some(18.8), 6_400),
                    round(54_000.0, 97, Some(18.9), 6_500),
                    round(55_000.0, 99, Some(19.0), 6_600),
                ],
            ),
            peer("haproxy", Some("2.6.12"), vec![round(51_000.0, 1_240, Some(19.0), 16_000)]),
        ],
        skipped: vec![
            skipped("envoy", "binary `envoy` not found on PATH"),
            skipped("pipy", "no pipy build for aarch64"),
        ],
    };

    let bulk = ScenarioResult {
        name: "tcp-bulk".into(),
        description: "One TCP stream, 64 KiB writes".into(),
        unit: "MB/s".into(),
        peers: vec![
            peer("direct", None, vec![bulk_round(2_400.0, 0), bulk_round(2_500.0, 0)]),
            peer("edgeplane", Some("0.1.0"), vec![bulk_round(1_900.0, 9_000), bulk_round(2_000.0, 9_100)]),
            peer("haproxy", Some("2.6.12"), vec![bulk_round(1_800.0, 15_000), bulk_round(1_850.0, 15_500)]),
        ],
        skipped: vec![skipped("nginx", "stream module not built in")],
    };

    let open_loop = |rate: f64, achieved: f64, p50: u64, errors: u64| Round {
        offered_rate: Some(rate),
        errors,
        ..round(achieved, p50, Some(17.0), 9_000)
    };
    let fixed_rate = ScenarioResult {
        name: "http1-fixed-rate".into(),
        description: "HTTP/1.1 at a fixed 20,000 req/s".into(),
        unit: "req/s".into(),
        peers: vec![
            peer(
                "edgeplane",
                Some("0.1.0"),
                vec![open_loop(20_000.0, 19_990.0, 70, 0), open_loop(20_000.0, 19_995.0, 72, 0)],
            ),
            peer(
                "nginx",
                Some("1.22.1"),
                vec![open_loop(20_000.0, 16_000.0, 400, 12), open_loop(20_000.0, 16_400.0, 380, 0)],
            ),
        ],
        skipped: vec![],
    };

    Report {
        schema_version: SCHEMA_VERSION,
        started_at: "2026-11-22T09:14:03Z".into(),
        machine: Machine {
            cpu_model: "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz".into(),
            cores: 2,
            kernel: "6.1.0-18-amd64".into(),
            arch: "x86_64".into(),
            os: "Debian GNU/Linux 12".into(),
        },
        settings: Settings {
            rounds: 3,
            warmup_secs: 2.0,
            duration_secs: 10.0,
            connections: 64,
            streams: 8,
            payload_bytes: 64,
            proxy_threads: 1,
            proxy_cpus: vec![1],
            load_cpus: vec![0],
        },
        scenarios: vec![keepalive, bulk, fixed_rate],
    }
}

/// The table row of `peer` in the section of `scenario`.
fn table_row<'a>(md: &'a str, scenario: &str, peer: &str) -> &'a str {
    let section = md.split(&format!("\n## {scenario}\n")).nth(1).expect("scenario section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .find(|l| l.starts_with(&format!("| {peer} |")) || l.starts_with(&format!("| **{peer}** |")))
        .unwrap_or_else(|| panic!("no row for {peer} in {scenario}:\n{section}"))
}

fn cells(row: &str) -> Vec<&str> {
    row.trim_matches('|').split(" | ").map(str::trim).collect()
}

#[test]
fn results_json_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = sample();
    // Values that need every digit to come back equal.
    report.scenarios[0].peers[1].rounds[0].throughput = 1.0 / 3.0;
    report.scenarios[0].peers[1].rounds[1].cpu_seconds = 0.1 + 0.2;
    report.scenarios[0].peers[1].summary.curve[3].0 = 2f64.sqrt() * 1e-7;

    let written = write(&report, dir.path()).unwrap();
    assert!(written.contains(&dir.path().join(RESULTS_JSON)));
    assert_eq!(read(&dir.path().join(RESULTS_JSON)).unwrap(), report);
    // A results directory can be named instead of its results.json.
    assert_eq!(read(dir.path()).unwrap(), report);
}

#[test]
fn read_rejects_other_schema_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = sample();
    report.schema_version = SCHEMA_VERSION + 1;
    write(&report, dir.path()).unwrap();
    let err = read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("schema version"), "{err}");

    fs::write(dir.path().join(RESULTS_JSON), "{\"something\": 1}").unwrap();
    assert!(read(dir.path()).is_err());
    assert!(read(&dir.path().join("missing.json")).is_err());
}

#[test]
fn markdown_header() {
    let md = markdown(&sample());
    assert!(md.starts_with("# Benchmark report — 2026-11-22\n"), "{md}");
    for expected in [
        "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz, 2 cores, x86_64, kernel 6.1.0-18-amd64 (Debian GNU/Linux 12)",
        "3 per peer, 10 s each after 2 s warm-up",
        "64 connections, 8 streams per HTTP/2 connection, 64 B payload",
        "1 worker thread each, pinned to CPU 1; load generator and upstreams on CPU 0",
        "edgeplane 0.1.0, nginx 1.22.1, haproxy 2.6.12",
    ] {
        assert!(md.contains(expected), "missing {expected:?} in:\n{md}");
    }
}

#[test]
fn markdown_tables() {
    let report = sample();
    let md = markdown(&report);

    for scenario in &report.scenarios {
        assert!(md.contains(&format!("\n## {}\n", scenario.name)));
        for peer in &scenario.peers {
            table_row(&md, &scenario.name, &peer.peer);
        }
    }

    // http1-keepalive: direct 100,000, edgeplane 60,000, nginx 54,000 req/s.
    let edgeplane = cells(table_row(&md, "http1-keepalive", "edgeplane"));
    assert_eq!(edgeplane[0], "**edgeplane**");
    assert_eq!(edgeplane[1], "60,000 (59,000–61,000)");
    assert_eq!(edgeplane[2], "0.60×", "vs direct");
    assert_eq!(edgeplane[3], "1.00×", "vs edgeplane");
    assert_eq!(&edgeplane[4..7], ["85 µs", "340 µs", "850 µs"]);
    assert_eq!(edgeplane[7], "16.2");
    assert_eq!(&edgeplane[8..10], ["8.5 MiB", "9.5 MiB"]);
    assert_eq!(edgeplane[10], "0");
    let nginx = cells(table_row(&md, "http1-keepalive", "nginx"));
    assert_eq!(&nginx[2..4], ["0.54×", "0.90×"]);
    let haproxy = cells(table_row(&md, "http1-keepalive", "haproxy"));
    assert_eq!(haproxy[1], "51,000", "one round: no range");
    assert_eq!(haproxy[4], "1.24 ms");
    let direct = cells(table_row(&md, "http1-keepalive", "direct"));
    assert_eq!(direct[2], "1.00×");
    assert_eq!(&direct[7..10], ["—", "—", "—"], "no proxy: no CPU or memory");

    // tcp-bulk: no latency or CPU columns at all.
    let header = md.lines().find(|l| l.starts_with("| peer | MB/s")).expect("bulk header");
    assert!(!header.contains("p99") && !header.contains("CPU"), "{header}");
    assert!(header.contains("RSS"), "{header}");
    assert!(md.contains("No per-request latency in this scenario."));

    // http1-fixed-rate: the offered rate is shown, errors stand out, falling behind is flagged.
    let header = md.lines().find(|l| l.starts_with("| peer | offered rate |")).expect("open-loop header");
    assert!(!header.contains("vs direct"), "no direct peer in this scenario: {header}");
    let nginx = cells(table_row(&md, "http1-fixed-rate", "nginx"));
    assert_eq!(nginx[1], "20,000/s");
    assert_eq!(nginx[2], "16,200 (16,000–16,400)");
    assert_eq!(nginx[3], "0.81×", "vs edgeplane");
    assert_eq!(nginx.last().copied(), Some("**⚠ 12**"));
    assert!(md.contains("⚠ **nginx** had 12 errors over 1 of 2 rounds"), "{md}");
    assert!(md.contains("⚠ **nginx** fell behind the offered rate: it completed 81% of it."), "{md}");
    assert!(!md.contains("⚠ **edgeplane**"), "{md}");
}

#[test]
fn markdown_lists_skipped_peers_and_links_charts() {
    let md = markdown(&sample());
    assert!(md.contains(
        "Skipped:\n\n- **envoy**: binary `envoy` not found on PATH\n- **pipy**: no pipy build for aarch64\n"
    ));
    assert!(md.contains("- **nginx**: stream module not built in"));
    assert!(md.contains(
        "Charts: [throughput](charts/http1-keepalive-throughput.svg) · \
         [latency percentiles](charts/http1-keepalive-latency.svg) · \
         [CPU per request](charts/http1-keepalive-cpu.svg) · [memory](charts/http1-keepalive-memory.svg)"
    ));
    assert!(
        md.contains("Charts: [throughput](charts/tcp-bulk-throughput.svg) · [memory](charts/tcp-bulk-memory.svg)\n")
    );

    // The overview: every other peer against edgeplane, skipped ones marked.
    assert!(md.contains("| scenario | direct | nginx | haproxy | envoy | pipy |"), "{md}");
    assert!(md.contains("| [http1-keepalive](#http1-keepalive) | 1.67× | 0.90× | 0.85× | skipped | skipped |"), "{md}");
    assert!(md.contains("| [tcp-bulk](#tcp-bulk) | 1.26× | skipped | 0.94× | — | — |"), "{md}");
}

#[test]
fn markdown_of_a_scenario_nobody_ran() {
    let mut report = sample();
    report.scenarios.truncate(1);
    report.scenarios[0].peers.clear();
    let md = markdown(&report);
    assert!(md.contains("No peer ran this scenario."));
    assert!(md.contains("- **envoy**: binary `envoy` not found on PATH"));
    assert!(!md.contains("Charts:"));
    assert!(!md.contains("## At a glance"));
}

fn svg_text(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: not XML: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants().filter_map(|n| n.text()).collect::<Vec<_>>().join("\n")
}

#[test]
fn charts_are_written_for_data_only() {
    let dir = tempfile::tempdir().unwrap();
    let report = sample();
    let written = write(&report, dir.path()).unwrap();
    let charts = dir.path().join(CHARTS_DIR);

    let expected = [
        ("http1-keepalive", &["throughput", "latency", "cpu", "memory"][..]),
        ("tcp-bulk", &["throughput", "memory"][..]),
        ("http1-fixed-rate", &["throughput", "latency", "cpu", "memory"][..]),
    ];
    let mut files: Vec<String> =
        fs::read_dir(&charts).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    let mut wanted: Vec<String> = expected
        .iter()
        .flat_map(|(scenario, kinds)| kinds.iter().map(move |kind| format!("{scenario}-{kind}.svg")))
        .collect();
    wanted.sort();
    assert_eq!(files, wanted);
    assert!(!charts.join("tcp-bulk-latency.svg").exists());
    assert!(!charts.join("tcp-bulk-cpu.svg").exists());
    assert_eq!(written.len(), 2 + wanted.len());
    assert!(written.iter().all(|p| p.exists()), "{written:?}");

    for scenario in &report.scenarios {
        for kind in ChartKind::ALL {
            let path = charts.join(format!("{}-{}.svg", scenario.name, kind.slug()));
            if !path.exists() {
                continue;
            }
            let text = svg_text(&path);
            assert!(text.contains(&scenario.name), "{}: no title", path.display());
            let shown = scenario.peers.iter().filter(|p| match kind {
                ChartKind::Throughput | ChartKind::Latency => true,
                ChartKind::Cpu | ChartKind::Memory | ChartKind::PerConnection => p.peer != DIRECT,
            });
            for peer in shown {
                assert!(text.lines().any(|l| l == peer.peer), "{}: no {}", path.display(), peer.peer);
            }
        }
    }

    let latency = svg_text(&charts.join("http1-keepalive-latency.svg"));
    for tick in ["0%", "90%", "99%", "99.9%", "99.99%"] {
        assert!(latency.lines().any(|l| l == tick), "no {tick} tick");
    }
    assert!(latency.contains("latency (log scale)"));
    let throughput = svg_text(&charts.join("http1-keepalive-throughput.svg"));
    assert!(throughput.contains("throughput, req/s"));
    assert!(throughput.contains("60,000"), "median printed on the bar");
    assert!(svg_text(&charts.join("http1-fixed-rate-throughput.svg")).contains("offered rate"));
    assert!(svg_text(&charts.join("tcp-bulk-memory.svg")).contains("peak RSS"));
}

#[test]
fn peers_keep_their_color_across_charts() {
    let dir = tempfile::tempdir().unwrap();
    write(&sample(), dir.path()).unwrap();
    let edgeplane = "#D55E00";
    assert_eq!(charts::peer_color(EDGEPLANE), plotters::style::RGBColor(0xD5, 0x5E, 0x00));
    for kind in ["throughput", "latency", "cpu", "memory"] {
        let text = fs::read_to_string(dir.path().join(CHARTS_DIR).join(format!("http1-keepalive-{kind}.svg"))).unwrap();
        assert!(text.to_uppercase().contains(edgeplane), "{kind}: edgeplane's color missing");
    }
}

#[test]
fn empty_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = sample();
    report.scenarios.clear();
    let written = write(&report, dir.path()).unwrap();
    assert_eq!(written, [dir.path().join(RESULTS_JSON), dir.path().join(REPORT_MD)]);
    assert!(!dir.path().join(CHARTS_DIR).exists());
    assert_eq!(read(dir.path()).unwrap(), report);
}

#[test]
fn scenario_names_become_safe_file_names() {
    assert_eq!(file_stem("http1-keepalive"), "http1-keepalive");
    assert_eq!(file_stem("h2 / 16 streams"), "h2---16-streams");
    assert_eq!(file_stem(".."), "scenario");
    assert_eq!(chart_path("a b", ChartKind::Cpu), "charts/a-b-cpu.svg");
}

/// MQTT figures: messages per second with CPU per message, and memory per
/// idle connection (the direct row being the broker's own).
fn mqtt_sample() -> Report {
    let msg = |throughput: f64, cpu: Option<f64>, rss: u64| round(throughput, 200, cpu, rss);
    let qos0 = ScenarioResult {
        name: "mqtt-qos0".into(),
        description: "MQTT QoS 0".into(),
        unit: "msg/s".into(),
        peers: vec![
            peer("direct", None, vec![msg(80_000.0, None, 0), msg(82_000.0, None, 0)]),
            peer("edgeplane", Some("0.1.0"), vec![msg(76_000.0, Some(9.0), 9_000), msg(78_000.0, Some(9.5), 9_000)]),
        ],
        skipped: vec![],
    };
    let idle_round = |rss_kib: u64, bytes: f64| Round {
        bytes_per_connection: Some(bytes),
        latency: Latency::default(),
        cpu_us_per_request: None,
        ..round(10_000.0, 0, None, rss_kib)
    };
    let idle = ScenarioResult {
        name: "mqtt-idle".into(),
        description: "idle MQTT connections".into(),
        unit: "connections".into(),
        peers: vec![
            peer("direct", None, vec![idle_round(30_000, 2_900.0), idle_round(30_100, 2_950.0)]),
            peer("edgeplane", Some("0.1.0"), vec![idle_round(40_000, 3_300.0), idle_round(40_000, 3_300.0)]),
        ],
        skipped: vec![skipped("nginx", "not installed")],
    };
    Report { scenarios: vec![qos0, idle], ..sample() }
}

#[test]
fn mqtt_figures_in_tables_json_and_charts() {
    let report = mqtt_sample();
    let md = markdown(&report);
    let header = md.lines().find(|l| l.starts_with("| peer | msg/s")).expect("msg/s header");
    assert!(header.contains("CPU µs/msg"), "{header}");
    assert!(!header.contains("per connection"), "{header}");
    let edgeplane = cells(table_row(&md, "mqtt-qos0", "edgeplane"));
    assert_eq!(edgeplane[2], "0.95×", "vs direct");

    let header = md.lines().find(|l| l.starts_with("| peer | connections")).expect("idle header");
    assert!(header.contains("RSS per connection"), "{header}");
    assert_eq!(cells(table_row(&md, "mqtt-idle", "edgeplane")).iter().rev().nth(1).copied(), Some("3,300 B"));
    let direct = cells(table_row(&md, "mqtt-idle", "direct"));
    assert_eq!(direct.iter().rev().nth(1).copied(), Some("2,925 (2,900–2,950) B"));
    assert!(md.contains("RSS per connection: resident memory with the connections open"), "{md}");
    assert!(md.contains("[CPU per message](charts/mqtt-qos0-cpu.svg)"), "{md}");

    let dir = tempfile::tempdir().unwrap();
    write(&report, dir.path()).unwrap();
    assert_eq!(read(dir.path()).unwrap(), report);
    let charts = dir.path().join(CHARTS_DIR);
    let per_connection = svg_text(&charts.join("mqtt-idle-per-connection.svg"));
    assert!(per_connection.contains("per connection, bytes"), "{per_connection}");
    assert!(per_connection.lines().any(|l| l == "edgeplane") && per_connection.lines().any(|l| l == "direct"));
    assert!(svg_text(&charts.join("mqtt-qos0-cpu.svg")).contains("µs per message"));
    assert!(!charts.join("mqtt-qos0-per-connection.svg").exists());
    // The field is written where there is a figure, and left out elsewhere.
    let json = fs::read_to_string(dir.path().join(RESULTS_JSON)).unwrap();
    assert!(json.contains("\"bytes_per_connection\""));
    assert!(!serde_json::to_string(&sample()).unwrap().contains("bytes_per_connection"));
}

/// TLS figures: handshakes per second with CPU per handshake, and the
/// sidecar pairs with what mTLS between them adds.
fn tls_sample() -> Report {
    let handshake = ScenarioResult {
        name: "tls-handshake".into(),
        description: "a new TLS connection per request".into(),
        unit: "handshakes/s".into(),
        peers: vec![
            peer("edgeplane", Some("0.1.0"), vec![round(4_000.0, 900, Some(150.0), 9_000)]),
            peer("nginx", Some("1.22.1"), vec![round(2_000.0, 1_800, Some(300.0), 9_000)]),
        ],
        skipped: vec![skipped("direct", "no proxy, no TLS")],
    };
    let at = |p50: u64, cpu: f64| Round { offered_rate: Some(10_000.0), ..round(10_000.0, p50, Some(cpu), 20_000) };
    let fixed = ScenarioResult {
        name: "mtls-sidecar-pair".into(),
        description: "the pair at 50%".into(),
        unit: "req/s".into(),
        peers: vec![
            peer("direct", None, vec![Round { offered_rate: Some(10_000.0), ..round(10_000.0, 100, None, 0) }]),
            peer(crate::pair::PLAIN, Some("0.1.0"), vec![at(400, 40.0), at(420, 40.0)]),
            peer(crate::pair::MTLS, Some("0.1.0"), vec![at(500, 46.5), at(520, 46.5)]),
        ],
        skipped: vec![],
    };
    let max = ScenarioResult {
        name: "sidecar-pair-max".into(),
        description: "the pair, closed loop".into(),
        unit: "req/s".into(),
        peers: vec![
            peer(crate::pair::PLAIN, Some("0.1.0"), vec![round(20_000.0, 2_000, Some(40.0), 20_000)]),
            peer(crate::pair::MTLS, Some("0.1.0"), vec![round(17_000.0, 2_400, Some(47.0), 20_000)]),
        ],
        skipped: vec![],
    };
    Report { scenarios: vec![handshake, max, fixed], ..sample() }
}

#[test]
fn tls_figures_in_tables_and_notes() {
    let md = markdown(&tls_sample());
    let header = md.lines().find(|l| l.starts_with("| peer | handshakes/s")).expect("handshakes/s header");
    assert!(header.contains("CPU µs/handshake |"), "{header}");
    assert!(md.contains("[CPU per handshake](charts/tls-handshake-cpu.svg)"), "{md}");
    assert!(md.contains("- **direct**: no proxy, no TLS"), "{md}");
    // 450 → 510 µs at p50 (medians of 400/420 and 500/520), p99 4× that.
    assert!(
        md.contains(
            "**mTLS between the sidecars** (edgeplane-mtls-pair against edgeplane-pair, medians): adds p50 +100 µs, \
             p99 +400 µs, p99.9 +1.00 ms, CPU +6.50 µs/req (46.5 against 40.0)."
        ),
        "{md}"
    );
    assert!(md.contains("the plaintext pair's throughput, CPU +7.00 µs/req (47.0 against 40.0)."), "{md}");
    assert!(md.contains(": 0.85× the plaintext pair's throughput"), "{md}");
    let dir = tempfile::tempdir().unwrap();
    write(&tls_sample(), dir.path()).unwrap();
    assert!(svg_text(&dir.path().join(CHARTS_DIR).join("tls-handshake-cpu.svg")).contains("µs per handshake"));
}
