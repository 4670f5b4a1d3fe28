//! The poll loop: fetch, hand to the proxy, persist, report; back off
//! while the control plane is away.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config_model::{ControlPlane, ReadyPolicy};
use http::Uri;
use serde::Serialize;
use tokio::sync::Notify;

use crate::persist::{self, unix_now, PersistError};
use crate::source::{Poll, Snapshot, Source};
use crate::stats::Stats;
use crate::transport::{SetupError, Transport};

/// Where a config that is handed to the proxy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    ControlPlane,
    /// The file of the last config that applied, read at start-up.
    Persisted,
}

impl Origin {
    fn label(self) -> &'static str {
        match self {
            Origin::ControlPlane => "control_plane",
            Origin::Persisted => "persisted",
        }
    }
}

/// A config for the proxy to validate, compile and publish.
#[derive(Clone, Debug)]
pub struct Update {
    pub snapshot: Snapshot,
    pub origin: Origin,
}

/// The proxy side of the client.
pub trait ConfigSink: Send + Sync + 'static {
    /// Validates, compiles and publishes `update` all or nothing; the error
    /// says why it was rejected (the previous config stays live).
    fn apply(&self, update: Update) -> impl Future<Output = Result<(), String>> + Send;
    /// The readiness policy is met: `/ready` may turn 200.
    fn ready(&self);
}

