#!/usr/bin/env node
// Interop check: a stock @automerge/automerge-repo client against the Coalition Sync relay.
//
//   node interop.mjs --server http://127.0.0.1:PORT --invite CODE \
//       --doc <id of a coalition document created by Rust> --coalition <manifest id> \
//       [--storage DIR] [--timeout-ms 30000] \
//       [--forbidden-doc <plan id> --review-credential <a coordinator's credential>]
//
// 1. enrolls over HTTP (POST /api/v1/enroll) with a random actor;
// 2. connects a stock Repo with the stock WebSocket client adapter to
//    ws://HOST/sync?token=CREDENTIAL (the query-parameter form browsers use);
// 3. finds the document, waits until it has content, and adds a comment record to it the way a
//    coalition app would (one immutable JSON string under `comments/<id>`);
// 4. creates a new coalition document (root `doc_kind`, `doc_coalition`, `doc_owner` as scalar
//    strings) and waits until the relay acknowledges both documents' heads;
// 5. with --forbidden-doc: writes a need into the plan, which this device's role may not do, and
//    waits (reading the relay's quarantine with the coordinator's credential) until the relay
//    has refused and quarantined it;
// 6. prints `{"created": "<id>", "edited": "<id>", ...}` on stdout and exits 0.
//
// Any failure exits non-zero with a message on stderr. Every wait is bounded.

import { randomBytes } from "node:crypto"
import { parseArgs } from "node:util"
import {
  Repo,
  ImmutableString,
  isValidDocumentId,
} from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

const { values: args } = parseArgs({
  options: {
    server: { type: "string" },
    invite: { type: "string" },
    doc: { type: "string" },
    coalition: { type: "string" },
    storage: { type: "string" },
    "timeout-ms": { type: "string", default: "30000" },
    "doc-kind": { type: "string", default: "comments" },
    "forbidden-doc": { type: "string" },
    "review-credential": { type: "string" },
  },
})

const TIMEOUT = Number(args["timeout-ms"])

function fail(message, cause) {
  process.stderr.write(`interop: FAILED: ${message}\n`)
  if (cause) process.stderr.write(`  cause: ${cause?.stack ?? cause}\n`)
  process.exit(1)
}

function log(message) {
  process.stderr.write(`interop: ${message}\n`)
}

for (const name of ["server", "invite", "doc", "coalition"]) {
  if (!args[name]) fail(`--${name} is required`)
}
const stripUrl = id => id.replace(/^automerge:/, "")
const docId = stripUrl(args.doc)
const coalitionId = stripUrl(args.coalition)
if (!isValidDocumentId(docId)) fail(`--doc ${args.doc} is not an automerge document id`)
if (!isValidDocumentId(coalitionId)) fail(`--coalition ${args.coalition} is not an automerge document id`)

// Nothing may hang the test: one global deadline.
const deadline = setTimeout(
  () => fail(`gave up after ${TIMEOUT} ms (see the last step logged above)`),
  TIMEOUT,
)
deadline.unref()

process.on("unhandledRejection", e => fail("unhandled promise rejection", e))
process.on("uncaughtException", e => fail("uncaught exception", e))

/** Waits until `check()` is truthy, polling; fails with `what` after `ms`. */
async function until(what, check, ms = TIMEOUT) {
  const end = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > end) fail(`timed out waiting for ${what}`)
    await new Promise(r => setTimeout(r, 50))
  }
}

