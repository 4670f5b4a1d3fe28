//! Certificate rotation: the control thread looks at the certificate, key
//! and CA files in use every second and rebuilds a TLS config whose files
//! changed. A rebuilt config serves new handshakes; established connections
//! keep the session they have. A change that does not load (a key that does
//! not match, an expired certificate, half-written PEM) is refused, counted
//! and logged, and the config in service stays until the files change again.
//!
//! Why polling `stat` rather than inotify: Kubernetes updates mounted
//! secrets by swapping a symlinked directory, which inotify watches on the
//! files miss, and a stat of a handful of files a second costs nothing.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Duration, SystemTime};

use crate::metrics::{CertLabels, ReloadLabels};
use crate::state::Shared;

use super::certs::CertInfo;

pub const INTERVAL: Duration = Duration::from_secs(1);

/// What a file looked like when its contents were last read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// A TLS config in service, what it serves, and the files it came from.
/// Listener (`ServerTls`) and cluster (`ClientTls`) configs both rotate
/// through one of these.
pub struct Live<C> {
    /// Loaded once per handshake; a rotation stores a new one.
    pub config: ArcSwap<C>,
    /// The certificates in it (for `/certs` and the expiry metric).
    pub certs: ArcSwap<Vec<CertInfo>>,
    pub sources: Sources,
}

impl<C> Live<C> {
    pub fn new(sources: Sources, (config, certs): (C, Vec<CertInfo>)) -> Live<C> {
        Live { config: ArcSwap::from_pointee(config), certs: ArcSwap::from_pointee(certs), sources }
    }

    /// Puts a rebuilt config in service (new handshakes only).
    pub fn replace(&self, (config, certs): (C, Vec<CertInfo>)) {
        self.config.store(Arc::new(config));
        self.certs.store(Arc::new(certs));
    }
}

/// The files a TLS config was built from and how they looked then.
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<String>,
    seen: Mutex<Vec<Option<Stamp>>>,
}

impl Sources {
    /// Stamps the files now: call before reading them, so a change while
    /// they are read is seen at the next look.
    pub fn new(files: Vec<String>) -> Sources {
        let seen = Mutex::new(stamps(&files));
        Sources { files, seen }
    }

    /// Whether any file differs from when it was last read; if so the new
    /// stamps are taken (the caller reads the files next).
    pub fn changed(&self) -> bool {
        let now = stamps(&self.files);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return false;
        }
        *seen = now;
        true
    }
}

fn stamps(files: &[String]) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|file| {
            std::fs::metadata(file).ok().map(|meta| Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
                inode: meta.ino(),
            })
        })
        .collect()
}

/// Runs on the control thread for the life of the process.
pub async fn run(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published: Vec<CertLabels> = Vec::new();
    loop {
        ticks.tick().await;
        check(&shared);
        published = publish_expiry(&shared, published);
    }
}

/// Rebuilds every TLS config of the live table whose files changed.
pub fn check(shared: &Shared) {
    let table = shared.table.load();
    let listeners = table.listeners.iter().flatten().filter_map(|l| l.tls.as_ref().map(|tls| (l.name.as_ref(), tls)));
    for (name, tls) in listeners {
        if tls.live.sources.changed() {
            report(shared, "listener", name, tls.rebuild());
        }
    }
    for cluster in &table.clusters {
        if let Some(tls) = &cluster.tls {
            if tls.live.sources.changed() {
                report(shared, "cluster", &cluster.name, tls.rebuild());
            }
        }
    }
}

fn report(shared: &Shared, kind: &str, name: &str, result: Result<(), String>) {
    let label = match result {
        Ok(()) => {
            tracing::info!(%kind, %name, "certificates reloaded");
            "applied"
        }
        Err(error) => {
            tracing::error!(%kind, %name, "certificate reload refused; the previous certificates stay in use: {error}");
            "rejected"
        }
    };
    shared.metrics.tls_rotations.get_or_create(&ReloadLabels { result: label }).inc();
}

/// Every certificate the live table serves or presents.
pub fn certificates(shared: &Shared) -> Vec<CertInfo> {
    let table = shared.table.load();
    let mut all = Vec::new();
    for listener in table.listeners.iter().flatten() {
        if let Some(tls) = &listener.tls {
            all.extend(tls.live.certs.load().iter().cloned());
        }
    }
    for cluster in &table.clusters {
        if let Some(tls) = &cluster.tls {
            all.extend(tls.live.certs.load().iter().cloned());
        }
    }
    all
}

/// Sets the expiry gauge of each certificate in use and removes the series
/// of certificates no longer in use.
fn publish_expiry(shared: &Shared, previous: Vec<CertLabels>) -> Vec<CertLabels> {
    let family = &shared.metrics.tls_cert_expiry;
    let now: Vec<(CertLabels, i64)> = certificates(shared)
        .into_iter()
        .map(|info| {
            (
                CertLabels {
                    used_by: info.used_by.clone(),
                    subject: info.subject.clone(),
                    serial: info.serial.clone(),
                },
                info.not_after,
            )
        })
        .collect();
    for (labels, not_after) in &now {
        family.get_or_create(labels).set(*not_after);
    }
    for old in previous {
        if !now.iter().any(|(labels, _)| *labels == old) {
            family.remove(&old);
        }
    }
    now.into_iter().map(|(labels, _)| labels).collect()
}
