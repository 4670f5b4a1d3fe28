//! MQTT framing: where a packet ends, checked before it is buffered, and
//! the fixed-header rules a proxy must enforce itself (the codec does not
//! reject a `#` in a PUBLISH topic or a PINGREQ with a body).

use super::packet::header_len;

/// Packet types (the high nibble of the first byte).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBREL: u8 = 6;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// Why a client's bytes are not an acceptable packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: u64, max: u32 },
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// The length of the whole packet at the start of `buf` (fixed header
/// included), `None` while its header is incomplete. A packet larger than
/// `max` is refused as soon as its length is known, before its body is read.
pub fn packet_len(buf: &[u8], max: u32) -> Result<Option<usize>, FrameError> {
    let mut remaining: u64 = 0;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let total = remaining + 2 + i as u64;
            if total > u64::from(max) {
                return Err(FrameError::TooLarge { size: total, max });
            }
            return Ok(Some(total as usize));
        }
    }
    if buf.len() >= 5 {
        return Err(FrameError::Malformed("remaining length longer than 4 bytes"));
    }
    Ok(None)
}

/// Checks the fixed header of a whole packet a client sent after its
/// CONNECT. `v5` allows AUTH.
pub fn check_client_packet(packet: &[u8], v5: bool) -> Result<u8, FrameError> {
    let kind = packet[0] >> 4;
    let flags = packet[0] & 0x0f;
    let header = header_len(packet);
    let body = &packet[header..];
    match kind {
        kind::CONNECT => return Err(FrameError::Protocol("a second CONNECT")),
        0 | kind::CONNACK | kind::SUBACK | kind::UNSUBACK | kind::PINGRESP => {
            return Err(FrameError::Malformed("a packet type clients may not send"))
        }
        kind::AUTH if !v5 => return Err(FrameError::Malformed("AUTH before MQTT 5")),
        kind::PUBLISH => {
            if flags & 0b0110 == 0b0110 {
                return Err(FrameError::Malformed("PUBLISH with QoS 3"));
            }
            if flags & 0b0110 == 0 && flags & 0b1000 != 0 {
                return Err(FrameError::Malformed("DUP set on a QoS 0 PUBLISH"));
            }
            let topic = publish_topic(body).ok_or(FrameError::Malformed("PUBLISH without a topic"))?;
            if topic.iter().any(|b| matches!(b, b'#' | b'+' | 0)) {
                return Err(FrameError::Malformed("wildcard or NUL in a PUBLISH topic"));
            }
        }
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE if flags != 0b0010 => {
            return Err(FrameError::Malformed("reserved flag bits"))
        }
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => {}
        _ if flags != 0 => return Err(FrameError::Malformed("reserved flag bits")),
        kind::PINGREQ if !body.is_empty() => return Err(FrameError::Malformed("PINGREQ with a body")),
        kind::DISCONNECT if !v5 && !body.is_empty() => {
            return Err(FrameError::Malformed("DISCONNECT with a body before MQTT 5"))
        }
        _ => {}
    }
    if matches!(kind, kind::SUBSCRIBE | kind::UNSUBSCRIBE) && body.len() < 3 {
        return Err(FrameError::Malformed("SUBSCRIBE or UNSUBSCRIBE without a topic filter"));
    }
    Ok(kind)
}

/// The topic of a PUBLISH body (an empty one is an MQTT 5 topic alias).
fn publish_topic(body: &[u8]) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2..2 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(packet_len(&[0xc0], 100), Ok(None));
        assert_eq!(packet_len(&[0xc0, 0x00], 100), Ok(Some(2)));
        assert_eq!(packet_len(&[0x30, 0x80], 1000), Ok(None));
        assert_eq!(packet_len(&[0x30, 0x80, 0x01], 1000), Ok(Some(131)));
        assert_eq!(packet_len(&[0x30, 0xff, 0xff, 0xff, 0x7f], u32::MAX), Ok(Some(268_435_460)));
        assert_eq!(
            packet_len(&[0x30, 0xff, 0xff, 0xff, 0xff], u32::MAX),
            Err(FrameError::Malformed("remaining length longer than 4 bytes"))
        );
        // Refused from the header alone, before the body arrives.
        assert_eq!(packet_len(&[0x30, 0xff, 0x7f], 1024), Err(FrameError::TooLarge { size: 16_386, max: 1024 }));
    }

    #[test]
    fn client_packets() {
        let publish = |flags: u8, topic: &[u8]| {
            let mut p = vec![0x30 | flags, (2 + topic.len() + 3) as u8, 0, topic.len() as u8];
            p.extend_from_slice(topic);
            p.extend_from_slice(b"abc");
            p
        };
        assert_eq!(check_client_packet(&publish(0, b"a/b"), false), Ok(kind::PUBLISH));
        assert!(check_client_packet(&publish(0, b"a/#"), false).is_err());
        assert!(check_client_packet(&publish(0, b"a/+/c"), false).is_err());
        assert!(check_client_packet(&publish(0b0110, b"a"), false).is_err());
        assert_eq!(check_client_packet(&[0xc0, 0x00], false), Ok(kind::PINGREQ));
        assert!(check_client_packet(&[0xc0, 0x01, 0x00], false).is_err());
        assert!(check_client_packet(&[0x10, 0x00], false).is_err());
        assert!(check_client_packet(&[0x82, 0x05, 0, 1, 0, 1, b'a'], false).is_ok());
        assert!(check_client_packet(&[0x80, 0x05, 0, 1, 0, 1, b'a'], false).is_err());
        assert!(check_client_packet(&[0x62, 0x02, 0, 1], false).is_ok());
        assert!(check_client_packet(&[0x60, 0x02, 0, 1], false).is_err());
        assert!(check_client_packet(&[0xe0, 0x00], false).is_ok());
        assert!(check_client_packet(&[0xe0, 0x01, 0x04], false).is_err());
        assert!(check_client_packet(&[0xe0, 0x01, 0x04], true).is_ok());
        assert!(check_client_packet(&[0xf0, 0x00], false).is_err());
        assert!(check_client_packet(&[0xf0, 0x00], true).is_ok());
        assert!(check_client_packet(&[0x20, 0x02, 0, 0], false).is_err());
    }
}
