/**
 * Seeded fuzzing of every decoder that takes bytes or strings from the network or the filesystem:
 * decodeGossip, decodeControlRequest, decodeControlReply, decodeChannelMessage (MessageError), decodeBlockRequest,
 * decodeBlockResponse (FrameError), decodeFileNode (DagError), parseCid (CidRejectedError) and sanitizeName
 * (never throws; its result is always one safe path component). Inputs are a mix of mutated valid
 * encodings, random bytes, and structured mutations of valid JSON messages. A "crash" is any exception other
 * than the decoder's typed error, or a decoded value that does not survive a re-encode round trip.
 *
 * FILEMESH_FUZZ_ITERATIONS (default 100000 per decoder) and FILEMESH_FUZZ_SEED (default: random, printed)
 * reproduce or extend a run: `FILEMESH_FUZZ_SEED=123 FILEMESH_FUZZ_ITERATIONS=1000000 npx vitest run test/fuzz.test.ts`.
 * (The inbox's sidecar parser is not exported, so it is covered by inbox.test.ts only.)
 */
import { describe, expect, it } from 'vitest'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { base36 } from 'multiformats/bases/base36'
import { base58btc } from 'multiformats/bases/base58'
import { base64 } from 'multiformats/bases/base64'
import { decodeBlockRequest, decodeBlockResponse, encodeBlockRequest, encodeBlockResponse, FrameError } from '../protocols/blocks.ts'
import { CidRejectedError, dagPbCid, parseCid, rawLeafCid } from '../protocols/cid-policy.ts'
import { BLOCK_BYTES_MAX, BLOCK_FRAME_BYTES_MAX, CONTROL_MESSAGE_BYTES_MAX, GOSSIP_MESSAGE_BYTES_MAX, SANITIZED_NAME_BYTES_MAX } from '../protocols/limits.ts'
import { MessageError, decodeChannelMessage, decodeControlReply, decodeControlRequest, decodeGossip, encodeMessage } from '../protocols/messages.ts'
import { UNNAMED, sanitizeName, utf8Bytes } from '../protocols/names.ts'
import { DagError, buildFileDag, decodeFileNode } from '../protocols/unixfs.ts'
import { prng } from '../sim/workload.ts'

const ITERATIONS = parseCount(process.env.FILEMESH_FUZZ_ITERATIONS) ?? 100_000
const SEED = parseCount(process.env.FILEMESH_FUZZ_SEED) ?? (Math.floor(Math.random() * 2 ** 31) >>> 0)
const TIMEOUT_MS = Math.max(60_000, ITERATIONS * 2)

function parseCount (s: string | undefined): number | undefined {
  if (s == null || s === '') return undefined
  const n = Number(s)
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`not a count: ${s}`)
  return n
}

// ---- seeded randomness ------------------------------------------------------------------------------

/** The project's seeded PRNG (mulberry32) with helpers to drive a fuzzer, fully determined by its seed. */
class Rng {
  readonly next: () => number
  constructor (seed: number) { this.next = prng(seed) }

  int (n: number): number { return Math.floor(this.next() * n) }
  bool (p = 0.5): boolean { return this.next() < p }
  pick<T> (items: readonly T[]): T { return items[this.int(items.length)] as T }
  bytes (n: number): Uint8Array {
    const out = new Uint8Array(n)
    for (let i = 0; i < n; i++) out[i] = this.int(256)
    return out
  }

  /** Mostly small lengths, sometimes up to `max`. */
  length (max: number): number {
    const r = this.next()
    if (r < 0.6) return this.int(Math.min(64, max + 1))
    if (r < 0.95) return this.int(Math.min(1024, max + 1))
    return this.int(max + 1)
  }
}

const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x3a, 0x2c, 0x30, 0x2d, 0xc0, 0xed, 0xf4, 0x12, 0x20, 0x55, 0x70]

