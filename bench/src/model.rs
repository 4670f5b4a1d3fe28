//! The results a run produces: what `results.json` holds, and what the
//! Markdown table and the charts are drawn from.

use serde::{Deserialize, Serialize};

/// Bumped whenever a field changes meaning or is removed.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub machine: Machine,
    pub settings: Settings,
    pub scenarios: Vec<ScenarioResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cores: usize,
    pub kernel: String,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    pub os: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub rounds: u32,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// Client connections of the load generator.
    pub connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub streams: usize,
    /// Response body size (HTTP) or message size (TCP request/response), bytes.
    pub payload_bytes: usize,
    /// Worker threads given to every proxy.
    pub proxy_threads: usize,
    /// CPUs the proxies are pinned to.
    pub proxy_cpus: Vec<usize>,
    /// CPUs the load generator and upstreams are pinned to.
    pub load_cpus: Vec<usize>,
}

/// One scenario, all peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// `http1-keepalive`, `tcp-bulk`, ...
    pub name: String,
    pub description: String,
    /// Unit of `throughput`: `req/s`, `MB/s`, `msg/s` or `connections`.
    pub unit: String,
    pub peers: Vec<PeerResult>,
    /// Peers that did not run this scenario, and why.
    pub skipped: Vec<Skipped>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub peer: String,
    pub reason: String,
}

/// One peer in one scenario: every round, and the summary over them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerResult {
    /// `direct`, `edgeplane`, `nginx`, `haproxy`, `envoy`, `pipy`.
    pub peer: String,
    /// Version string reported by the peer's binary, when it has one.
    pub version: Option<String>,
    pub rounds: Vec<Round>,
    pub summary: Summary,
}

/// What one measured round produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// Requests (or MB for bulk scenarios) per second.
    pub throughput: f64,
    /// Completed requests/messages (bulk: bytes).
    pub completed: u64,
    pub errors: u64,
    /// Open-loop runs: the rate asked for, per second.
    pub offered_rate: Option<f64>,
    pub latency: Latency,
    /// CPU time (user + system) the proxy's processes used during the round.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per completed request, in microseconds (None for bulk and direct).
    pub cpu_us_per_request: Option<f64>,
    /// Resident memory of the proxy's processes at the end of the round, KiB.
    pub rss_kib: u64,
    /// Peak resident memory so far (VmHWM summed over the processes), KiB.
    pub peak_rss_kib: u64,
    /// Config reloads during the round (`reload-under-load` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloads: Option<Reloads>,
    /// Idle-connection rounds: resident memory the connections added, per
    /// connection held, in bytes (RSS with them open minus the process's RSS
    /// when it had just started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_connection: Option<f64>,
}

/// Config reloads asked for during a round, and what came of them (from the
/// proxy's own reload counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloads {
    pub requested: u64,
    pub applied: u64,
    pub failed: u64,
}

/// Latency in microseconds. All zero for bulk-transfer rounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// (percentile, microseconds) points for percentile curves, from 0 to 99.999.
    pub curve: Vec<(f64, u64)>,
}

/// Median with the smallest and largest value over the rounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        let median = if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] };
        Some(Spread { median, min: values[0], max: values[values.len() - 1] })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub throughput: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
    pub p999_us: Spread,
    pub cpu_us_per_request: Option<Spread>,
    pub rss_kib: Spread,
    pub peak_rss_kib: Spread,
    pub errors: u64,
    /// The percentile curve of the round with the median throughput.
    pub curve: Vec<(f64, u64)>,
    /// Idle-connection scenarios: see [`Round::bytes_per_connection`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_connection: Option<Spread>,
}

impl Summary {
    pub fn of(rounds: &[Round]) -> Summary {
        let spread = |f: &dyn Fn(&Round) -> f64| Spread::of(rounds.iter().map(f)).unwrap_or_default();
        let median_round = {
            let mut order: Vec<&Round> = rounds.iter().collect();
            order.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
            order.get(order.len() / 2).copied()
        };
        Summary {
            throughput: spread(&|r| r.throughput),
            p50_us: spread(&|r| r.latency.p50 as f64),
            p99_us: spread(&|r| r.latency.p99 as f64),
            p999_us: spread(&|r| r.latency.p999 as f64),
            cpu_us_per_request: Spread::of(rounds.iter().filter_map(|r| r.cpu_us_per_request)),
            rss_kib: spread(&|r| r.rss_kib as f64),
            peak_rss_kib: spread(&|r| r.peak_rss_kib as f64),
            errors: rounds.iter().map(|r| r.errors).sum(),
            curve: median_round.map(|r| r.latency.curve.clone()).unwrap_or_default(),
            bytes_per_connection: Spread::of(rounds.iter().filter_map(|r| r.bytes_per_connection)),
        }
    }
}

/// What a scenario's throughput counts one of, for "CPU µs per ...":
/// `req`, `msg`, `handshake`, `MB`.
pub fn per_unit(unit: &str) -> &str {
    match unit {
        "handshakes/s" => "handshake",
        unit => unit.strip_suffix("/s").unwrap_or("req"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_units() {
        assert_eq!(per_unit("req/s"), "req");
        assert_eq!(per_unit("msg/s"), "msg");
        assert_eq!(per_unit("handshakes/s"), "handshake");
        assert_eq!(per_unit("connections"), "req");
    }

    #[test]
    fn spreads() {
        assert_eq!(Spread::of([3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([]), None);
        assert_eq!(Spread::of([f64::NAN, 1.0]).unwrap().median, 1.0);
    }
}
