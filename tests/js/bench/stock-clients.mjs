#!/usr/bin/env node
// Stock @automerge/automerge-repo clients for `relay-bench load --stock-js`: N repos in this one
// process, each with the stock WebSocket client adapter, editing shared documents at a steady
// rate, and measuring fan-out latency with clients that no one here wrote.
//
//   node stock-clients.mjs CONFIG.json
//
// CONFIG: {"url": "ws://127.0.0.1:PORT/sync", "tokens": [..] | null, "docs": ["<id>", ..],
//          "clients": N, "group": G, "rate": edits/s per client, "duration": s, "drain": s}
// Client i uses docs[floor(i / group)] and tokens[i] (as `?token=`, the browser form).
// Each edit adds a comment record `comments["j<i>-<seq>"]` (a JSON string, as the coalition's
// apps write them, so that the relay's checks accept it) whose text is performance.now(); every
// client of the document that sees the key arrive (a `change` event patch) records now - text:
// all clients share this process's clock. Prints one JSON line with the results on stdout. Every wait is bounded.

import fs from "node:fs"
import { performance } from "node:perf_hooks"
import { Repo, ImmutableString } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"))
const { url, tokens, docs, clients: N, group, rate, duration, drain } = config
const log = m => process.stderr.write(`stock-clients: ${m}\n`)
const sleep = ms => new Promise(r => setTimeout(r, ms))
const hardStop = setTimeout(() => {
  log("hard deadline reached")
  finish(true)
}, (duration + drain + 240) * 1000)
hardStop.unref()

const clients = []
let sent = 0
let delivered = 0
let expected = 0
let failed = 0
const latencies = []
let runMs = null

async function startClient(i) {
  const token = tokens ? tokens[i] : null
  const adapter = new WebSocketClientAdapter(token ? `${url}?token=${encodeURIComponent(token)}` : url, 1000)
  const repo = new Repo({ network: [adapter], sharePolicy: async () => true })
  const docId = docs[Math.floor(i / group)]
  const groupSize = Math.min(group, N - Math.floor(i / group) * group)
  const end = Date.now() + 120000
  while (repo.peers.length === 0) {
    if (Date.now() > end) throw new Error("no peer within 120 s")
    await sleep(20)
  }
  let handle
  for (let attempt = 0; ; attempt++) {
    try {
      handle = await Promise.race([
        repo.find(`automerge:${docId}`),
        sleep(60000).then(() => { throw new Error("find timed out") }),
      ])
      break
    } catch (e) {
      if (attempt >= 5) throw e
      await sleep(500)
    }
  }
  const mine = `j${i}-`
  handle.on("change", ({ patches }) => {
    const now = performance.now()
    for (const p of patches) {
      if (p.action !== "put" || p.path.length !== 2 || p.path[0] !== "comments") continue
      const key = String(p.path[1])
      if (!key.startsWith("j") || key.startsWith(mine)) continue
      const text = typeof p.value === "string" ? p.value : p.value?.val
      let sentAt
      try {
        sentAt = Number(JSON.parse(text).text)
      } catch {
        continue
      }
      if (!Number.isFinite(sentAt)) continue
      delivered++
      latencies.push(now - sentAt)
    }
  })
  clients.push({ i, repo, handle, groupSize, seq: 0 })
}

const t0 = Date.now()
for (let start = 0; start < N; start += 20) {
  const batch = []
  for (let i = start; i < Math.min(N, start + 20); i++) {
    batch.push(startClient(i).catch(e => { failed++; log(`client ${i}: ${e?.message ?? e}`) }))
  }
  await Promise.all(batch)
}
log(`${clients.length} clients ready in ${((Date.now() - t0) / 1000).toFixed(1)} s (${failed} failed)`)

const period = 1000 / rate
let editing = true
const timers = []
for (const c of clients) {
  const tick = () => {
    if (!editing) return
    c.seq++
    const key = `j${c.i}-${c.seq}`
    const comment = {
      id: key,
      kind: "comment",
      about: null,
      text: String(performance.now()),
      org: "MCA",
      user: `stock${c.i}`,
      at: Math.floor(Date.now() / 1000),
    }
    c.handle.change(d => { d.comments[key] = new ImmutableString(JSON.stringify(comment)) })
    sent++
    expected += c.groupSize - 1
  }
  timers.push(setTimeout(() => {
    tick()
    timers.push(setInterval(tick, period))
  }, Math.random() * period))
}
const runStart = performance.now()
await sleep(duration * 1000)
editing = false
for (const t of timers) { clearTimeout(t); clearInterval(t) }
runMs = performance.now() - runStart
const drainEnd = Date.now() + drain * 1000
while (delivered < expected && Date.now() < drainEnd) await sleep(100)
finish(false)

function finish(aborted) {
  const sorted = latencies.slice().sort((a, b) => a - b)
  const q = f => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * f))] : null)
  process.stdout.write(JSON.stringify({
    clients: clients.length, failed, sent, delivered, expected,
    run_ms: runMs,
    p50_ms: q(0.5), p99_ms: q(0.99), aborted,
  }) + "\n")
  process.exit(0)
}
