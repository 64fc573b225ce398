/**
 * Swarm transfer (node/swarm.ts): the holders of a file each pull a disjoint share from the landing node and
 * the rest from each other, so the landing node sends the file about once.
 *
 * First with real libp2p nodes in this process (a landing BlockServer, two holders with BlockServer +
 * LocalBlocks over a real Store + BlockClient, driven like node/holder.ts drives them): holders starting
 * together, one starting after the other finished or half way through, one dying mid-transfer. Then with
 * real daemons on loopback: owner + backup of multi-MiB files (landing egress ≈ 1x), and a holder SIGKILLed
 * mid-transfer: the other still completes from the landing node, and every file is processed exactly once
 * and archived byte-identical after the reassignment.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import type { CID } from 'multiformats/cid'
import { rawLeafCid } from '../protocols/cid-policy.ts'
import { KiB, MiB as MIB } from '../protocols/limits.ts'
import { BlockServer } from '../node/block-server.ts'
import type { BlockSource } from '../node/block-server.ts'
import { BlockClient } from '../node/block-client.ts'
import type { FetchLeavesResult, LeafRange } from '../node/block-client.ts'
import { LocalBlocks } from '../node/block-store.ts'
import { configureLogging, createLogger } from '../node/log.ts'
import { Store } from '../node/store.ts'
import { ownShare, swarmShare, swarmSources } from '../node/swarm.ts'
import { LocalMesh, waitFor } from '../sim/local-mesh.ts'
import type { NodeStatus } from '../node/status.ts'
import { checkOutcome, dropLikeRsync, payload, recordingCommand, sha256Hex } from '../sim/workload.ts'
import type { LedgerEntry } from '../sim/workload.ts'

const MiB = 1048576
const FAST = ['--heartbeat-ms', '500']

configureLogging({ sink: { write: () => {} }, level: 'error' })

async function createNode (): Promise<Libp2p> {
  return await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: 16 * MIB, maxReadBufferLength: 20 * MIB } })],
    connectionManager: { inboundConnectionThreshold: 100 },
    services: { identify: identify() }
  })
}

/** The landing node's spool copy: every leaf in memory. */
class MemorySource implements BlockSource {
  readonly blocks = new Map<string, Uint8Array>()
  async getBlock (cid: CID): Promise<Uint8Array | undefined> {
    return this.blocks.get(cid.toString())
  }
}

interface Holder {
  name: string
  node: Libp2p
  store: Store
  local: LocalBlocks
  server: BlockServer
  client: BlockClient
}

/** A file of `count` random leaves of `size` bytes, each at its offset. */
function makeLeaves (count: number, size: number): { leaves: LeafRange[], bytes: Uint8Array } {
  const bytes = new Uint8Array(randomBytes(count * size))
  const leaves = Array.from({ length: count }, (_, i) => ({ cid: rawLeafCid(bytes.subarray(i * size, (i + 1) * size)), offset: i * size, length: size }))
  return { leaves, bytes }
}

function served (s: NodeStatus): number {
  return s.transfer.served?.bytesSent ?? 0
}

function receivedFrom (s: NodeStatus, peer: string): number {
  return s.transfer.fetched?.byPeer[peer]?.bytesReceived ?? 0
}

