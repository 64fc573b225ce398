/**
 * The per-peer limits of the block and control protocols, in process on real libp2p nodes (loopback), with
 * small limits so they trip quickly: request rate (REFUSED + reset + penalty), open streams per peer over
 * several connections, outstanding block requests per peer (backpressure, never refused), and a control
 * sender that paces itself so an honest burst is never penalised. Each case checks another peer is still
 * served. (The same limits at their real values against a daemon: hostile.test.ts.)
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { lpStream } from '@libp2p/utils'
import type { Stream } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import { decodeBlockResponse, encodeBlockRequest } from '../protocols/blocks.ts'
import { rawLeafCid } from '../protocols/cid-policy.ts'
import { BLOCKS_PROTOCOL, CONTROL_PROTOCOL } from '../protocols/ids.ts'
import { BLOCK_FRAME_BYTES_MAX } from '../protocols/limits.ts'
import { BlockServer } from '../node/block-server.ts'
import type { BlockSource } from '../node/block-server.ts'
import { BlockClient } from '../node/block-client.ts'
import { ControlChannel, ok } from '../node/control.ts'
import { configureLogging, createLogger } from '../node/log.ts'
import type { MeshNode } from '../node/mesh.ts'

configureLogging({ sink: { write: () => {} } })
const log = createLogger('limits')

async function createNode (): Promise<Libp2p> {
  return await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionManager: { inboundConnectionThreshold: 100 },
    services: { identify: identify() }
  })
}

class Source implements BlockSource {
  readonly blocks = new Map<string, Uint8Array>()
  inFlight = 0
  inFlightMax = 0
  gate: Promise<void> | undefined
  add (bytes: Uint8Array): CID {
    const cid = rawLeafCid(bytes)
    this.blocks.set(cid.toString(), bytes)
    return cid
  }

  async getBlock (cid: CID): Promise<Uint8Array | undefined> {
    this.inFlight++
    this.inFlightMax = Math.max(this.inFlightMax, this.inFlight)
    try {
      await this.gate
      return this.blocks.get(cid.toString())
    } finally {
      this.inFlight--
    }
  }
}

async function until (what: string, fn: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

/** One length-prefixed reader/writer per stream (a second one would miss what the first already buffered). */
function lpOf (stream: Stream): ReturnType<typeof lpStream> {
  return lpStream(stream, { maxDataLength: BLOCK_FRAME_BYTES_MAX })
}

/** Reads responses until the stream fails; returns their statuses. */
async function readAll (lp: ReturnType<typeof lpStream>, max: number): Promise<string[]> {
  const out: string[] = []
  try {
    for (let i = 0; i < max; i++) out.push(decodeBlockResponse((await lp.read({ signal: AbortSignal.timeout(15_000) })).subarray()).status)
  } catch {}
  return out
}

