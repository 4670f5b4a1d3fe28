//! `report.md`: what an operator choosing a sidecar reads first.

use std::fmt::Write as _;

use super::format::{self, cell};
use super::{chart_path, charts, find, has_latency, has_memory, ChartKind, DIRECT, EDGEPLANE};
use crate::model::{PeerResult, Report, ScenarioResult, Spread};

/// Below this share of the offered rate, an open-loop peer is flagged as having fallen behind.
const FELL_BEHIND: f64 = 0.95;

/// The Markdown report for `report` (what `write` puts in `report.md`).
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    header(&mut out, report);
    at_a_glance(&mut out, report);
    for scenario in &report.scenarios {
        scenario_section(&mut out, scenario);
    }
    out
}

fn header(out: &mut String, report: &Report) {
    let (m, s) = (&report.machine, &report.settings);
    let date = report.started_at.get(..10).filter(|d| d.as_bytes().get(4) == Some(&b'-')).unwrap_or("");
    if date.is_empty() {
        out.push_str("# Benchmark report\n\n");
    } else {
        let _ = writeln!(out, "# Benchmark report — {date}\n");
    }
    let _ = writeln!(out, "Run started {}.\n", format::line(&report.started_at));

    let mut machine = format!(
        "{}, {}, {}, kernel {}",
        format::line(&m.cpu_model),
        format::plural(m.cores, "core", "cores"),
        format::line(&m.arch),
        format::line(&m.kernel)
    );
    if !m.os.is_empty() {
        let _ = write!(machine, " ({})", format::line(&m.os));
    }
    let _ = writeln!(out, "- **Machine:** {machine}");
    let _ = writeln!(
        out,
        "- **Rounds:** {} per peer, {} each after {} warm-up",
        s.rounds,
        format::seconds(s.duration_secs),
        format::seconds(s.warmup_secs)
    );
    let _ = writeln!(
        out,
        "- **Load:** {}, {} per HTTP/2 connection, {} payload",
        format::plural(s.connections, "connection", "connections"),
        format::plural(s.streams, "stream", "streams"),
        format::bytes(s.payload_bytes)
    );
    let pinning = match (s.proxy_cpus.is_empty(), s.load_cpus.is_empty()) {
        (true, true) => "not pinned to CPUs".to_string(),
        (false, true) => format!("pinned to {}; load generator and upstreams not pinned", format::cpus(&s.proxy_cpus)),
        (true, false) => format!("not pinned; load generator and upstreams on {}", format::cpus(&s.load_cpus)),
        (false, false) => format!(
            "pinned to {}; load generator and upstreams on {}",
            format::cpus(&s.proxy_cpus),
            format::cpus(&s.load_cpus)
        ),
    };
    let _ = writeln!(
        out,
        "- **Proxies:** {} each, {pinning}",
        format::plural(s.proxy_threads, "worker thread", "worker threads")
    );
    let versions = versions(report);
    if !versions.is_empty() {
        let _ = writeln!(out, "- **Versions:** {}", versions.join(", "));
    }
    out.push('\n');
    out.push_str(
        "Figures are medians over the rounds, with the min–max range in brackets. Ratios compare median \
         throughput within this run (above 1.00× = faster than the reference). Latency is as the load \
         generator saw it: the median over rounds of each round's percentile. CPU µs/req is the proxy's \
         user + system CPU time per completed request, the fairest efficiency figure when the load side \
         saturates first. RSS is the proxy's resident memory at the end of a round; peak is its high-water \
         mark. `direct` is the load generator talking to the upstream with no proxy in between.\n\n",
    );
}

/// `edgeplane 0.1.0, nginx 1.22.1, ...`: each peer once, with every distinct version it reported.
fn versions(report: &Report) -> Vec<String> {
    let mut seen: Vec<(String, Option<String>)> = Vec::new();
    for peer in report.scenarios.iter().flat_map(|s| &s.peers) {
        let key = (peer.peer.clone(), peer.version.clone());
        if peer.version.is_some() && !seen.contains(&key) {
            seen.push(key);
        }
    }
    seen.into_iter().map(|(peer, version)| format::line(&format!("{peer} {}", version.unwrap_or_default()))).collect()
}

