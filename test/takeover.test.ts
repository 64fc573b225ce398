/**
 * The backup takes over coordination (node/core/takeover.ts), with real daemons: ingest + backup + two
 * processors. A file is released at the ingest while its processing command is held on the owner; the backup
 * has recorded the file's coordination state. Then the ingest AND the owner are SIGKILLed, and the ingest
 * stays dead. After the takeover grace the backup coordinates the file, and after the reassign grace it gives
 * the file to the other processor (epoch 2), which fetches it from the archive and processes it exactly once,
 * on the right bytes. The old owner, back, learns from the backup that its epoch is over and drops its copy:
 * its stale run is never taken as the result. Finally the ingest comes back: the backup refuses its
 * `coordinate` ('taken-over'), and it records that it defers, without reassigning anything.
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { hashBytes } from '../node/hasher.ts'
import { LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { checkOutcome, dropLikeRsync, listVisible, payload, readProcessingLog, recordingCommand, sha256Hex } from '../sim/workload.ts'
import type { LedgerEntry } from '../sim/workload.ts'

const FAST = ['--heartbeat-ms', '500']
const GRACE = ['--reassign-grace-ms', '2000']
const TAKEOVER_GRACE = ['--takeover-grace-ms', '4000']
/** The held command gives up by itself after this long (so a failed run leaves no process behind for good). */
const HOLD_MAX_TICKS = 600

describe('the backup takes over coordination', () => {
  let root: string
  let mesh: LocalMesh
  let hold: string
  const logs: Array<{ node: string, file: string }> = []
  const procArgs = new Map<string, string[]>()

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-takeover-'))
    hold = path.join(root, 'HOLD')
    await fs.writeFile(hold, '')
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: [...FAST, ...GRACE] })
    await mesh.start('backup', { roles: ['backup'], args: [...FAST, ...GRACE, ...TAKEOVER_GRACE] })
    for (const name of ['proc1', 'proc2']) {
      const file = path.join(root, `${name}.records`)
      logs.push({ node: name, file })
      // Epoch 1 waits while the hold file exists (bounded); any later epoch runs at once.
      const q = `'${hold.replaceAll("'", "'\\''")}'`
      const cmd = `if [ "$FILEMESH_EPOCH" = 1 ]; then n=0; while [ -e ${q} ] && [ $n -lt ${HOLD_MAX_TICKS} ]; do sleep 0.2; n=$((n+1)); done; fi; ${recordingCommand(file)}`
      procArgs.set(name, [...FAST, '--exec', cmd])
      await mesh.start(name, { roles: ['process'], args: procArgs.get(name) })
    }
    await waitFor('all members seen by ingest and backup', async () => (await mesh.status('ingest')).members.length === 4 && (await mesh.status('backup')).members.length === 4, 30_000)
  }, 60_000)

  afterAll(async () => {
    if (hold != null) await fs.rm(hold, { force: true })
    await mesh?.stopAll()
    if (root != null && process.env.FILEMESH_KEEP == null) await fs.rm(root, { recursive: true, force: true })
  })

  it('reassigns a released file whose ingest and owner died; the old owner is fenced off on return', async () => {
    const inbox = mesh.get('ingest').info.inbox as string
    const bytes = payload(71, 0, 1_500_000)
    const ledger: LedgerEntry[] = [{ name: 'held.bin', size: bytes.length, sha256: sha256Hex(bytes) }]
    const cid = (await hashBytes(bytes)).root.toString()
    await dropLikeRsync(inbox, 'held.bin', bytes)

    const victim = await waitFor('the file released at the ingest and held on its owner', async () => {
      if ((await mesh.status('ingest')).files.deletedFromIngest !== 1) return undefined
      for (const name of ['proc1', 'proc2']) {
        if ((await mesh.status(name)).owner.processing > 0) return name
      }
      return undefined
    }, 30_000, 100)
    const other = victim === 'proc1' ? 'proc2' : 'proc1'
    await waitFor('the backup standing by for the file', async () => (await mesh.status('backup')).standby.standingBy === 1, 15_000, 100)

    await Promise.all([mesh.stop('ingest', 'SIGKILL'), mesh.stop(victim, 'SIGKILL')])

    const backup = await waitFor('the backup to take over and the other processor to process the file', async () => {
      const s = await mesh.status('backup')
      return s.standby.processedAfterTakeover === 1 ? s : undefined
    }, 60_000, 250)
    expect(backup.counters.takeovers).toBe(1)
    expect(backup.counters.takeoverReassignments).toBe(1)
    expect(backup.standby).toMatchObject({ standingBy: 0, coordinating: 1, staleCompletions: 0 })
    const runs = await readProcessingLog(logs.find((l) => l.node === other)?.file as string, other)
    expect(runs).toEqual([{ cid, sha256: ledger[0]?.sha256, epoch: 2, attempt: 1, name: 'held.bin', node: other }])
    // The new owner drops its working copy once the backup (the archive) confirms it holds the file.
    await waitFor('the new owner to release its working copy', async () => (await listVisible(path.join(mesh.dataDir(other), 'work'))).length === 0, 15_000)

    // The old owner returns (the ingest stays dead): it kills its orphaned command, asks the backup about its
    // lease, learns that epoch 1 is over, and drops the file without running it again.
    // (Started again rather than restarted: it joins through the first live node, the backup, not the dead ingest.)
    await mesh.start(victim, { roles: ['process'], args: procArgs.get(victim) })
    await waitFor('the returning owner to drop its copy', async () => {
      const s = await mesh.status(victim)
      return s.owner.processing === 0 && s.owner.stored === 0 && s.owner.processed === 0 && (await listVisible(path.join(mesh.dataDir(victim), 'work'))).length === 0
    }, 30_000)
    // Let a command that was not stopped finish now: it would record a second run.
    await fs.rm(hold, { force: true })
    await new Promise((resolve) => setTimeout(resolve, 1500))

    const report = await checkOutcome(ledger, mesh.get('backup').info.archive as string, logs)
    expect(report.archivedOk).toBe(1)
    expect(report.notProcessed).toEqual([])
    expect(report.processedTwiceOrMore).toEqual([])
    expect(report.processedWrongBytes).toEqual([])
    expect(report.perProcessor).toEqual({ [victim]: 0, [other]: 1 })
    const after = await mesh.status('backup')
    expect(after.standby.staleCompletions).toBe(0)
    expect(after.standby.processedAfterTakeover).toBe(1)
  }, 150_000)

  it('the ingest node, back, defers to the backup instead of reassigning the file', async () => {
    // Started again (not restarted): it joins through the first live node, the backup.
    await mesh.start('ingest', { roles: ['ingest'], args: [...FAST, ...GRACE] })
    const ingest = await waitFor('the ingest to learn that the backup coordinates the file', async () => {
      const s = await mesh.status('ingest')
      return s.files.takenOverByBackup === 1 ? s : undefined
    }, 30_000, 250)
    expect(ingest.counters.deferredToBackup).toBe(1)
    expect(ingest.counters.ownerReassignments).toBe(0)
    // Past a reassign grace: still nothing reassigned here, and still exactly one run.
    await new Promise((resolve) => setTimeout(resolve, 2500))
    expect((await mesh.status('ingest')).counters.ownerReassignments).toBe(0)
    const runs = (await Promise.all(logs.map(async (l) => await readProcessingLog(l.file, l.node)))).flat()
    expect(runs.map((r) => r.epoch)).toEqual([2])
  }, 60_000)
})
