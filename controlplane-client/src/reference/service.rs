//! One request in, one response out: authentication, routing, conditional
//! requests, long polls and status reports.

use std::convert::Infallible;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::files::{self, Found, PathError, RequestPath, Route};
use super::headers::{self, IfNoneMatch};
use super::State;

pub(super) type Body = Full<Bytes>;

/// The largest status report accepted.
pub(super) const REPORT_LIMIT: usize = 64 * 1024;
/// After a change event, how long a held request lets a burst of events
/// (truncate, write, close) settle before it reads: a writer that is not
/// atomic is then seen once it is done, not half-way.
const SETTLE: Duration = Duration::from_millis(50);
/// How often a held request looks again without an event: the safety net
/// for an event the watcher missed (or a watcher that could not start).
const RECHECK: Duration = Duration::from_secs(5);
const RECHECK_UNWATCHED: Duration = Duration::from_secs(1);

const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

pub(super) async fn handle(
    state: Arc<State>,
    remote: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let version = request.version();
    let path = request.uri().path().to_owned();
    let mut response = respond(&state, remote, request).await;
    if method == Method::HEAD {
        *response.body_mut() = Body::default();
    }
    state.status.count(&method, response.status(), version);
    tracing::debug!(
        %remote,
        %method,
        path,
        ?version,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(response)
}

async fn respond(state: &Arc<State>, remote: SocketAddr, request: Request<Incoming>) -> Response<Body> {
    if let Some(expected) = &state.token {
        let presented = headers::bearer(request.headers()).map(|token| headers::sha256(token.as_bytes()));
        if !presented.is_some_and(|presented| headers::same_digest(&presented, expected)) {
            let mut response = plain(
                StatusCode::UNAUTHORIZED,
                if presented.is_some() { "the bearer token is wrong" } else { "a bearer token is required" },
            );
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    match *request.method() {
        Method::GET | Method::HEAD => get(state, request).await,
        Method::POST => post(state, remote, request).await,
        _ => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET, HEAD and POST are served");
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
            response
        }
    }
}

async fn get(state: &Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let target = match files::route(request.uri().path()) {
        Ok(Route::Status) => return status_document(state),
        Ok(Route::Resource(target)) => Arc::new(target),
        Err(PathError::Malformed(why)) => return plain(StatusCode::BAD_REQUEST, why),
        Err(PathError::NotFound) => return not_found(),
    };
    let condition = headers::if_none_match(request.headers());
    // `*` matches every version, so there is no change to wait for.
    let wait = match condition {
        Some(IfNoneMatch::Tags(_)) => headers::prefer_wait(request.headers()),
        _ => None,
    };
    let wait = wait.map(|seconds| Duration::from_secs(seconds).min(state.max_wait)).filter(|wait| !wait.is_zero());
    // Subscribed before the first look, so a change just after it still
    // wakes the wait.
    let changes = state.changes.subscribe();
    let mut found = match look_up(state, &target).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(),
        Err(response) => return response,
    };
    let matches = |found: &Found| condition.as_ref().is_some_and(|c| c.matches(found.etag()));
    let mut held = None;
    if let (Some(condition), Some(wait)) = (&condition, wait) {
        if condition.matches(found.etag()) {
            held = Some(wait);
            found = match hold(state, &target, condition, changes, wait).await {
                Ok(Some(found)) => found,
                Ok(None) => return not_found(),
                Err(response) => return response,
            };
        }
    }
    let mut response = if matches(&found) {
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        set_validators(&mut response, found.etag());
        response
    } else {
        match found {
            Found::Codebase { etag, manifest } => {
                let len = manifest.len() as u64;
                representation(manifest, len, &etag, TEXT)
            }
            Found::File { etag, len, content_type, .. } if request.method() == Method::HEAD => {
                representation(Bytes::new(), len, &etag, HeaderValue::from_static(content_type))
            }
            Found::File { path, content_type, .. } => {
                let files = state.clone();
                match tokio::task::spawn_blocking(move || files.files.read(&path)).await {
                    Ok(Ok((body, etag))) => {
                        let len = body.len() as u64;
                        representation(body, len, &etag, HeaderValue::from_static(content_type))
                    }
                    Ok(Err(error)) => return io_error(error),
                    Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
                }
            }
        }
    };
    if let Some(Ok(applied)) = held.map(|wait| HeaderValue::try_from(format_wait(wait))) {
        response.headers_mut().insert(PREFERENCE_APPLIED, applied);
    }
    response
}

/// `wait=<seconds>` as applied: what was asked for, or `max_wait` when that
/// is less, rounded up so a fractional `max_wait` still reads as held.
fn format_wait(wait: Duration) -> String {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    format!("wait={seconds}")
}

/// Holds a request whose `If-None-Match` matches until the resource's ETag
/// changes, `wait` passes or the server stops; then answers with what is
/// current (`None` if it is gone).
async fn hold(
    state: &Arc<State>,
    target: &Arc<RequestPath>,
    condition: &IfNoneMatch,
    mut changes: watch::Receiver<u64>,
    wait: Duration,
) -> Result<Option<Found>, Response<Body>> {
    let _waiting = Waiting::enter(&state.waiting);
    let deadline = Instant::now() + wait;
    let mut shutdown = state.shutdown.clone();
    let recheck = if state.watching { RECHECK } else { RECHECK_UNWATCHED };
    loop {
        let look_again = tokio::select! {
            changed = changes.changed() => changed.is_ok(),
            () = tokio::time::sleep(recheck) => true,
            () = tokio::time::sleep_until(deadline) => false,
            () = super::stopped(&mut shutdown) => false,
        };
        if !look_again {
            break;
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + SETTLE)).await;
        changes.borrow_and_update();
        match look_up(state, target).await? {
            Some(found) if condition.matches(found.etag()) => {}
            changed => return Ok(changed),
        }
    }
    // A last look, so that a change the watcher missed is still answered
    // at the deadline.
    look_up(state, target).await
}

