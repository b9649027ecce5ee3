// The ding-dong bot of the official Wechaty client (`wechaty` + `wechaty-puppet-service`, unmodified)
// on a puppet-rs server running the web backend. The test scans the QR in the fake web-WeChat server
// when this prints `scan 2`, then sends `ding` and `bye` from a friend's "phone".
// Prints one line per event, `dong sent` after answering, `COMPAT OK` at `bye`.
'use strict'
const { WechatyBuilder } = require('wechaty')

async function main () {
  const bot = WechatyBuilder.build({ name: 'compat-web', puppet: 'wechaty-puppet-service' })
  bot.on('error', (e) => console.error(`error ${e}`))
  bot.on('scan', (qrcode, status) => console.log(`scan ${status} ${qrcode}`))
  bot.on('login', (user) => console.log(`login ${user.id} ${user.name()}`))
  bot.on('ready', () => console.log('READY'))
  bot.on('message', async (msg) => {
    if (msg.self()) return
    const text = msg.text()
    console.log(`message ${msg.talker().name()} ${JSON.stringify(text)}`)
    if (text === 'ding') {
      await msg.say('dong')
      console.log('dong sent')
    } else if (text === 'bye') {
      await msg.say('bye')
      console.log('COMPAT OK')
      await bot.stop()
      process.exit(0)
    }
  })
  await bot.start()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