describe('the swarm rule', () => {
  it('lists the holders after the coordinator only when they can share, and each holder finds its share', () => {
    expect(swarmSources('L', ['O', 'B'])).toEqual(['L', 'O', 'B'])
    expect(swarmSources('L', ['L', 'B'])).toEqual(['L']) // the coordinator holds the file itself
    expect(swarmSources('L', ['O', 'O'])).toEqual(['L'])
    expect(swarmSources('L', ['O'])).toEqual(['L'])
    expect(swarmShare(['L', 'O', 'B'], 'O', 'L')).toEqual({ landing: 'L', holders: ['O', 'B'], index: 0 })
    expect(swarmShare(['L', 'O', 'B'], 'B', 'L')).toEqual({ landing: 'L', holders: ['O', 'B'], index: 1 })
    // Sources without this holder (a holder already has the file, an older coordinator): no shares.
    expect(swarmShare(['L', 'B'], 'O', 'L')).toBeUndefined()
    expect(swarmShare(['L'], 'O', 'L')).toBeUndefined()
    expect(swarmShare(['L', 'O', 'B'], 'L', 'L')).toBeUndefined()
    // Sources that do not start with the coordinator (e.g. a copy handed over by another backup): no shares.
    expect(swarmShare(['X', 'L', 'O', 'B'], 'B', 'L')).toBeUndefined()
    // Shares count distinct leaves in first-appearance order: a repeated leaf does not shift them.
    const share = swarmShare(['L', 'O', 'B'], 'B', 'L') as NonNullable<ReturnType<typeof swarmShare>>
    const leaf = (c: string): { cid: string } => ({ cid: c })
    expect(ownShare(share, ['a', 'b', 'a', 'c', 'd', 'b', 'e'].map(leaf)).map((l) => l.cid)).toEqual(['b', 'd'])
  })
})

