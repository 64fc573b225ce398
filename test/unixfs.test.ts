/**
 * The content-addressing core against its oracle: protocols/cid-policy.ts (which CIDs we accept, block
 * verification) and protocols/unixfs.ts (DAG building, node decoding, DAG walking), with ipfs-unixfs-importer
 * (profile unixfs-v1-2025) deciding what the right root CID and nodes are.
 */
import { createHash } from 'node:crypto'
import * as dagPb from '@ipld/dag-pb'
import { UnixFS } from 'ipfs-unixfs'
import { importBytes } from 'ipfs-unixfs-importer'
import type { ImporterOptions } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { identity } from 'multiformats/hashes/identity'
import { describe, expect, it } from 'vitest'
import {
  assertAcceptedCid, BlockMismatchError, CidRejectedError, DAG_PB_CODE, dagPbCid, parseCid, RAW_CODE, rawLeafCid,
  SHA2_256_CODE, verifyBlock
} from '../protocols/cid-policy.ts'
import { BLOCK_BYTES, BLOCK_BYTES_MAX, DAG_MAX_LINKS, MiB } from '../protocols/limits.ts'
import { buildFileDag, DagError, decodeFileNode, EMPTY_FILE_CID, resolveLeaves } from '../protocols/unixfs.ts'
import type { DagNode, Leaf } from '../protocols/unixfs.ts'
import { pseudoRandomBytes } from '../sim/workload.ts'

const EMPTY_CID_STRING = 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'
const V0_CID_STRING = 'QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n'


/** Leaves of `bytes` cut every `chunkBytes`, the way the hasher cuts them (one empty leaf for no bytes). */
function leavesOf (bytes: Uint8Array, chunkBytes: number): Leaf[] {
  const leaves: Leaf[] = []
  let offset = 0
  do {
    const length = Math.min(chunkBytes, bytes.length - offset)
    leaves.push({ cid: rawLeafCid(bytes.subarray(offset, offset + length)), offset, length })
    offset += length
  } while (offset < bytes.length)
  return leaves
}

/** Imports `bytes` with ipfs-unixfs-importer; with chunkBytes/maxLinks given, they override the profile's. */
async function oracle (bytes: Uint8Array, shape: { chunkBytes?: number, maxLinks?: number } = {}): Promise<{ root: CID, blocks: Map<string, Uint8Array> }> {
  const blocks = new Map<string, Uint8Array>()
  const blockstore = {
    put: async (cid: CID, block: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>) => {
      if (!(block instanceof Uint8Array)) throw new Error('importer put a stream')
      blocks.set(cid.toString(), block)
      return cid
    }
  }
  const opts: ImporterOptions = { profile: 'unixfs-v1-2025', cidVersion: 1, rawLeaves: true, reduceSingleLeafToSelf: true }
  if (shape.chunkBytes != null) opts.chunker = fixedSize({ chunkSize: shape.chunkBytes })
  if (shape.maxLinks != null) opts.layout = balanced({ maxChildrenPerNode: shape.maxLinks })
  const result = await importBytes(bytes, blockstore, opts)
  return { root: result.cid, blocks }
}

/** Builds our DAG over `bytes` and checks root and every block against the importer's. */
async function expectSameAsImporter (bytes: Uint8Array, shape: { chunkBytes?: number, maxLinks?: number } = {}): Promise<{ leaves: Leaf[], nodes: DagNode[], root: CID }> {
  const leaves = leavesOf(bytes, shape.chunkBytes ?? BLOCK_BYTES)
  const dag = buildFileDag(leaves, { maxLinks: shape.maxLinks ?? DAG_MAX_LINKS })
  const want = await oracle(bytes, shape)
  expect(dag.root.toString()).toBe(want.root.toString())
  expect(dag.size).toBe(bytes.length)
  const ours = new Map<string, Uint8Array>()
  for (const n of dag.nodes) ours.set(n.cid.toString(), n.bytes)
  for (const l of leaves) ours.set(l.cid.toString(), bytes.subarray(l.offset, l.offset + l.length))
  expect([...ours.keys()].sort()).toEqual([...want.blocks.keys()].sort())
  for (const [key, block] of ours) expect(Buffer.from(block).equals(Buffer.from(want.blocks.get(key) ?? new Uint8Array()))).toBe(true)
  return { leaves, nodes: dag.nodes, root: dag.root }
}

