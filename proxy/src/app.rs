//! The process: start-up, the control thread (admin server, reloads,
//! signals, config watching) and graceful shutdown.
//!
//! ```text
//!   control thread (current-thread runtime)       worker threads (one runtime each)
//!   ├─ admin server                                ├─ accept loops (SO_REUSEPORT)
//!   ├─ reload: read → validate → compile ──store──▶│  connections load the table
//!   ├─ signals: SIGHUP reload, SIGTERM/INT drain   └─ thread-local upstream pools
//!   └─ config file watcher
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use config_model::Config;
use tokio::sync::{mpsc, oneshot};

use crate::access_log::AccessLogger;
use crate::admin;
use crate::balance::hash64;
use crate::health::HealthCheckers;
use crate::listen::bind_group;
use crate::metrics::{ConfigInfoLabels, Metrics, ReloadLabels};
use crate::route::compile::compile;
use crate::route::RouteTable;
use crate::state::{ConnectionTracker, Lifecycle, Registry, Shared, SourceInfo};
use crate::worker::{Command, Worker};

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A local file (YAML, or JSON when it ends in `.json`), reloaded on
    /// SIGHUP, `POST /reload` and, when watched, on change.
    File(PathBuf),
    /// Pulled from a control plane (see the `controlplane-client` crate);
    /// SIGHUP and `POST /reload` ask it at once.
    ControlPlane {
        settings: Box<config_model::ControlPlane>,
        /// A bearer token given outside the bootstrap file (environment).
        token: Option<String>,
    },
}

/// How the proxy is started.
#[derive(Clone, Debug)]
pub struct Options {
    pub source: ConfigSource,
    /// Worker threads (each with its own runtime and listener sockets).
    pub workers: usize,
    /// Overrides `admin.bind` of the config.
    pub admin: Option<SocketAddr>,
    /// Reload when the config file changes (file source only).
    pub watch_config: bool,
    /// Handle SIGTERM/SIGINT (drain) and SIGHUP (reload). Off for in-process tests.
    pub handle_signals: bool,
    /// Threading model; see docs/ARCHITECTURE.md.
    pub runtime: RuntimeModel,
    /// osm-edge's stats and Prometheus ports (the Pipy sidecar mode).
    pub osm: Option<crate::osm::OsmPorts>,
}

/// How worker threads run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuntimeModel {
    /// One current-thread runtime per worker, each with its own
    /// `SO_REUSEPORT` sockets and pools (the default).
    #[default]
    PerCore,
    /// One multi-thread (work-stealing) runtime with `workers` threads and
    /// one socket per listener. Kept only to measure against: idle pools are
    /// swept on one thread only in this model.
    Shared,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new table is live with this generation.
    Applied(u64),
    /// The file is byte-for-byte the one already live.
    Unchanged,
}

pub(crate) enum Control {
    Reload(Option<oneshot::Sender<Result<ReloadOutcome, String>>>),
    /// A config from the control-plane client (or its persisted copy).
    Apply(controlplane_client::Update, oneshot::Sender<Result<ReloadOutcome, String>>),
    /// Stop accepting and tell connections to finish (no exit).
    Drain,
    /// Drain, wait for connections up to the drain timeout, exit.
    Shutdown,
    /// Exit now.
    Exit,
}

/// A running proxy.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    admin_addr: SocketAddr,
    listener_addrs: Arc<Mutex<HashMap<String, SocketAddr>>>,
    control: mpsc::UnboundedSender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyHandle {
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied()
    }

    /// Re-reads the config file and applies it, as SIGHUP does.
    pub async fn reload(&self) -> Result<ReloadOutcome, String> {
        let (reply, outcome) = oneshot::channel();
        self.control.send(Control::Reload(Some(reply))).map_err(|_| "proxy stopped".to_owned())?;
        outcome.await.map_err(|_| "proxy stopped".to_owned())?
    }

    /// Starts a graceful shutdown, as SIGTERM does.
    pub fn shutdown(&self) {
        let _ = self.control.send(Control::Shutdown);
    }

    pub fn table(&self) -> Arc<RouteTable> {
        self.shared.table.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.shared.lifecycle.is_ready()
    }

    /// Waits for the proxy to stop.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.control.send(Control::Exit);
            let _ = thread.join();
        }
    }
}

