//! Packet boundaries in a byte stream that is forwarded as it arrives (the
//! broker's side): the scanner sees each packet's type as its header goes
//! by, without holding the body back or buffering it.

/// Tracks where packets start in a stream of bytes fed in arbitrary pieces.
#[derive(Debug, Default)]
pub struct PacketScanner {
    /// Body bytes of the current packet still to come.
    remaining: u64,
    /// A fixed header split across pieces (type byte + up to 4 length bytes).
    header: [u8; 5],
    header_len: usize,
}

/// The stream is not MQTT any more (a remaining length over 4 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desync;

impl PacketScanner {
    /// Feeds the next bytes; calls `packet(first_byte)` for every packet
    /// whose fixed header completes in them.
    pub fn feed(&mut self, mut bytes: &[u8], mut packet: impl FnMut(u8)) -> Result<(), Desync> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = (self.remaining.min(bytes.len() as u64)) as usize;
                self.remaining -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if self.header_len == 1 {
                continue;
            }
            let last = self.header[self.header_len - 1];
            if last & 0x80 != 0 {
                if self.header_len == 5 {
                    return Err(Desync);
                }
                continue;
            }
            let mut length = 0u64;
            for (i, byte) in self.header[1..self.header_len].iter().enumerate() {
                length |= u64::from(byte & 0x7f) << (7 * i);
            }
            packet(self.header[0]);
            self.remaining = length;
            self.header_len = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_packets_in_any_split() {
        // CONNACK, PUBLISH (130-byte body, two length bytes), PINGRESP.
        let mut stream = vec![0x20, 0x02, 0x00, 0x00, 0x30, 0x82, 0x01];
        stream.extend(std::iter::repeat_n(b'x', 130));
        stream.extend_from_slice(&[0xd0, 0x00]);
        for piece in [1, 2, 3, 7, 64, stream.len()] {
            let mut scanner = PacketScanner::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(piece) {
                scanner.feed(chunk, |first| seen.push(first >> 4)).unwrap();
            }
            assert_eq!(seen, [2, 3, 13], "pieces of {piece}");
        }
        let mut scanner = PacketScanner::default();
        assert_eq!(scanner.feed(&[0x30, 0xff, 0xff, 0xff, 0xff], |_| {}), Err(Desync));
    }
}
