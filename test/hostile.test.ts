/**
 * Hostile peers against a real daemon process (`filemesh run`, roles ingest+process+backup, via
 * sim/local-mesh.ts). The other peers are in-process libp2p nodes: an honest ingest member (`coord`) that
 * assigns files and serves their blocks, a valid member with the process role (`rogue`, draining so it is never
 * given work) that forges other roles' messages, a peer that is no member at all (`stranger`), and raw-stream
 * attackers. Each case asserts the refusal AND that the daemon keeps serving honest peers.
 *
 * Client-side block verification (bytes that do not match the CID from a lying server, a source dying
 * mid-transfer, oversized and flooding block streams against BlockServer alone) is in blocks.test.ts; here the
 * same attacks go through the whole daemon: its fetch retries and never stores or processes bad bytes.
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import type { Connection, Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { decodeBlockRequest, decodeBlockResponse, encodeBlockRequest, encodeBlockResponse } from '../protocols/blocks.ts'
import { rawLeafCid } from '../protocols/cid-policy.ts'
import { BLOCKS_PROTOCOL, CONTROL_PROTOCOL, FILES_TOPIC } from '../protocols/ids.ts'
import {
  BLOCK_FRAME_BYTES_MAX, BLOCK_REQUEST_BYTES_MAX, CONTROL_MESSAGE_BYTES_MAX, CONTROL_REQUESTS_PER_PEER_BURST,
  CONTROL_REQUESTS_PER_PEER_PER_SEC, CONTROL_STREAMS_PER_PEER_MAX, GOSSIP_MESSAGE_BYTES_MAX, MiB
} from '../protocols/limits.ts'
import { decodeControlReply, encodeMessage } from '../protocols/messages.ts'
import type { AnnounceMessage, AssignMessage, ControlRequest } from '../protocols/messages.ts'
import type { Role } from '../protocols/roles.ts'
import { BlockClient } from '../node/block-client.ts'
import { ControlChannel, ControlRequestError, ok } from '../node/control.ts'
import { hashBytes } from '../node/hasher.ts'
import { configureLogging, createLogger } from '../node/log.ts'
import { MembershipService } from '../node/membership-service.ts'
import { createMeshNode } from '../node/mesh.ts'
import type { MeshNode } from '../node/mesh.ts'
import type { NodeStatus } from '../node/status.ts'
import { LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { dropLikeRsync, payload, readProcessingLog, recordingCommand, sha256Hex } from '../sim/workload.ts'

configureLogging({ sink: { write: () => {} } })
const log = createLogger('hostile')
/** Old-space heap of the daemon under test (MiB), and how much its RSS may grow during the flood. */
const DAEMON_HEAP_MiB = 160
const FLOOD_RSS_GROWTH_MAX_KiB = 96 * 1024

interface TestFile { cid: string, bytes: Uint8Array, sha256: string, leaves: Array<{ cid: string, offset: number, length: number }> }

/** Blocks served by the honest ingest member; `tamper` may replace what goes out (the n-th request for a CID). */
class TestSource {
  readonly blocks = new Map<string, Uint8Array>()
  readonly requests = new Map<string, number>()
  served = 0
  tamper: ((cid: string, n: number, bytes: Uint8Array) => Uint8Array | undefined) | undefined

  async add (bytes: Uint8Array): Promise<TestFile> {
    const manifest = await hashBytes(bytes)
    for (const leaf of manifest.leaves) this.blocks.set(leaf.cid.toString(), bytes.subarray(leaf.offset, leaf.offset + leaf.length))
    for (const node of manifest.nodes) this.blocks.set(node.cid.toString(), node.bytes)
    return { cid: manifest.root.toString(), bytes, sha256: sha256Hex(bytes), leaves: manifest.leaves.map((l) => ({ cid: l.cid.toString(), offset: l.offset, length: l.length })) }
  }

  /** A raw block-protocol handler (BlockServer would refuse to send bad bytes, which is the point here). */
  readonly handle = (stream: Stream): void => {
    const lp = lpStream(stream, { maxDataLength: BLOCK_REQUEST_BYTES_MAX })
    void (async () => {
      try {
        while (true) {
          let frame: Uint8Array
          try { frame = (await lp.read()).subarray() } catch { break }
          const key = decodeBlockRequest(frame).toString()
          const n = (this.requests.get(key) ?? 0) + 1
          this.requests.set(key, n)
          const bytes = this.blocks.get(key)
          const out = bytes == null ? undefined : (this.tamper?.(key, n, bytes) ?? bytes)
          this.served++
          await lp.write(encodeBlockResponse(out == null ? { status: 'not-found' } : { status: 'ok', bytes: out }))
        }
        await stream.close()
      } catch (err) {
        stream.abort(err instanceof Error ? err : new Error(String(err)))
      }
    })()
  }
}

