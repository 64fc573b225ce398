/**
 * One long-lived block stream to one source of a channel fetch (BLOCKS_PROTOCOL, codec in
 * protocols/blocks.ts): requests go out as slots free up, responses come back in order. A channel fetch
 * keeps a session per source for as long as that source has blocks for it, instead of a stream per batch:
 * a new yamux stream starts with a 256 KiB window that grows only with round trips, so on a busy machine a
 * 1 MiB block on a fresh stream costs several scheduling delays, and a warm stream does not.
 *
 * The session does not verify: the caller verifies each block against its CID before writing it. Memory:
 * at most `window` responses buffered (lpStream's maxBufferSize allows window + 2 frames).
 */
import { lpStream } from '@libp2p/utils'
import type { LengthPrefixedStream } from '@libp2p/utils'
import type { Libp2p, PeerId, Stream } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import { decodeBlockResponse, encodeBlockRequest, FrameError } from '../protocols/blocks.ts'
import type { BlockResponse } from '../protocols/blocks.ts'
import { BLOCKS_PROTOCOL } from '../protocols/ids.ts'
import { BLOCK_FRAME_BYTES_MAX, BLOCK_REQUEST_TIMEOUT_MS } from '../protocols/limits.ts'
import { BlockPeerGoneError, BlockTimeoutError } from './block-client.ts'

/** The source side of a channel fetch: what ChannelFetch needs to pull blocks from one peer. */
export interface ChannelBlockSession {
  request: (cid: CID, signal?: AbortSignal) => Promise<void>
  /** The response to the oldest outstanding request. */
  next: (signal?: AbortSignal) => Promise<{ cid: CID, response: BlockResponse }>
  /** Half-closes once every response was read. */
  close: () => Promise<void>
  abort: (err: unknown) => void
}

export interface ChannelSessionOpener {
  open: (peer: PeerId, signal?: AbortSignal) => Promise<ChannelBlockSession>
}

export interface ChannelSessionInit {
  /** Requests outstanding at most (sizes the read buffer). */
  window: number
  timeoutMs?: number
}

/** Opens sessions over `node`'s block protocol. */
export function channelSessions (node: Pick<Libp2p, 'dialProtocol'>, init: ChannelSessionInit): ChannelSessionOpener {
  return {
    open: async (peer, signal) => {
      let stream: Stream
      try {
        stream = await node.dialProtocol(peer, BLOCKS_PROTOCOL, { signal })
      } catch (err) {
        if (signal?.aborted === true) throw signal.reason
        throw new BlockPeerGoneError(peer.toString(), `cannot open a block stream: ${messageOf(err)}`, err)
      }
      return new Session(stream, peer.toString(), init.window, init.timeoutMs ?? BLOCK_REQUEST_TIMEOUT_MS)
    }
  }
}

class Session implements ChannelBlockSession {
  readonly #peer: string
  readonly #stream: Stream
  readonly #lp: LengthPrefixedStream<Stream>
  readonly #timeoutMs: number
  readonly #pending: CID[] = []

  constructor (stream: Stream, peer: string, window: number, timeoutMs: number) {
    this.#peer = peer
    this.#stream = stream
    this.#timeoutMs = timeoutMs
    this.#lp = lpStream(stream, { maxDataLength: BLOCK_FRAME_BYTES_MAX, maxBufferSize: (window + 2) * (BLOCK_FRAME_BYTES_MAX + 8) })
  }

  async request (cid: CID, signal?: AbortSignal): Promise<void> {
    this.#pending.push(cid)
    try {
      await this.#lp.write(encodeBlockRequest(cid), { signal })
    } catch (err) {
      if (signal?.aborted === true) throw signal.reason
      throw new BlockPeerGoneError(this.#peer, `block stream broke while sending a request: ${messageOf(err)}`, err)
    }
  }

  async next (signal?: AbortSignal): Promise<{ cid: CID, response: BlockResponse }> {
    const cid = this.#pending[0]
    if (cid == null) throw new Error('next() with no request outstanding')
    const deadline = AbortSignal.timeout(this.#timeoutMs)
    const combined = signal == null ? deadline : AbortSignal.any([signal, deadline])
    let frame: Uint8Array
    try {
      frame = (await this.#lp.read({ signal: combined })).subarray()
    } catch (err) {
      if (signal?.aborted === true) throw signal.reason
      if (deadline.aborted) throw new BlockTimeoutError(cid, this.#peer, this.#timeoutMs)
      throw new BlockPeerGoneError(this.#peer, `block stream ended before the response for ${cid.toString()}: ${messageOf(err)}`, err)
    }
    this.#pending.shift()
    try {
      return { cid, response: decodeBlockResponse(frame) }
    } catch (err) {
      if (!(err instanceof FrameError)) throw err
      throw new BlockPeerGoneError(this.#peer, `broke the block protocol: ${err.message}`, err)
    }
  }

  async close (): Promise<void> {
    await this.#stream.close({ signal: AbortSignal.timeout(this.#timeoutMs) }).catch((err: unknown) => { this.abort(err) })
  }

  abort (err: unknown): void {
    this.#stream.abort(err instanceof Error ? err : new Error(String(err)))
  }
}

function messageOf (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
