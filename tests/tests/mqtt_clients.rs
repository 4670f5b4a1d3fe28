//! MQTT through the proxy with clients and a broker written by others than
//! us: rumqttc (Rust client) against rumqttd (Rust broker, in-process) and
//! mosquitto, and paho-mqtt (Python, from PyPI) against mosquitto.

use std::net::SocketAddr;
use std::time::Duration;

use edgeplane_tests::harness::{guard, TestProxy};
use edgeplane_tests::mqtt_wire::{cluster, config, one_broker_proxy, LIMIT};
use edgeplane_tests::upstream::{Mosquitto, Rumqttd};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A rumqttc client whose event loop runs in a task; incoming packets
/// come out of `incoming`.
struct Client {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Packet>,
    event_loop: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

impl Client {
    /// Connected: its CONNACK arrived (and accepted the session).
    async fn connect(addr: SocketAddr, client_id: &str) -> Client {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (sender, incoming) = mpsc::unbounded_channel();
        let event_loop = tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if sender.send(packet).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    // The test sees the missing packets; no reconnect storms.
                    Err(_) => return,
                }
            }
        });
        let mut connected = Client { client, incoming, event_loop };
        match connected.next().await {
            Packet::ConnAck(ack) => assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{client_id}"),
            other => panic!("{client_id}: expected CONNACK, got {other:?}"),
        }
        connected
    }

    async fn next(&mut self) -> Packet {
        tokio::time::timeout(LIMIT, self.incoming.recv())
            .await
            .unwrap_or_else(|_| panic!("no packet within {LIMIT:?}"))
            .expect("the event loop ended")
    }

    /// The next packet other than acks of our own publishes.
    async fn next_of_interest(&mut self) -> Packet {
        loop {
            match self.next().await {
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) | Packet::PingResp => {}
                packet => return packet,
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.expect("queue SUBSCRIBE");
        match self.next_of_interest().await {
            Packet::SubAck(ack) => ack.return_codes,
            other => panic!("expected SUBACK for {filter}, got {other:?}"),
        }
    }

    async fn publish(&self, topic: &str, qos: QoS, payload: &str) {
        self.client.publish(topic, qos, false, payload.as_bytes().to_vec()).await.expect("queue PUBLISH");
    }

    async fn messages(&mut self, n: usize) -> Vec<Publish> {
        let mut messages = Vec::new();
        while messages.len() < n {
            if let Packet::Publish(publish) = self.next_of_interest().await {
                messages.push(publish);
            }
        }
        messages
    }
}

