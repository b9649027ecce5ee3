"""A python-wechaty bot (the official `wechaty` 0.10.7 + `wechaty-puppet-service` 0.8.10, unmodified)
that checks, step by step, what puppet-server answers.

Configured only through the environment, as a user would: WECHATY_PUPPET_SERVICE_ENDPOINT and
WECHATY_PUPPET_SERVICE_TOKEN (the Python client speaks plaintext only). PUPPETCTL names the puppetctl
binary, used to make the mock world act and to look at it. Prints `ok <step>` per step and
`COMPAT OK` at the end; exits non-zero on the first failure.
"""
import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import traceback

from wechaty import Wechaty, WechatyOptions
from wechaty_puppet import FileBox, ScanStatus

BOT = "wxid_puppet_bot"
TIMEOUT = 15


def ctl(*args):
    return subprocess.run([os.environ["PUPPETCTL"], *args], check=True, capture_output=True, text=True).stdout.strip()


def world(conversation):
    return [json.loads(line) for line in ctl("mock", "messages", conversation).splitlines() if line]


def sha(data):
    return hashlib.sha256(data).hexdigest()


class CompatBot(Wechaty):
    """Puts every event it hears into a queue the steps read from."""

    def __init__(self):
        super().__init__(WechatyOptions(name="compat-python"))
        self.heard = asyncio.Queue()
        self.on("dong", self._dong)

    async def _dong(self, data):
        self.heard.put_nowait(("dong", data))

    async def on_scan(self, qr_code, status, data=None):
        self.heard.put_nowait(("scan", (qr_code, status)))

    async def on_login(self, contact):
        self.heard.put_nowait(("login", contact.contact_id))

    async def on_ready(self, payload):
        self.heard.put_nowait(("ready", payload))

    async def on_logout(self, contact):
        self.heard.put_nowait(("logout", contact.contact_id))

    async def on_message(self, msg):
        self.heard.put_nowait(("message", msg))

    async def wait_for(self, kind, pred=lambda value: True):
        async def loop():
            while True:
                k, value = await self.heard.get()
                if k == kind and pred(value):
                    return value

        return await asyncio.wait_for(loop(), TIMEOUT)


async def main():
    bot = CompatBot()
    tmp = tempfile.mkdtemp(prefix="compat-python-")
    run = asyncio.create_task(bot.start())

    scan = await bot.wait_for("scan")
    assert scan[1] == ScanStatus.Waiting and scan[0], scan
    assert await bot.wait_for("login") == BOT
    await bot.wait_for("ready")
    print("ok start; scan → login → ready")

    contacts = await bot.Contact.find_all()
    assert len(contacts) >= 30, len(contacts)
    alice = await bot.Contact.find("wxid_alice")
    assert alice.name == "Alice", alice.name
    assert await alice.alias() == "Alice (work)"
    print("ok contacts and payloads")

    bob = await bot.Contact.find("wxid_bob")
    assert not await bob.alias(), "Bob starts without an alias"
    await bob.alias("Bobby")
    assert await bob.alias() == "Bobby"
    await bob.alias("")
    assert await bob.alias() == "", "the alias was cleared"
    print("ok alias set and get, including an empty alias")

    rooms = await bot.Room.find_all()
    assert len(rooms) == 5, len(rooms)
    tea = await bot.Room.find("10001@chatroom")
    assert await tea.topic() == "Tea Lovers"
    members = await tea.member_list()
    assert sorted(m.contact_id for m in members) == sorted(
        ["wxid_alice", "wxid_bob", "wxid_carol", "wxid_dave", BOT]
    ), [m.contact_id for m in members]
    print("ok rooms: list, topic, members")

    ctl("mock", "say", "wxid_alice", "ding")
    msg = await bot.wait_for("message", lambda m: m.text() == "ding" and m.talker().contact_id == "wxid_alice")
    await msg.say("dong")
    last = world("wxid_alice")[-1]
    assert (last["talkerId"], last["text"]) == (BOT, "dong"), last
    print("ok a world message arrives, the bot replies, the world sees it")

    await bot.puppet.ding("py-ding")
    assert await bot.wait_for("dong", lambda d: d == "py-ding") == "py-ding"
    print("ok ding → dong")

    await tea.say("hello room", mention_ids=["wxid_alice"])
    last = world("10001@chatroom")[-1]
    assert last["talkerId"] == BOT and "hello room" in last["text"] and last["mentionIds"] == ["wxid_alice"], last
    print("ok say into a room with a mention")

    data = os.urandom(30 * 1024)
    sent = await alice.say(FileBox.from_base64(base64.b64encode(data), name="inline.bin"))
    last = world("wxid_alice")[-1]
    assert last["filename"] == "inline.bin", last
    out = os.path.join(tmp, "inline.bin")
    ctl("download", last["id"], "-o", out)
    with open(out, "rb") as f:
        assert sha(f.read()) == sha(data)
    print("ok send an inline (Base64) file")

    await alice.say(FileBox.from_url("https://example.com/cat.jpg", name="cat.jpg"))
    last = world("wxid_alice")[-1]
    assert (last["filename"], last["type"]) == ("cat.jpg", 6), last
    print("ok send a Url box (remoteUrl)")

    data = os.urandom(2 * 1024 * 1024 + 7)
    path = os.path.join(tmp, "from-alice.bin")
    with open(path, "wb") as f:
        f.write(data)
    ctl("mock", "send-file", "wxid_alice", path)
    msg = await bot.wait_for("message", lambda m: m.talker().contact_id == "wxid_alice" and m.text() == "")
    box = await msg.to_file_box()
    assert box.name == "from-alice.bin", box.name
    assert sha(base64.b64decode(box.base64)) == sha(data), "inline file differs"
    print("ok receive a file (inline base64), checksum equal")

    await bot.stop()
    run.cancel()
    # Start again, as a restarted bot process does (python-wechaty cannot restart an instance: its
    # scheduler refuses a second start). The server replays the login to the new stream.
    bot = CompatBot()
    run = asyncio.create_task(bot.start())
    assert await bot.wait_for("login") == BOT
    # python-wechaty caches Contact objects across instances (bound to the stopped puppet), so
    # this goes through the new puppet directly: the same MessageSendText call Contact.say makes.
    await bot.puppet.message_send_text("wxid_alice", "back again")
    assert world("wxid_alice")[-1]["text"] == "back again"
    print("ok bot.stop() then start again")

    ctl("mock", "logout", "py logout")
    assert await bot.wait_for("logout") == BOT
    assert ctl("version").startswith("puppet-rs/")
    print("ok server-side logout")

    await bot.stop()
    run.cancel()
    print("COMPAT OK")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception:  # noqa: BLE001 - any failure is reported the same way
        traceback.print_exc()
        print("COMPAT FAILED")
        sys.exit(1)
    sys.exit(0)
