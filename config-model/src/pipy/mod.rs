//! osm-edge / FSM sidecar configs: the `config.json` ("PipyConf") that the
//! osm-edge controller writes into a Pipy repo for each sidecar, translated
//! into an edgeplane [`Config`]. See `docs/osm-edge.md` for what maps to what.

mod conf;
mod probes;
mod translate;

pub use probes::{LIVENESS_PORT, READINESS_PORT, STARTUP_PORT};
pub use translate::translate;

use crate::Config;

/// What the translation needs to know about the pod it runs in. osm-edge's
/// injector passes these as environment variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarContext {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub controller_kind: String,
    /// Where the outbound (15001) and inbound (15003) transparent listeners bind.
    pub outbound_bind: String,
    pub inbound_bind: String,
}

impl SidecarContext {
    /// From the environment osm-edge gives its sidecar (`POD_NAMESPACE`,
    /// `SERVICE_ACCOUNT`, `POD_NAME`, `POD_CONTROLLER_KIND`);
    /// `EDGEPLANE_OSM_OUTBOUND_BIND` and `EDGEPLANE_OSM_INBOUND_BIND` move the
    /// listeners (tests, several sidecars on one host).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let or = |name: &str, default: &str| get(name).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned());
        SidecarContext {
            namespace: or("POD_NAMESPACE", "default"),
            service_account: or("SERVICE_ACCOUNT", "default"),
            pod_name: or("POD_NAME", ""),
            controller_kind: or("POD_CONTROLLER_KIND", "Deployment"),
            outbound_bind: or("EDGEPLANE_OSM_OUTBOUND_BIND", "0.0.0.0:15001"),
            inbound_bind: or("EDGEPLANE_OSM_INBOUND_BIND", "0.0.0.0:15003"),
        }
    }
}

impl Default for SidecarContext {
    fn default() -> Self {
        Self::from_env(|_| None)
    }
}

/// A translated PipyConf.
#[derive(Clone, Debug)]
pub struct Translation {
    pub config: Config,
    /// Fields that are present but not (fully) supported, one line each,
    /// naming the field's path. Logged once by the proxy.
    pub warnings: Vec<String>,
    /// Where the probe proxies send the kubelet's probes.
    pub probes: Probes,
}

/// Where each probe proxy (liveness `:15901`, readiness `:15902`, startup
/// `:15903`) sends the kubelet's probes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probes {
    pub liveness: ProbeTarget,
    pub readiness: ProbeTarget,
    pub startup: ProbeTarget,
}

/// What a probe proxy does with a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProbeTarget {
    /// No probe and no app port to send it to: the connection is reset, so
    /// the probe fails (osm-edge does the same).
    #[default]
    Refuse,
    /// Each HTTP request goes to `target` with its path replaced by `path`.
    Http { target: std::net::SocketAddr, path: String },
    /// The connection is relayed byte for byte to `target`.
    Tcp { target: std::net::SocketAddr },
    /// Answered by the TCP health check (`:15904`'s handler): a TCP and
    /// HTTPS probe, rewritten with `Original-Tcp-Port`.
    HealthCheck,
}

/// Whether a JSON text is a PipyConf rather than an edgeplane config: a
/// PipyConf's top-level keys are capitalised (`Ts`, `Version`, `Spec`,
/// `Inbound`…), an edgeplane config's are lower-case.
pub fn looks_like_pipyconf(text: &str) -> bool {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) else { return false };
    !map.is_empty() && map.keys().all(|key| key.starts_with(|c: char| c.is_ascii_uppercase()))
}
