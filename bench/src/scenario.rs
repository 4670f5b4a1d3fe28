//! The scenarios a run can include.

use crate::load::{Workload, MQTT_MIN_PAYLOAD};
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
    /// Open-loop load at `fraction` of the direct baseline's median in
    /// scenario `of` (run first), the same rate for every peer: the added
    /// latency at one load is then comparable across peers.
    FractionOfDirect { fraction: f64, of: &'static str },
    /// Open-loop load at `fraction` of `peer`'s median in scenario `of` (run
    /// first), the same rate for every target.
    FractionOfPeer { fraction: f64, of: &'static str, peer: &'static str },
    /// Closed-loop load while edgeplane's config is swapped continuously.
    ReloadUnderLoad,
    /// Idle connections held open (HTTP keep-alive, or MQTT after CONNACK);
    /// memory is what counts.
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

/// Where TLS is in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plaintext everywhere.
    Off,
    /// Clients speak TLS (1.3, ALPN `http/1.1`) to each peer, which
    /// terminates it; plaintext upstream. `resume`: whether the client
    /// resumes sessions (no: every connection is a full handshake).
    Terminate { resume: bool },
    /// No peers: two edgeplane sidecars in a row (client → outbound →
    /// inbound → upstream), once with plaintext and once with mTLS between
    /// them (see [`crate::pair`]), and `direct` for reference.
    SidecarPair,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    pub downstream: Wire,
    pub upstream: Wire,
    pub upstream_kind: UpstreamKind,
    pub mode: Mode,
    /// `req/s`, `MB/s`, `msg/s`, `handshakes/s` or `connections`.
    pub unit: &'static str,
    pub tls: Tls,
}

pub const ALL: [&str; 20] = [
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
    "mqtt-qos0",
    "mqtt-qos1",
    "mqtt-fixed-rate-50",
    "mqtt-idle",
    "tls-keepalive",
    "tls-handshake",
    "sidecar-pair-max",
    "mtls-sidecar-pair",
];

/// Messages each MQTT publisher/subscriber pair may have in flight end to
/// end in the closed-loop MQTT scenarios: enough to keep the pipeline busy,
/// and at most mosquitto's `max_inflight_messages` (20), so QoS 1 deliveries
/// never spill into its queue (which drops beyond `max_queued_messages`).
pub const MQTT_WINDOW: usize = 16;

