"""Drives puppet-server's MQTT bridge the way a WeChatRemote user does, with paho-mqtt.

Usage: controller.py PORT CLIENT_ID [SECRET]. With SECRET, payloads are sealed as the README says:
base64(nonce[12] || AES-256-GCM(key = SHA-256(secret)) ciphertext || tag). Prints `ok <step>` lines
and `MQTT OK`; exits non-zero on the first surprise.
"""
import base64
import hashlib
import json
import os
import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PORT, CID = int(sys.argv[1]), sys.argv[2]
SECRET = sys.argv[3] if len(sys.argv) > 3 else None
KEY = hashlib.sha256(SECRET.encode()).digest() if SECRET else None
PREFIX = f"thing/chatbot/{CID}"
responses, events = queue.Queue(), queue.Queue()


def seal(obj):
    data = json.dumps(obj).encode()
    if KEY is None:
        return data
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(KEY).encrypt(nonce, data, None))


def unseal(payload):
    if KEY is not None:
        raw = base64.b64decode(payload)
        payload = AESGCM(KEY).decrypt(raw[:12], raw[12:], None)
    return json.loads(payload)


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe(f"{PREFIX}/response/d2c/+", qos=1)
    client.subscribe(f"{PREFIX}/event/post", qos=1)


def on_message(client, userdata, msg):
    (events if msg.topic.endswith("/event/post") else responses).put(unseal(msg.payload))


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"py-controller-{os.getpid()}")
client.on_connect = on_connect
client.on_message = on_message
client.connect("127.0.0.1", PORT)
client.loop_start()


def call(name, params, attempts=40):
    """Publishes a command and waits for its response (retrying until the bridge listens)."""
    for _ in range(attempts):
        req_id = str(uuid.uuid4())
        envelope = {"reqId": req_id, "method": "command", "version": "1.0",
                    "timestamp": int(time.time() * 1000), "name": name, "params": params}
        client.publish(f"{PREFIX}/command/invoke", seal(envelope), qos=1)
        deadline = time.time() + 0.5
        while time.time() < deadline:
            try:
                r = responses.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if r.get("reqId") == req_id:
                return r
    raise AssertionError(f"no response to {name}")


r = call("wechatyLogonoff", {})
assert r["code"] == 200 and r["params"]["logonoff"] is True, r
print("ok wechatyLogonoff")

r = call("contactFindAll", {"size": 5})
assert r["code"] == 200 and len(r["params"]["items"]) == 5 and r["params"]["total"] >= 30, r
print("ok contactFindAll (paged)")

r = call("contactFind", {"name": "Alice"})
assert r["params"]["payload"]["alias"] == "Alice (work)", r
print("ok contactFind")

r = call("contactSay", {"contacts": ["Bob"], "messageType": "Text", "messagePayload": "hi from python"})
assert r["params"]["success"] == ["Bob"], r
print("ok contactSay")

r = call("roomSayAt", {"room": "Tea Lovers", "contacts": ["Alice"], "text": "hello"})
assert r["code"] == 200, r
print("ok roomSayAt")

r = call("roomFind", {"topic": "No Such Room"})
assert r["code"] != 200 and "群不存在" in r["message"], r
print("ok a failing command says why")

client.loop_stop()
print("MQTT OK")
