"""paho-mqtt (the Eclipse Python client) through edgeplane.

Usage: paho_client.py HOST PORT

Prints one JSON object: for each protocol version, the payloads a
subscriber received at QoS 0, 1 and 2; and, on MQTT 5, the reason codes
paho reports for a PUBLISH and a SUBSCRIBE the proxy's ACL refuses.
Every wait has a deadline; a missed one is reported, never hung on.
"""

import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HOST, PORT = sys.argv[1], int(sys.argv[2])
WAIT = 5.0
VERSIONS = {"3.1": mqtt.MQTTv31, "3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}


def client(name, protocol):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
    connected = threading.Event()
    c.on_connect = lambda *args: connected.set()
    c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    if not connected.wait(WAIT):
        raise SystemExit(f"{name}: no CONNACK")
    return c


def round_trip(label, protocol):
    topic = f"paho/{label}"
    received, all_in = [], threading.Event()
    subscribed = threading.Event()
    sub = client(f"paho-sub-{label}", protocol)

    def on_message(_c, _u, message):
        received.append(message.payload.decode())
        if len(received) == 3:
            all_in.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.subscribe(topic, qos=2)
    if not subscribed.wait(WAIT):
        raise SystemExit(f"{label}: no SUBACK")
    pub = client(f"paho-pub-{label}", protocol)
    for qos in (0, 1, 2):
        info = pub.publish(topic, f"{label}-q{qos}", qos=qos)
        info.wait_for_publish(WAIT)
    all_in.wait(WAIT)
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return sorted(received)


def refusals():
    """MQTT 5 reason codes for a PUBLISH and a SUBSCRIBE the ACL refuses."""
    c = client("paho-refused", mqtt.MQTTv5)
    published, subscribed = threading.Event(), threading.Event()
    codes = {}

    def on_publish(_c, _u, _mid, reason_code, _props):
        codes["publish"] = reason_code.value
        published.set()

    def on_subscribe(_c, _u, _mid, reason_codes, _props):
        codes["subscribe"] = [code.value for code in reason_codes]
        subscribed.set()

    c.on_publish = on_publish
    c.on_subscribe = on_subscribe
    c.publish("secret/plans", "leak", qos=1)
    c.subscribe([("secret/#", 1), ("paho/ok", 1)])
    published.wait(WAIT)
    subscribed.wait(WAIT)
    c.disconnect()
    c.loop_stop()
    return codes


result = {label: round_trip(label, protocol) for label, protocol in VERSIONS.items()}
result["refusals"] = refusals()
print(json.dumps(result))
