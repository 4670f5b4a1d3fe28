//! The bootstrap file: what a proxy needs to know before it has a config,
//! i.e. where its control plane is and how to reach it.
//!
//! ```yaml
//! control_plane:
//!   url: https://controlplane.mesh:6060/repo/edgeplane/sidecar-42/
//!   tls: { ca: { file: /etc/edgeplane/ca.pem } }
//!   persist: /var/lib/edgeplane/controlplane-config.json
//! admin: { bind: 127.0.0.1:15000 }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Admin;
use crate::tls::{KeySource, PemSource};
use crate::validate::ValidationError;
use crate::values::Duration;

/// A proxy that takes its config from a control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Where the config comes from.
    pub control_plane: ControlPlane,
    /// The admin server from start-up, before any config has arrived (a
    /// config's own `admin.bind` is ignored once the server runs).
    #[serde(default)]
    pub admin: Admin,
}

/// How the proxy pulls its config over HTTP and reports back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// `http://` or `https://` URL of the config (YAML or JSON of this
    /// model). A URL ending in `/` is a Pipy-repo codebase: its body is a
    /// manifest of paths, one per line, and the config is one of them (see
    /// `file`).
    pub url: String,
    /// How often to ask whether the config changed (a conditional GET, or a
    /// HEAD for a Pipy repo).
    #[serde(default = "defaults::interval")]
    pub interval: Duration,
    /// Each wait is `interval` × (1 ± `jitter`), so a fleet restarted at once
    /// does not poll in step. 0 to 0.5.
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
    /// Ask the server to hold a conditional GET open until the config changes
    /// or this long has passed (`Prefer: wait=<seconds>`); servers that do not
    /// support it answer at once. Must be shorter than `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_poll: Option<Duration>,
    /// Limit for establishing the connection (TCP and TLS).
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// Limit for a whole response, headers and body.
    #[serde(default = "defaults::timeout")]
    pub timeout: Duration,
    /// Largest config body accepted; a bigger one is rejected unread.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// HTTP version to the control plane.
    #[serde(default)]
    pub http_version: ControlPlaneHttp,
    /// TLS to the control plane (for `https://` URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ControlPlaneTls>,
    /// File holding a bearer token sent as `Authorization: Bearer <token>`.
    /// Re-read for every request, so a rotated token is used at once. The
    /// `EDGEPLANE_CONTROL_PLANE_TOKEN` environment variable is the other way
    /// to give one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Where the last config that applied is kept, so a restart during a
    /// control-plane outage serves it. `null` keeps nothing.
    #[serde(default = "defaults::persist")]
    pub persist: Option<String>,
    /// When `/ready` turns 200.
    #[serde(default)]
    pub ready: ReadyPolicy,
    /// POST a status report (applied version, or the rejection) after each
    /// config this proxy fetched.
    #[serde(default = "defaults::report_status")]
    pub report_status: bool,
    /// Also report after every poll the control plane answered, not only
    /// after a new config: a Pipy repo lists the sidecars that reported
    /// lately (Pipy reports every 5 s).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_every_poll: bool,
    /// Where status reports go; default: `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
    /// This proxy's name in status reports; default: `$POD_NAME`, else the
    /// host name, followed by the process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// For a Pipy-repo URL: the manifest entry that holds the config. Default:
    /// the first of `edgeplane.yaml`, `edgeplane.yml`, `edgeplane.json`,
    /// `config.yaml`, `config.yml`, `config.json` that the manifest lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// First wait after a failed fetch; it doubles (with jitter) after each
    /// further failure, up to `retry_max`.
    #[serde(default = "defaults::retry_initial")]
    pub retry_initial: Duration,
    #[serde(default = "defaults::retry_max")]
    pub retry_max: Duration,
}

/// HTTP versions to the control plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ControlPlaneHttp {
    /// HTTP/1.1 for `http://`; for `https://`, HTTP/2 or HTTP/1.1 by ALPN.
    #[default]
    Auto,
    Http1,
    /// HTTP/2 only: prior knowledge on `http://` (h2c), ALPN `h2` on `https://`.
    Http2,
}

/// When a proxy fed by a control plane reports ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyPolicy {
    /// As soon as a config applied, the persisted one included: a restart
    /// during an outage keeps serving.
    #[default]
    Persisted,
    /// Only once a config fetched from the control plane in this run applied.
    Fresh,
}

