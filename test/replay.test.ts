/**
 * Role checks and replays against the real HolderService and IngestService logic, in process, over a real
 * LevelDB store and filesystem, with fakes only for the network (control requests, block fetches, gossip)
 * and an injected clock for the membership view (who is a live ingest member, 3 minutes later).
 *
 * The holder's record for (cid, role) is the persistent de-duplication: an assignment or announcement
 * replayed at any time (after gossipsub's 2-minute seen-cache, after a restart) changes nothing, and a
 * record past fetching never goes back to fetching. The daemon-level replay across a real restart is in
 * hostile.test.ts.
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { CID } from 'multiformats/cid'
import type { AssignMessage, ControlRequest, HeartbeatMessage } from '../protocols/messages.ts'
import { Archive } from '../node/archive.ts'
import type { BlockClient } from '../node/block-client.ts'
import type { LocalBlocks } from '../node/block-store.ts'
import { InflightBlocks } from '../node/inflight-blocks.ts'
import type { ControlChannel } from '../node/control.ts'
import { MembershipView } from '../node/core/membership.ts'
import { hashBytes } from '../node/hasher.ts'
import { HolderService } from '../node/holder.ts'
import { IngestService } from '../node/ingest.ts'
import { configureLogging, createLogger } from '../node/log.ts'
import type { MembershipService } from '../node/membership-service.ts'
import type { MeshNode } from '../node/mesh.ts'
import { Store } from '../node/store.ts'
import { payload } from '../sim/workload.ts'

configureLogging({ sink: { write: () => {} } })
const log = createLogger('test')
const MiB = 1048576
const THREE_MINUTES_MS = 3 * 60_000

async function newPeerId (): Promise<string> {
  return peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
}

function fakeClock (): { nowMs: () => number, advance: (ms: number) => void } {
  let now = 10_000
  return { nowMs: () => now, advance: (ms) => { now += ms } }
}

function heartbeat (roles: HeartbeatMessage['roles'], seq: number): HeartbeatMessage {
  return { type: 'heartbeat', v: 1, roles, weight: 1, draining: false, addrs: [], seq }
}

/** Records every control request and answers ok (or what `answer` says). */
class FakeControl {
  readonly sent: Array<{ peer: string, msg: ControlRequest }> = []
  answer: (peer: string, msg: ControlRequest) => void = () => {}
  async request (peer: string, msg: ControlRequest): Promise<unknown> {
    this.sent.push({ peer, msg })
    this.answer(peer, msg)
    return { type: 'reply', v: 1, ok: true }
  }
}

/** Serves one file's blocks from memory, as if from the coordinator; counts fetches. */
class FakeBlocks {
  readonly blocks = new Map<string, Uint8Array>()
  getBlockCalls = 0
  fileFetches = 0
  add (manifest: Awaited<ReturnType<typeof hashBytes>>, bytes: Uint8Array): void {
    for (const leaf of manifest.leaves) this.blocks.set(leaf.cid.toString(), bytes.subarray(leaf.offset, leaf.offset + leaf.length))
    for (const node of manifest.nodes) this.blocks.set(node.cid.toString(), node.bytes)
  }

  async getBlock (_peer: unknown, cid: CID): Promise<Uint8Array> {
    this.getBlockCalls++
    const b = this.blocks.get(cid.toString())
    if (b == null) throw new Error(`no block ${cid.toString()}`)
    return b
  }

  async fetchLeavesToFile (init: { leaves: Array<{ cid: CID, offset: number }>, fileHandle: fs.FileHandle }): Promise<{ bytesBySource: Record<string, number> }> {
    this.fileFetches++
    for (const leaf of init.leaves) {
      const b = this.blocks.get(leaf.cid.toString())
      if (b == null) throw new Error(`no block ${leaf.cid.toString()}`)
      await init.fileHandle.write(b, 0, b.byteLength, leaf.offset)
    }
    return { bytesBySource: {} }
  }
}

async function poll<T> (what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const v = await fn()
    if (v != null && v !== false) return v
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`timed out waiting for ${what}`)
}

