// The official Node Wechaty client (`wechaty` + `wechaty-puppet-service`, unmodified) finding its
// account by token discovery: no endpoint is configured, only
//   WECHATY_PUPPET_SERVICE_TOKEN      the account's token
//   WECHATY_PUPPET_SERVICE_AUTHORITY  host:port of the server's side port, which answers
//                                     GET https://<authority>/v0/hosties/<token>
// plus the trust for the server's generated CA: NODE_EXTRA_CA_CERTS (the discovery fetch uses Node's
// https agent) and WECHATY_PUPPET_SERVICE_TLS_CA_CERT (the gRPC channel is built with an explicit
// root, which replaces Node's store). See /work/notes/discovery.md for why each is needed.
//
// Modes (set by the test, never read by Wechaty):
//   EXPECT_SELF_ID=<id>  the bot must log in as <id>, then run the ding-dong bot: a contact of its
//                        world (CONTACT_ID) says "ding", the bot answers "dong", and the world (seen
//                        through puppetctl with the same token) shows the answer; bot.ding() → 'dong'.
//   EXPECT_NOT_FOUND=1   discovery must fail: prints `DISCOVERY ERROR <message>` for the client's own
//                        error and exits 0; a login is a failure.
// PUPPETCTL names the puppetctl binary, PUPPETCTL_ENDPOINT the gRPC address it talks to (passed as
// its --endpoint flag only: the bot's own environment holds no endpoint).
// Prints `ok <step>` per step and `DISCOVERY OK` at the end; exits non-zero on the first failure.
'use strict'
const assert = require('node:assert/strict')
const { execFileSync } = require('node:child_process')
const { WechatyBuilder } = require('wechaty')

const WAIT_MS = 20000

for (const v of ['WECHATY_PUPPET_SERVICE_ENDPOINT', 'WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT', 'WECHATY_PUPPET_SERVICE_TLS_SERVER_NAME']) {
  assert.equal(process.env[v], undefined, `${v} must not be set: the client finds its server by discovery alone`)
}
assert.ok(process.env.WECHATY_PUPPET_SERVICE_AUTHORITY, 'WECHATY_PUPPET_SERVICE_AUTHORITY is required')

const ctl = (...args) =>
  execFileSync(process.env.PUPPETCTL, ['--endpoint', process.env.PUPPETCTL_ENDPOINT, ...args], { encoding: 'utf8' }).trim()
const world = (conversation) => ctl('mock', 'messages', conversation).split('\n').filter(Boolean).map((l) => JSON.parse(l))

function waitFor (emitter, event, pred = () => true, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within ${ms} ms`)), ms)
    const handler = (...args) => {
      if (pred(...args)) {
        clearTimeout(timer)
        emitter.off(event, handler)
        resolve(args)
      }
    }
    emitter.on(event, handler)
  })
}

async function step (name, fn) {
  await fn()
  console.log(`ok ${name}`)
}

async function found (bot, selfId, contactId) {
  const loggedIn = waitFor(bot, 'login')
  const ready = waitFor(bot, 'ready')
  // The ding-dong bot, as in Wechaty's own example.
  const replied = new Promise((resolve, reject) => {
    bot.on('message', async (msg) => {
      if (msg.self() || msg.text() !== 'ding') return
      try {
        await msg.say('dong')
        resolve(msg.talker().id)
      } catch (e) {
        reject(e)
      }
    })
  })

  await step('start', () => bot.start())
  await step(`discovered, logged in as ${selfId}`, async () => {
    const [user] = await loggedIn
    await ready
    assert.equal(user.id, selfId, 'the bot logged in as the account its token names')
    assert.equal(bot.currentUser.id, selfId)
  })
  await step('ding → dong (a message from the world, answered by the bot)', async () => {
    ctl('mock', 'say', contactId, 'ding')
    const talker = await Promise.race([
      replied,
      new Promise((resolve, reject) => setTimeout(() => reject(new Error(`no ding within ${WAIT_MS} ms`)), WAIT_MS)),
    ])
    assert.equal(talker, contactId)
    const last = world(contactId).pop()
    assert.equal(last.talkerId, selfId, 'the answer came from this account')
    assert.equal(last.text, 'dong')
  })
  await step('bot.ding() → dong event', async () => {
    const dong = waitFor(bot, 'dong', (data) => data === 'discovery-ding')
    bot.ding('discovery-ding')
    await dong
  })
  await bot.stop()
}

async function notFound (bot) {
  const failed = waitFor(bot, 'error', (e) => /discovery|resolution|does not exist/i.test(String(e && e.message ? e.message : e)))
  let login = null
  bot.on('login', (user) => { login = user.id })
  // start() does not reject on a resolution failure (the client waits out its own timeouts); the
  // client reports the failure as an 'error' event, which is what a user sees.
  const started = bot.start().catch((e) => e)
  const [err] = await failed
  assert.equal(login, null, `logged in as ${login} with a token the server does not hold`)
  console.log(`DISCOVERY ERROR ${String(err && err.message ? err.message : err)}`)
  await Promise.race([started, new Promise((resolve) => setTimeout(resolve, 100))])
}

async function main () {
  const bot = WechatyBuilder.build({ name: 'discovery-node', puppet: 'wechaty-puppet-service' })
  const errors = []
  bot.on('error', (e) => errors.push(String(e)))
  if (process.env.EXPECT_NOT_FOUND) {
    await notFound(bot)
  } else {
    assert.ok(process.env.EXPECT_SELF_ID, 'EXPECT_SELF_ID or EXPECT_NOT_FOUND is required')
    await found(bot, process.env.EXPECT_SELF_ID, process.env.CONTACT_ID || 'wxid_alice')
    assert.deepEqual(errors, [], 'no error events')
  }
  console.log('DISCOVERY OK')
}

main().then(() => process.exit(0), (e) => {
  console.error('DISCOVERY FAILED:', e && e.stack ? e.stack : e)
  process.exit(1)
})
