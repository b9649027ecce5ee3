// A Wechaty bot (the official `wechaty` + `wechaty-puppet-service` packages, unmodified) that
// checks, step by step, what puppet-server answers. Configured only through the environment, as a
// user would: WECHATY_PUPPET_SERVICE_ENDPOINT, WECHATY_PUPPET_SERVICE_TOKEN and the TLS variables.
// PUPPETCTL names the puppetctl binary, used to make the mock world act and to look at it.
// Prints `ok <step>` per step and `COMPAT OK` at the end; exits non-zero on the first failure.
'use strict'
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { WechatyBuilder } = require('wechaty')
const { FileBox } = require('file-box')
const leveldown = require('leveldown')

const BOT = 'wxid_puppet_bot'
const ctl = (...args) => execFileSync(process.env.PUPPETCTL, args, { encoding: 'utf8' }).trim()
const world = (conversation) => ctl('mock', 'messages', conversation).split('\n').filter(Boolean).map((l) => JSON.parse(l))
const sha = (buf) => crypto.createHash('sha256').update(buf).digest('hex')
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'compat-node-'))

function waitFor (emitter, event, pred = () => true, ms = 15000) {
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

/**
 * Resolves once no LevelDB store under `dir` is held open by this process. wechaty-puppet-service
 * closes its payload stores from a 'logout' listener it does not await, so a bot started again at
 * once (the server replays the login instantly) can find the old store still locked and crash.
 */
async function storesReleased (dir, ms = 15000) {
  const stores = []
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name))
      else if (e.name === 'LOCK') stores.push(d)
    }
  }
  if (fs.existsSync(dir)) walk(dir)
  const deadline = Date.now() + ms
  for (const store of stores) {
    for (;;) {
      const db = leveldown(store)
      const err = await new Promise((resolve) => db.open({ createIfMissing: false }, resolve))
      if (!err) {
        await new Promise((resolve) => db.close(resolve))
        break
      }
      if (Date.now() > deadline) throw new Error(`${store} still locked after ${ms} ms: ${err}`)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
}

async function step (name, fn) {
  await fn()
  console.log(`ok ${name}`)
}

/** Downloads the file of a message through puppetctl and returns its sha256. */
function worldFileSha (messageId) {
  const out = path.join(tmp, `dl-${messageId}`)
  ctl('download', messageId, '-o', out)
  return sha(fs.readFileSync(out))
}

async function main () {
  const bot = WechatyBuilder.build({ name: 'compat-node', puppet: 'wechaty-puppet-service' })
  const errors = []
  bot.on('error', (e) => errors.push(String(e)))
  const scans = []
  bot.on('scan', (qrcode, status) => scans.push({ qrcode, status }))
  const loggedIn = waitFor(bot, 'login')
  const ready = waitFor(bot, 'ready')

  await step('start', () => bot.start())
  await step('scan → login → ready', async () => {
    const [user] = await loggedIn
    await ready
    assert.equal(user.id, BOT)
    assert.ok(scans.some((s) => s.status === 2 && s.qrcode.length > 0), JSON.stringify(scans))
  })

  let alice, bob, tea
  await step('contacts and payloads', async () => {
    const all = await bot.Contact.findAll()
    assert.ok(all.length >= 30, `only ${all.length} contacts`)
    alice = await bot.Contact.find({ id: 'wxid_alice' })
    assert.equal(alice.name(), 'Alice')
    assert.equal(alice.gender(), 2)
    assert.equal(await alice.alias(), 'Alice (work)')
    const news = await bot.Contact.find({ id: 'gh_news_daily' })
    assert.equal(news.type(), 2, 'an official account')
  })

  await step('alias set and get, including an empty alias', async () => {
    bob = await bot.Contact.find({ id: 'wxid_bob' })
    assert.ok(!(await bob.alias()), 'Bob starts without an alias')
    // The alias RPC itself (no client cache): an empty alias needs the deprecated wrapper filled,
    // or the Node client throws "can not get aliasWrapper".
    assert.equal(await bot.puppet.contactAlias('wxid_bob'), '')
    await bob.alias('Bobby')
    assert.equal(await bob.alias(), 'Bobby')
    assert.equal(await bot.puppet.contactAlias('wxid_bob'), 'Bobby')
    await bob.alias('')
    assert.equal(await bot.puppet.contactAlias('wxid_bob'), '', 'the alias was cleared')
  })

  await step('rooms: list, topic, members', async () => {
    const rooms = await bot.Room.findAll()
    assert.equal(rooms.length, 5)
    tea = await bot.Room.find({ topic: 'Tea Lovers' })
    assert.ok(tea, 'Tea Lovers found by topic')
    assert.equal(await tea.topic(), 'Tea Lovers')
    const members = await tea.memberAll()
    assert.deepEqual(members.map((m) => m.id).sort(), ['wxid_alice', 'wxid_bob', 'wxid_carol', 'wxid_dave', BOT].sort())
  })

  await step('a world message arrives, the bot replies, the world sees it', async () => {
    const got = waitFor(bot, 'message', (m) => m.text() === 'ding' && m.talker().id === 'wxid_alice')
    ctl('mock', 'say', 'wxid_alice', 'ding')
    const [msg] = await got
    assert.equal(msg.type(), bot.Message.Type.Text)
    await msg.say('dong')
    const last = world('wxid_alice').pop()
    assert.equal(last.talkerId, BOT)
    assert.equal(last.text, 'dong')
  })

  await step('ding → dong', async () => {
    const dong = waitFor(bot, 'dong', (data) => data === 'compat-ding')
    bot.ding('compat-ding')
    await dong
  })

  await step('say into a room with a mention', async () => {
    await tea.say('hello room', alice)
    const last = world('10001@chatroom').pop()
    assert.equal(last.talkerId, BOT)
    assert.ok(last.text.includes('hello room'), last.text)
    assert.deepEqual(last.mentionIds, ['wxid_alice'])
  })

  await step('send a 20 KiB Buffer (MessageSendFileStream)', async () => {
    const bytes = crypto.randomBytes(20 * 1024)
    const msg = await alice.say(FileBox.fromBuffer(bytes, 'small.bin'))
    assert.ok(msg, 'the sent message came back')
    assert.equal(world('wxid_alice').pop().filename, 'small.bin')
    assert.equal(worldFileSha(msg.id), sha(bytes))
  })

  await step('send a 100 KiB file (Upload + MessageSendFile with a Uuid box)', async () => {
    const bytes = crypto.randomBytes(100 * 1024)
    const file = path.join(tmp, 'big.bin')
    fs.writeFileSync(file, bytes)
    const msg = await alice.say(FileBox.fromFile(file))
    assert.equal(world('wxid_alice').pop().filename, 'big.bin')
    assert.equal(worldFileSha(msg.id), sha(bytes))
  })

  await step('send a Url box', async () => {
    await alice.say(FileBox.fromUrl('https://example.com/cat.jpg', { name: 'cat.jpg' }))
    const last = world('wxid_alice').pop()
    assert.equal(last.filename, 'cat.jpg')
    assert.equal(last.type, 6, 'an image (wechaty-puppet numbering)')
  })

  await step('receive a file (Uuid + Download), checksum equal', async () => {
    const bytes = crypto.randomBytes(2 * 1024 * 1024 + 123)
    const file = path.join(tmp, 'from-alice.bin')
    fs.writeFileSync(file, bytes)
    const got = waitFor(bot, 'message', (m) => m.talker().id === 'wxid_alice' && m.type() === bot.Message.Type.Attachment)
    ctl('mock', 'send-file', 'wxid_alice', file)
    const [msg] = await got
    const box = await msg.toFileBox()
    assert.equal(box.name, 'from-alice.bin')
    assert.equal(sha(await box.toBuffer()), sha(bytes))
  })

  await step('DirtyPayload → DIRTY', async () => {
    const carol = await bot.Contact.find({ id: 'wxid_carol' })
    const dirty = waitFor(bot.puppet, 'dirty', (p) => p.payloadId === 'wxid_carol', 5000)
    await carol.sync()
    await dirty
  })

  await step('bot.stop() then start again', async () => {
    await bot.stop()
    await storesReleased(path.join(os.homedir(), '.wechaty'))
    const again = waitFor(bot, 'login')
    await bot.start()
    await again
    assert.ok(bot.isLoggedIn)
    await alice.say('back again')
    assert.equal(world('wxid_alice').pop().text, 'back again')
  })

  await step('server-side logout and the client\'s Logout echo', async () => {
    const out = waitFor(bot, 'logout')
    ctl('mock', 'logout', 'compat logout')
    const [user, reason] = await out
    assert.equal(user.id, BOT)
    assert.equal(reason, 'compat logout')
    assert.ok(ctl('version').startsWith('puppet-rs/'), 'the server is still there')
  })

  await bot.stop()
  fs.rmSync(tmp, { recursive: true, force: true })
  const fatal = errors.filter((e) => !/logout|must logout first/i.test(e))
  assert.deepEqual(fatal, [], 'no error events')
  console.log('COMPAT OK')
}

main().then(() => process.exit(0), (e) => {
  console.error('COMPAT FAILED:', e && e.stack ? e.stack : e)
  process.exit(1)
})