/** A getNode over a map of blocks that counts calls. */
function fetcherOf (blocks: Map<string, Uint8Array>): { getNode: (cid: CID) => Promise<Uint8Array>, calls: string[] } {
  const calls: string[] = []
  return {
    calls,
    getNode: async (cid: CID) => {
      calls.push(cid.toString())
      const b = blocks.get(cid.toString())
      if (b == null) throw new Error(`no block ${cid.toString()}`)
      return b
    }
  }
}

function blockMap (nodes: DagNode[]): Map<string, Uint8Array> {
  return new Map(nodes.map(n => [n.cid.toString(), n.bytes]))
}

/** Encodes a UnixFS file node by hand, for malformed-node tests. */
function fileNode (links: Array<{ cid: CID, tsize?: number }>, blockSizes: bigint[], init: { type?: 'file' | 'directory', data?: Uint8Array } = {}): DagNode {
  const unixfs = new UnixFS({ type: init.type ?? 'file', data: init.data, blockSizes })
  const bytes = dagPb.encode(dagPb.prepare({ Data: unixfs.marshal(), Links: links.map(l => ({ Name: '', Tsize: l.tsize, Hash: l.cid })) }))
  return { cid: dagPbCid(bytes), bytes }
}

describe('cid-policy', () => {
  const data = new TextEncoder().encode('hello filemesh')

  it('accepts CIDv1 raw and dag-pb with sha2-256, and parses their strings', () => {
    const raw = rawLeafCid(data)
    expect(raw.version).toBe(1)
    expect(raw.code).toBe(RAW_CODE)
    expect(raw.multihash.code).toBe(SHA2_256_CODE)
    expect(Buffer.from(raw.multihash.digest).equals(createHash('sha256').update(data).digest())).toBe(true)
    assertAcceptedCid(raw)
    expect(parseCid(raw.toString()).equals(raw)).toBe(true)
    const pb = dagPbCid(data)
    expect(pb.code).toBe(DAG_PB_CODE)
    expect(parseCid(pb.toString()).equals(pb)).toBe(true)
  })

  it('gives the known CID for the empty block', () => {
    expect(rawLeafCid(new Uint8Array(0)).toString()).toBe(EMPTY_CID_STRING)
    expect(EMPTY_FILE_CID.toString()).toBe(EMPTY_CID_STRING)
  })

  it('rejects CIDv0', () => {
    const v0 = CID.parse(V0_CID_STRING)
    expect(() => { assertAcceptedCid(v0) }).toThrow(CidRejectedError)
    expect(() => parseCid(V0_CID_STRING)).toThrow(/only CIDv1/)
    // The same multihash as v1 dag-pb is fine.
    expect(() => { assertAcceptedCid(v0.toV1()) }).not.toThrow()
  })

  it('rejects the identity multihash', () => {
    const cid = CID.createV1(RAW_CODE, identity.digest(data))
    expect(() => { assertAcceptedCid(cid) }).toThrow(CidRejectedError)
    expect(() => parseCid(cid.toString())).toThrow(/identity/)
    expect(() => { verifyBlock(cid, data) }).toThrow(CidRejectedError)
  })

  it('rejects sha2-512 and short sha2-256 digests', () => {
    const sha512 = CID.createV1(RAW_CODE, Digest.create(0x13, createHash('sha512').update(data).digest()))
    expect(() => { assertAcceptedCid(sha512) }).toThrow(/sha2-256/)
    const short = CID.createV1(RAW_CODE, Digest.create(SHA2_256_CODE, createHash('sha256').update(data).digest().subarray(0, 20)))
    expect(() => { assertAcceptedCid(short) }).toThrow(/20-byte digest/)
  })

  it('rejects other codecs', () => {
    const cbor = CID.createV1(0x71, rawLeafCid(data).multihash)
    expect(() => { assertAcceptedCid(cbor) }).toThrow(/codec 0x71/)
    expect(() => parseCid(cbor.toString())).toThrow(CidRejectedError)
  })

  it('rejects strings that are not CIDs', () => {
    for (const s of ['', 'not-a-cid', 'bafy', 'b' + 'a'.repeat(200)]) {
      const err = (() => { try { parseCid(s) } catch (e) { return e } })()
      expect(err).toBeInstanceOf(CidRejectedError)
      expect((err as Error).name).toBe('CidRejectedError')
    }
  })

  it('verifies blocks: right bytes pass, wrong bytes throw BlockMismatchError', () => {
    const cid = rawLeafCid(data)
    verifyBlock(cid, data)
    const wrong = data.slice()
    wrong[0] = (wrong[0] ?? 0) ^ 1
    expect(() => { verifyBlock(cid, wrong) }).toThrow(BlockMismatchError)
    expect(() => { verifyBlock(cid, data.subarray(1)) }).toThrow(BlockMismatchError)
    expect(() => { verifyBlock(cid, new Uint8Array(0)) }).toThrow(BlockMismatchError)
    const err = (() => { try { verifyBlock(cid, wrong) } catch (e) { return e } })() as BlockMismatchError
    expect(err.name).toBe('BlockMismatchError')
    expect(err.cid.equals(cid)).toBe(true)
  })
})

