/**
 * Owner failure: the owner of a file is SIGKILLed while its processing command runs. After the grace period
 * the coordinator gives the file to the next processor in rendezvous order (epoch 2), which processes it.
 * When the killed owner comes back it kills its orphaned command, learns from the lease check that another
 * owner has the file, and drops its copy: the file is processed exactly once and archived.
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { checkOutcome, dropLikeRsync, listVisible, payload, recordingCommand, sha256Hex } from '../sim/workload.ts'
import type { LedgerEntry } from '../sim/workload.ts'

const FAST = ['--heartbeat-ms', '500']

describe('owner reassignment', () => {
  let root: string
  let mesh: LocalMesh
  const logs: Array<{ node: string, file: string }> = []

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-reassign-'))
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: [...FAST, '--reassign-grace-ms', '2000'] })
    for (const name of ['proc1', 'proc2']) {
      const file = path.join(root, `${name}.log`)
      logs.push({ node: name, file })
      // The first epoch of a slow-* file takes a minute; any later epoch is quick.
      const cmd = `case "$FILEMESH_NAME" in slow-*) [ "$FILEMESH_EPOCH" = 1 ] && sleep 60;; esac; ${recordingCommand(file)}`
      await mesh.start(name, { roles: ['process'], args: [...FAST, '--exec', cmd] })
    }
    await mesh.start('backup', { roles: ['backup'], args: FAST })
    await waitFor('all members seen by ingest', async () => (await mesh.status('ingest')).members.length === 4, 30_000)
  }, 60_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null && process.env.FILEMESH_KEEP == null) await fs.rm(root, { recursive: true, force: true })
  })

  it('gives the file of a dead owner to the next processor; the old owner drops it on return', async () => {
    const inbox = mesh.get('ingest').info.inbox as string
    const ledger: LedgerEntry[] = []
    const names = ['slow-1.bin', 'a.bin', 'b.bin', 'c.bin']
    const drop = async (i: number): Promise<void> => {
      const bytes = payload(11, i, 300_000 + i)
      ledger.push({ name: names[i] as string, size: bytes.length, sha256: sha256Hex(bytes) })
      await dropLikeRsync(inbox, names[i] as string, bytes)
    }
    // The slow file alone first, so the node found processing is its owner.
    await drop(0)
    const victim = await waitFor('the slow file to be processing on its owner', async () => {
      for (const name of ['proc1', 'proc2']) {
        if ((await mesh.status(name)).owner.processing > 0) return name
      }
      return undefined
    }, 30_000, 100)
    for (let i = 1; i < names.length; i++) await drop(i)
    await mesh.stop(victim, 'SIGKILL')

    const status = await waitFor('every file processed after the reassignment', async () => {
      const s = await mesh.status('ingest')
      return s.files.processed === names.length && s.files.deletedFromIngest === names.length ? s : undefined
    }, 60_000, 250)
    expect(status.counters.ownerReassignments).toBeGreaterThanOrEqual(1)

    // The old owner returns: it kills its orphaned command and gives the file up.
    await mesh.restart(victim)
    await waitFor('the returning owner to drop its copy', async () => {
      const s = await mesh.status(victim)
      return s.owner.processing === 0 && s.owner.stored === 0 && (await listVisible(path.join(mesh.dataDir(victim), 'work'))).length === 0
    }, 30_000)
    // Give an orphan that was not killed the chance to finish (it would record a second run).
    await new Promise((resolve) => setTimeout(resolve, 1000))

    const report = await checkOutcome(ledger, mesh.get('backup').info.archive as string, logs)
    expect(report.archivedOk).toBe(names.length)
    expect(report.notProcessed).toEqual([])
    expect(report.processedTwiceOrMore).toEqual([])
    expect(report.processedWrongBytes).toEqual([])
  }, 150_000)
})
