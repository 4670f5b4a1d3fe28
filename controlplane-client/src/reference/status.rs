//! What `GET /_status` shows: the status reports clients POSTed and counts
//! of the requests served.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode, Version};
use serde_json::{json, Map, Value};

/// Reports kept overall, oldest dropped first.
pub(super) const HISTORY: usize = 1_000;
/// Instances kept; the one heard from longest ago goes first. It bounds the
/// memory a stream of reports with ever new `instance` ids can take.
pub(super) const INSTANCES: usize = 10_000;

#[derive(Default)]
pub(super) struct Status {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    instances: HashMap<String, Instance>,
    history: VecDeque<Record>,
    requests: BTreeMap<String, u64>,
    versions: BTreeMap<&'static str, u64>,
    /// Orders reports for evicting instances.
    sequence: u64,
}

struct Instance {
    last: Record,
    reports: u64,
    sequence: u64,
}

#[derive(Clone)]
struct Record {
    received_at: String,
    path: String,
    remote: String,
    /// Shared by the history and the instance's `last`.
    report: Arc<Value>,
}

impl Status {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing here leaves the maps half-updated on a panic, so a
        // poisoned lock still holds usable state.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a report: `instance` is the key it is kept under.
    pub(super) fn record(&self, instance: String, path: &str, remote: SocketAddr, report: Value) {
        let record = Record {
            received_at: rfc3339(SystemTime::now()),
            path: path.to_owned(),
            remote: remote.to_string(),
            report: Arc::new(report),
        };
        let mut inner = self.lock();
        inner.sequence += 1;
        let sequence = inner.sequence;
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(record.clone());
        if let Some(known) = inner.instances.get_mut(&instance) {
            known.last = record;
            known.reports += 1;
            known.sequence = sequence;
            return;
        }
        if inner.instances.len() >= INSTANCES {
            let oldest = inner.instances.iter().min_by_key(|(_, i)| i.sequence).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                inner.instances.remove(&oldest);
            }
        }
        inner.instances.insert(instance, Instance { last: record, reports: 1, sequence });
    }

    /// Counts one answered request.
    pub(super) fn count(&self, method: &Method, status: StatusCode, version: Version) {
        // Extension methods share one key so that odd requests cannot grow
        // the map without bound.
        let method = match *method {
            Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::PATCH => method.as_str(),
            Method::OPTIONS | Method::CONNECT | Method::TRACE => method.as_str(),
            _ => "OTHER",
        };
        let key = format!("{method} {}", status.as_u16());
        let version = match version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_11 => "HTTP/1.1",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "other",
        };
        let mut inner = self.lock();
        *inner.requests.entry(key).or_default() += 1;
        *inner.versions.entry(version).or_default() += 1;
    }

    /// The `/_status` document; `waiting` is the number of long polls being
    /// held now.
    pub(super) fn json(&self, waiting: usize) -> Value {
        let inner = self.lock();
        let mut instances: Vec<(&String, &Instance)> = inner.instances.iter().collect();
        instances.sort_by(|a, b| a.0.cmp(b.0));
        let instances: Map<String, Value> = instances
            .into_iter()
            .map(|(id, instance)| {
                let last = &instance.last;
                let value = json!({
                    "last": *last.report,
                    "received_at": last.received_at,
                    "path": last.path,
                    "remote": last.remote,
                    "reports": instance.reports,
                });
                (id.clone(), value)
            })
            .collect();
        let history: Vec<Value> = inner
            .history
            .iter()
            .map(|r| json!({"received_at": r.received_at, "path": r.path, "remote": r.remote, "report": *r.report}))
            .collect();
        json!({
            "instances": instances,
            "history": history,
            "requests": inner.requests,
            "versions": inner.versions,
            "waiting": waiting,
        })
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2025-01-31T08:09:10.123Z`.
pub(super) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_007)), "2000-02-29T00:00:00.007Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_735_689_599)), "2024-12-31T23:59:59.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(4_107_542_400)), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn history_and_instances_are_bounded() {
        let status = Status::default();
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for n in 0..HISTORY + 5 {
            status.record(format!("i{}", n % 3), "/p", remote, json!({ "n": n }));
        }
        let json = status.json(0);
        let history = json["history"].as_array().unwrap();
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history[0]["report"]["n"], 5);
        assert_eq!(history[HISTORY - 1]["report"]["n"], HISTORY + 4);
        assert_eq!(json["instances"].as_object().unwrap().len(), 3);
        assert_eq!(json["instances"]["i0"]["reports"], (HISTORY + 5).div_ceil(3));

        let status = Status::default();
        for n in 0..INSTANCES + 1 {
            status.record(format!("i{n}"), "/p", remote, json!({}));
        }
        let json = status.json(0);
        let instances = json["instances"].as_object().unwrap();
        assert_eq!(instances.len(), INSTANCES);
        assert!(!instances.contains_key("i0"), "the instance heard from longest ago goes");
        assert!(instances.contains_key(&format!("i{INSTANCES}")));
    }

    #[test]
    fn counts_by_method_status_and_version() {
        let status = Status::default();
        status.count(&Method::GET, StatusCode::NOT_MODIFIED, Version::HTTP_2);
        status.count(&Method::GET, StatusCode::NOT_MODIFIED, Version::HTTP_11);
        status.count(&Method::from_bytes(b"BREW").unwrap(), StatusCode::METHOD_NOT_ALLOWED, Version::HTTP_11);
        let json = status.json(0);
        assert_eq!(json["requests"], json!({"GET 304": 2, "OTHER 405": 1}));
        assert_eq!(json["versions"], json!({"HTTP/1.1": 2, "HTTP/2.0": 1}));
    }
}
