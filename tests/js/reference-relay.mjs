#!/usr/bin/env node
// The JavaScript reference relay for the benchmarks: the same setup as the public
// automerge-repo-sync-server (a `ws` WebSocketServer in noServer mode behind an HTTP server,
// NodeWSServerAdapter, NodeFSStorageAdapter, a repo that shares nothing on its own and answers
// what it is asked), with the versions pinned in package.json.
//
//   node reference-relay.mjs PORT DATA_DIR
//
// Listens on 127.0.0.1:PORT only. WebSocket upgrades on any path are accepted (so
// `ws://127.0.0.1:PORT/sync?token=...` works as for our relay; the token is ignored: the
// reference relay has no authentication). `GET /` answers a one-line status. Prints
// `listening on 127.0.0.1:PORT` on stdout once ready. SIGINT/SIGTERM flush and exit.

import fs from "node:fs"
import http from "node:http"
import os from "node:os"
import { WebSocketServer } from "ws"
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

const [portArg, dataDir] = process.argv.slice(2)
const port = Number(portArg)
if (!Number.isInteger(port) || port < 0 || port > 65535 || !dataDir) {
  process.stderr.write("usage: node reference-relay.mjs PORT DATA_DIR\n")
  process.exit(2)
}
fs.mkdirSync(dataDir, { recursive: true })

const wsServer = new WebSocketServer({ noServer: true })
const repo = new Repo({
  network: [new NodeWSServerAdapter(wsServer)],
  storage: new NodeFSStorageAdapter(dataDir),
  peerId: `storage-server-${os.hostname()}`,
  // Since this is a server, we don't share generously: only documents peers ask for.
  sharePolicy: async () => false,
})

const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" })
  res.end("👍 @automerge/automerge-repo-sync-server (reference relay) is running\n")
})
server.on("upgrade", (request, socket, head) => {
  wsServer.handleUpgrade(request, socket, head, ws => {
    wsServer.emit("connection", ws, request)
  })
})
server.listen(port, "127.0.0.1", () => {
  const { port: bound } = server.address()
  process.stdout.write(`listening on 127.0.0.1:${bound}\n`)
})

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  server.close()
  for (const client of wsServer.clients) client.terminate()
  wsServer.close()
  try {
    await repo.flush()
    await repo.shutdown()
  } catch (e) {
    process.stderr.write(`reference-relay: shutdown: ${e}\n`)
  }
  process.exit(0)
}
process.on("SIGINT", stop)
process.on("SIGTERM", stop)
