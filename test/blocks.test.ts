/**
 * The block protocol end to end: the codec on hostile bytes, then real libp2p nodes (TCP + noise + yamux on
 * 127.0.0.1) running BlockServer and BlockClient: round trip, a pipelined 50 MiB file, not-found, corrupt
 * and dying sources, timeouts, backpressure, and hostile streams.
 */
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { lpStream } from '@libp2p/utils'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { decodeBlockRequest, decodeBlockResponse, encodeBlockRequest, encodeBlockResponse, FrameError } from '../protocols/blocks.ts'
import { BlockMismatchError, dagPbCid, rawLeafCid } from '../protocols/cid-policy.ts'
import { BLOCKS_PROTOCOL } from '../protocols/ids.ts'
import { BLOCK_BYTES_MAX, BLOCK_FRAME_BYTES_MAX, BLOCK_REQUESTS_IN_FLIGHT_MAX, MiB } from '../protocols/limits.ts'
import { BlockServer } from '../node/block-server.ts'
import type { BlockSource } from '../node/block-server.ts'
import { BlockClient, BlockNotFoundError, BlocksUnavailableError, BlockTimeoutError } from '../node/block-client.ts'
import type { LeafRange } from '../node/block-client.ts'
import { configureLogging } from '../node/log.ts'

const logLines: string[] = []
configureLogging({ sink: { write: (line) => { logLines.push(line) } }, level: 'info' })

async function createNode (): Promise<Libp2p> {
  return createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: 16 * MiB, maxReadBufferLength: 20 * MiB } })],
    connectionManager: { inboundConnectionThreshold: 100 },
    services: { identify: identify() }
  })
}

async function connect (from: Libp2p, to: Libp2p): Promise<void> {
  const addr = to.getMultiaddrs()[0]
  if (addr == null) throw new Error('node has no listen address')
  await from.dial(addr)
}

/** Blocks in memory; `corrupt` flips a byte of every block it returns. */
class MemorySource implements BlockSource {
  readonly blocks = new Map<string, Uint8Array>()
  corrupt = false
  hang = false
  lookups = 0
  onLookup: (() => void) | undefined

  add (bytes: Uint8Array): CID {
    const cid = rawLeafCid(bytes)
    this.blocks.set(cid.toString(), bytes)
    return cid
  }

  async getBlock (cid: CID, options?: { signal?: AbortSignal }): Promise<Uint8Array | undefined> {
    this.lookups++
    this.onLookup?.()
    if (this.hang) {
      await new Promise((_resolve, reject) => {
        options?.signal?.addEventListener('abort', () => { reject(options.signal?.reason) }, { once: true })
      })
    }
    const bytes = this.blocks.get(cid.toString())
    if (bytes == null || !this.corrupt) return bytes
    const bad = Uint8Array.from(bytes)
    bad[0] = (bad[0] ?? 0) ^ 0xff
    return bad
  }
}

function randomLeaves (count: number, size = MiB): Array<{ cid: CID, bytes: Uint8Array }> {
  return Array.from({ length: count }, () => {
    const bytes = new Uint8Array(randomBytes(size))
    return { cid: rawLeafCid(bytes), bytes }
  })
}

function leafRanges (leaves: Array<{ cid: CID, bytes: Uint8Array }>): LeafRange[] {
  let offset = 0
  return leaves.map(({ cid, bytes }) => {
    const range = { cid, offset, length: bytes.byteLength }
    offset += bytes.byteLength
    return range
  })
}

function varint (n: number): number[] {
  const out: number[] = []
  while (n >= 0x80) { out.push((n & 0x7f) | 0x80); n = Math.floor(n / 128) }
  out.push(n)
  return out
}

