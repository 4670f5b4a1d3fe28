//! Active health checking: one probe task per endpoint of every cluster with
//! a `health_check`, on the control thread. A failing endpoint gets the
//! [`HEALTH_CHECK_FAILED`] flag, which balancing honours; its gauge in
//! `edgeplane_upstream_endpoint_healthy` follows.
//!
//! Tasks are reconciled after every publish: kept while the endpoint and its
//! check are unchanged (so a reload does not reset their counts), restarted
//! when the check changes, stopped (and the flag cleared) when either goes.

pub mod probe;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::AbortHandle;

use crate::metrics::{EndpointLabels, Metrics};
use crate::policy::outlier::HEALTH_CHECK_FAILED;
use crate::route::{EndpointState, RouteTable};
use probe::{CheckSettings, ProbeKind};

/// A cluster's compiled check and the hash of its config.
#[derive(Clone, Debug)]
pub struct HealthCheckSpec {
    pub settings: CheckSettings,
    pub config_hash: u64,
}

impl HealthCheckSpec {
    pub fn compile(check: &config_model::HealthCheck, config_hash: u64) -> Result<Self, String> {
        let kind = match check.kind {
            config_model::HealthCheckKind::Tcp => ProbeKind::Tcp,
            config_model::HealthCheckKind::Http => ProbeKind::Http {
                path: check.path.clone(),
                host: check.host.clone(),
                expected: check.expected_statuses.iter().map(|range| range.bounds()).collect::<Result<_, _>>()?,
            },
        };
        Ok(HealthCheckSpec {
            settings: CheckSettings {
                kind,
                interval: check.interval.parse()?,
                timeout: check.timeout.parse()?,
                healthy_threshold: check.healthy_threshold,
                unhealthy_threshold: check.unhealthy_threshold,
                jitter: check.jitter.parse()?,
            },
            config_hash,
        })
    }
}

struct Running {
    config_hash: u64,
    task: AbortHandle,
    endpoint: Arc<EndpointState>,
}

/// The probe tasks, by endpoint id.
#[derive(Default)]
pub struct HealthCheckers {
    running: HashMap<usize, Running>,
}

impl HealthCheckers {
    /// Starts, keeps or stops probe tasks to match `table`. Must run inside
    /// the control thread's runtime.
    pub fn reconcile(&mut self, table: &RouteTable, metrics: &Metrics) {
        let mut wanted = HashMap::new();
        for cluster in &table.clusters {
            if let Some(spec) = &cluster.health_check {
                for endpoint in cluster.endpoints.iter() {
                    wanted.insert(endpoint.id, (spec, endpoint));
                }
            }
        }
        self.running.retain(|id, running| {
            let keep = wanted.get(id).is_some_and(|(spec, _)| spec.config_hash == running.config_hash);
            if !keep {
                running.task.abort();
                let endpoint = &running.endpoint;
                endpoint.health.set_flag(&endpoint.cluster_state, HEALTH_CHECK_FAILED, false);
            }
            keep
        });
        for (id, (spec, endpoint)) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            let labels = EndpointLabels { cluster: endpoint.cluster.to_string(), endpoint: endpoint.addr.to_string() };
            let gauge = metrics.endpoint_healthy.get_or_create(&labels).clone();
            let healthy = endpoint.health.flags() & HEALTH_CHECK_FAILED == 0;
            gauge.set(i64::from(healthy));
            let checked = endpoint.clone();
            let marked = endpoint.clone();
            let task = tokio::spawn(probe::run(
                endpoint.addr,
                move || marked.socket_mark.load(std::sync::atomic::Ordering::Relaxed),
                spec.settings.clone(),
                healthy,
                move |healthy, failure| {
                    checked.health.set_flag(&checked.cluster_state, HEALTH_CHECK_FAILED, !healthy);
                    gauge.set(i64::from(healthy));
                    match failure {
                        Some(failure) => tracing::warn!(
                            cluster = %checked.cluster, endpoint = %checked.addr, %failure, "endpoint failed its health checks"
                        ),
                        None => {
                            tracing::info!(cluster = %checked.cluster, endpoint = %checked.addr, "endpoint healthy again")
                        }
                    }
                },
            ));
            self.running.insert(
                id,
                Running { config_hash: spec.config_hash, task: task.abort_handle(), endpoint: endpoint.clone() },
            );
        }
    }
}
