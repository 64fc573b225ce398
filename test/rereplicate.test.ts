/**
 * Re-replication after a backup is lost, with real daemons: the file's backup is SIGKILLed (and kept down)
 * after its receipt was recorded and the ingest copy released, while the owner is still processing. After
 * the grace period the coordinator gives the file to the other backup, which fetches it from the owner and
 * archives it byte-identical; the owner keeps its working copy until that new receipt is recorded, even
 * though processing finished meanwhile. The killed backup comes back with its copy kept (an extra copy).
 *
 * Also: only a live backup member may hand off archive copies (`replicate`): a process-only member or a
 * stranger cannot make a backup store anything. And a backup drained while a file it archived is still being
 * processed hands its copy to the other backup and tells the coordinator, which makes that backup the file's
 * backup at once: once the drained node is gone, nothing waits for it.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { INDEX_FILE_NAME } from '../node/archive.ts'
import { archiveHolds, backupWatched, inPlay, replaceDrainingBackup } from '../node/core/coordinator.ts'
import { WrongStateError, archiveConfirmed, backupReplaced, handoffAdopted, handoffAssigned, handoffChosen, handoffDone, placed, progressFrom, receiptAcked, receiptFrom, received, released, stored } from '../node/core/lifecycle.ts'
import { ControlChannel, ControlRequestError, ok } from '../node/control.ts'
import { hashBytes } from '../node/hasher.ts'
import { configureLogging, createLogger } from '../node/log.ts'
import { MembershipService } from '../node/membership-service.ts'
import { createMeshNode } from '../node/mesh.ts'
import type { MeshNode } from '../node/mesh.ts'
import type { Role } from '../protocols/roles.ts'
import { CLI_PATH, LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { dropLikeRsync, payload, readProcessingLog, recordingCommand, sha256File, sha256Hex } from '../sim/workload.ts'

configureLogging({ sink: { write: () => {} } })
const run = promisify(execFile)
const FAST = ['--heartbeat-ms', '500']
const GRACE_MS = 2000

async function indexHas (archiveDir: string, cid: string): Promise<string | undefined> {
  const text = await fs.readFile(path.join(archiveDir, INDEX_FILE_NAME), 'utf8').catch(() => '')
  return text.split('\n').map((l) => l.split('\t')).find((f) => f[0] === cid)?.[2]
}

async function exists (p: string): Promise<boolean> {
  return await fs.access(p).then(() => true, () => false)
}

/** An in-process member heartbeating `roles`, draining (or no member at all), with a control channel to send from. */
async function startMember (bootstrap: string, roles: Role[] | undefined): Promise<{ node: MeshNode, id: string, control: ControlChannel, members?: MembershipService }> {
  const log = createLogger('test-member')
  const node = await createMeshNode({ privateKey: await generateKeyPair('Ed25519'), bootstrap: [bootstrap] })
  const control = new ControlChannel(node, log)
  await control.start(async () => ok())
  let members: MembershipService | undefined
  if (roles != null) {
    members = new MembershipService(node, { nowMs: () => performance.now() }, log, { roles, heartbeatIntervalMs: 400 })
    members.setDraining(true) // never chosen for real work
    members.start()
  }
  return { node, id: node.peerId.toString(), control, members }
}