/// Loads, validates and compiles the config, binds every socket, starts the
/// workers and the control thread. Returns once the proxy is ready.
pub fn start(options: Options) -> Result<ProxyHandle, StartError> {
    let mut metrics = Metrics::new();
    // A proxy fed by a control plane starts with no listeners and is not
    // ready until its client has applied a config (or the persisted one).
    let (text, parsed, syncer) = match &options.source {
        ConfigSource::File(path) => {
            let text = std::fs::read(path)
                .map_err(|error| StartError::Config(vec![format!("cannot read {}: {error}", path.display())]))?;
            let parsed = parse_and_validate(&text, &path.display().to_string(), config_model::Format::from_path(path))
                .map_err(StartError::Config)?;
            (text, parsed, None)
        }
        ConfigSource::ControlPlane { settings, token } => {
            let stats = controlplane_client::Stats::default();
            stats.register(metrics.registry_mut());
            let syncer = controlplane_client::Syncer::new(settings, token.clone(), stats)
                .map_err(|error| StartError::Config(vec![error.to_string()]))?;
            let empty = config_model::from_yaml_str("{}").map_err(|e| StartError::Config(vec![e.to_string()]))?;
            (Vec::new(), Parsed { config: empty, probes: Default::default() }, Some(syncer))
        }
    };
    let Parsed { config, probes } = parsed;
    let registry = Registry::default();
    let config = Arc::new(config);
    let table = compile(config.clone(), hash64(&text), 1, &registry, &metrics)
        .map_err(|error| StartError::Config(vec![error.to_string()]))?;

    let admin_addr = match options.admin {
        Some(addr) => addr,
        None => {
            config.admin.bind.parse().map_err(|message| StartError::Config(vec![format!("admin.bind: {message}")]))?
        }
    };
    let admin_socket = std::net::TcpListener::bind(admin_addr).map_err(|source| StartError::Bind {
        what: "admin".into(),
        addr: admin_addr,
        source,
    })?;
    admin_socket.set_nonblocking(true)?;
    let admin_addr = admin_socket.local_addr()?;
    let mut osm_sockets = Vec::new();
    if let Some(ports) = &options.osm {
        for (server, addr, what) in ports.servers() {
            let socket = match std::net::TcpListener::bind(addr) {
                Ok(socket) => socket,
                // FSM may run its own `fsm-healthcheck` container on this
                // port; it answers the same way.
                Err(error) if server == crate::osm::OsmServer::Probe(crate::osm::probes::ProbePort::HealthCheck) => {
                    tracing::warn!(%addr, "{what} not served here: {error}");
                    continue;
                }
                Err(source) => return Err(StartError::Bind { what: what.into(), addr, source }),
            };
            socket.set_nonblocking(true)?;
            osm_sockets.push((server, socket));
        }
    }

    // Worker objects (each owns one socket per listener); with a shared
    // runtime there is one, running `options.workers` threads.
    let (workers, shared_threads) = match options.runtime {
        RuntimeModel::PerCore => (options.workers.max(1), None),
        RuntimeModel::Shared => (1, Some(options.workers.max(1))),
    };
    let mut bound = HashMap::new();
    for listener in &config.listeners {
        let addr: SocketAddr = listener.bind.parse().map_err(|m| StartError::Config(vec![m]))?;
        let sockets = bind_group(addr, workers).map_err(|source| StartError::Bind {
            what: format!("listener {:?}", listener.name),
            addr,
            source,
        })?;
        bound.insert(listener.name.clone(), (listener.bind.as_str().to_owned(), sockets));
    }

    let source = match (&options.source, &syncer) {
        (_, Some(syncer)) => SourceInfo::ControlPlane(syncer.handle()),
        (ConfigSource::File(path), None) => SourceInfo::File(path.clone()),
        (ConfigSource::ControlPlane { .. }, None) => unreachable!("a control-plane source always has a syncer"),
    };
    let shared = Arc::new(Shared {
        table: ArcSwap::from_pointee(table),
        source,
        metrics,
        registry,
        lifecycle: Lifecycle::default(),
        connections: Arc::new(ConnectionTracker::default()),
        access_log: AccessLogger::new(),
        osm_probes: ArcSwap::from_pointee(probes),
    });
    publish_metrics(&shared, &shared.table.load());

    let mut worker_handles = Vec::with_capacity(workers);
    for index in 0..workers {
        worker_handles.push(Worker::spawn(index, shared.clone(), shared_threads)?);
    }
    let listener_addrs = Arc::new(Mutex::new(HashMap::new()));
    let mut listeners = HashMap::new();
    for (name, (bind, sockets)) in bound {
        let slot = shared.registry.listener_slot(&name);
        let addr = sockets[0].local_addr()?;
        listener_addrs.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), addr);
        for (worker, socket) in worker_handles.iter().zip(sockets) {
            worker.send(Command::Listen { slot, socket });
        }
        listeners.insert(name, BoundListener { bind, slot });
    }

    let (control, commands) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Everything the control thread serves is set up here, before the proxy
    // says it is ready: a SIGTERM or a config change right after the ready
    // line must find its handler in place.
    let (started, started_signal) = std::sync::mpsc::sync_channel::<()>(1);
    let watcher = {
        let _context = runtime.enter();
        let admin_listener = tokio::net::TcpListener::from_std(admin_socket)?;
        runtime.spawn(admin::serve(admin_listener, shared.clone(), control.clone()));
        for (server, socket) in osm_sockets {
            let listener = tokio::net::TcpListener::from_std(socket)?;
            runtime.spawn(crate::osm::run(server, listener, shared.clone(), control.clone()));
        }
        runtime.spawn(crate::tls::watch::run(shared.clone()));
        if options.handle_signals {
            spawn_signal_handlers(control.clone())?;
        }
        match (&options.source, syncer) {
            (ConfigSource::File(path), _) if options.watch_config => watch_config(path, control.clone()),
            (_, Some(syncer)) => {
                let sink = ControlSink { control: control.clone(), shared: shared.clone() };
                runtime.spawn(syncer.run(sink, move || {
                    let _ = started.send(());
                }));
                None
            }
            _ => None,
        }
    };
    let controller = Controller {
        shared: shared.clone(),
        options: options.clone(),
        workers: worker_handles,
        listeners,
        listener_addrs: listener_addrs.clone(),
        generation: AtomicU64::new(1),
        control: control.clone(),
        health_checks: HealthCheckers::default(),
    };
    let thread = std::thread::Builder::new()
        .name("edgeplane-control".into())
        .spawn(move || runtime.block_on(controller.run(commands, watcher)))?;
    match &options.source {
        ConfigSource::File(_) => shared.lifecycle.set_ready(),
        // Returns once the client's first attempt is over (bounded by its
        // timeouts); readiness then follows its policy.
        ConfigSource::ControlPlane { .. } => {
            let _ = started_signal.recv();
        }
    }
    let bound_addrs = {
        let addrs = listener_addrs.lock().unwrap_or_else(|e| e.into_inner());
        let mut pairs: Vec<String> = addrs.iter().map(|(name, addr)| format!("{name}={addr}")).collect();
        pairs.sort();
        pairs.join(",")
    };
    let live = shared.table.load();
    tracing::info!(
        admin = %admin_addr,
        listeners = %bound_addrs,
        workers,
        clusters = live.config.clusters.len(),
        ready = shared.lifecycle.is_ready(),
        "edgeplane ready"
    );
    Ok(ProxyHandle { shared, admin_addr, listener_addrs, control, thread: Some(thread) })
}

