//! Access log: one line per HTTP request, TCP or MQTT connection, on standard output.
//!
//! Lines go through a bounded queue to a writer thread, so a slow stdout
//! never blocks a worker (lines are dropped instead, like Envoy's buffered
//! access log under pressure).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use config_model::LogFormat;
use serde::Serialize;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines queued for the writer thread before new lines are dropped.
const ACCESS_LOG_QUEUE: usize = 16 * 1024;

pub struct AccessLogger {
    writer: OnceLock<(NonBlocking, WorkerGuard)>,
}

#[derive(Serialize)]
pub struct HttpRecord<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub cluster: &'a str,
    pub client: SocketAddr,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    /// Why the proxy answered itself, when it did.
    pub local_reply: Option<&'a str>,
    pub duration_ms: f64,
    /// The TLS server name the client asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    /// The identity of the verified client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<&'a str>,
}

#[derive(Serialize)]
pub struct TcpRecord<'a> {
    pub listener: &'a str,
    pub cluster: &'a str,
    pub client: SocketAddr,
    pub upstream: Option<SocketAddr>,
    pub bytes_rx: u64,
    pub bytes_tx: u64,
    pub duration_ms: f64,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<&'a str>,
}

/// One MQTT connection (or a CONNECT refused by the proxy: no upstream).
#[derive(Serialize)]
pub struct MqttRecord<'a> {
    pub listener: &'a str,
    pub cluster: &'a str,
    pub client: SocketAddr,
    pub upstream: Option<SocketAddr>,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    /// `3.1`, `3.1.1` or `5`.
    pub protocol: &'static str,
    pub packets_in: u64,
    pub packets_out: u64,
    pub publishes_in: u64,
    pub bytes_rx: u64,
    pub bytes_tx: u64,
    pub duration_ms: f64,
    pub error: Option<String>,
}

#[derive(Serialize)]
struct Line<'a, R> {
    time: String,
    kind: &'static str,
    #[serde(flatten)]
    record: &'a R,
}

impl Default for AccessLogger {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessLogger {
    pub fn new() -> Self {
        AccessLogger { writer: OnceLock::new() }
    }

    pub fn http(&self, format: LogFormat, record: &HttpRecord<'_>) {
        self.write(format, "http", record);
    }

    pub fn tcp(&self, format: LogFormat, record: &TcpRecord<'_>) {
        self.write(format, "tcp", record);
    }

    pub fn mqtt(&self, format: LogFormat, record: &MqttRecord<'_>) {
        self.write(format, "mqtt", record);
    }

    fn write<R: Serialize>(&self, format: LogFormat, kind: &'static str, record: &R) {
        let line = Line { time: rfc3339(SystemTime::now()), kind, record };
        let mut text = match format {
            LogFormat::Json => serde_json::to_vec(&line).unwrap_or_default(),
            LogFormat::Text => text_line(&line),
        };
        text.push(b'\n');
        // Created on first use, so a proxy with access logs off never starts
        // the writer thread.
        let (writer, _) = self.writer.get_or_init(|| {
            NonBlockingBuilder::default().buffered_lines_limit(ACCESS_LOG_QUEUE).finish(std::io::stdout())
        });
        let _ = writer.clone().write_all(&text);
    }
}

/// `key=value` pairs in the same order as the JSON object.
fn text_line<R: Serialize>(line: &R) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(line) {
        for (i, (key, value)) in map.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            let _ = match value {
                serde_json::Value::String(s) if !s.contains([' ', '"']) && !s.is_empty() => write!(out, "{key}={s}"),
                serde_json::Value::Null => write!(out, "{key}=-"),
                other => write!(out, "{key}={other}"),
            };
        }
    }
    out
}

/// A duration in milliseconds, to the microsecond.
pub fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// UTC timestamp with milliseconds, e.g. `2026-11-22T10:00:00.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z", since_epoch.subsec_millis())
}

/// (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's
/// civil-from-days algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