/** Applies 1..4 random edits to `input`: bit flips, interesting bytes, inserts, deletes, duplicates, truncation, splices. */
function mutateBytes (rng: Rng, input: Uint8Array, corpus: readonly Uint8Array[], maxLen: number): Uint8Array {
  let b: Uint8Array = Uint8Array.from(input)
  const edits = 1 + rng.int(4)
  for (let e = 0; e < edits; e++) {
    const op = rng.int(8)
    const at = b.length === 0 ? 0 : rng.int(b.length)
    switch (op) {
      case 0: if (b.length > 0) b[at] = (b[at] as number) ^ (1 << rng.int(8)); break
      case 1: if (b.length > 0) b[at] = rng.pick(INTERESTING_BYTES); break
      case 2: b = concat(b.subarray(0, at), rng.bytes(1 + rng.int(8)), b.subarray(at)); break
      case 3: b = concat(b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(16)))); break
      case 4: { const len = 1 + rng.int(32); b = concat(b.subarray(0, at), b.subarray(at, at + len), b.subarray(at)); break }
      case 5: b = b.subarray(0, rng.int(b.length + 1)); break
      case 6: { const other = rng.pick(corpus); const from = rng.int(other.length + 1); b = concat(b.subarray(0, at), other.subarray(from, from + rng.int(64))); break }
      case 7: if (b.length > 0) b[at] = rng.int(256); break
    }
  }
  return b.length > maxLen ? b.subarray(0, maxLen) : b
}

function concat (...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) { out.set(p, o); o += p.length }
  return out
}

const enc = new TextEncoder()

const HOSTILE_VALUES: unknown[] = [
  null, true, false, 0, -0, -1, 1, 1.5, 2 ** 53, 2 ** 53 + 2, -(2 ** 53), 1e308, -1e308, Number.MAX_SAFE_INTEGER,
  '', ' ', 'x', '\u0000', '../../etc/passwd', '/abs', 'a'.repeat(1025), 'é'.repeat(600), '\ud800', '\u202e', '{}',
  [], [1], [''], ['a', 'b'], Array.from({ length: 17 }, () => 'p'), {}, { a: 1 }, { __proto__: { polluted: true } },
  'heartbeat', 'announce', 'assign', 'receipt', 'progress', 'reply', 'lease', 'decline', 'has', 'replicate', 'archived', 'handoff', 'coordinate', 'owner', 'backup',
  'processing', 'processed', 'failed', 'ingest', 'process', 'channel-announce', 'channel-have', 'deploy', '.hidden', 'a:b', 'AAA=', 'AA', '@@@@'
]

const FIELDS = ['type', 'v', 'cid', 'name', 'size', 'role', 'epoch', 'sources', 'owner', 'backup', 'state', 'attempt', 'error', 'pastOwners', 'excluded', 'to',
  'roles', 'weight', 'draining', 'addrs', 'seq', 'ok', 'code', 'reason', 'channel', 'version', 'publisher', 'sig', 'complete', 'blocks', 'have',
  '__proto__', 'constructor']

/** A JSON message with one to three fields deleted, replaced by hostile values, or added. */
function mutateJson (rng: Rng, base: Record<string, unknown>): Uint8Array {
  const obj: Record<string, unknown> = JSON.parse(JSON.stringify(base))
  const edits = 1 + rng.int(3)
  for (let e = 0; e < edits; e++) {
    const keys = Object.keys(obj)
    const op = rng.int(4)
    if (op === 0 && keys.length > 0) delete obj[rng.pick(keys)]
    else if (op === 1 && keys.length > 0) obj[rng.pick(keys)] = rng.pick(HOSTILE_VALUES)
    else if (op === 2) obj[rng.pick(FIELDS)] = rng.pick(HOSTILE_VALUES)
    else if (keys.length > 0) { const k = rng.pick(keys); obj[k] = [obj[k]] }
  }
  let text = JSON.stringify(obj)
  const shape = rng.int(100)
  if (shape === 0) { const n = 1 + rng.int(30_000); text = '['.repeat(n) + (rng.bool() ? ']'.repeat(n) : '') } // deep nesting
  else if (shape === 1) text = `${text} ${text}`
  else if (shape === 2) text = text.replace(/"v":1/, '"v":1.0000000000000001')
  else if (shape === 3) text = `{"v":1,"type":"assign","name":"${'\\u0000'.repeat(rng.int(3000))}"}`
  else if (shape === 4) text = text + ' '.repeat(rng.int(70_000))
  return enc.encode(text)
}

// ---- the harness ------------------------------------------------------------------------------------

interface FuzzResult { inputs: number, accepted: number, rejected: number, ms: number }