describe('per-peer limits on the block protocol', () => {
  let server: Libp2p, attacker: Libp2p, honest: Libp2p
  let source: Source
  let blocks: BlockServer

  beforeEach(async () => {
    [server, attacker, honest] = await Promise.all([createNode(), createNode(), createNode()])
    await honest.dial(server.getMultiaddrs()[0] as any)
    source = new Source()
  })

  afterEach(async () => {
    await blocks?.stop()
    await Promise.all([server, attacker, honest].map(async (n) => { await n.stop() }))
  })

  it('a peer over its request rate gets REFUSED, its stream reset, and a penalty; others are served', async () => {
    blocks = new BlockServer({ node: server }, { source, requestsPerPeerPerSec: 5, requestsPerPeerBurst: 20, penaltyMs: 60_000 })
    await blocks.start()
    const cid = source.add(new Uint8Array([1, 2, 3]))
    await attacker.dial(server.getMultiaddrs()[0] as any)
    const s = await attacker.dialProtocol(server.peerId, BLOCKS_PROTOCOL)
    const lp = lpOf(s)
    await lp.writeV(Array.from({ length: 40 }, () => encodeBlockRequest(cid)))
    const statuses = await readAll(lp, 40)
    // the stream itself cost a token: 19 answered, then REFUSED and the reset
    expect(statuses.filter((x) => x === 'ok').length).toBe(19)
    expect(statuses.at(-1)).toBe('refused')
    await until('the stream reset', () => s.status !== 'open')
    // penalised: a new stream is refused at once
    const again = await attacker.dialProtocol(server.peerId, BLOCKS_PROTOCOL).catch(() => undefined)
    if (again != null) {
      const lpAgain = lpOf(again)
      await lpAgain.write(encodeBlockRequest(cid)).catch(() => {})
      expect(await readAll(lpAgain, 1)).toEqual([])
    }
    const stats = blocks.stats()
    expect(stats.rate.limited).toBe(1)
    expect(stats.rate.penalties).toBe(1)
    expect(stats.rate.penalisedNow).toBe(1)
    await until('refusal counted', () => blocks.stats().rate.refusedPenalised >= (again != null ? 1 : 0))
    // another peer is served
    expect(Array.from(await new BlockClient({ node: honest }).getBlock(server.peerId, cid))).toEqual([1, 2, 3])
  })

  it('open streams per peer are capped over all its connections', async () => {
    blocks = new BlockServer({ node: server }, { source, streamsPerPeerMax: 2, penaltyMs: 60_000 })
    await blocks.start()
    const cid = source.add(new Uint8Array([4]))
    const addr = server.getMultiaddrs()[0] as any
    const c1 = await attacker.dial(addr)
    const c2 = await attacker.dial(addr, { force: true })
    expect(c1.id).not.toBe(c2.id)
    const s1 = await c1.newStream(BLOCKS_PROTOCOL)
    const s2 = await c2.newStream(BLOCKS_PROTOCOL)
    await until('two streams open on the server', () => blocks.stats().streamsOpen === 2)
    const s3 = await c2.newStream(BLOCKS_PROTOCOL)
    const lp3 = lpOf(s3)
    await lp3.write(encodeBlockRequest(cid)).catch(() => {})
    expect(await readAll(lp3, 1)).toEqual([])
    expect(blocks.stats().tooManyStreams).toBe(1)
    expect(blocks.stats().rate.penalties).toBe(1)
    for (const s of [s1, s2]) s.abort(new Error('done'))
    expect(Array.from(await new BlockClient({ node: honest }).getBlock(server.peerId, cid))).toEqual([4])
  })

  it('outstanding requests per peer are bounded over its streams: later ones wait, none are refused', async () => {
    blocks = new BlockServer({ node: server }, { source, outstandingPerPeerMax: 3 })
    await blocks.start()
    const cids = Array.from({ length: 4 }, (_, i) => source.add(new Uint8Array([i, i])))
    const release = Promise.withResolvers<void>()
    source.gate = release.promise
    await attacker.dial(server.getMultiaddrs()[0] as any)
    const streams = await Promise.all(Array.from({ length: 4 }, async () => await attacker.dialProtocol(server.peerId, BLOCKS_PROTOCOL)))
    const lps = streams.map(lpOf)
    for (const lp of lps) await lp.writeV(cids.map((c) => encodeBlockRequest(c)))
    await until('three lookups in flight', () => source.inFlight === 3)
    // another peer is not held up by this one's cap
    const honestGet = new BlockClient({ node: honest }).getBlock(server.peerId, cids[0] as CID)
    await until('the honest lookup in flight', () => source.inFlight === 4)
    expect(blocks.stats().outstanding).toBe(4)
    release.resolve()
    expect(Array.from(await honestGet)).toEqual([0, 0])
    const statuses = (await Promise.all(lps.map(async (lp) => await readAll(lp, 4)))).flat()
    expect(statuses).toEqual(Array(16).fill('ok'))
    expect(source.inFlightMax).toBe(4)
    for (const s of streams) await s.close()
    await until('slots all given back', () => blocks.stats().outstanding === 0)
  })
})

describe('per-peer limits on the control protocol', () => {
  let a: Libp2p, b: Libp2p
  beforeEach(async () => { [a, b] = await Promise.all([createNode(), createNode()]) })
  afterEach(async () => { await Promise.all([a, b].map(async (n) => { await n.stop() })) })

  it('an honest sender paces a burst below the receiver\'s rate: every request answered, nobody penalised', async () => {
    const init = { requestsPerPeerPerSec: 100, requestsPerPeerBurst: 20, penaltyMs: 60_000 }
    const receiver = new ControlChannel(a as unknown as MeshNode, log, init)
    let handled = 0
    await receiver.start(async () => { handled++; return ok() })
    const sender = new ControlChannel(b as unknown as MeshNode, log, init)
    await b.dial(a.getMultiaddrs()[0] as any)
    const started = performance.now()
    await Promise.all(Array.from({ length: 60 }, async (_, i) => await sender.request(a.peerId.toString(), { type: 'receipt', v: 1, cid: `c${i}`, role: 'owner', epoch: 1 })))
    expect(handled).toBe(60)
    expect(receiver.stats().rate).toMatchObject({ limited: 0, penalties: 0 })
    // 10 in the sender's burst, then 90 a second
    expect(performance.now() - started).toBeGreaterThan(400)
  })

  it('a sender ignoring the rate is refused and penalised', async () => {
    const receiver = new ControlChannel(a as unknown as MeshNode, log, { requestsPerPeerPerSec: 1, requestsPerPeerBurst: 5, penaltyMs: 60_000 })
    await receiver.start(async () => ok())
    await b.dial(a.getMultiaddrs()[0] as any)
    // one request first, so the connection is set up on both sides before the burst (libp2p aborts a
    // connection on which more than 10 streams arrive before that: MaxEarlyStreamsError)
    const warmUp = new ControlChannel(b as unknown as MeshNode, log)
    await warmUp.request(a.peerId.toString(), { type: 'receipt', v: 1, cid: 'c', role: 'owner', epoch: 1 })
    const results = await Promise.all(Array.from({ length: 12 }, async () => {
      try {
        const s = await b.dialProtocol(a.peerId, CONTROL_PROTOCOL)
        const lp = lpStream(s)
        await lp.write(new TextEncoder().encode('{"v":1,"type":"receipt","cid":"c","role":"owner","epoch":1}'))
        await lp.read({ signal: AbortSignal.timeout(15_000) })
        return 'answered'
      } catch {
        return 'refused'
      }
    }))
    expect(results.filter((r) => r === 'answered')).toHaveLength(4)
    expect(receiver.stats().rate.limited).toBe(1)
    expect(receiver.stats().rate.penalties).toBe(1)
    expect(receiver.stats().rate.refusedPenalised).toBe(7)
  })
})
