/**
 * Fetches blocks from peers over BLOCKS_PROTOCOL (codec in protocols/blocks.ts, server in block-server.ts).
 *
 * One stream per fetch keeps up to W requests outstanding (pipelined: the next request leaves as soon as a
 * response arrives), so a source is never idle waiting for our round trip. Memory stays bounded: at most W
 * responses are buffered per stream (lpStream's maxBufferSize allows W + 2 frames, notes/libp2p-v3.md
 * pitfall 5), and `onBlock` is awaited before the next read, so a slow disk slows the fetch instead of
 * filling memory. Every block is verified against its CID before anyone sees it.
 *
 * `fetchLeavesToFile` spreads a file's leaves over several sources pulling from one work list
 * (node/block-work-list.ts): a block that fails from one source goes back to the list for the
 * others, and the fetch gives up only when every source has failed that block. In a swarm transfer
 * (node/swarm.ts) each leaf has a preferred source, which alone is asked for it until it fails it.
 */
import { lpStream } from '@libp2p/utils'
import type { LengthPrefixedStream } from '@libp2p/utils'
import type { Libp2p, PeerId, Stream } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import type { FileHandle } from 'node:fs/promises'
import { verifyBlock } from '../protocols/cid-policy.ts'
import { BLOCKS_PROTOCOL } from '../protocols/ids.ts'
import { BLOCK_FRAME_BYTES_MAX, BLOCK_REQUEST_TIMEOUT_MS, BLOCK_REQUESTS_IN_FLIGHT_MAX } from '../protocols/limits.ts'
import { decodeBlockResponse, encodeBlockRequest, FrameError, messageOf } from '../protocols/blocks.ts'
import type { BlockResponse } from '../protocols/blocks.ts'
import { createLogger } from './log.ts'
import type { Logger } from './log.ts'
import { BlockWorkList, DEFAULT_PREFERRED_SOURCE_PATIENCE_MS, DEFAULT_PREFERRED_SOURCE_RETRY_MS } from './block-work-list.ts'
import type { BlockWorkItem, LeafRange } from './block-work-list.ts'
import { preferredSource, probePartner } from './swarm.ts'
import type { SwarmShare } from './swarm.ts'
import { writeFully } from './fsutil.ts'

export { BlockMismatchError } from '../protocols/cid-policy.ts'
export { BlocksUnavailableError } from './block-work-list.ts'
export type { LeafRange } from './block-work-list.ts'

/** The peer answered NOT_FOUND. */
export class BlockNotFoundError extends Error {
  override name = 'BlockNotFoundError'
  readonly cid: CID
  readonly peer: string
  constructor (cid: CID, peer: string) {
    super(`peer ${peer} does not have block ${cid.toString()}`)
    this.cid = cid
    this.peer = peer
  }
}

/** The peer answered REFUSED (it found our request malformed, or is over a limit). */
export class BlockRefusedError extends Error {
  override name = 'BlockRefusedError'
  readonly cid: CID
  readonly peer: string
  constructor (cid: CID, peer: string) {
    super(`peer ${peer} refused the request for block ${cid.toString()}`)
    this.cid = cid
    this.peer = peer
  }
}

/** No response for `cid` within the per-block timeout; the stream was reset. */
export class BlockTimeoutError extends Error {
  override name = 'BlockTimeoutError'
  readonly cid: CID
  readonly peer: string
  constructor (cid: CID, peer: string, timeoutMs: number) {
    super(`peer ${peer} sent no response for block ${cid.toString()} within ${timeoutMs} ms`)
    this.cid = cid
    this.peer = peer
  }
}

/** The peer cannot be reached, or its stream closed or broke the protocol before answering. */
export class BlockPeerGoneError extends Error {
  override name = 'BlockPeerGoneError'
  readonly peer: string
  constructor (peer: string, message: string, cause?: unknown) {
    super(`peer ${peer}: ${message}`, { cause })
    this.peer = peer
  }
}

export interface BlockClientComponents {
  /** The libp2p node streams are opened from. */
  node: Pick<Libp2p, 'dialProtocol'>
}

export interface BlockClientInit {
  /** Requests kept outstanding per stream (W). */
  requestsInFlightMax?: number
  /** Longest wait for one response once we are ready to read it. */
  requestTimeoutMs?: number
  /** Consecutive stream failures (dial, reset, timeout) after which a source is dropped from a file fetch. */
  sourceFailuresMax?: number
  /** Swarm: how long a partner may answer only NOT_FOUND for its share (not started yet) before the landing node is asked. */
  preferredSourcePatienceMs?: number
  /** Swarm: delay before a partner is asked again for a block of its share it did not have. */
  preferredSourceRetryMs?: number
  logger?: Logger
}

