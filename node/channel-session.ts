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
import type { Libp2p, PeerId, Stream } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import { messageOf } from '../protocols/blocks.ts'
import type { BlockResponse } from '../protocols/blocks.ts'
import { BLOCKS_PROTOCOL } from '../protocols/ids.ts'
import { BLOCK_REQUEST_TIMEOUT_MS } from '../protocols/limits.ts'
import { BlockPeerGoneError, BlockSession } from './block-client.ts'

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
      return new BlockSession(stream, peer.toString(), init.window, init.timeoutMs ?? BLOCK_REQUEST_TIMEOUT_MS)
    }
  }
}
