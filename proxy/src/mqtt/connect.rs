//! The CONNECT, decoded with rmqtt-codec: what routing and policy need.

use bytes::BytesMut;
use rmqtt_codec::{v3, v5};
use tokio_util::codec::Decoder;

/// What a CONNECT says about the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectInfo {
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub level: u8,
    pub client_id: String,
    pub username: Option<String>,
    /// Only kept until the proxy has checked it (when it checks credentials).
    pub password: Option<bytes::Bytes>,
    /// Seconds; 0: the client promises nothing.
    pub keep_alive: u16,
    pub has_will: bool,
    pub clean_start: bool,
}

impl ConnectInfo {
    pub fn is_v5(&self) -> bool {
        self.level == 5
    }

    pub fn protocol_name(&self) -> &'static str {
        match self.level {
            3 => "3.1",
            4 => "3.1.1",
            _ => "5",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
    #[error("malformed CONNECT: {0}")]
    Malformed(String),
}

/// The protocol level of a CONNECT packet (whole, fixed header included),
/// read directly so a refusal can be written in the client's version even
/// when the rest does not decode.
pub fn protocol_level(packet: &[u8]) -> Option<u8> {
    let header = 1 + packet.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let name_len = usize::from(u16::from_be_bytes([*packet.get(header)?, *packet.get(header + 1)?]));
    packet.get(header + 2 + name_len).copied()
}

/// Decodes a whole CONNECT packet.
pub fn decode(packet: &[u8], max_packet_size: u32) -> Result<ConnectInfo, ConnectError> {
    let level = protocol_level(packet).ok_or_else(|| ConnectError::Malformed("truncated variable header".into()))?;
    let mut bytes = BytesMut::from(packet);
    let malformed = |error: &dyn std::fmt::Display| ConnectError::Malformed(error.to_string());
    match level {
        3 | 4 => match v3::Codec::new(max_packet_size).decode(&mut bytes).map_err(|e| malformed(&e))? {
            Some((v3::Packet::Connect(connect), _)) => Ok(ConnectInfo {
                level,
                client_id: connect.client_id.to_string(),
                username: connect.username.as_ref().map(ToString::to_string),
                password: connect.password.clone(),
                keep_alive: connect.keep_alive,
                has_will: connect.last_will.is_some(),
                clean_start: connect.clean_session,
            }),
            _ => Err(ConnectError::Malformed("not a CONNECT".into())),
        },
        5 => match v5::Codec::new(max_packet_size, max_packet_size).decode(&mut bytes).map_err(|e| malformed(&e))? {
            Some((v5::Packet::Connect(connect), _)) => Ok(ConnectInfo {
                level,
                client_id: connect.client_id.to_string(),
                username: connect.username.as_ref().map(ToString::to_string),
                password: connect.password.clone(),
                keep_alive: connect.keep_alive,
                has_will: connect.last_will.is_some(),
                clean_start: connect.clean_start,
            }),
            _ => Err(ConnectError::Malformed("not a CONNECT".into())),
        },
        other => Err(ConnectError::UnsupportedLevel(other)),
    }
}

/// CONNACK refusals, in the client's protocol version.
pub mod refusal {
    /// v3: 0x01 unacceptable protocol version; v5: 0x84.
    pub const UNSUPPORTED_VERSION: (u8, u8) = (0x01, 0x84);
    /// v3: 0x03 server unavailable; v5: 0x88.
    pub const SERVER_UNAVAILABLE: (u8, u8) = (0x03, 0x88);
    /// v3: 0x04 bad user name or password; v5: 0x86.
    pub const BAD_CREDENTIALS: (u8, u8) = (0x04, 0x86);
    /// v3: 0x05 not authorized; v5: 0x87.
    pub const NOT_AUTHORIZED: (u8, u8) = (0x05, 0x87);
    /// v3: 0x02 identifier rejected (the closest v3 has); v5: 0x81 malformed packet.
    pub const MALFORMED: (u8, u8) = (0x02, 0x81);

    /// A CONNACK refusing the connection with `(v3 code, v5 reason)`.
    pub fn connack(level: u8, codes: (u8, u8)) -> Vec<u8> {
        if level == 5 {
            vec![0x20, 0x03, 0x00, codes.1, 0x00]
        } else {
            vec![0x20, 0x02, 0x00, codes.0]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT as mosquitto_pub sends it.
    fn connect(level: u8, client_id: &str, username: Option<&str>) -> Vec<u8> {
        let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
        let mut body = vec![0x00, name.len() as u8];
        body.extend_from_slice(name);
        body.push(level);
        body.push(0x02 | if username.is_some() { 0x80 } else { 0 });
        body.extend_from_slice(&[0x00, 0x3c]);
        if level == 5 {
            body.push(0x00);
        }
        body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        body.extend_from_slice(client_id.as_bytes());
        if let Some(name) = username {
            body.extend_from_slice(&(name.len() as u16).to_be_bytes());
            body.extend_from_slice(name.as_bytes());
        }
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend_from_slice(&body);
        packet
    }

    #[test]
    fn decodes_every_version() {
        for level in [3, 4, 5] {
            let info = decode(&connect(level, "meter-7", Some("alice")), 1024).unwrap();
            assert_eq!(info.level, level);
            assert_eq!(info.client_id, "meter-7");
            assert_eq!(info.username.as_deref(), Some("alice"));
            assert_eq!(info.keep_alive, 60);
            assert!(info.clean_start && !info.has_will);
        }
        assert_eq!(decode(&connect(4, "x", None), 1024).unwrap().username, None);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let mut odd = connect(4, "x", None);
        odd[8] = 9;
        assert_eq!(decode(&odd, 1024), Err(ConnectError::UnsupportedLevel(9)));
        assert!(decode(&[0x10, 0x02, 0x00], 1024).is_err());
        let mut reserved = connect(4, "x", None);
        reserved[9] |= 0x01;
        assert!(decode(&reserved, 1024).is_err(), "reserved CONNECT flag accepted");
        assert_eq!(refusal::connack(4, refusal::SERVER_UNAVAILABLE), [0x20, 0x02, 0x00, 0x03]);
        assert_eq!(refusal::connack(5, refusal::SERVER_UNAVAILABLE), [0x20, 0x03, 0x00, 0x88, 0x00]);
    }
}
