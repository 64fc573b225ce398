/**
 * The control protocol: one request and one reply per stream, each a length-prefixed JSON message of at most
 * CONTROL_MESSAGE_BYTES_MAX bytes. The sender's identity is the connection's remote peer, authenticated by
 * the noise handshake, so a receipt or progress report cannot come from anyone but the holder it names.
 * A request to ourselves (one machine holding several roles) is handled in-process.
 *
 * Limits (protocols/limits.ts): a per-peer request rate (token bucket) and open-stream cap; a peer over
 * either, or sending a frame over the size limit, has the stream reset and every new control stream refused
 * for PEER_PENALTY_MS. Outbound, this node keeps at most CONTROL_REQUESTS_OUTBOUND_PER_PEER_MAX requests in
 * flight to a peer and paces itself below that peer's rate, so an honest burst (a restart re-sending every
 * unacknowledged message) waits here instead of being refused there.
 */
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import { CONTROL_PROTOCOL } from '../protocols/ids.ts'
import {
  CONTROL_MESSAGE_BYTES_MAX, CONTROL_REQUEST_TIMEOUT_MS, CONTROL_REQUESTS_OUTBOUND_PER_PEER_MAX, CONTROL_REQUESTS_PER_PEER_BURST,
  CONTROL_REQUESTS_PER_PEER_PER_SEC, CONTROL_STREAMS_INBOUND_MAX, CONTROL_STREAMS_PER_PEER_MAX, PEER_PENALTY_MS, RATE_LIMITED_PEERS_MAX
} from '../protocols/limits.ts'
import { MessageError, decodeControlReply, decodeControlRequest, encodeMessage } from '../protocols/messages.ts'
import type { ControlReply, ControlRequest } from '../protocols/messages.ts'
import type { Logger } from './log.ts'
import type { MeshNode } from './mesh.ts'
import { PeerRateLimiter, PeerSlots, ThrottledLog } from './rate-limit.ts'
import type { PeerRateLimiterStats, RateClock } from './rate-limit.ts'

export type ControlHandler = (from: string, msg: ControlRequest) => Promise<ControlReply>

export class ControlRequestError extends Error {
  override name = 'ControlRequestError'
  readonly code: string | undefined
  constructor (message: string, code?: string) {
    super(message)
    this.code = code
  }
}

export function ok (): ControlReply {
  return { type: 'reply', v: 1, ok: true }
}

export function refuse (code: string, error: string): ControlReply {
  return { type: 'reply', v: 1, ok: false, code, error }
}

export interface ControlChannelInit {
  /** Inbound requests per peer per second (default CONTROL_REQUESTS_PER_PEER_PER_SEC). */
  requestsPerPeerPerSec?: number
  /** Inbound burst per peer (default CONTROL_REQUESTS_PER_PEER_BURST). */
  requestsPerPeerBurst?: number
  /** Open inbound streams per peer (default CONTROL_STREAMS_PER_PEER_MAX). */
  streamsPerPeerMax?: number
  /** Outbound requests in flight per peer (default CONTROL_REQUESTS_OUTBOUND_PER_PEER_MAX). */
  outboundPerPeerMax?: number
  penaltyMs?: number
  clock?: RateClock
}

export interface ControlChannelStats {
  /** Requests answered 'bad-message' (not a valid control message). */
  malformed: number
  /** Streams reset because the frame was over CONTROL_MESSAGE_BYTES_MAX or its length prefix unreadable. */
  oversized: number
  /** Streams refused because the peer had CONTROL_STREAMS_PER_PEER_MAX open. */
  tooManyStreams: number
  rate: PeerRateLimiterStats
}

/** lpStream rejected the length prefix (over the limit, or not a varint): the stream cannot be parsed. */
function isBadLength (err: unknown): boolean {
  return err instanceof Error && (err.name === 'InvalidDataLengthError' || err.name === 'InvalidDataLengthLengthError' || err.name === 'InvalidMessageLengthError')
}

export class ControlChannel {
  readonly #node: MeshNode
  readonly #log: Logger
  readonly #throttled: ThrottledLog
  readonly #limiter: PeerRateLimiter
  readonly #pacer: PeerRateLimiter
  readonly #outbound: PeerSlots
  readonly #inbound: PeerSlots
  #handler: ControlHandler | undefined
  #malformed = 0
  #oversized = 0
  #tooManyStreams = 0

  constructor (node: MeshNode, log: Logger, init: ControlChannelInit = {}) {
    this.#node = node
    this.#log = log
    this.#throttled = new ThrottledLog(log, { clock: init.clock })
    const ratePerSec = init.requestsPerPeerPerSec ?? CONTROL_REQUESTS_PER_PEER_PER_SEC
    const burst = init.requestsPerPeerBurst ?? CONTROL_REQUESTS_PER_PEER_BURST
    this.#limiter = new PeerRateLimiter({ ratePerSec, burst, penaltyMs: init.penaltyMs ?? PEER_PENALTY_MS, peersMax: RATE_LIMITED_PEERS_MAX, clock: init.clock })
    this.#pacer = new PeerRateLimiter({ ratePerSec: ratePerSec * 0.9, burst: Math.max(1, Math.floor(burst / 2)), penaltyMs: 0, peersMax: RATE_LIMITED_PEERS_MAX, clock: init.clock })
    this.#outbound = new PeerSlots({ perPeerMax: init.outboundPerPeerMax ?? CONTROL_REQUESTS_OUTBOUND_PER_PEER_MAX })
    this.#inbound = new PeerSlots({ perPeerMax: init.streamsPerPeerMax ?? CONTROL_STREAMS_PER_PEER_MAX })
  }