describe('swarm transfer between libp2p nodes in one process', () => {
  let dir: string
  let landing: { node: Libp2p, server: BlockServer, source: MemorySource }
  let holders: Holder[]
  const ROOT = 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi'

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-swarm-unit-'))
    const node = await createNode()
    const source = new MemorySource()
    const server = new BlockServer({ node }, { source })
    await server.start()
    landing = { node, server, source }
    holders = await Promise.all(['a', 'b'].map(async (name) => {
      const hnode = await createNode()
      const store = new Store(path.join(dir, `${name}-db`))
      await store.open()
      const local = new LocalBlocks(store, createLogger(`blocks-${name}`))
      const hserver = new BlockServer({ node: hnode }, { source: local, sourceVerifies: true })
      await hserver.start()
      const client = new BlockClient({ node: hnode }, { preferredSourcePatienceMs: 500, preferredSourceRetryMs: 20 })
      return { name, node: hnode, store, local, server: hserver, client }
    }))
    const addr = (n: Libp2p): ReturnType<Libp2p['getMultiaddrs']>[number] => n.getMultiaddrs()[0] as ReturnType<Libp2p['getMultiaddrs']>[number]
    for (const h of holders) await h.node.dial(addr(landing.node))
    await holders[0]?.node.dial(addr(holders[1]?.node as Libp2p))
  })

  afterEach(async () => {
    for (const h of holders) {
      await h.server.stop()
      await h.node.stop()
      await h.store.close()
    }
    await landing.server.stop()
    await landing.node.stop()
    await fs.rm(dir, { recursive: true, force: true })
  })

  const peerIds = (): { landing: string, a: string, b: string } => ({ landing: landing.node.peerId.toString(), a: holders[0]?.node.peerId.toString() as string, b: holders[1]?.node.peerId.toString() as string })

  /** What node/holder.ts does for one fetch: register, pull with the share, stop reading the part, store, index, forget. */
  async function fetchAs (h: Holder, leaves: LeafRange[], hooks: { onWritten?: (n: number) => void } = {}): Promise<FetchLeavesResult & { path: string }> {
    const ids = peerIds()
    const sources = swarmSources(ids.landing, [ids.a, ids.b])
    const swarm = swarmShare(sources, h.node.peerId.toString(), ids.landing)
    if (swarm == null) throw new Error('no swarm share')
    const inflight = h.local.inflight.begin()
    const part = path.join(dir, `${h.name}.part`)
    const fh = await fs.open(part, 'wx')
    let written = 0
    let result: FetchLeavesResult
    try {
      inflight.expect(part, ownShare(swarm, leaves))
      result = await h.client.fetchLeavesToFile({
        leaves,
        sources: [landing.node.peerId, (h === holders[0] ? holders[1] : holders[0])?.node.peerId].filter((p) => p != null),
        fileHandle: fh,
        swarm,
        onWritten: (leaf) => { inflight.written(leaf); hooks.onWritten?.(++written) }
      })
    } finally {
      inflight.moving()
      await fh.close()
    }
    const final = path.join(dir, `${h.name}.bin`)
    await fs.rename(part, final)
    await h.store.commit(h.store.blockIndexOps(ROOT, 'owner', final, leaves, []))
    inflight.end()
    return { ...result, path: final }
  }

  function landingBlocks (bytes: Uint8Array, leaves: LeafRange[]): void {
    for (const l of leaves) landing.source.blocks.set(l.cid.toString(), bytes.subarray(l.offset, l.offset + l.length))
  }

  it('two holders starting together: the landing node sends each block once, each holder gets half from the other', async () => {
    const { leaves, bytes } = makeLeaves(24, 256 * KiB)
    landingBlocks(bytes, leaves)
    const ids = peerIds()
    const [ra, rb] = await Promise.all([fetchAs(holders[0] as Holder, leaves), fetchAs(holders[1] as Holder, leaves)])
    expect(Buffer.from(await fs.readFile(ra.path)).equals(bytes)).toBe(true)
    expect(Buffer.from(await fs.readFile(rb.path)).equals(bytes)).toBe(true)
    expect(landing.server.stats().bytesSent).toBe(bytes.byteLength)
    expect(ra.bytesBySource[ids.b]).toBe(bytes.byteLength / 2)
    expect(rb.bytesBySource[ids.a]).toBe(bytes.byteLength / 2)
    // Each holder's server held requests for blocks it was about to get, and served them from its part file.
    expect((holders[0]?.server.stats().inflight.served ?? 0) + (holders[1]?.server.stats().inflight.served ?? 0)).toBeGreaterThan(0)
    expect(holders[0]?.local.inflight.stats()).toEqual({ fetches: 0, waiting: 0 })
  })

  it('a holder that starts after the other finished takes everything from it', async () => {
    const { leaves, bytes } = makeLeaves(16, 128 * KiB)
    landingBlocks(bytes, leaves)
    const ids = peerIds()
    // Alone, A waits for B (patience), then takes B's share from the landing node.
    const ra = await fetchAs(holders[0] as Holder, leaves)
    expect(ra.bytesBySource[ids.landing]).toBe(bytes.byteLength)
    // B's probe finds A ahead: its own share comes from A too.
    const rb = await fetchAs(holders[1] as Holder, leaves)
    expect(Buffer.from(await fs.readFile(rb.path)).equals(bytes)).toBe(true)
    expect(rb.bytesBySource[ids.a]).toBe(bytes.byteLength)
    expect(landing.server.stats().bytesSent).toBe(bytes.byteLength)
  })

  it('a holder that starts while the other waits for its share: still each block once from the landing node', async () => {
    const { leaves, bytes } = makeLeaves(16, 128 * KiB)
    landingBlocks(bytes, leaves)
    const ids = peerIds()
    // B starts once A has written its first leaf (A is then waiting for B's share, within its patience).
    const startB = Promise.withResolvers<void>()
    const fa = fetchAs(holders[0] as Holder, leaves, { onWritten: () => { startB.resolve() } })
    await startB.promise
    const [ra, rb] = await Promise.all([fa, fetchAs(holders[1] as Holder, leaves)])
    expect(Buffer.from(await fs.readFile(ra.path)).equals(bytes)).toBe(true)
    expect(Buffer.from(await fs.readFile(rb.path)).equals(bytes)).toBe(true)
    expect(landing.server.stats().bytesSent).toBeLessThanOrEqual(1.25 * bytes.byteLength)
    expect(ra.bytesBySource[ids.b] ?? 0).toBeGreaterThan(0)
    expect(rb.bytesBySource[ids.a] ?? 0).toBeGreaterThan(0)
  })

  it('completes from the landing node when the partner dies mid-transfer', async () => {
    const { leaves, bytes } = makeLeaves(24, 256 * KiB)
    landingBlocks(bytes, leaves)
    const ids = peerIds()
    const b = holders[1] as Holder
    // B stops once it has written a few leaves: its stream to A breaks, its share is gone with it.
    const fb = fetchAs(b, leaves, { onWritten: (n) => { if (n === 3) void b.node.stop() } }).catch((err: unknown) => err)
    const ra = await fetchAs(holders[0] as Holder, leaves)
    expect(Buffer.from(await fs.readFile(ra.path)).equals(bytes)).toBe(true)
    expect(ra.bytesBySource[ids.landing] ?? 0).toBeGreaterThanOrEqual(bytes.byteLength / 2)
    expect(await fb).toBeInstanceOf(Error)
  })
})

