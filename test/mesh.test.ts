/**
 * End to end with real daemon processes on loopback: 1 ingest + 3 processors + 1 backup, files dropped into
 * the inbox rsync-style and added with `filemesh add`. Every file must be processed exactly once on the right
 * bytes, archived byte-identical, and gone from the inbox, spool and work directories at the end.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CLI_PATH, LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { checkOutcome, dropLikeRsync, listVisible, payload, prng, readProcessingLog, recordingCommand, sha256Hex } from '../sim/workload.ts'
import type { LedgerEntry } from '../sim/workload.ts'
import { hashFile } from '../node/hasher.ts'

const run = promisify(execFile)
const MiB = 1048576

describe('a mesh of real daemons', () => {
  let root: string
  let mesh: LocalMesh
  const logs: Array<{ node: string, file: string }> = []

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-test-'))
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: ['--quiet-ms', '5000'] })
    await Promise.all([
      ...[1, 2, 3].map(async (i) => {
        const file = path.join(root, `proc${i}.log`)
        logs.push({ node: `proc${i}`, file })
        await mesh.start(`proc${i}`, { roles: ['process'], args: ['--exec', recordingCommand(file)] })
      }),
      mesh.start('backup', { roles: ['backup'] })
    ])
    await waitFor('all members seen by ingest', async () => (await mesh.status('ingest')).members.length === 5, 30_000)
  }, 90_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null) await fs.rm(root, { recursive: true, force: true })
  })

  it('processes 50 dropped files exactly once and archives them byte-identical', async () => {
    const inbox = mesh.get('ingest').info.inbox as string
    const rand = prng(7)
    const special = [0, 1, MiB, MiB + 1, 3 * MiB - 1]
    const ledger: LedgerEntry[] = []
    for (let i = 0; i < 50; i++) {
      const size = special[i] ?? Math.floor(rand() * 5 * MiB)
      const name = `file-${i}.dat`
      const bytes = payload(7, i, size)
      ledger.push({ name, size, sha256: sha256Hex(bytes) })
      await dropLikeRsync(inbox, name, bytes)
    }
    const status = await waitFor('all 50 files processed and released', async () => {
      const s = await mesh.status('ingest')
      return s.files.processed === 50 && s.files.deletedFromIngest === 50 ? s : undefined
    }, 120_000, 250)
    expect(status.files.failed).toBe(0)
    expect(status.files.storedOnBackup).toBe(50)

    const report = await checkOutcome(ledger, mesh.get('backup').info.archive as string, logs)
    expect(report.archiveMissing).toEqual([])
    expect(report.archiveCorrupt).toEqual([])
    expect(report.notProcessed).toEqual([])
    expect(report.processedTwiceOrMore).toEqual([])
    expect(report.processedWrongBytes).toEqual([])
    expect(report.processedOnce).toBe(50)
    // Work was shared: every processor got some of it.
    for (const n of Object.values(report.perProcessor)) expect(n).toBeGreaterThan(0)

    expect(await listVisible(inbox)).toEqual([])
    expect(await listVisible(path.join(mesh.dataDir('ingest'), 'spool'))).toEqual([])
    for (const i of [1, 2, 3]) {
      await waitFor(`proc${i} work dir empty`, async () => (await listVisible(path.join(mesh.dataDir(`proc${i}`), 'work'))).length === 0, 10_000)
    }
  }, 180_000)

  it('`filemesh add` prints the CID the ingest node computes, and the file flows through', async () => {
    const src = path.join(root, 'added.bin')
    const bytes = payload(9, 0, 2 * MiB + 123)
    await fs.writeFile(src, bytes)
    const { stdout } = await run(process.execPath, [CLI_PATH, 'add', '--data', mesh.dataDir('ingest'), src])
    const cid = stdout.trim()
    expect(cid).toBe((await hashFile(src)).root.toString())
    const rec = await waitFor('the added file to be processed', async () => {
      for (const { node, file } of logs) {
        const found = (await readProcessingLog(file, node)).find((r) => r.name === 'added.bin')
        if (found != null) return found
      }
      return undefined
    }, 60_000)
    // The processing command saw the same CID and the same bytes.
    expect(rec.cid).toBe(cid)
    expect(rec.sha256).toBe(sha256Hex(bytes))
  }, 90_000)

  it('`filemesh status` reports members and files, as a table and as JSON', async () => {
    const { stdout: json } = await run(process.execPath, [CLI_PATH, 'status', '--data', mesh.dataDir('ingest'), '--json'])
    const status = JSON.parse(json)
    expect(status.members).toHaveLength(5)
    expect(status.files.total).toBeGreaterThanOrEqual(51)
    const { stdout: table } = await run(process.execPath, [CLI_PATH, 'status', '--data', mesh.dataDir('ingest')])
    expect(table).toMatch(/members \(5 live\)/)
    expect(table).toMatch(/processed\s+\d+/)
  })

  it('a daemon restarted with the same --data keeps its peer ID', async () => {
    const before = mesh.get('proc2').info.peerId
    const after = await mesh.restart('proc2')
    expect(after.info.peerId).toBe(before)
    await waitFor('restarted node back in the membership', async () => (await mesh.status('ingest')).members.some((m) => m.peerId === before), 20_000)
  }, 60_000)

  it('says what to do when no daemon serves the data dir', async () => {
    const empty = path.join(root, 'nobody')
    await fs.mkdir(empty)
    const err = await run(process.execPath, [CLI_PATH, 'status', '--data', empty]).catch((e) => e)
    expect(err.code).toBe(69)
    expect(err.stderr).toMatch(/no daemon is serving/)
  })
})
