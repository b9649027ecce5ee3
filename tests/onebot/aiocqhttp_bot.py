"""An aiocqhttp bot over the OneBot HTTP API and HTTP POST, driven by tests/tests/e2e/onebot.rs.

Usage: aiocqhttp_bot.py PORT API_ROOT ACCESS_TOKEN SECRET
A private `ding` is answered through the HTTP API (bot.send); a room `ding` with the quick
operation in the POST response body ({"reply": "dong"}, at_sender on). aiocqhttp itself checks
X-Signature against SECRET and refuses a post that does not match.
"""

import sys

from aiocqhttp import CQHttp, Event

port, api_root, token, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
bot = CQHttp(api_root=api_root, access_token=token, secret=secret)


def text_of(event: Event) -> str:
    return "".join(s["data"].get("text", "") for s in event.message if s["type"] == "text").strip()


@bot.on_message("private")
async def _private(event: Event):
    if text_of(event) == "ding":
        await bot.send(event, "dong")


@bot.on_message("group")
async def _group(event: Event):
    if text_of(event) == "ding":
        return {"reply": "dong"}


@bot.server_app.before_serving
async def _ready():
    print("READY", flush=True)


bot.run(host="127.0.0.1", port=port)
