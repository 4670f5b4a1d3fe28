//! MQTT access control through the proxy, against a real mosquitto broker:
//! client-id and user-name lists and the proxy's own user list (CONNACK
//! codes on 3.1.1 and 5), topic ACLs for PUBLISH and SUBSCRIBE with
//! placeholders (mosquitto_pub/sub and raw packets for the exact codes),
//! a partly refused SUBSCRIBE, and MQTT 5 topic aliases, which must not
//! let an alias-only PUBLISH past the ACL.
//!
//! What reached the broker is read from the broker directly (retained
//! messages, or a subscriber connected straight to it).

use std::net::SocketAddr;

use edgeplane_tests::harness::{guard, TestProxy};
use edgeplane_tests::mqtt_wire::*;
use edgeplane_tests::upstream::{publish, retained_on, try_publish, ClientOptions, Mosquitto, MqttVersion, Subscriber};
use tokio::io::AsyncWriteExt;

/// sha256("s3cret")
const S3CRET_SHA256: &str = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";

/// Devices publish under their own id; `ops` may read every device; nobody
/// touches `secret/`; anything else is refused.
const ACL: &str = r#"    mqtt:
      topic_alias_maximum: 4
      acl:
        no_match: deny
        rules:
          - { permission: deny, topics: ["secret/#"] }
          - { permission: allow, action: publish, topics: ["devices/${clientid}/#"] }
          - { permission: allow, action: subscribe, username: { exact: ops }, topics: ["devices/#"] }
          - { permission: allow, action: subscribe, topics: ["devices/${clientid}/cmd"] }
"#;

fn acl_proxy(broker: &Mosquitto) -> TestProxy {
    one_broker_proxy("mqtt", ACL, broker.addr())
}

async fn rejections(proxy: &TestProxy, reason: &str) -> f64 {
    proxy.metric("edgeplane_mqtt_rejections_total", &[("listener", "mqtt"), ("reason", reason)]).await.unwrap_or(0.0)
}

