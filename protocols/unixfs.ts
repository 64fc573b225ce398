/**
 * The UnixFS file DAG of profile unixfs-v1-2025: raw leaves, balanced layout, up to DAG_MAX_LINKS links per
 * dag-pb node. Built here rather than with ipfs-unixfs-importer because we need each leaf's byte offset (a
 * block is a byte range of a stored file) and want to stream the hashing ourselves; the root CID is the same
 * as the importer's with `profile: 'unixfs-v1-2025'` (the tests use the importer as the oracle).
 *
 * Three jobs: build the dag-pb nodes above a list of leaf CIDs; decode and check one file node received from
 * a peer; walk a DAG from its root through a fetch function to learn every leaf and its offset. Everything
 * that comes from outside is bounded (links per node, depth, leaves, sizes) and verified against its CID
 * before it is decoded. Pure: no I/O beyond the injected fetch function.
 */
import * as dagPb from '@ipld/dag-pb'
import { UnixFS } from 'ipfs-unixfs'
import type { CID } from 'multiformats/cid'
import { assertAcceptedCid, dagPbCid, DAG_PB_CODE, RAW_CODE, rawLeafCid, verifyBlock } from './cid-policy.ts'
import { BLOCK_BYTES_MAX, DAG_DEPTH_MAX, DAG_MAX_LINKS, FILE_BYTES_MAX, FILE_LEAVES_MAX } from './limits.ts'

/** One raw leaf of a file: its CID and the byte range of the file it holds. */
export interface Leaf {
  cid: CID
  offset: number
  length: number
}

/** One encoded dag-pb node of a file DAG. */
export interface DagNode {
  cid: CID
  bytes: Uint8Array
}

/** A file's DAG: the root CID, the file's size in bytes, and the dag-pb nodes (unique by CID). */
export interface FileDag {
  root: CID
  size: number
  nodes: DagNode[]
}

/** A decoded UnixFS file node: one entry per child (raw leaf or dag-pb node), in file order. */
export interface FileNode {
  links: Array<{ cid: CID, tsize: number, blockSize: number }>
  /** Sum of the children's file bytes. */
  fileSize: number
}

/** A file DAG node that is malformed, not a UnixFS file node, or outside our limits. */
export class DagError extends Error {
  override name = 'DagError'
  readonly cid?: CID

  constructor (message: string, cid?: CID) {
    super(cid == null ? message : `${message} (node ${cid.toString()})`)
    this.cid = cid
  }
}

/** CID of the empty file: the empty raw block (bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku). */
export const EMPTY_FILE_CID: CID = rawLeafCid(new Uint8Array(0))

/** Fetches of dag-pb nodes that resolveLeaves keeps in flight. */
export const DEFAULT_NODE_FETCHES_IN_FLIGHT = 8

export interface BuildFileDagInit {
  /** Links per dag-pb node (default DAG_MAX_LINKS, 1024); at least 2. */
  maxLinks?: number
}

/** A child on its way into a parent: its CID, the file bytes under it, and its cumulative Tsize. */
interface Child {
  cid: CID
  fileBytes: number
  tsize: number
}

/**
 * Builds the balanced dag-pb tree above `leaves` (raw leaf CIDs in file order), exactly as ipfs-unixfs-importer
 * does with raw leaves, balanced layout and reduceSingleLeafToSelf: no leaves gives the empty raw block, one
 * leaf is its own root, otherwise leaves are grouped maxLinks at a time into file nodes, and those nodes again,
 * until one root is left. Nodes come out bottom-up (root last), unique by CID.
 */
