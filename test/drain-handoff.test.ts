/**
 * `filemesh drain` on a backup node hands its archive copies to the other backup by itself: with two backups,
 * an ingest and a processor (real daemons), the drained backup ends "safe to remove" only once the other
 * backup holds a byte-identical, indexed copy of every file in its archive; its own copies stay where they
 * are. The hand-off is durable: after a restart, draining again is safe at once and fetches nothing again.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { INDEX_FILE_NAME } from '../node/archive.ts'
import { CLI_PATH, LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { dropLikeRsync, payload, sha256File, sha256Hex } from '../sim/workload.ts'

const run = promisify(execFile)
const FAST = ['--heartbeat-ms', '500']

/** The archive index: cid -> relative paths. */
async function readIndex (archiveDir: string): Promise<Map<string, string[]>> {
  const text = await fs.readFile(path.join(archiveDir, INDEX_FILE_NAME), 'utf8').catch(() => '')
  const index = new Map<string, string[]>()
  for (const line of text.split('\n').filter((l) => l !== '')) {
    const [cid, , rel] = line.split('\t') as [string, string, string]
    index.set(cid, [...(index.get(cid) ?? []), rel])
  }
  return index
}

describe('draining a backup hands off its archive copies', () => {
  let root: string
  let mesh: LocalMesh

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-drain-handoff-'))
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: FAST })
    await mesh.start('proc', { roles: ['process'], args: FAST })
    for (const name of ['backup1', 'backup2']) await mesh.start(name, { roles: ['backup'], args: FAST })
    await waitFor('all members seen by ingest', async () => (await mesh.status('ingest')).members.length === 4, 30_000)
  }, 60_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null && process.env.FILEMESH_KEEP == null) await fs.rm(root, { recursive: true, force: true })
  })

  it('ends "safe to remove" once the other backup holds identical copies of each archived file', async () => {
    const inbox = mesh.get('ingest').info.inbox as string
    const sha = new Map<string, string>()
    const files = 8
    for (let i = 0; i < files; i++) {
      const bytes = payload(61, i, i % 2 === 0 ? 1_500_000 + i : 200_000 + i)
      sha.set(`f${i}.bin`, sha256Hex(bytes))
      await dropLikeRsync(inbox, `f${i}.bin`, bytes)
    }
    await waitFor('all processed and released', async () => {
      const s = await mesh.status('ingest')
      return s.files.processed === files && s.files.deletedFromIngest === files
    }, 60_000)
    const archives = { backup1: mesh.get('backup1').info.archive as string, backup2: mesh.get('backup2').info.archive as string }
    const counts = { backup1: (await readIndex(archives.backup1)).size, backup2: (await readIndex(archives.backup2)).size }
    expect(counts.backup1 + counts.backup2).toBe(files)
    // Drain the backup holding more of them (it holds at least half).
    const [a, b] = counts.backup1 >= counts.backup2 ? ['backup1', 'backup2'] as const : ['backup2', 'backup1'] as const
    const before = await readIndex(archives[a])
    expect(before.size).toBeGreaterThan(0)
    const fetchedBefore = (await mesh.status(b)).transfer.fetched?.bytesReceived ?? 0

    const { stdout } = await run(process.execPath, [CLI_PATH, 'drain', '--data', mesh.dataDir(a), '--timeout-s', '40'])
    expect(stdout.trim()).toBe('safe to remove')

    // Every file of the drained archive is now in the other one too: indexed, byte-identical, under its name.
    const after = await readIndex(archives[b])
    for (const [cid, rels] of before) {
      const name = rels[0] as string
      expect(after.get(cid), `${name} (${cid}) in ${b}'s index`).toBeDefined()
      expect(await sha256File(path.join(archives[b], (after.get(cid) as string[])[0] as string))).toBe(sha.get(name))
      // and the drained backup still has its own copy (nothing is ever deleted)
      expect(await sha256File(path.join(archives[a], name))).toBe(sha.get(name))
    }
    expect(after.size).toBe(files)
    const status = await mesh.status(b)
    expect(status.backup.stored).toBe(files)
    expect(status.backup.fetching).toBe(0)
    const fetched = (status.transfer.fetched?.bytesReceived ?? 0) - fetchedBefore
    expect(fetched).toBeGreaterThan(0)

    // Durable: after a restart (draining is not remembered), draining again is safe at once and moves nothing.
    await mesh.restart(a)
    await waitFor(`${b} to see ${a} again`, async () => (await mesh.status(b)).members.some((m) => m.peerId === mesh.get(a).info.peerId), 20_000)
    const again = await run(process.execPath, [CLI_PATH, 'drain', '--data', mesh.dataDir(a), '--timeout-s', '10'])
    expect(again.stdout.trim()).toBe('safe to remove')
    const later = await mesh.status(b)
    expect(later.transfer.fetched?.bytesReceived).toBe(status.transfer.fetched?.bytesReceived)
    expect([...(await readIndex(archives[b])).values()].every((rels) => rels.length === 1)).toBe(true)
  }, 120_000)
})