  stats (): ControlChannelStats {
    return { malformed: this.#malformed, oversized: this.#oversized, tooManyStreams: this.#tooManyStreams, rate: this.#limiter.stats() }
  }

  get selfId (): string {
    return this.#node.peerId.toString()
  }

  async start (handler: ControlHandler): Promise<void> {
    this.#handler = handler
    await this.#node.handle(CONTROL_PROTOCOL, (stream, connection) => {
      const peer = connection.remotePeer.toString()
      if (!this.#admit(stream, peer)) return
      this.#serve(stream, connection).catch((err) => {
        this.#log.debug('control stream failed', { peer, err })
        stream.abort(err instanceof Error ? err : new Error(String(err)))
      }).finally(() => { this.#inbound.release(peer) })
    }, { maxInboundStreams: CONTROL_STREAMS_INBOUND_MAX })
  }

  async stop (): Promise<void> {
    await this.#node.unhandle(CONTROL_PROTOCOL)
  }

  /** The thin gate in front of #serve: penalty box, open streams per peer, request rate. Takes a stream slot. */
  #admit (stream: Stream, peer: string): boolean {
    if (this.#limiter.isPenalised(peer)) {
      this.#limiter.countRefused()
      stream.abort(new Error('peer is penalised for going over a limit'))
      return false
    }
    if (!this.#inbound.tryAcquire(peer)) {
      this.#tooManyStreams++
      this.#limiter.penalise(peer)
      this.#throttled.warn(peer, 'too many open control streams: refused and penalised', { max: CONTROL_STREAMS_PER_PEER_MAX })
      stream.abort(new Error('too many control streams'))
      return false
    }
    if (this.#limiter.take(peer) !== 'ok') {
      this.#inbound.release(peer)
      this.#throttled.warn(peer, 'control requests over the rate limit: refused and penalised', { perSec: CONTROL_REQUESTS_PER_PEER_PER_SEC })
      stream.abort(new Error('control request rate exceeded'))
      return false
    }
    return true
  }

  async #serve (stream: Stream, connection: Connection): Promise<void> {
    const from = connection.remotePeer.toString()
    const signal = AbortSignal.timeout(CONTROL_REQUEST_TIMEOUT_MS)
    const lp = lpStream(stream, { maxDataLength: CONTROL_MESSAGE_BYTES_MAX })
    let reply: ControlReply
    try {
      let frame: Uint8Array
      try {
        frame = (await lp.read({ signal })).subarray()
      } catch (err) {
        if (!isBadLength(err)) throw err
        this.#oversized++
        this.#limiter.penalise(from)
        this.#throttled.warn(from, 'control frame over the size limit: stream reset, peer penalised', { max: CONTROL_MESSAGE_BYTES_MAX, err })
        throw err
      }
      reply = await this.#dispatch(from, decodeControlRequest(frame))
    } catch (err) {
      if (!(err instanceof MessageError)) throw err
      this.#malformed++
      this.#throttled.warn(from, 'rejected a malformed control message', { err })
      reply = refuse('bad-message', err.message)
    }
    await lp.write(encodeMessage(reply, CONTROL_MESSAGE_BYTES_MAX), { signal })
    await stream.close({ signal })
  }

  async #dispatch (from: string, msg: ControlRequest): Promise<ControlReply> {
    if (this.#handler == null) return refuse('not-ready', 'node is starting')
    try {
      return await this.#handler(from, msg)
    } catch (err: any) {
      this.#log.error('control handler failed', { peer: from, cid: msg.cid, type: msg.type, err })
      return refuse('internal', String(err?.message ?? err))
    }
  }

  /** Sends `msg` to `peer` and returns its reply; throws ControlRequestError if refused, or the transport error. */
  async request (peer: string, msg: ControlRequest, options: { signal?: AbortSignal } = {}): Promise<ControlReply> {
    const signal = options.signal != null ? AbortSignal.any([options.signal, AbortSignal.timeout(CONTROL_REQUEST_TIMEOUT_MS)]) : AbortSignal.timeout(CONTROL_REQUEST_TIMEOUT_MS)
    let reply: ControlReply
    if (peer === this.selfId) {
      // Round-trip through the codec so a local request is validated exactly like a remote one.
      reply = await this.#dispatch(peer, decodeControlRequest(encodeMessage(msg, CONTROL_MESSAGE_BYTES_MAX)))
    } else {
      reply = await this.#send(peer, msg, signal)
    }
    if (!reply.ok) throw new ControlRequestError(`${peer} refused ${msg.type} for ${msg.cid}: ${reply.error ?? reply.code ?? 'no reason'}`, reply.code)
    return reply
  }

  /** One request over the wire, within this node's in-flight cap and pace for `peer`. */
  async #send (peer: string, msg: ControlRequest, signal: AbortSignal): Promise<ControlReply> {
    const peerId = peerIdFromString(peer)
    const bytes = encodeMessage(msg, CONTROL_MESSAGE_BYTES_MAX)
    await this.#outbound.acquire(peer, signal)
    try {
      const waitMs = this.#pacer.reserve(peer)
      if (waitMs > 0) await sleep(waitMs, signal)
      const stream = await this.#node.dialProtocol(peerId, CONTROL_PROTOCOL, { signal })
      try {
        const lp = lpStream(stream, { maxDataLength: CONTROL_MESSAGE_BYTES_MAX })
        await lp.write(bytes, { signal })
        const reply = decodeControlReply((await lp.read({ signal })).subarray())
        await stream.close({ signal }).catch(() => {})
        return reply
      } catch (err) {
        stream.abort(err instanceof Error ? err : new Error(String(err)))
        throw err
      }
    } finally {
      this.#outbound.release(peer)
    }
  }
}

async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted()
  await new Promise<void>((resolve, reject) => {
    const onAbort = (): void => { clearTimeout(t); reject(signal.reason) }
    const t = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve() }, ms)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
