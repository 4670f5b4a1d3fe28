//! The parts of PUBLISH, SUBSCRIBE, SUBACK and CONNACK packets that topic
//! ACLs need, read in place from whole packets (fixed header included),
//! and the few packets the proxy writes itself.

use std::ops::Range;

use super::frame::FrameError;

/// MQTT 5 property identifiers used here.
mod property {
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
}

const TRUNCATED: FrameError = FrameError::Malformed("packet shorter than its fields");

/// Length of the fixed header of a whole packet.
pub fn header_len(packet: &[u8]) -> usize {
    1 + packet.iter().skip(1).take(4).position(|byte| byte & 0x80 == 0).map_or(4, |i| i + 1)
}

/// A variable byte integer at the start of `bytes`: (value, its length).
fn varint(bytes: &[u8]) -> Result<(usize, usize), FrameError> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(FrameError::Malformed("bad variable byte integer"))
}

fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, FrameError> {
    Ok(u16::from_be_bytes([*bytes.get(at).ok_or(TRUNCATED)?, *bytes.get(at + 1).ok_or(TRUNCATED)?]))
}

/// The properties block at `at` (its length prefix included): its range.
fn properties_at(body: &[u8], at: usize) -> Result<Range<usize>, FrameError> {
    let (len, prefix) = varint(body.get(at..).ok_or(TRUNCATED)?)?;
    let end = at + prefix + len;
    if end > body.len() {
        return Err(TRUNCATED);
    }
    Ok(at..end)
}

/// Where property `wanted`'s value is in a properties block (length prefix
/// included), walking every property so that a malformed block is caught.
fn find_property(block: &[u8], wanted: u8) -> Result<Option<Range<usize>>, FrameError> {
    let (_, prefix) = varint(block)?;
    let mut at = prefix;
    let mut found = None;
    while at < block.len() {
        let id = block[at];
        at += 1;
        let size = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0b => varint(block.get(at..).ok_or(TRUNCATED)?)?.1,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => 2 + usize::from(u16_at(block, at)?),
            0x26 => {
                let key = 2 + usize::from(u16_at(block, at)?);
                key + 2 + usize::from(u16_at(block, at + key)?)
            }
            _ => return Err(FrameError::Malformed("unknown property")),
        };
        if at + size > block.len() {
            return Err(TRUNCATED);
        }
        if id == wanted && found.is_none() {
            found = Some(at..at + size);
        }
        at += size;
    }
    Ok(found)
}

/// What a PUBLISH says about where it goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub qos: u8,
    /// Empty when an MQTT 5 topic alias stands for it.
    pub topic: &'a [u8],
    pub packet_id: Option<u16>,
    pub topic_alias: Option<u16>,
}

pub fn publish(packet: &[u8], v5: bool) -> Result<Publish<'_>, FrameError> {
    let qos = (packet[0] >> 1) & 0b11;
    let body = &packet[header_len(packet)..];
    let topic_len = usize::from(u16_at(body, 0)?);
    let topic = body.get(2..2 + topic_len).ok_or(TRUNCATED)?;
    let mut at = 2 + topic_len;
    let packet_id = if qos > 0 {
        at += 2;
        Some(u16_at(body, at - 2)?)
    } else {
        None
    };
    let topic_alias = if v5 {
        let block = properties_at(body, at)?;
        match find_property(&body[block.clone()], property::TOPIC_ALIAS)? {
            Some(value) => Some(u16_at(&body[block], value.start)?),
            None => None,
        }
    } else {
        None
    };
    Ok(Publish { qos, topic, packet_id, topic_alias })
}

/// A SUBSCRIBE's packet id, properties and topic filters.
#[derive(Debug)]
pub struct Subscribe<'a> {
    pub packet_id: u16,
    /// The properties block (length prefix included); empty before MQTT 5.
    properties: &'a [u8],
    /// Each entry: filter length, filter, options byte.
    entries: Vec<&'a [u8]>,
}