/**
 * Runs `check` over ITERATIONS inputs from `generate`. `check` returns true if the decoder accepted the input;
 * any exception it throws must be an instance of `typed`, else the run fails with the seed and the input.
 */
function fuzz<I> (name: string, seedOffset: number, generate: (rng: Rng, i: number) => I, check: (input: I) => boolean, typed: new (...args: any[]) => Error, show: (input: I) => string): FuzzResult {
  const seed = (SEED + seedOffset) >>> 0
  const rng = new Rng(seed)
  let accepted = 0
  let rejected = 0
  const started = performance.now()
  const cpuStart = process.cpuUsage()
  for (let i = 0; i < ITERATIONS; i++) {
    const input = generate(rng, i)
    try {
      if (check(input)) accepted++
      else rejected++
    } catch (err) {
      if (err instanceof typed) { rejected++; continue }
      throw new Error(`fuzz ${name}: crash at input ${i} (FILEMESH_FUZZ_SEED=${SEED}): ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}\ninput: ${show(input).slice(0, 2000)}`)
    }
  }
  const ms = Math.round(performance.now() - started)
  const cpu = process.cpuUsage(cpuStart)
  console.log(`fuzz ${name}: seed ${SEED} (+${seedOffset}), ${ITERATIONS} inputs, ${accepted} accepted, ${rejected} rejected with ${typed.name}, 0 crashes, ${ms} ms (${Math.round((cpu.user + cpu.system) / 1000)} ms CPU)`)
  return { inputs: ITERATIONS, accepted, rejected, ms }
}

/** For decoders that must not throw at all: no exception is an instance of this. */
class NeverThrown extends Error {}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')
const text = (b: Uint8Array): string => Buffer.from(b).toString('utf8')

// ---- corpora of valid encodings ---------------------------------------------------------------------

const leafCid = rawLeafCid(enc.encode('leaf'))
const smallDag = buildFileDag([0, 1, 2].map((i) => ({ cid: rawLeafCid(enc.encode(`l${i}`)), length: 1000 + i })), { maxLinks: 2 })
const dagCid = smallDag.root.toString()
const PEER = '12D3KooWGzLwGr1Ec1Sx7rX9Z4JXVxZ8rQ3YbqJpM3d1ZxWvKQ7F'

const GOSSIP_CORPUS: Array<Record<string, unknown>> = [
  { type: 'heartbeat', v: 1, roles: ['ingest', 'process'], weight: 1, draining: false, addrs: ['/ip4/127.0.0.1/tcp/4001'], seq: 1712345678901 },
  { type: 'heartbeat', v: 1, roles: ['backup'], weight: 0.5, draining: true, addrs: [], seq: 0 },
  { type: 'announce', v: 1, cid: dagCid, name: 'file.bin', size: 3003, owner: PEER, backup: PEER, epoch: 1 }
]
const CONTROL_CORPUS: Array<Record<string, unknown>> = [
  { type: 'assign', v: 1, cid: dagCid, name: 'report.csv', size: 3003, role: 'owner', epoch: 1, sources: [PEER] },
  { type: 'assign', v: 1, cid: leafCid.toString(), name: 'x', size: 4, role: 'backup', epoch: 7, sources: [] },
  { type: 'receipt', v: 1, cid: dagCid, role: 'backup', epoch: 1 },
  { type: 'progress', v: 1, cid: dagCid, epoch: 2, state: 'failed', attempt: 3, error: 'exit code 1' },
  { type: 'progress', v: 1, cid: dagCid, epoch: 1, state: 'processed', attempt: 1 },
  { type: 'lease', v: 1, cid: dagCid, role: 'owner', epoch: 1 },
  { type: 'decline', v: 1, cid: dagCid, role: 'backup', epoch: 1, reason: 'disk full' },
  { type: 'has', v: 1, cid: dagCid },
  { type: 'replicate', v: 1, cid: dagCid, name: 'report.csv', size: 3003, epoch: 1, sources: [PEER] },
  { type: 'archived', v: 1, cid: dagCid, epoch: 2 },
  { type: 'handoff', v: 1, cid: dagCid, epoch: 1, to: PEER },
  { type: 'assign', v: 1, cid: dagCid, name: 'report.csv', size: 3003, role: 'owner', epoch: 2, sources: [PEER], backup: PEER },
  { type: 'coordinate', v: 1, cid: dagCid, epoch: 3, owner: PEER, pastOwners: [PEER, '-'], excluded: [PEER] }
]
const CHANNEL_CORPUS: Array<Record<string, unknown>> = [
  { type: 'channel-announce', v: 1, channel: 'deploy', version: 3, cid: dagCid, size: 3003, name: 'release.tar', publisher: PEER, sig: Buffer.alloc(64, 7).toString('base64') },
  { type: 'channel-have', v: 1, channel: 'deploy', version: 3, cid: dagCid, complete: false, blocks: 20, have: Buffer.from([0xff, 0x01, 0x0f]).toString('base64') },
  { type: 'channel-have', v: 1, channel: 'deploy.v2_x-y', version: 3, cid: dagCid, complete: true },
  { type: 'channel-have', v: 1, channel: 'deploy', version: 0, complete: false }
]
const REPLY_CORPUS: Array<Record<string, unknown>> = [
  { type: 'reply', v: 1, ok: true },
  { type: 'reply', v: 1, ok: false, code: 'not-holder', error: 'you are not this file\'s owner' }
]

