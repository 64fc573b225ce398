/**
 * A backup whose archive disk fills up: it refuses new files below its free-space watermark, and a fetch that
 * hits ENOSPC removes its partial copy, sends no receipt and gives the file back; the coordinator hands such
 * files to the other backup. Nothing is lost, and the ingest copy goes only after a real receipt.
 * Needs a small tmpfs (mount, as root); skipped with a printed reason where that is not allowed.
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { dropLikeRsync, listVisible, payload, sha256File, sha256Hex } from '../sim/workload.ts'

const MiB = 1048576
const FAST = ['--heartbeat-ms', '500']

function tryMountTmpfs (dir: string, bytes: number): string | undefined {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir], { stdio: 'pipe' })
    return undefined
  } catch (err: any) {
    return `cannot mount a tmpfs (${String(err.stderr ?? err.message).trim()})`
  }
}

const root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-diskfull-'))
const smallArchive = path.join(root, 'small-archive')
await fs.mkdir(smallArchive)
const skipReason = tryMountTmpfs(smallArchive, 8 * MiB)
if (skipReason != null) process.stderr.write(`disk-full test skipped: ${skipReason}\n`)

describe.skipIf(skipReason != null)('a backup with a full disk', () => {
  let mesh: LocalMesh

  beforeAll(async () => {
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: [...FAST, '--reassign-grace-ms', '2000'] })
    await mesh.start('proc', { roles: ['process'], args: FAST })
    await mesh.start('small', { roles: ['backup'], args: [...FAST, '--archive', smallArchive, '--min-free-bytes', String(MiB)] })
    await mesh.start('big', { roles: ['backup'], args: FAST })
    await waitFor('all members seen by ingest', async () => (await mesh.status('ingest')).members.length === 4, 30_000)
  }, 60_000)

  afterAll(async () => {
    await mesh?.stopAll()
    try { execFileSync('umount', [smallArchive], { stdio: 'pipe' }) } catch {}
    await fs.rm(root, { recursive: true, force: true })
  })

  it('sends the files it cannot hold to the other backup; nothing is lost', async () => {
    const inbox = mesh.get('ingest').info.inbox as string
    const files = Array.from({ length: 10 }, (_, i) => {
      const bytes = payload(21, i, 3 * MiB + i)
      return { name: `big-${i}.bin`, bytes, sha256: sha256Hex(bytes) }
    })
    for (const f of files) await dropLikeRsync(inbox, f.name, f.bytes)
    const status = await waitFor('every file archived, processed and released', async () => {
      const s = await mesh.status('ingest')
      return s.files.deletedFromIngest === files.length && s.files.processed === files.length ? s : undefined
    }, 90_000, 250)
    expect(status.files.storedOnBackup).toBe(files.length)
    expect(status.counters.backupReassignments).toBeGreaterThan(0)

    const bigArchive = mesh.get('big').info.archive as string
    for (const f of files) {
      const copies = []
      for (const dir of [smallArchive, bigArchive]) {
        const p = path.join(dir, f.name)
        if (await fs.stat(p).catch(() => undefined) != null) copies.push(await sha256File(p))
      }
      expect(copies.length, `${f.name} archived`).toBeGreaterThan(0)
      for (const c of copies) expect(c, `${f.name} intact`).toBe(f.sha256)
    }
    // No partial copy is left on the full disk.
    expect(await listVisible(path.join(smallArchive, '.incoming'))).toEqual([])
    expect((await fs.readdir(path.join(smallArchive, '.incoming'))).filter((n) => n.endsWith('.part'))).toEqual([])
  }, 120_000)
})