describe('swarm transfer: owner + backup daemons', () => {
  let root: string
  let mesh: LocalMesh
  const logs: Array<{ node: string, file: string }> = []

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-swarm-'))
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: FAST })
    const file = path.join(root, 'proc.log')
    logs.push({ node: 'proc', file })
    await Promise.all([
      mesh.start('proc', { roles: ['process'], args: [...FAST, '--exec', recordingCommand(file)] }),
      mesh.start('backup', { roles: ['backup'], args: FAST })
    ])
    await waitFor('all members seen by ingest', async () => (await mesh.status('ingest')).members.length === 3, 30_000)
  }, 60_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null && process.env.FILEMESH_KEEP == null) await fs.rm(root, { recursive: true, force: true })
  })

  it('the landing node sends a multi-MiB file about once; the holders swap the rest', async () => {
    const ingestId = mesh.get('ingest').info.peerId
    const procId = mesh.get('proc').info.peerId
    const backupId = mesh.get('backup').info.peerId
    const before = { ingest: await mesh.status('ingest'), proc: await mesh.status('proc'), backup: await mesh.status('backup') }
    const ledger: LedgerEntry[] = []
    const sizes = [16 * MiB + 12_345, 8 * MiB + 1]
    for (const [i, size] of sizes.entries()) {
      const bytes = payload(41, i, size)
      const name = `swarm-${i}.bin`
      ledger.push({ name, size, sha256: sha256Hex(bytes) })
      await dropLikeRsync(mesh.get('ingest').info.inbox as string, name, bytes)
    }
    await waitFor('every file processed and released', async () => {
      const s = await mesh.status('ingest')
      return s.files.processed === sizes.length && s.files.deletedFromIngest === sizes.length
    }, 60_000, 100)
    const after = { ingest: await mesh.status('ingest'), proc: await mesh.status('proc'), backup: await mesh.status('backup') }
    const payloadBytes = sizes.reduce((a, b) => a + b, 0)

    const report = await checkOutcome(ledger, mesh.get('backup').info.archive as string, logs)
    expect(report.archivedOk).toBe(sizes.length)
    expect(report.processedOnce).toBe(sizes.length)
    expect(report.processedWrongBytes).toEqual([])

    // The landing node sent each block about once (without the swarm: twice), and each holder got a large
    // part of the file from the other.
    const landing = served(after.ingest) - served(before.ingest)
    const procFromBackup = receivedFrom(after.proc, backupId) - receivedFrom(before.proc, backupId)
    const backupFromProc = receivedFrom(after.backup, procId) - receivedFrom(before.backup, procId)
    const procFromLanding = receivedFrom(after.proc, ingestId) - receivedFrom(before.proc, ingestId)
    const backupFromLanding = receivedFrom(after.backup, ingestId) - receivedFrom(before.backup, ingestId)
    const figures = { payloadBytes, landing, procFromLanding, backupFromLanding, procFromBackup, backupFromProc, inflight: { proc: (after.proc.transfer.served as any)?.inflight, backup: (after.backup.transfer.served as any)?.inflight } }
    expect(landing, JSON.stringify(figures)).toBeGreaterThanOrEqual(payloadBytes)
    expect(landing, JSON.stringify(figures)).toBeLessThanOrEqual(1.25 * payloadBytes)
    expect(procFromBackup, JSON.stringify(figures)).toBeGreaterThan(0.25 * payloadBytes)
    expect(backupFromProc, JSON.stringify(figures)).toBeGreaterThan(0.25 * payloadBytes)
    // Per-peer counters agree on both ends.
    expect(after.ingest.transfer.served?.byPeer[procId]?.bytesSent ?? 0).toBeGreaterThanOrEqual(procFromLanding)
    expect(after.proc.transfer.served?.byPeer[backupId]?.bytesSent ?? 0).toBeGreaterThanOrEqual(backupFromProc)
  }, 90_000)
})

