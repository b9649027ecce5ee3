"""A NoneBot2 app with the OneBot v11 adapter, driven by the e2e tests (tests/tests/e2e/onebot.rs).

Configured the way a user configures NoneBot, through the environment (or a .env file):
DRIVER, HOST, PORT, ONEBOT_ACCESS_TOKEN, and ONEBOT_WS_URLS for a forward WebSocket.
It answers `ding` with `dong` (in a room only when @-mentioned) and accepts every friend request.
"""

import nonebot
from nonebot import get_driver, on_fullmatch, on_request
from nonebot.adapters.onebot.v11 import Adapter, Bot, FriendRequestEvent
from nonebot.rule import to_me

nonebot.init()
driver = get_driver()
driver.register_adapter(Adapter)

ding = on_fullmatch("ding", rule=to_me())


@ding.handle()
async def _dong() -> None:
    await ding.finish("dong")


friends = on_request()


@friends.handle()
async def _accept(bot: Bot, event: FriendRequestEvent) -> None:
    await event.approve(bot)
    print(f"APPROVED {event.user_id}", flush=True)


@driver.on_bot_connect
async def _connected(bot: Bot) -> None:
    print(f"CONNECTED {bot.self_id}", flush=True)


if __name__ == "__main__":
    nonebot.run()
