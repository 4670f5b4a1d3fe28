//! `cargo run --release -p bench -- [OPTIONS]`: runs the scenarios against
//! edgeplane, the peers found and the direct baseline, and writes
//! results.json, report.md and SVG charts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser)]
#[command(name = "bench", about = "edgeplane against nginx, HAProxy, Envoy, Pipy and a direct baseline")]
struct Cli {
    /// Scenarios to run (comma-separated), or `all`: http1-keepalive, http1-new-connection,
    /// http2-multiplexed, http1-to-http2-upstream, tcp-rr, tcp-bulk, fixed-rate-50, fixed-rate-80,
    /// reload-under-load, idle-connections, http1-keepalive-wrk, http2-multiplexed-h2load,
    /// mqtt-qos0, mqtt-qos1, mqtt-fixed-rate-50, mqtt-idle, tls-keepalive, tls-handshake,
    /// sidecar-pair-max, mtls-sidecar-pair. The MQTT scenarios need mosquitto
    /// (apt-get install -y mosquitto) and are skipped without it. The TLS scenarios run edgeplane,
    /// nginx and HAProxy with one certificate made at the start (in the output's work/ directory);
    /// the sidecar-pair ones run two edgeplane sidecars in a row, plaintext and mTLS between them.
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// Measured rounds per peer; peers take turns round by round.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of load before each round's measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured per round.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Client connections (MQTT: half publishers, half subscribers, in pairs).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Response body bytes (HTTP), message bytes (tcp-rr) or PUBLISH payload bytes (MQTT, at least 16).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Worker threads for every proxy.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs for the proxies (comma-separated). Default: the last CPU.
    #[arg(long)]
    proxy_cpus: Option<String>,
    /// CPUs for the load generator and the upstreams. Default: all others.
    #[arg(long)]
    load_cpus: Option<String>,
    /// Peers given as binaries: `envoy=/path/to/envoy`, `pipy=/path/to/pipy`.
    #[arg(long = "peer", value_name = "NAME=PATH")]
    peers: Vec<String>,
    /// Only these peers (comma-separated), e.g. `edgeplane,nginx`. The direct baseline always runs.
    /// `edgeplane-policies` (edgeplane with a breaker, outlier ejection and rate limits that do not
    /// trip) runs only when named here.
    #[arg(long)]
    only: Option<String>,
    /// The edgeplane binary (default: the release build next to this one).
    #[arg(long)]
    edgeplane: Option<PathBuf>,
    /// Idle connections held in `idle-connections`.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// Idle MQTT connections held in `mqtt-idle` (the open-files limit is raised to fit, when allowed).
    #[arg(long, default_value_t = 10_000)]
    mqtt_idle_connections: usize,
    /// Directory for results.json, report.md and charts/.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bench::run::stop_peers_on_signal()?;
    let available = bench::procstat::available_cpus();
    let proxy_cpus = match &cli.proxy_cpus {
        Some(list) => cpus(list)?,
        None => vec![*available.last().context("no CPU available")?],
    };
    let load_cpus = match &cli.load_cpus {
        Some(list) => cpus(list)?,
        None => {
            let others: Vec<usize> = available.iter().copied().filter(|c| !proxy_cpus.contains(c)).collect();
            if others.is_empty() {
                eprintln!("warning: one CPU only; proxy and load share it");
                proxy_cpus.clone()
            } else {
                others
            }
        }
    };
    let scenarios: Vec<String> = if cli.scenarios == "all" {
        bench::scenario::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        cli.scenarios.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
    };
    for name in &scenarios {
        if bench::scenario::Scenario::by_name(name).is_none() {
            bail!("unknown scenario {name:?}; known: {}", bench::scenario::ALL.join(", "));
        }
    }
    let user_peers = cli
        .peers
        .iter()
        .map(|spec| {
            let (name, path) = spec.split_once('=').with_context(|| format!("--peer {spec}: expected NAME=PATH"))?;
            Ok((name.to_owned(), PathBuf::from(path)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let edgeplane = match cli.edgeplane {
        // Absolute: the peers are started in directories of their own.
        Some(path) => std::path::absolute(path)?,
        None => default_edgeplane()?,
    };
    std::fs::create_dir_all(&cli.out)?;
    let options = bench::run::Options {
        scenarios,
        rounds: cli.rounds.max(1),
        warmup: Duration::from_secs_f64(cli.warmup),
        duration: Duration::from_secs_f64(cli.duration),
        connections: cli.connections.max(1),
        streams: cli.streams.max(1),
        payload: cli.payload,
        proxy_threads: cli.threads.max(1),
        proxy_cpus,
        load_cpus,
        edgeplane,
        user_peers,
        only: cli.only.map(|list| list.split(',').map(|s| s.trim().to_owned()).collect()),
        idle_connections: cli.idle_connections,
        mqtt_idle_connections: cli.mqtt_idle_connections,
        // Absolute: each peer runs in its own directory, so a relative
        // config path on its command line would be resolved from there.
        work_dir: std::path::absolute(&cli.out)?.join("work"),
    };
    let report = bench::run::run(&options, &mut |line| eprintln!("{line}"))?;
    let written = bench::report::write(&report, &cli.out)?;
    eprintln!("wrote {} files; the report is {}", written.len(), cli.out.join("report.md").display());
    Ok(())
}

fn cpus(list: &str) -> anyhow::Result<Vec<usize>> {
    list.split(',').map(|c| c.trim().parse::<usize>().with_context(|| format!("bad CPU number {c:?}"))).collect()
}

/// `target/release/edgeplane` beside this binary (both are built by the
/// same `cargo build --release`).
fn default_edgeplane() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let candidate = me.with_file_name("edgeplane");
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "no edgeplane binary at {}: build it with `cargo build --release -p edgeplane` or pass --edgeplane PATH",
        candidate.display()
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The help text names every scenario, so it cannot fall behind the list.
    #[test]
    fn help_lists_every_scenario() {
        let help = super::Cli::command().render_long_help().to_string();
        for name in bench::scenario::ALL {
            assert!(help.contains(&format!(" {name},")) || help.contains(&format!(" {name}.")), "{name} missing");
        }
    }
}
