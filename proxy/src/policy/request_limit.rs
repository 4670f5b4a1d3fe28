//! Local rate limits of HTTP requests (per listener, route or cluster),
//! built on the token buckets of [`super::rate_limit`].

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::rate_limit::{decide, decide_keyed, Backlog, Decision, KeyedLimiter, TokenBucket};
use crate::balance::hash64;
use crate::error::LocalReply;

/// A compiled `rate_limit`: its buckets, backlog and refusal.
pub struct RequestLimiter {
    buckets: Buckets,
    backlog: Backlog,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `edgeplane_rate_limited_total` of this limiter.
    refused: prometheus_client::metrics::counter::Counter,
}

enum Buckets {
    Shared(TokenBucket),
    ClientIp(KeyedLimiter<IpAddr>),
    /// Keyed by a hash of the header value, so a lookup allocates nothing;
    /// requests without the header share one bucket (key 0).
    Header(HeaderName, KeyedLimiter<u64>),
}

impl std::fmt::Debug for RequestLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimiter").field("status", &self.status).finish_non_exhaustive()
    }
}

static RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;

impl RequestLimiter {
    pub fn compile(
        config: &config_model::RateLimit,
        refused: prometheus_client::metrics::counter::Counter,
    ) -> Result<Self, String> {
        let per = config.per.parse()?;
        let burst = config.burst.unwrap_or(config.requests);
        let now = Instant::now();
        let max_keys = config.max_keys as usize;
        let buckets = match &config.key {
            config_model::RateLimitKey::None => Buckets::Shared(TokenBucket::new(config.requests, per, burst, now)),
            config_model::RateLimitKey::ClientIp => {
                Buckets::ClientIp(KeyedLimiter::new(config.requests, per, burst, max_keys, now))
            }
            config_model::RateLimitKey::Header(name) => Buckets::Header(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
                KeyedLimiter::new(config.requests, per, burst, max_keys, now),
            ),
        };
        let mut headers = Vec::new();
        for (name, value) in &config.response_headers {
            headers.push((
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
                HeaderValue::from_str(value).map_err(|e| e.to_string())?,
            ));
        }
        Ok(RequestLimiter {
            buckets,
            backlog: Backlog::new(config.backlog),
            status: StatusCode::from_u16(config.status).map_err(|e| e.to_string())?,
            headers,
            refused,
        })
    }

    /// The header a keyed limiter reads, if any.
    pub fn key_header(&self) -> Option<&HeaderName> {
        match &self.buckets {
            Buckets::Header(name, _) => Some(name),
            _ => None,
        }
    }

    /// Admits, queues or refuses one request. `header` is the value of
    /// [`Self::key_header`] in the request.
    pub fn decide(&self, client_ip: IpAddr, header: Option<&[u8]>) -> Decision {
        let now = Instant::now();
        match &self.buckets {
            Buckets::Shared(bucket) => decide(bucket, &self.backlog, now),
            Buckets::ClientIp(keyed) => decide_keyed(keyed, &client_ip, &self.backlog, now),
            Buckets::Header(_, keyed) => {
                let key = header.map_or(0, hash64);
                decide_keyed(keyed, &key, &self.backlog, now)
            }
        }
    }

    /// The refusal: the configured status and headers, and `retry-after` in
    /// whole seconds (rounded up: a client that waits that long gets a token).
    pub fn reply(&self, retry_after: Duration) -> LocalReply {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        headers.push((RETRY_AFTER.clone(), HeaderValue::from(seconds.max(1))));
        headers.extend(self.headers.iter().cloned());
        LocalReply {
            status: self.status,
            body: Bytes::from_static(b"rate limited\n"),
            headers,
            reason: "rate_limited",
            close: false,
        }
    }
}

/// Applies the limits a request meets, in order (listener, route, cluster):
/// waits in a backlog when one lets it, or says which limiter refused it.
pub async fn admit<'a>(
    limiters: impl IntoIterator<Item = &'a std::sync::Arc<RequestLimiter>>,
    client_ip: IpAddr,
    header: impl Fn(&HeaderName) -> Option<&'a [u8]>,
) -> Result<(), (std::sync::Arc<RequestLimiter>, Duration)> {
    for limiter in limiters {
        let value = limiter.key_header().and_then(&header);
        match limiter.decide(client_ip, value) {
            Decision::Allow => {}
            Decision::Wait(wait, guard) => {
                tokio::time::sleep(wait).await;
                drop(guard);
            }
            Decision::Reject { retry_after } => {
                limiter.refused.inc();
                return Err((limiter.clone(), retry_after));
            }
        }
    }
    Ok(())
}
