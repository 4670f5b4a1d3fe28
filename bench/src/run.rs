//! Running scenarios: start the upstream and every peer, interleave rounds
//! (direct, A, B, C, direct, A, B, C, ...), measure, collect.

use std::collections::HashMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::broker::{self, Broker};
use crate::load::{self, LoadResult, LoadSpec};
use crate::model::{
    Latency, PeerResult, Reloads, Report, Round, ScenarioResult, Settings, Skipped, Summary, SCHEMA_VERSION,
};
use crate::pair;
use crate::peers::{self, Launch, Peer, Topology, Wire};
use crate::procstat::{self, Usage};
use crate::scenario::{Mode, Scenario, Tls, Tool};
use crate::threads::LoadThreads;
use crate::tls::{self, TlsClient};
use crate::upstream::{Upstream, UpstreamKind};

/// Everything a run is told.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenarios: Vec<String>,
    pub rounds: u32,
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    pub streams: usize,
    pub payload: usize,
    pub proxy_threads: usize,
    pub proxy_cpus: Vec<usize>,
    pub load_cpus: Vec<usize>,
    pub edgeplane: PathBuf,
    /// `--peer envoy=PATH`, `--peer pipy=PATH`.
    pub user_peers: Vec<(String, PathBuf)>,
    /// Limit the run to these peers (by name); `None`: every peer found.
    pub only: Option<Vec<String>>,
    pub idle_connections: usize,
    /// Idle MQTT connections held in `mqtt-idle`.
    pub mqtt_idle_connections: usize,
    /// Configs, logs and pid files of the peers go here.
    pub work_dir: PathBuf,
}

/// Runs every scenario. `progress` receives one line per step.
pub fn run(options: &Options, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let started_at = crate::machine::now_rfc3339();
    // Described before pinning narrows what this process may see.
    let machine = crate::machine::describe();
    let threads = LoadThreads::start(&options.load_cpus)?;
    procstat::pin_current_thread(&options.load_cpus).context("pinning the harness to the load CPUs")?;

    let (mut found, missing) = peers::discover(options.edgeplane.clone(), &options.user_peers)?;
    match &options.only {
        Some(only) => found.retain(|peer| only.iter().any(|name| name == peer.name())),
        // An opt-in peer: it answers one question (what policies cost) and
        // would double edgeplane's share of every run.
        None => found.retain(|peer| peer.name() != peers::edgeplane::WITH_POLICIES),
    }
    let missing: Vec<Skipped> =
        missing.into_iter().filter(|skip| options.only.as_ref().is_none_or(|only| only.contains(&skip.peer))).collect();

    let mut names: Vec<String> = options.scenarios.clone();
    let needs_max = names.iter().any(|n| n.starts_with("fixed-rate"));
    if needs_max && !names.iter().any(|n| n == "http1-keepalive") {
        // Fixed-rate runs are set from each peer's own maximum.
        names.insert(0, "http1-keepalive".into());
    }
    order_rate_sources(&mut names);
    let needs_tls = names.iter().filter_map(|name| Scenario::by_name(name)).any(|s| s.tls != Tls::Off);
    let material = if needs_tls {
        // One certificate and key for every peer, and the mesh identities.
        let material = tls::Material::generate(&options.work_dir).context("generating the TLS certificates")?;
        progress(&format!(
            "   TLS: ECDSA P-256 certificate for {} in {}, mesh CA and identities in {}",
            tls::SERVER_NAME,
            material.server.cert.display(),
            material.mesh.ca.parent().unwrap_or(Path::new("")).display()
        ));
        Some(material)
    } else {
        None
    };
    let mut rates = Rates::default();
    let mut scenarios = Vec::new();
    for name in &names {
        let scenario = Scenario::by_name(name).with_context(|| format!("unknown scenario {name:?}"))?;
        progress(&format!("== {} ({})", scenario.name, scenario.description));
        let shared = Shared { options, threads: &threads, peers: &found, missing: &missing, rates: &rates };
        let result = run_scenario(&shared, &scenario, material.as_ref(), progress)?;
        for peer in &result.peers {
            if scenario.name == "http1-keepalive" {
                rates.maxima.insert(peer.peer.clone(), peer.summary.throughput.median);
            }
            if peer.peer == "direct" {
                rates.direct.insert(scenario.name, peer.summary.throughput.median);
            }
            rates.by_peer.insert((scenario.name, peer.peer.clone()), peer.summary.throughput.median);
        }
        scenarios.push(result);
    }

    Ok(Report {
        schema_version: SCHEMA_VERSION,
        started_at,
        machine,
        settings: Settings {
            rounds: options.rounds,
            warmup_secs: options.warmup.as_secs_f64(),
            duration_secs: options.duration.as_secs_f64(),
            connections: options.connections,
            streams: options.streams,
            payload_bytes: options.payload,
            proxy_threads: options.proxy_threads,
            proxy_cpus: options.proxy_cpus.clone(),
            load_cpus: options.load_cpus.clone(),
        },
        scenarios,
    })
}

