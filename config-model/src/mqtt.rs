//! MQTT listener settings: limits, who may connect, credentials and topic
//! ACLs, plus the topic-filter syntax they share with the proxy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{defaults, PathMatch};
use crate::values::{ByteRate, Duration};

/// MQTT settings of a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttOptions {
    /// Largest packet accepted from a client (fixed header included); a
    /// bigger one closes the connection (v5: DISCONNECT 0x95 first).
    #[serde(default = "defaults::mqtt_max_packet_size")]
    pub max_packet_size: u32,
    /// Time allowed for the CONNECT to arrive whole.
    #[serde(default = "defaults::mqtt_connect_timeout")]
    pub connect_timeout: Duration,
    /// A client silent for this many times its keep-alive is disconnected
    /// (the spec's 1.5); keep-alive 0 means no limit beyond `tcp.idle_timeout`.
    #[serde(default = "defaults::mqtt_keepalive_factor")]
    pub keepalive_factor: f64,
    /// Limits of each client connection's PUBLISH packets; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<MqttPublishRate>,
    /// Which client identifiers may connect (refused with CONNACK 0x02,
    /// v5 0x85 "client identifier not valid").
    #[serde(default, skip_serializing_if = "AllowDeny::is_empty")]
    pub client_ids: AllowDeny,
    /// Which user names may connect; with an `allow` list a CONNECT without
    /// a user name is refused (CONNACK 0x05, v5 0x87 "not authorized").
    #[serde(default, skip_serializing_if = "AllowDeny::is_empty")]
    pub usernames: AllowDeny,
    /// Credentials the proxy checks itself: when given, a CONNECT must carry
    /// one of these user names with its password (else CONNACK 0x04, v5 0x86
    /// "bad user name or password"). When empty, credentials are left to the
    /// broker. Either way the CONNECT reaches the broker unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<MqttUser>,
    /// Topic access control of PUBLISH and SUBSCRIBE; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<MqttAcl>,
    /// PUBLISH counts and bytes by topic prefix, with a bound on the number
    /// of series; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_metrics: Option<MqttTopicMetrics>,
    /// Most MQTT 5 topic aliases a client may set when the proxy reads
    /// PUBLISH topics (`acl`, `topic_metrics`): the broker's CONNACK `Topic
    /// Alias Maximum` is lowered to it, so that the proxy can remember every
    /// alias and judge an alias-only PUBLISH by its topic.
    #[serde(default = "defaults::topic_alias_maximum")]
    pub topic_alias_maximum: u16,
}

/// Per-topic-prefix PUBLISH metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttTopicMetrics {
    /// How many leading topic levels make the label (`meters/7/temp` with
    /// 2 → `meters/7`). 1 to 16.
    #[serde(default = "defaults::topic_metric_levels")]
    pub levels: u8,
    /// Distinct prefixes counted on their own; publishes past the bound
    /// count under `#other`. 1 to 10000.
    #[serde(default = "defaults::topic_metric_series")]
    pub max_topics: u32,
}

impl Default for MqttOptions {
    fn default() -> Self {
        Self {
            max_packet_size: defaults::mqtt_max_packet_size(),
            connect_timeout: defaults::mqtt_connect_timeout(),
            keepalive_factor: defaults::mqtt_keepalive_factor(),
            publish_rate: None,
            client_ids: AllowDeny::default(),
            usernames: AllowDeny::default(),
            users: Vec::new(),
            acl: None,
            topic_metrics: None,
            topic_alias_maximum: defaults::topic_alias_maximum(),
        }
    }
}

/// PUBLISH limits of one MQTT client connection (EMQX's `messages_rate` and
/// `bytes_rate`): token buckets for messages and for PUBLISH bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttPublishRate {
    /// PUBLISH packets allowed every `per`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u32>,
    /// The refill period of `messages`.
    #[serde(default = "defaults::mqtt_rate_per")]
    pub per: Duration,
    /// PUBLISH packets that may pass at once. Default: `messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// PUBLISH bytes per second (whole packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<ByteRate>,
    /// What happens to a client over the limit.
    #[serde(default)]
    pub on_exceed: MqttRateAction,
}

/// What happens to an MQTT client over its publish rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MqttRateAction {
    /// Stop reading from the client until tokens are back (back-pressure, as EMQX does).
    #[default]
    Pause,
    /// Disconnect it (MQTT 5: DISCONNECT 0x96 "message rate too high" first).
    Disconnect,
}

/// Allow and deny lists of strings (`exact`, `prefix` or `regex` each). A
/// value on the deny list is refused; with a non-empty allow list, so is a
/// value not on it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowDeny {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<PathMatch>,
}

