// An IPFS dev node for tests and local multi-process runs: a Helia node (no networking) with a
// file-system blockstore, serving the subset of Kubo's RPC API that fedchain uses:
//
//   POST /api/v0/add?cid-version=1&raw-leaves=true&chunker=size-262144&pin=true&hash=sha2-256
//   POST /api/v0/cat?arg=<cid>          POST /api/v0/pin/add?arg=<cid>
//   POST /api/v0/block/stat?arg=<cid>   POST /api/v0/block/get?arg=<cid>
//   POST /api/v0/version
//
// Errors answer HTTP 500 with Kubo's JSON body {"Message", "Code", "Type": "error"}.
// Run with the project-local Node 24 (Helia needs Node >= 22):
//
//   node_modules/node/bin/node scripts/ipfs-devnode.mjs --host 127.0.0.1 --port 5001 --repo DIR
import { createServer } from 'node:http'
import { mkdirSync, readFileSync, writeFileSync, renameSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createHeliaLight } from 'helia'
import { unixfs } from '@helia/unixfs'
import { FsBlockstore } from 'blockstore-fs'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import * as dagPb from '@ipld/dag-pb'
import { CID } from 'multiformats/cid'

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '5001' },
    repo: { type: 'string' }
  }
})
if (!args.repo) {
  console.error('usage: ipfs-devnode.mjs --host 127.0.0.1 --port 5001 --repo DIR')
  process.exit(2)
}

const VERSION = '0.1.0-fedchain-devnode'
mkdirSync(args.repo, { recursive: true })
const blockstore = new FsBlockstore(join(args.repo, 'blocks'))
const helia = await createHeliaLight({ blockstore })
const fs = unixfs(helia)

// Helia keeps pins in its datastore, which is in memory here: keep them in the repo too, so
// a restarted node still knows what it pinned.
const pinsFile = join(args.repo, 'pins.json')
const pinned = new Set()
try {
  for (const text of JSON.parse(readFileSync(pinsFile, 'utf8'))) pinned.add(text)
} catch {}
for (const text of pinned) {
  for await (const _ of helia.pins.add(CID.parse(text), { offline: true })) {}
}

async function pin (cid) {
  if (!(await helia.pins.isPinned(cid))) {
    for await (const _ of helia.pins.add(cid, { offline: true })) {}
  }
  if (!pinned.has(cid.toString())) {
    pinned.add(cid.toString())
    writeFileSync(pinsFile + '.tmp', JSON.stringify([...pinned]))
    renameSync(pinsFile + '.tmp', pinsFile)
  }
}

class RpcError extends Error {}

function parseCid (text) {
  if (!text) throw new RpcError('argument "ipfs-path" is required')
  try {
    return CID.parse(text.replace(/^\/ipfs\//, ''))
  } catch (err) {
    throw new RpcError(`invalid path "${text}": ${err.message}`)
  }
}

async function requireBlock (cid) {
  if (!(await helia.blockstore.has(cid))) {
    throw new RpcError(`block was not found locally (offline): ipld: could not find ${cid}`)
  }
}

async function blockBytes (cid) {
  const chunks = []
  for await (const chunk of helia.blockstore.get(cid)) chunks.push(chunk)
  return Buffer.concat(chunks)
}

// Kubo's "Size" of an added file: the root block plus the Tsize of its links.
async function dagSize (cid) {
  const block = await blockBytes(cid)
  if (cid.code !== dagPb.code) return block.length
  return dagPb.decode(block).Links.reduce((sum, link) => sum + (link.Tsize ?? 0), block.length)
}

function importOptions (q) {
  const cidVersion = Number(q.get('cid-version') ?? '0')
  const rawLeaves = q.has('raw-leaves') ? q.get('raw-leaves') === 'true' : cidVersion === 1
  const hash = q.get('hash') ?? 'sha2-256'
  if (hash !== 'sha2-256') throw new RpcError(`unsupported hash function "${hash}"`)
  const chunker = q.get('chunker') ?? 'size-262144'
  const m = /^size-(\d+)$/.exec(chunker)
  if (!m) throw new RpcError(`unsupported chunker "${chunker}"`)
  return {
    cidVersion,
    rawLeaves,
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: Number(m[1]) }),
    layout: balanced({ maxChildrenPerNode: 174 })
  }
}