/** An in-process mesh member: heartbeats with `roles` (unless none), a control channel, gossip. */
interface TestMember {
  node: MeshNode
  id: string
  control: ControlChannel
  members?: MembershipService
  got: Array<{ from: string, msg: ControlRequest }>
}

async function startMember (bootstrap: string, roles: Role[] | undefined, opts: { draining?: boolean } = {}): Promise<TestMember> {
  const node = await createMeshNode({ privateKey: await generateKeyPair('Ed25519'), bootstrap: [bootstrap] })
  const control = new ControlChannel(node, log)
  const got: TestMember['got'] = []
  await control.start(async (from, msg) => { got.push({ from, msg }); return ok() })
  node.services.pubsub.subscribe(FILES_TOPIC)
  let members: MembershipService | undefined
  if (roles != null) {
    members = new MembershipService(node, { nowMs: () => performance.now() }, log, { roles, heartbeatIntervalMs: 400 })
    if (opts.draining === true) members.setDraining(true)
    members.start()
  }
  return { node, id: node.peerId.toString(), control, members, got }
}

async function rawNode (): Promise<Libp2p> {
  return await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() }
  })
}

/** Unsigned varint of any size up to 2^64 (BigInt, so 2^53 encodes exactly). */
function varint (value: number | bigint): Uint8Array {
  let n = BigInt(value)
  const out: number[] = []
  while (n >= 0x80n) { out.push(Number(n & 0x7fn) | 0x80); n >>= 7n }
  out.push(Number(n))
  return Uint8Array.from(out)
}

/** Resolves once the stream is no longer open (reset or closed by the other side). */
async function ended (stream: Stream, what: string): Promise<void> {
  await waitFor(what, async () => stream.status !== 'open', 10_000, 20)
}

/** One length-prefixed request on a new stream: 'answered' if a reply frame came back, 'refused' if the stream was refused or reset. */
async function requestRaw (from: Libp2p, protocol: string, frame: Uint8Array, to?: string): Promise<'answered' | 'refused'> {
  try {
    const stream = await from.dialProtocol(peerIdFromString(to ?? hubIdForRaw), protocol, { signal: AbortSignal.timeout(10_000) })
    const lp = lpStream(stream)
    await lp.write(frame)
    await lp.read({ signal: AbortSignal.timeout(10_000) })
    return 'answered'
  } catch {
    return 'refused'
  }
}
let hubIdForRaw = ''

function procStatus (pid: number): Promise<{ rssKiB: number, fds: number }> {
  return (async () => {
    const status = await fs.readFile(`/proc/${pid}/status`, 'utf8')
    const rss = /VmRSS:\s+(\d+) kB/.exec(status)
    return { rssKiB: Number(rss?.[1] ?? Number.NaN), fds: (await fs.readdir(`/proc/${pid}/fd`)).length }
  })()
}

