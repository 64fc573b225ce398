/**
 * Serves blocks to peers over BLOCKS_PROTOCOL (codec in protocols/blocks.ts). A stream carries many
 * requests; they are answered in order, at most `windowRequests` at a time: request N+W is not even read
 * until response N has been written, so a peer that asks fast and reads slowly costs us at most W blocks
 * per stream plus BLOCK_REQUEST_BUFFER_BYTES_MAX of unread requests (more resets the stream).
 *
 * Every block is verified against its CID right before it is sent: a corrupt copy is answered NOT_FOUND
 * and logged, never served (invariant I2).
 *
 * Swarm transfer (node/swarm.ts): a block this node does not have yet but one of its own fetches is about to
 * write (the source's `waitFor`) is waited for, at most BLOCK_INFLIGHT_WAIT_MS, then served or answered
 * NOT_FOUND; at most BLOCK_REQUESTS_WAITING_MAX requests wait at once (more are answered at once). A waiting
 * request holds its place in its stream's order and one of the peer's outstanding slots, but no block.
 *
 * Per peer (protocols/limits.ts): every stream and every request frame costs a token of the peer's bucket;
 * a peer over its rate gets REFUSED, its stream reset, and every new block stream refused for
 * PEER_PENALTY_MS. It may have BLOCK_STREAMS_PER_PEER_MAX streams open (more: refused and penalised) and
 * BLOCK_REQUESTS_OUTSTANDING_PER_PEER_MAX requests being answered over all of them (more: not read until
 * some are answered), and all peers together BLOCK_REQUESTS_OUTSTANDING_MAX, so the blocks held in memory
 * for peers are bounded whatever they send.
 */
import { lpStream } from '@libp2p/utils'
import type { Connection, Libp2p, Stream } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import { BlockMismatchError, verifyBlock } from '../protocols/cid-policy.ts'
import { BLOCKS_PROTOCOL } from '../protocols/ids.ts'
import {
  BLOCK_BYTES_MAX, BLOCK_INFLIGHT_WAIT_MS, BLOCK_REQUEST_BUFFER_BYTES_MAX, BLOCK_REQUEST_BYTES_MAX, BLOCK_REQUEST_TIMEOUT_MS,
  BLOCK_REQUESTS_IN_FLIGHT_MAX, BLOCK_REQUESTS_OUTSTANDING_MAX, BLOCK_REQUESTS_OUTSTANDING_PER_PEER_MAX,
  BLOCK_REQUESTS_PER_PEER_BURST, BLOCK_REQUESTS_PER_PEER_PER_SEC, BLOCK_STREAMS_INBOUND_MAX, BLOCK_STREAMS_PER_PEER_MAX,
  BLOCK_REQUESTS_WAITING_MAX, PEER_PENALTY_MS, RATE_LIMITED_PEERS_MAX
} from '../protocols/limits.ts'
import { decodeBlockRequest, encodeBlockResponse, FrameError } from '../protocols/blocks.ts'
import type { BlockResponse } from '../protocols/blocks.ts'
import { createLogger } from './log.ts'
import type { Logger } from './log.ts'
import { PeerRateLimiter, PeerSlots, ThrottledLog } from './rate-limit.ts'
import type { PeerRateLimiterStats, RateClock } from './rate-limit.ts'

/** Where the server finds blocks. */
export interface BlockSource {
  /** The block's bytes if this node has an intact copy, else undefined. May throw on I/O errors (answered NOT_FOUND). */
  getBlock(cid: CID, options?: { signal?: AbortSignal }): Promise<Uint8Array | undefined>
  /** True if a fetch of this node is about to write the block. Optional, with waitFor: without them nothing waits. */
  expects?(cid: CID): boolean
  /**
   * Waits at most `ms` for a block this node is about to have: true once getBlock may find it, false on
   * timeout, abort, or when nothing here expects it any more (then its copy may just have been stored).
   */
  waitFor?(cid: CID, ms: number, options?: { signal?: AbortSignal }): Promise<boolean>
}