describe('buildFileDag matches ipfs-unixfs-importer (profile unixfs-v1-2025)', () => {
  it('empty file: the empty raw block', async () => {
    expect(buildFileDag([]).root.toString()).toBe(EMPTY_CID_STRING)
    const { root, nodes } = await expectSameAsImporter(new Uint8Array(0))
    expect(root.toString()).toBe(EMPTY_CID_STRING)
    expect(nodes).toEqual([])
  })

  it('1 byte: the leaf is the root', async () => {
    const { root, nodes } = await expectSameAsImporter(new Uint8Array([42]))
    expect(root.code).toBe(RAW_CODE)
    expect(nodes).toEqual([])
  })

  it('exactly 1 MiB: one leaf, no node', async () => {
    const { root, leaves } = await expectSameAsImporter(pseudoRandomBytes(MiB, 1))
    expect(root.code).toBe(RAW_CODE)
    expect(leaves).toHaveLength(1)
  })

  it('1 MiB + 1: a root over two leaves', async () => {
    const { root, leaves, nodes } = await expectSameAsImporter(pseudoRandomBytes(MiB + 1, 2))
    expect(root.code).toBe(DAG_PB_CODE)
    expect(leaves.map(l => l.length)).toEqual([MiB, 1])
    expect(nodes).toHaveLength(1)
  })

  it('5.5 MiB', async () => {
    const { leaves } = await expectSameAsImporter(pseudoRandomBytes(5.5 * MiB, 3))
    expect(leaves).toHaveLength(6)
  })

  it('random sizes with small chunks and 4 links per node', async () => {
    for (let seed = 10; seed < 30; seed++) {
      const size = Math.floor(pseudoRandomBytes(4, seed).reduce((a, b) => a * 256 + b, 0) % 40_000)
      await expectSameAsImporter(pseudoRandomBytes(size, seed), { chunkBytes: 1000, maxLinks: 4 })
    }
  })

  it('multi-level trees: ~1100 chunks at 4 links (6 levels) and at the profile\'s 1024 links (2 levels)', async () => {
    const bytes = pseudoRandomBytes(1100 * 1024 + 77, 4)
    const four = await expectSameAsImporter(bytes, { chunkBytes: 1024, maxLinks: 4 })
    expect(four.leaves).toHaveLength(1101)
    // 1101 -> 276 -> 69 -> 18 -> 5 -> 2 -> 1 nodes
    expect(four.nodes).toHaveLength(276 + 69 + 18 + 5 + 2 + 1)
    // Leave the layout to the profile: it must be 1024 links per node, as ours.
    const wide = await expectSameAsImporter(bytes, { chunkBytes: 1024 })
    expect(wide.nodes).toHaveLength(3)
  })

  it('boundaries of a full node: 1024 and 1025 leaves', async () => {
    const full = await expectSameAsImporter(pseudoRandomBytes(1024 * 64, 5), { chunkBytes: 64 })
    expect(full.nodes).toHaveLength(1)
    const over = await expectSameAsImporter(pseudoRandomBytes(1024 * 64 + 1, 6), { chunkBytes: 64 })
    expect(over.nodes).toHaveLength(3)
  })

  it('repeated content gives repeated nodes, listed once', async () => {
    const { leaves, nodes } = await expectSameAsImporter(new Uint8Array(64 * 1024), { chunkBytes: 1024, maxLinks: 4 })
    expect(leaves).toHaveLength(64)
    expect(new Set(leaves.map(l => l.cid.toString())).size).toBe(1)
    // 64 leaves -> 16 identical nodes -> 4 identical nodes -> 1 root
    expect(nodes).toHaveLength(3)
  })

  it('rejects a maxLinks below 2 and leaves that are not raw', () => {
    const leaf = { cid: rawLeafCid(new Uint8Array([1])), length: 1 }
    expect(() => buildFileDag([leaf, leaf], { maxLinks: 1 })).toThrow(RangeError)
    expect(() => buildFileDag([{ cid: dagPbCid(new Uint8Array([1])), length: 1 }, leaf])).toThrow(RangeError)
  })
})