// The content of the first part of a multipart/form-data body, streamed: the tail that may
// hold the closing boundary is held back until the body ends.
async function * multipartFile (req) {
  const type = req.headers['content-type'] ?? ''
  const m = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(type)
  if (!type.startsWith('multipart/form-data') || !m) {
    throw new RpcError('file argument "path" is required (send multipart/form-data)')
  }
  const delimiter = Buffer.from(`\r\n--${m[1] ?? m[2]}`)
  let buf = Buffer.alloc(0)
  let inBody = false
  for await (const chunk of req) {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk
    if (!inBody) {
      const end = buf.indexOf('\r\n\r\n')
      if (end < 0) {
        if (buf.length > 65536) throw new RpcError('multipart part headers too long')
        continue
      }
      buf = buf.subarray(end + 4)
      inBody = true
    }
    const keep = delimiter.length + 8
    if (buf.length > keep) {
      yield buf.subarray(0, buf.length - keep)
      buf = buf.subarray(buf.length - keep)
    }
  }
  const end = buf.lastIndexOf(delimiter)
  if (!inBody || end < 0) throw new RpcError('multipart body ends without its closing boundary')
  if (end > 0) yield buf.subarray(0, end)
}

function sendJson (res, status, body) {
  const text = JSON.stringify(body) + '\n'
  res.writeHead(status, { 'Content-Type': 'application/json' })
  res.end(text)
}

const commands = {
  async version (q, req, res) {
    sendJson(res, 200, { Version: VERSION, Commit: '', Repo: '', System: process.platform, Golang: '' })
  },
  async add (q, req, res) {
    const options = importOptions(q)
    const cid = await fs.addByteStream(multipartFile(req), options)
    if (q.get('pin') !== 'false') await pin(cid)
    sendJson(res, 200, { Name: cid.toString(), Hash: cid.toString(), Size: String(await dagSize(cid)) })
  },
  async cat (q, req, res) {
    const cid = parseCid(q.get('arg'))
    await requireBlock(cid)
    const source = fs.cat(cid, { offline: true })[Symbol.asyncIterator]()
    // Read the first chunk before answering, so a missing block is still a JSON error.
    let first = await source.next()
    res.writeHead(200, { 'Content-Type': 'text/plain' })
    try {
      while (!first.done) {
        if (!res.write(first.value)) await new Promise((resolve) => res.once('drain', resolve))
        first = await source.next()
      }
      res.end()
    } catch (err) {
      console.error(`cat ${cid}: ${err.message}`)
      res.destroy(err)
    }
  },
  async 'pin/add' (q, req, res) {
    const cid = parseCid(q.get('arg'))
    await requireBlock(cid)
    await pin(cid)
    sendJson(res, 200, { Pins: [cid.toString()] })
  },
  async 'block/get' (q, req, res) {
    const cid = parseCid(q.get('arg'))
    await requireBlock(cid)
    const block = await blockBytes(cid)
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': block.length })
    res.end(block)
  },
  async 'block/stat' (q, req, res) {
    const cid = parseCid(q.get('arg'))
    await requireBlock(cid)
    sendJson(res, 200, { Key: cid.toString(), Size: (await blockBytes(cid)).length })
  }
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://devnode')
  const cmd = url.pathname.startsWith('/api/v0/') ? url.pathname.slice('/api/v0/'.length) : null
  const handler = cmd != null && Object.hasOwn(commands, cmd) ? commands[cmd] : null
  if (handler == null) {
    res.writeHead(404, { 'Content-Type': 'text/plain' })
    res.end('404 page not found')
    return
  }
  if (req.method !== 'POST') {
    res.writeHead(405, { 'Content-Type': 'text/plain' })
    res.end('405 - Method Not Allowed')
    return
  }
  try {
    await handler(url.searchParams, req, res)
  } catch (err) {
    if (!res.headersSent) {
      sendJson(res, 500, { Message: err.message, Code: 0, Type: 'error' })
    } else {
      res.destroy(err)
    }
    if (!(err instanceof RpcError)) console.error(`${cmd}: ${err.stack}`)
  }
})

server.listen(Number(args.port), args.host, () => {
  console.log(`ipfs-devnode ${VERSION} RPC API on http://${args.host}:${args.port}/api/v0, repo ${args.repo}`)
})

async function shutdown () {
  server.close()
  await helia.stop()
  process.exit(0)
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
