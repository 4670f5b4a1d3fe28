//! Who may connect (client-id and user-name lists, the proxy's own user
//! list) and what they may publish and subscribe to (topic ACLs), compiled
//! with the listener.

use sha2::{Digest, Sha256};

use super::connect::refusal;
use super::topic::{Client, TopicFilter};
use crate::route::matcher::{MqttMatcher, PathMatcher};

/// A listener's MQTT access settings, compiled.
#[derive(Debug, Default)]
pub struct Access {
    client_ids: Lists,
    usernames: Lists,
    /// (user name, SHA-256 of the password), when the proxy checks credentials.
    users: Vec<(Box<str>, [u8; 32])>,
    pub acl: Option<Acl>,
}

#[derive(Debug, Default)]
struct Lists {
    allow: Vec<PathMatcher>,
    deny: Vec<PathMatcher>,
}

impl Lists {
    fn compile(path: &str, lists: &config_model::AllowDeny) -> Result<Self, String> {
        let compile = |list: &str, entries: &[config_model::PathMatch]| {
            entries
                .iter()
                .enumerate()
                .map(|(i, entry)| PathMatcher::compile(entry).map_err(|e| format!("{path}.{list}[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Lists { allow: compile("allow", &lists.allow)?, deny: compile("deny", &lists.deny)? })
    }

    /// `None` (no value) passes only when there is no allow list.
    fn admits(&self, value: Option<&str>) -> bool {
        match value {
            Some(value) => {
                !self.deny.iter().any(|m| m.matches(value))
                    && (self.allow.is_empty() || self.allow.iter().any(|m| m.matches(value)))
            }
            None => self.allow.is_empty(),
        }
    }
}

/// Why a CONNECT is refused by access settings: the CONNACK codes
/// `(v3, v5)` and the rejection metric's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub codes: (u8, u8),
    pub reason: &'static str,
}

impl Access {
    pub fn compile(path: &str, options: &config_model::MqttOptions) -> Result<Self, String> {
        let users = options
            .users
            .iter()
            .enumerate()
            .map(|(i, user)| {
                let digest = match (&user.password, &user.password_sha256) {
                    (Some(password), None) => Sha256::digest(password.as_bytes()).into(),
                    (None, Some(hex)) => {
                        decode_hex(hex).ok_or_else(|| format!("{path}.users[{i}]: bad password_sha256"))?
                    }
                    _ => return Err(format!("{path}.users[{i}]: needs exactly one of password and password_sha256")),
                };
                Ok((user.username.as_str().into(), digest))
            })
            .collect::<Result<_, String>>()?;
        Ok(Access {
            client_ids: Lists::compile(&format!("{path}.client_ids"), &options.client_ids)?,
            usernames: Lists::compile(&format!("{path}.usernames"), &options.usernames)?,
            users,
            acl: options.acl.as_ref().map(|acl| Acl::compile(&format!("{path}.acl"), acl)).transpose()?,
        })
    }

    /// Checks a CONNECT's identity and credentials.
    pub fn admit(&self, client_id: &str, username: Option<&str>, password: Option<&[u8]>) -> Result<(), Refused> {
        if !self.client_ids.admits(Some(client_id)) {
            return Err(Refused { codes: (0x02, 0x85), reason: "client_id_denied" });
        }
        if !self.users.is_empty() {
            let known = username.and_then(|name| self.users.iter().find(|(user, _)| **user == *name));
            let matches = match (known, password) {
                (Some((_, digest)), Some(password)) => same(&Sha256::digest(password).into(), digest),
                _ => false,
            };
            if !matches {
                return Err(Refused { codes: refusal::BAD_CREDENTIALS, reason: "bad_credentials" });
            }
        }
        if !self.usernames.admits(username) {
            return Err(Refused { codes: refusal::NOT_AUTHORIZED, reason: "username_denied" });
        }
        Ok(())
    }
}

/// Compares digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Topic rules, first decisive rule wins.
#[derive(Debug)]
pub struct Acl {
    rules: Vec<Rule>,
    no_match_allows: bool,
}

#[derive(Debug)]
struct Rule {
    allow: bool,
    publish: bool,
    subscribe: bool,
    clients: MqttMatcher,
    topics: Vec<TopicFilter>,
}

impl Acl {
    fn compile(path: &str, acl: &config_model::MqttAcl) -> Result<Self, String> {
        use config_model::{AclAction, AclPermission};
        let rules = acl
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let p = format!("{path}.rules[{i}]");
                let matcher = |field: &str, criterion: &Option<config_model::PathMatch>| {
                    criterion
                        .as_ref()
                        .map(|c| PathMatcher::compile(c).map_err(|e| format!("{p}.{field}: {e}")))
                        .transpose()
                };
                Ok(Rule {
                    allow: rule.permission == AclPermission::Allow,
                    publish: rule.action != AclAction::Subscribe,
                    subscribe: rule.action != AclAction::Publish,
                    clients: MqttMatcher {
                        client_id: matcher("client_id", &rule.client_id)?,
                        username: matcher("username", &rule.username)?,
                    },
                    topics: rule
                        .topics
                        .iter()
                        .enumerate()
                        .map(|(t, topic)| TopicFilter::compile(topic).map_err(|e| format!("{p}.topics[{t}]: {e}")))
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Acl { rules, no_match_allows: acl.no_match == AclPermission::Allow })
    }

    /// The rules that apply to one client, found once at CONNECT so that a
    /// packet's check never evaluates client patterns.
    pub fn for_client<'a>(&'a self, client: Client<'a>) -> ClientAcl<'a> {
        let rules: Vec<&Rule> =
            self.rules.iter().filter(|rule| rule.clients.matches(client.client_id, client.username)).collect();
        let checks_publish = !self.no_match_allows || rules.iter().any(|rule| rule.publish);
        let checks_subscribe = !self.no_match_allows || rules.iter().any(|rule| rule.subscribe);
        ClientAcl { rules, client, no_match_allows: self.no_match_allows, checks_publish, checks_subscribe }
    }
}

/// The ACL as it applies to one connected client.
pub struct ClientAcl<'a> {
    rules: Vec<&'a Rule>,
    client: Client<'a>,
    no_match_allows: bool,
    /// Whether PUBLISH packets need looking at (else they pass unread).
    pub checks_publish: bool,
    pub checks_subscribe: bool,
}

impl ClientAcl<'_> {
    pub fn may_publish(&self, topic: &[u8]) -> bool {
        self.rules
            .iter()
            .filter(|rule| rule.publish)
            .find(|rule| rule.topics.iter().any(|filter| filter.matches_topic(topic, &self.client)))
            .map_or(self.no_match_allows, |rule| rule.allow)
    }

    /// A subscription is allowed by an `allow` rule covering the whole
    /// filter and refused by a `deny` rule sharing any topic with it.
    /// Shared subscriptions (`$share/group/filter`) are judged by `filter`.
    pub fn may_subscribe(&self, filter: &[u8]) -> bool {
        let filter = shared_subscription_filter(filter);
        self.rules
            .iter()
            .filter(|rule| rule.subscribe)
            .find(|rule| {
                rule.topics.iter().any(|ours| {
                    if rule.allow {
                        ours.covers(filter, &self.client)
                    } else {
                        ours.overlaps(filter, &self.client)
                    }
                })
            })
            .map_or(self.no_match_allows, |rule| rule.allow)
    }
}

fn shared_subscription_filter(filter: &[u8]) -> &[u8] {
    let Some(rest) = filter.strip_prefix(b"$share/") else { return filter };
    match rest.iter().position(|&b| b == b'/') {
        Some(slash) => &rest[slash + 1..],
        None => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(json: &str) -> config_model::MqttOptions {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn identities_and_credentials() {
        let access = Access::compile(
            "mqtt",
            &options(
                r#"{
                "client_ids": { "deny": [ { "prefix": "bad-" } ] },
                "usernames": { "allow": [ { "regex": "meter|admin" } ] },
                "users": [
                    { "username": "meter", "password": "s3cret" },
                    { "username": "admin", "password_sha256": "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b" }
                ] }"#,
            ),
        )
        .unwrap();
        assert_eq!(access.admit("dev", Some("meter"), Some(b"s3cret")), Ok(()));
        // sha256("secret")
        assert_eq!(access.admit("dev", Some("admin"), Some(b"secret")), Ok(()));
        assert_eq!(access.admit("bad-1", Some("meter"), Some(b"s3cret")).unwrap_err().reason, "client_id_denied");
        assert_eq!(access.admit("dev", Some("meter"), Some(b"nope")).unwrap_err().reason, "bad_credentials");
        assert_eq!(access.admit("dev", Some("meter"), None).unwrap_err().reason, "bad_credentials");
        assert_eq!(access.admit("dev", None, None).unwrap_err().codes, refusal::BAD_CREDENTIALS);

        let names_only =
            Access::compile("mqtt", &options(r#"{ "usernames": { "allow": [ { "exact": "meter" } ] } }"#)).unwrap();
        assert_eq!(names_only.admit("dev", None, None).unwrap_err().codes, refusal::NOT_AUTHORIZED);
        assert_eq!(names_only.admit("dev", Some("meter"), None), Ok(()));
    }

    #[test]
    fn acl_rules() {
        let access = Access::compile(
            "mqtt",
            &options(
                r#"{ "acl": {
                "no_match": "deny",
                "rules": [
                    { "permission": "deny", "topics": ["secret/#"] },
                    { "permission": "allow", "action": "publish", "topics": ["devices/${clientid}/#"] },
                    { "permission": "allow", "action": "subscribe", "username": { "exact": "ops" }, "topics": ["devices/#"] },
                    { "permission": "allow", "action": "subscribe", "topics": ["devices/${clientid}/cmd", "public/#"] }
                ] } }"#,
            ),
        )
        .unwrap();
        let acl = access.acl.as_ref().unwrap();
        let device = acl.for_client(Client { client_id: "d1", username: None });
        assert!(device.may_publish(b"devices/d1/temp"));
        assert!(!device.may_publish(b"devices/d2/temp"));
        assert!(!device.may_publish(b"secret/x"));
        assert!(!device.may_publish(b"public/x"), "subscribe-only rule allowed a publish");
        assert!(device.may_subscribe(b"devices/d1/cmd"));
        assert!(device.may_subscribe(b"public/+/x"));
        assert!(device.may_subscribe(b"$share/g/public/x"));
        assert!(!device.may_subscribe(b"devices/+/cmd"));
        assert!(!device.may_subscribe(b"#"), "# overlaps the denied secret/#");
        let ops = acl.for_client(Client { client_id: "o", username: Some("ops") });
        assert!(ops.may_subscribe(b"devices/#"));
        assert!(!ops.may_subscribe(b"+/#"));
        assert!(ops.checks_publish && ops.checks_subscribe);
    }
}