impl<'a> Subscribe<'a> {
    pub fn parse(packet: &'a [u8], v5: bool) -> Result<Self, FrameError> {
        let body = &packet[header_len(packet)..];
        let packet_id = u16_at(body, 0)?;
        let mut at = 2;
        let properties = if v5 {
            let block = properties_at(body, at)?;
            at = block.end;
            &body[block]
        } else {
            &[]
        };
        let mut entries = Vec::new();
        while at < body.len() {
            let len = usize::from(u16_at(body, at)?);
            let end = at + 2 + len + 1;
            entries.push(body.get(at..end).ok_or(TRUNCATED)?);
            at = end;
        }
        if entries.is_empty() {
            return Err(FrameError::Protocol("SUBSCRIBE without a topic filter"));
        }
        Ok(Subscribe { packet_id, properties, entries })
    }

    /// The topic filters, in order.
    pub fn filters(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.entries.iter().map(|entry| &entry[2..entry.len() - 1])
    }

    pub fn filter_count(&self) -> usize {
        self.entries.len()
    }

    /// The same SUBSCRIBE with only the filters at the `keep` positions.
    pub fn keeping(&self, keep: &[bool]) -> Vec<u8> {
        let mut body = self.packet_id.to_be_bytes().to_vec();
        body.extend_from_slice(self.properties);
        for (entry, _) in self.entries.iter().zip(keep).filter(|(_, keep)| **keep) {
            body.extend_from_slice(entry);
        }
        with_header(0x82, &body)
    }
}

fn with_header(first: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![first];
    push_varint(&mut packet, body.len());
    packet.extend_from_slice(body);
    packet
}

/// The packet id of a SUBACK from the broker.
pub fn suback_packet_id(packet: &[u8]) -> Result<u16, FrameError> {
    u16_at(&packet[header_len(packet)..], 0)
}

/// The broker's SUBACK for the filters it was sent, with `refused` put back
/// at the positions the proxy refused (`None` positions take the broker's
/// codes in order).
pub fn merge_suback(packet: &[u8], v5: bool, positions: &[Option<u8>]) -> Result<Vec<u8>, FrameError> {
    let body = &packet[header_len(packet)..];
    let codes_at = if v5 { properties_at(body, 2)?.end } else { 2 };
    let mut broker_codes = body.get(codes_at..).ok_or(TRUNCATED)?.iter();
    let mut merged = body[..codes_at].to_vec();
    for position in positions {
        let code = match position {
            Some(refused) => *refused,
            None => *broker_codes.next().ok_or(FrameError::Malformed("SUBACK with fewer codes than filters"))?,
        };
        merged.push(code);
    }
    Ok(with_header(0x90, &merged))
}

/// A SUBACK answering every filter with `code` (the proxy refused them all).
pub fn suback(packet_id: u16, v5: bool, codes: usize, code: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    body.resize(body.len() + codes, code);
    with_header(0x90, &body)
}

/// An MQTT 5 PUBACK (QoS 1) or PUBREC (QoS 2) with a failure reason, which
/// ends the flow for that packet id.
pub fn publish_refusal(qos: u8, packet_id: u16, reason: u8) -> Vec<u8> {
    let first = if qos == 2 { 0x50 } else { 0x40 };
    let id = packet_id.to_be_bytes();
    vec![first, 0x03, id[0], id[1], reason]
}

