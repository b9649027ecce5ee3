// A Wechaty ding-dong bot (the official `wechaty` + `wechaty-puppet-service` packages, unmodified)
// on a puppet-rs server running the iLink backend against the fake iLink server. It logs in by the
// QR it is shown (the test confirms the scan on the fake), answers `ding` with `dong` and an image
// with its name and size, and ends on `bye`.
// Prints `SCAN <status>`, `LOGIN <id>`, `READY`, one line per message, and `COMPAT OK` at the end.
'use strict'
const { WechatyBuilder, types } = require('wechaty')

async function main () {
  const bot = WechatyBuilder.build({ name: 'compat-ilink', puppet: 'wechaty-puppet-service' })
  bot.on('error', (e) => console.error(`error ${e}`))
  bot.on('scan', (qrcode, status) => console.log(`SCAN ${status} ${qrcode}`))
  bot.on('login', (user) => console.log(`LOGIN ${user.id}`))
  bot.on('ready', () => console.log('READY'))
  bot.on('message', async (msg) => {
    if (msg.self()) return
    if (msg.room()) throw new Error('iLink has no rooms')
    if (msg.type() === types.Message.Image) {
      const file = await msg.toFileBox()
      const bytes = await file.toBuffer()
      console.log(`image ${file.name} ${bytes.length}`)
      await msg.say(`got ${file.name}, ${bytes.length} bytes`)
      return
    }
    const text = msg.text()
    console.log(`message ${msg.talker().id} ${JSON.stringify(text)}`)
    if (text === 'ding') {
      await msg.say('dong')
    } else if (text === 'bye') {
      await msg.say('再见')
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