export function buildFileDag (leaves: ReadonlyArray<{ cid: CID, length: number }>, opts: BuildFileDagInit = {}): FileDag {
  const maxLinks = opts.maxLinks ?? DAG_MAX_LINKS
  if (!Number.isInteger(maxLinks) || maxLinks < 2) {
    throw new RangeError(`maxLinks must be an integer >= 2, got ${maxLinks}`)
  }
  let size = 0
  for (const leaf of leaves) {
    if (leaf.cid.code !== RAW_CODE) throw new RangeError(`leaf ${leaf.cid.toString()} is not a raw block`)
    if (!Number.isSafeInteger(leaf.length) || leaf.length < 0) throw new RangeError(`leaf length ${leaf.length} is not a byte count`)
    if (leaf.length === 0 && leaves.length > 1) throw new RangeError('only a single-leaf (empty) file may have an empty leaf')
    size += leaf.length
  }
  const only = leaves[0]
  if (only == null) return { root: EMPTY_FILE_CID, size: 0, nodes: [] }
  if (leaves.length === 1) return { root: only.cid, size, nodes: [] }

  const nodes: DagNode[] = []
  const seen = new Set<string>()
  let level: Child[] = leaves.map(l => ({ cid: l.cid, fileBytes: l.length, tsize: l.length }))
  while (level.length > 1) {
    const next: Child[] = []
    for (let i = 0; i < level.length; i += maxLinks) {
      const node = encodeFileNode(level.slice(i, i + maxLinks))
      const key = node.cid.toString()
      if (!seen.has(key)) {
        seen.add(key)
        nodes.push({ cid: node.cid, bytes: node.bytes })
      }
      next.push({ cid: node.cid, fileBytes: node.fileBytes, tsize: node.tsize })
    }
    level = next
  }
  const root = level[0]
  if (root == null) throw new Error('unreachable: empty level')
  return { root: root.cid, size, nodes }
}

/** Encodes one UnixFS file node over `children`, the way the importer's file reducer does. */
function encodeFileNode (children: Child[]): Child & { bytes: Uint8Array } {
  const unixfs = new UnixFS({ type: 'file' })
  let fileBytes = 0
  let linksTsize = 0
  const links: dagPb.PBLink[] = []
  for (const child of children) {
    unixfs.addBlockSize(BigInt(child.fileBytes))
    fileBytes += child.fileBytes
    linksTsize += child.tsize
    links.push({ Name: '', Tsize: child.tsize, Hash: child.cid })
  }
  const bytes = dagPb.encode(dagPb.prepare({ Data: unixfs.marshal(), Links: links }))
  return { cid: dagPbCid(bytes), bytes, fileBytes, tsize: bytes.length + linksTsize }
}

export interface DecodeFileNodeInit {
  /** Most links accepted in one node (default DAG_MAX_LINKS). */
  maxLinks?: number
  /** Largest file size a node may claim (default FILE_BYTES_MAX). */
  maxFileBytes?: number
}

/**
 * Decodes a dag-pb UnixFS file node and checks it: a dag-pb CID, a file-type UnixFS Data with no inline data,
 * 1..maxLinks links each with an accepted CID and a Tsize, as many blockSizes as links, every blockSize > 0,
 * raw children no larger than a block and with Tsize == blockSize, and a total within maxFileBytes.
 * Does not hash the bytes: verify them against `cid` first (verifyBlock). Throws DagError.
 */
