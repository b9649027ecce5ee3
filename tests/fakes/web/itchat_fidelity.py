"""Fidelity proof of the fake web-WeChat server with the real itchat-uos (PyPI 1.4.1).

itchat logs in by "scanning" (the fake's auto-login phone), loads contacts, receives a text and an
image from the fake, sends a text and a file, and the fake's outbox must hold exactly those. Only
the base URL is pointed at the fake (`config.BASE_URL`); every other host comes from the redirect.
Every step is asserted; exit status 0 means the fake passed.
"""
import base64
import json
import os
import queue
import sys
import tempfile
import threading
import urllib.request

import itchat
from itchat import config

BASE = os.environ["FAKE_WEB_BASE"]
config.BASE_URL = BASE


def ctl(action, body=None):
    req = urllib.request.Request(
        f"{BASE}/__fake/{action}", data=json.dumps(body or {}).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def step(msg):
    print(f"itchat fidelity: {msg}", flush=True)


core = itchat.new_instance()
statuses = []
core.login(qrCallback=lambda uuid, status, qrcode: statuses.append(status),
           loginCallback=lambda: None, exitCallback=lambda: None)
# The QR was shown ('0'), then 201 (scanned) came before 200.
assert statuses[0] == "0", statuses
assert "201" in statuses and statuses[-1] == "200", statuses
assert core.storageClass.nickName == "PuppetBot", core.storageClass.nickName
step(f"logged in as {core.storageClass.nickName}; QR statuses {statuses}")

friends = {f["NickName"]: f for f in core.get_friends()}
for name in ("Alice", "Bob", "Carol", "Dave"):
    assert name in friends, f"{name} missing from {sorted(friends)}"
rooms = {r["NickName"]: r for r in core.get_chatrooms()}
assert "Friends" in rooms and "Work" in rooms, sorted(rooms)
alice = friends["Alice"]["UserName"]
assert alice.startswith("@") and alice == ctl("at_id", {"wxid": "wxid_alice"})["at"], alice
step(f"{len(friends)} friends (paged contacts), rooms {sorted(rooms)}")


def next_of(kind, timeout=20):
    deadline = timeout
    while True:
        m = core.msgList.get(timeout=deadline)
        if m["Type"] == kind:
            return m


# Incoming: a text with an entity and a newline, then an image.
ctl("inject", {"kind": "text", "from": "wxid_alice", "text": "hi <itchat>\nline 2"})
m = next_of("Text")
assert m["FromUserName"] == alice, m["FromUserName"]
assert m["Text"] == "hi <itchat>\nline 2", repr(m["Text"])
step("received the text")

png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==")
ctl("inject", {"kind": "image", "from": "wxid_alice", "b64": base64.b64encode(png).decode()})
m = next_of("Picture")
data = m["Text"]()
assert data == png, f"image bytes differ: {len(data)} vs {len(png)}"
step("received the image and downloaded its bytes")

# Outgoing: a text and a file.
r = core.send_msg("hello from itchat", toUserName=alice)
assert r["BaseResponse"]["Ret"] == 0, r
sent = ctl("outbox", {"endpoint": "webwxsendmsg"})["calls"]
assert len(sent) == 1, sent
msg = sent[0]["body"]["Msg"]
assert msg["Type"] == 1 and msg["Content"] == "hello from itchat", msg
assert msg["ToUserName"] == alice and msg["FromUserName"] == core.storageClass.userName, msg
step("sent a text; the fake recorded it")

content = os.urandom(700 * 1024)  # two chunks of the 512 KiB upload
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "report.bin")
    with open(path, "wb") as f:
        f.write(content)
    r = core.send_file(path, toUserName=alice)
assert r["BaseResponse"]["Ret"] == 0, r
ups = ctl("uploads")["uploads"]
assert len(ups) == 1, ups
up = ups[0]
assert up["name"] == "report.bin" and up["chunks"] == 2 and up["mediatype"] == "doc", {k: up[k] for k in ("name", "chunks", "mediatype")}
assert base64.b64decode(up["b64"]) == content, "uploaded bytes differ"
app = ctl("outbox", {"endpoint": "webwxsendappmsg"})["calls"]
assert len(app) == 1, app
amsg = app[0]["body"]["Msg"]
assert amsg["Type"] == 6 and up["media_id"] in amsg["Content"] and "<title>report.bin</title>" in amsg["Content"], amsg
step("sent a 700 KiB file in 2 chunks; the fake recorded it")

core.logout()
step("ok")