/// The broker's retained messages under `devices/` and `secret/`.
async fn retained(broker: SocketAddr) -> Vec<(String, String)> {
    let mut all = retained_on(broker, "devices").await;
    all.extend(retained_on(broker, "secret").await);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_acl_with_mosquitto_pub() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = acl_proxy(&broker);
        let addr = proxy.addr("mqtt");
        for version in MqttVersion::ALL {
            let device = ClientOptions::default().version(version).id("d1");
            // Its own topic: delivered.
            publish(addr, &device, &format!("devices/d1/{}", version.arg()), "ok", true).await;
            // QoS 0 to another device's topic: dropped without a word.
            publish(addr, &device, &format!("devices/d2/{}", version.arg()), "stolen", true).await;
        }
        // MQTT 5 QoS 1: refused with PUBACK 0x87, which mosquitto_pub reports.
        let v5 = ClientOptions::default().version(MqttVersion::V5).id("d1").qos(1);
        let refused = try_publish(addr, &v5, "secret/x", "leak", true).await;
        let said = format!("{}{}", refused.stdout, refused.stderr);
        assert!(said.contains("Not authorized") || said.contains("not authorized"), "mosquitto_pub said: {said}");
        publish(addr, &v5, "devices/d1/q1", "ok", true).await;

        let expected: Vec<(String, String)> =
            ["devices/d1/mqttv31", "devices/d1/mqttv311", "devices/d1/mqttv5", "devices/d1/q1"]
                .iter()
                .map(|topic| ((*topic).to_owned(), "ok".to_owned()))
                .collect();
        assert_eq!(retained(broker.addr()).await, expected);
        assert_eq!(rejections(&proxy, "publish_denied").await, 4.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_qos1_publish_closes_a_v311_connection() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = acl_proxy(&broker);
        let addr = proxy.addr("mqtt");
        // MQTT 3.1.1 cannot refuse a QoS 1 PUBLISH: the good one before it
        // is delivered, then the connection is closed. The broker's PUBACK
        // for the first may or may not make it before the close; none for
        // the second ever comes.
        let mut bytes = publish_qos("devices/d1/before", b"ok", 1, 1, None);
        bytes[0] |= 0x01; // retain
        let mut denied = publish_qos("devices/d2/x", b"no", 1, 2, None);
        denied[0] |= 0x01;
        bytes.extend_from_slice(&denied);
        let received = after_connect(addr, 4, "d1", &bytes).await;
        assert!(
            [0x40, 0x02, 0x00, 0x01].starts_with(&received),
            "only the first PUBLISH may be acknowledged: {received:02x?}"
        );
        assert_eq!(retained(broker.addr()).await, [("devices/d1/before".to_owned(), "ok".to_owned())]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_acl_with_mosquitto_sub() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = acl_proxy(&broker);
        let addr = proxy.addr("mqtt");
        for (version, code) in [(MqttVersion::V311, "128"), (MqttVersion::V5, "135")] {
            // Another device's commands: refused (v3.1.1 0x80, v5 0x87);
            // mosquitto_sub prints the code it got (its debug line, on
            // stdout, which is whole once it exits) and gives up.
            let refused_line = format!("Subscribed (mid: 1): {code}");
            let options = ClientOptions::default().version(version).id("d1");
            let mut refused = Subscriber::start(addr, &options, "devices/d2/cmd", &[]).await;
            refused.wait_exit(LIMIT).await;
            assert!(refused.output().contains(&refused_line), "{version:?}: {}", refused.output());
            // `#` overlaps the denied `secret/#`; ops' `devices/#` does not
            // cover it either.
            let ops = ClientOptions::default().version(version).id("o1").user("ops");
            let mut everything = Subscriber::start(addr, &ops, "#", &[]).await;
            everything.wait_exit(LIMIT).await;
            assert!(everything.output().contains(&refused_line), "{version:?}: {}", everything.output());
        }
        // Allowed subscriptions receive what an allowed publisher sends.
        let ops = ClientOptions::default().version(MqttVersion::V5).id("o1").user("ops");
        let mut reader = Subscriber::start(addr, &ops, "devices/+/temp", &["-C", "1"]).await;
        let mut own = Subscriber::start(addr, &ClientOptions::default().id("d7"), "devices/d7/cmd", &["-C", "1"]).await;
        publish(addr, &ClientOptions::default().id("d1"), "devices/d1/temp", "21.5", false).await;
        publish(broker.addr(), &ClientOptions::default(), "devices/d7/cmd", "reboot", false).await;
        assert_eq!(reader.wait_messages(1, LIMIT).await[0].payload, "21.5");
        assert_eq!(own.wait_messages(1, LIMIT).await[0].payload, "reboot");
        reader.wait_exit(LIMIT).await;
        own.wait_exit(LIMIT).await;
        assert_eq!(rejections(&proxy, "subscribe_denied").await, 4.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_refused_subscribe_gets_a_merged_suback() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = acl_proxy(&broker);
        let addr = proxy.addr("mqtt");
        for (level, refused) in [(4u8, 0x80u8), (5, 0x87)] {
            let (mut stream, _) = connect_as(addr, &connect_packet_as(level, "d3", 60, Some("ops"), None)).await;
            let filters = [("secret/a", 1), ("devices/d3/cmd", 1), ("devices/d9/#", 0), ("other", 0)];
            stream.write_all(&subscribe_packet(9, &filters, level == 5)).await.unwrap();
            let suback = read_packet(&mut stream).await;
            let mut expected = vec![0x90, 0, 0, 9];
            if level == 5 {
                expected.push(0);
            }
            expected.extend_from_slice(&[refused, 0x01, 0x00, refused]);
            expected[1] = (expected.len() - 2) as u8;
            assert_eq!(suback, expected, "level {level}");
            // The granted subscription works: a PUBLISH from the broker side
            // arrives, and a PINGREQ still gets its PINGRESP in order.
            publish(broker.addr(), &ClientOptions::default(), "devices/d3/cmd", "go", false).await;
            let message = read_packet(&mut stream).await;
            assert_eq!(message[0] >> 4, 3, "not a PUBLISH: {message:02x?}");
            assert!(message.ends_with(b"go"));
            stream.write_all(&[0xc0, 0x00]).await.unwrap();
            assert_eq!(read_packet(&mut stream).await, [0xd0, 0x00]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_subscriptions_refused_whole_get_a_proxy_suback() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = acl_proxy(&broker);
        let addr = proxy.addr("mqtt");
        let mut stream = connected(addr, 4, "d4").await;
        stream.write_all(&subscribe_packet(3, &[("secret/#", 0), ("x", 1)], false)).await.unwrap();
        assert_eq!(read_packet(&mut stream).await, [0x90, 0x04, 0x00, 0x03, 0x80, 0x80]);
        // MQTT 3.1 has no failure code: the connection is closed.
        let closed = after_connect(addr, 3, "d4", &subscribe_packet(4, &[("secret/#", 0)], false)).await;
        assert!(closed.is_empty(), "MQTT 3.1 got {closed:02x?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_cannot_bypass_the_acl() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = acl_proxy(&broker);
        let addr = proxy.addr("mqtt");
        let (mut stream, connack) = connect_as(addr, &connect_packet(5, "d5", 60)).await;
        // mosquitto offers 10 aliases; the proxy lowers it to its 4.
        let alias_max = connack.windows(3).find(|w| w[0] == 0x22).map(|w| u16::from_be_bytes([w[1], w[2]]));
        assert_eq!(alias_max, Some(4), "CONNACK {connack:02x?}");

        // Alias 1 = an allowed topic, alias 2 = a denied one (refused: 0x87).
        let set_allowed = publish_qos("devices/d5/a", b"one", 1, 1, Some(&topic_alias(1)));
        let set_denied = publish_qos("secret/b", b"two", 1, 2, Some(&topic_alias(2)));
        // Alias-only uses of both.
        let use_allowed = publish_qos("", b"three", 1, 3, Some(&topic_alias(1)));
        let use_denied = publish_qos("", b"four", 1, 4, Some(&topic_alias(2)));
        let mut watcher = Subscriber::start(broker.addr(), &ClientOptions::default().qos(1), "#", &["-C", "2"]).await;
        for packet in [set_allowed, set_denied, use_allowed, use_denied] {
            stream.write_all(&packet).await.unwrap();
        }
        let mut acks = Vec::new();
        for _ in 0..4 {
            acks.push(read_packet(&mut stream).await);
        }
        // Broker PUBACKs for 1 and 3 (reason omitted or success), the
        // proxy's refusals for 2 and 4.
        let mut ids_and_reasons: Vec<(u8, u8)> = acks.iter().map(|a| (a[3], a.get(4).copied().unwrap_or(0))).collect();
        ids_and_reasons.sort();
        assert_eq!(ids_and_reasons, [(1, 0), (2, 0x87), (3, 0), (4, 0x87)], "{acks:02x?}");
        let seen = watcher.wait_messages(2, LIMIT).await;
        watcher.wait_exit(LIMIT).await;
        let payloads: Vec<&str> = seen.iter().map(|m| m.payload.as_str()).collect();
        assert_eq!(payloads, ["one", "three"]);
        assert!(seen.iter().all(|m| m.topic == "devices/d5/a"), "{seen:?}");

        // An alias beyond the maximum, or one never set, ends the connection
        // with DISCONNECT 0x94 "topic alias invalid".
        let beyond = publish_qos("devices/d5/a", b"x", 0, 0, Some(&topic_alias(5)));
        stream.write_all(&beyond).await.unwrap();
        assert_eq!(read_to_close(&mut stream).await, [0xe0, 0x02, 0x94, 0x00]);
        let unset = publish_qos("", b"x", 0, 0, Some(&topic_alias(3)));
        assert_eq!(after_connect(addr, 5, "d6", &unset).await, [0xe0, 0x02, 0x94, 0x00]);
        assert_eq!(rejections(&proxy, "topic_alias_invalid").await, 2.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_and_credentials_are_checked_at_connect() {
    guard(async {
        let broker = Mosquitto::start().await;
        let extra = format!(
            r#"    mqtt:
      client_ids: {{ deny: [ {{ prefix: "banned-" }} ] }}
      usernames: {{ deny: [ {{ exact: mallory }} ] }}
      users:
        - {{ username: meter, password: s3cret }}
        - {{ username: mallory, password: m }}
        - {{ username: ops, password_sha256: "{S3CRET_SHA256}" }}
"#
        );
        let proxy = one_broker_proxy("mqtt", &extra, broker.addr());
        let addr = proxy.addr("mqtt");
        // (client id, user, password, v3.1.1 code, v5 reason)
        let cases = [
            ("c1", Some("meter"), Some("s3cret"), 0x00, 0x00),
            ("c2", Some("ops"), Some("s3cret"), 0x00, 0x00),
            ("c3", Some("meter"), Some("wrong"), 0x04, 0x86),
            ("c4", Some("nobody"), Some("s3cret"), 0x04, 0x86),
            ("c5", None, None, 0x04, 0x86),
            ("banned-1", Some("meter"), Some("s3cret"), 0x02, 0x85),
            ("c6", Some("mallory"), Some("m"), 0x05, 0x87),
        ];
        for (client_id, user, password, v3, v5) in cases {
            for level in [4u8, 5] {
                let (_, connack) = connect_as(addr, &connect_packet_as(level, client_id, 60, user, password)).await;
                let expected = if level == 5 { v5 } else { v3 };
                assert_eq!(connack[3], expected, "{client_id} {user:?} level {level}: {connack:02x?}");
            }
        }
        // mosquitto_pub with the right and a wrong password.
        let meter = ClientOptions::default().id("m1").user("meter");
        publish(addr, &meter.clone().password("s3cret"), "devices/m1/x", "ok", true).await;
        let refused = try_publish(addr, &meter.password("bad"), "devices/m1/y", "no", true).await;
        assert!(!refused.success(), "a wrong password was accepted: {refused:?}");
        assert_eq!(retained_on(broker.addr(), "devices").await, [("devices/m1/x".to_owned(), "ok".to_owned())]);
        assert_eq!(
            proxy
                .metric("edgeplane_mqtt_rejections_total", &[("listener", "mqtt"), ("reason", "bad_credentials")])
                .await,
            Some(7.0)
        );
    })
    .await;
}
