//! Per-connection PUBLISH limits: a token bucket of messages and one of
//! bytes. Over the limit a client is paused (its packets wait, and so does
//! reading from it: back-pressure) or disconnected, as configured.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::bandwidth::ByteBucket;
use crate::policy::rate_limit::TokenBucket;

/// A listener's `mqtt.publish_rate`, compiled.
#[derive(Clone, Debug)]
pub struct PublishRate {
    /// (messages, per, burst)
    pub messages: Option<(u32, Duration, u32)>,
    pub bytes_per_second: Option<u64>,
    pub disconnect: bool,
}

impl PublishRate {
    pub fn compile(config: &config_model::MqttPublishRate) -> Result<Self, String> {
        let per = config.per.parse()?;
        Ok(PublishRate {
            messages: config.messages.map(|n| (n, per, config.burst.unwrap_or(n))),
            bytes_per_second: config.bytes.as_ref().map(|b| b.parse()).transpose()?,
            disconnect: config.on_exceed == config_model::MqttRateAction::Disconnect,
        })
    }

    /// The buckets of one connection, full.
    pub fn buckets(&self) -> PublishBuckets {
        let now = Instant::now();
        PublishBuckets {
            messages: self.messages.map(|(n, per, burst)| TokenBucket::new(n, per, burst, now)),
            // A second's worth of bytes at once (at least a packet's worth of
            // a small link), so the rate holds over any second.
            bytes: self.bytes_per_second.map(|rate| ByteBucket::new(rate, rate.max(1500), now)),
            disconnect: self.disconnect,
        }
    }
}

pub struct PublishBuckets {
    messages: Option<TokenBucket>,
    bytes: Option<ByteBucket>,
    disconnect: bool,
}

/// The client is over its publish rate and is to be disconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateExceeded;

impl PublishBuckets {
    /// Admits one PUBLISH of `len` bytes: at once, after a pause, or not.
    pub async fn admit(&self, len: usize) -> Result<(), RateExceeded> {
        if let Some(messages) = &self.messages {
            loop {
                match messages.try_acquire(Instant::now()) {
                    Ok(()) => break,
                    Err(_) if self.disconnect => return Err(RateExceeded),
                    Err(wait) => tokio::time::sleep(wait).await,
                }
            }
        }
        if let Some(bytes) = &self.bytes {
            let mut remaining = len;
            while remaining > 0 {
                match bytes.take(remaining, Instant::now()) {
                    Ok(granted) if self.disconnect && granted < remaining => {
                        bytes.refund(granted);
                        return Err(RateExceeded);
                    }
                    Ok(granted) => remaining -= granted,
                    Err(_) if self.disconnect => return Err(RateExceeded),
                    Err(wait) => tokio::time::sleep(wait).await,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(messages: Option<u32>, bytes: Option<u64>, disconnect: bool) -> PublishRate {
        PublishRate { messages: messages.map(|n| (n, Duration::from_secs(1), n)), bytes_per_second: bytes, disconnect }
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_to_the_message_rate() {
        let buckets = rate(Some(10), None, false).buckets();
        let start = Instant::now();
        for _ in 0..30 {
            buckets.admit(100).await.unwrap();
        }
        // 10 at once, then 20 more at 10/s.
        let elapsed = start.elapsed().as_secs_f64();
        assert!((1.9..=2.1).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_to_the_byte_rate() {
        let buckets = rate(None, Some(10_000), false).buckets();
        let start = Instant::now();
        for _ in 0..30 {
            buckets.admit(1_000).await.unwrap();
        }
        // A second's worth at once, then 20,000 bytes at 10,000 B/s.
        let elapsed = start.elapsed().as_secs_f64();
        assert!((1.9..=2.1).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn disconnects_over_the_limit() {
        let buckets = rate(Some(2), None, true).buckets();
        assert_eq!(buckets.admit(10).await, Ok(()));
        assert_eq!(buckets.admit(10).await, Ok(()));
        assert_eq!(buckets.admit(10).await, Err(RateExceeded));
        let bytes = rate(None, Some(2_000), true).buckets();
        assert_eq!(bytes.admit(1_500).await, Ok(()));
        assert_eq!(bytes.admit(1_500).await, Err(RateExceeded));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(bytes.admit(1_500).await, Ok(()));
    }
}