/// A config that loaded and validated.
struct Parsed {
    config: Config,
    /// osm-edge's probe targets: a PipyConf's, otherwise none.
    probes: config_model::pipy::Probes,
}

/// `origin` names the text in errors (a path or a URL). JSON that is an
/// osm-edge/FSM sidecar config (a PipyConf) is translated first.
fn parse_and_validate(text: &[u8], origin: &str, format: config_model::Format) -> Result<Parsed, Vec<String>> {
    let text = std::str::from_utf8(text).map_err(|_| vec![format!("{origin}: not UTF-8")])?;
    let (config, probes) = match format.sniff(text) {
        config_model::Format::PipyConf => {
            let context = config_model::pipy::SidecarContext::from_env(|name| std::env::var(name).ok());
            let translation =
                config_model::pipy::translate(text, &context).map_err(|e| vec![format!("{origin}: PipyConf: {e}")])?;
            warn_once(origin, &translation.warnings);
            (translation.config, translation.probes)
        }
        format => (config_model::from_str(text, format).map_err(|e| vec![e.to_string()])?, Default::default()),
    };
    config_model::validate(&config).map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Ok(Parsed { config, probes })
}

/// Logs each translation warning once per process: a control plane
/// republishing the same PipyConf every few seconds repeats them all.
fn warn_once(origin: &str, warnings: &[String]) {
    /// Past this many distinct warnings, new ones are still logged but no
    /// longer remembered.
    const REMEMBERED: usize = 4096;
    static LOGGED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    if warnings.is_empty() {
        return;
    }
    let mut logged = LOGGED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for warning in warnings {
        if logged.contains(warning) {
            continue;
        }
        tracing::warn!(origin, "PipyConf: {warning}");
        if logged.len() < REMEMBERED {
            logged.insert(warning.clone());
        }
    }
}

