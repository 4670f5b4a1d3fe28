//! Scalar config values that are kept as written and parsed on demand.
//!
//! Durations, addresses and patterns deserialize from any string: a bad value
//! must not abort deserialization, because validation reports *every* problem
//! at once with its path. [`crate::validate`] parses each of them and the proxy's
//! compiler parses them again once validation has passed.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// A duration written with a unit: `250ms`, `5s`, `2m`, `1h`, `1m30s`, `0s`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(String);

impl Duration {
    /// A duration from a typed value; used for defaults.
    pub fn from_std(value: StdDuration) -> Self {
        Self(format_duration(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn parse(&self) -> Result<StdDuration, String> {
        parse_duration(&self.0)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<&str> for Duration {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration with units, e.g. `250ms`, `5s`, `1m30s`, `2h`. Units: ns, us, ms, s, m, h.",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
        })
    }
}

/// Parses `1h2m3s`, `1.5s`, `250ms`, `10us`, `0s`.
pub fn parse_duration(text: &str) -> Result<StdDuration, String> {
    let invalid =
        || format!("invalid duration {text:?}: expected a number with a unit (ns, us, ms, s, m, h), e.g. \"5s\"");
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(invalid)?;
        // Digits first: `.5s` and `5.s` are rejected, as the schema's pattern does.
        let digits = &rest[..number_len];
        if !digits.starts_with(|c: char| c.is_ascii_digit()) || digits.ends_with('.') {
            return Err(invalid());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    // A year is far beyond any timeout a proxy should hold; it also keeps the
    // value well inside what tokio timers accept.
    if total > 365.0 * 24.0 * 3600.0 {
        return Err(format!("duration {text:?} is too long (at most 8760h)"));
    }
    Ok(StdDuration::from_secs_f64(total))
}

fn format_duration(value: StdDuration) -> String {
    let millis = value.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// A byte rate per second: `"100000"`, `"64KB"`, `"1.5MB"` (powers of 1000) or
/// `"512KiB"`, `"2MiB"` (powers of 1024); a plain integer is bytes.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ByteRate(String);

impl ByteRate {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Bytes per second; zero is refused (it would stop the traffic outright).
    pub fn parse(&self) -> Result<u64, String> {
        let text = self.0.trim();
        let invalid = || format!("invalid byte rate {text:?}: use e.g. 100000, 64KB, 512KiB, 2MiB");
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| invalid())?;
        let scale: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            _ => return Err(invalid()),
        };
        let bytes = number * scale;
        if !bytes.is_finite() || !(1.0..=1e15).contains(&bytes) {
            return Err(format!("byte rate {text:?} must be between 1 B/s and 1 PB/s"));
        }
        Ok(bytes as u64)
    }
}

impl fmt::Debug for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<&str> for ByteRate {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        match Written::deserialize(deserializer) {
            Ok(Written::Number(n)) => Ok(ByteRate(n.to_string())),
            Ok(Written::Text(text)) => Ok(ByteRate(text)),
            Err(_) => {
                Err(serde::de::Error::custom("expected a byte rate: a number of bytes or a string like \"64KB\""))
            }
        }
    }
}

impl JsonSchema for ByteRate {
    fn schema_name() -> Cow<'static, str> {
        "ByteRate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "description": "Bytes per second: an integer, or a number with KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024)."
        })
    }
}

/// A socket address to bind: `IP:PORT`, e.g. `0.0.0.0:8080` or `[::1]:15000`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BindAddress(String);

impl BindAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn parse(&self) -> Result<SocketAddr, String> {
        self.0.parse().map_err(|_| format!("invalid address {:?}: expected IP:PORT, e.g. \"0.0.0.0:8080\"", self.0))
    }
}

impl fmt::Debug for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<&str> for BindAddress {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl JsonSchema for BindAddress {
    fn schema_name() -> Cow<'static, str> {
        "BindAddress".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "IP:PORT to listen on, e.g. `0.0.0.0:8080`, `127.0.0.1:15000`, `[::]:8443`.",
        })
    }
}