describe('coordinator decisions and records for re-replication (pure)', () => {
  const now = '2026-11-22T00:00:00.000Z'
  const placedRec = placed(received({ cid: 'c', name: 'n', size: 1, spoolPath: '/s', readiness: 'rename', now }), 'O', 'A', now)
  const both = receiptFrom(receiptFrom(placedRec, 'O', 'owner', now).rec, 'A', 'backup', now).rec
  const rel = released(both, now)

  it('watches the backup until processed and the owner told the archive holds the file', () => {
    expect(backupWatched(placedRec)).toBe(true)
    expect(backupWatched(rel)).toBe(true) // receipt in, but not processed yet
    expect(inPlay(rel)).toBe(true)
    const done = progressFrom(rel, 'O', 1, 'processed', 1, now).rec
    expect(backupWatched(done)).toBe(true) // processed, the owner not told yet: its copy is still needed
    const confirmed = archiveConfirmed(done, now)
    expect(backupWatched(confirmed)).toBe(false)
    expect(inPlay(confirmed)).toBe(false)
    expect(backupWatched(progressFrom(rel, 'O', 1, 'failed', 1, now).rec)).toBe(false) // the owner keeps a failed file's copy
    expect(replaceDrainingBackup(placedRec)).toBe(true)
    expect(replaceDrainingBackup(rel)).toBe(false)
  })

  it('the archive holds the file only with a recorded receipt from a live backup', () => {
    expect(archiveHolds(placedRec, () => true)).toBe(false)
    expect(archiveHolds(rel, () => true)).toBe(true)
    expect(archiveHolds(rel, (p) => p !== 'A')).toBe(false)
    expect(() => archiveConfirmed(placedRec, now)).toThrow(WrongStateError)
  })

  it('a backup replaced after its receipt becomes a past backup; the new one owes a receipt', () => {
    const next = backupReplaced(archiveConfirmed(progressFrom(rel, 'O', 1, 'processed', 1, now).rec, now), 'B')
    expect(next).toMatchObject({ backup: 'B', pastBackups: ['A'], backupReassignments: 1, phase: 'released', epoch: 1 })
    expect(next.backupStoredAt).toBeUndefined()
    expect(next.archiveConfirmedAt).toBeUndefined()
    expect(backupWatched(next)).toBe(true)
    expect(receiptFrom(next, 'A', 'backup', now).verdict).toBe('not-holder')
    expect(receiptFrom(next, 'B', 'backup', now).verdict).toBe('recorded')
    expect(() => backupReplaced(placedRec, 'B')).toThrow(WrongStateError)
  })

  it('hand-off records: a copy handed to us is adopted by a coordinator that assigns it; the sender records its target', () => {
    const got = handoffAssigned({ cid: 'c', name: 'n', size: 1, epoch: 1, from: 'A', sources: ['A'], now })
    expect(got).toMatchObject({ role: 'backup', coordinator: 'A', handoffFrom: 'A', state: 'fetching', receiptAcked: false })
    const adopted = handoffAdopted(receiptAcked(stored(got, '/a/n', now)), 'I', 3)
    expect(adopted).toMatchObject({ coordinator: 'I', epoch: 3, receiptAcked: false, state: 'stored' })
    expect(adopted.handoffFrom).toBeUndefined()
    expect(() => handoffAdopted(adopted, 'I', 3)).toThrow(WrongStateError)
    expect(() => handoffChosen(got, 'B')).toThrow(WrongStateError) // not stored yet
    const chosen = handoffChosen(stored(got, '/a/n', now), 'B')
    expect(handoffDone(chosen, now)).toMatchObject({ handoffTo: 'B', handoffAckedAt: now })
    expect(handoffChosen(handoffDone(chosen, now), 'C').handoffAckedAt).toBeUndefined()
  })
})