fn publish_metrics(shared: &Shared, table: &RouteTable) {
    let metrics = &shared.metrics;
    metrics.config_generation.set(table.generation as i64);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    metrics.config_last_success.set(now);
    metrics.config_info.clear();
    metrics
        .config_info
        .get_or_create(&ConfigInfoLabels {
            version: table.config.version.clone().unwrap_or_default(),
            hash: format!("{:016x}", table.config_hash),
        })
        .set(1);
}

struct BoundListener {
    /// The `bind` text of the config; a change means a new socket.
    bind: String,
    slot: usize,
}

struct Controller {
    shared: Arc<Shared>,
    options: Options,
    workers: Vec<Worker>,
    listeners: HashMap<String, BoundListener>,
    listener_addrs: Arc<Mutex<HashMap<String, SocketAddr>>>,
    generation: AtomicU64,
    control: mpsc::UnboundedSender<Control>,
    health_checks: HealthCheckers,
}

impl Controller {
    /// `_watcher` is kept alive for as long as the control loop runs.
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Control>,
        _watcher: Option<notify::RecommendedWatcher>,
    ) {
        let mut shutting_down = false;
        self.health_checks.reconcile(&self.shared.table.load(), &self.shared.metrics);
        while let Some(command) = commands.recv().await {
            match command {
                Control::Reload(reply) => {
                    let outcome = match &self.shared.source {
                        SourceInfo::File(path) => {
                            let path = path.clone();
                            self.reload(|| {
                                let text =
                                    std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                                Ok((text, path.display().to_string(), config_model::Format::from_path(&path)))
                            })
                        }
                        SourceInfo::ControlPlane(sync) => {
                            sync.poll_now();
                            Err("the config comes from the control plane: it is being asked now".into())
                        }
                    };
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                Control::Apply(update, reply) => {
                    let controlplane_client::Update { snapshot, origin: _ } = update;
                    let outcome =
                        self.reload(move || Ok((snapshot.body.to_vec(), snapshot.location.clone(), snapshot.format)));
                    let _ = reply.send(outcome);
                }
                Control::Drain => {
                    self.stop_accepting().await;
                    tracing::info!("draining (the process stays up)");
                }
                Control::Shutdown if shutting_down => {
                    tracing::warn!("second shutdown signal: exiting now");
                    break;
                }
                Control::Shutdown => {
                    shutting_down = true;
                    self.stop_accepting().await;
                    let drain_timeout = self.shared.table.load().config.drain_timeout.parse().unwrap_or_default();
                    let connections = self.shared.connections.clone();
                    let control = self.control.clone();
                    tokio::spawn(async move {
                        let active = connections.active();
                        tracing::info!(active, ?drain_timeout, "draining");
                        if tokio::time::timeout(drain_timeout, connections.wait_idle()).await.is_err() {
                            tracing::warn!(open = connections.active(), "drain timeout: closing remaining connections");
                        }
                        let _ = control.send(Control::Exit);
                    });
                }
                Control::Exit => break,
            }
        }
        for worker in self.workers.drain(..) {
            worker.exit();
        }
        tracing::info!("edgeplane stopped");
    }

    /// Turns `/ready` to 503 at once, then returns when every worker has
    /// closed its listening sockets.
    async fn stop_accepting(&self) {
        self.shared.lifecycle.start_draining();
        let mut closed = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (done, ack) = oneshot::channel();
            worker.send(Command::UnlistenAll(done));
            closed.push(ack);
        }
        for ack in closed {
            let _ = ack.await;
        }
    }

    /// Applies the config `read` returns: its text, where it came from
    /// (for errors) and its format.
    fn reload(
        &mut self,
        read: impl FnOnce() -> Result<(Vec<u8>, String, config_model::Format), String>,
    ) -> Result<ReloadOutcome, String> {
        let result = read().and_then(|(text, origin, format)| self.try_reload(&text, &origin, format));
        let label = match &result {
            Ok(ReloadOutcome::Applied(generation)) => {
                tracing::info!(generation, "config reloaded");
                "success"
            }
            Ok(ReloadOutcome::Unchanged) => {
                tracing::debug!("config unchanged; nothing to do");
                "unchanged"
            }
            Err(error) => {
                tracing::error!("config reload rejected; the previous config stays active: {error}");
                "failure"
            }
        };
        self.shared.metrics.config_reloads.get_or_create(&ReloadLabels { result: label }).inc();
        result
    }

    fn try_reload(&mut self, text: &[u8], origin: &str, format: config_model::Format) -> Result<ReloadOutcome, String> {
        if self.shared.lifecycle.is_draining() {
            return Err("draining: reloads are ignored".into());
        }
        let hash = hash64(text);
        if hash == self.shared.table.load().config_hash {
            return Ok(ReloadOutcome::Unchanged);
        }
        let Parsed { config, probes } = parse_and_validate(text, origin, format).map_err(|errors| errors.join("; "))?;
        let config = Arc::new(config);
        if self.options.admin.is_none() && config.admin.bind != self.shared.table.load().config.admin.bind {
            tracing::warn!(
                bind = config.admin.bind.as_str(),
                "admin.bind changed; it takes effect at the next restart"
            );
        }
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let table = compile(config.clone(), hash, generation, &self.shared.registry, &self.shared.metrics)
            .map_err(|e| e.to_string())?;

        // Bind new and moved listeners before anything changes, so a port
        // that is taken fails the whole reload.
        let workers = self.workers.len();
        let mut new_sockets = Vec::new();
        for listener in &config.listeners {
            let unchanged =
                self.listeners.get(&listener.name).is_some_and(|bound| bound.bind == listener.bind.as_str());
            if unchanged {
                continue;
            }
            let addr: SocketAddr = listener.bind.parse()?;
            let sockets = bind_group(addr, workers)
                .map_err(|e| format!("cannot bind listener {:?} on {addr}: {e}", listener.name))?;
            new_sockets.push((listener.name.clone(), listener.bind.as_str().to_owned(), sockets));
        }

        self.shared.table.store(Arc::new(table));
        self.shared.osm_probes.store(Arc::new(probes));
        self.generation.store(generation, Ordering::Relaxed);
        let live = self.shared.table.load_full();
        publish_metrics(&self.shared, &live);

        let removed: Vec<String> =
            self.listeners.keys().filter(|name| !config.listeners.iter().any(|l| &l.name == *name)).cloned().collect();
        for name in removed {
            if let Some(bound) = self.listeners.remove(&name) {
                for worker in &self.workers {
                    worker.send(Command::Unlisten { slot: bound.slot });
                }
                self.listener_addrs.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
                tracing::info!(listener = %name, "listener removed");
            }
        }
        for (name, bind, sockets) in new_sockets {
            let slot = self.shared.registry.listener_slot(&name);
            if let Ok(addr) = sockets[0].local_addr() {
                self.listener_addrs.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), addr);
            }
            // Replacing a slot's socket stops the old accept loop.
            for (worker, socket) in self.workers.iter().zip(sockets) {
                worker.send(Command::Listen { slot, socket });
            }
            tracing::info!(listener = %name, %bind, "listener bound");
            self.listeners.insert(name, BoundListener { bind, slot });
        }

        self.health_checks.reconcile(&live, &self.shared.metrics);
        let released = self.shared.registry.retain_endpoints(&live);
        let live_clusters: std::collections::HashSet<&str> = live.clusters.iter().map(|c| &*c.name).collect();
        self.shared.metrics.retain_clusters(|name| live_clusters.contains(name));
        if !released.is_empty() {
            for worker in &self.workers {
                worker.send(Command::Release(released.clone()));
            }
        }
        Ok(ReloadOutcome::Applied(generation))
    }
}