/// Throughputs measured earlier in the run that open-loop scenarios set
/// their rates from.
#[derive(Default)]
struct Rates {
    /// Each peer's `http1-keepalive` median.
    maxima: HashMap<String, f64>,
    /// The direct baseline's median, by scenario.
    direct: HashMap<&'static str, f64>,
    /// Every target's median, by scenario and target.
    by_peer: HashMap<(&'static str, String), f64>,
}

/// What every scenario of a run shares.
#[derive(Clone, Copy)]
struct Shared<'a> {
    options: &'a Options,
    threads: &'a LoadThreads,
    peers: &'a [Box<dyn Peer>],
    missing: &'a [Skipped],
    rates: &'a Rates,
}

/// Puts the scenario each `FractionOfDirect` or `FractionOfPeer` scenario
/// takes its rate from before it, adding it when it was not asked for.
fn order_rate_sources(names: &mut Vec<String>) {
    let mut at = 0;
    while at < names.len() {
        if let Some(of) = Scenario::by_name(&names[at]).and_then(|s| s.rate_source()) {
            match names.iter().position(|n| n == of) {
                Some(source) if source < at => {}
                Some(source) => {
                    let moved = names.remove(source);
                    names.insert(at, moved);
                    continue;
                }
                None => {
                    names.insert(at, of.to_owned());
                    continue;
                }
            }
        }
        at += 1;
    }
}

/// Something load is sent to: the upstream itself, a running peer, or a
/// pair of sidecars.
struct Target {
    name: String,
    version: Option<String>,
    addr: SocketAddr,
    /// The peer's process (a sidecar pair: both, inbound first).
    processes: Vec<Running>,
    /// The processes whose CPU and memory are measured (added up): the
    /// peer's; for `direct`, the broker's in `mqtt-idle`, else none.
    pids: Vec<u32>,
    /// The first one's resident memory, KiB, and open descriptors, just after it started.
    baseline: Option<(u64, usize)>,
    /// TLS scenarios: the client the load connects with.
    tls: Option<TlsClient>,
    rounds: Vec<Round>,
}

impl Target {
    fn new(name: &str, version: Option<String>, addr: SocketAddr, processes: Vec<Running>, pids: Vec<u32>) -> Self {
        let baseline = pids.first().map(|&pid| (procstat::usage(pid).rss_kib, procstat::open_files(pid)));
        Target { name: name.into(), version, addr, processes, pids, baseline, tls: None, rounds: Vec::new() }
    }

    /// The (first) measured process.
    fn pid(&self) -> Option<u32> {
        self.pids.first().copied()
    }
}

/// What a scenario's load is sent to behind the proxies.
enum Backend {
    InProcess(Upstream),
    /// The broker, and its open descriptors before any client connected.
    Broker(Broker, usize),
}

impl Backend {
    fn addr(&self) -> SocketAddr {
        match self {
            Backend::InProcess(upstream) => upstream.addr(),
            Backend::Broker(broker, _) => broker.addr(),
        }
    }

    fn broker_pid(&self) -> Option<u32> {
        self.broker().map(|(pid, _)| pid)
    }

    /// The broker's pid and its open descriptors before any client connected.
    fn broker(&self) -> Option<(u32, usize)> {
        match self {
            Backend::InProcess(_) => None,
            Backend::Broker(broker, open_files) => Some((broker.pid(), *open_files)),
        }
    }
}

/// A started peer process; killed when dropped.
struct Running {
    child: Child,
    topology: Topology,
    config_dir: PathBuf,
}

/// Peers (and brokers) running now, so that an interrupted harness can stop them.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Registers a started process to be stopped if the harness is interrupted.
pub(crate) fn track(pid: u32) {
    if let Ok(mut running) = RUNNING.lock() {
        running.push(pid);
    }
}

