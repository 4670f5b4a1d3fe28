//! Process-wide state shared by the control thread and every worker.
//!
//! The route table is swapped as a whole; everything else here lives for the
//! process and is keyed by stable identity so it survives reloads.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use config_model::ClusterProtocol;
use tokio::sync::{watch, Notify};

use crate::access_log::AccessLogger;
use crate::metrics::Metrics;
use crate::policy::ClusterState;
use crate::route::{EndpointState, RouteTable};

pub struct Shared {
    pub table: ArcSwap<RouteTable>,
    /// Where the live config came from, for `/config/source`.
    pub source: SourceInfo,
    pub metrics: Metrics,
    pub registry: Registry,
    pub lifecycle: Lifecycle,
    pub connections: Arc<ConnectionTracker>,
    pub access_log: AccessLogger,
    /// Where osm-edge's probe proxies send probes, from the live PipyConf
    /// (every probe refused for other configs). Stored right after the table.
    pub osm_probes: ArcSwap<config_model::pipy::Probes>,
}

/// Where configs come from.
pub enum SourceInfo {
    File(std::path::PathBuf),
    ControlPlane(controlplane_client::SyncHandle),
}

/// Stable identities: listener slots and endpoint states. Only the config
/// compiler takes these locks.
#[derive(Default)]
pub struct Registry {
    listeners: Mutex<HashMap<String, usize>>,
    endpoints: Mutex<EndpointMap>,
    clusters: Mutex<HashMap<String, Arc<ClusterState>>>,
    policies: Mutex<HashMap<String, PolicyEntry>>,
    /// The generation being compiled: policies it asks for are marked with
    /// it, so those the published table no longer uses can be dropped.
    compiling: std::sync::atomic::AtomicU64,
}

/// A stateful policy, the hash of the config it was made from, and the last
/// generation that used it.
type PolicyEntry = (u64, Arc<dyn Any + Send + Sync>, u64);

#[derive(Default)]
struct EndpointMap {
    /// Plaintext and TLS connections to one address never share pools.
    by_key: HashMap<(String, SocketAddr, ClusterProtocol, bool), Arc<EndpointState>>,
    next_id: usize,
}

impl Registry {
    /// The slot of a listener name: the same for the life of the process.
    pub fn listener_slot(&self, name: &str) -> usize {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let next = listeners.len();
        *listeners.entry(name.to_owned()).or_insert(next)
    }

    /// The state of an endpoint of a cluster, created on first use.
    pub fn endpoint(
        &self,
        cluster: &str,
        addr: SocketAddr,
        protocol: ClusterProtocol,
        tls: bool,
        make: impl FnOnce(usize) -> EndpointState,
    ) -> Arc<EndpointState> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let key = (cluster.to_owned(), addr, protocol, tls);
        if let Some(existing) = map.by_key.get(&key) {
            return existing.clone();
        }
        let id = map.next_id;
        map.next_id += 1;
        let state = Arc::new(make(id));
        map.by_key.insert(key, state.clone());
        state
    }

    /// Marks the start of compiling `generation`.
    pub fn start_compile(&self, generation: u64) {
        self.compiling.store(generation, Ordering::Relaxed);
    }

    /// The load and limit counters of a cluster, by name.
    pub fn cluster_state(&self, name: &str) -> Arc<ClusterState> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.entry(name.to_owned()).or_default().clone()
    }

    /// The state of a stateful policy (a breaker, a rate limiter): the one
    /// already running when its config (`config_hash`) is unchanged, else a
    /// new one. The flag says whether it is new.
    pub fn policy_state<T: Any + Send + Sync>(
        &self,
        key: String,
        config_hash: u64,
        make: impl FnOnce() -> T,
    ) -> (Arc<T>, bool) {
        let generation = self.compiling.load(Ordering::Relaxed);
        let mut policies = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((hash, existing, used)) = policies.get_mut(&key) {
            if *hash == config_hash {
                if let Ok(existing) = existing.clone().downcast::<T>() {
                    *used = generation;
                    return (existing, false);
                }
            }
        }
        let state = Arc::new(make());
        policies.insert(key, (config_hash, state.clone(), generation));
        (state, true)
    }

    /// Forgets endpoints that the live table no longer uses, so their pools
    /// can be dropped. Returns the ids that were released.
    pub fn retain_endpoints(&self, live: &RouteTable) -> Vec<usize> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let in_use: std::collections::HashSet<usize> =
            live.clusters.iter().flat_map(|c| c.endpoints.iter().map(|e| e.id)).collect();
        let mut released = Vec::new();
        map.by_key.retain(|_, state| {
            let keep = in_use.contains(&state.id);
            if !keep {
                // Its availability no longer counts in the cluster.
                state.health.reset(&state.cluster_state);
                released.push(state.id);
            }
            keep
        });
        let live_clusters: std::collections::HashSet<&str> = live.clusters.iter().map(|c| &*c.name).collect();
        self.clusters.lock().unwrap_or_else(|e| e.into_inner()).retain(|name, _| live_clusters.contains(name.as_str()));
        // Policies the live table did not ask for (removed routes, listeners, clusters).
        self.policies.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, (_, _, used)| *used >= live.generation);
        released
    }
}

/// Readiness and draining.
pub struct Lifecycle {
    ready: AtomicBool,
    /// Mirrors `draining_signal` for the per-request check, which must not
    /// take the watch channel's lock.
    draining: AtomicBool,
    draining_signal: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            draining_signal: watch::channel(false).0,
        }
    }
}

impl Lifecycle {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Ready: listeners bound, config loaded, not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.draining_signal.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A receiver that reports when draining starts; see [`draining`].
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.draining_signal.subscribe()
    }
}

/// Counts open client connections so a drain can wait for zero.
#[derive(Default)]
pub struct ConnectionTracker {
    active: AtomicUsize,
    idle: Notify,
}

impl ConnectionTracker {
    pub fn open(self: &Arc<Self>) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no client connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct ConnectionGuard(Arc<ConnectionTracker>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Waits until `receiver` reports draining.
pub async fn draining(receiver: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, i.e. the process is ending.
    let _ = receiver.wait_for(|draining| *draining).await;
}
