//! ACL topic filters, compiled once per config: matching a PUBLISH topic,
//! and relating a SUBSCRIBE filter to a rule's filter (covered by it, or
//! sharing any topic with it). Placeholders take the connecting client's
//! values, read at match time, so nothing is built per connection.

use config_model::{FilterLevel, Placeholder};

/// The connecting client, as placeholders see it.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

impl Client<'_> {
    /// A value usable inside one topic level. A client id such as `a/b` or
    /// `#` could otherwise widen a rule, so such values match nothing (as in
    /// mosquitto's pattern ACLs).
    fn value(&self, placeholder: Placeholder) -> Option<&[u8]> {
        let value = match placeholder {
            Placeholder::ClientId => self.client_id,
            Placeholder::Username => self.username?,
        };
        (!value.is_empty() && !value.contains(['/', '+', '#'])).then_some(value.as_bytes())
    }
}

#[derive(Debug)]
enum Level {
    Any,
    Rest,
    Text { prefix: Box<[u8]>, placeholder: Option<Placeholder>, suffix: Box<[u8]> },
}

impl Level {
    /// Whether a literal topic level equals this one (a text level).
    fn equals(&self, level: &[u8], client: &Client) -> bool {
        let Level::Text { prefix, placeholder, suffix } = self else { return false };
        let Some(placeholder) = placeholder else { return level == &**prefix };
        let Some(value) = client.value(*placeholder) else { return false };
        level.len() == prefix.len() + value.len() + suffix.len()
            && level.starts_with(prefix)
            && level.ends_with(suffix)
            && &level[prefix.len()..level.len() - suffix.len()] == value
    }

    fn is_wildcard(&self) -> bool {
        !matches!(self, Level::Text { .. })
    }
}

/// A rule's topic filter.
#[derive(Debug)]
pub struct TopicFilter {
    levels: Box<[Level]>,
}

/// A level of a client's topic or SUBSCRIBE filter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Theirs<'a> {
    AnyLevel,
    Rest,
    Text(&'a [u8]),
}

fn their_levels(filter: &[u8]) -> impl Iterator<Item = Theirs<'_>> {
    filter.split(|&b| b == b'/').map(|level| match level {
        b"+" => Theirs::AnyLevel,
        b"#" => Theirs::Rest,
        text => Theirs::Text(text),
    })
}

/// Topics starting with `$` (`$SYS/...`) are not matched by a filter whose
/// first level is a wildcard (MQTT 4.7.2).
fn is_system(first: &[u8]) -> bool {
    first.first() == Some(&b'$')
}

impl TopicFilter {
    pub fn compile(filter: &str) -> Result<Self, String> {
        let levels = config_model::parse_topic_filter(filter)?
            .into_iter()
            .map(|level| match level {
                FilterLevel::AnyLevel => Level::Any,
                FilterLevel::Rest => Level::Rest,
                FilterLevel::Text { prefix, placeholder, suffix } => {
                    Level::Text { prefix: prefix.into_bytes().into(), placeholder, suffix: suffix.into_bytes().into() }
                }
            })
            .collect();
        Ok(TopicFilter { levels })
    }

