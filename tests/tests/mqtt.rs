//! MQTT through the proxy, with real mosquitto brokers and the mosquitto
//! command-line clients: QoS 0/1/2 on MQTT 3.1, 3.1.1 and 5, retained and
//! will messages, routing by client id and user name, stickiness by client
//! id, broker failover at connect, refusal of bad input (raw sockets with
//! hand-built packets), keep-alive enforcement and CONNECT detection on
//! `auto` listeners.
//!
//! Where a message landed is read from each broker directly (its retained
//! messages). Subscribers are known to be subscribed once their SUBACK shows
//! in their debug output; nothing sleeps to synchronise.

use std::net::SocketAddr;
use std::time::Duration;

use edgeplane_tests::harness::{guard, TestProxy};
use edgeplane_tests::mqtt_wire::*;
use edgeplane_tests::upstream::{
    publish, retained_on, try_publish, ClientOptions, Message, Mosquitto, MqttStub, MqttVersion, Subscriber,
};
use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const RING_HASH: [&str; 2] = ["lb: ring_hash", "hash_on: client_id"];

/// Two brokers, and a proxy spreading clients over them by client-id hash.
async fn ring_hashed_pair() -> (Mosquitto, Mosquitto, TestProxy) {
    let (a, b) = (Mosquitto::start().await, Mosquitto::start().await);
    let proxy = TestProxy::start(&config(
        "mqtt",
        "",
        &["{ cluster: brokers }"],
        &cluster("brokers", &[a.addr(), b.addr()], &RING_HASH),
    ));
    (a, b, proxy)
}

/// A loopback port nothing listens on (bound, then closed).
fn dead_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local_addr")
}

fn opts() -> ClientOptions {
    ClientOptions::default()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = items.iter().map(|(t, p)| ((*t).to_owned(), (*p).to_owned())).collect();
    pairs.sort();
    pairs
}

/// Client connections of listener `mqtt` accepted as `protocol`.
async fn accepted(proxy: &TestProxy, protocol: &str) -> f64 {
    proxy
        .metric("edgeplane_downstream_connections_total", &[("listener", "mqtt"), ("protocol", protocol)])
        .await
        .unwrap_or(0.0)
}

