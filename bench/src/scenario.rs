//! The scenarios a run can include.

use crate::load::Workload;
use crate::peers::Wire;
use crate::upstream::UpstreamKind;

/// How a scenario is measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Closed-loop load: as fast as answers come back.
    Max,
    /// Open-loop load at this fraction of the peer's closed-loop
    /// `http1-keepalive` throughput (measured first).
    FractionOfMax(f64),
    /// Closed-loop load while edgeplane's config is swapped continuously.
    ReloadUnderLoad,
    /// Idle keep-alive connections held open; memory is what counts.
    IdleConnections,
    /// Closed-loop load from an external tool, to cross-check the built-in
    /// generator's figures.
    External(Tool),
}

/// External load generators the harness can drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Wrk,
    H2load,
}

impl Tool {
    pub fn program(self) -> &'static str {
        match self {
            Tool::Wrk => "wrk",
            Tool::H2load => "h2load",
        }
    }

    pub fn package(self) -> &'static str {
        match self {
            Tool::Wrk => "wrk",
            Tool::H2load => "nghttp2-client",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    pub downstream: Wire,
    pub upstream: Wire,
    pub upstream_kind: UpstreamKind,
    pub mode: Mode,
    /// `req/s`, `MB/s` or `connections`.
    pub unit: &'static str,
}

pub const ALL: [&str; 12] = [
    "http1-keepalive",
    "http1-new-connection",
    "http2-multiplexed",
    "http1-to-http2-upstream",
    "tcp-rr",
    "tcp-bulk",
    "fixed-rate-50",
    "fixed-rate-80",
    "reload-under-load",
    "idle-connections",
    "http1-keepalive-wrk",
    "http2-multiplexed-h2load",
];

impl Scenario {
    pub fn by_name(name: &str) -> Option<Scenario> {
        let http = |name, description, downstream, upstream, upstream_kind, mode| Scenario {
            name,
            description,
            downstream,
            upstream,
            upstream_kind,
            mode,
            unit: "req/s",
        };
        Some(match name {
            "http1-keepalive" => http(
                "http1-keepalive",
                "HTTP/1.1 keep-alive, closed loop: each connection sends its next request when the answer arrives",
                Wire::Http1,
                Wire::Http1,
                UpstreamKind::Http1,
                Mode::Max,
            ),
            "http1-new-connection" => http(
                "http1-new-connection",
                "HTTP/1.1, a new client connection for every request (connection: close), closed loop",
                Wire::Http1,
                Wire::Http1,
                UpstreamKind::Http1,
                Mode::Max,
            ),
            "http2-multiplexed" => http(
                "http2-multiplexed",
                "HTTP/2 (h2c) clients with several streams per connection, HTTP/1.1 upstream, closed loop",
                Wire::Http2,
                Wire::Http1,
                UpstreamKind::Http1,
                Mode::Max,
            ),
            "http1-to-http2-upstream" => http(
                "http1-to-http2-upstream",
                "HTTP/1.1 keep-alive clients multiplexed onto an HTTP/2 (h2c) upstream, closed loop",
                Wire::Http1,
                Wire::Http2,
                UpstreamKind::Http2,
                Mode::Max,
            ),
            "tcp-rr" => http(
                "tcp-rr",
                "TCP request/response: write a message, read the echo, closed loop",
                Wire::Tcp,
                Wire::Tcp,
                UpstreamKind::TcpEcho,
                Mode::Max,
            ),
            "tcp-bulk" => Scenario {
                unit: "MB/s",
                ..http(
                    "tcp-bulk",
                    "TCP bulk download: the upstream writes as fast as the client reads",
                    Wire::Tcp,
                    Wire::Tcp,
                    UpstreamKind::TcpSource,
                    Mode::Max,
                )
            },
            "fixed-rate-50" => http(
                "fixed-rate-50",
                "HTTP/1.1 keep-alive, open loop at 50% of each peer's own http1-keepalive maximum",
                Wire::Http1,
                Wire::Http1,
                UpstreamKind::Http1,
                Mode::FractionOfMax(0.5),
            ),
            "fixed-rate-80" => http(
                "fixed-rate-80",
                "HTTP/1.1 keep-alive, open loop at 80% of each peer's own http1-keepalive maximum",
                Wire::Http1,
                Wire::Http1,
                UpstreamKind::Http1,
                Mode::FractionOfMax(0.8),
            ),
            "reload-under-load" => http(
                "reload-under-load",
                "HTTP/1.1 keep-alive load while edgeplane's config is rewritten and reloaded every 100 ms",
                Wire::Http1,
                Wire::Http1,
                UpstreamKind::Http1,
                Mode::ReloadUnderLoad,
            ),
            "idle-connections" => Scenario {
                unit: "connections",
                ..http(
                    "idle-connections",
                    "Memory with many idle HTTP/1.1 keep-alive client connections (each served one request)",
                    Wire::Http1,
                    Wire::Http1,
                    UpstreamKind::Http1,
                    Mode::IdleConnections,
                )
            },
            "http1-keepalive-wrk" => http(
                "http1-keepalive-wrk",
                "http1-keepalive driven by wrk instead of the built-in generator (a cross-check)",
                Wire::Http1,
                Wire::Http1,
                UpstreamKind::Http1,
                Mode::External(Tool::Wrk),
            ),
            "http2-multiplexed-h2load" => http(
                "http2-multiplexed-h2load",
                "http2-multiplexed driven by h2load instead of the built-in generator (a cross-check)",
                Wire::Http2,
                Wire::Http1,
                UpstreamKind::Http1,
                Mode::External(Tool::H2load),
            ),
            _ => return None,
        })
    }

    /// The load each connection generates in this scenario.
    pub fn workload(&self, streams: usize, payload: usize) -> Workload {
        match (self.name, self.downstream) {
            ("http1-new-connection", _) => Workload::Http1NewConnection,
            ("tcp-bulk", _) => Workload::TcpBulk,
            (_, Wire::Tcp) => Workload::TcpRequestResponse { size: payload.max(1) },
            (_, Wire::Http2) => Workload::Http2 { streams },
            (_, Wire::Http1) => Workload::Http1KeepAlive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves() {
        for name in ALL {
            let scenario = Scenario::by_name(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(scenario.name, name);
        }
        assert!(Scenario::by_name("nope").is_none());
        assert_eq!(Scenario::by_name("tcp-bulk").unwrap().workload(4, 64), Workload::TcpBulk);
        assert_eq!(Scenario::by_name("tcp-rr").unwrap().workload(4, 64), Workload::TcpRequestResponse { size: 64 });
        assert_eq!(Scenario::by_name("http2-multiplexed").unwrap().workload(8, 64), Workload::Http2 { streams: 8 });
    }
}