export function decodeFileNode (cid: CID, bytes: Uint8Array, opts: DecodeFileNodeInit = {}): FileNode {
  const maxLinks = opts.maxLinks ?? DAG_MAX_LINKS
  const maxFileBytes = opts.maxFileBytes ?? FILE_BYTES_MAX
  if (cid.code !== DAG_PB_CODE) throw new DagError(`codec 0x${cid.code.toString(16)} is not dag-pb`, cid)
  if (bytes.length > BLOCK_BYTES_MAX) throw new DagError(`node of ${bytes.length} bytes exceeds ${BLOCK_BYTES_MAX}`, cid)

  let pb: dagPb.PBNode
  let unixfs: UnixFS
  try {
    pb = dagPb.decode(bytes)
  } catch (err) {
    throw new DagError(`not a dag-pb node: ${errMessage(err)}`, cid)
  }
  if (pb.Data == null) throw new DagError('dag-pb node has no UnixFS Data', cid)
  try {
    unixfs = UnixFS.unmarshal(pb.Data)
  } catch (err) {
    throw new DagError(`invalid UnixFS Data: ${errMessage(err)}`, cid)
  }
  if (unixfs.type !== 'file') throw new DagError(`UnixFS type is ${unixfs.type}, expected file`, cid)
  if (unixfs.data != null && unixfs.data.length > 0) {
    throw new DagError('file node carries inline data: only raw-leaf DAGs are accepted', cid)
  }
  if (pb.Links.length === 0) throw new DagError('file node has no links: only raw-leaf DAGs are accepted', cid)
  if (pb.Links.length > maxLinks) throw new DagError(`file node has ${pb.Links.length} links, at most ${maxLinks}`, cid)
  if (pb.Links.length !== unixfs.blockSizes.length) {
    throw new DagError(`file node has ${pb.Links.length} links but ${unixfs.blockSizes.length} blockSizes`, cid)
  }

  const links: FileNode['links'] = []
  let fileSize = 0
  for (let i = 0; i < pb.Links.length; i++) {
    const link = pb.Links[i]
    const blockSizeBig = unixfs.blockSizes[i]
    if (link == null || blockSizeBig == null) throw new Error('unreachable: index within checked lengths')
    try {
      assertAcceptedCid(link.Hash)
    } catch (err) {
      throw new DagError(`link ${i}: ${errMessage(err)}`, cid)
    }
    if (blockSizeBig <= 0n || blockSizeBig > BigInt(maxFileBytes)) {
      throw new DagError(`link ${i}: blockSize ${blockSizeBig} outside 1..${maxFileBytes}`, cid)
    }
    const blockSize = Number(blockSizeBig)
    const tsize = link.Tsize
    if (tsize == null || !Number.isSafeInteger(tsize) || tsize < blockSize) {
      throw new DagError(`link ${i}: Tsize ${String(tsize)} is missing or below blockSize ${blockSize}`, cid)
    }
    if (link.Hash.code === RAW_CODE) {
      if (blockSize > BLOCK_BYTES_MAX) throw new DagError(`link ${i}: raw leaf of ${blockSize} bytes exceeds ${BLOCK_BYTES_MAX}`, cid)
      if (tsize !== blockSize) throw new DagError(`link ${i}: raw leaf Tsize ${tsize} != blockSize ${blockSize}`, cid)
    }
    fileSize += blockSize
    if (fileSize > maxFileBytes) throw new DagError(`file node claims more than ${maxFileBytes} bytes`, cid)
    links.push({ cid: link.Hash, tsize, blockSize })
  }
  return { links, fileSize }
}

export interface ResolveLeavesInit extends DecodeFileNodeInit {
  /** Most levels of dag-pb nodes (default DAG_DEPTH_MAX). */
  maxDepth?: number
  /** Most leaves (default FILE_LEAVES_MAX). */
  maxLeaves?: number
  /** Node fetches in flight (default DEFAULT_NODE_FETCHES_IN_FLIGHT). */
  fetchesInFlight?: number
  signal?: AbortSignal
}

/** Fetches one block by CID; supplied by the network layer. Need not verify: resolveLeaves does. */
export type GetNode = (cid: CID, options?: { signal?: AbortSignal }) => Promise<Uint8Array>

/** One position in a level of the walk: a leaf already known, or a dag-pb node still to fetch. */
type Entry =
  | { kind: 'leaf', cid: CID, length: number }
  | { kind: 'node', cid: CID, fileBytes?: number }

/**
 * Walks a file DAG from `root`, one level at a time, fetching the dag-pb nodes through `getNode`, verifying
 * each against its CID (BlockMismatchError) and decoding it (DagError), and returns every leaf with its byte
 * offset, the dag-pb nodes (unique by CID, root first) and the file size. A raw root is fetched too (its
 * length is not otherwise known) and is the only leaf, at offset 0. Each child node's size must equal the
 * blockSize its parent gives it. Bounded in depth, leaves and bytes.
 */