export interface BlockServerComponents {
  /** The libp2p node the protocol is registered on. */
  node: Pick<Libp2p, 'handle' | 'unhandle'>
}

export interface BlockServerInit {
  source: BlockSource
  /**
   * The source re-hashes every block against its CID right before returning it (the daemon's LocalBlocks
   * does, and reports the corrupt file): the server then skips its own second hash on this hot path.
   * Default false: bytes from any other source are verified here before they are sent.
   */
  sourceVerifies?: boolean
  /** Inbound block streams per connection. */
  maxInboundStreams?: number
  /** Requests answered concurrently per stream (W). */
  windowRequests?: number
  /** Longest a lookup or the write of one response may take before the stream is given up. */
  requestTimeoutMs?: number
  logger?: Logger
  /** Request frames (and streams) per peer per second (default BLOCK_REQUESTS_PER_PEER_PER_SEC). */
  requestsPerPeerPerSec?: number
  /** Burst above that rate (default BLOCK_REQUESTS_PER_PEER_BURST). */
  requestsPerPeerBurst?: number
  /** Open inbound block streams per peer (default BLOCK_STREAMS_PER_PEER_MAX). */
  streamsPerPeerMax?: number
  /** Requests of one peer being answered at once (default BLOCK_REQUESTS_OUTSTANDING_PER_PEER_MAX). */
  outstandingPerPeerMax?: number
  /** Requests being answered at once, all peers (default BLOCK_REQUESTS_OUTSTANDING_MAX). */
  outstandingMax?: number
  penaltyMs?: number
  clock?: RateClock
  /** Longest wait for a block the source expects (default BLOCK_INFLIGHT_WAIT_MS; 0 = never wait). */
  inflightWaitMs?: number
  /** Requests waiting for such blocks at once, all peers (default BLOCK_REQUESTS_WAITING_MAX). */
  waitingMax?: number
}

export interface BlockPeerStats { bytesSent: number, blocks: number }

export interface BlockServerStats {
  /** Block bytes sent (payload only, without framing). */
  bytesSent: number
  blocksSent: number
  notFound: number
  /** Blocks whose stored copy did not match the CID and was withheld. */
  corruptWithheld: number
  /** Requests answered REFUSED (malformed, disallowed, over a limit). */
  refused: number
  streamsOpen: number
  /** Streams refused because the peer had BLOCK_STREAMS_PER_PEER_MAX open. */
  tooManyStreams: number
  /** Requests being answered now (blocks held in memory). */
  outstanding: number
  rate: PeerRateLimiterStats
  byPeer: Record<string, BlockPeerStats>
  /** Requests for blocks a local fetch was about to write (swarm transfer). */
  inflight: BlockInflightStats
}

export interface BlockInflightStats {
  /** Waited for and served. */
  served: number
  /** Waited for, then answered NOT_FOUND (not written in time, or the fetch ended without it). */
  notFound: number
  /** Answered NOT_FOUND without waiting because BLOCK_REQUESTS_WAITING_MAX requests were waiting. */
  overLimit: number
  /** Waiting now. */
  waiting: number
}

export const DEFAULT_BLOCK_SERVER_WINDOW_REQUESTS = BLOCK_REQUESTS_IN_FLIGHT_MAX

/** End of a stream (the peer closed its writable end between frames). */
function isEndOfStream (err: unknown): boolean {
  return err instanceof Error && err.name === 'UnexpectedEOFError'
}

/** lpStream rejected the length prefix: the rest of the stream cannot be parsed. */
function isBadLength (err: unknown): boolean {
  return err instanceof Error && (err.name === 'InvalidDataLengthError' || err.name === 'InvalidDataLengthLengthError' || err.name === 'InvalidMessageLengthError')
}