describe('a daemon under hostile peers', () => {
  let root: string
  let mesh: LocalMesh
  let hubId: string
  let procLog: string
  let coord: TestMember, rogue: TestMember, stranger: TestMember
  const source = new TestSource()
  const extra: Libp2p[] = []

  const hub = (): string => mesh.get('hub').info.addrs[0] as string
  const status = async (): Promise<NodeStatus> => await mesh.status('hub')
  const counter = async (name: string): Promise<number> => (await status()).counters[name] ?? 0
  const c = (st: NodeStatus, name: string): number => st.counters[name] ?? 0
  const processed = async (cid: string): Promise<Array<{ sha256: string, epoch: number }>> => (await readProcessingLog(procLog, 'hub')).filter((r) => r.cid === cid)
  const assign = (f: TestFile, role: 'owner' | 'backup', name = 'file.bin'): AssignMessage => ({ type: 'assign', v: 1, cid: f.cid, name, size: f.bytes.byteLength, role, epoch: 1, sources: [coord.id] })
  const gotFrom = (type: string, cid: string, pred: (m: any) => boolean = () => true): boolean => coord.got.some((g) => g.from === hubId && g.msg.type === type && g.msg.cid === cid && pred(g.msg))

  /** Waits until the hub sees `ids` as live members (after a start or a restart). */
  async function hubSees (...ids: string[]): Promise<void> {
    await waitFor('the hub to see the test members', async () => {
      const live = new Set((await status()).members.map((m) => m.peerId))
      return ids.every((id) => live.has(id))
    }, 20_000, 100)
  }

  const nodeOptions = process.env.NODE_OPTIONS

  beforeAll(async () => {
    // The daemon runs with a capped heap (also across its restart, which inherits this environment): memory
    // that grew with what peers send would crash it instead of just swelling, and RSS stays comparable.
    process.env.NODE_OPTIONS = `${nodeOptions ?? ''} --max-old-space-size=${DAEMON_HEAP_MiB} --max-semi-space-size=4`.trim()
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-hostile-'))
    procLog = path.join(root, 'processed.log')
    mesh = new LocalMesh(root)
    const d = await mesh.start('hub', { roles: ['ingest', 'process', 'backup'], args: ['--exec', recordingCommand(procLog), '--quiet-ms', '500', '--heartbeat-ms', '500'] })
    hubId = d.info.peerId
    hubIdForRaw = hubId
    ;[coord, rogue, stranger] = await Promise.all([
      startMember(hub(), ['ingest']),
      startMember(hub(), ['process'], { draining: true }),
      startMember(hub(), undefined)
    ])
    await coord.node.handle(BLOCKS_PROTOCOL, source.handle)
    await hubSees(coord.id, rogue.id)
  }, 60_000)

  afterAll(async () => {
    for (const m of [coord, rogue, stranger]) {
      m?.members?.stop()
      await m?.node.stop()
    }
    await Promise.all(extra.map(async (n) => { await n.stop() }))
    await mesh?.stopAll()
    if (nodeOptions == null) delete process.env.NODE_OPTIONS
    else process.env.NODE_OPTIONS = nodeOptions
    if (root != null) await fs.rm(root, { recursive: true, force: true })
  })

  it('a process-only member cannot assign files: refused, counted; the live ingest member still can', async () => {
    const f = await source.add(payload(1, 0, MiB + 10))
    const err = await rogue.control.request(hubId, { ...assign(f, 'owner'), sources: [rogue.id] }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ControlRequestError)
    expect((err as ControlRequestError).code).toBe('not-coordinator')
    const s = await status()
    expect(c(s, 'rejectedAssignments')).toBeGreaterThanOrEqual(1)
    expect(c(s, 'rejectedMessages')).toBeGreaterThanOrEqual(1)
    expect(s.owner.fetching + s.owner.stored + s.owner.processed).toBe(0)
    // the honest ingest member: the same file is fetched, processed, receipted and reported
    await coord.control.request(hubId, assign(f, 'owner', 'honest.bin'))
    await waitFor('receipt and outcome at the coordinator', async () => gotFrom('receipt', f.cid) && gotFrom('progress', f.cid, (m) => m.state === 'processed'), 20_000)
    expect((await processed(f.cid)).map((r) => r.sha256)).toEqual([f.sha256])
  }, 30_000)

  it('announcements: a non-ingest member\'s are rejected, a non-member\'s ignored, the ingest member\'s taken', async () => {
    const forged = await source.add(payload(2, 0, 5000))
    const unknown = await source.add(payload(2, 1, 5001))
    const honest = await source.add(payload(2, 2, 5002))
    const ann = (f: TestFile, name: string): Uint8Array => encodeMessage({ type: 'announce', v: 1, cid: f.cid, name, size: f.bytes.byteLength, owner: hubId, backup: hubId, epoch: 1 } satisfies AnnounceMessage, GOSSIP_MESSAGE_BYTES_MAX)
    for (const m of [rogue, stranger, coord]) {
      await waitFor('gossip peers', async () => m.node.services.pubsub.getSubscribers(FILES_TOPIC).some((p) => p.toString() === hubId), 10_000, 50)
    }
    const before = await status()
    await rogue.node.services.pubsub.publish(FILES_TOPIC, ann(forged, 'forged.bin'))
    await stranger.node.services.pubsub.publish(FILES_TOPIC, ann(unknown, 'unknown.bin'))
    await waitFor('the forged announcement rejected and the unknown one ignored', async () => {
      const s = await status()
      return c(s, 'rejectedAnnouncements') > c(before, 'rejectedAnnouncements') && c(s, 'ignoredAnnouncements') > c(before, 'ignoredAnnouncements')
    }, 10_000)
    // a valid ingest member's announcement is an assignment (no control message sent for this file)
    await coord.node.services.pubsub.publish(FILES_TOPIC, ann(honest, 'announced.bin'))
    await waitFor('the announced file receipted (owner and backup)', async () => gotFrom('receipt', honest.cid, (m) => m.role === 'owner') && gotFrom('receipt', honest.cid, (m) => m.role === 'backup'), 20_000)
    expect(source.requests.get(forged.leaves[0]?.cid as string)).toBeUndefined()
    expect(source.requests.get(unknown.leaves[0]?.cid as string)).toBeUndefined()
    expect(await processed(forged.cid)).toEqual([])
    expect(await processed(unknown.cid)).toEqual([])
  }, 30_000)

  it('a member forging receipts, progress, lease and decline for a file it does not hold is refused', async () => {
    const inbox = mesh.get('hub').info.inbox as string
    const bytes = payload(3, 0, MiB + 3)
    await dropLikeRsync(inbox, 'coordinated.bin', bytes)
    const cid = (await hashBytes(bytes)).root.toString()
    await waitFor('the hub to process and release its own file', async () => (await processed(cid)).length === 1 && (await status()).files.deletedFromIngest >= 1, 20_000)
    const before = await status()
    const forge = async (msg: ControlRequest): Promise<string | undefined> => {
      const err = await rogue.control.request(hubId, msg).then(() => undefined, (e: unknown) => e)
      return err instanceof ControlRequestError ? err.code : String(err)
    }
    expect(await forge({ type: 'receipt', v: 1, cid, role: 'owner', epoch: 1 })).toBe('not-holder')
    expect(await forge({ type: 'receipt', v: 1, cid, role: 'backup', epoch: 1 })).toBe('not-holder')
    expect(await forge({ type: 'progress', v: 1, cid, epoch: 1, state: 'failed', attempt: 1, error: 'forged' })).toBe('not-owner')
    expect(await forge({ type: 'lease', v: 1, cid, role: 'owner', epoch: 1 })).toBe('not-holder')
    expect(await forge({ type: 'decline', v: 1, cid, role: 'owner', epoch: 1, reason: 'forged' })).toBe('not-holder')
    const after = await status()
    expect(c(after, 'rejectedReports')).toBeGreaterThanOrEqual(c(before, 'rejectedReports') + 3)
    expect(after.files.failed).toBe(0)
    expect(after.files.processed).toBe(before.files.processed)
    expect(after.files.staleCompletions).toBe(0)
    expect(c(after, 'ownerReassignments')).toBe(c(before, 'ownerReassignments'))
    // still coordinating honest files
    const next = payload(3, 1, 4321)
    await dropLikeRsync(inbox, 'after-forgery.bin', next)
    const nextCid = (await hashBytes(next)).root.toString()
    await waitFor('the next dropped file processed', async () => (await processed(nextCid)).length === 1, 20_000)
  }, 30_000)

  it('an assignment and an announcement replayed after a daemon restart change nothing', async () => {
    const f = await source.add(payload(4, 0, 2 * MiB + 7))
    await coord.control.request(hubId, assign(f, 'owner', 'replayed.bin'))
    await coord.control.request(hubId, assign(f, 'backup', 'replayed.bin'))
    await waitFor('processed, archived, all reported', async () => gotFrom('progress', f.cid, (m) => m.state === 'processed') && gotFrom('receipt', f.cid, (m) => m.role === 'backup'), 20_000)
    const servedBefore = source.served
    const restarted = await mesh.restart('hub')
    expect(restarted.info.peerId).toBe(hubId)
    for (const m of [coord, rogue, stranger]) await m.node.dial(multiaddr(hub()))
    await hubSees(coord.id)
    const repeated = await counter('repeatedAssignments')
    // the control retry, long after gossipsub forgot it and across the restart
    await coord.control.request(hubId, assign(f, 'owner', 'replayed.bin'))
    await coord.control.request(hubId, assign(f, 'backup', 'replayed.bin'))
    // the announcement again (a new gossip message with the same content: what a replay after the seen-cache is)
    await waitFor('gossip peers', async () => coord.node.services.pubsub.getSubscribers(FILES_TOPIC).some((p) => p.toString() === hubId), 10_000, 50)
    await coord.node.services.pubsub.publish(FILES_TOPIC, encodeMessage({ type: 'announce', v: 1, cid: f.cid, name: 'replayed.bin', size: f.bytes.byteLength, owner: hubId, backup: hubId, epoch: 1 } satisfies AnnounceMessage, GOSSIP_MESSAGE_BYTES_MAX))
    await waitFor('all four replays seen as repeats', async () => (await counter('repeatedAssignments')) >= repeated + 4, 10_000)
    const s = await status()
    expect(s.owner.fetching + s.backup.fetching).toBe(0)
    expect(source.served).toBe(servedBefore)
    expect(await processed(f.cid)).toHaveLength(1)
  }, 45_000)

  it('frames one byte over each limit, and a 2^53 length prefix, are refused; honest peers are served', async () => {
    const attacker = await rawNode()
    const attacker2 = await rawNode()
    extra.push(attacker, attacker2)
    const hubPeer = peerIdFromString(hubId)
    await attacker.dial(multiaddr(hub()))
    await attacker2.dial(multiaddr(hub()))
    // control, exactly at the limit: a frame that is read and answered (bad-message)
    const atLimit = await attacker.dialProtocol(hubPeer, CONTROL_PROTOCOL)
    const lpAt = lpStream(atLimit, { maxDataLength: CONTROL_MESSAGE_BYTES_MAX })
    await lpAt.write(new TextEncoder().encode(`{"v":1,"type":"receipt","cid":"${'x'.repeat(CONTROL_MESSAGE_BYTES_MAX - 35)}"}`.padEnd(CONTROL_MESSAGE_BYTES_MAX, ' ')))
    expect(decodeControlReply((await lpAt.read()).subarray())).toMatchObject({ ok: false, code: 'bad-message' })
    // control, one byte over: reset without an answer, and the sender is penalised
    const over = await attacker.dialProtocol(hubPeer, CONTROL_PROTOCOL)
    const lpOver = lpStream(over)
    over.send(varint(CONTROL_MESSAGE_BYTES_MAX + 1))
    over.send(new Uint8Array(CONTROL_MESSAGE_BYTES_MAX + 1))
    await expect(lpOver.read()).rejects.toThrow()
    await ended(over, 'the over-limit control stream to be reset')
    // ... so even a well-formed request from it is now refused (reset, no answer)
    expect(await requestRaw(attacker, CONTROL_PROTOCOL, encodeMessage({ type: 'receipt', v: 1, cid: 'x', role: 'owner', epoch: 1 }, CONTROL_MESSAGE_BYTES_MAX))).toBe('refused')
    // control, a 2^53 length prefix (from another peer)
    const huge = await attacker2.dialProtocol(hubPeer, CONTROL_PROTOCOL)
    const lpHuge = lpStream(huge)
    huge.send(varint(2n ** 53n))
    await expect(lpHuge.read()).rejects.toThrow()
    await ended(huge, 'the 2^53 control stream to be reset')

    // blocks: a request frame exactly at the limit is read (and refused as not a CID), the stream goes on
    const f = await source.add(payload(5, 0, 3000))
    await coord.control.request(hubId, assign(f, 'backup', 'limits.bin'))
    await waitFor('the block-limit file archived', async () => gotFrom('receipt', f.cid, (m) => m.role === 'backup'), 20_000)
    const leaf = rawLeafCid(f.bytes)
    const bs = await attacker2.dialProtocol(hubPeer, BLOCKS_PROTOCOL)
    const lpB = lpStream(bs, { maxDataLength: BLOCK_FRAME_BYTES_MAX })
    await lpB.write(new Uint8Array(BLOCK_REQUEST_BYTES_MAX).fill(7))
    await lpB.write(encodeBlockRequest(leaf))
    expect(decodeBlockResponse((await lpB.read()).subarray())).toEqual({ status: 'refused' })
    const served = decodeBlockResponse((await lpB.read()).subarray())
    expect(served.status === 'ok' && Buffer.from(served.bytes).equals(f.bytes)).toBe(true)
    // one byte over: REFUSED, then the stream is reset
    bs.send(varint(BLOCK_REQUEST_BYTES_MAX + 1))
    bs.send(new Uint8Array(BLOCK_REQUEST_BYTES_MAX + 1))
    expect(decodeBlockResponse((await lpB.read()).subarray())).toEqual({ status: 'refused' })
    await ended(bs, 'the over-limit block stream to be reset')
    // a 2^53 length prefix on the block protocol
    const bh = await attacker2.dialProtocol(hubPeer, BLOCKS_PROTOCOL)
    const lpBh = lpStream(bh, { maxDataLength: BLOCK_FRAME_BYTES_MAX })
    bh.send(varint(2n ** 53n))
    expect(decodeBlockResponse((await lpBh.read()).subarray())).toEqual({ status: 'refused' })
    await ended(bh, 'the 2^53 block stream to be reset')

    // gossip: an announcement one byte over its limit (the RPC frame itself is within gossipsub's limit)
    const rejectedBefore = await counter('rejectedAnnouncements')
    const base = JSON.stringify({ type: 'announce', v: 1, cid: f.cid, name: 'big', size: 1, owner: hubId, backup: hubId, epoch: 1 })
    const big = new TextEncoder().encode(base.slice(0, -1) + `,"pad":"${'p'.repeat(GOSSIP_MESSAGE_BYTES_MAX + 1 - base.length - 9)}"}`)
    expect(big.byteLength).toBe(GOSSIP_MESSAGE_BYTES_MAX + 1)
    await coord.node.services.pubsub.publish(FILES_TOPIC, big)
    await waitFor('the oversized announcement rejected', async () => (await counter('rejectedAnnouncements')) > rejectedBefore, 10_000)

    // honest peers are still served on both protocols
    const client = new BlockClient({ node: coord.node })
    expect(Buffer.from(await client.getBlock(hubPeer, leaf)).equals(f.bytes)).toBe(true)
    await coord.control.request(hubId, assign(f, 'backup', 'limits.bin'))
    const s = await status()
    expect(c(s, 'malformedControl')).toBeGreaterThanOrEqual(3)
    expect(c(s, 'penalties')).toBeGreaterThanOrEqual(1)
    expect(c(s, 'refusedPenalised')).toBeGreaterThanOrEqual(1)
  }, 30_000)

  it('a source sending wrong, truncated or foreign blocks: never stored or processed; the right bytes are, once available', async () => {
    const f = await source.add(payload(6, 0, 3 * MiB + 5))
    const target = f.leaves[1] as TestFile['leaves'][number]
    const other = source.blocks.get(f.leaves[0]?.cid as string) as Uint8Array
    const served: string[] = []
    source.tamper = (cid, n, bytes) => {
      if (cid !== target.cid) return undefined
      if (n === 1) { served.push('flipped'); const b = Uint8Array.from(bytes); b[100] = (b[100] as number) ^ 1; return b }
      if (n === 2) { served.push('truncated'); return bytes.subarray(0, bytes.length - 1) }
      if (n === 3) { served.push('another block'); return other }
      served.push('honest')
      return undefined
    }
    const corruptBefore = (await status()).transfer.fetched as { corruptReceived?: number } | undefined
    try {
      await coord.control.request(hubId, assign(f, 'owner', 'tampered.bin'))
      await waitFor('processed from the right bytes', async () => gotFrom('progress', f.cid, (m) => m.state === 'processed'), 25_000)
    } finally {
      source.tamper = undefined
    }
    expect(served.slice(0, 4)).toEqual(['flipped', 'truncated', 'another block', 'honest'])
    expect(await processed(f.cid)).toEqual([expect.objectContaining({ sha256: f.sha256 })])
    const fetched = (await status()).transfer.fetched as { corruptReceived?: number }
    expect((fetched.corruptReceived ?? 0) - (corruptBefore?.corruptReceived ?? 0)).toBeGreaterThanOrEqual(3)
  }, 30_000)

  it('hostile names from an assignment and from the inbox end up inside the archive root; planted symlinks are not followed', async () => {
    const archive = mesh.get('hub').info.archive as string
    const outside = path.join(root, 'outside')
    await fs.mkdir(outside)
    await fs.writeFile(path.join(outside, 'planted-target'), 'ORIGINAL')
    await fs.writeFile(path.join(outside, 'part-target'), 'ORIGINAL')
    await fs.symlink(path.join(outside, 'planted-target'), path.join(archive, 'planted.txt'))
    const cases: Array<{ name: string, expected: string | RegExp }> = [
      { name: '../../etc/passwd', expected: 'passwd' },
      { name: '/abs/evil.txt', expected: 'evil.txt' },
      { name: 'nul\u0000byte.txt', expected: 'nulbyte.txt' },
      { name: '.hidden', expected: '_.hidden' },
      { name: `${'a'.repeat(1000)}.txt`, expected: `${'a'.repeat(196)}.txt` },
      { name: 'planted.txt', expected: /^planted~[A-Za-z0-9]{10}\.txt$/ },
      { name: 'part.txt', expected: 'part.txt' }
    ]
    const files = await Promise.all(cases.map(async (_c, i) => await source.add(payload(7, i, 2000 + i))))
    // a symlink planted where the part file of the last one will be written
    const partFile = files.at(-1) as TestFile
    await fs.symlink(path.join(outside, 'part-target'), path.join(archive, '.incoming', `${partFile.cid}.part`))
    for (const [i, c] of cases.entries()) await coord.control.request(hubId, assign(files[i] as TestFile, 'backup', c.name))
    // a 10 KB name does not even decode
    const tooLong = await coord.control.request(hubId, assign(await source.add(payload(7, 99, 99)), 'backup', 'n'.repeat(10_240))).catch((e: unknown) => e)
    expect((tooLong as ControlRequestError).code).toBe('bad-message')
    // names from the inbox: control and bidi characters
    const inbox = mesh.get('hub').info.inbox as string
    const fromInbox = [{ name: 'new\u202Etxt.exe', expected: 'newtxt.exe', bytes: payload(7, 50, 1234) }, { name: 'tab\there.bin', expected: 'tabhere.bin', bytes: payload(7, 51, 1235) }]
    for (const x of fromInbox) await dropLikeRsync(inbox, x.name, x.bytes)

    await waitFor('every hostile-named file archived', async () => files.every((f) => gotFrom('receipt', f.cid, (m) => m.role === 'backup')), 20_000)
    await waitFor('the inbox files archived', async () => {
      const names = await fs.readdir(archive)
      return fromInbox.every((x) => names.includes(x.expected))
    }, 20_000)
    const entries = await fs.readdir(archive)
    for (const [i, c] of cases.entries()) {
      const name = entries.find((e) => typeof c.expected === 'string' ? e === c.expected : c.expected.test(e))
      expect(name, `archived name for ${JSON.stringify(c.name.slice(0, 40))}`).toBeDefined()
      const st = await fs.lstat(path.join(archive, name as string))
      expect(st.isFile()).toBe(true)
      expect(sha256Hex(await fs.readFile(path.join(archive, name as string)))).toBe((files[i] as TestFile).sha256)
    }
    for (const x of fromInbox) expect(sha256Hex(await fs.readFile(path.join(archive, x.expected)))).toBe(sha256Hex(x.bytes))
    // nothing outside the root was touched or created, the planted link is still just a link
    expect(await fs.readFile(path.join(outside, 'planted-target'), 'utf8')).toBe('ORIGINAL')
    expect(await fs.readFile(path.join(outside, 'part-target'), 'utf8')).toBe('ORIGINAL')
    expect((await fs.lstat(path.join(archive, 'planted.txt'))).isSymbolicLink()).toBe(true)
    await expect(fs.lstat(path.resolve(archive, '../../etc/passwd'))).rejects.toMatchObject({ code: 'ENOENT' })
    await expect(fs.lstat(path.join(outside, 'evil.txt'))).rejects.toMatchObject({ code: 'ENOENT' })
    for (const e of entries) expect(e.includes('/') || e.includes('\u0000') || e === '..').toBe(false)
    const index = await fs.readFile(path.join(archive, '.filemesh-index.tsv'), 'utf8')
    for (const line of index.split('\n').filter((l) => l !== '')) {
      const rel = line.split('\t')[2] as string
      expect(path.dirname(rel)).toBe('.')
      expect(path.resolve(archive, rel).startsWith(archive + path.sep)).toBe(true)
    }
  }, 30_000)

  it('a flood from one peer is refused and penalised; the daemon\'s memory and file descriptors stay bounded', async () => {
    const pid = mesh.get('hub').info.pid
    const hubPeer = peerIdFromString(hubId)
    const f = await source.add(payload(8, 0, 100_000))
    await coord.control.request(hubId, assign(f, 'backup', 'flood.bin'))
    await waitFor('the flood file archived', async () => gotFrom('receipt', f.cid, (m) => m.role === 'backup'), 20_000)
    const honest = new BlockClient({ node: coord.node })
    const leaf = rawLeafCid(f.bytes)
    expect(Buffer.from(await honest.getBlock(hubPeer, leaf)).equals(f.bytes)).toBe(true)
    const before = await procStatus(pid)
    const before0 = await status()

    const flooder = await rawNode()
    extra.push(flooder)
    const conns: Connection[] = [await flooder.dial(multiaddr(hub())), await flooder.dial(multiaddr(hub()), { force: true })]
    expect(conns[0]?.id).not.toBe(conns[1]?.id)
    const deadline = AbortSignal.timeout(10_000) // the flood stops by itself, at the latest after this
    let controlReplies = 0
    let controlRefused = 0
    const floodStarted = performance.now()
    // 1. slowloris: hold control streams open on both connections without sending: over the per-peer stream cap
    const held: Stream[] = []
    for (const conn of conns) {
      for (let i = 0; i < CONTROL_STREAMS_PER_PEER_MAX; i++) {
        held.push(await conn.newStream(CONTROL_PROTOCOL, { signal: deadline }).catch(() => undefined as unknown as Stream))
      }
    }
    // 2. control requests as fast as they go, 8 streams at a time per connection
    const bogus = encodeMessage({ type: 'receipt', v: 1, cid: f.cid, role: 'owner', epoch: 1 }, CONTROL_MESSAGE_BYTES_MAX)
    const controlFlood = async (conn: Connection): Promise<void> => {
      for (let i = 0; i < 150 && !deadline.aborted; i++) {
        try {
          const s = await conn.newStream(CONTROL_PROTOCOL, { signal: deadline })
          const lp = lpStream(s, { maxDataLength: CONTROL_MESSAGE_BYTES_MAX })
          await lp.write(bogus, { signal: deadline })
          decodeControlReply((await lp.read({ signal: deadline })).subarray())
          controlReplies++
          await s.close().catch(() => {})
        } catch {
          controlRefused++
        }
      }
    }
    // 3. block requests for blocks nobody has, pipelined 500 per stream (6000 in all), responses read
    let blockAnswers = 0
    const missing = Array.from({ length: 500 }, (_, i) => encodeBlockRequest(rawLeafCid(payload(8, 1000 + i, 64))))
    const blockFlood = async (conn: Connection): Promise<void> => {
      for (let round = 0; round < 3 && !deadline.aborted; round++) {
        try {
          const s = await conn.newStream(BLOCKS_PROTOCOL, { signal: deadline })
          const lp = lpStream(s, { maxDataLength: BLOCK_FRAME_BYTES_MAX })
          await lp.writeV(missing, { signal: deadline })
          for (let i = 0; i < missing.length; i++) { decodeBlockResponse((await lp.read({ signal: deadline })).subarray()); blockAnswers++ }
          await s.close().catch(() => {})
        } catch {}
      }
    }
    // the honest peer is served while the flood runs
    const honestDuring = (async () => {
      await new Promise((resolve) => setTimeout(resolve, 200))
      return Buffer.from(await honest.getBlock(hubPeer, leaf)).equals(f.bytes)
    })()
    await Promise.all([...conns.map(controlFlood), ...conns.map(controlFlood), ...conns.map(blockFlood), ...conns.map(blockFlood)])
    const floodSeconds = (performance.now() - floodStarted) / 1000
    expect(await honestDuring).toBe(true)
    const during = await procStatus(pid)
    for (const s of held) s?.abort(new Error('done'))
    await flooder.stop()

    // the flood was cut off: over the stream cap -> penalised -> refused; never more served than the rate allows
    const s = await status()
    expect(c(s, 'refusedStreams') - c(before0, 'refusedStreams')).toBeGreaterThanOrEqual(1)
    expect(c(s, 'penalties') - c(before0, 'penalties')).toBeGreaterThanOrEqual(1)
    expect(c(s, 'refusedPenalised') - c(before0, 'refusedPenalised')).toBeGreaterThanOrEqual(1)
    expect(controlRefused).toBeGreaterThan(0)
    expect(controlReplies).toBeLessThanOrEqual(CONTROL_REQUESTS_PER_PEER_BURST + CONTROL_REQUESTS_PER_PEER_PER_SEC * floodSeconds)
    // bounded: at most one more fd per connection while it lasts, back to the baseline once it is gone
    expect(during.fds - before.fds).toBeLessThanOrEqual(16)
    await waitFor('the flooder\'s sockets closed on the daemon', async () => (await procStatus(pid)).fds <= before.fds + 2, 10_000)
    const after = await procStatus(pid)
    expect(mesh.get('hub').proc.exitCode).toBeNull()
    expect(after.rssKiB - before.rssKiB, `RSS ${before.rssKiB} -> ${during.rssKiB} -> ${after.rssKiB} KiB`).toBeLessThan(FLOOD_RSS_GROWTH_MAX_KiB)
    // and still serving everyone else
    expect(Buffer.from(await honest.getBlock(hubPeer, leaf)).equals(f.bytes)).toBe(true)
    await coord.control.request(hubId, assign(f, 'backup', 'flood.bin'))
    console.log(`flood: ${floodSeconds.toFixed(1)} s, ${controlReplies} control replies, ${controlRefused} control refused, ${blockAnswers} block answers; daemon RSS ${before.rssKiB} -> ${during.rssKiB} -> ${after.rssKiB} KiB, fds ${before.fds} -> ${during.fds} -> ${after.fds}`)
  }, 45_000)
})