fn payloads(messages: &[Publish]) -> Vec<String> {
    let mut payloads: Vec<String> = messages.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    payloads.sort();
    payloads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_qos_0_1_2_through_the_proxy_to_rumqttd() {
    guard(async {
        let broker = Rumqttd::start().await;
        let proxy = one_broker_proxy("mqtt", "", broker.addr());
        let addr = proxy.addr("mqtt");
        let mut subscriber = Client::connect(addr, "rt-sub").await;
        assert_eq!(
            subscriber.subscribe("rt/#", QoS::ExactlyOnce).await,
            [SubscribeReasonCode::Success(QoS::ExactlyOnce)]
        );
        let publisher = Client::connect(addr, "rt-pub").await;
        let mut sent = Vec::new();
        for (qos, name) in [(QoS::AtMostOnce, "q0"), (QoS::AtLeastOnce, "q1"), (QoS::ExactlyOnce, "q2")] {
            for i in 0..3 {
                let payload = format!("{name}-{i}");
                publisher.publish(&format!("rt/{name}"), qos, &payload).await;
                sent.push(payload);
            }
        }
        sent.sort();
        // The publisher's QoS 1 and 2 flows complete through the proxy.
        let mut publisher = publisher;
        let (mut pubacks, mut pubcomps) = (0, 0);
        while pubacks < 3 || pubcomps < 3 {
            match publisher.next().await {
                Packet::PubAck(_) => pubacks += 1,
                Packet::PubComp(_) => pubcomps += 1,
                _ => {}
            }
        }
        // rumqttd delivers at the subscription's QoS rather than the lower
        // of the two, so the topics, not the QoS, tell the messages apart.
        let received = subscriber.messages(sent.len()).await;
        assert_eq!(payloads(&received), sent);
        assert!(received.iter().all(|m| m.topic == format!("rt/{}", &String::from_utf8_lossy(&m.payload)[..2])));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_groups_reach_a_rust_and_a_c_broker() {
    guard(async {
        let (rust, c) = (Rumqttd::start().await, Mosquitto::start().await);
        let yaml = config(
            "mqtt",
            "",
            &["{ match: { client_id: { prefix: \"sensor-\" } }, cluster: rust }", "{ cluster: c }"],
            &format!("{}{}", cluster("rust", &[rust.addr()], &[]), cluster("c", &[c.addr()], &[])),
        );
        let proxy = TestProxy::start(&yaml);
        let addr = proxy.addr("mqtt");
        // Watchers straight on each broker.
        let mut on_rust = Client::connect(rust.addr(), "watch-rust").await;
        let mut on_c = Client::connect(c.addr(), "watch-c").await;
        on_rust.subscribe("group/#", QoS::AtLeastOnce).await;
        on_c.subscribe("group/#", QoS::AtLeastOnce).await;
        for id in ["sensor-1", "sensor-2", "meter-1"] {
            let client = Client::connect(addr, id).await;
            client.publish(&format!("group/{id}"), QoS::AtLeastOnce, id).await;
            // Wait for the PUBACK, so the message is at the broker.
            let mut client = client;
            assert!(matches!(client.next().await, Packet::PubAck(_)));
        }
        assert_eq!(payloads(&on_rust.messages(2).await), ["sensor-1", "sensor-2"]);
        assert_eq!(payloads(&on_c.messages(1).await), ["meter-1"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_sees_the_proxy_refuse_a_subscription() {
    guard(async {
        let broker = Rumqttd::start().await;
        let acl = "    mqtt:\n      acl:\n        rules: [ { permission: deny, action: subscribe, topics: [\"secret/#\"] } ]\n";
        let proxy = one_broker_proxy("mqtt", acl, broker.addr());
        let addr = proxy.addr("mqtt");
        let mut client = Client::connect(addr, "curious").await;
        assert_eq!(client.subscribe("secret/+", QoS::AtLeastOnce).await, [SubscribeReasonCode::Failure]);
        // The connection carries on: an allowed subscription works.
        assert_eq!(client.subscribe("open/+", QoS::AtLeastOnce).await, [SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        client.publish("open/door", QoS::AtLeastOnce, "creak").await;
        assert_eq!(payloads(&client.messages(1).await), ["creak"]);
    })
    .await;
}

/// The Python with paho-mqtt that `tests/run-all.sh` sets up (a venv with
/// paho-mqtt from PyPI), or the one `EDGEPLANE_PAHO_PYTHON` names.
fn paho_python() -> std::path::PathBuf {
    let path = std::env::var_os("EDGEPLANE_PAHO_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/paho-venv/bin/python"));
    assert!(
        path.exists(),
        "no Python with paho-mqtt at {}: run tests/run-all.sh, or `python3 -m venv target/paho-venv && \
         target/paho-venv/bin/pip install paho-mqtt==2.1.0`",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_round_trips_and_reads_the_proxys_refusals() {
    guard(async {
        let broker = Mosquitto::start().await;
        let acl = "    mqtt:\n      acl:\n        rules: [ { permission: deny, topics: [\"secret/#\"] } ]\n";
        let proxy = one_broker_proxy("mqtt", acl, broker.addr());
        let addr = proxy.addr("mqtt");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/paho_client.py");
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(paho_python())
                .arg(&script)
                .arg(addr.ip().to_string())
                .arg(addr.port().to_string())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("paho script hung")
        .expect("run the paho script");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "paho script failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("paho script prints JSON");
        for version in ["3.1", "3.1.1", "5"] {
            let expected: Vec<String> = (0..3).map(|qos| format!("{version}-q{qos}")).collect();
            assert_eq!(result[version], serde_json::json!(expected), "MQTT {version}: {result}");
        }
        // 0x87 "not authorized" for the PUBLISH; for the SUBSCRIBE, 0x87 for
        // the refused filter and QoS 1 granted by mosquitto for the other.
        assert_eq!(result["refusals"], serde_json::json!({ "publish": 0x87, "subscribe": [0x87, 1] }), "{result}");
    })
    .await;
}
