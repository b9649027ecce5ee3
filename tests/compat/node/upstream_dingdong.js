// The ding-dong bot with the official Node Wechaty client (wechaty + wechaty-puppet-service,
// unmodified), configured only through the usual environment (WECHATY_PUPPET_SERVICE_ENDPOINT,
// WECHATY_PUPPET_SERVICE_TOKEN, WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT). It answers `ding`
// with `dong`. Prints `BOT READY` once logged in (the test then makes the world say `ding`), and
// `COMPAT OK` once its own `dong` came back as a message; exits non-zero after 60 s otherwise.
'use strict'
const { WechatyBuilder } = require('wechaty')

async function main () {
  const bot = WechatyBuilder.build({ name: 'upstream-dingdong', puppet: 'wechaty-puppet-service' })
  bot.on('error', e => console.error(`bot error: ${e}`))
  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no dong within 60 s')), 60000)
    bot.on('message', async msg => {
      const text = msg.text()
      console.log(`message ${msg.self() ? 'self' : 'from ' + msg.talker().id}: ${text}`)
      if (!msg.self() && text === 'ding') {
        await msg.say('dong')
        console.log('ok replied')
      } else if (msg.self() && text === 'dong') {
        clearTimeout(timer)
        resolve()
      }
    })
  })
  // Ready to answer once logged in (the mock puppet behind the Node service never says READY).
  const loggedIn = new Promise(resolve => bot.on('login', user => {
    console.log(`ok login ${user.id}`)
    resolve()
  }))
  await bot.start()
  await loggedIn
  console.log('BOT READY')
  await done
  console.log('COMPAT OK')
  await bot.stop()
  process.exit(0)
}

main().catch(e => {
  console.error(e)
  process.exit(1)
})