/// Lowers an MQTT 5 CONNACK's Topic Alias Maximum to `maximum`, in place
/// (the value keeps its size). An absent property already means 0.
pub fn cap_topic_alias_maximum(packet: &mut [u8], maximum: u16) -> Result<(), FrameError> {
    let body_at = header_len(packet);
    let body = &mut packet[body_at..];
    let block = properties_at(body, 2)?;
    if let Some(value) = find_property(&body[block.clone()], property::TOPIC_ALIAS_MAXIMUM)? {
        let at = block.start + value.start;
        let current = u16_at(body, at)?;
        if current > maximum {
            body[at..at + 2].copy_from_slice(&maximum.to_be_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes() {
        // v5 QoS 1, topic "a/b", id 7, properties: topic alias 3, content type "t".
        let packet = [0x32, 0x0d, 0, 3, b'a', b'/', b'b', 0, 7, 0x07, 0x23, 0, 3, 0x03, 0, 1, b't'];
        let mut packet = packet.to_vec();
        packet[1] = (packet.len() - 2) as u8;
        assert_eq!(
            publish(&packet, true).unwrap(),
            Publish { qos: 1, topic: b"a/b", packet_id: Some(7), topic_alias: Some(3) }
        );
        // Alias only, QoS 0.
        assert_eq!(
            publish(&[0x30, 0x06, 0, 0, 0x03, 0x23, 0, 3], true).unwrap(),
            Publish { qos: 0, topic: b"", packet_id: None, topic_alias: Some(3) }
        );
        // v3: payload right after the topic.
        assert_eq!(publish(&[0x30, 0x05, 0, 1, b'x', b'h', b'i'], false).unwrap().topic, b"x");
        // Properties longer than the packet, or an unknown property.
        assert!(publish(&[0x30, 0x05, 0, 1, b'x', 0x09, 0x23], true).is_err());
        assert!(publish(&[0x30, 0x05, 0, 1, b'x', 0x01, 0x7f], true).is_err());
    }

    #[test]
    fn subscriptions_are_rewritten() {
        // v5 SUBSCRIBE id 9, no properties, filters "a" (QoS 1) and "b/#" (QoS 0).
        let packet = [0x82, 13, 0, 9, 0, 0, 1, b'a', 1, 0, 3, b'b', b'/', b'#', 0];
        let subscribe = Subscribe::parse(&packet, true).unwrap();
        assert_eq!(subscribe.packet_id, 9);
        assert_eq!(subscribe.filters().collect::<Vec<_>>(), [&b"a"[..], b"b/#"]);
        assert_eq!(subscribe.keeping(&[false, true]), [0x82, 9, 0, 9, 0, 0, 3, b'b', b'/', b'#', 0]);
        // The broker granted QoS 0 to "b/#"; "a" was refused with 0x87.
        let broker = [0x90, 0x04, 0, 9, 0, 0x00];
        assert_eq!(merge_suback(&broker, true, &[Some(0x87), None]).unwrap(), [0x90, 0x05, 0, 9, 0, 0x87, 0x00]);
        assert!(merge_suback(&broker, true, &[None, None]).is_err());
        // Found by fuzzing: a SUBACK too short for its packet id.
        assert!(merge_suback(&[0x90, 0x00], false, &[Some(0x80)]).is_err());
        assert_eq!(suback(9, false, 2, 0x80), [0x90, 0x04, 0, 9, 0x80, 0x80]);
        assert!(Subscribe::parse(&[0x82, 0x02, 0, 9], false).is_err());
    }

    #[test]
    fn connack_alias_maximum_is_capped() {
        // v5 CONNACK, properties: receive maximum 20, topic alias maximum 100.
        let mut connack = vec![0x20, 0x09, 0x00, 0x00, 0x06, 0x21, 0, 20, 0x22, 0, 100];
        cap_topic_alias_maximum(&mut connack, 32).unwrap();
        assert_eq!(&connack[8..], [0x22, 0, 32]);
        cap_topic_alias_maximum(&mut connack, 64).unwrap();
        assert_eq!(&connack[8..], [0x22, 0, 32]);
        let mut bare = vec![0x20, 0x03, 0x00, 0x00, 0x00];
        cap_topic_alias_maximum(&mut bare, 32).unwrap();
        assert_eq!(bare, [0x20, 0x03, 0x00, 0x00, 0x00]);
    }
}