/** A UUIDv7, as the Rust client makes entity ids. */
function uuidv7() {
  const b = randomBytes(16)
  const ms = BigInt(Date.now())
  for (let i = 0; i < 6; i++) b[i] = Number((ms >> BigInt(8 * (5 - i))) & 0xffn)
  b[6] = (b[6] & 0x0f) | 0x70
  b[8] = (b[8] & 0x3f) | 0x80
  const h = b.toString("hex")
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

const sameHeads = (a, b) =>
  Array.isArray(a) && Array.isArray(b) && a.length === b.length &&
  [...a].sort().every((h, i) => h === [...b].sort()[i])

// 1. Enroll.
const server = args.server.replace(/\/+$/, "")
const actor = randomBytes(16).toString("hex")
const deviceName = `js-interop-${actor.slice(0, 6)}`
let enrolled
{
  let response
  try {
    response = await fetch(`${server}/api/v1/enroll`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      // A stock repo makes a new actor per document: let the relay bind them to this device.
      body: JSON.stringify({ invite: args.invite, device: deviceName, actor, random_actors: true }),
      signal: AbortSignal.timeout(TIMEOUT),
    })
  } catch (e) {
    fail(`cannot reach ${server}/api/v1/enroll`, e)
  }
  const text = await response.text()
  if (!response.ok) fail(`enrollment refused: HTTP ${response.status}: ${text}`)
  try {
    enrolled = JSON.parse(text)
  } catch (e) {
    fail(`enrollment answer is not JSON: ${text}`)
  }
  for (const field of ["credential", "device_id", "user", "org", "role", "coalitions", "server_peer_id"]) {
    if (!(field in enrolled)) fail(`enrollment answer lacks \`${field}\`: ${text}`)
  }
  if (!enrolled.coalitions.map(stripUrl).includes(coalitionId)) {
    fail(`enrollment gave coalitions ${JSON.stringify(enrolled.coalitions)}, not ${coalitionId}`)
  }
  log(`enrolled ${deviceName} as ${enrolled.user} of ${enrolled.org} (${enrolled.role}), device ${enrolled.device_id}`)
}

// 2. A stock repo over the stock WebSocket adapter, credential in the query string.
const wsUrl = `${server.replace(/^http/, "ws")}/sync?token=${encodeURIComponent(enrolled.credential)}`
const network = new WebSocketClientAdapter(wsUrl, 1000)
const repo = new Repo({
  network: [network],
  storage: args.storage ? new NodeFSStorageAdapter(args.storage) : undefined,
  // A browser app shares what it has with the relay it is connected to.
  sharePolicy: async () => true,
})

const relayPeer = await until("the relay's `peer` answer to our `join`", () => repo.peers.find(p => p))
log(`connected to relay peer ${relayPeer}` + (relayPeer === enrolled.server_peer_id ? "" : ` (enrollment said ${enrolled.server_peer_id})`))
if (relayPeer !== enrolled.server_peer_id) {
  fail(`the relay's peer id in the handshake (${relayPeer}) differs from enrollment's server_peer_id (${enrolled.server_peer_id})`)
}
const relayStorageId = await until(
  "the relay's storage id in its peer metadata",
  () => repo.peerMetadataByPeerId[relayPeer]?.storageId ?? (repo.peerMetadataByPeerId[relayPeer] && "none"),
)
log(`relay storage id: ${relayStorageId}`)

/** Waits until the relay has told us it holds exactly our heads of `handle`. */
async function untilRelayHas(handle, what) {
  if (relayStorageId === "none") {
    // Without a storage id the repo does not track the relay's heads: fall back on a pause.
    await new Promise(r => setTimeout(r, 2000))
    return
  }
  await until(`the relay to acknowledge ${what}`, () =>
    sameHeads(handle.getSyncInfo(relayStorageId)?.lastHeads, handle.heads()),
  )
}

// 3. Find the Rust document and edit it.
let handle
try {
  handle = await Promise.race([
    repo.find(`automerge:${docId}`),
    new Promise((_, reject) => setTimeout(() => reject(new Error(`find did not settle within ${TIMEOUT} ms`)), TIMEOUT)),
  ])
} catch (e) {
  fail(`repo.find(automerge:${docId}) failed: the relay did not give the document`, e)
}
const doc = await until("the document to have content", () => {
  const d = handle.doc()
  return d && Object.keys(d).length > 0 && d
})
for (const key of ["doc_kind", "doc_coalition"]) {
  if (typeof doc[key] !== "object" && typeof doc[key] !== "string") {
    fail(`document ${docId} has no \`${key}\` at its root: keys ${Object.keys(doc).join(", ")}`)
  }
}
if (String(doc.doc_coalition) !== coalitionId) {
  fail(`document ${docId} belongs to coalition ${doc.doc_coalition}, not ${coalitionId}`)
}
log(`found ${doc.doc_kind} document ${docId} with root keys ${Object.keys(doc).join(", ")}`)