/// An upstream address: `IP:PORT` or `HOSTNAME:PORT`. Host names are resolved
/// when the config is compiled (at start and at every reload), like nginx.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpstreamAddress(String);

/// An upstream address split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedUpstream {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl UpstreamAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn parse(&self) -> Result<ParsedUpstream, String> {
        if let Ok(addr) = self.0.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("invalid address {:?}: port 0", self.0));
            }
            return Ok(ParsedUpstream::Ip(addr));
        }
        let invalid = |why: &str| format!("invalid address {:?}: {why} (expected IP:PORT or HOSTNAME:PORT)", self.0);
        let (host, port) = self.0.rsplit_once(':').ok_or_else(|| invalid("missing port"))?;
        let port: u16 = port.parse().map_err(|_| invalid("bad port"))?;
        if port == 0 {
            return Err(invalid("port 0"));
        }
        if !is_hostname(host) {
            return Err(invalid("bad host name"));
        }
        Ok(ParsedUpstream::Name { host: host.to_owned(), port })
    }
}

impl fmt::Debug for UpstreamAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<&str> for UpstreamAddress {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl JsonSchema for UpstreamAddress {
    fn schema_name() -> Cow<'static, str> {
        "UpstreamAddress".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "IP:PORT or HOSTNAME:PORT of an upstream endpoint; names are resolved when the config is loaded.",
        })
    }
}

/// RFC 1123 host name (letters, digits, hyphens, dots); a trailing dot is allowed.
pub fn is_hostname(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An RFC 9110 token: header names and methods.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A header value that can be sent as is: visible ASCII, spaces and tabs, and
/// no leading or trailing whitespace (which HTTP would strip).
pub fn is_header_value(text: &str) -> bool {
    text.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
        && !text.starts_with([' ', '\t'])
        && !text.ends_with([' ', '\t'])
}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or a bare address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: std::net::IpAddr = address.trim().parse().map_err(|_| format!("invalid CIDR {text:?}"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().ok().filter(|p| *p <= max),
            None => Some(max),
        }
        .ok_or_else(|| format!("invalid CIDR {text:?}: prefix must be 0 to {max}"))?;
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), StdDuration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), StdDuration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), StdDuration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), StdDuration::from_millis(1500));
        assert_eq!(parse_duration("0s").unwrap(), StdDuration::ZERO);
        assert_eq!(parse_duration("10us").unwrap(), StdDuration::from_micros(10));
        for bad in ["", "5", "s", "5x", "-1s", "1s5", "1..2s", "ms5", "99999h", ".5s", "5.s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(Duration::from_std(StdDuration::from_millis(1500)).as_str(), "1500ms");
        assert_eq!(Duration::from_std(StdDuration::from_secs(30)).as_str(), "30s");
    }

    #[test]
    fn upstream_addresses() {
        let ip = UpstreamAddress::from("127.0.0.1:80").parse().unwrap();
        assert_eq!(ip, ParsedUpstream::Ip("127.0.0.1:80".parse().unwrap()));
        let v6 = UpstreamAddress::from("[::1]:80").parse().unwrap();
        assert_eq!(v6, ParsedUpstream::Ip("[::1]:80".parse().unwrap()));
        let name = UpstreamAddress::from("db.local:5432").parse().unwrap();
        assert_eq!(name, ParsedUpstream::Name { host: "db.local".into(), port: 5432 });
        for bad in ["127.0.0.1", "host:", "host:99999", "-bad-:80", "a b:80", ":80", "h:0", "127.0.0.1:0"] {
            assert!(UpstreamAddress::from(bad).parse().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_and_values() {
        assert!(is_token("x-canary"));
        assert!(!is_token("x canary"));
        assert!(!is_token(""));
        assert!(is_header_value("edgeplane/1 (x)"));
        assert!(!is_header_value("a\r\nb"));
        assert!(!is_header_value(" padded"));
    }
}