describe('holder: who may assign, and replays that change nothing', () => {
  let dir: string
  let store: Store
  let archive: Archive
  let clock: ReturnType<typeof fakeClock>
  let view: MembershipView
  let control: FakeControl
  let blocks: FakeBlocks
  let self: string, ingest: string, otherIngest: string, processor: string, stranger: string
  let seq = 1
  let holder: HolderService

  const beat = (peer: string, roles: HeartbeatMessage['roles']): void => { view.observe(peer, heartbeat(roles, seq++)) }

  function newHolder (): HolderService {
    return new HolderService({
      store,
      control: control as unknown as ControlChannel,
      client: blocks as unknown as BlockClient,
      local: { getBlock: async () => undefined, inflight: new InflightBlocks() } as unknown as LocalBlocks,
      log,
      selfId: self,
      isIngest: (peer) => view.isLive(peer) && view.get(peer)?.roles.includes('ingest') === true
    }, { roles: ['process', 'backup'], workDir: path.join(dir, 'work'), archive })
  }

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-replay-'))
    store = new Store(path.join(dir, 'db'))
    await store.open()
    archive = new Archive({ dir: path.join(dir, 'archive') })
    await archive.init()
    clock = fakeClock()
    ;[self, ingest, otherIngest, processor, stranger] = await Promise.all([newPeerId(), newPeerId(), newPeerId(), newPeerId(), newPeerId()])
    view = new MembershipView({ selfId: self, clock, ttlMs: 5_000 })
    control = new FakeControl()
    blocks = new FakeBlocks()
    holder = newHolder()
    await holder.start()
    beat(ingest, ['ingest'])
    beat(otherIngest, ['ingest'])
    beat(processor, ['process'])
  })

  afterEach(async () => {
    await holder.stop()
    await store.close()
    await fs.rm(dir, { recursive: true, force: true })
  })

  async function file (seed: number, size: number): Promise<{ cid: string, bytes: Uint8Array }> {
    const bytes = payload(seed, 0, size)
    const manifest = await hashBytes(bytes)
    blocks.add(manifest, bytes)
    return { cid: manifest.root.toString(), bytes }
  }

  function assign (cid: string, role: 'owner' | 'backup', epoch = 1, name = 'f.bin', size = 0): AssignMessage {
    return { type: 'assign', v: 1, cid, name, size, role, epoch, sources: [ingest] }
  }

  it('refuses assignments from a process-only member, a stranger, and an ingest member gone silent; counts them', async () => {
    const { cid } = await file(1, MiB + 5)
    expect(await holder.onAssign(processor, assign(cid, 'owner'))).toMatchObject({ ok: false, code: 'not-coordinator' })
    expect(await holder.onAssign(stranger, assign(cid, 'owner'))).toMatchObject({ ok: false, code: 'not-coordinator' })
    clock.advance(6_000) // past the TTL with no heartbeat: no longer a live member
    expect(await holder.onAssign(ingest, assign(cid, 'owner'))).toMatchObject({ ok: false, code: 'not-coordinator' })
    expect(await store.getHolder(cid, 'owner')).toBeUndefined()
    expect(holder.counters.rejectedAssignments).toBe(3)
    expect(blocks.getBlockCalls + blocks.fileFetches).toBe(0)
    // a bad CID, a non-canonical CID and a bad source are refused too, before anything is recorded
    beat(ingest, ['ingest'])
    expect(await holder.onAssign(ingest, assign('bafkqaaa', 'owner'))).toMatchObject({ ok: false, code: 'bad-cid' })
    expect(await holder.onAssign(ingest, assign(cid.toUpperCase(), 'owner'))).toMatchObject({ ok: false, code: 'bad-cid' })
    expect(await holder.onAssign(ingest, { ...assign(cid, 'owner'), sources: ['not-a-peer'] })).toMatchObject({ ok: false, code: 'bad-message' })
    expect(holder.counters.rejectedAssignments).toBe(6)
    // the live ingest member is served
    expect(await holder.onAssign(ingest, assign(cid, 'owner'))).toMatchObject({ ok: true })
    await poll('the owner copy processed', async () => (await store.getHolder(cid, 'owner'))?.state === 'processed')
  })

  it('an assignment replayed 3 minutes later (past the seen-cache) changes nothing; terminal records never fetch again', async () => {
    const { cid } = await file(2, 2 * MiB + 17)
    expect(await holder.onAssign(ingest, assign(cid, 'owner', 1, 'a.bin', 2 * MiB + 17))).toMatchObject({ ok: true })
    expect(await holder.onAssign(ingest, assign(cid, 'backup', 1, 'a.bin', 2 * MiB + 17))).toMatchObject({ ok: true })
    const owner = await poll('processed and reported', async () => {
      const r = await store.getHolder(cid, 'owner')
      return r?.state === 'processed' && r.outcomeAcked && r.receiptAcked ? r : undefined
    })
    const backup = await poll('archived and receipted', async () => {
      const r = await store.getHolder(cid, 'backup')
      return r?.state === 'stored' && r.receiptAcked ? r : undefined
    })
    const fetchesBefore = { get: blocks.getBlockCalls, files: blocks.fileFetches }
    const sentBefore = control.sent.length

    clock.advance(THREE_MINUTES_MS)
    beat(ingest, ['ingest']) // the coordinator is still alive 3 minutes later
    // the control retry, and the gossip announcement as the daemon turns it into an assignment
    for (const role of ['owner', 'backup'] as const) {
      expect(await holder.onAssign(ingest, assign(cid, role, 1, 'a.bin', 2 * MiB + 17))).toMatchObject({ ok: true })
      expect(await holder.onAssign(ingest, { ...assign(cid, role, 1, 'a.bin', 2 * MiB + 17), sources: [ingest] })).toMatchObject({ ok: true })
    }
    expect(holder.counters.repeatedAssignments).toBe(4)
    expect(await store.getHolder(cid, 'owner')).toEqual(owner)
    expect(await store.getHolder(cid, 'backup')).toEqual(backup)
    expect({ get: blocks.getBlockCalls, files: blocks.fileFetches }).toEqual(fetchesBefore)
    expect(control.sent.length).toBe(sentBefore)

    // another ingest member may not reassign it; nothing changes
    expect(await holder.onAssign(otherIngest, assign(cid, 'owner', 2))).toMatchObject({ ok: false, code: 'not-coordinator' })
    expect(await store.getHolder(cid, 'owner')).toEqual(owner)

    // its coordinator reassigning it to us under a newer epoch: the processed copy stays processed (no fetch,
    // no second run), and the outcome is reported again under the new epoch
    expect(await holder.onAssign(ingest, assign(cid, 'owner', 2))).toMatchObject({ ok: true })
    await poll('the outcome reported under epoch 2', async () => control.sent.some((s) => s.msg.type === 'progress' && s.msg.epoch === 2 && s.msg.state === 'processed'))
    const after = await store.getHolder(cid, 'owner')
    expect(after).toMatchObject({ state: 'processed', epoch: 2, attempt: owner.attempt, processedAt: owner.processedAt })
    expect({ get: blocks.getBlockCalls, files: blocks.fileFetches }).toEqual(fetchesBefore)
    expect(control.sent.filter((s) => s.msg.type === 'progress' && s.msg.state === 'processing' && s.msg.epoch === 2)).toEqual([])
  })

  it('a replay after a restart of the holder changes nothing either', async () => {
    const { cid } = await file(3, 300_000)
    await holder.onAssign(ingest, assign(cid, 'backup', 1, 'r.bin', 300_000))
    const before = await poll('archived', async () => {
      const r = await store.getHolder(cid, 'backup')
      return r?.state === 'stored' && r.receiptAcked ? r : undefined
    })
    await holder.stop()
    holder = newHolder()
    await holder.start()
    await holder.reconcile()
    const fetches = blocks.getBlockCalls + blocks.fileFetches
    clock.advance(THREE_MINUTES_MS)
    beat(ingest, ['ingest'])
    expect(await holder.onAssign(ingest, assign(cid, 'backup', 1, 'r.bin', 300_000))).toMatchObject({ ok: true })
    expect(await store.getHolder(cid, 'backup')).toEqual(before)
    expect(blocks.getBlockCalls + blocks.fileFetches).toBe(fetches)
    expect((await fs.readdir(archive.dir)).filter((n) => !n.startsWith('.'))).toEqual(['r.bin'])
  })
})