/// Hands the control-plane client's configs to the control loop, which
/// applies them exactly as it applies file reloads.
struct ControlSink {
    control: mpsc::UnboundedSender<Control>,
    shared: Arc<Shared>,
}

impl controlplane_client::ConfigSink for ControlSink {
    fn apply(
        &self,
        update: controlplane_client::Update,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let (reply, outcome) = oneshot::channel();
        let sent = self.control.send(Control::Apply(update, reply));
        async move {
            sent.map_err(|_| "the proxy is stopping".to_owned())?;
            outcome.await.map_err(|_| "the proxy is stopping".to_owned())?.map(|_| ())
        }
    }

    fn ready(&self) {
        self.shared.lifecycle.set_ready();
    }
}

/// Installs the signal handlers (from here on the signals no longer kill
/// the process) and spawns the tasks that turn them into commands.
fn spawn_signal_handlers(control: mpsc::UnboundedSender<Control>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers =
        [(SignalKind::hangup(), "SIGHUP"), (SignalKind::terminate(), "SIGTERM"), (SignalKind::interrupt(), "SIGINT")];
    for (kind, name) in handlers {
        let mut stream = signal(kind)?;
        let control = control.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tracing::info!(signal = name, "signal received");
                let command = if name == "SIGHUP" { Control::Reload(None) } else { Control::Shutdown };
                if control.send(command).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// Watches the config file's directory (editors and Kubernetes replace files
/// rather than write them in place) and asks for a reload after changes
/// settle. Identical content is detected by hash and costs nothing.
fn watch_config(path: &Path, control: mpsc::UnboundedSender<Control>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (events, mut receiver) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = events.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the config file; use SIGHUP to reload");
            return None;
        }
    };
    if let Err(error) = watcher.watch(directory, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(%error, "cannot watch the config directory; use SIGHUP to reload");
        return None;
    }
    tokio::spawn(async move {
        while receiver.recv().await.is_some() {
            // Let a burst of events (write, rename, chmod) settle.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while receiver.try_recv().is_ok() {}
            if control.send(Control::Reload(None)).is_err() {
                return;
            }
        }
    });
    Some(watcher)
}