function jsonInputs (corpus: Array<Record<string, unknown>>, maxBytes: number): (rng: Rng) => Uint8Array {
  const encoded = corpus.map((m) => enc.encode(JSON.stringify(m)))
  return (rng) => {
    const r = rng.next()
    if (r < 0.4) return mutateJson(rng, rng.pick(corpus))
    if (r < 0.8) return mutateBytes(rng, rng.pick(encoded), encoded, maxBytes + 16)
    if (r < 0.9) return rng.bytes(rng.length(maxBytes + 16))
    return rng.pick(encoded)
  }
}

/** Decoded JSON messages must survive encode -> decode unchanged (compared as JSON: -0 and 0 are one). */
function roundTrips<T extends { type: string }> (decoded: T, decode: (b: Uint8Array) => T, maxBytes: number): true {
  const again = decode(encodeMessage(decoded as any, maxBytes))
  if (JSON.stringify(again) !== JSON.stringify(decoded)) throw new Error(`round trip changed the message: ${JSON.stringify(decoded)} -> ${JSON.stringify(again)}`)
  return true
}

describe(`seeded fuzz of every wire decoder (seed ${SEED}, ${ITERATIONS} inputs each)`, () => {
  it('decodeGossip throws only MessageError', () => {
    const r = fuzz('decodeGossip', 1, jsonInputs(GOSSIP_CORPUS, GOSSIP_MESSAGE_BYTES_MAX),
      (b) => roundTrips(decodeGossip(b), decodeGossip, GOSSIP_MESSAGE_BYTES_MAX), MessageError, text)
    expect(r.accepted).toBeGreaterThan(0)
    expect(r.rejected).toBeGreaterThan(0)
  }, TIMEOUT_MS)

  it('decodeControlRequest throws only MessageError', () => {
    const r = fuzz('decodeControlRequest', 2, jsonInputs(CONTROL_CORPUS, CONTROL_MESSAGE_BYTES_MAX),
      (b) => roundTrips(decodeControlRequest(b), decodeControlRequest, CONTROL_MESSAGE_BYTES_MAX), MessageError, text)
    expect(r.accepted).toBeGreaterThan(0)
    expect(r.rejected).toBeGreaterThan(0)
  }, TIMEOUT_MS)

  it('decodeChannelMessage throws only MessageError', () => {
    const r = fuzz('decodeChannelMessage', 9, jsonInputs(CHANNEL_CORPUS, GOSSIP_MESSAGE_BYTES_MAX),
      (b) => roundTrips(decodeChannelMessage(b), decodeChannelMessage, GOSSIP_MESSAGE_BYTES_MAX), MessageError, text)
    expect(r.accepted).toBeGreaterThan(0)
    expect(r.rejected).toBeGreaterThan(0)
  }, TIMEOUT_MS)

  it('decodeControlReply throws only MessageError', () => {
    const r = fuzz('decodeControlReply', 3, jsonInputs(REPLY_CORPUS, CONTROL_MESSAGE_BYTES_MAX),
      (b) => roundTrips(decodeControlReply(b), decodeControlReply, CONTROL_MESSAGE_BYTES_MAX), MessageError, text)
    expect(r.accepted).toBeGreaterThan(0)
  }, TIMEOUT_MS)

  it('decodeBlockRequest throws only FrameError, and accepts only policy CIDs', () => {
    const valid = [leafCid.bytes, smallDag.root.bytes, ...smallDag.nodes.map((n) => n.cid.bytes),
      CID.createV1(0x71, leafCid.multihash).bytes, CID.createV1(0x55, Digest.create(0x00, enc.encode('identity'))).bytes,
      CID.createV0(Digest.create(0x12, new Uint8Array(32))).bytes, CID.createV1(0x55, Digest.create(0x13, new Uint8Array(64))).bytes]
    const r = fuzz('decodeBlockRequest', 4, (rng) => {
      const p = rng.next()
      if (p < 0.7) return mutateBytes(rng, rng.pick(valid), valid, 200)
      if (p < 0.95) return rng.bytes(rng.length(200))
      return rng.pick(valid)
    }, (frame) => {
      const cid = decodeBlockRequest(frame)
      if (cid.version !== 1 || (cid.code !== 0x55 && cid.code !== 0x70) || cid.multihash.code !== 0x12 || cid.multihash.digest.length !== 32) throw new Error(`accepted a CID outside the policy: ${cid.toString()}`)
      if (!decodeBlockRequest(encodeBlockRequest(cid)).equals(cid)) throw new Error('round trip changed the CID')
      return true
    }, FrameError, hex)
    expect(r.accepted).toBeGreaterThan(0)
  }, TIMEOUT_MS)

  it('decodeBlockResponse throws only FrameError', () => {
    // frames at and one byte over the block limits (allocated once: they are large)
    const AROUND_THE_LIMIT = [BLOCK_BYTES_MAX, BLOCK_BYTES_MAX + 1, BLOCK_BYTES_MAX + 2, BLOCK_FRAME_BYTES_MAX, BLOCK_FRAME_BYTES_MAX + 1].map((n) => new Uint8Array(n))
    const valid = [encodeBlockResponse({ status: 'ok', bytes: enc.encode('block bytes') }), encodeBlockResponse({ status: 'not-found' }), encodeBlockResponse({ status: 'refused' }), encodeBlockResponse({ status: 'ok', bytes: new Uint8Array(0) })]
    const r = fuzz('decodeBlockResponse', 5, (rng) => {
      const p = rng.next()
      if (p < 0.6) return mutateBytes(rng, rng.pick(valid), valid, 4096)
      if (p < 0.999) return rng.bytes(rng.length(4096))
      return rng.pick(AROUND_THE_LIMIT)
    }, (frame) => {
      const res = decodeBlockResponse(frame)
      const again = decodeBlockResponse(encodeBlockResponse(res))
      if (again.status !== res.status || (res.status === 'ok' && again.status === 'ok' && Buffer.compare(again.bytes, res.bytes) !== 0)) throw new Error('round trip changed the response')
      return true
    }, FrameError, (b) => `${b.length} bytes: ${hex(b.subarray(0, 64))}`)
    expect(r.accepted).toBeGreaterThan(0)
  }, TIMEOUT_MS)

  it('decodeFileNode throws only DagError', () => {
    const leaves = Array.from({ length: 40 }, (_, i) => ({ cid: rawLeafCid(enc.encode(`leaf ${i}`)), length: 1 + i * 1000 }))
    const nodes = [
      ...buildFileDag(leaves, { maxLinks: 2 }).nodes,
      ...buildFileDag(leaves, { maxLinks: 7 }).nodes,
      ...buildFileDag(leaves.slice(0, 3)).nodes
    ].map((n) => n.bytes)
    const NODE_CID = dagPbCid(nodes[0] as Uint8Array)
    const r = fuzz('decodeFileNode', 6, (rng) => {
      const p = rng.next()
      const bytes = p < 0.8 ? mutateBytes(rng, rng.pick(nodes), nodes, 8192) : p < 0.97 ? rng.bytes(rng.length(2048)) : rng.pick(nodes)
      // the decoder does not hash (resolveLeaves verifies first), so any dag-pb CID will do; sometimes a raw
      // one, which it must refuse
      return { cid: rng.bool(0.95) ? NODE_CID : leafCid, bytes }
    }, ({ cid, bytes }) => {
      const node = decodeFileNode(cid, bytes, { maxLinks: 1024 })
      const sum = node.links.reduce((n, l) => n + l.blockSize, 0)
      if (sum !== node.fileSize || node.links.length === 0) throw new Error('decoded node is inconsistent')
      return true
    }, DagError, ({ bytes }) => hex(bytes))
    expect(r.accepted).toBeGreaterThan(0)
  }, TIMEOUT_MS)

  it('parseCid throws only CidRejectedError, and accepts only policy CIDs', () => {
    const valid = [leafCid.toString(), dagCid, leafCid.toString(base36), leafCid.toString(base58btc), leafCid.toString(base64),
      CID.createV0(Digest.create(0x12, new Uint8Array(32))).toString(), CID.createV1(0x71, leafCid.multihash).toString(),
      CID.createV1(0x55, Digest.create(0x00, enc.encode('x'))).toString()]
    const alphabet = 'abcdefghijklmnopqrstuvwxyz234567ABCDEFGHIJKLMNOPQRSTUVWXYZ0189+/=-_Qmzbfk '
    const r = fuzz('parseCid', 7, (rng) => {
      const p = rng.next()
      if (p < 0.5) {
        const chars = [...rng.pick(valid)]
        for (let e = 1 + rng.int(3); e > 0; e--) {
          const at = rng.int(chars.length + 1)
          const op = rng.int(3)
          if (op === 0) chars.splice(at, 1)
          else if (op === 1) chars.splice(at, 0, alphabet[rng.int(alphabet.length)] as string)
          else chars[at] = alphabet[rng.int(alphabet.length)] as string
        }
        return chars.join('')
      }
      if (p < 0.8) return Array.from({ length: rng.length(200) }, () => alphabet[rng.int(alphabet.length)]).join('')
      if (p < 0.95) return Buffer.from(rng.bytes(rng.length(200))).toString('latin1')
      return rng.pick(valid)
    }, (s) => {
      const cid = parseCid(s)
      if (cid.version !== 1 || (cid.code !== 0x55 && cid.code !== 0x70) || cid.multihash.code !== 0x12) throw new Error(`accepted a CID outside the policy: ${cid.toString()}`)
      return true
    }, CidRejectedError, (s) => JSON.stringify(s))
    expect(r.accepted).toBeGreaterThan(0)
  }, TIMEOUT_MS)

  it('sanitizeName never throws and always yields one safe, idempotent path component', () => {
    const pieces = ['..', '.', '/', '\\', '\u0000', '\u001f', '\u007f', '\u0085', '\u202e', '\u2066', '\u200f', 'e\u0301', '\u00e9',
      '\ud800', '\udfff', '😀', '👩‍👩‍👧', 'a', 'Z', '.tar.gz', '~', ' ', '\n', 'etc', 'passwd', 'C:', 'con', '\u0301'.repeat(50)]
    const r = fuzz('sanitizeName', 8, (rng) => {
      const p = rng.next()
      if (p < 0.6) return Array.from({ length: rng.length(60) }, () => rng.pick(pieces)).join('')
      if (p < 0.9) return String.fromCharCode(...Array.from({ length: rng.length(300) }, () => rng.int(0x10000)))
      if (p < 0.99) return Buffer.from(rng.bytes(rng.length(300))).toString('utf8')
      return rng.pick(['x', '..', 'é']).repeat(1 + rng.int(10_000)) // 10 KB names
    }, (raw) => {
      const name = sanitizeName(raw)
      if (name === '' || name === '.' || name === '..' || name.startsWith('.') || /[/\\\u0000-\u001f\u007f]/.test(name)) throw new Error(`unsafe name ${JSON.stringify(name)}`)
      if (utf8Bytes(name) > SANITIZED_NAME_BYTES_MAX) throw new Error(`name of ${utf8Bytes(name)} bytes`)
      if (name !== name.normalize('NFC') && name !== UNNAMED) throw new Error('not NFC')
      if (sanitizeName(name) !== name) throw new Error('not idempotent')
      return true
    }, NeverThrown, (s) => JSON.stringify(s))
    expect(r.accepted).toBe(ITERATIONS)
  }, TIMEOUT_MS)
})