/// TLS to the control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneTls {
    /// CA bundle the server certificate must chain to; default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PemSource>,
    /// Client certificate chain for mTLS (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PemSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySource>,
    /// Name to verify the server certificate against; default: the URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

mod defaults {
    use crate::values::Duration;

    pub fn interval() -> Duration {
        Duration::from("5s")
    }
    pub fn jitter() -> f64 {
        0.1
    }
    pub fn connect_timeout() -> Duration {
        Duration::from("3s")
    }
    pub fn timeout() -> Duration {
        Duration::from("15s")
    }
    pub fn max_body_bytes() -> u64 {
        16 << 20
    }
    pub fn persist() -> Option<String> {
        Some("/var/lib/edgeplane/controlplane-config.json".into())
    }
    pub fn report_status() -> bool {
        true
    }
    pub fn retry_initial() -> Duration {
        Duration::from("1s")
    }
    pub fn retry_max() -> Duration {
        Duration::from("60s")
    }
}

impl ControlPlane {
    /// Settings for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        ControlPlane {
            url: url.into(),
            interval: defaults::interval(),
            jitter: defaults::jitter(),
            long_poll: None,
            connect_timeout: defaults::connect_timeout(),
            timeout: defaults::timeout(),
            max_body_bytes: defaults::max_body_bytes(),
            http_version: ControlPlaneHttp::default(),
            tls: None,
            token_file: None,
            persist: defaults::persist(),
            ready: ReadyPolicy::default(),
            report_status: defaults::report_status(),
            report_every_poll: false,
            status_url: None,
            instance_id: None,
            file: None,
            retry_initial: defaults::retry_initial(),
            retry_max: defaults::retry_max(),
        }
    }
}

/// The parts of an `http://` or `https://` URL the client needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl<'a> {
    pub https: bool,
    pub host: &'a str,
    pub path_and_query: &'a str,
}

/// Splits an absolute HTTP URL, or says what is wrong with it.
pub fn parse_http_url(url: &str) -> Result<HttpUrl<'_>, String> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} contains spaces or control characters"));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.contains('@') {
        return Err(format!("{url:?}: credentials in the URL are not supported (use token_file)"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| format!("{url:?} has an unclosed '['"))?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(|| format!("{url:?} has junk after ']'"))?)),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if let Some(port) = port {
        if port.parse::<u16>().is_err() {
            return Err(format!("{url:?} has an invalid port {port:?}"));
        }
    }
    if rest.contains('#') {
        return Err(format!("{url:?}: a fragment is not allowed"));
    }
    let path_and_query = &rest[authority_end..];
    Ok(HttpUrl { https, host, path_and_query: if path_and_query.is_empty() { "/" } else { path_and_query } })
}

