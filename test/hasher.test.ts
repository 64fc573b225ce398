/**
 * node/hasher.ts on real files in a temp dir: the manifest's root CID must equal ipfs-unixfs-importer's
 * (profile unixfs-v1-2025) for the same bytes, the leaves must cover the file in order with the right CIDs,
 * and hashFile must agree with hashBytes. Small chunk sizes give multi-level trees without huge files.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { importBytes } from 'ipfs-unixfs-importer'
import type { ImporterOptions } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import type { CID } from 'multiformats/cid'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { hashBytes, hashFile } from '../node/hasher.ts'
import type { FileManifest } from '../node/hasher.ts'
import { rawLeafCid, verifyBlock } from '../protocols/cid-policy.ts'
import { MiB } from '../protocols/limits.ts'
import { resolveLeaves } from '../protocols/unixfs.ts'
import { pseudoRandomBytes } from '../sim/workload.ts'

let dir: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'filemesh-hasher-'))
})

afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})


async function importerRoot (bytes: Uint8Array, shape: { chunkBytes?: number, maxLinks?: number } = {}): Promise<CID> {
  const blockstore = { put: async (cid: CID) => cid }
  const opts: ImporterOptions = { profile: 'unixfs-v1-2025', cidVersion: 1, rawLeaves: true, reduceSingleLeafToSelf: true }
  if (shape.chunkBytes != null) opts.chunker = fixedSize({ chunkSize: shape.chunkBytes })
  if (shape.maxLinks != null) opts.layout = balanced({ maxChildrenPerNode: shape.maxLinks })
  return (await importBytes(bytes, blockstore, opts)).cid
}

let fileCount = 0
async function tempFile (bytes: Uint8Array): Promise<string> {
  const path = join(dir, `f${fileCount++}.bin`)
  await writeFile(path, bytes)
  return path
}

/** Leaves are contiguous, start at 0, have the CIDs of their byte ranges, and sum to the size. */
function expectLeavesCover (m: FileManifest, bytes: Uint8Array, chunkBytes: number): void {
  expect(m.size).toBe(bytes.length)
  let offset = 0
  for (const leaf of m.leaves) {
    expect(leaf.offset).toBe(offset)
    expect(leaf.length).toBe(Math.min(chunkBytes, bytes.length - offset))
    expect(leaf.cid.equals(rawLeafCid(bytes.subarray(leaf.offset, leaf.offset + leaf.length)))).toBe(true)
    offset += leaf.length
  }
  expect(offset).toBe(bytes.length)
  expect(m.leaves.length).toBe(Math.max(1, Math.ceil(bytes.length / chunkBytes)))
  for (const node of m.nodes) verifyBlock(node.cid, node.bytes)
}

function summary (m: FileManifest): unknown {
  return {
    root: m.root.toString(),
    size: m.size,
    leaves: m.leaves.map(l => [l.cid.toString(), l.offset, l.length]),
    nodes: m.nodes.map(n => [n.cid.toString(), Buffer.from(n.bytes).toString('base64')])
  }
}

describe('hashFile at the profile defaults (1 MiB leaves, 1024 links)', () => {
  const cases: Array<[string, number]> = [
    ['empty', 0], ['1 byte', 1], ['1 MiB', MiB], ['1 MiB + 1', MiB + 1], ['5.5 MiB', 5.5 * MiB], ['3 MiB - 1', 3 * MiB - 1]
  ]
  for (const [name, size] of cases) {
    it(`${name}: same root as the importer, leaves cover the file`, async () => {
      const bytes = pseudoRandomBytes(size, size + 1)
      const m = await hashFile(await tempFile(bytes))
      expect(m.root.toString()).toBe((await importerRoot(bytes)).toString())
      expectLeavesCover(m, bytes, MiB)
      expect(summary(await hashBytes(bytes))).toEqual(summary(m))
    })
  }

  it('empty file: one empty leaf, the empty raw CID', async () => {
    const m = await hashFile(await tempFile(new Uint8Array(0)))
    expect(m.root.toString()).toBe('bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku')
    expect(m.leaves).toEqual([{ cid: m.root, offset: 0, length: 0 }])
    expect(m.nodes).toEqual([])
  })
})

