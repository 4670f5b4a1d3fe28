//! Finding the end of a chunked body without decoding it.
//!
//! The fast path forwards chunked bodies byte for byte; it only needs to know
//! where a body ends. The scanner is strict where leniency would let two
//! parsers disagree about that end (request smuggling): sizes are hex digits
//! with overflow checks, every line ends in CRLF (a bare LF is an error), and
//! trailers are bounded.

/// Longest chunk-size line (digits and extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    InvalidSize,
    SizeOverflow,
    LineTooLong,
    MissingCrlf,
    TrailersTooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size digits: whitespace and `;` extensions up to CR.
    Extension {
        size: u64,
    },
    /// Saw the CR ending a size line; expecting LF.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data.
    Data {
        remaining: u64,
    },
    /// After chunk data; expecting CR then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (after the last chunk): CR means the end.
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw CR at the end of a trailer field line.
    TrailerLf,
    /// Saw CR of the final empty line.
    EndLf,
    Done,
}

#[derive(Clone, Debug)]
pub struct ChunkedScanner {
    state: State,
    /// Bytes in the current size line's extensions.
    line: usize,
    /// Bytes of trailers so far.
    trailers: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        ChunkedScanner { state: State::Size { value: 0, digits: 0 }, line: 0, trailers: 0 }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `bytes`; returns how many of them belong to the body: all of
    /// them, or fewer when the body ends inside `bytes`.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < bytes.len() {
            if self.state == State::Done {
                return Ok(at);
            }
            if let State::Data { remaining } = self.state {
                let take = remaining.min((bytes.len() - at) as u64);
                at += take as usize;
                let remaining = remaining - take;
                self.state = if remaining == 0 { State::DataCr } else { State::Data { remaining } };
                continue;
            }
            let byte = bytes[at];
            at += 1;
            self.state = self.step(byte)?;
        }
        Ok(at)
    }

    /// Chunk data bytes that come next before any framing (0 when the
    /// scanner is not inside a chunk's data).
    pub fn data_ahead(&self) -> u64 {
        match self.state {
            State::Data { remaining } => remaining,
            _ => 0,
        }
    }

    /// Marks `n` data bytes (at most [`Self::data_ahead`]) as passed on.
    pub fn consume_data(&mut self, n: u64) {
        if let State::Data { remaining } = self.state {
            let remaining = remaining - n.min(remaining);
            self.state = if remaining == 0 { State::DataCr } else { State::Data { remaining } };
        }
    }

    /// Whether the scanner is in the trailer section (after the last chunk).
    pub fn in_trailers(&self) -> bool {
        matches!(self.state, State::TrailerStart | State::TrailerLine | State::TrailerLf | State::EndLf)
    }

    /// Scans framing bytes (sizes, line ends, trailers) and stops where chunk
    /// data starts, where the trailer section starts, or where the body
    /// ends; returns how many bytes it consumed. So every byte consumed by a
    /// call that began [`Self::in_trailers`] belongs to the trailer section.
    pub fn scan_framing(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        let trailers_before = self.in_trailers();
        while at < bytes.len() && self.state != State::Done && self.data_ahead() == 0 {
            self.state = self.step(bytes[at])?;
            at += 1;
            if !trailers_before && self.in_trailers() {
                break;
            }
        }
        Ok(at)
    }

    fn step(&mut self, byte: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::Size { value, digits } => match (hex(byte), byte) {
                (Some(_), _) if digits >= 15 => return Err(ChunkError::SizeOverflow),
                (Some(digit), _) => State::Size { value: value << 4 | u64::from(digit), digits: digits + 1 },
                (None, _) if digits == 0 => return Err(ChunkError::InvalidSize),
                (None, b'\r') => State::SizeLf { size: value },
                (None, b';' | b' ' | b'\t') => {
                    self.line = 0;
                    State::Extension { size: value }
                }
                (None, _) => return Err(ChunkError::InvalidSize),
            },
            State::Extension { size } => match byte {
                b'\r' => State::SizeLf { size },
                b'\n' | 0 => return Err(ChunkError::MissingCrlf),
                _ => {
                    self.line += 1;
                    if self.line > MAX_SIZE_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    State::Extension { size }
                }
            },
            State::SizeLf { size } => match byte {
                b'\n' if size == 0 => State::TrailerStart,
                b'\n' => State::Data { remaining: size },
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::DataLf => match byte {
                b'\n' => State::Size { value: 0, digits: 0 },
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::TrailerStart => match byte {
                b'\r' => State::EndLf,
                b'\n' => return Err(ChunkError::MissingCrlf),
                _ => self.trailer_byte()?,
            },
            State::TrailerLine => match byte {
                b'\r' => State::TrailerLf,
                b'\n' => return Err(ChunkError::MissingCrlf),
                _ => self.trailer_byte()?,
            },
            State::TrailerLf => match byte {
                b'\n' => State::TrailerStart,
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::EndLf => match byte {
                b'\n' => State::Done,
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::Data { .. } | State::Done => unreachable!("data and the end are handled by the callers"),
        })
    }

    fn trailer_byte(&mut self) -> Result<State, ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(State::TrailerLine)
    }
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8]) -> Result<Option<usize>, ChunkError> {
        let mut scanner = ChunkedScanner::new();
        let n = scanner.scan(body)?;
        Ok(scanner.is_done().then_some(n))
    }

    #[test]
    fn finds_the_end() {
        let body = b"5\r\nhello\r\n0\r\n\r\nNEXT";
        assert_eq!(scan_all(body), Ok(Some(body.len() - 4)));
        let with_ext = b"5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(scan_all(with_ext), Ok(Some(with_ext.len())));
        assert_eq!(scan_all(b"0\r\n\r\n"), Ok(Some(5)));
    }

    #[test]
    fn works_across_any_split() {
        let body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\ntrailer: v\r\n\r\n";
        for split in 0..body.len() {
            let mut scanner = ChunkedScanner::new();
            let first = scanner.scan(&body[..split]).unwrap();
            assert_eq!(first, split);
            assert!(!scanner.is_done());
            let second = scanner.scan(&body[split..]).unwrap();
            assert_eq!(first + second, body.len());
            assert!(scanner.is_done(), "split at {split}");
        }
    }

    #[test]
    fn decodes_data_apart_from_framing() {
        let body = b"3\r\nabc\r\n5;x=y\r\nhello\r\n0\r\nx-t: 1\r\n\r\n";
        let mut scanner = ChunkedScanner::new();
        let (mut at, mut data, mut trailers) = (0, Vec::new(), Vec::new());
        while !scanner.is_done() {
            let ahead = scanner.data_ahead() as usize;
            if ahead > 0 {
                // One byte at a time, to cross every boundary.
                data.push(body[at]);
                scanner.consume_data(1);
                at += 1;
            } else {
                let trailing = scanner.in_trailers();
                let n = scanner.scan_framing(&body[at..]).unwrap();
                if trailing {
                    trailers.extend_from_slice(&body[at..at + n]);
                }
                at += n;
            }
        }
        assert_eq!(at, body.len());
        assert_eq!(data, b"abchello");
        assert_eq!(trailers, b"x-t: 1\r\n\r\n");
    }

    #[test]
    fn incomplete_is_not_done() {
        assert_eq!(scan_all(b"5\r\nhel"), Ok(None));
        assert_eq!(scan_all(b"0\r\n"), Ok(None));
        assert_eq!(scan_all(b"0\r\nx: y\r\n"), Ok(None));
    }

    #[test]
    fn rejects_what_parsers_could_disagree_on() {
        assert_eq!(scan_all(b"5\nhello\r\n0\r\n\r\n"), Err(ChunkError::InvalidSize));
        assert_eq!(scan_all(b"5\r\nhello\n0\r\n\r\n"), Err(ChunkError::MissingCrlf));
        assert_eq!(scan_all(b"5\r\nhelloX\r\n"), Err(ChunkError::MissingCrlf));
        assert_eq!(scan_all(b"\r\n"), Err(ChunkError::InvalidSize));
        assert_eq!(scan_all(b"-5\r\n"), Err(ChunkError::InvalidSize));
        assert_eq!(scan_all(b"0x5\r\n"), Err(ChunkError::InvalidSize));
        assert_eq!(scan_all(b"fffffffffffffffff\r\n"), Err(ChunkError::SizeOverflow));
        assert_eq!(scan_all(b"0\r\n\n"), Err(ChunkError::MissingCrlf));
        assert_eq!(scan_all(b"0\r\nx: y\n\r\n"), Err(ChunkError::MissingCrlf));
        let long_ext = [b"1;".as_slice(), &[b'a'; MAX_SIZE_LINE + 1]].concat();
        assert_eq!(scan_all(&long_ext), Err(ChunkError::LineTooLong));
    }
}
