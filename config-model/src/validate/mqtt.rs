//! Validation of listeners' MQTT settings.

use std::collections::HashMap;

use super::{Validator, MAX_MQTT_PACKET};
use crate::model::PathMatch;
use crate::mqtt::*;

impl Validator {
    pub(super) fn mqtt(&mut self, path: &str, mqtt: &MqttOptions) {
        if !(16..=MAX_MQTT_PACKET).contains(&mqtt.max_packet_size) {
            self.error(format!("{path}.max_packet_size"), format!("must be between 16 and {MAX_MQTT_PACKET}"));
        }
        self.positive(|| format!("{path}.connect_timeout"), &mqtt.connect_timeout);
        if !(1.0..=10.0).contains(&mqtt.keepalive_factor) {
            self.error(format!("{path}.keepalive_factor"), "must be between 1.0 and 10.0");
        }
        if let Some(rate) = &mqtt.publish_rate {
            let p = format!("{path}.publish_rate");
            if rate.messages.is_none() && rate.bytes.is_none() {
                self.error(p.clone(), "needs messages, bytes or both");
            }
            if rate.messages == Some(0) {
                self.error(format!("{p}.messages"), "must be at least 1");
            }
            if rate.burst == Some(0) {
                self.error(format!("{p}.burst"), "must be at least 1");
            }
            self.positive(|| format!("{p}.per"), &rate.per);
            if let Some(bytes) = &rate.bytes {
                self.check(format!("{p}.bytes"), bytes.parse());
            }
        }
        self.allow_deny(&format!("{path}.client_ids"), &mqtt.client_ids);
        self.allow_deny(&format!("{path}.usernames"), &mqtt.usernames);
        let mut usernames = HashMap::new();
        for (index, user) in mqtt.users.iter().enumerate() {
            let p = format!("{path}.users[{index}]");
            if let Some(first) = usernames.insert(user.username.as_str(), index) {
                self.error(
                    format!("{p}.username"),
                    format!("duplicate user {:?} (also users[{first}])", user.username),
                );
            }
            match (&user.password, &user.password_sha256) {
                (Some(_), None) => {}
                (None, Some(hash)) if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {}
                (None, Some(_)) => self.error(format!("{p}.password_sha256"), "must be 64 hex digits"),
                _ => self.error(p, "needs exactly one of password and password_sha256"),
            }
        }
        if let Some(topics) = &mqtt.topic_metrics {
            if !(1..=16).contains(&topics.levels) {
                self.error(format!("{path}.topic_metrics.levels"), "must be between 1 and 16");
            }
            if !(1..=10_000).contains(&topics.max_topics) {
                self.error(format!("{path}.topic_metrics.max_topics"), "must be between 1 and 10000");
            }
        }
        if let Some(acl) = &mqtt.acl {
            for (index, rule) in acl.rules.iter().enumerate() {
                let p = format!("{path}.acl.rules[{index}]");
                if rule.topics.is_empty() {
                    self.error(format!("{p}.topics"), "needs at least one topic filter");
                }
                for (i, topic) in rule.topics.iter().enumerate() {
                    self.check(format!("{p}.topics[{i}]"), parse_topic_filter(topic));
                }
                for (field, criterion) in [("client_id", &rule.client_id), ("username", &rule.username)] {
                    if let Some(PathMatch::Regex(pattern)) = criterion {
                        self.regex(&format!("{p}.{field}.regex"), pattern);
                    }
                }
            }
        }
    }

    fn allow_deny(&mut self, path: &str, lists: &AllowDeny) {
        for (list, entries) in [("allow", &lists.allow), ("deny", &lists.deny)] {
            for (index, entry) in entries.iter().enumerate() {
                if let PathMatch::Regex(pattern) = entry {
                    self.regex(&format!("{path}.{list}[{index}].regex"), pattern);
                }
            }
        }
    }
}
