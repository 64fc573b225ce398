/**
 * The control protocol: one request and one reply per stream, each a length-prefixed JSON message of at most
 * CONTROL_MESSAGE_BYTES_MAX bytes. The sender's identity is the connection's remote peer, authenticated by
 * the noise handshake, so a receipt or progress report cannot come from anyone but the holder it names.
 * A request to ourselves (one machine holding several roles) is handled in-process.
 */
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import { CONTROL_PROTOCOL } from '../protocols/ids.ts'
import { CONTROL_MESSAGE_BYTES_MAX, CONTROL_REQUEST_TIMEOUT_MS, CONTROL_STREAMS_INBOUND_MAX } from '../protocols/limits.ts'
import { MessageError, decodeControlReply, decodeControlRequest, encodeMessage } from '../protocols/messages.ts'
import type { ControlReply, ControlRequest } from '../protocols/messages.ts'
import type { Logger } from './log.ts'
import type { MeshNode } from './mesh.ts'

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

export class ControlChannel {
  readonly #node: MeshNode
  readonly #log: Logger
  #handler: ControlHandler | undefined

  constructor (node: MeshNode, log: Logger) {
    this.#node = node
    this.#log = log
  }

  get selfId (): string {
    return this.#node.peerId.toString()
  }

  async start (handler: ControlHandler): Promise<void> {
    this.#handler = handler
    await this.#node.handle(CONTROL_PROTOCOL, (stream, connection) => {
      this.#serve(stream, connection).catch((err) => {
        this.#log.debug('control stream failed', { peer: connection.remotePeer.toString(), err })
        stream.abort(err instanceof Error ? err : new Error(String(err)))
      })
    }, { maxInboundStreams: CONTROL_STREAMS_INBOUND_MAX })
  }

  async stop (): Promise<void> {
    await this.#node.unhandle(CONTROL_PROTOCOL)
  }

  async #serve (stream: Stream, connection: Connection): Promise<void> {
    const from = connection.remotePeer.toString()
    const signal = AbortSignal.timeout(CONTROL_REQUEST_TIMEOUT_MS)
    const lp = lpStream(stream, { maxDataLength: CONTROL_MESSAGE_BYTES_MAX })
    let reply: ControlReply
    try {
      const msg = decodeControlRequest((await lp.read({ signal })).subarray())
      reply = await this.#dispatch(from, msg)
    } catch (err) {
      if (!(err instanceof MessageError)) throw err
      this.#log.warn('rejected a malformed control message', { peer: from, err })
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
      const stream = await this.#node.dialProtocol(peerIdFromString(peer), CONTROL_PROTOCOL, { signal })
      try {
        const lp = lpStream(stream, { maxDataLength: CONTROL_MESSAGE_BYTES_MAX })
        await lp.write(encodeMessage(msg, CONTROL_MESSAGE_BYTES_MAX), { signal })
        reply = decodeControlReply((await lp.read({ signal })).subarray())
        await stream.close({ signal }).catch(() => {})
      } catch (err) {
        stream.abort(err instanceof Error ? err : new Error(String(err)))
        throw err
      }
    }
    if (!reply.ok) throw new ControlRequestError(`${peer} refused ${msg.type} for ${msg.cid}: ${reply.error ?? reply.code ?? 'no reason'}`, reply.code)
    return reply
  }
}