/// Forgets a process [`track`]ed before, once it has been stopped.
pub(crate) fn untrack(pid: u32) {
    if let Ok(mut running) = RUNNING.lock() {
        running.retain(|p| *p != pid);
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP stop every running peer before the
/// harness exits, instead of leaving proxies behind on their ports. Call it
/// first thing in `main`, before any other thread starts (the signals are
/// blocked in every thread and taken by one that waits for them).
pub fn stop_peers_on_signal() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)?;
    std::thread::Builder::new().name("bench-signals".into()).spawn(move || {
        if let Ok(signal) = signals.wait() {
            eprintln!("{signal}: stopping the peers");
            let pids: Vec<u32> = RUNNING.lock().map(|r| r.clone()).unwrap_or_default();
            // All at once: each may take its grace period.
            let stopping: Vec<_> =
                pids.into_iter().map(|pid| std::thread::spawn(move || stop_tree(pid, None))).collect();
            for thread in stopping {
                let _ = thread.join();
            }
            std::process::exit(128 + signal as i32);
        }
    })?;
    Ok(())
}

/// SIGTERM to `pid`, then (once it has exited, or after a grace period)
/// SIGKILL to every process that was in its tree and is still the same
/// process (pids get reused).
pub(crate) fn stop_tree(pid: u32, child: Option<&mut Child>) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let tree: Vec<(u32, Option<u64>)> = procstat::tree(pid).into_iter().map(|p| (p, procstat::start_time(p))).collect();
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    match child {
        Some(child) => {
            while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        None => {
            while std::time::Instant::now() < deadline && procstat::start_time(pid).is_some() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    for (pid, started) in tree {
        if started.is_some() && procstat::start_time(pid) == started {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

impl Drop for Running {
    /// Stops the peer and every process it started: SIGTERM to the main
    /// process (nginx's master then stops its workers), and after a grace
    /// period SIGKILL to whatever is left of the tree. Killing only the main
    /// process would orphan nginx's workers, still holding the port.
    fn drop(&mut self) {
        let pid = self.child.id();
        stop_tree(pid, Some(&mut self.child));
        untrack(pid);
        let _ = self.child.wait();
    }
}

fn run_scenario(
    shared: &Shared<'_>,
    scenario: &Scenario,
    material: Option<&tls::Material>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<ScenarioResult> {
    let Shared { options, threads, peers, missing, rates } = *shared;
    let skipped_by_all = |reason: String, progress: &mut dyn FnMut(&str)| {
        progress(&format!("   skipped: {reason}"));
        let mut skipped: Vec<Skipped> = vec![skip("direct", &reason)];
        skipped.extend(peers.iter().map(|peer| skip(peer.name(), &reason)));
        ScenarioResult {
            name: scenario.name.into(),
            description: scenario.description.into(),
            unit: scenario.unit.into(),
            peers: Vec::new(),
            skipped,
        }
    };
    if let Mode::External(tool) = scenario.mode {
        if !crate::external::installed(tool) {
            let reason = format!("{} is not installed: apt-get install -y {}", tool.program(), tool.package());
            return Ok(skipped_by_all(reason, progress));
        }
    }
    let clients = match (scenario.mode, scenario.downstream) {
        (Mode::IdleConnections, Wire::Mqtt) => options.mqtt_idle_connections,
        (Mode::IdleConnections, _) => options.idle_connections,
        _ => options.connections,
    };
    if scenario.mode == Mode::IdleConnections {
        // A proxy holds two descriptors per client (client and upstream
        // side) plus its own few; the load side and the broker one each.
        let wanted = 2 * clients as u64 + 256;
        let (soft, hard) = peers::raise_open_files_limit(wanted);
        if soft < wanted {
            let reason = format!(
                "{clients} idle connections need about {wanted} open files in the proxy's process, and the limit \
                 cannot be raised above {soft} (hard limit {hard}; raising it needs root with CAP_SYS_RESOURCE, \
                 e.g. `ulimit -Hn {wanted}` before the run): hold fewer connections"
            );
            return Ok(skipped_by_all(reason, progress));
        }
    }
    let payload = if scenario.name == "tcp-bulk" { 64 * 1024 } else { options.payload };
    let kind = scenario.upstream_kind;
    let backend = if kind == UpstreamKind::MqttBroker {
        let Some(program) = broker::program() else { return Ok(skipped_by_all(broker::missing_reason(), progress)) };
        // Started from this thread, so the broker runs on the load CPUs.
        match Broker::start(&program, &options.work_dir.join(scenario.name).join(broker::PROGRAM)) {
            Ok(started) => {
                let version = broker::version(&program).unwrap_or_else(|| "(version unknown)".into());
                progress(&format!("   broker: {} {version} on {}", broker::PROGRAM, started.addr()));
                let open_files = procstat::open_files(started.pid());
                Backend::Broker(started, open_files)
            }
            Err(error) => return Ok(skipped_by_all(format!("{error:#}"), progress)),
        }
    } else {
        Backend::InProcess(threads.run(0, async move { Upstream::start(kind, payload).await })??)
    };
    let mut skipped: Vec<Skipped> = missing.to_vec();
    let mut targets = Vec::new();

    match (scenario.mode, scenario.downstream) {
        (Mode::ReloadUnderLoad, _) => {
            skipped.push(skip("direct", "no proxy: nothing to reload"));
        }
        // MQTT: the broker's own memory per connection, for comparison.
        (Mode::IdleConnections, Wire::Mqtt) => {}
        (Mode::IdleConnections, _) => {
            skipped.push(skip("direct", "no proxy: nothing to measure"));
        }
        _ if matches!(scenario.tls, Tls::Terminate { .. }) => {
            skipped.push(skip("direct", "no proxy, no TLS: the upstream speaks plaintext HTTP/1.1 only"));
        }
        _ => {}
    }
    // TLS scenarios: what the peers serve and what the load connects with.
    let (server_files, tls_client) = match (scenario.tls, material) {
        (Tls::Off, _) => (None, None),
        (Tls::Terminate { resume }, Some(material)) => {
            (Some(material.server.clone()), Some(TlsClient::new(&material.server_cert, resume)?))
        }
        (Tls::SidecarPair, Some(_)) => (None, None),
        (_, None) => bail!("{}: no TLS certificates were generated", scenario.name),
    };
    // The direct baseline talks to an upstream that speaks the clients'
    // protocol: the proxies' own upstream when that is the same, else one
    // of its own (an HTTP/2 upstream for HTTP/2 clients, say).
    let direct_kind = match scenario.downstream {
        Wire::Http1 => UpstreamKind::Http1,
        Wire::Http2 => UpstreamKind::Http2,
        Wire::Tcp | Wire::Mqtt => scenario.upstream_kind,
    };
    let direct_upstream =
        if direct_kind == scenario.upstream_kind || !matches!(scenario.mode, Mode::Max | Mode::External(_)) {
            None
        } else {
            Some(threads.run(0, async move { Upstream::start(direct_kind, payload).await })??)
        };
    let direct_runs = match scenario.mode {
        _ if matches!(scenario.tls, Tls::Terminate { .. }) => false,
        Mode::Max
        | Mode::FractionOfMax(_)
        | Mode::FractionOfDirect { .. }
        | Mode::FractionOfPeer { .. }
        | Mode::External(_) => true,
        Mode::IdleConnections => scenario.downstream == Wire::Mqtt,
        Mode::ReloadUnderLoad => false,
    };
    if direct_runs {
        let addr = direct_upstream.as_ref().map_or(backend.addr(), Upstream::addr);
        let pid = if scenario.mode == Mode::IdleConnections { backend.broker_pid() } else { None };
        targets.push(Target::new("direct", None, addr, Vec::new(), pid.into_iter().collect()));
    }
    if scenario.tls == Tls::SidecarPair {
        let mesh = material.map(|m| m.mesh.clone());
        start_pairs(shared, backend.addr(), mesh, scenario, &mut targets, &mut skipped, progress)?;
    }
    for peer in peers {
        if scenario.tls == Tls::SidecarPair {
            break;
        }
        if scenario.mode == Mode::ReloadUnderLoad && peer.name() != "edgeplane" {
            skipped.push(skip(peer.name(), "reload-under-load exercises edgeplane's own config reloads"));
            continue;
        }
        let topology = Topology {
            downstream: scenario.downstream,
            upstream: scenario.upstream,
            listen: free_port()?,
            upstream_addr: backend.addr(),
            threads: options.proxy_threads,
            admin: free_port()?,
            clients,
            tls: server_files.clone(),
        };
        if let Err(reason) = peer.supports(&topology) {
            skipped.push(skip(peer.name(), &reason));
            continue;
        }
        let dir = options.work_dir.join(scenario.name).join(peer.name());
        match start_peer(peer.as_ref(), topology, &dir, &options.proxy_cpus, &options.load_cpus) {
            Ok(running) => {
                let (addr, pid) = (running.topology.listen, running.child.id());
                if let Some(client) = &tls_client {
                    if let Err(reason) = check_tls(threads, addr, client) {
                        progress(&format!("   {}: {reason}", peer.name()));
                        skipped.push(skip(peer.name(), &reason));
                        continue;
                    }
                    progress(&format!("   {}: {}", peer.name(), tls_summary(client)));
                }
                let version = peers::version(peer.program(), peer.name());
                let mut target = Target::new(peer.name(), version, addr, vec![running], vec![pid]);
                target.tls = tls_client.clone();
                targets.push(target);
            }
            Err(error) => skipped.push(skip(peer.name(), &format!("did not start: {error:#}"))),
        }
    }

    for round in 1..=options.rounds {
        for target in &mut targets {
            let rate = match scenario.mode {
                Mode::FractionOfMax(fraction) => match rates.maxima.get(&target.name) {
                    Some(max) if *max > 0.0 => Some(max * fraction),
                    _ => {
                        progress(&format!("   {}: no http1-keepalive maximum; skipped", target.name));
                        continue;
                    }
                },
                Mode::FractionOfDirect { fraction, of } => match rates.direct.get(of) {
                    Some(max) if *max > 0.0 => Some(max * fraction),
                    _ => {
                        progress(&format!("   {}: no direct {of} figure to set the rate from; skipped", target.name));
                        continue;
                    }
                },
                Mode::FractionOfPeer { fraction, of, peer } => match rates.by_peer.get(&(of, peer.to_owned())) {
                    Some(max) if *max > 0.0 => Some(max * fraction),
                    _ => {
                        progress(&format!("   {}: no {peer} {of} figure to set the rate from; skipped", target.name));
                        continue;
                    }
                },
                _ => None,
            };
            let figures = measure(options, threads, scenario, target, rate)?;
            if scenario.mode == Mode::IdleConnections {
                settle(target, &backend, progress);
            }
            progress(&format!(
                "   round {round}/{} {:<10} {:>10.1} {}  p50 {:>7} µs  p99 {:>7} µs  cpu {}  errors {}{}",
                options.rounds,
                target.name,
                figures.throughput,
                scenario.unit,
                figures.latency.p50,
                figures.latency.p99,
                figures.cpu_us_per_request.map_or("-".into(), |c| format!("{c:.1} µs/{}", per(scenario.unit))),
                figures.errors,
                figures.bytes_per_connection.map_or(String::new(), |b| format!("  {b:.0} B/connection")),
            ));
            target.rounds.push(figures);
        }
    }

    let peers = targets
        .into_iter()
        .filter(|target| !target.rounds.is_empty())
        .map(|target| PeerResult {
            summary: Summary::of(&target.rounds),
            peer: target.name,
            version: target.version,
            rounds: target.rounds,
        })
        .collect();
    drop(backend);
    drop(direct_upstream);
    Ok(ScenarioResult {
        name: scenario.name.into(),
        description: scenario.description.into(),
        unit: scenario.unit.into(),
        peers,
        skipped,
    })
}

/// What CPU time is counted per: `req`, `msg`, `handshake`.
fn per(unit: &str) -> &str {
    crate::model::per_unit(unit)
}

/// One TLS connection and request to a started peer: `Err(reason)` when it
/// fails or negotiates anything but the handshake every peer must make.
fn check_tls(threads: &LoadThreads, addr: SocketAddr, client: &TlsClient) -> Result<(), String> {
    let client = client.clone();
    let negotiated = threads
        .run(0, async move { tls::probe(addr, &client).await })
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("TLS check failed: {error:#}"))?;
    negotiated.check()
}

fn tls_summary(client: &TlsClient) -> String {
    format!(
        "TLS checked: TLSv1_3, {}, {}, ALPN {}, SNI {}{}",
        tls::CIPHER_SUITE,
        tls::KX_GROUP,
        tls::ALPN,
        tls::SERVER_NAME,
        if client.resumes() { "" } else { ", no resumption" }
    )
}

/// The sidecar-pair scenarios' targets: the plaintext pair and the mTLS
/// pair of edgeplane sidecars in front of `upstream` ([`crate::pair`]).
/// Every other peer is skipped. The mTLS pair's inbound sidecar is checked
/// to require mesh client certificates before it is measured.
fn start_pairs(
    shared: &Shared<'_>,
    upstream: SocketAddr,
    mesh: Option<tls::MeshFiles>,
    scenario: &Scenario,
    targets: &mut Vec<Target>,
    skipped: &mut Vec<Skipped>,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let Shared { options, threads, peers, .. } = *shared;
    let mut edgeplane = None;
    for peer in peers {
        if peer.name() == "edgeplane" {
            edgeplane = Some(peers::edgeplane::Edgeplane::new(peer.program().to_owned()));
        } else {
            skipped.push(skip(peer.name(), "the sidecar pair is two edgeplane processes"));
        }
    }
    let Some(edgeplane) = edgeplane else {
        for name in [pair::PLAIN, pair::MTLS] {
            skipped.push(skip(name, "edgeplane is not among the peers run (--only)"));
        }
        return Ok(());
    };
    let version = peers::version(edgeplane.program(), "edgeplane");
    for (name, mesh) in [(pair::PLAIN, None), (pair::MTLS, mesh.clone())] {
        if name == pair::MTLS && mesh.is_none() {
            skipped.push(skip(name, "no mesh certificates were generated"));
            continue;
        }
        let addrs = [free_port()?, free_port()?, free_port()?, free_port()?];
        let sidecars = pair::Sidecars::new(addrs, upstream, options.proxy_threads, mesh.clone());
        let dir = options.work_dir.join(scenario.name).join(name);
        let mut processes = Vec::new();
        let mut failure = None;
        for (topology, launch) in sidecars.launches(&edgeplane, &dir) {
            let sidecar_dir = launch.files[0].0.parent().map(Path::to_path_buf).unwrap_or_else(|| dir.clone());
            match start_launch(&launch, topology, &sidecar_dir, &options.proxy_cpus, &options.load_cpus) {
                Ok(running) => processes.push(running),
                Err(error) => {
                    failure = Some(format!("did not start: {error:#}"));
                    break;
                }
            }
        }
        if let (None, Some(mesh)) = (&failure, mesh) {
            let inbound = sidecars.inbound.listen;
            match threads.run(0, async move { tls::check_mesh_inbound(inbound, &mesh).await })? {
                Ok(()) => progress(&format!(
                    "   {name}: mTLS checked: the inbound sidecar serves {} and requires a mesh client certificate",
                    tls::INBOUND_IDENTITY
                )),
                Err(error) => failure = Some(format!("not mTLS between the sidecars: {error:#}")),
            }
        }
        if let Some(reason) = failure {
            progress(&format!("   {name}: {reason}"));
            skipped.push(skip(name, &reason));
            continue;
        }
        let pids = processes.iter().map(|running| running.child.id()).collect();
        targets.push(Target::new(name, version.clone(), sidecars.outbound.listen, processes, pids));
    }
    Ok(())
}

/// After an idle-connection round: waits until the peer and the broker have
/// closed the round's connections (their descriptor counts are back where
/// they started), so that the next round, or the next peer, starts from the
/// same state and the broker's memory is not measured with stragglers.
fn settle(target: &Target, backend: &Backend, progress: &mut dyn FnMut(&str)) {
    // A few descriptors come and go on their own (log files, timers).
    const SLACK: usize = 16;
    let mut watched: Vec<(u32, usize)> = Vec::new();
    if let (Some(pid), Some((_, fds))) = (target.pid(), target.baseline) {
        watched.push((pid, fds));
    }
    if let Some(broker) = backend.broker().filter(|(pid, _)| Some(*pid) != target.pid()) {
        watched.push(broker);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let busy: Vec<(u32, usize, usize)> = watched
            .iter()
            .map(|&(pid, base)| (pid, base, procstat::open_files(pid)))
            .filter(|&(_, base, now)| now > base + SLACK)
            .collect();
        if busy.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            progress(&format!("   warning: connections still closing after 30 s (pid, descriptors): {busy:?}"));
            return;
        }
        // Closing is the processes' own work; nothing signals its end.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn skip(peer: &str, reason: &str) -> Skipped {
    Skipped { peer: peer.into(), reason: reason.into() }
}

/// A loopback port nothing listens on right now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Writes the peer's files, starts it on the proxy CPUs and waits until it
/// accepts connections.
fn start_peer(
    peer: &dyn Peer,
    topology: Topology,
    dir: &Path,
    proxy_cpus: &[usize],
    load_cpus: &[usize],
) -> anyhow::Result<Running> {
    let launch = peer.launch(&topology, dir);
    start_launch(&launch, topology, dir, proxy_cpus, load_cpus)
}

/// [`start_peer`] for a launch made already.
fn start_launch(
    launch: &Launch,
    topology: Topology,
    dir: &Path,
    proxy_cpus: &[usize],
    load_cpus: &[usize],
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(dir)?;
    for (path, contents) in &launch.files {
        std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    let stdout = File::create(dir.join("stdout.log"))?;
    let stderr = File::create(dir.join("stderr.log"))?;
    // A child inherits the affinity of the thread that starts it, so every
    // thread it ever creates starts on the proxy CPUs.
    procstat::pin_current_thread(proxy_cpus)?;
    let spawned = Command::new(&launch.program)
        .args(&launch.args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn();
    procstat::pin_current_thread(load_cpus)?;
    let child = spawned.with_context(|| format!("starting {}", launch.program.display()))?;
    track(child.id());
    let mut running = Running { child, topology, config_dir: dir.to_owned() };
    wait_listening(&mut running)?;
    procstat::pin_tree(running.child.id(), proxy_cpus)?;
    Ok(running)
}

fn wait_listening(running: &mut Running) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect_timeout(&running.topology.listen, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = running.child.try_wait()? {
            let log = std::fs::read_to_string(running.config_dir.join("stderr.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!("exited with {status}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
        }
        if std::time::Instant::now() > deadline {
            bail!("not listening on {} after 15 s", running.topology.listen);
        }
        // An external process gives no readiness signal but its listening socket.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn measure(
    options: &Options,
    threads: &LoadThreads,
    scenario: &Scenario,
    target: &Target,
    rate: Option<f64>,
) -> anyhow::Result<Round> {
    let pid = target.pid();
    if scenario.mode == Mode::IdleConnections {
        let (addr, baseline) = (target.addr, target.baseline.map(|(rss, _)| rss));
        return if scenario.downstream == Wire::Mqtt {
            let count = options.mqtt_idle_connections;
            threads.run(0, async move {
                let (held, failed) = load::mqtt::idle(addr, count).await;
                idle_round(held.len(), failed, pid, baseline)
            })
        } else {
            threads.run(0, idle_connections(addr, options.idle_connections, pid, baseline))
        };
    }
    if let Mode::External(tool) = scenario.mode {
        return external_round(options, tool, target.addr, &target.pids);
    }
    let spec = LoadSpec {
        target: target.addr,
        workload: scenario.workload(options.streams, options.payload),
        connections: options.connections,
        warmup: options.warmup,
        duration: options.duration,
        rate,
        tls: target.tls.clone(),
    };
    let window = spec.window();
    let reloads = match (&scenario.mode, target.processes.first()) {
        (Mode::ReloadUnderLoad, Some(running)) => Some(reload_loop(threads, running, window)),
        _ => None,
    };
    let pids = target.pids.clone();
    let usage = (!pids.is_empty()).then(|| {
        threads.spawn(0, async move {
            tokio::time::sleep_until(window.start).await;
            let before = procstat::usage_of(&pids);
            tokio::time::sleep_until(window.end).await;
            (before, procstat::usage_of(&pids))
        })
    });
    // The connections (and an open-loop rate) are shared out over the load threads.
    let parts: Vec<_> = (0..threads.len())
        .map(|index| {
            let mut part = spec.clone();
            part.connections = share(spec.connections, threads.len(), index);
            part.rate = spec.rate.map(|rate| rate * part.connections as f64 / spec.connections as f64);
            threads.spawn(index, async move { load::run(&part, window).await })
        })
        .collect();
    let mut result = LoadResult::default();
    for part in parts {
        result.merge(part.blocking_recv().context("a load thread stopped")?);
    }
    result.elapsed = window.end - window.start;
    let (before, after) = match usage {
        Some(receiver) => receiver.blocking_recv().context("usage sampling stopped")?,
        None => (Usage::default(), Usage::default()),
    };
    let reloads = match reloads {
        Some(receiver) => Some(receiver.blocking_recv().context("the reload loop stopped")??),
        None => None,
    };
    let seconds = result.elapsed.as_secs_f64();
    let bulk = scenario.unit == "MB/s";
    let throughput = if bulk { result.bytes as f64 / seconds / 1e6 } else { result.completed as f64 / seconds };
    let cpu_seconds = after.cpu_seconds - before.cpu_seconds;
    Ok(Round {
        throughput,
        completed: if bulk { result.bytes } else { result.completed },
        errors: result.errors,
        offered_rate: rate,
        latency: if bulk { Latency::default() } else { result.latencies.summary() },
        cpu_seconds,
        cpu_us_per_request: (pid.is_some() && !bulk && result.completed > 0)
            .then(|| cpu_seconds * 1e6 / result.completed as f64),
        rss_kib: after.rss_kib,
        peak_rss_kib: after.peak_rss_kib,
        reloads,
        bytes_per_connection: None,
    })
}

/// One round with wrk or h2load as the load generator.
fn external_round(options: &Options, tool: Tool, addr: SocketAddr, pids: &[u32]) -> anyhow::Result<Round> {
    let threads = options.load_cpus.len().max(1);
    let (connections, streams) = (options.connections, options.streams);
    if !options.warmup.is_zero() {
        crate::external::run(tool, addr, connections, streams, threads, options.warmup)?;
    }
    let before = procstat::usage_of(pids);
    let run = crate::external::run(tool, addr, connections, streams, threads, options.duration)?;
    let after = procstat::usage_of(pids);
    let cpu_seconds = after.cpu_seconds - before.cpu_seconds;
    Ok(Round {
        throughput: run.requests_per_second,
        completed: run.completed,
        errors: run.errors,
        offered_rate: None,
        latency: run.latency,
        cpu_seconds,
        cpu_us_per_request: (!pids.is_empty() && run.completed > 0).then(|| cpu_seconds * 1e6 / run.completed as f64),
        rss_kib: after.rss_kib,
        peak_rss_kib: after.peak_rss_kib,
        reloads: None,
        bytes_per_connection: None,
    })
}

/// Connections of part `index` when `total` are shared over `parts`.
fn share(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

/// Opens `count` keep-alive connections, one request each, holds them, and
/// measures the proxy's memory while they are idle.
async fn idle_connections(addr: SocketAddr, count: usize, pid: Option<u32>, baseline_kib: Option<u64>) -> Round {
    let mut held = Vec::with_capacity(count);
    let mut errors = 0;
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let request = b"GET / HTTP/1.1\r\nhost: bench.local\r\n\r\n";
    for _ in 0..count {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            errors += 1;
            continue;
        };
        buf.clear();
        match load::http1_exchange(&mut stream, request, &mut buf).await {
            Ok(response) if response.ok => held.push(stream),
            _ => errors += 1,
        }
    }
    idle_round(held.len(), errors, pid, baseline_kib)
}

/// The figures of an idle-connection round, taken while `held` connections
/// are open (the caller still holds them).
fn idle_round(held: usize, errors: u64, pid: Option<u32>, baseline_kib: Option<u64>) -> Round {
    let usage = pid.map(procstat::usage).unwrap_or_default();
    let bytes_per_connection = match (pid, baseline_kib) {
        (Some(_), Some(baseline)) if held > 0 => {
            Some(usage.rss_kib.saturating_sub(baseline) as f64 * 1024.0 / held as f64)
        }
        _ => None,
    };
    Round {
        throughput: held as f64,
        completed: held as u64,
        errors,
        offered_rate: None,
        latency: Latency::default(),
        cpu_seconds: 0.0,
        cpu_us_per_request: None,
        rss_kib: usage.rss_kib,
        peak_rss_kib: usage.peak_rss_kib,
        reloads: None,
        bytes_per_connection,
    }
}

/// Rewrites edgeplane's config and asks for a reload every 100 ms during
/// the window; counts what edgeplane's reload counters say came of them.
fn reload_loop(
    threads: &LoadThreads,
    running: &Running,
    window: load::Window,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<Reloads>> {
    let topology = running.topology.clone();
    let dir = running.config_dir.clone();
    threads.spawn(0, async move {
        let path = peers::edgeplane::config_path(&dir);
        let (applied_before, failed_before) = reload_counters(topology.admin).await?;
        let mut requested = 0;
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        while tokio::time::Instant::now() < window.end {
            ticks.tick().await;
            requested += 1;
            std::fs::write(&path, peers::edgeplane::config(&topology, requested as u32))?;
            if !admin_post(topology.admin, "/reload").await {
                bail!("edgeplane's admin server refused POST /reload");
            }
        }
        // Reloads run on edgeplane's control thread after the POST is
        // answered; give the last one a moment to be counted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let (applied, failed) = reload_counters(topology.admin).await?;
            let reloads = Reloads { requested, applied: applied - applied_before, failed: failed - failed_before };
            if reloads.applied + reloads.failed >= requested || tokio::time::Instant::now() > deadline {
                return Ok(reloads);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// `edgeplane_config_reloads_total` for results `success` and `failure`.
async fn reload_counters(admin: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let text = admin_get(admin, "/metrics").await.context("reading edgeplane's metrics")?;
    let counter = |result: &str| {
        let series = format!("edgeplane_config_reloads_total{{result=\"{result}\"}} ");
        text.lines().find_map(|line| line.strip_prefix(&series)).and_then(|v| v.trim().parse::<f64>().ok())
    };
    Ok((counter("success").unwrap_or(0.0) as u64, counter("failure").unwrap_or(0.0) as u64))
}

/// A request to edgeplane's admin server; true on 200.
async fn admin_post(admin: SocketAddr, path: &str) -> bool {
    let request = format!("POST {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\n\r\n");
    let mut buf = bytes::BytesMut::with_capacity(1024);
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else { return false };
    matches!(load::http1_exchange(&mut stream, request.as_bytes(), &mut buf).await, Ok(response) if response.ok)
}

/// The body of a GET to edgeplane's admin server.
async fn admin_get(admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("no response to GET {path}") };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}
