//! Policy decoding of client and broker packets: PUBLISH and SUBSCRIBE
//! fields, ACL verdicts on them, a SUBSCRIBE rebuilt with some filters
//! taken out, SUBACK merging and the CONNACK alias cap must never panic,
//! and a rebuilt SUBSCRIBE must decode again with the filters kept.
#![no_main]

use std::sync::OnceLock;

use edgeplane::mqtt::access::Access;
use edgeplane::mqtt::frame::{check_client_packet, kind, packet_len};
use edgeplane::mqtt::packet::{self, Subscribe};
use edgeplane::mqtt::topic::Client;
use libfuzzer_sys::fuzz_target;

const MAX: u32 = 4096;

fn access() -> &'static Access {
    static ACCESS: OnceLock<Access> = OnceLock::new();
    ACCESS.get_or_init(|| {
        let options: config_model::MqttOptions = serde_json::from_str(
            r#"{ "acl": { "no_match": "deny", "rules": [
                { "permission": "deny", "topics": ["secret/#", "+/private"] },
                { "permission": "allow", "action": "publish", "topics": ["d/${clientid}/#", "u/x-${username}-y/+"] },
                { "permission": "allow", "action": "subscribe", "topics": ["d/#", "$SYS/+", "a/+/c"] }
            ] } }"#,
        )
        .expect("fuzz ACL");
        Access::compile("fuzz", &options).expect("fuzz ACL compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let v5 = data.first().is_some_and(|b| b & 1 == 1);
    let acl = access().acl.as_ref().expect("acl").for_client(Client { client_id: "c1", username: Some("u") });
    let mut rest = data.get(1..).unwrap_or_default();
    while let Ok(Some(len)) = packet_len(rest, MAX) {
        if rest.len() < len {
            break;
        }
        let bytes = &rest[..len];
        // Broker-side handling takes any packet shape.
        let _ = packet::merge_suback(bytes, v5, &[None, Some(0x87), None]);
        let _ = packet::cap_topic_alias_maximum(&mut bytes.to_vec(), 4);
        match check_client_packet(bytes, v5) {
            Ok(kind::PUBLISH) => {
                if let Ok(publish) = packet::publish(bytes, v5) {
                    assert!(publish.topic.len() < len);
                    let _ = acl.may_publish(publish.topic);
                }
            }
            Ok(kind::SUBSCRIBE) => {
                if let Ok(subscribe) = Subscribe::parse(bytes, v5) {
                    let keep: Vec<bool> = subscribe.filters().map(|filter| acl.may_subscribe(filter)).collect();
                    let kept: Vec<&[u8]> =
                        subscribe.filters().zip(&keep).filter(|(_, k)| **k).map(|(f, _)| f).collect();
                    if !kept.is_empty() {
                        let rebuilt = subscribe.keeping(&keep);
                        let again = Subscribe::parse(&rebuilt, v5).expect("a rebuilt SUBSCRIBE decodes");
                        assert_eq!(again.filters().collect::<Vec<_>>(), kept);
                    }
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
        rest = &rest[len..];
    }
});
