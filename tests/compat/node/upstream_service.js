// The official Node puppet service (wechaty-puppet-service's PuppetServer, plaintext) wrapping
// wechaty-puppet-mock with a fixed little world, for the upstream backend's tests.
//
// Env: UPSTREAM_PORT, UPSTREAM_TOKEN (and WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_SERVER=true).
// Prints `UPSTREAM READY` once serving. Reads commands on stdin, one a line:
//   say <text>   node_alice says <text> to the bot
//   file <name> <size> <seed>   node_alice sends a file of <size> pattern bytes (see pattern())
// and answers each with `done <command>`.

const readline = require('readline')
const { PuppetServer } = require('wechaty-puppet-service')
const { PuppetMock, mock } = require('wechaty-puppet-mock')
const { FileBox } = require('file-box')

const port = process.env.UPSTREAM_PORT
const token = process.env.UPSTREAM_TOKEN
if (!port || !token) {
  console.error('UPSTREAM_PORT and UPSTREAM_TOKEN are required')
  process.exit(2)
}

// The same bytes as puppet_tests::pattern_chunks(seed, len, _).
function pattern (seed, len) {
  const out = Buffer.alloc(len)
  for (let i = 0; i < len; i++) {
    const x = Math.imul(i >>> 0, 2654435761) >>> 0
    out[i] = ((x >>> 8) & 0xff) ^ seed
  }
  return out
}

const mocker = new mock.Mocker()
let user, alice
mocker.use(m => {
  user = m.createContact({ id: 'node_bot', name: 'Node Bot' })
  alice = m.createContact({ id: 'node_alice', name: 'Alice' })
  const bob = m.createContact({ id: 'node_bob', name: 'Bob' })
  m.createRoom({ id: 'node_room@chatroom', topic: 'Node room', memberIdList: [user.id, alice.id, bob.id] })
  m.login(user)
  return () => {}
})

async function main () {
  const puppet = new PuppetMock({ mocker })
  const server = new PuppetServer({ endpoint: `127.0.0.1:${port}`, puppet, token })
  await server.start()
  console.log('UPSTREAM READY')
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', line => {
    const [cmd, ...rest] = line.trim().split(' ')
    if (!alice) {
      // The mock's world is made when a client first calls Start.
      console.log(`not started ${cmd}`)
      return
    }
    if (cmd === 'say') {
      alice.say(rest.join(' ')).to(user)
    } else if (cmd === 'file') {
      const [name, size, seed] = rest
      // A Buffer FileBox cannot be serialized into the mock's file cache; base64 can.
      alice.say(FileBox.fromBase64(pattern(Number(seed), Number(size)).toString('base64'), name)).to(user)
    } else {
      console.error(`unknown command: ${line}`)
      return
    }
    console.log(`done ${cmd}`)
  })
  rl.on('close', async () => {
    await server.stop().catch(() => {})
    process.exit(0)
  })
}

main().catch(e => {
  console.error(e)
  process.exit(1)
})