const V5_DISCONNECT_MALFORMED: [u8; 4] = [0xe0, 0x02, 0x81, 0x00];

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_round_trip_on_every_version() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = one_broker_proxy("mqtt", "", broker.addr());
        let addr = proxy.addr("mqtt");
        let cases: Vec<(MqttVersion, u8)> =
            MqttVersion::ALL.iter().flat_map(|v| (0..=2).map(move |q| (*v, q))).collect();
        join_all(cases.iter().map(|&(version, qos)| async move {
            let topic = format!("rt/{}/q{qos}", version.arg());
            let options = opts().version(version).qos(qos);
            let mut subscriber = Subscriber::start(addr, &options, &topic, &["-C", "3"]).await;
            let payloads: Vec<String> = (1..=3).map(|i| format!("{}-q{qos}-message-{i}", version.arg())).collect();
            for payload in &payloads {
                publish(addr, &options, &topic, payload, false).await;
            }
            let mut received = subscriber.wait_messages(3, LIMIT).await;
            assert!(subscriber.wait_exit(LIMIT).await.success(), "{version:?} QoS {qos} subscriber failed");
            assert!(received.iter().all(|m| m.topic == topic && !m.retained), "{version:?} QoS {qos}: {received:?}");
            received.sort_by(|a, b| a.payload.cmp(&b.payload));
            let got: Vec<&str> = received.iter().map(|m| m.payload.as_str()).collect();
            assert_eq!(got, payloads, "{version:?} QoS {qos}");
        }))
        .await;
        // 9 subscribers and 27 publishers, all served as MQTT.
        assert_eq!(accepted(&proxy, "mqtt").await, 36.0);
        assert_eq!(broker.settled_connections(36).await, 36, "{:#?}", broker.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_reaches_a_later_subscriber() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = one_broker_proxy("mqtt", "", broker.addr());
        let addr = proxy.addr("mqtt");
        publish(addr, &opts().qos(1).version(MqttVersion::V5), "retained/kept", "kept payload", true).await;
        let mut subscriber = Subscriber::start(addr, &opts().qos(1), "retained/#", &["-C", "1"]).await;
        let received = subscriber.wait_messages(1, LIMIT).await;
        subscriber.wait_exit(LIMIT).await;
        assert_eq!(
            received,
            [Message { topic: "retained/kept".into(), payload: "kept payload".into(), retained: true }]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_client_dies() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = one_broker_proxy("mqtt", "", broker.addr());
        let addr = proxy.addr("mqtt");
        let watcher = Subscriber::start(addr, &opts().qos(1), "will/#", &[]).await;
        // Keep-alive 60 s: the broker would not notice the death by itself
        // within the test; only the proxy closing its connection tells it.
        let will = ["--will-topic", "will/dying", "--will-payload", "gone", "--will-qos", "1", "-k", "60"];
        let mut dying = Subscriber::start(addr, &opts().id("dying"), "alive/#", &will).await;
        assert!(watcher.messages().is_empty(), "will before the death: {:?}", watcher.messages());
        dying.kill().await;
        let received = watcher.wait_messages(1, LIMIT).await;
        assert_eq!(received, [Message { topic: "will/dying".into(), payload: "gone".into(), retained: false }]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_client_id() {
    guard(async {
        let (a, b) = (Mosquitto::start().await, Mosquitto::start().await);
        let routes = ["{ match: { client_id: { prefix: \"a-\" } }, cluster: broker-a }", "{ cluster: broker-b }"];
        let clusters = cluster("broker-a", &[a.addr()], &[]) + &cluster("broker-b", &[b.addr()], &[]);
        let proxy = TestProxy::start(&config("mqtt", "", &routes, &clusters));
        let addr = proxy.addr("mqtt");
        let clients = [
            ("a-1", MqttVersion::V311),
            ("a-2", MqttVersion::V5),
            ("a-3", MqttVersion::V31),
            ("b-1", MqttVersion::V311),
            ("xa-1", MqttVersion::V5),
            ("A-1", MqttVersion::V31),
        ];
        for (id, version) in clients {
            publish(addr, &opts().id(id).version(version).qos(1), &format!("route/{id}"), id, true).await;
        }
        assert_eq!(
            retained_on(a.addr(), "route").await,
            pairs(&[("route/a-1", "a-1"), ("route/a-2", "a-2"), ("route/a-3", "a-3")])
        );
        assert_eq!(
            retained_on(b.addr(), "route").await,
            pairs(&[("route/b-1", "b-1"), ("route/xa-1", "xa-1"), ("route/A-1", "A-1")])
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_username() {
    guard(async {
        let (a, b) = (Mosquitto::start().await, Mosquitto::start().await);
        let routes = ["{ match: { username: { exact: \"alice\" } }, cluster: broker-a }", "{ cluster: broker-b }"];
        let clusters = cluster("broker-a", &[a.addr()], &[]) + &cluster("broker-b", &[b.addr()], &[]);
        let proxy = TestProxy::start(&config("mqtt", "", &routes, &clusters));
        let addr = proxy.addr("mqtt");
        publish(addr, &opts().user("alice").qos(1), "user/alice", "alice", true).await;
        publish(addr, &opts().user("alice").version(MqttVersion::V5).qos(1), "user/alice-v5", "alice", true).await;
        publish(addr, &opts().user("alicia").qos(1), "user/alicia", "alicia", true).await;
        publish(addr, &opts().user("bob").version(MqttVersion::V5).qos(1), "user/bob", "bob", true).await;
        publish(addr, &opts().id("alice").qos(1), "user/anonymous", "nobody", true).await;
        assert_eq!(retained_on(a.addr(), "user").await, pairs(&[("user/alice", "alice"), ("user/alice-v5", "alice")]));
        assert_eq!(
            retained_on(b.addr(), "user").await,
            pairs(&[("user/alicia", "alicia"), ("user/bob", "bob"), ("user/anonymous", "nobody")])
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_refused_with_a_connack() {
    guard(async {
        let broker = Mosquitto::start().await;
        let routes = ["{ match: { client_id: { exact: \"only-me\" } }, cluster: broker }"];
        let proxy = TestProxy::start(&config("mqtt", "", &routes, &cluster("broker", &[broker.addr()], &[])));
        let addr = proxy.addr("mqtt");
        // Server unavailable: v3 return code 3, v5 reason 0x88.
        assert_eq!(exchange(addr, &connect_packet(4, "someone", 60)).await, [0x20, 0x02, 0x00, 0x03]);
        assert_eq!(exchange(addr, &connect_packet(3, "someone", 60)).await, [0x20, 0x02, 0x00, 0x03]);
        assert_eq!(exchange(addr, &connect_packet(5, "someone", 60)).await, [0x20, 0x03, 0x00, 0x88, 0x00]);
        let refused = try_publish(addr, &opts().id("someone"), "t", "x", false).await;
        assert!(!refused.success(), "a client without a route published: {refused:?}");
        publish(addr, &opts().id("only-me"), "t", "x", false).await;
        assert_eq!(broker.settled_connections(1).await, 1, "{:#?}", broker.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_on_client_id_is_sticky() {
    guard(async {
        let (a, b, proxy) = ring_hashed_pair().await;
        let addr = proxy.addr("mqtt");
        // 16 ids: the chance that all land on one broker is 2^-15.
        let ids: Vec<String> = (0..16).map(|i| format!("meter-{i}")).collect();
        join_all(ids.iter().map(|id| async move {
            let topic = format!("sticky/{id}");
            publish(addr, &opts().id(id).qos(1), &topic, "first", true).await;
            publish(addr, &opts().id(id).qos(1).version(MqttVersion::V5), &topic, "second", true).await;
        }))
        .await;
        let (on_a, on_b) = (retained_on(a.addr(), "sticky").await, retained_on(b.addr(), "sticky").await);
        for (topic, payload) in on_a.iter().chain(&on_b) {
            assert_eq!(payload, "second", "{topic}: the two connections of one client id went to different brokers");
        }
        let mut topics: Vec<&str> = on_a.iter().chain(&on_b).map(|(topic, _)| topic.as_str()).collect();
        topics.sort();
        let mut expected: Vec<String> = ids.iter().map(|id| format!("sticky/{id}")).collect();
        expected.sort();
        assert_eq!(topics, expected, "each topic on exactly one broker (A: {on_a:?}, B: {on_b:?})");
        assert!(!on_a.is_empty() && !on_b.is_empty(), "one broker got every client id (A: {on_a:?}, B: {on_b:?})");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_is_skipped_at_connect() {
    guard(async {
        let broker = Mosquitto::start().await;
        let dead = dead_port();
        let clusters = cluster("round-robin", &[dead, broker.addr()], &[])
            + &cluster("ring", &[dead, broker.addr()], &RING_HASH)
            + &cluster("all-dead", &[dead], &[]);
        let yaml = format!(
            "listeners:\n{}{}{}clusters:\n{clusters}",
            listener("rr", "round-robin"),
            listener("ring", "ring"),
            listener("none", "all-dead")
        );
        let proxy = TestProxy::start(&yaml);
        for i in 0..10 {
            publish(proxy.addr("rr"), &opts().id(&format!("rr-{i}")).qos(1), "failover/rr", "x", false).await;
        }
        // Different client ids hash to either endpoint; those on the dead
        // one must be sent to the live one.
        for i in 0..10 {
            publish(proxy.addr("ring"), &opts().id(&format!("ring-{i}")).qos(1), "failover/ring", "x", false).await;
        }
        assert_eq!(broker.settled_connections(20).await, 20, "{:#?}", broker.log());
        // No broker at all: refused with "server unavailable".
        assert_eq!(exchange(proxy.addr("none"), &connect_packet(4, "x", 60)).await, [0x20, 0x02, 0x00, 0x03]);
        assert_eq!(exchange(proxy.addr("none"), &connect_packet(5, "x", 60)).await, [0x20, 0x03, 0x00, 0x88, 0x00]);
    })
    .await;
}

/// A `protocol: mqtt` listener item named `name` routing everything to `cluster`.
fn listener(name: &str, cluster: &str) -> String {
    format!(
        "  - name: {name}\n    bind: 127.0.0.1:0\n    protocol: mqtt\n    routes:\n      - {{ cluster: {cluster} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_broker_reach_the_other_one() {
    guard(async {
        let (mut a, b) = (Mosquitto::start().await, Mosquitto::start().await);
        let proxy = TestProxy::start(&config(
            "mqtt",
            "",
            &["{ cluster: brokers }"],
            &cluster("brokers", &[a.addr(), b.addr()], &RING_HASH),
        ));
        let addr = proxy.addr("mqtt");
        let ids: Vec<String> = (0..16).map(|i| format!("sensor-{i}")).collect();
        for id in &ids {
            publish(addr, &opts().id(id).qos(1), &format!("placement/{id}"), id, true).await;
        }
        let on_a: Vec<String> =
            retained_on(a.addr(), "placement").await.into_iter().map(|(_, id)| id).collect::<Vec<_>>();
        let on_b: Vec<String> = retained_on(b.addr(), "placement").await.into_iter().map(|(_, id)| id).collect();
        assert_eq!(on_a.len() + on_b.len(), ids.len(), "A: {on_a:?}, B: {on_b:?}");
        assert!(!on_a.is_empty(), "no client id hashed to A (B: {on_b:?})");

        a.kill().await;
        for id in &ids {
            publish(addr, &opts().id(id).qos(1), &format!("after/{id}"), id, true).await;
        }
        let after: Vec<String> = retained_on(b.addr(), "after").await.into_iter().map(|(_, id)| id).collect();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(after, expected, "every client reached B once A died (A had {on_a:?})");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_the_proxy_survives() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = TestProxy::start(&config(
            "mqtt",
            "    mqtt: { max_packet_size: 4096, connect_timeout: 300ms }\n",
            &["{ cluster: broker }"],
            &cluster("broker", &[broker.addr()], &[]),
        ));
        let addr = proxy.addr("mqtt");

        // Refused before any broker is involved.
        assert_eq!(exchange(addr, &[0xc0, 0x00]).await, [] as [u8; 0], "first packet a PINGREQ");
        assert_eq!(exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await, [] as [u8; 0], "first packet HTTP");
        let mut level_9 = connect_packet(4, "nine", 60);
        level_9[8] = 9;
        assert_eq!(exchange(addr, &level_9).await, [0x20, 0x02, 0x00, 0x01], "protocol level 9");
        let mut reserved = connect_packet(4, "reserved", 60);
        reserved[9] |= 0x01;
        assert_eq!(exchange(addr, &reserved).await, [0x20, 0x02, 0x00, 0x02], "reserved CONNECT flag (v3)");
        let mut reserved = connect_packet(5, "reserved", 60);
        reserved[9] |= 0x01;
        assert_eq!(exchange(addr, &reserved).await, [0x20, 0x03, 0x00, 0x81, 0x00], "reserved CONNECT flag (v5)");
        // A CONNECT claiming 1 MB: closed on its header alone.
        assert_eq!(exchange(addr, &[0x10, 0x80, 0x80, 0x40]).await, [] as [u8; 0], "huge CONNECT");
        // Half a CONNECT: closed after connect_timeout (300 ms).
        let mut half = connect(addr).await;
        half.write_all(&connect_packet(4, "slow", 60)[..6]).await.expect("write");
        let sent = Instant::now();
        assert_eq!(read_to_close(&mut half).await, [] as [u8; 0]);
        let waited = sent.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited <= Duration::from_secs(2),
            "half CONNECT closed after {waited:?}"
        );

        // Violations after an accepted CONNECT: v5 gets a DISCONNECT with a
        // reason, v3 just the close.
        let v5_wildcard = publish_packet("a/#", b"x", true);
        assert_eq!(after_connect(addr, 5, "v5-hash", &v5_wildcard).await, V5_DISCONNECT_MALFORMED, "PUBLISH a/#");
        let v5_plus = publish_packet("a/+/c", b"x", true);
        assert_eq!(after_connect(addr, 5, "v5-plus", &v5_plus).await, V5_DISCONNECT_MALFORMED, "PUBLISH a/+/c");
        let v3_wildcard = publish_packet("a/#", b"x", false);
        assert_eq!(after_connect(addr, 4, "v3-hash", &v3_wildcard).await, [] as [u8; 0], "v3 PUBLISH a/#");
        assert_eq!(
            after_connect(addr, 5, "v5-ping", &[0xc0, 0x01, 0x00]).await,
            V5_DISCONNECT_MALFORMED,
            "PINGREQ body"
        );
        let subscribe_flags_0 = packet(0x80, &[0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00]);
        assert_eq!(
            after_connect(addr, 5, "v5-flags", &subscribe_flags_0).await,
            V5_DISCONNECT_MALFORMED,
            "SUBSCRIBE with reserved flags 0000"
        );
        let second = connect_packet(4, "again", 60);
        assert_eq!(after_connect(addr, 4, "v3-twice", &second).await, [] as [u8; 0], "second CONNECT (v3.1.1)");
        let second = connect_packet(5, "again", 60);
        assert_eq!(after_connect(addr, 5, "v5-twice", &second).await, [0xe0, 0x02, 0x82, 0x00], "second CONNECT (v5)");
        // Larger than max_packet_size: refused from the header, the body
        // is never sent (a proxy waiting for it would hang).
        let huge_header = [0x30, 0x80, 0x80, 0x40];
        assert_eq!(after_connect(addr, 5, "v5-huge", &huge_header).await, [0xe0, 0x02, 0x95, 0x00], "1 MB (v5)");
        assert_eq!(after_connect(addr, 4, "v3-huge", &huge_header).await, [] as [u8; 0], "1 MB (v3.1.1)");

        // Still serving, and a packet right at the limit is relayed.
        let options = opts().version(MqttVersion::V5).qos(1);
        let subscriber = Subscriber::start(addr, &options, "alive/#", &["-C", "1"]).await;
        // Fixed header 3, topic 2 + 9, packet id 2, properties 1: 4096 in all.
        let payload = "p".repeat(4096 - 3 - 2 - "alive/big".len() - 2 - 1);
        publish(addr, &options, "alive/big", &payload, false).await;
        let received = subscriber.wait_messages(1, LIMIT).await;
        assert_eq!(received[0].payload.len(), payload.len());
        // 9 violators (the ones that got a CONNACK) plus the last two clients.
        assert_eq!(broker.settled_connections(11).await, 11, "{:#?}", broker.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_after_one_and_a_half_keep_alives() {
    guard(async {
        // The stub never closes a connection: a close is the proxy's.
        let stub = MqttStub::start().await;
        let proxy = one_broker_proxy("mqtt", "", stub.addr());
        let addr = proxy.addr("mqtt");
        let silent = async {
            let mut stream = connect(addr).await;
            stream.write_all(&connect_packet(4, "silent", 1)).await.expect("write CONNECT");
            let sent = Instant::now();
            assert_eq!(read_packet(&mut stream).await, [0x20, 0x02, 0x00, 0x00]);
            assert_eq!(read_to_close(&mut stream).await, [] as [u8; 0]);
            let waited = sent.elapsed();
            assert!(
                // 1.5 s expected: a factor of 1, or above 1.6, falls outside.
                waited >= Duration::from_millis(1200) && waited <= Duration::from_millis(2400),
                "silent client (keep-alive 1 s) closed after {waited:?}"
            );
        };
        let pinging = async {
            let mut stream = connect(addr).await;
            stream.write_all(&connect_packet(4, "pinging", 1)).await.expect("write CONNECT");
            let start = Instant::now();
            assert_eq!(read_packet(&mut stream).await, [0x20, 0x02, 0x00, 0x00]);
            let mut pings = 0;
            while start.elapsed() < Duration::from_millis(3200) {
                // Pacing of the client, not synchronisation.
                tokio::time::sleep(Duration::from_millis(500)).await;
                stream.write_all(&[0xc0, 0x00]).await.expect("PINGREQ");
                assert_eq!(read_packet(&mut stream).await, [0xd0, 0x00], "PINGRESP after {:?}", start.elapsed());
                pings += 1;
            }
            assert!(pings >= 6, "{pings} pings");
        };
        tokio::join!(silent, pinging);
        assert_eq!(stub.connections(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_listener_detects_mqtt() {
    guard(async {
        let broker = Mosquitto::start().await;
        let proxy = one_broker_proxy("auto", "", broker.addr());
        let addr = proxy.addr("mqtt");
        for version in MqttVersion::ALL {
            let options = opts().version(version).qos(1);
            let topic = format!("auto/{}", version.arg());
            let subscriber = Subscriber::start(addr, &options, &topic, &["-C", "1"]).await;
            publish(addr, &options, &topic, "detected", false).await;
            let received = subscriber.wait_messages(1, LIMIT).await;
            assert_eq!(received, [Message { topic, payload: "detected".into(), retained: false }]);
        }
        // Served as MQTT (checked and routed), not relayed as opaque TCP.
        assert_eq!(accepted(&proxy, "mqtt").await, 6.0);
        assert_eq!(accepted(&proxy, "tcp").await, 0.0);
        // MQTT rules apply on the auto listener too.
        let wildcard = publish_packet("a/#", b"x", true);
        assert_eq!(after_connect(addr, 5, "auto-hash", &wildcard).await, V5_DISCONNECT_MALFORMED);
    })
    .await;
}

/// How many times `needle` occurs in `haystack`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|window| *window == needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_pauses_a_fast_publisher() {
    guard(async {
        let stub = MqttStub::start().await;
        let listener = "    mqtt: { publish_rate: { messages: 10, per: 1s, burst: 1 } }\n";
        let proxy = one_broker_proxy("mqtt", listener, stub.addr());
        let mut stream = connected(proxy.addr("mqtt"), 4, "fast").await;
        // 11 PUBLISHes at once: 1 passes, 10 more follow at 10/s.
        let burst: Vec<u8> = (0..11).flat_map(|_| publish_packet("rate/t", b"x", false)).collect();
        let start = Instant::now();
        stream.write_all(&burst).await.expect("write");
        edgeplane_tests::harness::eventually("all 11 PUBLISHes at the broker", LIMIT, || async {
            occurrences(&stub.received(), b"rate/t") == 11
        })
        .await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(850) && took <= Duration::from_millis(2500),
            "11 messages at 10/s (burst 1) took {took:?}"
        );
        // Paused, not cut off: the connection still answers.
        stream.write_all(&[0xc0, 0x00]).await.expect("PINGREQ");
        assert_eq!(read_packet(&mut stream).await, [0xd0, 0x00]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_disconnects_when_configured() {
    guard(async {
        let stub = MqttStub::start().await;
        let listener = "    mqtt: { publish_rate: { messages: 2, per: 10s, on_exceed: disconnect } }\n";
        let proxy = one_broker_proxy("mqtt", listener, stub.addr());
        let three: Vec<u8> = (0..3).flat_map(|_| publish_packet("limit/t", b"x", true)).collect();
        // v5: DISCONNECT 0x96 "message rate too high", then the close.
        assert_eq!(after_connect(proxy.addr("mqtt"), 5, "v5-fast", &three).await, [0xe0, 0x02, 0x96, 0x00]);
        // v3.1.1 has no way to say it: just the close.
        let three: Vec<u8> = (0..3).flat_map(|_| publish_packet("limit/u", b"x", false)).collect();
        assert_eq!(after_connect(proxy.addr("mqtt"), 4, "v3-fast", &three).await, [] as [u8; 0]);
        edgeplane_tests::harness::eventually("the allowed PUBLISHes at the broker", LIMIT, || async {
            let received = stub.received();
            occurrences(&received, b"limit/t") == 2 && occurrences(&received, b"limit/u") == 2
        })
        .await;
        let (_, metrics) = proxy.admin_get("/metrics").await;
        let rejected = edgeplane_tests::harness::find_metric(
            &metrics,
            "edgeplane_mqtt_rejections_total",
            &[("listener", "mqtt"), ("reason", "rate_limited")],
        );
        assert_eq!(rejected, Some(2.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_counted_by_topic_prefix_with_a_bound() {
    guard(async {
        let broker = Mosquitto::start().await;
        let extra = "    mqtt: { topic_metrics: { levels: 2, max_topics: 2 } }\n";
        let proxy = one_broker_proxy("mqtt", extra, broker.addr());
        let addr = proxy.addr("mqtt");
        for topic in ["meters/1/temp", "meters/1/volts", "meters/2/temp", "lights/9/on"] {
            publish(addr, &opts().qos(1), topic, "x", false).await;
        }
        // MQTT 5 alias-only publishes count under the topic the alias stands for.
        let mut stream = connected(addr, 5, "aliased").await;
        stream.write_all(&publish_qos("meters/2/a", b"1", 1, 1, Some(&topic_alias(1)))).await.unwrap();
        stream.write_all(&publish_qos("", b"2", 1, 2, Some(&topic_alias(1)))).await.unwrap();
        for _ in 0..2 {
            assert_eq!(read_packet(&mut stream).await[0], 0x40, "PUBACK expected");
        }
        let count = |topic: &'static str| {
            let proxy = &proxy;
            async move {
                proxy
                    .metric("edgeplane_mqtt_topic_publishes_total", &[("listener", "mqtt"), ("topic", topic)])
                    .await
                    .unwrap_or(0.0)
            }
        };
        // Two series at most; the third prefix counts as #other.
        assert_eq!((count("meters/1").await, count("meters/2").await, count("#other").await), (2.0, 3.0, 1.0));
        assert_eq!(count("lights/9").await, 0.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_ids_spread_by_address_under_client_id_hashing() {
    guard(async {
        let (a, b, proxy) = ring_hashed_pair().await;
        let addr = proxy.addr("mqtt");
        // 16 source addresses (all loopback), each with an empty client id
        // and a retained message naming the address.
        for host in 2..18u8 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from(([127, 0, 0, host], 0))).expect("bind a loopback source address");
            let mut stream = socket.connect(addr).await.expect("connect");
            stream.write_all(&connect_packet(4, "", 60)).await.unwrap();
            assert_eq!(read_packet(&mut stream).await, [0x20, 0x02, 0x00, 0x00]);
            let mut retained = publish_qos(&format!("empty/{host}"), b"x", 1, 1, None);
            retained[0] |= 0x01;
            stream.write_all(&retained).await.unwrap();
            assert_eq!(read_packet(&mut stream).await, [0x40, 0x02, 0x00, 0x01]);
        }
        let (on_a, on_b) = (retained_on(a.addr(), "empty").await, retained_on(b.addr(), "empty").await);
        assert_eq!(on_a.len() + on_b.len(), 16);
        assert!(!on_a.is_empty() && !on_b.is_empty(), "all empty client ids on one broker (A: {on_a:?}, B: {on_b:?})");
    })
    .await;
}