export interface BlockFetchOptions {
  signal?: AbortSignal
}

export interface FetchLeavesInit {
  leaves: LeafRange[]
  sources: PeerId[]
  fileHandle: FileHandle
  signal?: AbortSignal
  onProgress?: (bytesDone: number, bytesTotal: number) => void
  /**
   * This fetcher's share of a swarm transfer (node/swarm.ts): each distinct leaf is asked first from
   * `preferredSource(swarm, ordinal)`, and from the other sources only once that one failed it or was
   * dropped. Preferred sources not among `sources` are ignored. Without it every source takes any leaf.
   */
  swarm?: SwarmShare
  /** Called once a leaf is verified and written at every offset it appears at (with its first range). */
  onWritten?: (leaf: LeafRange) => void
}

export interface FetchLeavesResult {
  /** Verified leaf bytes received from each source (each distinct leaf counted once). */
  bytesBySource: Record<string, number>
}

export interface BlockClientPeerStats { bytesReceived: number, blocks: number }

export interface BlockClientStats {
  /** Block bytes received in OK responses (before verification). */
  bytesReceived: number
  blocksReceived: number
  /** Blocks that failed verification. */
  corruptReceived: number
  byPeer: Record<string, BlockClientPeerStats>
}

export const DEFAULT_SOURCE_FAILURES_MAX = 3

export class BlockClient {
  readonly #node: BlockClientComponents['node']
  readonly #window: number
  readonly #timeoutMs: number
  readonly #sourceFailuresMax: number
  readonly #patienceMs: number
  readonly #retryMs: number
  readonly #log: Logger
  readonly #byPeer = new Map<string, BlockClientPeerStats>()
  #bytesReceived = 0
  #blocksReceived = 0
  #corruptReceived = 0

  constructor (components: BlockClientComponents, init: BlockClientInit = {}) {
    this.#node = components.node
    this.#window = Math.max(1, init.requestsInFlightMax ?? BLOCK_REQUESTS_IN_FLIGHT_MAX)
    this.#timeoutMs = init.requestTimeoutMs ?? BLOCK_REQUEST_TIMEOUT_MS
    this.#sourceFailuresMax = Math.max(1, init.sourceFailuresMax ?? DEFAULT_SOURCE_FAILURES_MAX)
    this.#patienceMs = init.preferredSourcePatienceMs ?? DEFAULT_PREFERRED_SOURCE_PATIENCE_MS
    this.#retryMs = init.preferredSourceRetryMs ?? DEFAULT_PREFERRED_SOURCE_RETRY_MS
    this.#log = init.logger ?? createLogger('block-client')
  }