async function waitFor (condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

describe('block codec', () => {
  const cid = rawLeafCid(new Uint8Array([1, 2, 3]))

  it('round-trips requests and responses', () => {
    expect(decodeBlockRequest(encodeBlockRequest(cid)).equals(cid)).toBe(true)
    const pb = dagPbCid(new Uint8Array([0x0a, 0x00]))
    expect(decodeBlockRequest(encodeBlockRequest(pb)).equals(pb)).toBe(true)
    const ok = decodeBlockResponse(encodeBlockResponse({ status: 'ok', bytes: new Uint8Array([9, 8, 7]) }))
    expect(ok).toEqual({ status: 'ok', bytes: new Uint8Array([9, 8, 7]) })
    expect(decodeBlockResponse(encodeBlockResponse({ status: 'ok', bytes: new Uint8Array(0) }))).toEqual({ status: 'ok', bytes: new Uint8Array(0) })
    expect(decodeBlockResponse(encodeBlockResponse({ status: 'not-found' }))).toEqual({ status: 'not-found' })
    expect(decodeBlockResponse(encodeBlockResponse({ status: 'refused' }))).toEqual({ status: 'refused' })
  })

  it('refuses disallowed CIDs and hostile frames with FrameError only', () => {
    const sha512 = CID.createV1(0x55, Digest.create(0x13, new Uint8Array(64)))
    const identity = CID.createV1(0x55, Digest.create(0x00, new Uint8Array([1, 2, 3])))
    const cbor = CID.createV1(0x71, cid.multihash)
    const v0 = CID.createV0(Digest.create(0x12, new Uint8Array(32)))
    for (const bad of [sha512, identity, cbor, v0]) {
      expect(() => encodeBlockRequest(bad)).toThrow(FrameError)
      expect(() => decodeBlockRequest(bad.bytes)).toThrow(FrameError)
    }
    const reasons = (frame: Uint8Array): string => {
      try {
        decodeBlockRequest(frame)
        return 'accepted'
      } catch (err) {
        expect(err).toBeInstanceOf(FrameError)
        return (err as FrameError).reason
      }
    }
    expect(reasons(new Uint8Array(0))).toBe('empty')
    expect(reasons(new Uint8Array(129))).toBe('too-long')
    expect(reasons(Uint8Array.of(...cid.bytes, 0))).toBe('malformed')
    expect(reasons(cid.bytes.subarray(0, 10))).toBe('malformed')
    expect(reasons(cbor.bytes)).toBe('disallowed-cid')
    // fuzz: random bytes never escape as anything but FrameError
    for (let i = 0; i < 2000; i++) {
      const frame = new Uint8Array(randomBytes(i % 80))
      if (i % 3 === 0 && frame.length > 2) { frame[0] = 1; frame[1] = 0x55 }
      try { decodeBlockRequest(frame) } catch (err) { expect(err).toBeInstanceOf(FrameError) }
      try { decodeBlockResponse(frame) } catch (err) { expect(err).toBeInstanceOf(FrameError) }
    }
    expect(() => decodeBlockResponse(Uint8Array.of(1, 0))).toThrow(FrameError)
    expect(() => decodeBlockResponse(Uint8Array.of(3))).toThrow(FrameError)
    expect(() => decodeBlockResponse(new Uint8Array(BLOCK_BYTES_MAX + 2))).toThrow(FrameError)
    expect(() => encodeBlockResponse({ status: 'ok', bytes: new Uint8Array(BLOCK_BYTES_MAX + 1) })).toThrow(FrameError)
  })
})

describe('block protocol over libp2p', () => {
  let a: Libp2p, b: Libp2p, c: Libp2p
  let sourceA: MemorySource, sourceC: MemorySource
  let serverA: BlockServer, serverC: BlockServer
  let client: BlockClient
  let dir: string

  beforeAll(async () => {
    [a, b, c] = await Promise.all([createNode(), createNode(), createNode()])
  })

  afterAll(async () => {
    await Promise.all([a, b, c].map(async n => { await n.stop() }))
  })

  beforeEach(async () => {
    if (a.status !== 'started') await a.start()
    sourceA = new MemorySource()
    sourceC = new MemorySource()
    serverA = new BlockServer({ node: a }, { source: sourceA })
    serverC = new BlockServer({ node: c }, { source: sourceC })
    await serverA.start()
    await serverC.start()
    await connect(b, a)
    await connect(b, c)
    client = new BlockClient({ node: b })
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-blocks-'))
    logLines.length = 0
  })

  afterEach(async () => {
    await serverA.stop()
    await serverC.stop()
    await fs.rm(dir, { recursive: true, force: true })
  })

  it('round-trips a single block and counts it on both sides', async () => {
    const [leaf] = randomLeaves(1, 300_000)
    if (leaf == null) throw new Error('no leaf')
    sourceA.add(leaf.bytes)
    const bytes = await client.getBlock(a.peerId, leaf.cid)
    expect(Buffer.from(bytes).equals(Buffer.from(leaf.bytes))).toBe(true)
    await waitFor(() => serverA.stats().blocksSent === 1, 'server stats')
    expect(serverA.stats().byPeer[b.peerId.toString()]).toEqual({ bytesSent: 300_000, blocks: 1 })
    expect(client.stats().byPeer[a.peerId.toString()]).toEqual({ bytesReceived: 300_000, blocks: 1 })
    // the empty raw block is a valid block too
    const empty = sourceA.add(new Uint8Array(0))
    expect((await client.getBlock(a.peerId, empty)).byteLength).toBe(0)
  })

  it('pipelines 50 x 1 MiB blocks into a file, byte for byte', async () => {
    const leaves = randomLeaves(50)
    for (const leaf of leaves) sourceA.add(leaf.bytes)
    const file = path.join(dir, 'out.bin')
    const fh = await fs.open(file, 'w+')
    const progress: number[] = []
    try {
      await client.fetchLeavesToFile({ leaves: leafRanges(leaves), sources: [a.peerId], fileHandle: fh, onProgress: (done, total) => { progress.push(done); expect(total).toBe(50 * MiB) } })
    } finally {
      await fh.close()
    }
    const got = await fs.readFile(file)
    expect(got.equals(Buffer.concat(leaves.map(l => l.bytes)))).toBe(true)
    expect(progress.at(-1)).toBe(50 * MiB)
    expect(serverA.stats().blocksSent).toBe(50)
    expect(client.stats().byPeer[a.peerId.toString()]?.bytesReceived).toBe(50 * MiB)
  })

  it('writes a repeated leaf at every offset but fetches it once', async () => {
    const zeros = new Uint8Array(MiB)
    const cid = sourceA.add(zeros)
    const fh = await fs.open(path.join(dir, 'zeros.bin'), 'w+')
    try {
      await client.fetchLeavesToFile({ leaves: [0, 1, 2].map(i => ({ cid, offset: i * MiB, length: MiB })), sources: [a.peerId], fileHandle: fh })
    } finally {
      await fh.close()
    }
    expect((await fs.readFile(path.join(dir, 'zeros.bin'))).equals(Buffer.alloc(3 * MiB))).toBe(true)
    expect(sourceA.lookups).toBe(1)
  })

  it('reports a block the peer does not have', async () => {
    const [missing] = randomLeaves(1, 1000)
    if (missing == null) throw new Error('no leaf')
    await expect(client.getBlock(a.peerId, missing.cid)).rejects.toBeInstanceOf(BlockNotFoundError)
    const fh = await fs.open(path.join(dir, 'missing.bin'), 'w+')
    try {
      const err = await client.fetchLeavesToFile({ leaves: leafRanges([missing]), sources: [a.peerId, c.peerId], fileHandle: fh }).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(BlocksUnavailableError)
      expect(Object.keys((err as BlocksUnavailableError).failures).sort()).toEqual([a.peerId.toString(), c.peerId.toString()].sort())
    } finally {
      await fh.close()
    }
    expect(serverA.stats().notFound).toBeGreaterThanOrEqual(2)
  })

  it('never serves corrupt bytes: the client falls back to an honest source', async () => {
    const leaves = randomLeaves(12)
    for (const leaf of leaves) { sourceA.add(leaf.bytes); sourceC.add(leaf.bytes) }
    sourceA.corrupt = true
    const first = leaves[0]
    if (first == null) throw new Error('no leaf')
    await expect(client.getBlock(a.peerId, first.cid)).rejects.toBeInstanceOf(BlockNotFoundError)
    const fh = await fs.open(path.join(dir, 'mixed.bin'), 'w+')
    try {
      await client.fetchLeavesToFile({ leaves: leafRanges(leaves), sources: [a.peerId, c.peerId], fileHandle: fh })
    } finally {
      await fh.close()
    }
    expect((await fs.readFile(path.join(dir, 'mixed.bin'))).equals(Buffer.concat(leaves.map(l => l.bytes)))).toBe(true)
    expect(serverA.stats().bytesSent).toBe(0)
    expect(serverA.stats().corruptWithheld).toBeGreaterThanOrEqual(1)
    expect(serverC.stats().blocksSent).toBe(12)
    expect(client.stats().corruptReceived).toBe(0)
    expect(logLines.some(l => l.includes('do not match the CID'))).toBe(true)
  })

  it('rejects a block that does not match its CID on the client side', async () => {
    const [leaf] = randomLeaves(1, 5000)
    if (leaf == null) throw new Error('no leaf')
    // a lying server: answers OK with other bytes (bypasses BlockServer)
    await serverA.stop()
    await a.handle(BLOCKS_PROTOCOL, async (stream) => {
      const lp = lpStream(stream)
      await lp.read()
      await lp.write(encodeBlockResponse({ status: 'ok', bytes: new Uint8Array(5000) }))
      await stream.close()
    })
    try {
      await expect(client.getBlock(a.peerId, leaf.cid)).rejects.toBeInstanceOf(BlockMismatchError)
      expect(client.stats().corruptReceived).toBe(1)
      sourceC.add(leaf.bytes)
      const fh = await fs.open(path.join(dir, 'liar.bin'), 'w+')
      try {
        await client.fetchLeavesToFile({ leaves: leafRanges([leaf]), sources: [a.peerId, c.peerId], fileHandle: fh })
      } finally {
        await fh.close()
      }
      expect((await fs.readFile(path.join(dir, 'liar.bin'))).equals(leaf.bytes)).toBe(true)
    } finally {
      await a.unhandle(BLOCKS_PROTOCOL)
    }
  })

  it('times out a block the source never answers', async () => {
    const [leaf] = randomLeaves(1, 1000)
    if (leaf == null) throw new Error('no leaf')
    sourceA.add(leaf.bytes)
    sourceA.hang = true
    const impatient = new BlockClient({ node: b }, { requestTimeoutMs: 300 })
    await expect(impatient.getBlock(a.peerId, leaf.cid)).rejects.toBeInstanceOf(BlockTimeoutError)
    // a caller's abort wins over the timeout
    const ctl = new AbortController()
    const pending = impatient.getBlock(a.peerId, leaf.cid, { signal: ctl.signal })
    ctl.abort(new Error('caller gave up'))
    await expect(pending).rejects.toThrow('caller gave up')
  })

  it('slows the fetch down to a slow writer: at most W blocks ahead', async () => {
    const leaves = randomLeaves(24)
    for (const leaf of leaves) sourceA.add(leaf.bytes)
    const release = Promise.withResolvers<void>()
    let delivered = 0
    const fetching = client.fetchBlocks(a.peerId, leaves.map(l => l.cid), async () => {
      if (delivered++ === 0) await release.promise
    })
    await waitFor(() => serverA.stats().blocksSent >= BLOCK_REQUESTS_IN_FLIGHT_MAX, 'a full window')
    // nothing more is sent while the writer is stuck on block 0 (absence check, not synchronisation)
    await new Promise(resolve => setTimeout(resolve, 300))
    expect(serverA.stats().blocksSent).toBe(BLOCK_REQUESTS_IN_FLIGHT_MAX)
    release.resolve()
    await fetching
    expect(delivered).toBe(24)
  })

  it('completes from the other source when one dies mid-transfer', async () => {
    const leaves = randomLeaves(40)
    for (const leaf of leaves) { sourceA.add(leaf.bytes); sourceC.add(leaf.bytes) }
    const fh = await fs.open(path.join(dir, 'dying.bin'), 'w+')
    let stopping: Promise<void> | undefined
    try {
      await client.fetchLeavesToFile({
        leaves: leafRanges(leaves),
        sources: [a.peerId, c.peerId],
        fileHandle: fh,
        onProgress: () => {
          // stop A once it has delivered a couple of blocks, while most of the file is still to come
          if (stopping == null && (client.stats().byPeer[a.peerId.toString()]?.blocks ?? 0) >= 2) stopping = Promise.resolve(a.stop())
        }
      })
    } finally {
      await fh.close()
    }
    await stopping
    expect(stopping).toBeDefined()
    expect((await fs.readFile(path.join(dir, 'dying.bin'))).equals(Buffer.concat(leaves.map(l => l.bytes)))).toBe(true)
    const fromA = client.stats().byPeer[a.peerId.toString()]?.blocks ?? 0
    const fromC = client.stats().byPeer[c.peerId.toString()]?.blocks ?? 0
    expect(fromA).toBeGreaterThan(0)
    expect(fromA).toBeLessThan(40)
    expect(fromA + fromC).toBeGreaterThanOrEqual(40)
  })

  it('stops a file fetch when the caller aborts, and closes its streams', async () => {
    const leaves = randomLeaves(20)
    for (const leaf of leaves) { sourceA.add(leaf.bytes); sourceC.add(leaf.bytes) }
    const ctl = new AbortController()
    const fh = await fs.open(path.join(dir, 'aborted.bin'), 'w+')
    try {
      const fetching = client.fetchLeavesToFile({
        leaves: leafRanges(leaves),
        sources: [a.peerId, c.peerId, a.peerId],
        fileHandle: fh,
        signal: ctl.signal,
        onProgress: (done) => { if (done >= 3 * MiB) ctl.abort(new Error('operator cancelled')) }
      })
      await expect(fetching).rejects.toThrow('operator cancelled')
    } finally {
      await fh.close()
    }
    await waitFor(() => serverA.stats().streamsOpen === 0 && serverC.stats().streamsOpen === 0, 'block streams to close')
    expect(client.stats().blocksReceived).toBeLessThan(20)
  })

  it('refuses an oversized frame, resets that stream, and keeps serving', async () => {
    const [leaf] = randomLeaves(1, 2000)
    if (leaf == null) throw new Error('no leaf')
    sourceA.add(leaf.bytes)
    // 1. a length prefix far over the request limit: answered REFUSED, then the stream is reset
    const stream = await b.dialProtocol(a.peerId, BLOCKS_PROTOCOL)
    const lp = lpStream(stream, { maxDataLength: BLOCK_FRAME_BYTES_MAX })
    stream.send(Uint8Array.of(...varint(1_000_000), ...randomBytes(50)))
    expect(decodeBlockResponse((await lp.read()).subarray())).toEqual({ status: 'refused' })
    await waitFor(() => stream.status !== 'open', 'the hostile stream to end')
    // 1b. a 200-byte frame: a valid-looking prefix, still over the limit
    const s200 = await b.dialProtocol(a.peerId, BLOCKS_PROTOCOL)
    const lp200 = lpStream(s200, { maxDataLength: BLOCK_FRAME_BYTES_MAX })
    s200.send(Uint8Array.of(...varint(200), ...randomBytes(200)))
    expect(decodeBlockResponse((await lp200.read()).subarray())).toEqual({ status: 'refused' })
    await waitFor(() => s200.status !== 'open', 'the 200-byte stream to end')
    // 1c. a 100 KB frame overflows the server's request buffer: the stream is reset
    const big = await b.dialProtocol(a.peerId, BLOCKS_PROTOCOL)
    await lpStream(big).write(new Uint8Array(100_000)).catch(() => {})
    await waitFor(() => big.status !== 'open', 'the oversized stream to be reset')
    // 2. well-framed garbage and a disallowed CID are refused, and the stream goes on
    const s2 = await b.dialProtocol(a.peerId, BLOCKS_PROTOCOL)
    const lp2 = lpStream(s2, { maxDataLength: BLOCK_FRAME_BYTES_MAX })
    await lp2.write(new Uint8Array(randomBytes(40)))
    await lp2.write(CID.createV1(0x71, leaf.cid.multihash).bytes)
    await lp2.write(leaf.cid.bytes)
    expect(decodeBlockResponse((await lp2.read()).subarray())).toEqual({ status: 'refused' })
    expect(decodeBlockResponse((await lp2.read()).subarray())).toEqual({ status: 'refused' })
    const ok = decodeBlockResponse((await lp2.read()).subarray())
    expect(ok.status === 'ok' && Buffer.from(ok.bytes).equals(leaf.bytes)).toBe(true)
    await s2.close()
    // 3. the server still serves everyone
    expect(Buffer.from(await client.getBlock(a.peerId, leaf.cid)).equals(leaf.bytes)).toBe(true)
    expect(serverA.stats().refused).toBeGreaterThanOrEqual(4)
  })

  it('does not read request N+W before response N is written', async () => {
    const [leaf] = randomLeaves(1)
    if (leaf == null) throw new Error('no leaf')
    sourceA.add(leaf.bytes)
    let aheadMax = 0
    sourceA.onLookup = () => { aheadMax = Math.max(aheadMax, sourceA.lookups - serverA.stats().blocksSent) }
    const stream = await b.dialProtocol(a.peerId, BLOCKS_PROTOCOL)
    const lp = lpStream(stream, { maxDataLength: BLOCK_FRAME_BYTES_MAX, maxBufferSize: 40 * MiB })
    // 100 requests (~4 KB, under the server's request buffer) in one write, then read them all slowly
    await lp.writeV(Array.from({ length: 100 }, () => leaf.cid.bytes))
    for (let i = 0; i < 100; i++) {
      const r = decodeBlockResponse((await lp.read()).subarray())
      expect(r.status).toBe('ok')
    }
    await stream.close()
    expect(sourceA.lookups).toBe(100)
    expect(aheadMax).toBeLessThanOrEqual(BLOCK_REQUESTS_IN_FLIGHT_MAX)
  })

  it('resets a stream that floods requests without reading, sending only a bounded amount', async () => {
    const [leaf] = randomLeaves(1)
    if (leaf == null) throw new Error('no leaf')
    sourceA.add(leaf.bytes)
    const stream = await b.dialProtocol(a.peerId, BLOCKS_PROTOCOL)
    const lp = lpStream(stream, { maxDataLength: BLOCK_FRAME_BYTES_MAX, maxBufferSize: 64 * MiB })
    // 5000 requests (~185 KB) sent at once, none read: the server reads W at a time and buffers ≤ 64 KiB
    await lp.writeV(Array.from({ length: 5000 }, () => leaf.cid.bytes)).catch(() => {})
    await waitFor(() => stream.status !== 'open' || serverA.stats().streamsOpen === 0, 'the server to reset the flood')
    expect(serverA.stats().blocksSent).toBeLessThan(64)
    expect(Buffer.from(await client.getBlock(a.peerId, leaf.cid)).equals(leaf.bytes)).toBe(true)
  })
})