export class BlockServer {
  readonly #node: BlockServerComponents['node']
  readonly #source: BlockSource
  readonly #sourceVerifies: boolean
  readonly #maxInboundStreams: number
  readonly #window: number
  readonly #timeoutMs: number
  readonly #log: Logger
  readonly #streams = new Set<Stream>()
  readonly #byPeer = new Map<string, BlockPeerStats>()
  readonly #limiter: PeerRateLimiter
  readonly #streamsByPeer: PeerSlots
  readonly #outstanding: PeerSlots
  readonly #throttled: ThrottledLog
  #tooManyStreams = 0
  #started = false
  #bytesSent = 0
  #blocksSent = 0
  #notFound = 0
  #corruptWithheld = 0
  #refused = 0
  readonly #inflightWaitMs: number
  readonly #waitingMax: number
  readonly #inflight: BlockInflightStats = { served: 0, notFound: 0, overLimit: 0, waiting: 0 }

  constructor (components: BlockServerComponents, init: BlockServerInit) {
    this.#node = components.node
    this.#source = init.source
    this.#sourceVerifies = init.sourceVerifies === true
    this.#maxInboundStreams = init.maxInboundStreams ?? BLOCK_STREAMS_INBOUND_MAX
    this.#window = Math.max(1, init.windowRequests ?? DEFAULT_BLOCK_SERVER_WINDOW_REQUESTS)
    this.#timeoutMs = init.requestTimeoutMs ?? BLOCK_REQUEST_TIMEOUT_MS
    this.#log = init.logger ?? createLogger('block-server')
    this.#throttled = new ThrottledLog(this.#log, { clock: init.clock })
    this.#limiter = new PeerRateLimiter({
      ratePerSec: init.requestsPerPeerPerSec ?? BLOCK_REQUESTS_PER_PEER_PER_SEC,
      burst: init.requestsPerPeerBurst ?? BLOCK_REQUESTS_PER_PEER_BURST,
      penaltyMs: init.penaltyMs ?? PEER_PENALTY_MS,
      peersMax: RATE_LIMITED_PEERS_MAX,
      clock: init.clock
    })
    this.#streamsByPeer = new PeerSlots({ perPeerMax: init.streamsPerPeerMax ?? BLOCK_STREAMS_PER_PEER_MAX })
    this.#inflightWaitMs = Math.max(0, init.inflightWaitMs ?? BLOCK_INFLIGHT_WAIT_MS)
    this.#waitingMax = Math.max(0, init.waitingMax ?? BLOCK_REQUESTS_WAITING_MAX)
    this.#outstanding = new PeerSlots({ perPeerMax: init.outstandingPerPeerMax ?? BLOCK_REQUESTS_OUTSTANDING_PER_PEER_MAX, totalMax: init.outstandingMax ?? BLOCK_REQUESTS_OUTSTANDING_MAX })
  }

  async start (): Promise<void> {
    if (this.#started) return
    await this.#node.handle(BLOCKS_PROTOCOL, (stream, connection) => {
      this.#accept(stream, connection)
    }, { maxInboundStreams: this.#maxInboundStreams })
    this.#started = true
  }

  /** Unregisters the protocol and resets every open block stream. */
  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    await this.#node.unhandle(BLOCKS_PROTOCOL)
    for (const stream of this.#streams) stream.abort(new Error('block server stopping'))
    this.#streams.clear()
  }

  stats (): BlockServerStats {
    return {
      bytesSent: this.#bytesSent,
      blocksSent: this.#blocksSent,
      notFound: this.#notFound,
      corruptWithheld: this.#corruptWithheld,
      refused: this.#refused,
      streamsOpen: this.#streams.size,
      tooManyStreams: this.#tooManyStreams,
      outstanding: this.#outstanding.active(),
      rate: this.#limiter.stats(),
      byPeer: Object.fromEntries([...this.#byPeer].map(([peer, s]) => [peer, { ...s }])),
      inflight: { ...this.#inflight }
    }
  }

  /** The thin handler: penalty box, streams per peer, rate; then track the stream, run it detached, log how it ended. */
  #accept (stream: Stream, connection: Connection): void {
    const peer = connection.remotePeer.toString()
    if (this.#limiter.isPenalised(peer)) {
      this.#limiter.countRefused()
      stream.abort(new Error('peer is penalised for going over a limit'))
      return
    }
    if (!this.#streamsByPeer.tryAcquire(peer)) {
      this.#tooManyStreams++
      this.#limiter.penalise(peer)
      this.#throttled.warn(peer, 'too many open block streams: refused and penalised', { max: BLOCK_STREAMS_PER_PEER_MAX })
      stream.abort(new Error('too many block streams'))
      return
    }
    if (this.#limiter.take(peer) !== 'ok') {
      this.#streamsByPeer.release(peer)
      this.#throttled.warn(peer, 'block requests over the rate limit: refused and penalised', { perSec: BLOCK_REQUESTS_PER_PEER_PER_SEC })
      stream.abort(new Error('block request rate exceeded'))
      return
    }
    this.#streams.add(stream)
    this.#serve(stream, peer).catch((err: unknown) => {
      this.#log.debug('block stream ended with an error', { peer, err })
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }).finally(() => {
      this.#streams.delete(stream)
      this.#streamsByPeer.release(peer)
    })
  }

  async #serve (stream: Stream, peer: string): Promise<void> {
    const lp = lpStream(stream, { maxDataLength: BLOCK_REQUEST_BYTES_MAX, maxBufferSize: BLOCK_REQUEST_BUFFER_BYTES_MAX })
    // Responses in request order; an entry leaves the queue only once written, so the reader (which waits
    // while the queue holds W entries) reads request N+W only after response N went out.
    // An entry with `slot` holds one of the peer's outstanding slots (a block in memory) until it is written.
    const queue: Array<{ response: Promise<BlockResponse>, slot: boolean }> = []
    const refused = { response: Promise.resolve<BlockResponse>({ status: 'refused' }), slot: false }
    let readerDone = false
    let unparseable: Error | undefined
    let overRate = false
    let wakeWriter: PromiseWithResolvers<void> | undefined
    let wakeReader: PromiseWithResolvers<void> | undefined

    const closed = new AbortController()
    const shutDown = (reason: unknown): void => {
      closed.abort(reason)
      wakeReader?.resolve()
    }
    const onClose = (): void => { shutDown(new Error('block stream closed')) }
    stream.addEventListener('close', onClose, { once: true })

    const reader = async (): Promise<void> => {
      try {
        while (!closed.signal.aborted) {
          while (queue.length >= this.#window && !closed.signal.aborted) {
            wakeReader = Promise.withResolvers()
            await wakeReader.promise
          }
          if (closed.signal.aborted) return
          let frame: Uint8Array
          try {
            frame = (await lp.read({ signal: closed.signal })).subarray()
          } catch (err) {
            if (isEndOfStream(err) || closed.signal.aborted) return
            if (isBadLength(err)) {
              unparseable = err as Error
              queue.push(refused)
              return
            }
            throw err
          }
          if (this.#limiter.take(peer) !== 'ok') {
            overRate = true
            queue.push(refused)
            return
          }
          // Over the peer's (or everyone's) outstanding requests: read nothing more until a slot is free.
          try {
            await this.#outstanding.acquire(peer, closed.signal)
          } catch {
            return
          }
          const answer = this.#answer(frame, peer, closed.signal)
          answer.catch(() => {}) // awaited by the writer; this only keeps a stream reset from leaving it unhandled
          queue.push({ response: answer, slot: true })
          wakeWriter?.resolve()
        }
      } finally {
        readerDone = true
        wakeWriter?.resolve()
      }
    }

    const writer = async (): Promise<void> => {
      while (true) {
        const next = queue[0]
        if (next == null) {
          if (readerDone) return
          wakeWriter = Promise.withResolvers()
          await wakeWriter.promise
          continue
        }
        const response = await next.response
        const signal = AbortSignal.any([closed.signal, AbortSignal.timeout(this.#timeoutMs)])
        await lp.write(encodeBlockResponse(response), { signal })
        queue.shift()
        if (next.slot) this.#outstanding.release(peer)
        this.#count(peer, response)
        wakeReader?.resolve()
      }
    }

    const reading = reader()
    try {
      await writer()
      await reading
    } catch (err) {
      shutDown(err)
      await reading.catch(() => {})
      throw err
    } finally {
      stream.removeEventListener('close', onClose)
      for (const entry of queue.splice(0)) if (entry.slot) this.#outstanding.release(peer)
    }
    if (overRate) {
      this.#throttled.warn(peer, 'block requests over the rate limit: refused, stream reset, peer penalised', { perSec: BLOCK_REQUESTS_PER_PEER_PER_SEC })
      stream.abort(new Error('block request rate exceeded'))
      return
    }
    if (unparseable != null) {
      this.#log.warn('unparseable block request frame: refused and reset the stream', { peer, err: unparseable })
      await stream.close({ signal: AbortSignal.timeout(this.#timeoutMs) }).catch(() => {})
      stream.abort(new FrameError('too-long', unparseable.message))
      return
    }
    await stream.close({ signal: AbortSignal.timeout(this.#timeoutMs) })
  }

  /** The response to one request frame. Never rejects: every failure becomes NOT_FOUND or REFUSED. */
  async #answer (frame: Uint8Array, peer: string, closed: AbortSignal): Promise<BlockResponse> {
    let cid: CID
    try {
      cid = decodeBlockRequest(frame)
    } catch (err) {
      if (!(err instanceof FrameError)) throw err
      this.#log.debug('refused block request', { peer, err })
      return { status: 'refused' }
    }
    const key = cid.toString()
    let bytes: Uint8Array | undefined
    let waited = false
    try {
      const signal = AbortSignal.any([closed, AbortSignal.timeout(this.#timeoutMs)])
      bytes = await this.#source.getBlock(cid, { signal })
      if (bytes == null && await this.#waitForInflight(cid, signal)) {
        waited = true
        bytes = await this.#source.getBlock(cid, { signal })
        if (bytes == null) this.#inflight.notFound++
        else this.#inflight.served++
      }
    } catch (err) {
      if (!closed.aborted) this.#log.warn('block lookup failed', { cid: key, peer, err })
      return { status: 'not-found' }
    }
    if (bytes == null) {
      if (waited) this.#log.debug('block expected here did not arrive in time', { cid: key, peer, ms: this.#inflightWaitMs })
      return { status: 'not-found' }
    }
    if (bytes.byteLength > BLOCK_BYTES_MAX) {
      this.#corruptWithheld++
      this.#log.error('block source returned an oversized block: not serving it', { cid: key, peer, bytes: bytes.byteLength })
      return { status: 'not-found' }
    }
    try {
      if (!this.#sourceVerifies) verifyBlock(cid, bytes)
    } catch (err) {
      if (!(err instanceof BlockMismatchError)) throw err
      this.#corruptWithheld++
      this.#log.error('block source returned bytes that do not match the CID: not serving them', { cid: key, peer, bytes: bytes.byteLength })
      return { status: 'not-found' }
    }
    return { status: 'ok', bytes }
  }

  /**
   * Waits for a block the source expects, if a waiting slot is free. True if it waited (the caller looks
   * again whatever the outcome: the fetch may have ended because the file was just stored), false if there
   * was nothing to wait for.
   */
  async #waitForInflight (cid: CID, signal: AbortSignal): Promise<boolean> {
    const source = this.#source
    if (source.waitFor == null || source.expects == null || this.#inflightWaitMs === 0 || !source.expects(cid)) return false
    if (this.#inflight.waiting >= this.#waitingMax) {
      this.#inflight.overLimit++
      return false
    }
    this.#inflight.waiting++
    try {
      await source.waitFor(cid, this.#inflightWaitMs, { signal })
      return true
    } finally {
      this.#inflight.waiting--
    }
  }

  #count (peer: string, response: BlockResponse): void {
    if (response.status === 'ok') {
      const n = response.bytes.byteLength
      this.#bytesSent += n
      this.#blocksSent++
      let s = this.#byPeer.get(peer)
      if (s == null) {
        s = { bytesSent: 0, blocks: 0 }
        this.#byPeer.set(peer, s)
      }
      s.bytesSent += n
      s.blocks++
    } else if (response.status === 'not-found') {
      this.#notFound++
    } else {
      this.#refused++
    }
  }
}