  stats (): BlockClientStats {
    return {
      bytesReceived: this.#bytesReceived,
      blocksReceived: this.#blocksReceived,
      corruptReceived: this.#corruptReceived,
      byPeer: Object.fromEntries([...this.#byPeer].map(([peer, s]) => [peer, { ...s }]))
    }
  }

  /** One verified block. Throws BlockNotFoundError, BlockRefusedError, BlockMismatchError, BlockTimeoutError, BlockPeerGoneError. */
  async getBlock (peer: PeerId, cid: CID, options: BlockFetchOptions = {}): Promise<Uint8Array> {
    let result: Uint8Array | undefined
    await this.fetchBlocks(peer, [cid], async (_cid, bytes) => { result = bytes }, options)
    if (result == null) throw new Error('fetchBlocks resolved without delivering the block')
    return result
  }

  /**
   * Fetches `cids` from `peer` on one stream, W requests outstanding, calling `onBlock` in order with each
   * verified block (awaited: it is the backpressure). Stops at the first failure with the errors of getBlock.
   */
  async fetchBlocks (peer: PeerId, cids: CID[], onBlock: (cid: CID, bytes: Uint8Array) => Promise<void>, options: BlockFetchOptions = {}): Promise<void> {
    if (cids.length === 0) return
    const session = await this.#open(peer, options.signal)
    try {
      let sent = 0
      for (let received = 0; received < cids.length; received++) {
        while (sent < cids.length && session.inFlight < this.#window) await session.request(cids[sent++] as CID, options.signal)
        const { cid, response } = await session.next(options.signal)
        if (response.status === 'not-found') throw new BlockNotFoundError(cid, session.peer)
        if (response.status === 'refused') throw new BlockRefusedError(cid, session.peer)
        this.#verify(session.peer, cid, response.bytes)
        await onBlock(cid, response.bytes)
      }
      await session.close()
    } catch (err) {
      session.abort(err)
      throw err
    }
  }

  /**
   * Fetches every leaf from `sources` into `fileHandle` at its offset. Each source pulls from a shared work
   * list with W requests outstanding; a block that fails from one source goes back to the list and is tried
   * from another. Throws BlocksUnavailableError once some block has failed from every source (a source that
   * served a corrupt block, or whose streams failed DEFAULT_SOURCE_FAILURES_MAX times in a row, counts as
   * having failed every block), the abort reason on abort, and the write error if a write fails.
   * Throws CidRejectedError/RangeError at once for a leaf table that breaks the CID policy or the limits.
   */
  async fetchLeavesToFile (init: FetchLeavesInit): Promise<FetchLeavesResult> {
    const sources = [...new Map(init.sources.map(p => [p.toString(), p])).values()]
    const swarm = init.swarm
    const list = new BlockWorkList({
      leaves: init.leaves,
      sources: sources.map(p => p.toString()),
      signal: init.signal,
      patienceMs: this.#patienceMs,
      retryMs: this.#retryMs,
      ...(swarm != null ? { preferredSource: (ordinal: number) => preferredSource(swarm, ordinal), probe: { source: probePartner(swarm), instead: swarm.landing } } : {})
    })
    const bytesBySource: Record<string, number> = {}
    if (list.finished) {
      list.result()
      return { bytesBySource }
    }
    const bytesTotal = list.bytesTotal
    let bytesDone = 0
    const write = async (item: BlockWorkItem, bytes: Uint8Array, peer: string): Promise<void> => {
      if (bytes.byteLength !== item.length) {
        throw new Error(`leaf table says ${item.length} bytes for ${item.cid.toString()} but its verified block has ${bytes.byteLength}`)
      }
      for (const offset of item.offsets) {
        await writeFully(init.fileHandle, bytes, offset)
        bytesDone += bytes.byteLength
        init.onProgress?.(bytesDone, bytesTotal)
      }
      bytesBySource[peer] = (bytesBySource[peer] ?? 0) + bytes.byteLength
      init.onWritten?.({ cid: item.cid, offset: item.offsets[0] as number, length: item.length })
    }
    const started = performance.now()
    await Promise.all(sources.map(async peer => { await this.#pullFrom(peer, list, write) }))
    list.result()
    if (swarm != null) this.#log.debug('swarm fetch done', { bytes: bytesTotal, ms: Math.round(performance.now() - started), share: `${swarm.index + 1}/${swarm.holders.length}`, ...list.stats(), bytesBySource })
    return { bytesBySource }
  }

  /** One source's loop for fetchLeavesToFile: take work, keep W outstanding, report each outcome to the list. */
  async #pullFrom (peerId: PeerId, list: BlockWorkList, write: (item: BlockWorkItem, bytes: Uint8Array, peer: string) => Promise<void>): Promise<void> {
    const peer = peerId.toString()
    const mine: BlockWorkItem[] = [] // in flight on `session`, in request order
    let session: BlockSession | undefined
    let failuresInRow = 0
    try {
      while (!list.finished) {
        if (session == null) {
          if (!list.hasWorkFor(peer)) {
            await list.changed()
            continue
          }
          try {
            session = await this.#open(peerId, list.signal)
          } catch (err) {
            if (list.signal.aborted) return
            this.#log.debug('cannot open a block stream', { peer, err })
            if (++failuresInRow >= this.#sourceFailuresMax) return this.#drop(list, peer, err)
            continue
          }
        }
        try {
          while (mine.length < this.#window) {
            const item = list.take(peer)
            if (item == null) break
            mine.push(item)
            await session.request(item.cid, list.signal)
          }
          if (mine.length === 0) { // nothing for this source now: free the stream, wait for work to come back
            await session.close()
            session = undefined
            continue
          }
          const { response } = await session.next(list.signal)
          failuresInRow = 0
          const item = mine.shift() as BlockWorkItem
          if (response.status === 'not-found') {
            list.notFound(item, peer)
            continue
          }
          if (response.status !== 'ok') {
            list.fail(item, peer, response.status)
            continue
          }
          try {
            this.#verify(peer, item.cid, response.bytes)
          } catch (err) {
            list.fail(item, peer, 'corrupt')
            throw err
          }
          await write(item, response.bytes, peer).catch((err: unknown) => { list.abort(err); throw err })
          list.complete(item, peer)
        } catch (err) {
          list.giveBack(mine.splice(0))
          session?.abort(err)
          session = undefined
          if (list.signal.aborted) return
          this.#log.debug('block source failed', { peer, err })
          if (isErrorNamed(err, 'BlockMismatchError')) return this.#drop(list, peer, err)
          if (++failuresInRow >= this.#sourceFailuresMax) return this.#drop(list, peer, err)
        }
      }
    } finally {
      if (session != null && mine.length === 0 && !list.signal.aborted) {
        await session.close()
      } else {
        list.giveBack(mine.splice(0))
        session?.abort(new Error('file fetch ended'))
      }
    }
  }

  #drop (list: BlockWorkList, peer: string, err: unknown): void {
    this.#log.warn('dropping a block source for the rest of this file fetch', { peer, err })
    list.dropSource(peer, err)
  }

  async #open (peer: PeerId, signal?: AbortSignal): Promise<BlockSession> {
    const name = peer.toString()
    let stream: Stream
    try {
      stream = await this.#node.dialProtocol(peer, BLOCKS_PROTOCOL, { signal })
    } catch (err) {
      if (signal?.aborted === true) throw signal.reason
      throw new BlockPeerGoneError(name, `cannot open a block stream: ${messageOf(err)}`, err)
    }
    return new BlockSession(stream, name, this.#window, this.#timeoutMs)
  }

  /** Counts and verifies an OK payload; throws BlockMismatchError. */
  #verify (peer: string, cid: CID, bytes: Uint8Array): void {
    this.#bytesReceived += bytes.byteLength
    this.#blocksReceived++
    let s = this.#byPeer.get(peer)
    if (s == null) {
      s = { bytesReceived: 0, blocks: 0 }
      this.#byPeer.set(peer, s)
    }
    s.bytesReceived += bytes.byteLength
    s.blocks++
    try {
      verifyBlock(cid, bytes)
    } catch (err) {
      this.#corruptReceived++
      this.#log.warn('peer sent a block that does not match its CID', { cid: cid.toString(), peer, bytes: bytes.byteLength })
      throw err
    }
  }
}

/** One block stream: requests go out in order, responses come back in the same order. */
export class BlockSession {
  readonly peer: string
  readonly #stream: Stream
  readonly #lp: LengthPrefixedStream<Stream>
  readonly #timeoutMs: number
  readonly #pending: CID[] = []

  constructor (stream: Stream, peer: string, window: number, timeoutMs: number) {
    this.peer = peer
    this.#stream = stream
    this.#timeoutMs = timeoutMs
    // W responses may sit unread while onBlock runs; allow W + 2 frames so a full window never overflows.
    this.#lp = lpStream(stream, { maxDataLength: BLOCK_FRAME_BYTES_MAX, maxBufferSize: (window + 2) * (BLOCK_FRAME_BYTES_MAX + 8) })
  }

  get inFlight (): number {
    return this.#pending.length
  }

  async request (cid: CID, signal?: AbortSignal): Promise<void> {
    const frame = encodeBlockRequest(cid)
    this.#pending.push(cid)
    try {
      await this.#lp.write(frame, { signal })
    } catch (err) {
      if (signal?.aborted === true) throw signal.reason
      throw new BlockPeerGoneError(this.peer, `block stream broke while sending a request: ${messageOf(err)}`, err)
    }
  }

  /** The response to the oldest outstanding request; waits at most the per-block timeout. */
  async next (signal?: AbortSignal): Promise<{ cid: CID, response: BlockResponse }> {
    const cid = this.#pending[0]
    if (cid == null) throw new Error('BlockSession.next() with no request outstanding')
    const deadline = new AbortController()
    const timer = setTimeout(() => { deadline.abort(new Error('timeout')) }, this.#timeoutMs)
    const combined = signal == null ? deadline.signal : AbortSignal.any([signal, deadline.signal])
    let frame: Uint8Array
    try {
      frame = (await this.#lp.read({ signal: combined })).subarray()
    } catch (err) {
      if (signal?.aborted === true) throw signal.reason
      if (deadline.signal.aborted) throw new BlockTimeoutError(cid, this.peer, this.#timeoutMs)
      throw new BlockPeerGoneError(this.peer, `block stream ended before the response for ${cid.toString()}: ${messageOf(err)}`, err)
    } finally {
      clearTimeout(timer)
    }
    this.#pending.shift()
    try {
      return { cid, response: decodeBlockResponse(frame) }
    } catch (err) {
      if (!(err instanceof FrameError)) throw err
      throw new BlockPeerGoneError(this.peer, `broke the block protocol: ${err.message}`, err)
    }
  }

  /** Half-closes our side once everything asked for has been read. */
  async close (): Promise<void> {
    await this.#stream.close({ signal: AbortSignal.timeout(this.#timeoutMs) }).catch((err: unknown) => { this.abort(err) })
  }

  abort (err: unknown): void {
    this.#stream.abort(err instanceof Error ? err : new Error(String(err)))
  }
}


function isErrorNamed (err: unknown, name: string): boolean {
  return err instanceof Error && err.name === name
}
