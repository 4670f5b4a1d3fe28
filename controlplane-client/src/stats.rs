//! The client's metrics, registered under `edgeplane_controlplane_*`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
    /// `control_plane` or `persisted`.
    pub origin: &'static str,
}

/// Counters and gauges of one client; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Polls by outcome: `changed`, `not_modified`, or the error kind.
    pub fetches: Family<ResultLabels, Counter>,
    /// Configs handed to the proxy: `applied`, `unchanged`, `rejected`.
    pub applies: Family<ResultLabels, Counter>,
    /// Status reports: `sent`, `failed`.
    pub status_reports: Family<ResultLabels, Counter>,
    pub persist_errors: Counter,
    /// 1 for the version now live.
    pub version: Family<VersionLabels, Gauge>,
    sync: Arc<SyncClock>,
}

/// When the client last knew the live config to be what the control plane
/// serves. Read at scrape time, so the age is exact.
#[derive(Debug)]
struct SyncClock {
    started: Instant,
    /// Microseconds after `started`, plus one; 0 = never.
    last: AtomicU64,
    unix_last: AtomicU64,
}

impl Default for SyncClock {
    fn default() -> Self {
        SyncClock { started: Instant::now(), last: AtomicU64::new(0), unix_last: AtomicU64::new(0) }
    }
}

#[derive(Debug)]
struct AgeCollector(Arc<SyncClock>);

impl Collector for AgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let age = self.0.age_seconds();
        let mut metric = encoder.encode_descriptor(
            "seconds_since_last_sync",
            "Seconds since the live config was last confirmed current by the control plane (since start if never)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        metric.encode_gauge(&age)?;
        let unix = self.0.unix_last.load(Ordering::Relaxed) as i64;
        let mut metric = encoder.encode_descriptor(
            "last_sync_timestamp_seconds",
            "Unix time of the last successful sync (0 = never)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        metric.encode_gauge(&unix)?;
        Ok(())
    }
}

impl SyncClock {
    fn age_seconds(&self) -> f64 {
        let now = self.started.elapsed();
        match self.last.load(Ordering::Relaxed) {
            0 => now.as_secs_f64(),
            last => (now.as_micros() as u64).saturating_sub(last - 1) as f64 / 1e6,
        }
    }
}

impl Stats {
    /// Adds the metrics to `registry` under `controlplane_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("controlplane");
        registry.register("fetches", "Polls of the control plane by outcome", self.fetches.clone());
        registry.register("applies", "Fetched configs by what the proxy did with them", self.applies.clone());
        registry.register("status_reports", "Status reports posted to the control plane", self.status_reports.clone());
        registry.register("persist_errors", "Failures to persist the last applied config", self.persist_errors.clone());
        registry.register("config_version", "The live config's version and where it came from", self.version.clone());
        registry.register_collector(Box::new(AgeCollector(self.sync.clone())));
    }

    /// The live config is known to be current.
    pub fn synced(&self) {
        let micros = self.sync.started.elapsed().as_micros() as u64;
        self.sync.last.store(micros + 1, Ordering::Relaxed);
        self.sync.unix_last.store(crate::persist::unix_now(), Ordering::Relaxed);
    }

    pub fn seconds_since_last_sync(&self) -> f64 {
        self.sync.age_seconds()
    }

    pub(crate) fn live(&self, version: &str, origin: &'static str) {
        self.version.clear();
        self.version.get_or_create(&VersionLabels { version: version.to_owned(), origin }).set(1);
    }

    pub(crate) fn count(family: &Family<ResultLabels, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabels { result }).inc();
    }
}
