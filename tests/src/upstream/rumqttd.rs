//! rumqttd, a Rust MQTT broker, run in-process (MQTT 3.1.1 server).
//!
//! rumqttd binds the address it is given and does not report a port it
//! chose, so the port is taken from the kernel (bind to port 0, close) and
//! handed over; the broker is ready once a TCP connect succeeds. Its
//! threads cannot be stopped: they end with the test process.

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::eventually;

pub struct Rumqttd {
    addr: SocketAddr,
}

impl Rumqttd {
    pub async fn start() -> Rumqttd {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
        let config = serde_json::json!({
            "id": 0,
            "router": {
                "max_connections": 1000,
                "max_outgoing_packet_count": 200,
                "max_segment_size": 10_485_760,
                "max_segment_count": 10,
            },
            "v4": {
                "1": {
                    "name": "v4-1",
                    "listen": addr.to_string(),
                    "next_connection_delay_ms": 0,
                    "connections": {
                        "connection_timeout_ms": 5000,
                        "max_payload_size": 65536,
                        "max_inflight_count": 100,
                        "dynamic_filters": true,
                    },
                },
            },
        });
        let config: rumqttd::Config = serde_json::from_value(config).expect("rumqttd config");
        std::thread::Builder::new()
            .name(format!("rumqttd-{}", addr.port()))
            .spawn(move || {
                if let Err(error) = rumqttd::Broker::new(config).start() {
                    eprintln!("rumqttd on {addr} stopped: {error}");
                }
            })
            .expect("spawn rumqttd");
        eventually("rumqttd listening", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        Rumqttd { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
