/**
 * `filemesh get CID` against real daemons: a file ingested, archived on the backup and kept by its owner
 * (its processing fails for good, so the owner keeps the working copy: two holders), fetched through a
 * node that holds nothing of it, from both holders at once, byte-identical; an unknown CID fails with a
 * clear message and leaves nothing at PATH; an invalid CID is a usage error; a client that goes away
 * leaves no temp file behind; the get still works with one of the two holders down.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CLI_PATH, LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { dropLikeRsync, payload } from '../sim/workload.ts'
import { hashBytes } from '../node/hasher.ts'
import { FileDagHasher, formatProgress } from '../node/get.ts'
import { decodeControlRequest, encodeMessage, MessageError } from '../protocols/messages.ts'
import { CONTROL_MESSAGE_BYTES_MAX } from '../protocols/limits.ts'

const run = promisify(execFile)
const MiB = 1048576
const FAST = ['--heartbeat-ms', '500']

describe('get by CID: pieces', () => {
  it('the `has` control message round-trips and is validated', () => {
    const msg = { type: 'has', v: 1, cid: 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku' } as const
    expect(decodeControlRequest(encodeMessage(msg, CONTROL_MESSAGE_BYTES_MAX))).toEqual(msg)
    for (const bad of [{ type: 'has', v: 1 }, { type: 'has', v: 1, cid: '' }, { type: 'has', v: 1, cid: 'x'.repeat(200) }, { type: 'has', v: 2, cid: 'b' }]) {
      expect(() => decodeControlRequest(new TextEncoder().encode(JSON.stringify(bad)))).toThrow(MessageError)
    }
  })

  it('FileDagHasher gives the ingest CID whatever the chunking of the stream', async () => {
    for (const size of [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 17]) {
      const bytes = payload(5, size, size)
      const hasher = new FileDagHasher()
      for (let at = 0, step = 1; at < size; at += step, step = (step * 7 + 13) % 300_000 + 1) hasher.update(bytes.subarray(at, Math.min(size, at + step)))
      expect(hasher.root().toString()).toBe((await hashBytes(bytes)).root.toString())
    }
  })

  it('formats the progress line', () => {
    expect(formatProgress(12 * MiB, 48 * MiB, 1000, 8)).toBe('12.0 MiB / 48.0 MiB  [##......]   25%  12.6 MB/s')
    expect(formatProgress(0, 0, 0, 4)).toBe('0.0 MiB / 0.0 MiB  [####]  100%  0.0 MB/s')
  })
})

describe('filemesh get against real daemons', () => {
  let root: string
  let mesh: LocalMesh
  let cid: string
  let bytes: Uint8Array
  let smallCid: string
  let small: Uint8Array

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-get-'))
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: FAST })
    await Promise.all([
      // Processing fails for good, so the owner keeps its working copy: the file has two holders.
      mesh.start('proc', { roles: ['process'], args: [...FAST, '--exec', 'exit 3', '--exec-attempts', '1'] }),
      mesh.start('backup', { roles: ['backup'], args: FAST }),
      mesh.start('other', { roles: ['ingest'], args: FAST })
    ])
    await waitFor('all members seen by every node', async () => {
      for (const n of ['ingest', 'other']) if ((await mesh.status(n)).members.length !== 4) return false
      return true
    }, 30_000)
    bytes = payload(77, 0, 20 * MiB + 4321)
    cid = (await hashBytes(bytes)).root.toString()
    small = payload(77, 1, 300_000) // one leaf: the root CID is a raw block
    smallCid = (await hashBytes(small)).root.toString()
    await dropLikeRsync(mesh.get('ingest').info.inbox as string, 'big.bin', bytes)
    await dropLikeRsync(mesh.get('ingest').info.inbox as string, 'small.bin', small)
    await waitFor('both files archived, failed on their owner, released by ingest', async () => {
      const f = (await mesh.status('ingest')).files
      return f.storedOnBackup === 2 && f.failed === 2 && f.deletedFromIngest === 2
    }, 60_000, 100)
  }, 90_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null) await fs.rm(root, { recursive: true, force: true })
  })

  it('fetches the file through a node that holds nothing, from both holders, byte-identical', async () => {
    const out = path.join(root, 'out.bin')
    const { stderr } = await run(process.execPath, [CLI_PATH, 'get', cid, '-o', out, '--data', mesh.dataDir('other')])
    expect(stderr).toBe('') // no progress bar off a terminal
    expect(Buffer.compare(await fs.readFile(out), bytes)).toBe(0)
    await expect(fs.stat(`${out}.part`)).rejects.toThrow()
    const status = await mesh.status('other')
    const byPeer = status.transfer.fetched?.byPeer ?? {}
    expect(byPeer[mesh.get('proc').info.peerId]?.blocks ?? 0).toBeGreaterThan(0)
    expect(byPeer[mesh.get('backup').info.peerId]?.blocks ?? 0).toBeGreaterThan(0)
    expect(status.counters.getsServed).toBe(1)
    expect(await fs.readdir(path.join(mesh.dataDir('other'), 'get'))).toEqual([])

    // An existing PATH is never overwritten without --force.
    const again = await run(process.execPath, [CLI_PATH, 'get', cid, '-o', out, '--data', mesh.dataDir('other')]).catch((e) => e)
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/already exists; pass --force/)
    await fs.writeFile(out, 'old')
    await run(process.execPath, [CLI_PATH, 'get', cid, '-o', out, '--force', '--data', mesh.dataDir('other')])
    expect(Buffer.compare(await fs.readFile(out), bytes)).toBe(0)
  }, 30_000)

  it('writes to stdout without -o (here through the ingest node, which released its copies)', async () => {
    const { stdout } = await run(process.execPath, [CLI_PATH, 'get', cid, '--data', mesh.dataDir('ingest')], { encoding: 'buffer', maxBuffer: 64 * MiB })
    expect(Buffer.compare(stdout, bytes)).toBe(0)
    const one = await run(process.execPath, [CLI_PATH, 'get', smallCid, '--data', mesh.dataDir('ingest')], { encoding: 'buffer' })
    expect(Buffer.compare(one.stdout, small)).toBe(0)
    const empty = await run(process.execPath, [CLI_PATH, 'get', 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku', '--data', mesh.dataDir('ingest')], { encoding: 'buffer' })
    expect(empty.stdout.byteLength).toBe(0)
  }, 30_000)

  it('a holder serves its own copy without fetching anything', async () => {
    const before = (await mesh.status('backup')).transfer.fetched?.bytesReceived
    const out = path.join(root, 'from-backup.bin')
    await run(process.execPath, [CLI_PATH, 'get', cid, '-o', out, '--data', mesh.dataDir('backup')])
    expect(Buffer.compare(await fs.readFile(out), bytes)).toBe(0)
    const after = await mesh.status('backup')
    expect(after.transfer.fetched?.bytesReceived).toBe(before)
    expect(after.counters.getsServed).toBe(1)
  }, 30_000)

  it('an unknown CID fails with a clear message and leaves no file; an invalid CID is a usage error', async () => {
    const unknown = (await hashBytes(payload(78, 0, 3 * MiB))).root.toString()
    const out = path.join(root, 'unknown.bin')
    const err = await run(process.execPath, [CLI_PATH, 'get', unknown, '-o', out, '--data', mesh.dataDir('other')]).catch((e) => e)
    expect(err.code).toBe(1)
    expect(err.stderr).toMatch(/no live member holds/)
    await expect(fs.stat(out)).rejects.toThrow()
    await expect(fs.stat(`${out}.part`)).rejects.toThrow()

    for (const bad of ['not-a-cid', 'QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG', 'bafyreib3h3z4khqcjffm3ryn3fwbyvvvm5ekadx4q7bvpqjwvkcqjwhiqy']) {
      const e = await run(process.execPath, [CLI_PATH, 'get', bad, '-o', out, '--data', mesh.dataDir('other')]).catch((x) => x)
      expect(e.code).toBe(2)
      expect(e.stderr).toMatch(/CID/)
    }
    await expect(fs.stat(out)).rejects.toThrow()
    const api = mesh.get('other').info.api
    const res = await fetch(`http://${api}/api/cid/not-a-cid`)
    expect(res.status).toBe(400)
    expect(((await res.json()) as { code: string }).code).toBe('bad-cid')
    const missing = await fetch(`http://${api}/api/cid/${unknown}`)
    expect(missing.status).toBe(404)
    expect(((await missing.json()) as { error: string }).error).toMatch(/no live member holds/)
  }, 30_000)

  it('a client that goes away mid-transfer leaves no temp file on the node', async () => {
    const controller = new AbortController()
    const res = await fetch(`http://${mesh.get('other').info.api}/api/cid/${cid}`, { signal: controller.signal })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-length')).toBe(String(bytes.byteLength))
    const reader = (res.body as ReadableStream<Uint8Array>).getReader()
    expect((await reader.read()).done).toBe(false)
    controller.abort()
    const tempDir = path.join(mesh.dataDir('other'), 'get')
    await waitFor('the temp file deleted', async () => (await fs.readdir(tempDir)).length === 0, 10_000, 50)
    await waitFor('the aborted get counted', async () => (await mesh.status('other')).counters.getsActive === 0, 10_000, 50)
  }, 30_000)

  it('still works with one of the two holders down', async () => {
    await mesh.stop('backup', 'SIGKILL')
    const out = path.join(root, 'one-holder.bin')
    await run(process.execPath, [CLI_PATH, 'get', cid, '-o', out, '--data', mesh.dataDir('other'), '--timeout-s', '20'])
    expect(Buffer.compare(await fs.readFile(out), bytes)).toBe(0)
  }, 30_000)
})
