// A Koishi plugin for the OneBot e2e test (tests/tests/e2e/onebot.rs): answers `ding` with `dong`
// (in a room only when the bot is @-mentioned: Koishi strips the mention into `stripped`), and
// prints the bot's status so the test knows when it is online.
exports.name = 'dingdong'
exports.apply = (ctx) => {
  ctx.middleware((session, next) => {
    const text = session.stripped.content.trim()
    if (text === 'ding' && (session.isDirect || session.stripped.appel)) return 'dong'
    return next()
  })
  ctx.on('bot-status-updated', (bot) => console.log(`STATUS ${bot.status} ${bot.selfId}`))
}