const now = Math.floor(Date.now() / 1000)
const comment = {
  id: uuidv7(),
  kind: "comment",
  about: null,
  text: `Hello from a stock automerge-repo client (${deviceName})`,
  org: enrolled.org,
  user: enrolled.user,
  at: now,
}
// The commit message the Rust client writes, so that history attributes the change.
const commitInfo = {
  org: enrolled.org,
  user: enrolled.user,
  device: deviceName,
  action: "record",
  entity: "comments",
  id: comment.id,
  fields: Object.keys(comment),
}
handle.change(
  d => {
    if (!d.comments) d.comments = {}
    d.comments[comment.id] = new ImmutableString(JSON.stringify(comment))
  },
  { message: JSON.stringify(commitInfo), time: now },
)
log(`added comment ${comment.id}`)

// 4. A new document, as a member's app would make one.
const kind = args["doc-kind"]
const note = {
  id: uuidv7(),
  kind: "field_note",
  about: null,
  text: "Created by a stock automerge-repo client",
  org: enrolled.org,
  user: enrolled.user,
  at: now,
}
// As apps do: create the document, let its first (empty) change sync, then describe it. The
// coalition id is written as a plain string, which JavaScript keeps as text.
const created = repo.create()
await new Promise(resolve => setTimeout(resolve, 700))
created.change(
  d => {
    d.doc_kind = new ImmutableString(kind)
    d.doc_coalition = coalitionId
    d.doc_owner = new ImmutableString(enrolled.org)
    d.comments = {}
    d.comments[note.id] = new ImmutableString(JSON.stringify(note))
  },
  {
    message: JSON.stringify({ ...commitInfo, action: "create", id: note.id, fields: Object.keys(note) }),
    time: now,
  },
)
log(`created ${kind} document ${created.documentId}`)

// 5. Until the relay holds both.
await untilRelayHas(handle, `the comment in ${docId}`)
log(`relay acknowledged the edit of ${docId}`)
await untilRelayHas(created, `the new document ${created.documentId}`)
log(`relay acknowledged the new document ${created.documentId}`)
// 6. A change this device's role may not make: the relay must refuse and quarantine it.
let quarantined = null
if (args["forbidden-doc"]) {
  if (!args["review-credential"]) fail("--forbidden-doc needs --review-credential")
  const planId = stripUrl(args["forbidden-doc"])
  const plan = await repo.find(`automerge:${planId}`)
  await until("the plan to have content", () => {
    const d = plan.doc()
    return d && d.needs && d
  })
  const needId = uuidv7()
  plan.change(
    d => {
      d.needs[needId] = {
        id: needId,
        pillar: new ImmutableString("clearance"),
        amount: 1,
        currency: new ImmutableString("EUR"),
      }
    },
    { message: JSON.stringify({ ...commitInfo, action: "put", entity: "needs", id: needId }), time: now },
  )
  log(`wrote a need into plan ${planId}; waiting for the relay's quarantine to hold it`)
  quarantined = await until("the relay to quarantine the forbidden change", async () => {
    const response = await fetch(`${args.server}/api/v1/coalitions/${coalitionId}/quarantine`, {
      headers: { Authorization: `Bearer ${args["review-credential"]}` },
    })
    if (!response.ok) fail(`quarantine list: HTTP ${response.status}: ${await response.text()}`)
    const list = await response.json()
    return list.find(e => e.doc_id === planId && e.sent_by === enrolled.device_id)
  })
  log(`the relay refused it: ${quarantined.reason}`)
}

if (args.storage) await repo.flush()

process.stdout.write(
  JSON.stringify({
    created: created.documentId,
    edited: docId,
    comment: comment.id,
    note: note.id,
    org: enrolled.org,
    user: enrolled.user,
    device_id: enrolled.device_id,
    quarantined,
  }) + "\n",
)
await repo.shutdown().catch(() => {})
process.exit(0)