/// Counts held requests for `/_status` (tests wait on it to know a long
/// poll is in place), also when the client goes away mid-wait.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn look_up(state: &Arc<State>, target: &Arc<RequestPath>) -> Result<Option<Found>, Response<Body>> {
    let (files, target) = (state.clone(), target.clone());
    match tokio::task::spawn_blocking(move || files.files.look_up(&target)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(error)) => Err(io_error(error)),
        Err(_) => Err(plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error")),
    }
}

async fn post(state: &Arc<State>, remote: SocketAddr, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > REPORT_LIMIT as u64) {
        return too_large();
    }
    let body = match Limited::new(request.into_body(), REPORT_LIMIT).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(error) => return plain(StatusCode::BAD_REQUEST, format_args!("cannot read the body: {error}")),
    };
    let report: Value = match serde_json::from_slice(&body) {
        Ok(report) => report,
        Err(error) => return plain(StatusCode::BAD_REQUEST, format_args!("the body is not JSON: {error}")),
    };
    if !report.is_object() {
        return plain(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    }
    // Pipy sidecars name themselves `uuid`.
    let instance = match report.get("instance").or_else(|| report.get("uuid")) {
        Some(Value::String(instance)) => instance.clone(),
        _ => remote.ip().to_string(),
    };
    state.status.record(instance, &path, remote, report);
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::CREATED;
    response
}

fn status_document(state: &State) -> Response<Body> {
    let document = state.status.json(state.waiting.load(Ordering::SeqCst));
    let mut body = serde_json::to_vec_pretty(&document).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(CACHE_CONTROL, NO_CACHE);
    response
}

/// A `200` with the representation's headers. `len` is the length of the
/// body a `GET` gets, also for a `HEAD` (whose `body` is empty).
fn representation(body: Bytes, len: u64, etag: &str, content_type: HeaderValue) -> Response<Body> {
    let mut response = Response::new(Body::new(body));
    set_validators(&mut response, etag);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    response
}

fn set_validators(response: &mut Response<Body>, etag: &str) {
    let headers = response.headers_mut();
    // Always valid: quotes around hex digits.
    if let Ok(etag) = HeaderValue::from_str(etag) {
        headers.insert(ETAG, etag);
    }
    headers.insert(CACHE_CONTROL, NO_CACHE);
}

fn plain(status: StatusCode, message: impl Display) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, TEXT);
    response
}

fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "not found")
}

fn too_large() -> Response<Body> {
    plain(StatusCode::PAYLOAD_TOO_LARGE, format_args!("a status report is at most {REPORT_LIMIT} bytes"))
}

fn io_error(error: std::io::Error) -> Response<Body> {
    match error.kind() {
        std::io::ErrorKind::NotFound => not_found(),
        std::io::ErrorKind::PermissionDenied => plain(StatusCode::FORBIDDEN, "the server may not read this"),
        _ => {
            tracing::warn!(%error, "cannot read from the served directory");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read from the served directory")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_applied_never_claims_less_than_held() {
        assert_eq!(format_wait(Duration::from_secs(30)), "wait=30");
        assert_eq!(format_wait(Duration::from_millis(1500)), "wait=2");
    }
}
