/**
 * Scrub and repair: a bit flipped in an archived file is found by `POST /api/scrub` (what `filemesh scrub`
 * calls), never served, and repaired from another holder that still has the file (here the owner, whose
 * processing command is still running).
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { dropLikeRsync, payload, sha256File, sha256Hex } from '../sim/workload.ts'

const FAST = ['--heartbeat-ms', '500']

describe('scrub', () => {
  let root: string
  let mesh: LocalMesh

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-scrub-'))
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: FAST })
    await mesh.start('proc', { roles: ['process'], args: [...FAST, '--exec', 'sleep 30'] })
    await mesh.start('backup', { roles: ['backup'], args: FAST })
    await waitFor('all members seen by ingest', async () => (await mesh.status('ingest')).members.length === 3, 30_000)
  }, 60_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null) await fs.rm(root, { recursive: true, force: true })
  })

  it('finds a flipped bit in the archive and repairs it from the owner', async () => {
    const bytes = payload(31, 0, 3 * 1048576 + 5)
    await dropLikeRsync(mesh.get('ingest').info.inbox as string, 'precious.bin', bytes)
    await waitFor('archived, and held by the owner', async () => {
      const s = await mesh.status('ingest')
      return s.files.storedOnBackup === 1 && s.files.storedOnOwner === 1
    }, 30_000, 100)
    const archived = path.join(mesh.get('backup').info.archive as string, 'precious.bin')
    const fh = await fs.open(archived, 'r+')
    const one = Buffer.alloc(1)
    await fh.read(one, 0, 1, 1_500_000)
    one[0] = (one[0] as number) ^ 0x10
    await fh.write(one, 0, 1, 1_500_000)
    await fh.close()
    expect(await sha256File(archived)).not.toBe(sha256Hex(bytes))

    const res = await fetch(`http://${mesh.get('backup').info.api}/api/scrub`, { method: 'POST' })
    const report = await res.json()
    expect(report).toMatchObject({ checked: 1, corrupt: 1, repaired: 1, unrecoverable: [] })
    expect(await sha256File(archived)).toBe(sha256Hex(bytes))

    const again = await (await fetch(`http://${mesh.get('backup').info.api}/api/scrub`, { method: 'POST' })).json()
    expect(again).toMatchObject({ checked: 1, corrupt: 0 })
  }, 60_000)
})