export async function resolveLeaves (root: CID, getNode: GetNode, opts: ResolveLeavesInit = {}): Promise<{ leaves: Leaf[], nodes: DagNode[], size: number }> {
  const maxDepth = opts.maxDepth ?? DAG_DEPTH_MAX
  const maxLeaves = opts.maxLeaves ?? FILE_LEAVES_MAX
  const fetchesInFlight = Math.max(1, opts.fetchesInFlight ?? DEFAULT_NODE_FETCHES_IN_FLIGHT)
  const signal = opts.signal
  assertAcceptedCid(root)

  if (root.code === RAW_CODE) {
    signal?.throwIfAborted()
    const bytes = await getNode(root, { signal })
    verifyBlock(root, bytes)
    if (bytes.length > BLOCK_BYTES_MAX) throw new DagError(`raw root of ${bytes.length} bytes exceeds ${BLOCK_BYTES_MAX}`, root)
    return { leaves: [{ cid: root, offset: 0, length: bytes.length }], nodes: [], size: bytes.length }
  }

  const nodes: DagNode[] = []
  const decoded = new Map<string, FileNode>()
  let level: Entry[] = [{ kind: 'node', cid: root }]
  for (let depth = 0; level.some(e => e.kind === 'node'); depth++) {
    if (depth >= maxDepth) throw new DagError(`file DAG is deeper than ${maxDepth} levels of nodes`, root)
    const toFetch = uniqueNodeCids(level, decoded)
    await forEachLimited(toFetch, fetchesInFlight, async (cid) => {
      signal?.throwIfAborted()
      const bytes = await getNode(cid, { signal })
      verifyBlock(cid, bytes)
      decoded.set(cid.toString(), decodeFileNode(cid, bytes, opts))
      nodes.push({ cid, bytes })
    })
    const next: Entry[] = []
    for (const entry of level) {
      if (entry.kind === 'leaf') {
        next.push(entry)
        continue
      }
      const node = decoded.get(entry.cid.toString())
      if (node == null) throw new Error('unreachable: node fetched above')
      if (entry.fileBytes != null && node.fileSize !== entry.fileBytes) {
        throw new DagError(`node holds ${node.fileSize} bytes but its parent says ${entry.fileBytes}`, entry.cid)
      }
      for (const link of node.links) {
        next.push(link.cid.code === RAW_CODE
          ? { kind: 'leaf', cid: link.cid, length: link.blockSize }
          : { kind: 'node', cid: link.cid, fileBytes: link.blockSize })
      }
      if (next.length > maxLeaves) throw new DagError(`file DAG has more than ${maxLeaves} leaves`, root)
    }
    level = next
  }

  const leaves: Leaf[] = []
  let offset = 0
  for (const entry of level) {
    if (entry.kind !== 'leaf') throw new Error('unreachable: the walk ends when only leaves are left')
    leaves.push({ cid: entry.cid, offset, length: entry.length })
    offset += entry.length
  }
  // Root first, then level order: fetches of one level finish in any order, so sort them by first use.
  return { leaves, nodes: orderNodes(root, nodes, decoded), size: offset }
}

/** dag-pb CIDs of `level` not yet decoded, each once, in order. */
function uniqueNodeCids (level: Entry[], decoded: Map<string, FileNode>): CID[] {
  const out: CID[] = []
  const seen = new Set<string>()
  for (const e of level) {
    if (e.kind !== 'node') continue
    const key = e.cid.toString()
    if (decoded.has(key) || seen.has(key)) continue
    seen.add(key)
    out.push(e.cid)
  }
  return out
}

/** Breadth-first order of the nodes from the root, each once. */
function orderNodes (root: CID, nodes: DagNode[], decoded: Map<string, FileNode>): DagNode[] {
  const byKey = new Map(nodes.map(n => [n.cid.toString(), n]))
  const out: DagNode[] = []
  const seen = new Set<string>()
  let frontier: CID[] = [root]
  while (frontier.length > 0) {
    const next: CID[] = []
    for (const cid of frontier) {
      const key = cid.toString()
      const node = byKey.get(key)
      if (node == null || seen.has(key)) continue
      seen.add(key)
      out.push(node)
      for (const link of decoded.get(key)?.links ?? []) {
        if (link.cid.code === DAG_PB_CODE) next.push(link.cid)
      }
    }
    frontier = next
  }
  return out
}

/** Runs `fn` over `items` with at most `limit` calls in flight; rejects with the first failure. */
async function forEachLimited<T> (items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  let failed = false
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const item = items[next++] as T
      try {
        await fn(item)
      } catch (err) {
        failed = true
        throw err
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}

function errMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
