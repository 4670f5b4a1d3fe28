//! A listener's bandwidth limits, compiled: byte rates per connection and
//! byte buckets shared by all of the listener's connections.

use std::sync::Arc;

use tokio::time::Instant;

use super::bandwidth::{ByteBucket, Throttle, Throttled};
use crate::state::Registry;

/// Rates in bytes per second; the shared buckets survive reloads while the
/// listener's bandwidth config is unchanged.
#[derive(Debug)]
pub struct BandwidthLimits {
    per_connection_upload: Option<u64>,
    per_connection_download: Option<u64>,
    listener_upload: Option<Arc<ByteBucket>>,
    listener_download: Option<Arc<ByteBucket>>,
}

/// A bucket may hold a tenth of a second of traffic (at least a packet), so
/// short bursts pass without a wait while the rate holds over any second.
fn bucket(rate: u64) -> ByteBucket {
    ByteBucket::new(rate, (rate / 10).max(1500), Instant::now())
}

impl BandwidthLimits {
    pub fn compile(
        config: &config_model::Bandwidth,
        registry: &Registry,
        key: &str,
        config_hash: u64,
    ) -> Result<Option<Self>, String> {
        if config.is_unlimited() {
            return Ok(None);
        }
        let rate = |value: &Option<config_model::ByteRate>| value.as_ref().map(|r| r.parse()).transpose();
        let (listener_upload, listener_download) = (rate(&config.listener.upload)?, rate(&config.listener.download)?);
        let (shared, _) = registry.policy_state(key.to_owned(), config_hash, || {
            (listener_upload.map(|r| Arc::new(bucket(r))), listener_download.map(|r| Arc::new(bucket(r))))
        });
        Ok(Some(BandwidthLimits {
            per_connection_upload: rate(&config.per_connection.upload)?,
            per_connection_download: rate(&config.per_connection.download)?,
            listener_upload: shared.0.clone(),
            listener_download: shared.1.clone(),
        }))
    }

    fn upload(&self) -> Option<Throttle> {
        (self.per_connection_upload.is_some() || self.listener_upload.is_some())
            .then(|| Throttle::new(self.per_connection_upload.map(bucket), self.listener_upload.clone()))
    }

    fn download(&self) -> Option<Throttle> {
        (self.per_connection_download.is_some() || self.listener_download.is_some())
            .then(|| Throttle::new(self.per_connection_download.map(bucket), self.listener_download.clone()))
    }

    /// A client stream paced in both directions: reads are uploads, writes downloads.
    pub fn wrap<S>(limits: Option<&Self>, stream: S) -> Throttled<S> {
        match limits {
            Some(limits) => Throttled::new(stream, limits.upload(), limits.download()),
            None => Throttled::new(stream, None, None),
        }
    }
}
