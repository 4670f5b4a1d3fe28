//! A corpus of tricky MQTT packets (captured shapes from mosquitto, paho and
//! hand-made edge cases): framing, the fixed-header checks and CONNECT
//! decoding give the expected verdict and never panic. The same functions
//! are fuzzed by `fuzz/` (`cargo +nightly fuzz run mqtt_frames`).

use edgeplane::mqtt::connect::{decode, protocol_level, ConnectError};
use edgeplane::mqtt::frame::{check_client_packet, kind, packet_len, FrameError};

const MAX: u32 = 4096;

/// (name, bytes, MQTT 5?, expected kind or error class)
#[allow(clippy::type_complexity)]
const AFTER_CONNECT: &[(&str, &[u8], bool, Result<u8, &str>)] = &[
    ("v5 DISCONNECT, no reason (mosquitto's e0 00)", &[0xe0, 0x00], true, Ok(kind::DISCONNECT)),
    ("v5 DISCONNECT with will (e0 01 04)", &[0xe0, 0x01, 0x04], true, Ok(kind::DISCONNECT)),
    ("v5 DISCONNECT session taken over (e0 01 8e)", &[0xe0, 0x01, 0x8e], true, Ok(kind::DISCONNECT)),
    ("v3 DISCONNECT with a body", &[0xe0, 0x01, 0x04], false, Err("malformed")),
    ("v5 AUTH", &[0xf0, 0x02, 0x18, 0x00], true, Ok(kind::AUTH)),
    ("AUTH on 3.1.1", &[0xf0, 0x00], false, Err("malformed")),
    ("PINGREQ", &[0xc0, 0x00], false, Ok(kind::PINGREQ)),
    ("PINGREQ with a body", &[0xc0, 0x01, 0x00], false, Err("malformed")),
    ("PUBREL with flags 0 (spec: 0010)", &[0x60, 0x02, 0x00, 0x01], false, Err("malformed")),
    ("SUBSCRIBE with flags 0", &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], false, Err("malformed")),
    ("SUBSCRIBE", &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], false, Ok(kind::SUBSCRIBE)),
    ("SUBSCRIBE without a filter", &[0x82, 0x02, 0x00, 0x01], false, Err("malformed")),
    ("PUBLISH QoS 1", &[0x32, 0x07, 0x00, 0x01, b't', 0x00, 0x01, b'h', b'i'], false, Ok(kind::PUBLISH)),
    ("PUBLISH QoS 3", &[0x36, 0x07, 0x00, 0x01, b't', 0x00, 0x01, b'h', b'i'], false, Err("malformed")),
    ("PUBLISH to #", &[0x30, 0x05, 0x00, 0x01, b'#', b'h', b'i'], false, Err("malformed")),
    ("PUBLISH to a/+/b", &[0x30, 0x07, 0x00, 0x05, b'a', b'/', b'+', b'/', b'b'], false, Err("malformed")),
    ("PUBLISH, topic longer than the packet", &[0x30, 0x03, 0x00, 0x09, b'a'], false, Err("malformed")),
    (
        "v5 PUBLISH by topic alias (empty topic)",
        &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01],
        true,
        Ok(kind::PUBLISH),
    ),
    ("a second CONNECT", &[0x10, 0x00], false, Err("protocol")),
    ("CONNACK from a client", &[0x20, 0x02, 0x00, 0x00], false, Err("malformed")),
    ("reserved type 0", &[0x00, 0x00], false, Err("malformed")),
];

#[test]
fn packets_after_connect() {
    for (name, bytes, v5, expected) in AFTER_CONNECT {
        let len = packet_len(bytes, MAX)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete"));
        assert_eq!(len, bytes.len(), "{name}");
        let verdict = check_client_packet(bytes, *v5).map_err(|error| match error {
            FrameError::Malformed(_) => "malformed",
            FrameError::Protocol(_) => "protocol",
            FrameError::TooLarge { .. } => "too large",
        });
        assert_eq!(verdict, *expected, "{name}");
    }
}

#[test]
fn lengths_are_refused_before_the_body() {
    // A header claiming 1 MB: refused from its first bytes.
    assert!(matches!(packet_len(&[0x30, 0x80, 0x80, 0x40], MAX), Err(FrameError::TooLarge { .. })));
    // Five length bytes: malformed.
    assert!(matches!(packet_len(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], u32::MAX), Err(FrameError::Malformed(_))));
    // Incomplete headers wait for more.
    for partial in [&[][..], &[0x30], &[0x30, 0x80], &[0x30, 0x80, 0x80]] {
        assert_eq!(packet_len(partial, MAX), Ok(None), "{partial:?}");
    }
}

/// mosquitto_pub -V mqttv31 / mqttv311 / mqttv5 CONNECTs (client id "p", keep-alive 60).
const MQTT31: &[u8] =
    &[0x10, 0x0f, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c, 0x00, 0x01, b'p'];
const MQTT311: &[u8] = &[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'p'];
const MQTT5: &[u8] = &[0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x01, b'p'];

#[test]
fn connects_of_every_version() {
    for (packet, level) in [(MQTT31, 3), (MQTT311, 4), (MQTT5, 5)] {
        assert_eq!(protocol_level(packet), Some(level));
        let info = decode(packet, MAX).unwrap_or_else(|e| panic!("level {level}: {e}"));
        assert_eq!((info.level, info.client_id.as_str(), info.keep_alive), (level, "p", 60));
    }
}

#[test]
fn broken_connects_are_errors_not_panics() {
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Every truncation of every valid CONNECT, with its length byte fixed up.
    for packet in [MQTT31, MQTT311, MQTT5] {
        for cut in 2..packet.len() {
            let mut truncated = packet[..cut].to_vec();
            truncated[1] = (cut - 2) as u8;
            cases.push(truncated);
        }
    }
    // Reserved CONNECT flag, password without user name, bad level.
    let mut reserved = MQTT311.to_vec();
    reserved[9] |= 0x01;
    cases.push(reserved);
    let mut password_only = MQTT311.to_vec();
    password_only[9] |= 0x40;
    cases.push(password_only);
    for case in &cases {
        assert!(decode(case, MAX).is_err(), "{case:02x?} decoded");
    }
    let mut level9 = MQTT311.to_vec();
    level9[8] = 9;
    assert_eq!(decode(&level9, MAX), Err(ConnectError::UnsupportedLevel(9)));
}
