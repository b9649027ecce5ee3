// Fidelity proof of the fake web-WeChat server with the real wechat4u (npm 0.7.14).
//
// wechat4u logs in by "scanning" (the fake's auto-login phone), loads contacts, receives a text and
// an image, sends a text and a file, and the fake's outbox must hold them. wechat4u hard-codes
// https://<host> URLs, so this script (not the package) rewrites the scheme and host of its CONF to
// the fake's, once at start and again after the login redirect. Every step is asserted.
'use strict'
const assert = require('assert')
const crypto = require('crypto')
const Wechat = require('wechat4u')

const BASE = process.env.FAKE_WEB_BASE
const step = msg => console.log(`wechat4u fidelity: ${msg}`)

async function ctl (action, body) {
  const r = await fetch(`${BASE}/__fake/${action}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body || {})
  })
  return r.json()
}

function pointAtFake (conf) {
  for (const k of Object.keys(conf)) {
    if (typeof conf[k] === 'string') conf[k] = conf[k].replace(/^https:\/\/[^/]+/, BASE)
  }
}

function waitFor (what, pred, ms = 20000) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now()
    const tick = () => {
      const v = pred()
      if (v) return resolve(v)
      if (Date.now() - t0 > ms) return reject(new Error(`timed out waiting for ${what}`))
      setTimeout(tick, 50)
    }
    tick()
  })
}

async function main () {
  const bot = new Wechat()
  pointAtFake(bot.CONF)
  const checkLogin = bot.checkLogin.bind(bot)
  bot.checkLogin = () => checkLogin().then(w => { pointAtFake(bot.CONF); return w })

  const seen = { uuid: null, avatar: false, login: false, messages: [], errors: [] }
  bot.on('uuid', uuid => { seen.uuid = uuid })
  bot.on('user-avatar', () => { seen.avatar = true })
  bot.on('login', () => { seen.login = true })
  bot.on('message', msg => seen.messages.push(msg))
  bot.on('error', err => seen.errors.push(String(err && err.stack || err)))
  bot.start()

  await waitFor('login', () => seen.login)
  assert.ok(seen.uuid, 'a uuid was emitted')
  assert.ok(seen.avatar, 'the 201 scanned status with the avatar was seen')
  assert.strictEqual(bot.user.NickName, 'PuppetBot')
  assert.ok(bot.PROP.skey.startsWith('@crypt_'), `skey parsed from the 301 XML: ${bot.PROP.skey}`)
  step(`logged in as ${bot.user.NickName}, uuid ${seen.uuid}`)

  const byNick = nick => Object.values(bot.contacts).find(c => c.NickName === nick)
  await waitFor('contacts', () => byNick('Dave') && byNick('Friends') && byNick('Friends').MemberList.length > 0)
  const alice = byNick('Alice').UserName
  assert.strictEqual(alice, (await ctl('at_id', { wxid: 'wxid_alice' })).at)
  assert.strictEqual(byNick('Friends').MemberList.length, 4, 'the room was batch-fetched with its members')
  step(`${Object.keys(bot.contacts).length} contacts, rooms batch-fetched`)

  await ctl('inject', { kind: 'text', from: 'wxid_alice', text: 'hi <wechat4u>\nline 2' })
  const text = await waitFor('the text', () => seen.messages.find(m => m.MsgType === bot.CONF.MSGTYPE_TEXT))
  assert.strictEqual(text.FromUserName, alice)
  assert.strictEqual(text.Content, 'hi <wechat4u>\nline 2')
  step('received the text')

  const png = crypto.randomBytes(300)
  await ctl('inject', { kind: 'image', from: 'wxid_alice', b64: png.toString('base64') })
  const image = await waitFor('the image', () => seen.messages.find(m => m.MsgType === bot.CONF.MSGTYPE_IMAGE))
  const got = await bot.getMsgImg(image.MsgId)
  assert.ok(Buffer.from(got.data).equals(png), 'image bytes round-trip')
  step('received the image and downloaded its bytes')

  const sent = await bot.sendMsg('hello from wechat4u', alice)
  assert.ok(sent.MsgID, 'a MsgID came back')
  const texts = (await ctl('outbox', { endpoint: 'webwxsendmsg' })).calls.filter(c => c.body.Msg.ToUserName === alice)
  assert.strictEqual(texts.length, 1)
  assert.strictEqual(texts[0].body.Msg.Content, 'hello from wechat4u')
  assert.strictEqual(texts[0].body.Msg.FromUserName, bot.user.UserName)
  step('sent a text; the fake recorded it')

  const content = crypto.randomBytes(600 * 1024)
  const r = await bot.sendMsg({ file: content, filename: 'notes.txt' }, alice)
  assert.ok(r.MsgID, 'the file message got a MsgID')
  const ups = (await ctl('uploads')).uploads
  assert.strictEqual(ups.length, 1)
  assert.strictEqual(ups[0].name, 'notes.txt')
  assert.strictEqual(ups[0].chunks, 2)
  assert.ok(Buffer.from(ups[0].b64, 'base64').equals(content), 'uploaded bytes match')
  const apps = (await ctl('outbox', { endpoint: 'webwxsendappmsg' })).calls
  assert.strictEqual(apps.length, 1)
  assert.ok(apps[0].body.Msg.Content.includes(ups[0].media_id), 'the app message names the uploaded media')
  step('sent a 600 KiB file in 2 chunks; the fake recorded it')

  assert.deepStrictEqual(seen.errors, [], 'wechat4u reported no errors')
  bot.stop()
  step('ok')
  process.exit(0)
}

main().catch(err => { console.error(err); process.exit(1) })
