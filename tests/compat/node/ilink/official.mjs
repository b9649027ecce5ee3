// Tencent's own iLink client modules (@tencent-weixin/openclaw-weixin, compiled `dist/`), unmodified,
// against the fake iLink server (tests/fakes/ilink): QR login, receive a text, reply with the
// context token, upload and send an image, download and decrypt an inbound image. Every step
// asserts itself and prints `ok …`; the run ends with `ILINK OFFICIAL OK`.
//
// Run by tests/tests/e2e/ilink.rs:
//   node --import ./register.mjs official.mjs
// with ILINK_PKG (the installed package), ILINK_FAKE_BASE, ILINK_IMAGE (a file to send) set.
//
// Nothing here may reach Tencent: fetch is wrapped so the one hard-coded URL in the client
// (login-qr's FIXED_BASE_URL, https://ilinkai.weixin.qq.com) is rewritten to the fake, and any other
// address that is not 127.0.0.1 throws before a connection is attempted.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const PKG = process.env.ILINK_PKG;
const FAKE = process.env.ILINK_FAKE_BASE;
const CDN = `${FAKE}/c2c`;
const IMAGE = process.env.ILINK_IMAGE;
assert.ok(PKG && FAKE && IMAGE, "ILINK_PKG, ILINK_FAKE_BASE and ILINK_IMAGE must be set");

const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) => {
  let url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
  if (url.origin === "https://ilinkai.weixin.qq.com") {
    url = new URL(url.pathname + url.search, FAKE);
  }
  if (url.hostname !== "127.0.0.1") {
    throw new Error(`refusing to fetch ${url.origin}: this test talks to the local fake only`);
  }
  return realFetch(url, init);
};

const mod = (p) => import(pathToFileURL(path.join(PKG, "dist/src", p)).href);
const api = await mod("api/api.js");
const login = await mod("auth/login-qr.js");
const upload = await mod("cdn/upload.js");
const decrypt = await mod("cdn/pic-decrypt.js");
const send = await mod("messaging/send.js");
console.log("ok modules load on Node", process.version);

const control = async (what, body) => {
  const res = await realFetch(`${FAKE}/_fake/${what}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `control ${what}: ${text}`);
  return JSON.parse(text);
};

// 1. QR login.
const start = await login.startWeixinLoginWithQr({ apiBaseUrl: FAKE, botType: "3" });
assert.ok(start.qrcodeUrl, `no QR: ${start.message}`);
console.log("ok QR issued");
const waiting = login.waitForWeixinLogin({ sessionKey: start.sessionKey, apiBaseUrl: FAKE, timeoutMs: 60_000 });
await control("qr", { status: "scaned" });
const confirmed = await control("qr", { status: "confirmed" });
const result = await waiting;
assert.equal(result.connected, true, result.message);
assert.equal(result.botToken, confirmed.bot_token);
assert.match(result.accountId, /@im\.bot$/);
assert.equal(result.baseUrl, FAKE);
console.log("ok QR login confirmed");
const token = result.botToken;
const user = result.userId;

// 2. Receive a text through the long-poll.
const injected = await control("inject", { token, from: user, text: "hello from WeChat" });
const updates = await api.getUpdates({ baseUrl: FAKE, token, get_updates_buf: "", timeoutMs: 30_000 });
assert.equal(updates.ret, 0);
assert.equal(updates.msgs.length, 1);
const msg = updates.msgs[0];
assert.equal(msg.item_list[0].text_item.text, "hello from WeChat");
assert.equal(msg.context_token, injected.context_token);
assert.equal(typeof msg.message_id, "string", "uint64 message ids parse losslessly");
assert.ok(BigInt(msg.message_id) > BigInt(Number.MAX_SAFE_INTEGER));
assert.ok(updates.get_updates_buf);
console.log("ok text received");

// The cursor moves on: the next poll is held and comes back empty.
const again = await api.getUpdates({ baseUrl: FAKE, token, get_updates_buf: updates.get_updates_buf, timeoutMs: 30_000 });
assert.equal(again.ret, 0);
assert.equal(again.msgs.length, 0);
console.log("ok cursor advances");

// 3. Reply with the context token.
const opts = { baseUrl: FAKE, token, contextToken: msg.context_token };
const sent = await send.sendMessageWeixin({ to: user, text: "hello from the bot", opts });
assert.ok(sent.serverMessageId);
console.log("ok text sent");

// 4. Upload an image through the encrypted CDN, then send it.
const uploaded = await upload.uploadFileToWeixin({ filePath: IMAGE, toUserId: user, opts: { baseUrl: FAKE, token }, cdnBaseUrl: CDN });
assert.equal(uploaded.fileSize, fs.statSync(IMAGE).size);
await send.sendImageMessageWeixin({ to: user, text: "", uploaded, opts });
console.log("ok image uploaded and sent");

// 5. Download and decrypt what was uploaded, as an inbound image would be.
const aesKeyB64 = Buffer.from(uploaded.aeskey).toString("base64");
const back = await decrypt.downloadAndDecryptBuffer(uploaded.downloadEncryptedQueryParam, aesKeyB64, CDN, "test");
assert.deepEqual(back, fs.readFileSync(IMAGE));
console.log("ok image downloads and decrypts");

// 6. Typing, config and notify calls are accepted.
const cfg = await api.getConfig({ baseUrl: FAKE, token, ilinkUserId: user, contextToken: msg.context_token });
assert.equal(cfg.ret, 0);
await api.sendTyping({ baseUrl: FAKE, token, body: { ilink_user_id: user, typing_ticket: cfg.typing_ticket, status: 1 } });
assert.equal((await api.notifyStart({ baseUrl: FAKE, token })).ret, 0);
assert.equal((await api.notifyStop({ baseUrl: FAKE, token })).ret, 0);
console.log("ok getconfig, sendtyping, notifystart, notifystop");

console.log(`TOKEN ${token}`);
console.log("ILINK OFFICIAL OK");
