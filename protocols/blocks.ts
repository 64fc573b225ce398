/**
 * Wire codec of the block protocol (BLOCKS_PROTOCOL). Each frame travels length-prefixed (unsigned varint)
 * on one stream; a stream carries any number of request/response pairs, answered in request order.
 *
 *   request  = the binary CID (CIDv1, raw or dag-pb, sha2-256), nothing else
 *   response = 1 status byte [+ the block bytes, only with OK]
 *              0 OK, 1 NOT_FOUND, 2 REFUSED (bad or disallowed request, or the server is over a limit)
 *
 * Pure: no I/O. Decoders take hostile bytes; they throw only FrameError, never anything else.
 */
import { CID } from 'multiformats/cid'
import { assertAcceptedCid } from './cid-policy.ts'
import { BLOCK_BYTES_MAX, BLOCK_FRAME_BYTES_MAX, BLOCK_REQUEST_BYTES_MAX } from './limits.ts'

export const BLOCK_STATUS_OK = 0
export const BLOCK_STATUS_NOT_FOUND = 1
export const BLOCK_STATUS_REFUSED = 2

export type BlockResponse =
  | { status: 'ok', bytes: Uint8Array }
  | { status: 'not-found' }
  | { status: 'refused' }

export type FrameErrorReason = 'empty' | 'too-long' | 'malformed' | 'disallowed-cid' | 'unknown-status'

/** A frame that breaks the block protocol: too long, not a CID, a CID we do not accept, an unknown status. */
export class FrameError extends Error {
  override name = 'FrameError'
  readonly reason: FrameErrorReason

  constructor (reason: FrameErrorReason, message: string) {
    super(message)
    this.reason = reason
  }
}

/** The request frame for `cid`. Throws FrameError('disallowed-cid') for a CID the mesh does not accept. */
export function encodeBlockRequest (cid: CID): Uint8Array {
  try {
    assertAcceptedCid(cid)
  } catch (err) {
    throw new FrameError('disallowed-cid', messageOf(err))
  }
  return cid.bytes
}

/** The CID asked for by a request frame. Throws FrameError for anything but one accepted binary CID. */
export function decodeBlockRequest (frame: Uint8Array): CID {
  if (frame.byteLength === 0) throw new FrameError('empty', 'empty block request')
  if (frame.byteLength > BLOCK_REQUEST_BYTES_MAX) {
    throw new FrameError('too-long', `block request of ${frame.byteLength} bytes: at most ${BLOCK_REQUEST_BYTES_MAX}`)
  }
  let cid: CID
  try {
    cid = CID.decode(frame)
  } catch (err) {
    throw new FrameError('malformed', `block request is not a binary CID: ${messageOf(err)}`)
  }
  try {
    assertAcceptedCid(cid)
  } catch (err) {
    throw new FrameError('disallowed-cid', messageOf(err))
  }
  return cid
}

/**
 * The response frame. For OK this copies the block behind the status byte (one memcpy; the bytes handed to
 * the stream are then ours, never the caller's buffer). Throws FrameError if the block is over BLOCK_BYTES_MAX.
 */
export function encodeBlockResponse (response: BlockResponse): Uint8Array {
  switch (response.status) {
    case 'ok': {
      const { bytes } = response
      if (bytes.byteLength > BLOCK_BYTES_MAX) {
        throw new FrameError('too-long', `block of ${bytes.byteLength} bytes: at most ${BLOCK_BYTES_MAX}`)
      }
      const frame = new Uint8Array(1 + bytes.byteLength)
      frame[0] = BLOCK_STATUS_OK
      frame.set(bytes, 1)
      return frame
    }
    case 'not-found':
      return Uint8Array.of(BLOCK_STATUS_NOT_FOUND)
    case 'refused':
      return Uint8Array.of(BLOCK_STATUS_REFUSED)
  }
}

/**
 * A response frame. OK's bytes are a view into `frame` (no copy). NOT_FOUND and REFUSED must carry nothing
 * else. Throws FrameError for an empty, oversized or unknown frame. The bytes are not verified here.
 */
export function decodeBlockResponse (frame: Uint8Array): BlockResponse {
  if (frame.byteLength === 0) throw new FrameError('empty', 'empty block response')
  if (frame.byteLength > BLOCK_FRAME_BYTES_MAX || frame.byteLength - 1 > BLOCK_BYTES_MAX) {
    throw new FrameError('too-long', `block response of ${frame.byteLength} bytes: block at most ${BLOCK_BYTES_MAX}`)
  }
  const status = frame[0]
  switch (status) {
    case BLOCK_STATUS_OK:
      return { status: 'ok', bytes: frame.subarray(1) }
    case BLOCK_STATUS_NOT_FOUND:
    case BLOCK_STATUS_REFUSED:
      if (frame.byteLength !== 1) {
        throw new FrameError('malformed', `status ${status} response carries ${frame.byteLength - 1} extra bytes`)
      }
      return status === BLOCK_STATUS_NOT_FOUND ? { status: 'not-found' } : { status: 'refused' }
    default:
      throw new FrameError('unknown-status', `unknown block response status ${String(status)}`)
  }
}

/** The message of an error, or the thrown value as a string. */
export function messageOf (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