describe('re-replication after a backup is lost', () => {
  let root: string
  let mesh: LocalMesh
  /** Processing of file NAME ends when the test creates go-NAME. */
  const go = async (name: string): Promise<void> => { await fs.writeFile(path.join(root, `go-${name}`), '') }
  let procLog: string

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-rereplicate-'))
    mesh = new LocalMesh(root)
    procLog = path.join(root, 'proc.records')
    await mesh.start('ingest', { roles: ['ingest'], args: [...FAST, '--reassign-grace-ms', String(GRACE_MS)] })
    // Processing waits until the test creates the file's go file: "slow", and it ends exactly when the test says.
    const cmd = `g='${root}/go-'"$FILEMESH_NAME"; while [ ! -e "$g" ]; do sleep 0.05; done; ${recordingCommand(procLog)}`
    await mesh.start('proc', { roles: ['process'], args: [...FAST, '--exec', cmd] })
    for (const name of ['backup1', 'backup2']) await mesh.start(name, { roles: ['backup'], args: FAST })
    await waitFor('all members seen by ingest', async () => (await mesh.status('ingest')).members.length === 4, 30_000)
  }, 60_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null && process.env.FILEMESH_KEEP == null) await fs.rm(root, { recursive: true, force: true })
  })

  it('gives the file to the next backup; the owner keeps its copy until that backup\'s receipt', async () => {
    const bytes = payload(71, 0, 2 * 1048576 + 333)
    const cid = (await hashBytes(bytes)).root.toString()
    await dropLikeRsync(mesh.get('ingest').info.inbox as string, 'lost-backup.bin', bytes)
    // The backup's receipt is recorded and the ingest copy released while the owner is still processing.
    await waitFor('both receipts, ingest copy released, owner processing', async () => {
      const s = await mesh.status('ingest')
      return s.files.storedOnBackup === 1 && s.files.deletedFromIngest === 1 && (await mesh.status('proc')).owner.processing === 1
    }, 30_000)
    let victim: 'backup1' | 'backup2' | undefined
    for (const name of ['backup1', 'backup2'] as const) if (await indexHas(mesh.get(name).info.archive as string, cid) != null) victim = name
    expect(victim).toBeDefined()
    const survivor = victim === 'backup1' ? 'backup2' : 'backup1'
    const victimId = mesh.get(victim as string).info.peerId
    const victimArchive = mesh.get(victim as string).info.archive as string
    const survivorArchive = mesh.get(survivor).info.archive as string
    await mesh.stop(victim as string, 'SIGKILL')

    // Processing ends once the coordinator no longer sees the backup, before the grace period is over: the
    // owner must now keep its copy although the backup's receipt was recorded.
    await waitFor('the coordinator to see the backup gone', async () => !(await mesh.status('ingest')).members.some((m) => m.peerId === victimId), 20_000, 100)
    await go('lost-backup.bin')

    const workCopy = path.join(mesh.dataDir('proc'), 'work', cid)
    let sawKept = false
    let removedEarly = false
    await waitFor('the owner to remove its working copy', async () => {
      // Read in this order: if the working copy is gone, the new backup's index line was written before.
      const workThere = await exists(workCopy)
      const survivorHas = await indexHas(survivorArchive, cid) != null
      if (!workThere && !survivorHas) removedEarly = true
      if (workThere && !survivorHas && (await mesh.status('proc')).owner.processed === 1) sawKept = true
      return !workThere
    }, 40_000, 50)
    expect(removedEarly, 'working copy removed before the new backup archived the file').toBe(false)
    expect(sawKept, 'the owner finished processing while no live backup held the file, and kept its copy').toBe(true)

    const rel = await indexHas(survivorArchive, cid)
    expect(rel).toBe('lost-backup.bin')
    expect(await sha256File(path.join(survivorArchive, rel as string))).toBe(sha256Hex(bytes))
    const ingest = await mesh.status('ingest')
    expect(ingest.files.processed).toBe(1)
    expect(ingest.files.storedOnBackup).toBe(1)
    expect(ingest.counters.backupReassignments).toBe(1)
    expect(ingest.counters.extraArchiveCopies).toBe(1)
    expect((await readProcessingLog(procLog, 'proc')).filter((r) => r.cid === cid)).toHaveLength(1)

    // The replaced backup comes back: it keeps its copy (two archive copies now), nothing is deleted.
    await mesh.restart(victim as string)
    await waitFor('the returned backup to be seen', async () => (await mesh.status('ingest')).members.some((m) => m.peerId === victimId), 20_000)
    const back = await mesh.status(victim as string)
    expect(back.backup.stored).toBe(1)
    expect(await sha256File(path.join(victimArchive, 'lost-backup.bin'))).toBe(sha256Hex(bytes))
    expect((await mesh.status('ingest')).counters.extraArchiveCopies).toBe(1)
  }, 90_000)

  it('only a live backup member may hand off archive copies: a process-only member and a stranger are refused', async () => {
    const target = mesh.get('backup1')
    const boot = target.info.addrs[0] as string
    const rogue = await startMember(boot, ['process'])
    const stranger = await startMember(boot, undefined)
    try {
      await waitFor('the backup to see the rogue member', async () => (await mesh.status('backup1')).members.some((m) => m.peerId === rogue.id), 20_000, 100)
      const f = await hashBytes(payload(72, 0, 5000))
      const msg = { type: 'replicate' as const, v: 1 as const, cid: f.root.toString(), name: 'forged.bin', size: 5000, epoch: 1, sources: [rogue.id] }
      const before = await mesh.status('backup1')
      for (const m of [rogue, stranger]) {
        const err = await m.control.request(target.info.peerId, msg).catch((e: unknown) => e)
        expect(err).toBeInstanceOf(ControlRequestError)
        expect((err as ControlRequestError).code).toBe('not-backup')
      }
      const after = await mesh.status('backup1')
      expect(after.backup.fetching + after.backup.stored).toBe(before.backup.fetching + before.backup.stored)
      expect(after.counters.rejectedAssignments).toBe((before.counters.rejectedAssignments ?? 0) + 2)
      expect(await indexHas(target.info.archive as string, f.root.toString())).toBeUndefined()
    } finally {
      for (const m of [rogue, stranger]) {
        m.members?.stop()
        await m.node.stop()
      }
    }
  }, 40_000)

  it('a backup drained while its file is processed hands the copy over; the coordinator switches at once', async () => {
    const bytes = payload(73, 0, 1048576 + 4321)
    const cid = (await hashBytes(bytes)).root.toString()
    const before = await mesh.status('ingest')
    await dropLikeRsync(mesh.get('ingest').info.inbox as string, 'inflight.bin', bytes)
    await waitFor('receipts recorded, ingest copy released, owner processing', async () => {
      const s = await mesh.status('ingest')
      return s.files.storedOnBackup === before.files.storedOnBackup + 1 && s.files.deletedFromIngest === before.files.deletedFromIngest + 1 && (await mesh.status('proc')).owner.processing === 1
    }, 30_000)
    let drained: 'backup1' | 'backup2' | undefined
    for (const name of ['backup1', 'backup2'] as const) if (await indexHas(mesh.get(name).info.archive as string, cid) != null) drained = name
    expect(drained).toBeDefined()
    const other = drained === 'backup1' ? 'backup2' : 'backup1'
    const { stdout } = await run(process.execPath, [CLI_PATH, 'drain', '--data', mesh.dataDir(drained as string), '--timeout-s', '30'])
    expect(stdout.trim()).toBe('safe to remove')
    // The coordinator switched the file's backup on the notice, not after an absence.
    await waitFor('the other backup to be the file\'s backup', async () => (await mesh.status('ingest')).counters.backupReassignments === (before.counters.backupReassignments ?? 0) + 1, 10_000)
    await mesh.stop(drained as string)
    await go('inflight.bin')
    const workCopy = path.join(mesh.dataDir('proc'), 'work', cid)
    await waitFor('processed, and the working copy removed', async () => (await mesh.status('ingest')).files.processed === before.files.processed + 1 && !await exists(workCopy), 30_000)
    const rel = await indexHas(mesh.get(other).info.archive as string, cid)
    expect(rel).toBe('inflight.bin')
    expect(await sha256File(path.join(mesh.get(other).info.archive as string, rel as string))).toBe(sha256Hex(bytes))
    expect(await sha256File(path.join(mesh.get(drained as string).info.archive as string, 'inflight.bin'))).toBe(sha256Hex(bytes))
    const after = await mesh.status('ingest')
    expect(after.counters.backupReassignments).toBe((before.counters.backupReassignments ?? 0) + 1)
    expect(after.files.storedOnBackup).toBe(before.files.storedOnBackup + 1)
    expect((await readProcessingLog(procLog, 'proc')).filter((r) => r.cid === cid)).toHaveLength(1)
  }, 60_000)
})
