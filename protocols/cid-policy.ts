/**
 * Which CIDs the mesh accepts, and how a block is checked against its CID.
 *
 * One policy for every CID that crosses a trust boundary (the wire, the CLI, the store): CIDv1, codec raw
 * (leaves) or dag-pb (UnixFS file nodes), multihash sha2-256 with a 32-byte digest. Anything else is refused
 * with CidRejectedError before it is used; in particular the identity multihash, which would let a peer put
 * arbitrary "content" inside the CID itself, and CIDv0, which is dag-pb only and cannot name a raw leaf.
 *
 * Hashing uses node:crypto (SHA-NI, ~1.5 GB/s on one core), which is faster than any JS implementation.
 * Pure otherwise: no I/O.
 */
import { createHash } from 'node:crypto'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'

/** Multicodec of a raw block (a file leaf). */
export const RAW_CODE = 0x55
/** Multicodec of a dag-pb block (a UnixFS file node). */
export const DAG_PB_CODE = 0x70
/** Multihash code of sha2-256. */
export const SHA2_256_CODE = 0x12
/** Digest length of sha2-256. */
export const SHA2_256_DIGEST_BYTES = 32
/** Longest CID string we try to parse (a CIDv1 sha2-256 in base32 is 59 characters). */
export const CID_STRING_CHARS_MAX = 128

/** A CID the mesh does not accept (wrong version, codec or hash), or a string that is not a CID. */
export class CidRejectedError extends Error {
  override name = 'CidRejectedError'
}

/** A block's bytes do not hash to its CID. */
export class BlockMismatchError extends Error {
  override name = 'BlockMismatchError'
  readonly cid: CID

  constructor (cid: CID, message?: string) {
    super(message ?? `block bytes do not hash to ${cid.toString()}`)
    this.cid = cid
  }
}

/** Throws CidRejectedError unless `cid` is CIDv1, raw or dag-pb, sha2-256 with a 32-byte digest. */
export function assertAcceptedCid (cid: CID): void {
  // Only a refusal pays for the CID's string form (this runs on every block request and DAG link).
  const str = (): string => safeToString(cid)
  if (cid.version !== 1) {
    throw new CidRejectedError(`CID ${str()} is version ${String(cid.version)}: only CIDv1 is accepted`)
  }
  if (cid.code !== RAW_CODE && cid.code !== DAG_PB_CODE) {
    throw new CidRejectedError(`CID ${str()} has codec 0x${cid.code.toString(16)}: only raw (0x55) and dag-pb (0x70) are accepted`)
  }
  const mh = cid.multihash
  if (mh.code === 0x00) {
    throw new CidRejectedError(`CID ${str()} uses the identity multihash: only sha2-256 is accepted`)
  }
  if (mh.code !== SHA2_256_CODE) {
    throw new CidRejectedError(`CID ${str()} has multihash 0x${mh.code.toString(16)}: only sha2-256 (0x12) is accepted`)
  }
  if (mh.size !== SHA2_256_DIGEST_BYTES || mh.digest.length !== SHA2_256_DIGEST_BYTES) {
    throw new CidRejectedError(`CID ${str()} has a ${mh.digest.length}-byte digest: sha2-256 needs ${SHA2_256_DIGEST_BYTES}`)
  }
}

/** Parses a CID string (any multibase CIDv1; CIDv0 is parsed, then refused) and applies assertAcceptedCid. */
export function parseCid (s: string): CID {
  if (typeof s !== 'string' || s.length === 0) {
    throw new CidRejectedError('CID is empty')
  }
  if (s.length > CID_STRING_CHARS_MAX) {
    throw new CidRejectedError(`CID string is ${s.length} characters: at most ${CID_STRING_CHARS_MAX}`)
  }
  let cid: CID
  try {
    cid = CID.parse(s)
  } catch (err) {
    throw new CidRejectedError(`not a CID: ${JSON.stringify(s)} (${err instanceof Error ? err.message : String(err)})`)
  }
  assertAcceptedCid(cid)
  return cid
}

/** sha2-256 of `bytes` (32 bytes). */
export function sha256 (bytes: Uint8Array): Uint8Array {
  return createHash('sha256').update(bytes).digest()
}

/** The CIDv1 of a raw block. */
export function rawLeafCid (bytes: Uint8Array): CID {
  return CID.createV1(RAW_CODE, Digest.create(SHA2_256_CODE, sha256(bytes)))
}

/** The CIDv1 of a dag-pb block (already encoded). */
export function dagPbCid (bytes: Uint8Array): CID {
  return CID.createV1(DAG_PB_CODE, Digest.create(SHA2_256_CODE, sha256(bytes)))
}

/**
 * Throws CidRejectedError if the CID is not accepted, BlockMismatchError if `bytes` do not hash to it.
 * Call on every block right after reading it (from the wire or the disk) and before using or serving it.
 */
export function verifyBlock (cid: CID, bytes: Uint8Array): void {
  assertAcceptedCid(cid)
  const actual = sha256(bytes)
  const expected = cid.multihash.digest
  if (!bytesEqual(actual, expected)) {
    throw new BlockMismatchError(cid, `block of ${bytes.length} bytes does not hash to ${cid.toString()}`)
  }
}

function bytesEqual (a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) return false
  }
  return true
}

function safeToString (cid: CID): string {
  try {
    return cid.toString()
  } catch {
    return '(unprintable CID)'
  }
}