/// What the MQTT scenarios run against.
pub const MQTT_BROKER: &str = "mosquitto";

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
            tls: Tls::Off,
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
            "mqtt-qos0" => Scenario {
                unit: "msg/s",
                ..http(
                    "mqtt-qos0",
                    "MQTT 3.1.1 QoS 0, publisher → proxy → mosquitto → proxy → subscriber, one topic per \
                     publisher/subscriber pair, at most 16 messages per pair in flight end to end; delivered \
                     messages counted at the subscribers",
                    Wire::Mqtt,
                    Wire::Mqtt,
                    UpstreamKind::MqttBroker,
                    Mode::Max,
                )
            },
            "mqtt-qos1" => Scenario {
                unit: "msg/s",
                ..http(
                    "mqtt-qos1",
                    "MQTT 3.1.1 QoS 1 both ways (publishers wait for PUBACK, subscribers acknowledge), at most \
                     16 messages per pair unacknowledged or undelivered",
                    Wire::Mqtt,
                    Wire::Mqtt,
                    UpstreamKind::MqttBroker,
                    Mode::Max,
                )
            },
            "mqtt-fixed-rate-50" => Scenario {
                unit: "msg/s",
                ..http(
                    "mqtt-fixed-rate-50",
                    "MQTT QoS 0, open loop at 50% of the direct baseline's mqtt-qos0 median, the same rate for \
                     every peer; end-to-end latency from the intended send time",
                    Wire::Mqtt,
                    Wire::Mqtt,
                    UpstreamKind::MqttBroker,
                    Mode::FractionOfDirect { fraction: 0.5, of: "mqtt-qos0" },
                )
            },
            "mqtt-idle" => Scenario {
                unit: "connections",
                ..http(
                    "mqtt-idle",
                    "Memory with many idle MQTT connections (CONNECT with keep-alive 600 s, CONNACK received); \
                     the direct row's memory is mosquitto's own",
                    Wire::Mqtt,
                    Wire::Mqtt,
                    UpstreamKind::MqttBroker,
                    Mode::IdleConnections,
                )
            },
            "tls-keepalive" => Scenario {
                tls: Tls::Terminate { resume: true },
                ..http(
                    "tls-keepalive",
                    "HTTPS/1.1 keep-alive, closed loop: TLS 1.3 (TLS13_AES_128_GCM_SHA256, X25519, ECDSA P-256 \
                     certificate, ALPN http/1.1) terminated by the proxy, plaintext HTTP/1.1 upstream",
                    Wire::Http1,
                    Wire::Http1,
                    UpstreamKind::Http1,
                    Mode::Max,
                )
            },
            "tls-handshake" => Scenario {
                unit: "handshakes/s",
                tls: Tls::Terminate { resume: false },
                ..http(
                    "tls-handshake",
                    "A new TLS 1.3 connection for every request, closed loop: a full handshake (X25519, ECDSA \
                     P-256; the client never resumes a session), one GET with connection: close",
                    Wire::Http1,
                    Wire::Http1,
                    UpstreamKind::Http1,
                    Mode::Max,
                )
            },
            "sidecar-pair-max" => Scenario {
                tls: Tls::SidecarPair,
                ..http(
                    "sidecar-pair-max",
                    "Two edgeplane sidecars in a row (client → outbound → inbound → upstream, HTTP/1.1 keep-alive, \
                     both on the proxy CPUs), closed loop: plaintext between them, and mTLS with mesh identities",
                    Wire::Http1,
                    Wire::Http1,
                    UpstreamKind::Http1,
                    Mode::Max,
                )
            },
            "mtls-sidecar-pair" => Scenario {
                tls: Tls::SidecarPair,
                ..http(
                    "mtls-sidecar-pair",
                    "The sidecar pair, open loop at 50% of the plaintext pair's sidecar-pair-max median, the same \
                     rate for the plaintext pair, the mTLS pair and direct; latency from the intended send time",
                    Wire::Http1,
                    Wire::Http1,
                    UpstreamKind::Http1,
                    Mode::FractionOfPeer { fraction: 0.5, of: "sidecar-pair-max", peer: crate::pair::PLAIN },
                )
            },
            _ => return None,
        })
    }

    /// The scenario whose figures this one's rate is set from, if any.
    pub fn rate_source(&self) -> Option<&'static str> {
        match self.mode {
            Mode::FractionOfDirect { of, .. } | Mode::FractionOfPeer { of, .. } => Some(of),
            _ => None,
        }
    }

    /// The load each connection generates in this scenario.
    pub fn workload(&self, streams: usize, payload: usize) -> Workload {
        match (self.name, self.downstream) {
            ("mqtt-qos1", _) => Workload::Mqtt { qos: 1, window: MQTT_WINDOW, payload: payload.max(MQTT_MIN_PAYLOAD) },
            (_, Wire::Mqtt) => Workload::Mqtt { qos: 0, window: MQTT_WINDOW, payload: payload.max(MQTT_MIN_PAYLOAD) },
            ("http1-new-connection" | "tls-handshake", _) => Workload::Http1NewConnection,
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
        assert_eq!(
            Scenario::by_name("mqtt-qos1").unwrap().workload(8, 64),
            Workload::Mqtt { qos: 1, window: MQTT_WINDOW, payload: 64 }
        );
        assert_eq!(
            Scenario::by_name("mqtt-fixed-rate-50").unwrap().workload(8, 1),
            Workload::Mqtt { qos: 0, window: MQTT_WINDOW, payload: MQTT_MIN_PAYLOAD }
        );
        assert_eq!(Scenario::by_name("mqtt-idle").unwrap().unit, "connections");
        assert_eq!(Scenario::by_name("tls-handshake").unwrap().workload(8, 64), Workload::Http1NewConnection);
        assert_eq!(Scenario::by_name("tls-keepalive").unwrap().workload(8, 64), Workload::Http1KeepAlive);
        assert_eq!(Scenario::by_name("tls-handshake").unwrap().tls, Tls::Terminate { resume: false });
        assert_eq!(Scenario::by_name("http1-keepalive").unwrap().tls, Tls::Off);
        let pair = Scenario::by_name("mtls-sidecar-pair").unwrap();
        assert_eq!(pair.rate_source(), Some("sidecar-pair-max"));
        assert_eq!(Scenario::by_name(pair.rate_source().unwrap()).unwrap().tls, Tls::SidecarPair);
        assert_eq!(Scenario::by_name("mqtt-fixed-rate-50").unwrap().rate_source(), Some("mqtt-qos0"));
    }
}