describe('ingest: receipts and progress only from the file\'s holders, replays change nothing', () => {
  let dir: string
  let store: Store
  let ingest: IngestService
  let control: FakeControl
  let self: string, owner: string, backup: string, forger: string

  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-replay-ingest-'))
    for (const d of ['inbox', 'spool']) await fs.mkdir(path.join(dir, d))
    store = new Store(path.join(dir, 'db'))
    await store.open()
    ;[self, owner, backup, forger] = await Promise.all([newPeerId(), newPeerId(), newPeerId(), newPeerId()])
    const clock = fakeClock()
    const view = new MembershipView({ selfId: self, clock, ttlMs: 60 * 60_000 })
    view.observe(self, heartbeat(['ingest'], 1))
    view.observe(owner, heartbeat(['process'], 1))
    view.observe(backup, heartbeat(['backup'], 1))
    // the forger is a live member too, with both holder roles, but draining: never chosen for the file
    view.observe(forger, { ...heartbeat(['process', 'backup'], 1), draining: true })
    control = new FakeControl()
    const node = { peerId: { toString: () => self }, services: { pubsub: { publish: async () => ({ recipients: [] }) } } }
    const members = { view, onChange: () => {} }
    ingest = new IngestService({ store, node: node as unknown as MeshNode, members: members as unknown as MembershipService, control: control as unknown as ControlChannel, log }, { spoolDir: path.join(dir, 'spool') })
  })

  afterEach(async () => {
    ingest.stop()
    await store.close()
    await fs.rm(dir, { recursive: true, force: true })
  })

  it('refuses a forged receipt and a forged progress report, records the real ones once, and ignores their replays', async () => {
    const inboxPath = path.join(dir, 'inbox', 'x.bin')
    await fs.writeFile(inboxPath, payload(4, 0, MiB + 3))
    const cid = await ingest.claim({ path: inboxPath, name: 'x.bin', readiness: 'rename' }) as string
    const placed = await poll('placed', async () => { const r = await store.getIngest(cid); return r?.phase === 'placed' ? r : undefined })
    expect(placed).toMatchObject({ owner, backup, epoch: 1 })

    // a member forging the holders' messages
    expect(await ingest.onReceipt(forger, { type: 'receipt', v: 1, cid, role: 'owner', epoch: 1 })).toMatchObject({ ok: false, code: 'not-holder' })
    expect(await ingest.onReceipt(forger, { type: 'receipt', v: 1, cid, role: 'backup', epoch: 1 })).toMatchObject({ ok: false, code: 'not-holder' })
    expect(await ingest.onReceipt(owner, { type: 'receipt', v: 1, cid, role: 'backup', epoch: 1 })).toMatchObject({ ok: false, code: 'not-holder' })
    expect(await ingest.onProgress(forger, { type: 'progress', v: 1, cid, epoch: 1, state: 'processed', attempt: 1 })).toMatchObject({ ok: false, code: 'not-owner' })
    expect(await ingest.onProgress(backup, { type: 'progress', v: 1, cid, epoch: 1, state: 'processed', attempt: 1 })).toMatchObject({ ok: false, code: 'not-owner' })
    expect(ingest.counters.rejectedReports).toBe(5)
    expect(await store.getIngest(cid)).toEqual(placed)

    // the real ones
    expect(await ingest.onReceipt(owner, { type: 'receipt', v: 1, cid, role: 'owner', epoch: 1 })).toMatchObject({ ok: true })
    expect(await ingest.onReceipt(backup, { type: 'receipt', v: 1, cid, role: 'backup', epoch: 1 })).toMatchObject({ ok: true })
    expect(await ingest.onProgress(owner, { type: 'progress', v: 1, cid, epoch: 1, state: 'processed', attempt: 1 })).toMatchObject({ ok: true })
    const done = await poll('released', async () => { const r = await store.getIngest(cid); return r?.phase === 'released' && r.processing === 'processed' ? r : undefined })

    // replays of every one of them: acknowledged, nothing changes
    expect(await ingest.onReceipt(owner, { type: 'receipt', v: 1, cid, role: 'owner', epoch: 1 })).toMatchObject({ ok: true })
    expect(await ingest.onReceipt(backup, { type: 'receipt', v: 1, cid, role: 'backup', epoch: 1 })).toMatchObject({ ok: true })
    expect(await ingest.onProgress(owner, { type: 'progress', v: 1, cid, epoch: 1, state: 'processed', attempt: 1 })).toMatchObject({ ok: true })
    expect(await ingest.onProgress(owner, { type: 'progress', v: 1, cid, epoch: 1, state: 'processing', attempt: 1 })).toMatchObject({ ok: true })
    expect(await store.getIngest(cid)).toEqual(done)
    expect(ingest.counters.released).toBe(1)
    expect(ingest.counters.rejectedReports).toBe(5)
    // and a forgery after the release is still refused
    expect(await ingest.onReceipt(forger, { type: 'receipt', v: 1, cid, role: 'owner', epoch: 1 })).toMatchObject({ ok: false, code: 'not-holder' })
  })
})