describe('swarm transfer: a holder dies mid-transfer', () => {
  let root: string
  let mesh: LocalMesh
  const logs: Array<{ node: string, file: string }> = []

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-swarm-kill-'))
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: [...FAST, '--reassign-grace-ms', '2000'] })
    for (const name of ['proc1', 'proc2']) {
      const file = path.join(root, `${name}.log`)
      logs.push({ node: name, file })
      await mesh.start(name, { roles: ['process'], args: [...FAST, '--exec', recordingCommand(file)] })
    }
    await mesh.start('backup', { roles: ['backup'], args: FAST })
    await waitFor('all members seen by ingest', async () => (await mesh.status('ingest')).members.length === 4, 30_000)
  }, 60_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null && process.env.FILEMESH_KEEP == null) await fs.rm(root, { recursive: true, force: true })
  })

  it('the other holder completes from the landing node; every file is processed once and archived after the reassignment', async () => {
    const inbox = mesh.get('ingest').info.inbox as string
    const ingestId = mesh.get('ingest').info.peerId
    const ledger: LedgerEntry[] = []
    const count = 5
    for (let i = 0; i < count; i++) {
      const bytes = payload(43, i, 8 * MiB + i)
      const name = `kill-${i}.bin`
      ledger.push({ name, size: bytes.length, sha256: sha256Hex(bytes) })
      await dropLikeRsync(inbox, name, bytes)
    }
    // SIGKILL the first processor seen receiving blocks, while files are still on their way to it.
    const victim = await waitFor('a processor receiving blocks', async () => {
      for (const name of ['proc1', 'proc2']) {
        if ((await mesh.status(name)).transfer.fetched?.bytesReceived ?? 0) return name
      }
      return undefined
    }, 30_000, 10)
    await mesh.stop(victim, 'SIGKILL')
    const atKill = await mesh.status('ingest')
    expect(atKill.files.storedOnBackup).toBeLessThan(count)

    const status = await waitFor('every file processed and released after the reassignment', async () => {
      const s = await mesh.status('ingest')
      return s.files.processed === count && s.files.deletedFromIngest === count ? s : undefined
    }, 60_000, 200)
    expect(status.counters.ownerReassignments).toBeGreaterThanOrEqual(1)
    // With its partner dead, the backup took that partner's share from the landing node.
    const backup = await mesh.status('backup')
    expect(backup.transfer.fetched?.byPeer[ingestId]?.bytesReceived ?? 0).toBeGreaterThan(ledger.reduce((n, f) => n + f.size, 0) / 2)

    // The victim returns: whatever it held is superseded, nothing runs twice.
    await mesh.restart(victim)
    await waitFor('the returning owner to settle', async () => {
      const s = await mesh.status(victim)
      return s.owner.fetching === 0 && s.owner.processing === 0
    }, 30_000)
    const report = await checkOutcome(ledger, mesh.get('backup').info.archive as string, logs)
    expect(report.archivedOk).toBe(count)
    expect(report.notProcessed).toEqual([])
    expect(report.processedTwiceOrMore).toEqual([])
    expect(report.processedWrongBytes).toEqual([])
  }, 120_000)
})
