#!/usr/bin/env node
// Smoke test of the reference relay: starts `reference-relay.mjs` on a free loopback port with
// a temporary data directory, then two stock repos (stock WebSocket client adapter) sync one
// document through it, both ways, and a third repo finds it after the first two left (so the
// relay stored it). Exits non-zero with a message on failure; every wait is bounded.
//
//   node smoke-reference.mjs

import { spawn } from "node:child_process"
import fs from "node:fs"
import net from "node:net"
import os from "node:os"
import path from "node:path"
import { fileURLToPath } from "node:url"
import { Repo, ImmutableString } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const TIMEOUT = 20000
const here = path.dirname(fileURLToPath(import.meta.url))
let relay
let stopping = false
function fail(message, cause) {
  process.stderr.write(`smoke-reference: FAILED: ${message}\n`)
  if (cause) process.stderr.write(`  cause: ${cause?.stack ?? cause}\n`)
  relay?.kill("SIGKILL")
  process.exit(1)
}
setTimeout(() => fail(`gave up after ${TIMEOUT} ms`), TIMEOUT).unref()
process.on("unhandledRejection", e => fail("unhandled promise rejection", e))

async function until(what, check, ms = TIMEOUT) {
  const end = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > end) fail(`timed out waiting for ${what}`)
    await new Promise(r => setTimeout(r, 25))
  }
}

const port = await new Promise((resolve, reject) => {
  const s = net.createServer()
  s.listen(0, "127.0.0.1", () => {
    const { port } = s.address()
    s.close(() => resolve(port))
  })
  s.on("error", reject)
})
const data = fs.mkdtempSync(path.join(os.tmpdir(), "reference-relay-"))
relay = spawn(process.execPath, [path.join(here, "reference-relay.mjs"), String(port), data], {
  stdio: ["ignore", "pipe", "inherit"],
})
relay.on("exit", code => {
  if (!stopping) fail(`the reference relay exited early (code ${code})`)
})
await until("the reference relay to listen", () => new Promise(resolve => {
  const s = net.connect(port, "127.0.0.1", () => { s.end(); resolve(true) })
  s.on("error", () => resolve(false))
}))

const url = `ws://127.0.0.1:${port}/sync?token=ignored`
const client = () => new Repo({ network: [new WebSocketClientAdapter(url, 500)] })
const a = client()
const b = client()
await until("both clients to see the relay", () => a.peers.length > 0 && b.peers.length > 0)

const handleA = a.create()
handleA.change(d => {
  d.doc_kind = new ImmutableString("comments")
  d.comments = { one: new ImmutableString(JSON.stringify({ id: "one", text: "from A" })) }
})
const handleB = await b.find(handleA.url)
await until("B to get A's comment", () => handleB.doc()?.comments?.one)
handleB.change(d => {
  d.comments.two = new ImmutableString(JSON.stringify({ id: "two", text: "from B" }))
})
await until("A to get B's comment", () => handleA.doc()?.comments?.two)
await a.shutdown()
await b.shutdown()

const c = client()
await until("the third client to see the relay", () => c.peers.length > 0)
const handleC = await c.find(handleA.url)
await until("the stored document to reach a third client", () => {
  const d = handleC.doc()
  return d?.comments?.one && d?.comments?.two
})
await c.shutdown()

stopping = true
relay.kill("SIGTERM")
await new Promise(r => relay.once("exit", r))
fs.rmSync(data, { recursive: true, force: true })
process.stdout.write(`smoke-reference: ok (document ${handleA.documentId} synced through the reference relay on port ${port})\n`)
process.exit(0)