impl AllowDeny {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// A user the proxy knows: exactly one of `password` and `password_sha256`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttUser {
    pub username: String,
    /// The password in clear (prefer `password_sha256` in files others read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The SHA-256 of the password, 64 hex digits (`printf %s PASS | sha256sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_sha256: Option<String>,
}

/// Topic access control: rules tried in order, the first whose client and
/// action fit and whose topics cover the packet's topic decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttAcl {
    pub rules: Vec<MqttAclRule>,
    /// What happens when no rule decides.
    #[serde(default = "defaults::acl_no_match")]
    pub no_match: AclPermission,
}

/// One ACL rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttAclRule {
    pub permission: AclPermission,
    /// Which packets the rule covers.
    #[serde(default)]
    pub action: AclAction,
    /// Clients the rule applies to, by client identifier; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<PathMatch>,
    /// Clients the rule applies to, by user name; a client without one never
    /// fits. All when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<PathMatch>,
    /// Topic filters (`+` one level, `#` the rest) with the placeholders
    /// `${clientid}` and `${username}`. An `allow` rule covers a SUBSCRIBE
    /// filter only when every topic the filter can match is covered; a `deny`
    /// rule covers it when any topic is.
    pub topics: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AclPermission {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AclAction {
    Publish,
    Subscribe,
    /// Both PUBLISH and SUBSCRIBE.
    #[default]
    All,
}

/// One level of a topic filter in an ACL rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterLevel {
    /// `+`: any one level.
    AnyLevel,
    /// `#`: this level and every one below (the last level only).
    Rest,
    /// Text with at most one placeholder: `prefix ${…} suffix`.
    Text { prefix: String, placeholder: Option<Placeholder>, suffix: String },
}

/// A value of the connecting client substituted into a topic filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholder {
    ClientId,
    Username,
}

/// Parses an ACL topic filter into its levels.
pub fn parse_topic_filter(filter: &str) -> Result<Vec<FilterLevel>, String> {
    if filter.is_empty() {
        return Err("empty topic filter".into());
    }
    if filter.len() > usize::from(u16::MAX) {
        return Err("topic filter longer than 65535 bytes".into());
    }
    if filter.contains('\0') {
        return Err(format!("{filter:?}: NUL in a topic filter"));
    }
    let count = filter.split('/').count();
    filter
        .split('/')
        .enumerate()
        .map(|(index, level)| match level {
            "+" => Ok(FilterLevel::AnyLevel),
            "#" if index + 1 == count => Ok(FilterLevel::Rest),
            "#" => Err(format!("{filter:?}: '#' must be the last level")),
            _ if level.contains(['+', '#']) => Err(format!("{filter:?}: '+' and '#' must fill a whole level")),
            _ => text_level(filter, level),
        })
        .collect()
}

fn text_level(filter: &str, level: &str) -> Result<FilterLevel, String> {
    let Some(start) = level.find("${") else {
        return Ok(FilterLevel::Text { prefix: level.into(), placeholder: None, suffix: String::new() });
    };
    let end = level[start..].find('}').map(|i| start + i).ok_or_else(|| format!("{filter:?}: unclosed \"${{\""))?;
    let placeholder = match &level[start + 2..end] {
        "clientid" => Placeholder::ClientId,
        "username" => Placeholder::Username,
        other => {
            return Err(format!("{filter:?}: unknown placeholder ${{{other}}} (use ${{clientid}} or ${{username}})"))
        }
    };
    let suffix = &level[end + 1..];
    if suffix.contains("${") {
        return Err(format!("{filter:?}: at most one placeholder per level"));
    }
    Ok(FilterLevel::Text { prefix: level[..start].into(), placeholder: Some(placeholder), suffix: suffix.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters() {
        let text = |s: &str| FilterLevel::Text { prefix: s.into(), placeholder: None, suffix: String::new() };
        assert_eq!(parse_topic_filter("a/+/#").unwrap(), [text("a"), FilterLevel::AnyLevel, FilterLevel::Rest]);
        assert_eq!(parse_topic_filter("/").unwrap(), [text(""), text("")]);
        assert_eq!(
            parse_topic_filter("d/dev-${clientid}.x").unwrap()[1],
            FilterLevel::Text { prefix: "dev-".into(), placeholder: Some(Placeholder::ClientId), suffix: ".x".into() }
        );
        for bad in ["", "a/#/b", "a+/b", "a/b#", "x/${user}", "x/${clientid", "x/${clientid}${username}", "a\0"] {
            assert!(parse_topic_filter(bad).is_err(), "{bad:?} accepted");
        }
    }
}