/// What `/config/source` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncState {
    pub url: String,
    pub instance: String,
    pub persist: Option<PathBuf>,
    pub live: Option<LiveConfig>,
    pub last_rejected: Option<Rejection>,
    pub last_fetch_error: Option<FetchFailure>,
    pub seconds_since_last_sync: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LiveConfig {
    pub version: String,
    pub origin: Origin,
    pub location: String,
    /// Unix seconds.
    pub applied_at: u64,
    /// The control plane confirmed this version in this run.
    pub confirmed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rejection {
    pub version: String,
    pub error: String,
    pub at: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FetchFailure {
    pub error: String,
    pub at: u64,
    /// Failures in a row; 0 once the control plane answers again.
    pub consecutive: u32,
}

/// Read access to the client's state for the admin server.
#[derive(Clone)]
pub struct SyncHandle {
    state: Arc<Mutex<SyncState>>,
    stats: Stats,
    poll_now: Arc<Notify>,
}

impl SyncHandle {
    /// Ends the current wait between polls (SIGHUP, `POST /reload`).
    pub fn poll_now(&self) {
        self.poll_now.notify_one();
    }

    pub fn state(&self) -> SyncState {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        state.seconds_since_last_sync = self.stats.seconds_since_last_sync();
        state
    }
}

/// The status report POSTed after each attempt, like an xDS ACK/NACK.
#[derive(Serialize)]
struct StatusReport<'a> {
    instance: &'a str,
    /// Pipy's name for `instance`: a Pipy repo keys its instances by it.
    uuid: &'a str,
    /// Pipy's instance name and address.
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    /// `applied` or `rejected`.
    state: &'static str,
    /// The version now live, if any.
    version: Option<&'a str>,
    origin: Option<Origin>,
    /// The version this report is about.
    attempted: Option<&'a str>,
    error: Option<&'a str>,
    /// Unix milliseconds, as Pipy reports.
    timestamp: u64,
    since: u64,
    pid: u32,
}

pub struct Syncer {
    source: Source,
    transport: Transport,
    stats: Stats,
    state: Arc<Mutex<SyncState>>,
    status_url: Option<Uri>,
    report_every_poll: bool,
    persist: Option<PathBuf>,
    ready_policy: ReadyPolicy,
    instance: String,
    /// `$POD_NAME` or the host name, and `$POD_IP`, for the reports.
    host_name: String,
    pod_ip: Option<String>,
    interval: Duration,
    jitter: f64,
    long_poll: Option<Duration>,
    retry_initial: Duration,
    retry_max: Duration,
    started_ms: u64,
    poll_now: Arc<Notify>,
}

/// Where the loop stands between polls.
#[derive(Default)]
struct Progress {
    live: Option<LiveVersion>,
    rejected: Option<String>,
    failures: u32,
    report_pending: bool,
    ready: bool,
    /// The server has held a long poll: it supports them.
    server_holds: bool,
}

struct LiveVersion {
    version: String,
    origin: Origin,
    confirmed: bool,
}

impl Syncer {
    /// `token` is the bearer token from the environment (used when the
    /// settings name no `token_file`).
    pub fn new(settings: &ControlPlane, token: Option<String>, stats: Stats) -> Result<Self, SetupError> {
        let duration = |value: &config_model::Duration| value.parse().map_err(SetupError::Url);
        let transport = Transport::new(settings, token)?;
        let source = Source::new(&settings.url, settings.file.clone()).map_err(SetupError::Url)?;
        let status_url = match settings.report_status {
            true => Some(
                settings
                    .status_url
                    .as_deref()
                    .unwrap_or(&settings.url)
                    .parse::<Uri>()
                    .map_err(|e| SetupError::Url(e.to_string()))?,
            ),
            false => None,
        };
        let instance = settings.instance_id.clone().unwrap_or_else(default_instance_id);
        let persist = settings.persist.as_ref().map(PathBuf::from);
        let state = SyncState {
            url: settings.url.clone(),
            instance: instance.clone(),
            persist: persist.clone(),
            ..SyncState::default()
        };
        Ok(Syncer {
            source,
            transport,
            stats,
            state: Arc::new(Mutex::new(state)),
            status_url,
            report_every_poll: settings.report_every_poll,
            persist,
            ready_policy: settings.ready,
            instance,
            host_name: host_name(),
            pod_ip: std::env::var("POD_IP").ok().filter(|ip| !ip.is_empty()),
            interval: duration(&settings.interval)?,
            jitter: settings.jitter,
            long_poll: settings.long_poll.as_ref().map(duration).transpose()?,
            retry_initial: duration(&settings.retry_initial)?,
            retry_max: duration(&settings.retry_max)?,
            started_ms: unix_millis(),
            poll_now: Arc::new(Notify::new()),
        })
    }

    pub fn handle(&self) -> SyncHandle {
        SyncHandle { state: self.state.clone(), stats: self.stats.clone(), poll_now: self.poll_now.clone() }
    }

    /// Runs until its task is dropped. `started` is called once the first
    /// attempt is over: a config from the control plane or the persisted one
    /// applied, or neither could be had.
    pub async fn run(self, sink: impl ConfigSink, started: impl FnOnce() + Send) {
        let mut progress = Progress::default();
        self.poll_once(&sink, &mut progress, None).await;
        if progress.live.is_none() {
            self.start_from_persisted(&sink, &mut progress).await;
        }
        started();
        loop {
            let delay = if progress.failures > 0 {
                retry_delay(self.retry_initial, self.retry_max, progress.failures, fastrand::f64())
            } else {
                poll_delay(self.interval, self.jitter, fastrand::f64())
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.poll_now.notified() => tracing::info!("asking the control plane now"),
            }
            // A server that holds long polls is asked again as soon as it answers.
            loop {
                let wait = self.long_poll.filter(|_| progress.failures == 0 && progress.live.is_some());
                let answered = self.poll_once(&sink, &mut progress, wait).await;
                if !(answered && wait.is_some() && progress.server_holds) {
                    break;
                }
            }
        }
    }

    /// One poll; returns whether the control plane answered.
    async fn poll_once(&self, sink: &impl ConfigSink, progress: &mut Progress, wait: Option<Duration>) -> bool {
        let known: Vec<&str> =
            progress.live.iter().map(|live| live.version.as_str()).chain(progress.rejected.as_deref()).collect();
        let polled = self.source.poll(&self.transport, &known, wait).await;
        let recovered = progress.failures > 0 && polled.is_ok();
        // Before a change is applied, so whoever sees the new config also
        // sees the outage over.
        if recovered {
            tracing::info!(failures = progress.failures, "control plane reachable again");
            progress.failures = 0;
            progress.report_pending = true;
            self.update_state(|state| {
                if let Some(failure) = &mut state.last_fetch_error {
                    failure.consecutive = 0;
                }
            });
        }
        match polled {
            Ok(Poll::Unchanged { waited }) => {
                Stats::count(&self.stats.fetches, "not_modified");
                progress.server_holds |= waited;
                // With a rejected version pending, a 304 may be about that one.
                if progress.rejected.is_none() {
                    if let Some(live) = &mut progress.live {
                        if !live.confirmed {
                            live.confirmed = true;
                            tracing::info!(version = %live.version, "the control plane serves the persisted config: it is current");
                            self.update_state(|state| {
                                if let Some(live) = &mut state.live {
                                    live.confirmed = true;
                                }
                            });
                        }
                        self.stats.synced();
                    }
                }
            }
            Ok(Poll::Changed(snapshot)) => {
                Stats::count(&self.stats.fetches, "changed");
                // Reports the outcome itself.
                self.try_apply(sink, progress, snapshot, Origin::ControlPlane).await;
                self.check_ready(sink, progress);
                return true;
            }
            Err(error) => {
                Stats::count(&self.stats.fetches, error.kind());
                progress.failures = progress.failures.saturating_add(1);
                let consecutive = progress.failures;
                let text = error.to_string();
                if progress.live.is_none() {
                    tracing::warn!(url = %self.state_url(), attempt = consecutive, "control plane: {text}; no config yet, retrying");
                } else {
                    tracing::warn!(url = %self.state_url(), attempt = consecutive, "control plane: {text}; the current config stays, retrying");
                }
                self.update_state(|state| {
                    state.last_fetch_error = Some(FetchFailure { error: text, at: unix_now(), consecutive })
                });
                return false;
            }
        }
        if progress.report_pending || self.report_every_poll {
            self.report(progress, None, None).await;
        }
        self.check_ready(sink, progress);
        true
    }

    async fn try_apply(&self, sink: &impl ConfigSink, progress: &mut Progress, snapshot: Snapshot, origin: Origin) {
        let version = snapshot.version.clone();
        let location = snapshot.location.clone();
        match sink.apply(Update { snapshot: snapshot.clone(), origin }).await {
            Ok(()) => {
                let confirmed = origin == Origin::ControlPlane;
                tracing::info!(%version, origin = origin.label(), "config applied");
                progress.live = Some(LiveVersion { version: version.clone(), origin, confirmed });
                progress.rejected = None;
                self.stats.live(&version, origin.label());
                if confirmed {
                    self.stats.synced();
                    self.persist(snapshot).await;
                }
                self.update_state(|state| {
                    state.live = Some(LiveConfig {
                        version: version.clone(),
                        origin,
                        location,
                        applied_at: unix_now(),
                        confirmed,
                    });
                    state.last_rejected = None;
                });
                // Counted last: a count means the attempt is fully recorded.
                Stats::count(&self.stats.applies, "applied");
                if origin == Origin::ControlPlane {
                    self.report(progress, Some(&version), None).await;
                }
            }
            Err(error) => {
                tracing::error!(%version, origin = origin.label(), "config rejected; the previous config stays: {error}");
                if origin == Origin::ControlPlane {
                    progress.rejected = Some(version.clone());
                }
                self.update_state(|state| {
                    state.last_rejected =
                        Some(Rejection { version: version.clone(), error: error.clone(), at: unix_now() })
                });
                Stats::count(&self.stats.applies, "rejected");
                if origin == Origin::ControlPlane {
                    self.report(progress, Some(&version), Some(&error)).await;
                }
            }
        }
    }

    async fn start_from_persisted(&self, sink: &impl ConfigSink, progress: &mut Progress) {
        let Some(path) = self.persist.clone() else {
            tracing::warn!("no config from the control plane and persistence is off; serving nothing until it answers");
            return;
        };
        let loaded = tokio::task::spawn_blocking({
            let path = path.clone();
            move || persist::load(&path)
        })
        .await
        .unwrap_or_else(|join| Err(PersistError::Corrupt { path: path.clone(), reason: join.to_string() }));
        match loaded {
            Ok(Some(persisted)) => {
                tracing::warn!(
                    path = %path.display(),
                    version = %persisted.snapshot.version,
                    saved_at = persisted.saved_at,
                    "starting from the persisted config; the control plane is asked again"
                );
                self.try_apply(sink, progress, persisted.snapshot, Origin::Persisted).await;
                self.check_ready(sink, progress);
            }
            Ok(None) => tracing::warn!(
                path = %path.display(),
                "no config from the control plane and none persisted yet; serving nothing until it answers"
            ),
            Err(error) => tracing::error!("persisted config not used: {error}"),
        }
    }

    fn check_ready(&self, sink: &impl ConfigSink, progress: &mut Progress) {
        if progress.ready {
            return;
        }
        let met = progress.live.as_ref().is_some_and(|live| match self.ready_policy {
            ReadyPolicy::Persisted => true,
            ReadyPolicy::Fresh => live.confirmed,
        });
        if met {
            progress.ready = true;
            sink.ready();
        }
    }

    async fn persist(&self, snapshot: Snapshot) {
        let Some(path) = self.persist.clone() else { return };
        let saved = tokio::task::spawn_blocking(move || persist::save(&path, &snapshot)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.stats.persist_errors.inc();
                tracing::warn!("{error}; a restart during an outage would not have this config");
            }
            Err(join) => {
                self.stats.persist_errors.inc();
                tracing::warn!("persisting the config failed: {join}");
            }
        }
    }

    async fn report(&self, progress: &mut Progress, attempted: Option<&str>, error: Option<&str>) {
        let Some(url) = &self.status_url else { return };
        let report = StatusReport {
            instance: &self.instance,
            uuid: &self.instance,
            name: &self.host_name,
            ip: self.pod_ip.as_deref(),
            // A heartbeat after a rejection still says so: the control
            // plane's latest version is not the one running.
            state: if error.is_some() || (attempted.is_none() && progress.rejected.is_some()) {
                "rejected"
            } else {
                "applied"
            },
            version: progress.live.as_ref().map(|live| live.version.as_str()),
            origin: progress.live.as_ref().map(|live| live.origin),
            attempted,
            error,
            timestamp: unix_millis(),
            since: self.started_ms,
            pid: std::process::id(),
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        match self.transport.post_json(url, body).await {
            Ok(_) => {
                Stats::count(&self.stats.status_reports, "sent");
                progress.report_pending = false;
            }
            Err(failure) => {
                Stats::count(&self.stats.status_reports, "failed");
                progress.report_pending = true;
                tracing::debug!(%url, "status report not delivered: {failure}");
            }
        }
    }

    fn update_state(&self, change: impl FnOnce(&mut SyncState)) {
        change(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn state_url(&self) -> String {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).url.clone()
    }
}

/// `interval` × (1 ± `jitter`), `random` in [0, 1).
pub fn poll_delay(interval: Duration, jitter: f64, random: f64) -> Duration {
    interval.mul_f64((1.0 + jitter * (2.0 * random - 1.0)).max(0.0))
}

/// Capped exponential backoff with "equal jitter": half the step is fixed,
/// half random, so retries spread out but never come too fast.
pub fn retry_delay(initial: Duration, max: Duration, failures: u32, random: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let step = initial.saturating_mul(1u32 << exponent).min(max);
    step.mul_f64(0.5 + 0.5 * random)
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `$POD_NAME`, else the host name.
fn host_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|name| name.trim().to_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "edgeplane".into())
}

/// [`host_name`] and the process id.
fn default_instance_id() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_spread_around_the_interval() {
        let interval = Duration::from_secs(5);
        assert_eq!(poll_delay(interval, 0.1, 0.0), Duration::from_millis(4500));
        assert_eq!(poll_delay(interval, 0.1, 0.5), interval);
        assert!(poll_delay(interval, 0.1, 0.999_999) < Duration::from_millis(5500));
        assert_eq!(poll_delay(interval, 0.0, 0.9), interval);
    }

    #[test]
    fn retries_back_off_to_the_cap() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let steps: Vec<Duration> = (1..=8).map(|n| retry_delay(initial, max, n, 1.0)).collect();
        let secs: Vec<u64> = steps.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(initial, max, 3, 0.0), Duration::from_secs(2), "never under half the step");
        assert_eq!(retry_delay(initial, max, u32::MAX, 1.0), max, "no overflow after many failures");
    }
}