describe('decodeFileNode', () => {
  const leafA = rawLeafCid(new Uint8Array([1, 2, 3]))
  const leafB = rawLeafCid(new Uint8Array([4]))

  it('decodes links, tsizes and block sizes', () => {
    const dag = buildFileDag([{ cid: leafA, length: 3 }, { cid: leafB, length: 1 }])
    const root = dag.nodes[0]
    if (root == null) throw new Error('no node')
    const node = decodeFileNode(root.cid, root.bytes)
    expect(node.fileSize).toBe(4)
    expect(node.links.map(l => [l.cid.toString(), l.tsize, l.blockSize])).toEqual([[leafA.toString(), 3, 3], [leafB.toString(), 1, 1]])
  })

  it('rejects malformed or foreign nodes with DagError', () => {
    const bad: Array<[string, CID, Uint8Array, RegExp]> = []
    const add = (why: string, node: DagNode, re: RegExp): void => { bad.push([why, node.cid, node.bytes, re]) }
    add('links != blockSizes', fileNode([{ cid: leafA, tsize: 3 }, { cid: leafB, tsize: 1 }], [3n]), /2 links but 1 blockSizes/)
    add('directory', fileNode([{ cid: leafA, tsize: 3 }], [], { type: 'directory' }), /type is directory/)
    add('inline data', fileNode([{ cid: leafA, tsize: 3 }], [3n], { data: new Uint8Array([9]) }), /inline data/)
    add('no links', fileNode([], [], { data: new Uint8Array([9]) }), /inline data|no links/)
    add('zero block size', fileNode([{ cid: leafA, tsize: 0 }], [0n]), /blockSize 0/)
    add('raw tsize != blockSize', fileNode([{ cid: leafA, tsize: 4 }], [3n]), /Tsize 4 != blockSize 3/)
    add('missing tsize', fileNode([{ cid: leafA }], [3n]), /Tsize undefined/)
    add('oversized raw leaf', fileNode([{ cid: leafA, tsize: BLOCK_BYTES_MAX + 1 }], [BigInt(BLOCK_BYTES_MAX + 1)]), /exceeds/)
    add('v0 child', fileNode([{ cid: CID.parse(V0_CID_STRING), tsize: 3 }], [3n]), /only CIDv1/)
    add('identity child', fileNode([{ cid: CID.createV1(RAW_CODE, identity.digest(new Uint8Array([1]))), tsize: 1 }], [1n]), /identity/)
    const garbage = new Uint8Array([0xff, 0xff, 0xff])
    bad.push(['not dag-pb', dagPbCid(garbage), garbage, /not a dag-pb node/])
    const noData = dagPb.encode({ Links: [] })
    bad.push(['no Data', dagPbCid(noData), noData, /no UnixFS Data/])
    const rawCid = rawLeafCid(garbage)
    bad.push(['raw CID', rawCid, garbage, /not dag-pb/])
    for (const [why, cid, bytes, re] of bad) {
      let err: unknown
      try { decodeFileNode(cid, bytes) } catch (e) { err = e }
      expect(err, why).toBeInstanceOf(DagError)
      expect((err as Error).message, why).toMatch(re)
      expect((err as Error).name).toBe('DagError')
    }
  })

  it('enforces maxLinks and maxFileBytes', () => {
    const leaves = Array.from({ length: 5 }, (_, i) => ({ cid: rawLeafCid(new Uint8Array([i])), length: 1 }))
    const dag = buildFileDag(leaves)
    const root = dag.nodes[0]
    if (root == null) throw new Error('no node')
    expect(() => decodeFileNode(root.cid, root.bytes, { maxLinks: 4 })).toThrow(/5 links, at most 4/)
    expect(() => decodeFileNode(root.cid, root.bytes, { maxFileBytes: 4 })).toThrow(DagError)
    expect(decodeFileNode(root.cid, root.bytes, { maxLinks: 5, maxFileBytes: 5 }).fileSize).toBe(5)
  })
})

