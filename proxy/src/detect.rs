//! Protocol detection from the first bytes a client sends.
//!
//! Reads (not peeks: a peek that returns too few bytes cannot wait for more
//! without spinning) until the bytes decide, the client stops, or the timeout
//! passes. Biased towards availability: anything that is not clearly HTTP is
//! relayed as opaque TCP, and a client that sends nothing (a server-first
//! protocol such as MySQL or SMTP) is treated as TCP when the timeout passes.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Beyond this many bytes without a complete HTTP/1 request line, the
/// stream is not HTTP (request lines are short in practice).
const MAX_DETECT_BYTES: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// An MQTT CONNECT (3.1, 3.1.1 or 5).
    Mqtt,
    Tcp,
    /// The client closed before sending anything.
    Closed,
}

/// Reads from `stream` into `buffer` until the protocol is known.
pub async fn detect<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
    timeout: Duration,
) -> io::Result<Detected> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buffer.capacity() - buffer.len() < 512 {
            buffer.reserve(2048);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buffer)).await {
            Err(_elapsed) => return Ok(Detected::Tcp),
            Ok(Ok(0)) => {
                return Ok(if buffer.is_empty() { Detected::Closed } else { classify(buffer).unwrap_or(Detected::Tcp) })
            }
            Ok(Ok(_)) => {
                if let Some(decided) = classify(buffer) {
                    return Ok(decided);
                }
            }
            Ok(Err(error)) => return Err(error),
        }
    }
}

/// `None`: the bytes so far could still be either.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    if bytes.first() == Some(&0x10) {
        return classify_mqtt(bytes);
    }
    if bytes.len() >= H2_PREFACE.len() && bytes.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    let maybe_h2 = H2_PREFACE.starts_with(&bytes[..bytes.len().min(H2_PREFACE.len())]);
    // With no header slots, httparse stops with `TooManyHeaders` right after
    // a valid request line, which is all detection needs to know.
    let mut no_headers = [httparse::EMPTY_HEADER; 0];
    let mut request = httparse::Request::new(&mut no_headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => Some(Detected::Http1),
        Ok(httparse::Status::Partial) if request.version.is_some() => Some(Detected::Http1),
        Ok(httparse::Status::Partial) if bytes.len() < MAX_DETECT_BYTES => None,
        Ok(httparse::Status::Partial) => Some(Detected::Tcp),
        Err(_) if maybe_h2 => None,
        Err(_) => Some(Detected::Tcp),
    }
}

/// A CONNECT: type 1 with no flags, a remaining length, then the protocol
/// name `MQTT` (3.1.1, 5) or `MQIsdp` (3.1). Nothing else starts with 0x10
/// that we would rather relay as TCP.
fn classify_mqtt(bytes: &[u8]) -> Option<Detected> {
    let length_bytes = bytes[1..].iter().take(4).position(|b| b & 0x80 == 0);
    let Some(last) = length_bytes else {
        return if bytes.len() >= 5 { Some(Detected::Tcp) } else { None };
    };
    let name = &bytes[2 + last..];
    const NAMES: [&[u8]; 2] = [b"\x00\x04MQTT", b"\x00\x06MQIsdp"];
    if NAMES.iter().any(|expected| name.starts_with(expected)) {
        Some(Detected::Mqtt)
    } else if NAMES.iter().any(|expected| expected.starts_with(name)) {
        None
    } else {
        Some(Detected::Tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST /x HTTP/1.0\r\nHo"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /very/long/pa"), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Detected::Tcp));
        assert_eq!(classify(b"\x10\x1a\x00\x04MQTT"), Some(Detected::Mqtt));
        assert_eq!(classify(b"\x10\x1a\x00\x06MQIsdp\x03"), Some(Detected::Mqtt));
        assert_eq!(classify(b"\x10\x80\x01\x00\x04MQ"), None);
        assert_eq!(classify(b"\x10"), None);
        assert_eq!(classify(b"\x10\x1a\x00\x05MQTTX"), Some(Detected::Tcp));
        assert_eq!(classify(b"\x10\xff\xff\xff\xff\x00"), Some(Detected::Tcp));
        assert_eq!(classify(b"hello world\r\n"), Some(Detected::Tcp));
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(Detected::Tcp));
        let long = vec![b'A'; MAX_DETECT_BYTES + 1];
        assert_eq!(classify(&long), Some(Detected::Tcp));
    }
}
