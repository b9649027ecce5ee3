// A Wechaty bot (the official `wechaty` + `wechaty-puppet-service` packages, unmodified) on a
// puppet-rs server running the Official Account backend. It answers followers the way a Wechaty
// user writes a bot; the test posts WeChat pushes to the server's webhook and reads the bot's
// answers back out of the HTTP responses (the passive replies).
// Prints `READY` once online, one line per handled event, and `COMPAT OK` when told `bye`.
'use strict'
const { WechatyBuilder, types } = require('wechaty')

async function main () {
  const bot = WechatyBuilder.build({ name: 'compat-oa', puppet: 'wechaty-puppet-service' })
  bot.on('error', (e) => console.error(`error ${e}`))
  bot.on('ready', () => console.log('READY'))
  bot.on('message', async (msg) => {
    if (msg.self()) return
    const talker = msg.talker()
    if (msg.type() === types.Message.Image) {
      const file = await msg.toFileBox()
      const bytes = await file.toBuffer()
      console.log(`image ${file.name} ${bytes.length}`)
      await msg.say(`got ${file.name}, ${bytes.length} bytes`)
      return
    }
    const text = msg.text()
    console.log(`message ${talker.id} ${JSON.stringify(text)}`)
    if (text === 'who am i') {
      await msg.say(`you are ${talker.name()}`)
    } else if (text === 'bye') {
      await msg.say('再见')
      console.log('COMPAT OK')
      await bot.stop()
      process.exit(0)
    } else {
      await msg.say(`echo: ${text}`)
    }
  })
  bot.on('friendship', async (friendship) => {
    console.log(`friendship ${friendship.type()} ${friendship.contact().id}`)
    if (friendship.type() === types.Friendship.Confirm) {
      await friendship.contact().say(`welcome ${friendship.contact().id}`)
    }
  })
  await bot.start()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