describe('resolveLeaves', () => {
  it('round-trips buildFileDag: same leaves, offsets, nodes and size', async () => {
    const bytes = pseudoRandomBytes(1100 * 1024 + 77, 7)
    for (const maxLinks of [4, 1024]) {
      const leaves = leavesOf(bytes, 1024)
      const dag = buildFileDag(leaves, { maxLinks })
      const { getNode, calls } = fetcherOf(blockMap(dag.nodes))
      const got = await resolveLeaves(dag.root, getNode, { maxLinks })
      expect(got.size).toBe(bytes.length)
      expect(got.leaves.map(l => [l.cid.toString(), l.offset, l.length])).toEqual(leaves.map(l => [l.cid.toString(), l.offset, l.length]))
      expect(got.nodes[0]?.cid.equals(dag.root)).toBe(true)
      expect(got.nodes.map(n => n.cid.toString()).sort()).toEqual(dag.nodes.map(n => n.cid.toString()).sort())
      expect(calls).toHaveLength(dag.nodes.length)
    }
  })

  it('walks DAGs with repeated subtrees, fetching each node once', async () => {
    const bytes = new Uint8Array(64 * 1024)
    const leaves = leavesOf(bytes, 1024)
    const dag = buildFileDag(leaves, { maxLinks: 4 })
    const { getNode, calls } = fetcherOf(blockMap(dag.nodes))
    const got = await resolveLeaves(dag.root, getNode, { maxLinks: 4 })
    expect(got.leaves.map(l => l.offset)).toEqual(leaves.map(l => l.offset))
    expect(got.size).toBe(bytes.length)
    expect(calls).toHaveLength(3)
  })

  it('a raw root is its own single leaf; the empty file too', async () => {
    const one = pseudoRandomBytes(1000, 8)
    const cid = rawLeafCid(one)
    const got = await resolveLeaves(cid, async () => one)
    expect(got).toEqual({ leaves: [{ cid, offset: 0, length: 1000 }], nodes: [], size: 1000 })
    const empty = await resolveLeaves(EMPTY_FILE_CID, async () => new Uint8Array(0))
    expect(empty.leaves).toEqual([{ cid: EMPTY_FILE_CID, offset: 0, length: 0 }])
    expect(empty.size).toBe(0)
    await expect(resolveLeaves(cid, async () => one.subarray(1))).rejects.toThrow(BlockMismatchError)
  })

  it('throws BlockMismatchError when a fetched node is corrupted', async () => {
    const dag = buildFileDag(leavesOf(pseudoRandomBytes(200 * 1024, 9), 1024), { maxLinks: 4 })
    for (const victim of [dag.nodes[0], dag.nodes[dag.nodes.length - 1]]) {
      if (victim == null) throw new Error('no node')
      const blocks = blockMap(dag.nodes)
      const corrupt = victim.bytes.slice()
      corrupt[corrupt.length - 1] = (corrupt[corrupt.length - 1] ?? 0) ^ 0x01
      blocks.set(victim.cid.toString(), corrupt)
      await expect(resolveLeaves(dag.root, fetcherOf(blocks).getNode, { maxLinks: 4 })).rejects.toThrow(BlockMismatchError)
    }
  })

  it('throws DagError for a well-hashed but inconsistent DAG', async () => {
    const leafA = rawLeafCid(new Uint8Array([1, 2, 3]))
    const leafB = rawLeafCid(new Uint8Array([4]))
    const child = fileNode([{ cid: leafA, tsize: 3 }, { cid: leafB, tsize: 1 }], [3n, 1n])
    // The parent claims the child holds 5 bytes; it holds 4.
    const parent = fileNode([{ cid: child.cid, tsize: child.bytes.length + 4 }, { cid: leafA, tsize: 3 }], [5n, 3n])
    const blocks = blockMap([child, parent])
    await expect(resolveLeaves(parent.cid, fetcherOf(blocks).getNode)).rejects.toThrow(/holds 4 bytes but its parent says 5/)
    const malformed = fileNode([{ cid: leafA, tsize: 3 }], [3n, 1n])
    await expect(resolveLeaves(malformed.cid, fetcherOf(blockMap([malformed])).getNode)).rejects.toThrow(DagError)
  })

  it('bounds depth and leaves', async () => {
    const dag = buildFileDag(leavesOf(pseudoRandomBytes(100 * 64, 10), 64), { maxLinks: 4 })
    const { getNode } = fetcherOf(blockMap(dag.nodes))
    // 100 leaves at 4 links need 4 levels of nodes.
    await expect(resolveLeaves(dag.root, getNode, { maxLinks: 4, maxDepth: 3 })).rejects.toThrow(/deeper than 3/)
    await expect(resolveLeaves(dag.root, getNode, { maxLinks: 4, maxDepth: 4 })).resolves.toMatchObject({ size: 6400 })
    await expect(resolveLeaves(dag.root, getNode, { maxLinks: 4, maxLeaves: 99 })).rejects.toThrow(/more than 99 leaves/)
    await expect(resolveLeaves(dag.root, getNode, { maxLinks: 3 })).rejects.toThrow(DagError)
  })

  it('refuses a v0 root and honours an aborted signal', async () => {
    const never = async (): Promise<Uint8Array> => { throw new Error('should not fetch') }
    await expect(resolveLeaves(CID.parse(V0_CID_STRING), never)).rejects.toThrow(CidRejectedError)
    const dag = buildFileDag(leavesOf(pseudoRandomBytes(5000, 11), 1000))
    await expect(resolveLeaves(dag.root, never, { signal: AbortSignal.abort() })).rejects.toThrow(/abort/i)
  })
})
