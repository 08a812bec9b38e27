// Node y-websocket client for tests/e2e/test_node_interop.py: one WebsocketProvider, driven by a JSON plan.
// Imports only the pinned npm packages of tests/node/package.json; never imports project code.
//
// Usage: node interop.mjs <wsBaseUrl> <canvasId> <token|-> [planJSON]
//   wsBaseUrl  e.g. ws://127.0.0.1:8000 (the provider connects to <wsBaseUrl>/yjs/<canvasId>?token=...)
//   token      the JWT, or "-" to read it from the env var MAILY_NODE_TOKEN (keeps it out of argv)
//   planJSON   {
//     "name": "node",                     awareness user name
//     "mode": "write" | "readonly",       readonly: the write must be refused with a permission-denied
//                                         auth message, and the provider must stay connected
//     "element": {"key", "x", "y", "type"}  written into doc.getMap("elements") after sync (optional)
//     "cursor": {"x", "y"},               awareness cursor
//     "expect": ["key", ...],             element keys to wait for before finishing
//     "gate": true,                       print a "ready" event, then connect only when a line arrives
//                                         on stdin (lets the test start several clients at once)
//     "deadlineMs": 20000                 the whole run, from process start; then exit 3
//   }
//
// stdout: one JSON object per line, each with "event": "ready" (gate only), "synced", "written",
// "denied" (readonly only), then "done".
// Exit codes: 0 done, 2 bad arguments, 3 deadline passed, 4 unexpected disconnect or error.

import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const started = Date.now()
const [baseUrl, canvasId, tokenArg, planText = '{}'] = process.argv.slice(2)
if (!baseUrl || !canvasId || !tokenArg) {
  process.stderr.write('usage: node interop.mjs <wsBaseUrl> <canvasId> <token|-> [planJSON]\n')
  process.exit(2)
}
const token = tokenArg === '-' ? process.env.MAILY_NODE_TOKEN : tokenArg
if (!token) {
  process.stderr.write('expected a token argument or MAILY_NODE_TOKEN, got neither\n')
  process.exit(2)
}
let plan
try {
  plan = JSON.parse(planText)
} catch (err) {
  process.stderr.write(`plan is not JSON: ${err.message}\n`)
  process.exit(2)
}
const name = plan.name ?? 'node'
const mode = plan.mode ?? 'write'
if (mode !== 'write' && mode !== 'readonly') {
  process.stderr.write(`expected mode "write" or "readonly", got ${JSON.stringify(mode)}\n`)
  process.exit(2)
}
const expect = plan.expect ?? []
const deadlineMs = plan.deadlineMs ?? 20000

// y-websocket prints provider.url (which carries the token) in its permission-denied warning:
// redact it, and remember the warning so the readonly mode can check that it arrived.
const redact = (text) => String(text).split(token).join('<token>')
const warnings = []
for (const level of ['log', 'info', 'warn', 'error']) {
  console[level] = (...args) => {
    const text = redact(args.map((arg) => (arg instanceof Error ? arg.stack : String(arg))).join(' '))
    warnings.push(text)
    process.stderr.write(`[${level}] ${text}\n`)
  }
}

let exiting = false
const exit = (code, message) => {
  if (exiting) return
  exiting = true
  if (message) process.stderr.write(`interop.mjs: ${redact(message)}\n`)
  // stdout is a pipe: exit only once everything written so far is flushed
  process.stdout.write('', () => process.exit(code))
}

const selfKill = setTimeout(() => {
  exit(3, `deadline of ${deadlineMs} ms passed; state: ${JSON.stringify(state())}`)
}, deadlineMs)

process.on('uncaughtException', (err) => exit(4, `uncaught exception: ${err.stack ?? err}`))
process.on('unhandledRejection', (err) => exit(4, `unhandled rejection: ${err?.stack ?? err}`))

// Yjs decodes 64-bit integers written by other clients (pycrdt) as BigInt, which JSON cannot encode.
const toJSON = (value) =>
  JSON.stringify(value, (_key, v) => (typeof v === 'bigint' ? (Number.isSafeInteger(Number(v)) ? Number(v) : String(v)) : v))

const emit = (event, fields = {}) => {
  process.stdout.write(toJSON({ event, elapsedMs: Date.now() - started, ...fields }) + '\n')
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const waitFor = async (what, predicate) => {
  while (!predicate()) {
    if (exiting) await new Promise(() => {}) // the deadline handler is exiting the process
    await sleep(10)
  }
  return what
}

let provider = null
const doc = new Y.Doc()
const elements = doc.getMap('elements')
const statuses = []
const closes = []
let openedAt = null
let syncedAt = null
let denied = null

const state = () => ({
  statuses,
  closes,
  synced: provider?.synced ?? false,
  keys: Array.from(elements.keys()).sort(),
  expect,
  denied,
  warnings
})

if (plan.gate) {
  const go = new Promise((resolve) => process.stdin.once('data', resolve))
  emit('ready')
  await go
  process.stdin.pause()
}

provider = new WebsocketProvider(`${baseUrl.replace(/\/+$/, '')}/yjs`, canvasId, doc, {
  WebSocketPolyfill: WebSocket,
  params: { token },
  disableBc: true // only the server may carry updates between clients in this test
})
provider.on('status', ({ status }) => {
  statuses.push(status)
  process.stderr.write(`[status] ${status} at ${Date.now() - started} ms\n`)
  if (status === 'connected' && openedAt === null) openedAt = Date.now()
})
provider.on('connection-close', (event) => {
  closes.push(event ? { code: event.code, reason: redact(event.reason) } : null)
})
provider.on('connection-error', (event) => {
  warnings.push(`connection error: ${redact(event?.message ?? event)}`)
})

const connectedOnce = () => statuses.filter((s) => s === 'connected').length === 1 && closes.length === 0
const checkConnected = async (when) => {
  if (!connectedOnce() || !provider.wsconnected) {
    exit(4, `expected one uninterrupted connection ${when}, got ${JSON.stringify(state())}`)
    await new Promise(() => {})
  }
}

await waitFor('synced', () => provider.synced)
syncedAt = Date.now()
emit('synced', { clientId: doc.clientID, openedAt, syncedAt, elements: elements.toJSON() })

provider.awareness.setLocalState({
  user: { name },
  cursor: { x: plan.cursor?.x ?? 0, y: plan.cursor?.y ?? 0 }
})

if (plan.element) {
  const { key, x = 0, y = 0, type = 'rect' } = plan.element
  doc.transact(() => {
    const element = new Y.Map()
    element.set('x', x)
    element.set('y', y)
    element.set('type', type)
    element.set('createdBy', 'node')
    elements.set(key, element)
  })
  emit('written', { key })
}

if (mode === 'readonly') {
  await waitFor('permission denied', () => warnings.some((w) => w.includes('Permission denied')))
  denied = warnings.find((w) => w.includes('Permission denied'))
  await sleep(100) // a server that closes after the auth message would do it about now
  await checkConnected('after the permission-denied message')
  emit('denied', { warning: denied })
}

await waitFor(`elements ${expect}`, () => expect.every((key) => elements.has(key)))
await checkConnected('until the end')
const socket = provider.ws
await waitFor('send buffer flushed', () => socket === null || socket.bufferedAmount === 0)
const result = {
  clientId: doc.clientID,
  openedAt,
  syncedAt,
  elements: elements.toJSON(),
  awareness: Object.fromEntries(provider.awareness.getStates()),
  statuses: [...statuses],
  closes: [...closes],
  denied,
  warnings: [...warnings]
}
clearTimeout(selfKill)
provider.destroy()
emit('done', result)
exit(0)
