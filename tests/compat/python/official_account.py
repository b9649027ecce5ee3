"""A python-wechaty bot (the official `wechaty` 0.10.7 + `wechaty-puppet-service` 0.8.10, unmodified)
on a puppet-rs server running the Official Account backend: it answers followers the way a Wechaty
user writes a bot; the test posts WeChat pushes to the server's webhook and reads the answers back
out of the HTTP responses (the passive replies).

Prints `READY` once online, one line per handled event, and `COMPAT OK` when told `bye`.
"""
import asyncio
import base64
import os
import sys

from wechaty import Wechaty, WechatyOptions
from wechaty_puppet import FriendshipType, MessageType


class OfficialAccountBot(Wechaty):
    def __init__(self):
        super().__init__(WechatyOptions(name="compat-python-oa"))

    async def on_ready(self, payload):
        print("READY", flush=True)

    async def on_message(self, msg):
        if msg.is_self():
            return
        talker = msg.talker()
        if msg.type() == MessageType.MESSAGE_TYPE_IMAGE:
            box = await msg.to_file_box()
            size = len(base64.b64decode(box.base64))
            print(f"image {box.name} {size}", flush=True)
            await msg.say(f"got {box.name}, {size} bytes")
            return
        text = msg.text()
        print(f"message {talker.contact_id} {text!r}", flush=True)
        if text == "who am i":
            await talker.ready()
            await msg.say(f"you are {talker.name}")
        elif text == "bye":
            await msg.say("再见")
            print("COMPAT OK", flush=True)
            sys.stdout.flush()
            os._exit(0)
        else:
            await msg.say(f"echo: {text}")

    async def on_friendship(self, friendship):
        contact = friendship.contact()
        print(f"friendship {friendship.type()} {contact.contact_id}", flush=True)
        if friendship.type() == FriendshipType.FRIENDSHIP_TYPE_CONFIRM:
            await contact.say(f"welcome {contact.contact_id}")


if __name__ == "__main__":
    asyncio.run(OfficialAccountBot().start())