/// Checks a bootstrap file; returns every problem with its path.
pub fn validate_bootstrap(bootstrap: &Bootstrap) -> Result<(), Vec<ValidationError>> {
    let mut errors = Vec::new();
    let mut error =
        |path: &str, message: String| errors.push(ValidationError { path: format!("control_plane.{path}"), message });
    let cp = &bootstrap.control_plane;
    let url = parse_http_url(&cp.url);
    if let Err(message) = &url {
        error("url", message.clone());
    }
    if let Some(status_url) = &cp.status_url {
        if let Err(message) = parse_http_url(status_url) {
            error("status_url", message);
        }
    }
    let duration = |path: &str, value: &Duration, error: &mut dyn FnMut(&str, String)| match value.parse() {
        Ok(parsed) => Some(parsed),
        Err(message) => {
            error(path, message);
            None
        }
    };
    let interval = duration("interval", &cp.interval, &mut error);
    let connect_timeout = duration("connect_timeout", &cp.connect_timeout, &mut error);
    let timeout = duration("timeout", &cp.timeout, &mut error);
    let long_poll = cp.long_poll.as_ref().and_then(|value| duration("long_poll", value, &mut error));
    let retry_initial = duration("retry_initial", &cp.retry_initial, &mut error);
    let retry_max = duration("retry_max", &cp.retry_max, &mut error);
    for (path, value) in [("interval", interval), ("connect_timeout", connect_timeout), ("timeout", timeout)] {
        if value.is_some_and(|d| d.is_zero()) {
            error(path, "must be more than 0s".into());
        }
    }
    if let (Some(long_poll), Some(timeout)) = (long_poll, timeout) {
        if long_poll >= timeout {
            error("long_poll", format!("must be shorter than timeout ({})", cp.timeout.as_str()));
        }
    }
    if let (Some(initial), Some(max)) = (retry_initial, retry_max) {
        if initial.is_zero() {
            error("retry_initial", "must be more than 0s".into());
        }
        if initial > max {
            error("retry_max", format!("must be at least retry_initial ({})", cp.retry_initial.as_str()));
        }
    }
    if !(0.0..=0.5).contains(&cp.jitter) {
        error("jitter", format!("must be between 0 and 0.5, not {}", cp.jitter));
    }
    if cp.max_body_bytes == 0 {
        error("max_body_bytes", "must be more than 0".into());
    }
    if let Some(tls) = &cp.tls {
        if url.as_ref().is_ok_and(|url| !url.https) {
            error("tls", "TLS settings need an https:// url".into());
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => error("tls.key", "a client certificate needs its key".into()),
            (None, Some(_)) => error("tls.cert", "a key needs its client certificate".into()),
            _ => {}
        }
        for (path, source) in [("tls.ca", &tls.ca), ("tls.cert", &tls.cert)] {
            match source {
                Some(PemSource::File(file)) if file.trim().is_empty() => {
                    error(&format!("{path}.file"), "empty path".into())
                }
                Some(PemSource::Pem(text)) if !text.contains("-----BEGIN ") => {
                    error(&format!("{path}.pem"), "not PEM text (no -----BEGIN line)".into())
                }
                _ => {}
            }
        }
        if tls.server_name.as_ref().is_some_and(|name| !crate::values::is_hostname(name)) {
            error("tls.server_name", "not a host name".into());
        }
    }
    if cp.token_file.as_ref().is_some_and(|file| file.trim().is_empty()) {
        error("token_file", "empty path".into());
    }
    if cp.persist.as_ref().is_some_and(|file| file.trim().is_empty()) {
        error("persist", "empty path (use null to keep nothing)".into());
    }
    if let Some(id) = &cp.instance_id {
        if id.is_empty() || id.len() > 253 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            error("instance_id", "must be 1 to 253 printable ASCII characters without spaces".into());
        }
    }
    if let Some(file) = &cp.file {
        if file.is_empty() || file.split('/').any(|part| part == "..") || file.contains(['\n', '\r']) {
            error("file", format!("{file:?} is not a manifest path"));
        }
        if url.as_ref().is_ok_and(|url| !url.path_and_query.ends_with('/')) {
            error("file", "only a Pipy-repo url (ending in /) has a manifest to pick from".into());
        }
    }
    if let Err(message) = bootstrap.admin.bind.parse() {
        errors.push(ValidationError { path: "admin.bind".into(), message });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_or_say_why_not() {
        let url = parse_http_url("http://repo.mesh:6060/repo/sidecar/").unwrap();
        assert_eq!(url, HttpUrl { https: false, host: "repo.mesh", path_and_query: "/repo/sidecar/" });
        let url = parse_http_url("https://[::1]:8443").unwrap();
        assert_eq!(url, HttpUrl { https: true, host: "::1", path_and_query: "/" });
        assert_eq!(parse_http_url("https://[::1]/x").unwrap().host, "::1");
        assert_eq!(parse_http_url("http://h/c.yaml?x=1").unwrap().path_and_query, "/c.yaml?x=1");
        for bad in
            ["ftp://x/", "http://", "http://:80/", "http://h:port/", "http://u:p@h/", "http://h/a b", "http://h/#f"]
        {
            assert!(parse_http_url(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn every_problem_is_named() {
        let mut cp = ControlPlane::new("http://cp/config.yaml");
        cp.interval = Duration::from("0s");
        cp.jitter = 0.9;
        cp.long_poll = Some(Duration::from("30s"));
        cp.timeout = Duration::from("10s");
        cp.retry_initial = Duration::from("2m");
        cp.tls = Some(ControlPlaneTls { cert: Some(PemSource::File("c.pem".into())), ..Default::default() });
        cp.file = Some("config.json".into());
        cp.persist = Some(String::new());
        let errors = validate_bootstrap(&Bootstrap { control_plane: cp, admin: Admin::default() }).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "control_plane.interval",
                "control_plane.long_poll",
                "control_plane.retry_max",
                "control_plane.jitter",
                "control_plane.tls",
                "control_plane.tls.key",
                "control_plane.persist",
                "control_plane.file",
            ],
            "{errors:?}"
        );
        assert!(validate_bootstrap(&Bootstrap {
            control_plane: ControlPlane::new("https://cp:6060/repo/x/"),
            admin: Admin::default()
        })
        .is_ok());
    }
}