describe('hashFile with small chunks (multi-level trees)', () => {
  it('~1100 chunks at 4 and at 1024 links, and random sizes, match the importer', async () => {
    const bytes = pseudoRandomBytes(1100 * 1024 + 333, 42)
    const path = await tempFile(bytes)
    for (const maxLinks of [4, 1024]) {
      const m = await hashFile(path, { chunkBytes: 1024, maxLinks })
      expect(m.root.toString()).toBe((await importerRoot(bytes, { chunkBytes: 1024, maxLinks })).toString())
      expectLeavesCover(m, bytes, 1024)
      expect(summary(await hashBytes(bytes, { chunkBytes: 1024, maxLinks }))).toEqual(summary(m))
    }
    for (let seed = 100; seed < 115; seed++) {
      const size = (seed * 7919) % 30_000
      const chunkBytes = 256 + (seed % 5) * 100
      const b = pseudoRandomBytes(size, seed)
      const m = await hashFile(await tempFile(b), { chunkBytes, maxLinks: 3 })
      expect(m.root.toString(), `seed ${seed}`).toBe((await importerRoot(b, { chunkBytes, maxLinks: 3 })).toString())
      expectLeavesCover(m, b, chunkBytes)
    }
  })

  it('file sizes on chunk boundaries', async () => {
    for (const size of [1023, 1024, 1025, 2048, 4 * 1024, 4 * 1024 + 1, 16 * 1024]) {
      const b = pseudoRandomBytes(size, size)
      const m = await hashFile(await tempFile(b), { chunkBytes: 1024, maxLinks: 4 })
      expect(m.root.toString(), `size ${size}`).toBe((await importerRoot(b, { chunkBytes: 1024, maxLinks: 4 })).toString())
      expectLeavesCover(m, b, 1024)
    }
  })

  it('its manifest resolves back to the same leaves', async () => {
    const bytes = pseudoRandomBytes(300 * 512 + 5, 7)
    const m = await hashFile(await tempFile(bytes), { chunkBytes: 512, maxLinks: 4 })
    const blocks = new Map(m.nodes.map(n => [n.cid.toString(), n.bytes]))
    const got = await resolveLeaves(m.root, async (cid) => {
      const b = blocks.get(cid.toString())
      if (b == null) throw new Error('missing node')
      return b
    }, { maxLinks: 4 })
    expect(got.size).toBe(m.size)
    expect(got.leaves.map(l => [l.cid.toString(), l.offset, l.length])).toEqual(m.leaves.map(l => [l.cid.toString(), l.offset, l.length]))
  })
})

describe('hashFile errors', () => {
  it('rejects a missing file, a bad chunk size, and an aborted signal', async () => {
    await expect(hashFile(join(dir, 'does-not-exist'))).rejects.toMatchObject({ code: 'ENOENT' })
    const path = await tempFile(pseudoRandomBytes(10, 1))
    await expect(hashFile(path, { chunkBytes: 0 })).rejects.toThrow(RangeError)
    await expect(hashFile(path, { signal: AbortSignal.abort() })).rejects.toThrow(/abort/i)
    await expect(hashBytes(new Uint8Array(1), { chunkBytes: 1.5 })).rejects.toThrow(RangeError)
  })

  it('stops between chunks when the signal aborts mid-file', async () => {
    const path = await tempFile(pseudoRandomBytes(512 * 1024, 3))
    const controller = new AbortController()
    const p = hashFile(path, { chunkBytes: 64, signal: controller.signal })
    controller.abort()
    await expect(p).rejects.toThrow(/abort/i)
  })
})
