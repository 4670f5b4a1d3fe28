//! A listener's MQTT metric series, resolved when the config is compiled.

use prometheus_client::metrics::counter::Counter;

use crate::metrics::{LocalReplyLabels, Metrics, MqttPacketLabels, MqttQosLabels};
use crate::route::ReasonCounters;

/// Packet type names, by type number.
const PACKET_NAMES: [&str; 16] = [
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];

/// Why an MQTT connection was refused or closed by edgeplane.
pub const REJECTION_REASONS: [&str; 18] = [
    "no_route",
    "no_broker",
    "unsupported_version",
    "malformed_connect",
    "connect_timeout",
    "not_connect",
    "too_large",
    "malformed",
    "protocol_error",
    "idle",
    "rate_limited",
    "client_id_denied",
    "username_denied",
    "bad_credentials",
    "publish_denied",
    "subscribe_denied",
    "topic_alias_invalid",
    "identity_denied",
];

pub struct MqttMetrics {
    packets_in: [Counter; 16],
    packets_out: [Counter; 16],
    publishes: [Counter; 3],
    rejections: ReasonCounters,
}

impl MqttMetrics {
    pub fn new(metrics: &Metrics, listener: &str) -> Self {
        let packets = |direction: &'static str| {
            PACKET_NAMES.map(|packet| {
                let labels = MqttPacketLabels { listener: listener.to_owned(), direction, packet };
                metrics.mqtt_packets.get_or_create(&labels).clone()
            })
        };
        MqttMetrics {
            packets_in: packets("in"),
            packets_out: packets("out"),
            publishes: ["0", "1", "2"].map(|qos| {
                metrics.mqtt_publishes.get_or_create(&MqttQosLabels { listener: listener.to_owned(), qos }).clone()
            }),
            rejections: ReasonCounters::new(&REJECTION_REASONS, |reason| {
                metrics
                    .mqtt_rejections
                    .get_or_create(&LocalReplyLabels { listener: listener.to_owned(), reason })
                    .clone()
            }),
        }
    }

    /// A packet from the client (`first_byte`: type and flags).
    pub fn packet_in(&self, first_byte: u8) {
        self.packets_in[usize::from(first_byte >> 4)].inc();
        if first_byte >> 4 == 3 {
            let qos = usize::from((first_byte >> 1) & 0b11).min(2);
            self.publishes[qos].inc();
        }
    }

    /// A packet from the broker to the client.
    pub fn packet_out(&self, first_byte: u8) {
        self.packets_out[usize::from(first_byte >> 4)].inc();
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejections.inc(reason);
    }
}