    /// Whether a PUBLISH topic (no wildcards) matches the filter.
    pub fn matches_topic(&self, topic: &[u8], client: &Client) -> bool {
        let mut theirs = topic.split(|&b| b == b'/');
        for (index, ours) in self.levels.iter().enumerate() {
            let level = theirs.next();
            if index == 0 && ours.is_wildcard() && level.is_some_and(is_system) {
                return false;
            }
            match (ours, level) {
                // `a/#` matches `a` too.
                (Level::Rest, _) => return true,
                (_, None) => return false,
                (Level::Any, Some(_)) => {}
                (text, Some(level)) if text.equals(level, client) => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }

    /// Whether every topic a SUBSCRIBE filter can match is matched by this
    /// filter (what an `allow` rule needs).
    pub fn covers(&self, filter: &[u8], client: &Client) -> bool {
        let mut theirs = their_levels(filter);
        for (index, ours) in self.levels.iter().enumerate() {
            let level = theirs.next();
            if index == 0 && ours.is_wildcard() {
                if let Some(Theirs::Text(first)) = level {
                    if is_system(first) {
                        return false;
                    }
                }
            }
            match (ours, level) {
                (Level::Rest, _) => return true,
                (_, None) => return false,
                // Theirs reaches below what ours allows.
                (_, Some(Theirs::Rest)) => return false,
                (Level::Any, Some(_)) => {}
                (_, Some(Theirs::AnyLevel)) => return false,
                (text, Some(Theirs::Text(level))) if text.equals(level, client) => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }

    /// Whether some topic is matched by both this filter and a SUBSCRIBE
    /// filter (what a `deny` rule needs: a subscription to `#` must not
    /// slip past a deny of `secret/#`).
    pub fn overlaps(&self, filter: &[u8], client: &Client) -> bool {
        let mut theirs = their_levels(filter);
        for (index, ours) in self.levels.iter().enumerate() {
            let level = theirs.next();
            if index == 0 {
                let our_system = match ours {
                    Level::Text { prefix, placeholder: None, .. } => is_system(prefix),
                    _ => false,
                };
                let their_system = matches!(level, Some(Theirs::Text(first)) if is_system(first));
                let their_wild = matches!(level, Some(Theirs::AnyLevel | Theirs::Rest));
                if (ours.is_wildcard() && their_system) || (our_system && their_wild) {
                    return false;
                }
            }
            match (ours, level) {
                (Level::Rest, _) | (_, Some(Theirs::Rest)) => return true,
                (_, None) => return false,
                (Level::Any, Some(_)) | (_, Some(Theirs::AnyLevel)) => {}
                (text, Some(Theirs::Text(level))) if text.equals(level, client) => {}
                _ => return false,
            }
        }
        // Ours ended: theirs must end too, or go on only with `#` (which
        // also matches the parent level).
        matches!(theirs.next(), None | Some(Theirs::Rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Client = Client { client_id: "dev-1", username: Some("alice") };

    fn filter(f: &str) -> TopicFilter {
        TopicFilter::compile(f).unwrap()
    }

    #[test]
    fn topics() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "x", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("d/${clientid}/#", "d/dev-1/t", true),
            ("d/${clientid}/#", "d/dev-2/t", false),
            ("u/${username}", "u/alice", true),
            ("u/x-${username}-y", "u/x-alice-y", true),
            ("u/x-${username}-y", "u/x-alic-y", false),
        ];
        for (ours, topic, expected) in cases {
            assert_eq!(filter(ours).matches_topic(topic.as_bytes(), &ALICE), expected, "{ours} vs {topic}");
        }
        let anonymous = Client { client_id: "a/b", username: None };
        assert!(!filter("u/${username}").matches_topic(b"u/", &anonymous));
        // A client id with a `/` cannot reach `d/a/b`.
        assert!(!filter("d/${clientid}").matches_topic(b"d/a/b", &anonymous));
    }

    #[test]
    fn subscriptions() {
        // (rule, subscription, covered, overlapping)
        let cases = [
            ("a/#", "a/b", true, true),
            ("a/#", "a/#", true, true),
            ("a/#", "#", false, true),
            ("a/+", "a/b", true, true),
            ("a/+", "a/+", true, true),
            ("a/+", "a/#", false, true),
            ("a/b", "a/+", false, true),
            ("a/b", "a/#", false, true),
            ("a/b", "+/c", false, false),
            ("a/b", "a/b/c", false, false),
            ("a/b", "a/b/#", false, true),
            ("secret/#", "#", false, true),
            ("secret/#", "+/x", false, true),
            ("secret/#", "public/#", false, false),
            ("#", "$SYS/#", false, false),
            ("$SYS/#", "#", false, false),
            ("$SYS/#", "$SYS/+", true, true),
            ("d/${clientid}/#", "d/dev-1/+", true, true),
            ("d/${clientid}/#", "d/+/x", false, true),
            ("d/${clientid}/#", "d/dev-2/x", false, false),
        ];
        for (ours, theirs, covered, overlapping) in cases {
            let f = filter(ours);
            assert_eq!(f.covers(theirs.as_bytes(), &ALICE), covered, "{ours} covers {theirs}");
            assert_eq!(f.overlaps(theirs.as_bytes(), &ALICE), overlapping, "{ours} overlaps {theirs}");
        }
    }
}
