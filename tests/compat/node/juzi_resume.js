// The Juzi fork's puppet-service client (@juzi/wechaty-puppet-service, unmodified), configured
// through the usual environment (WECHATY_PUPPET_SERVICE_ENDPOINT, _TOKEN, _NO_TLS_INSECURE_CLIENT).
// It keeps the `seq` of the last event it saw on disk (under $HOME) and sends it when it connects.
// Prints `message <id>` per MESSAGE event and `LOGGED IN` after the login; the command `stop` on
// stdin stops the puppet (printing `STOPPED`) and exits.
'use strict'
const readline = require('readline')
const { PuppetService } = require('@juzi/wechaty-puppet-service')

async function main () {
  const puppet = new PuppetService()
  puppet.on('message', ({ messageId }) => console.log(`message ${messageId}`))
  puppet.on('login', ({ contactId }) => console.log(`LOGGED IN ${contactId}`))
  puppet.on('error', e => console.error(`puppet error: ${JSON.stringify(e)}`))
  await puppet.start()
  console.log('STARTED')
  readline.createInterface({ input: process.stdin }).on('line', async line => {
    if (line.trim() === 'stop') {
      await puppet.stop()
      console.log('STOPPED')
      process.exit(0)
    }
  })
}

main().catch(e => {
  console.error(e)
  process.exit(1)
})
