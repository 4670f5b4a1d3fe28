//! PUBLISH counts by topic prefix, with a hard bound on the number of
//! series: an unbounded label from client input would let clients grow the
//! metrics without end. A prefix's counters are found by a lookup of its
//! bytes; only the first PUBLISH of a new prefix builds a label.

use std::sync::Arc;

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::{Metrics, MqttTopicLabels};

/// The label of publishes past the bound (`#` never appears in a PUBLISH topic).
pub const OTHER: &str = "#other";

/// A listener's topic counters. Kept across reloads while the listener's
/// `topic_metrics` is unchanged (`Registry::policy_state`), so the bound
/// holds over the life of the process; dropping it removes its series.
pub struct TopicCounts {
    levels: usize,
    max_topics: usize,
    listener: Arc<str>,
    publishes: Family<MqttTopicLabels, Counter>,
    bytes: Family<MqttTopicLabels, Counter>,
    series: DashMap<Box<[u8]>, (Counter, Counter)>,
    other: (Counter, Counter),
}

impl std::fmt::Debug for TopicCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicCounts").field("levels", &self.levels).field("series", &self.series.len()).finish()
    }
}

impl TopicCounts {
    pub fn new(metrics: &Metrics, listener: &Arc<str>, config: &config_model::MqttTopicMetrics) -> Self {
        let labels = |topic: &str| MqttTopicLabels { listener: listener.to_string(), topic: topic.to_owned() };
        TopicCounts {
            levels: usize::from(config.levels),
            max_topics: config.max_topics as usize,
            listener: listener.clone(),
            publishes: metrics.mqtt_topic_publishes.clone(),
            bytes: metrics.mqtt_topic_bytes.clone(),
            series: DashMap::new(),
            other: (
                metrics.mqtt_topic_publishes.get_or_create(&labels(OTHER)).clone(),
                metrics.mqtt_topic_bytes.get_or_create(&labels(OTHER)).clone(),
            ),
        }
    }

    /// Counts one PUBLISH of `bytes` bytes to `topic`.
    pub fn record(&self, topic: &[u8], bytes: usize) {
        let prefix = prefix(topic, self.levels);
        let count = |(publishes, size): &(Counter, Counter)| {
            publishes.inc();
            size.inc_by(bytes as u64);
        };
        if let Some(counters) = self.series.get(prefix) {
            count(&counters);
            return;
        }
        // Workers racing past this check may add a few series beyond the
        // bound (at most one each); the bound is still hard.
        if self.series.len() >= self.max_topics {
            count(&self.other);
            return;
        }
        let labels = self.labels(prefix);
        let counters = self
            .series
            .entry(prefix.into())
            .or_insert_with(|| {
                (self.publishes.get_or_create(&labels).clone(), self.bytes.get_or_create(&labels).clone())
            })
            .clone();
        count(&counters);
    }

    fn labels(&self, prefix: &[u8]) -> MqttTopicLabels {
        MqttTopicLabels { listener: self.listener.to_string(), topic: String::from_utf8_lossy(prefix).into_owned() }
    }
}

impl Drop for TopicCounts {
    fn drop(&mut self) {
        for entry in self.series.iter() {
            let labels = self.labels(entry.key());
            self.publishes.remove(&labels);
            self.bytes.remove(&labels);
        }
    }
}

/// The first `levels` levels of a topic.
fn prefix(topic: &[u8], levels: usize) -> &[u8] {
    match topic.iter().enumerate().filter(|(_, b)| **b == b'/').nth(levels - 1) {
        Some((slash, _)) => &topic[..slash],
        None => topic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn prefixes() {
        assert_eq!(prefix(b"meters/7/temp", 1), b"meters");
        assert_eq!(prefix(b"meters/7/temp", 2), b"meters/7");
        assert_eq!(prefix(b"meters/7/temp", 3), b"meters/7/temp");
        assert_eq!(prefix(b"meters/7/temp", 9), b"meters/7/temp");
        assert_eq!(prefix(b"/x", 1), b"");
    }

    #[test]
    fn series_are_bounded_and_removed_with_their_owner() {
        let metrics = Metrics::new();
        let listener: Arc<str> = "mqtt".into();
        let config = config_model::MqttTopicMetrics { levels: 1, max_topics: 2 };
        let counts = TopicCounts::new(&metrics, &listener, &config);
        for topic in ["a/1", "a/2", "b/1", "c/1", "d/1"] {
            counts.record(topic.as_bytes(), 10);
        }
        let get = |topic: &str| {
            metrics
                .mqtt_topic_publishes
                .get_or_create(&MqttTopicLabels { listener: "mqtt".into(), topic: topic.into() })
                .get()
        };
        assert_eq!((get("a"), get("b"), get(OTHER)), (2, 1, 2));
        assert_eq!(
            metrics
                .mqtt_topic_bytes
                .get_or_create(&MqttTopicLabels { listener: "mqtt".into(), topic: "a".into() })
                .get(),
            20
        );
        drop(counts);
        // Gone from the family: a new handle starts at zero.
        assert_eq!(get("a"), 0);
    }
}
