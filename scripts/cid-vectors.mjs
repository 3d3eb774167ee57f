// Reference CIDs from the IPFS reference importer (ipfs-unixfs-importer, the one @helia/unixfs
// uses) with the settings of `ipfs add --cid-version=1`. Writes tests/data/cid_vectors.json.
//
//   node_modules/node/bin/node scripts/cid-vectors.mjs [out.json]
//
// Input bytes follow a formula Python can regenerate: byte i of a vector with seed s is
// (i * 31 + 7 + s) & 255. Vectors with "text" use that UTF-8 text instead.
import { writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { importBytes } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const KiB = 1024
const MiB = 1024 * KiB
const CHUNK = 256 * KiB

const options = {
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: CHUNK }),
  layout: balanced({ maxChildrenPerNode: 174 })
}

// The importer only needs somewhere to put blocks; the CIDs are all we keep.
const nullStore = { put: async (cid) => cid }

function pattern (size, seed) {
  const out = new Uint8Array(size)
  for (let i = 0; i < size; i++) out[i] = (i * 31 + 7 + seed) & 255
  return out
}

const cases = [
  { name: 'empty', size: 0, seed: 0 },
  { name: 'one byte', size: 1, seed: 0 },
  { name: 'chunk - 1', size: CHUNK - 1, seed: 1 },
  { name: 'one chunk', size: CHUNK, seed: 2 },
  { name: 'chunk + 1', size: CHUNK + 1, seed: 3 },
  { name: '1 MiB', size: MiB, seed: 4 },
  { name: '1 MiB + 5', size: MiB + 5, seed: 5 },
  { name: '174 chunks', size: 174 * CHUNK, seed: 6 },
  { name: '175 chunks (two DAG levels)', size: 175 * CHUNK, seed: 7 },
  { name: '400 chunks + 123 (two DAG levels, 3 children)', size: 400 * CHUNK + 123, seed: 8 },
  { name: 'hello world', text: 'hello world\n' }
]

const vectors = []
for (const c of cases) {
  const bytes = c.text !== undefined ? new TextEncoder().encode(c.text) : pattern(c.size, c.seed)
  const result = await importBytes(bytes, nullStore, options)
  const entry = { name: c.name, size: bytes.length }
  if (c.text !== undefined) entry.text = c.text
  else entry.seed = c.seed
  entry.cid = result.cid.toString()
  vectors.push(entry)
}

const here = dirname(fileURLToPath(import.meta.url))
const out = process.argv[2] ?? join(here, '..', 'tests', 'data', 'cid_vectors.json')
const doc = {
  generator: 'scripts/cid-vectors.mjs with ipfs-unixfs-importer ' +
    '(cidVersion 1, rawLeaves, fixed-size 262144, balanced 174, reduceSingleLeafToSelf)',
  formula: 'byte i = (i * 31 + 7 + seed) & 255, unless "text" is given',
  vectors
}
writeFileSync(out, JSON.stringify(doc, null, 2) + '\n')
console.log(`wrote ${vectors.length} vectors to ${out}`)