/// One row per scenario, one column per peer: throughput relative to edgeplane's.
fn at_a_glance(out: &mut String, report: &Report) {
    let with_edgeplane: Vec<&ScenarioResult> = report
        .scenarios
        .iter()
        .filter(|s| find(s, EDGEPLANE).is_some_and(|e| e.summary.throughput.median > 0.0))
        .collect();
    if with_edgeplane.len() < 2 {
        return;
    }
    let mut peers: Vec<&str> = Vec::new();
    for scenario in &with_edgeplane {
        let names =
            scenario.peers.iter().map(|p| p.peer.as_str()).chain(scenario.skipped.iter().map(|s| s.peer.as_str()));
        for name in names {
            if name != EDGEPLANE && !peers.contains(&name) {
                peers.push(name);
            }
        }
    }
    if peers.is_empty() {
        return;
    }
    out.push_str("## At a glance\n\n");
    out.push_str("Median throughput of each peer relative to edgeplane's in the same scenario (below 1.00× = slower than edgeplane).\n\n");
    let _ = writeln!(out, "| scenario | {} |", peers.iter().map(|p| cell(p)).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|---|{}", "--:|".repeat(peers.len()));
    for scenario in with_edgeplane {
        let edgeplane = find(scenario, EDGEPLANE).map_or(0.0, |e| e.summary.throughput.median);
        let cells: Vec<String> = peers
            .iter()
            .map(|&name| match find(scenario, name) {
                Some(peer) => format::ratio(peer.summary.throughput.median, edgeplane),
                None if scenario.skipped.iter().any(|s| s.peer == name) => "skipped".into(),
                None => "—".into(),
            })
            .collect();
        let _ = writeln!(out, "| [{}](#{}) | {} |", cell(&scenario.name), anchor(&scenario.name), cells.join(" | "));
    }
    out.push('\n');
}

/// GitHub's heading anchor for a scenario heading.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The columns a scenario's table has: the ones with nothing to show for any peer are left out.
struct Columns {
    offered: bool,
    direct: Option<f64>,
    edgeplane: Option<f64>,
    latency: bool,
    cpu: bool,
    memory: bool,
    per_connection: bool,
}

impl Columns {
    fn of(scenario: &ScenarioResult) -> Columns {
        let reference = |name| find(scenario, name).map(|p| p.summary.throughput.median).filter(|t| *t > 0.0);
        Columns {
            offered: scenario.peers.iter().any(|p| offered(p).is_some()),
            direct: reference(DIRECT),
            edgeplane: reference(EDGEPLANE),
            latency: scenario.peers.iter().any(has_latency),
            cpu: scenario.peers.iter().any(|p| p.summary.cpu_us_per_request.is_some()),
            memory: scenario.peers.iter().any(has_memory),
            per_connection: scenario.peers.iter().any(|p| p.summary.bytes_per_connection.is_some()),
        }
    }
}

/// The rate asked for in an open-loop peer's rounds.
fn offered(peer: &PeerResult) -> Option<Spread> {
    Spread::of(peer.rounds.iter().filter_map(|r| r.offered_rate))
}

fn scenario_section(out: &mut String, scenario: &ScenarioResult) {
    let _ = writeln!(out, "## {}\n", format::line(&scenario.name));
    if !scenario.description.trim().is_empty() {
        let _ = writeln!(out, "{}\n", format::line(scenario.description.trim()));
    }
    let columns = Columns::of(scenario);
    if scenario.peers.is_empty() {
        out.push_str("No peer ran this scenario.\n\n");
    } else {
        table(out, scenario, &columns);
        notes(out, scenario, &columns);
    }

    if !scenario.skipped.is_empty() {
        out.push_str("Skipped:\n\n");
        for skipped in &scenario.skipped {
            let _ = writeln!(out, "- **{}**: {}", format::line(&skipped.peer), format::line(&skipped.reason));
        }
        out.push('\n');
    }

    let links: Vec<String> = charts::kinds(scenario)
        .into_iter()
        .map(|kind| {
            let text = match kind {
                ChartKind::Cpu if scenario.unit == "msg/s" => "CPU per message",
                ChartKind::Cpu if scenario.unit == "handshakes/s" => "CPU per handshake",
                _ => kind.link_text(),
            };
            format!("[{text}]({})", chart_path(&scenario.name, kind))
        })
        .collect();
    if !links.is_empty() {
        let _ = writeln!(out, "Charts: {}\n", links.join(" · "));
    }
}

fn table(out: &mut String, scenario: &ScenarioResult, columns: &Columns) {
    let unit = if scenario.unit.is_empty() { "throughput" } else { scenario.unit.as_str() };
    let mut head = vec!["peer".to_string()];
    if columns.offered {
        head.push("offered rate".into());
    }
    head.push(format!("{} (min–max)", cell(unit)));
    if columns.direct.is_some() {
        head.push("vs direct".into());
    }
    if columns.edgeplane.is_some() {
        head.push("vs edgeplane".into());
    }
    if columns.latency {
        head.extend(["p50", "p99", "p99.9"].map(String::from));
    }
    if columns.cpu {
        head.push(format!("CPU µs/{}", crate::model::per_unit(unit)));
    }
    if columns.memory {
        head.extend(["RSS", "peak RSS"].map(String::from));
    }
    if columns.per_connection {
        head.push("RSS per connection".into());
    }
    head.push("errors".into());

    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|---|{}", "--:|".repeat(head.len() - 1));
    for peer in &scenario.peers {
        let _ = writeln!(out, "| {} |", row(peer, columns).join(" | "));
    }
    out.push('\n');
}

fn row(peer: &PeerResult, columns: &Columns) -> Vec<String> {
    let s = &peer.summary;
    let name = cell(&peer.peer);
    let mut row = vec![if peer.peer == EDGEPLANE { format!("**{name}**") } else { name }];
    if columns.offered {
        row.push(match offered(peer) {
            Some(rate) => format!("{}/s", format::amount_with_range(rate.median, rate.min, rate.max)),
            None => "—".into(),
        });
    }
    row.push(format::amount_with_range(s.throughput.median, s.throughput.min, s.throughput.max));
    if let Some(direct) = columns.direct {
        row.push(format::ratio(s.throughput.median, direct));
    }
    if let Some(edgeplane) = columns.edgeplane {
        row.push(format::ratio(s.throughput.median, edgeplane));
    }
    if columns.latency {
        if has_latency(peer) {
            row.extend([s.p50_us, s.p99_us, s.p999_us].map(|p| format::micros(p.median)));
        } else {
            row.extend(["—", "—", "—"].map(String::from));
        }
    }
    if columns.cpu {
        row.push(s.cpu_us_per_request.map_or("—".into(), |c| format::amount(c.median)));
    }
    if columns.memory {
        if has_memory(peer) {
            row.push(format::mib(s.rss_kib.median));
            row.push(format::mib(s.peak_rss_kib.median));
        } else {
            row.extend(["—", "—"].map(String::from));
        }
    }
    if columns.per_connection {
        row.push(
            s.bytes_per_connection
                .map_or("—".into(), |b| format!("{} B", format::amount_with_range(b.median, b.min, b.max))),
        );
    }
    row.push(if s.errors == 0 { "0".into() } else { format!("**⚠ {}**", format::thousands(s.errors as f64)) });
    row
}

/// The sidecar-pair scenarios: what mTLS between the sidecars costs, the
/// mTLS pair's medians against the plaintext pair's in the same run (at the
/// same offered rate: latency added; closed loop: throughput).
fn mtls_cost(scenario: &ScenarioResult) -> Option<String> {
    let (mtls, plain) = (find(scenario, crate::pair::MTLS)?, find(scenario, crate::pair::PLAIN)?);
    let (m, p) = (&mtls.summary, &plain.summary);
    let signed_micros = |delta: f64| {
        let sign = if delta < 0.0 { "−" } else { "+" };
        format!("{sign}{}", format::micros(delta.abs()))
    };
    let cpu = match (m.cpu_us_per_request, p.cpu_us_per_request) {
        (Some(m), Some(p)) => {
            format!(
                ", CPU {} µs/req ({} against {})",
                signed(m.median - p.median),
                format::amount(m.median),
                format::amount(p.median)
            )
        }
        _ => String::new(),
    };
    let head = format!("**mTLS between the sidecars** ({} against {}, medians)", cell(&mtls.peer), cell(&plain.peer));
    if offered(mtls).is_some() {
        Some(format!(
            "{head}: adds p50 {}, p99 {}, p99.9 {}{cpu}.",
            signed_micros(m.p50_us.median - p.p50_us.median),
            signed_micros(m.p99_us.median - p.p99_us.median),
            signed_micros(m.p999_us.median - p.p999_us.median),
        ))
    } else {
        Some(format!(
            "{head}: {} the plaintext pair's throughput{cpu}.",
            format::ratio(m.throughput.median, p.throughput.median)
        ))
    }
}

/// `+1.2`, `−0.4`.
fn signed(value: f64) -> String {
    if value < 0.0 {
        format!("−{}", format::amount(-value))
    } else {
        format!("+{}", format::amount(value))
    }
}

/// Warnings under the table: errors, and open-loop peers that could not keep up.
fn notes(out: &mut String, scenario: &ScenarioResult, columns: &Columns) {
    let mut notes = Vec::new();
    for peer in &scenario.peers {
        if peer.summary.errors > 0 {
            let rounds = peer.rounds.iter().filter(|r| r.errors > 0).count();
            notes.push(format!(
                "⚠ **{}** had {} over {} of {} rounds; its figures are not comparable with error-free peers.",
                format::line(&peer.peer),
                format::plural(peer.summary.errors as usize, "error", "errors"),
                rounds,
                peer.rounds.len()
            ));
        }
        if let Some(rate) = offered(peer).filter(|r| r.median > 0.0) {
            let achieved = peer.summary.throughput.median / rate.median;
            if achieved < FELL_BEHIND {
                notes.push(format!(
                    "⚠ **{}** fell behind the offered rate: it completed {:.0}% of it.",
                    format::line(&peer.peer),
                    achieved * 100.0
                ));
            }
        }
    }
    for peer in &scenario.peers {
        let reloads: Vec<_> = peer.rounds.iter().filter_map(|r| r.reloads).collect();
        if !reloads.is_empty() {
            let sum = |f: fn(&crate::model::Reloads) -> u64| reloads.iter().map(f).sum::<u64>();
            let failed = sum(|r| r.failed);
            notes.push(format!(
                "{}**{}**: {} config reloads asked for, {} applied, {} failed, while serving the load above.",
                if failed > 0 { "⚠ " } else { "" },
                format::line(&peer.peer),
                sum(|r| r.requested),
                sum(|r| r.applied),
                failed
            ));
        }
    }
    if let Some(note) = mtls_cost(scenario) {
        notes.push(note);
    }
    if columns.offered {
        notes.push(
            "Open loop: the load generator sends at the offered rate instead of waiting for responses; \
             throughput below the offered rate means the peer could not keep up."
                .into(),
        );
    }
    if columns.per_connection {
        notes.push(
            "RSS per connection: resident memory with the connections open, less the process's own when it \
             had just started, divided by the connections held."
                .into(),
        );
    }
    if !columns.latency {
        notes.push("No per-request latency in this scenario.".into());
    }
    for note in notes {
        let _ = writeln!(out, "{note}\n");
    }
}
