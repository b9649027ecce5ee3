// A ding-dong bot for puppet-rs (or any wechaty.Puppet service) with @grpc/grpc-js, loading the
// contract from ../../proto at run time (@grpc/proto-loader). It answers every text "ding" with "dong".
//
//   WECHATY_PUPPET_SERVICE_ENDPOINT=127.0.0.1:8788 WECHATY_PUPPET_SERVICE_TOKEN=... node bot.js
'use strict'
const path = require('node:path')
const { parseArgs } = require('node:util')
const grpc = require('@grpc/grpc-js')
const protoLoader = require('@grpc/proto-loader')

// wechaty-puppet's TypeScript number for text messages: what travels in MessagePayloadResponse.type.
const TEXT = 7
const log = (...args) => console.log(new Date().toISOString(), 'dingdong', ...args)

const { values: opts } = parseArgs({
  options: {
    endpoint: { type: 'string', default: process.env.WECHATY_PUPPET_SERVICE_ENDPOINT || '127.0.0.1:8788' },
    token: { type: 'string', default: process.env.WECHATY_PUPPET_SERVICE_TOKEN },
  },
})
if (!opts.token) {
  console.error('no token: pass --token or set WECHATY_PUPPET_SERVICE_TOKEN')
  process.exit(2)
}

const definition = protoLoader.loadSync('wechaty/puppet.proto', {
  includeDirs: [process.env.PUPPET_PROTO_DIR || path.join(__dirname, '..', '..', 'proto')],
  defaults: true,
})
const { wechaty } = grpc.loadPackageDefinition(definition)
const client = new wechaty.Puppet(opts.endpoint, grpc.credentials.createInsecure())
const metadata = new grpc.Metadata()
metadata.set('authorization', `Wechaty ${opts.token}`)
const call = (method, request) => new Promise((resolve, reject) =>
  client[method](request, metadata, (err, res) => (err ? reject(err) : resolve(res))))

let stream = null
let me = ''
let backoff = 1000

async function onMessage (id) {
  const msg = await call('MessagePayload', { id })
  if (msg.type !== TEXT || msg.text !== 'ding' || msg.talkerId === me) return
  const conversationId = msg.roomId || msg.talkerId
  const sent = await call('MessageSendText', { conversationId, text: 'dong' })
  log(`ding from ${msg.talkerId} -> dong (${sent.id})`)
}

function connect () {
  stream = client.Event({}, metadata)
  stream.on('data', (event) => {
    backoff = 1000
    const payload = JSON.parse(event.payload)
    if (event.type === 'EVENT_TYPE_LOGIN' || event.type === 25) {
      me = payload.contactId
      log(`logged in as ${me}`)
    } else if (event.type === 'EVENT_TYPE_MESSAGE' || event.type === 2) {
      onMessage(payload.messageId).catch((e) => log(`message ${payload.messageId}: ${e.message}`))
    }
  })
  const retry = (why) => {
    if (stream === null) return
    stream = null
    log(`event stream ended (${why}); reconnecting in ${backoff / 1000} s`)
    setTimeout(connect, backoff)
    backoff = Math.min(backoff * 2, 30000)
  }
  stream.on('error', (e) => retry(e.details || e.message))
  stream.on('end', () => retry('closed by the server'))
  call('Start', {}).then(() => log('listening for events'), (e) => log(`Start failed: ${e.message}`))
}

process.on('SIGINT', () => {
  log('bye')
  const s = stream
  stream = null
  if (s) s.cancel()
  client.close()
  process.exit(0)
})

connect()
