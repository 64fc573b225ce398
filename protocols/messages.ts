/**
 * Wire messages: heartbeats and announcements (gossipsub), and control requests between a file's coordinator
 * and its holders (assign, receipt, progress) with their reply. JSON, one UTF-8 document per message, decoded
 * by hand-written validators: a decoder never throws anything but MessageError, never trusts a field it has not
 * checked, and refuses anything over its size limit before parsing. Pure: no I/O.
 * Broadcast channels have their own gossip topic and decoder (decodeChannelMessage, at the end).
 */
import { CHANNEL_HAVE_BITMAP_BLOCKS_MAX, CHANNEL_NAME_BYTES_MAX, CONTROL_MESSAGE_BYTES_MAX, CONTROL_SOURCES_MAX, COORDINATE_PEERS_MAX, FILE_BYTES_MAX, FILE_LEAVES_MAX, GOSSIP_MESSAGE_BYTES_MAX, HEARTBEAT_ADDRS_MAX } from './limits.ts'
import { isRole } from './roles.ts'
import type { Role } from './roles.ts'

export const MESSAGE_VERSION = 1

/** A member's periodic liveness and capability report, signed by gossipsub (the sender is the signer). */
export interface HeartbeatMessage {
  type: 'heartbeat'
  v: 1
  roles: Role[]
  /** Relative capacity for placement, > 0. */
  weight: number
  /** A draining node is never chosen for new work. */
  draining: boolean
  /** Multiaddrs (without /p2p/) the sender listens on, so any member can dial it. */
  addrs: string[]
  /** Increases with every heartbeat of one process run. */
  seq: number
}

/** An ingest node's notice that a file was accepted and placed. */
export interface AnnounceMessage {
  type: 'announce'
  v: 1
  cid: string
  name: string
  size: number
  owner: string
  backup: string
  epoch: number
}

export type HolderRole = 'owner' | 'backup'

/** Coordinator -> holder: hold this file as its owner (and process it) or as its backup. */
export interface AssignMessage {
  type: 'assign'
  v: 1
  cid: string
  name: string
  size: number
  role: HolderRole
  epoch: number
  /**
   * Peer IDs that hold the blocks now (the coordinator first). While no holder has the file yet, the file's
   * holders follow the coordinator in share order, the receiver included (node/swarm.ts): the receiver pulls
   * its share from the coordinator and the rest from the other holders as they get it.
   */
  sources: string[]
  /**
   * Owner assignments: the file's backup. The owner copies its reports to it, and accepts a reassignment or a
   * coordinator change from it once it has taken over coordinating the file (node/core/takeover.ts).
   */
  backup?: string
}

/** Holder -> coordinator: the file is durable here (verified, fsynced, renamed, recorded with sync). */
export interface ReceiptMessage {
  type: 'receipt'
  v: 1
  cid: string
  role: HolderRole
  epoch: number
}

export type ProgressState = 'processing' | 'processed' | 'failed'

/** Owner -> coordinator: the processing command started, finished, or failed for good. */
export interface ProgressMessage {
  type: 'progress'
  v: 1
  cid: string
  epoch: number
  state: ProgressState
  attempt: number
  error?: string
}

/** Holder -> coordinator: am I still this file's `role` holder for `epoch`? (ok, or refused: not-holder / stale-epoch) */
export interface LeaseMessage {
  type: 'lease'
  v: 1
  cid: string
  role: HolderRole
  epoch: number
}

/** Holder -> coordinator: I cannot hold this file (e.g. my disk is full); give it to the next candidate. */
export interface DeclineMessage {
  type: 'decline'
  v: 1
  cid: string
  role: HolderRole
  epoch: number
  reason: string
}

/**
 * Any member -> any member: do you hold a complete, intact copy of the file whose root CID is `cid`? (ok =
 * yes; refused with code 'not-held' = no). Fetch by CID (node/fetch-by-cid.ts) asks live members this.
 */
export interface HasMessage {
  type: 'has'
  v: 1
  cid: string
}

/**
 * Backup -> backup: hold this archived file too, fetching it from `sources` (the sender first). A draining
 * backup hands off its archive copies this way. Answered ok once the file is durable on the receiver
 * (verified, fsynced, archived, recorded with sync), refused 'not-ready' while it is being fetched; only a
 * live backup member may send it, and it only ever makes an archive copy.
 */
export interface ReplicateMessage {
  type: 'replicate'
  v: 1
  cid: string
  name: string
  size: number
  /** The sender's epoch for the file (kept on the copy's record; an archive copy has no lease). */
  epoch: number
  sources: string[]
}

/**
 * Owner -> coordinator: does the archive hold this file durably (a recorded receipt from a live backup)?
 * ok, or refused 'not-archived'. The owner keeps its working copy until the answer is yes.
 */
export interface ArchivedMessage {
  type: 'archived'
  v: 1
  cid: string
  epoch: number
}

/**
 * Backup -> coordinator: my archive copy of the file is now also held durably by `to` (this backup is
 * draining and handed it off): make `to` the file's backup. Only the file's current backup may say so; the
 * coordinator then assigns the file to `to`, which already holds it and answers with its own receipt.
 */
export interface HandoffMessage {
  type: 'handoff'
  v: 1
  cid: string
  epoch: number
  to: string
}

/**
 * Ingest -> backup, after release: the file's coordination state, which the backup records durably so it can
 * take over coordinating the file if the ingest node is gone (node/core/takeover.ts). Answered ok once
 * recorded; refused 'taken-over' once the backup coordinates the file itself (the ingest then defers to it).
 */
export interface CoordinateMessage {
  type: 'coordinate'
  v: 1
  cid: string
  epoch: number
  owner: string
  /** Owner of each earlier epoch, index = epoch - 1 ('-' when unknown). */
  pastOwners: string[]
  /** Processors that refused the file or were replaced for it: never chosen for it again. */
  excluded: string[]
}

export type ControlRequest = AssignMessage | ReceiptMessage | ProgressMessage | LeaseMessage | DeclineMessage | HasMessage | ReplicateMessage | ArchivedMessage | HandoffMessage | CoordinateMessage
export type GossipMessage = HeartbeatMessage | AnnounceMessage

export interface ControlReply {
  type: 'reply'
  v: 1
  ok: boolean
  /** Machine-readable reason when !ok, e.g. 'wrong-role', 'stale-epoch', 'unknown-file', 'not-ready'. */
  code?: string
  error?: string
}

export class MessageError extends Error {
  override name = 'MessageError'
}

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })
const TEXT_MAX_BYTES = 1024

export function encodeMessage (msg: ControlRequest | ControlReply | GossipMessage | ChannelMessage, maxBytes: number): Uint8Array {
  const bytes = encoder.encode(JSON.stringify(msg))
  if (bytes.byteLength > maxBytes) throw new MessageError(`${msg.type} message of ${bytes.byteLength} bytes exceeds ${maxBytes}`)
  return bytes
}

function parse (bytes: Uint8Array, maxBytes: number): Record<string, unknown> {
  if (bytes.byteLength > maxBytes) throw new MessageError(`message of ${bytes.byteLength} bytes exceeds ${maxBytes}`)
  let value: unknown
  try {
    value = JSON.parse(decoder.decode(bytes))
  } catch (err) {
    throw new MessageError(`not a JSON message: ${(err as Error).message}`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new MessageError('message is not an object')
  const obj = value as Record<string, unknown>
  if (obj.v !== MESSAGE_VERSION) throw new MessageError(`unsupported message version ${String(obj.v)}`)
  return obj
}

function str (obj: Record<string, unknown>, key: string, maxBytes = TEXT_MAX_BYTES): string {
  const v = obj[key]
  if (typeof v !== 'string' || v.length === 0) throw new MessageError(`${key}: expected a non-empty string`)
  if (encoder.encode(v).byteLength > maxBytes) throw new MessageError(`${key}: longer than ${maxBytes} bytes`)
  return v
}

function int (obj: Record<string, unknown>, key: string, min: number, max: number): number {
  const v = obj[key]
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new MessageError(`${key}: expected an integer in [${min}, ${max}]`)
  return v
}

function strList (obj: Record<string, unknown>, key: string, maxItems: number, itemMaxBytes = TEXT_MAX_BYTES): string[] {
  const v = obj[key]
  if (!Array.isArray(v) || v.length > maxItems) throw new MessageError(`${key}: expected a list of at most ${maxItems} strings`)
  return v.map((item) => str({ item }, 'item', itemMaxBytes))
}

function holderRole (obj: Record<string, unknown>): HolderRole {
  const v = obj.role
  if (v !== 'owner' && v !== 'backup') throw new MessageError('role: expected "owner" or "backup"')
  return v
}

export function decodeGossip (bytes: Uint8Array): GossipMessage {
  const obj = parse(bytes, GOSSIP_MESSAGE_BYTES_MAX)
  if (obj.type === 'heartbeat') {
    const roles = strList(obj, 'roles', 3)
    if (!roles.every(isRole) || roles.length === 0) throw new MessageError('roles: expected ingest, process or backup')
    const weight = obj.weight
    if (typeof weight !== 'number' || !(weight > 0) || weight > 1_000_000) throw new MessageError('weight: expected a number in (0, 1e6]')
    if (typeof obj.draining !== 'boolean') throw new MessageError('draining: expected a boolean')
    return { type: 'heartbeat', v: 1, roles, weight, draining: obj.draining, addrs: strList(obj, 'addrs', HEARTBEAT_ADDRS_MAX), seq: int(obj, 'seq', 0, Number.MAX_SAFE_INTEGER) }
  }
  if (obj.type === 'announce') {
    return {
      type: 'announce', v: 1, cid: str(obj, 'cid', 128), name: str(obj, 'name'), size: int(obj, 'size', 0, FILE_BYTES_MAX),
      owner: str(obj, 'owner', 128), backup: str(obj, 'backup', 128), epoch: int(obj, 'epoch', 1, Number.MAX_SAFE_INTEGER)
    }
  }
  throw new MessageError(`unknown gossip message type ${JSON.stringify(obj.type)}`)
}

export function decodeControlRequest (bytes: Uint8Array): ControlRequest {
  const obj = parse(bytes, CONTROL_MESSAGE_BYTES_MAX)
  const cid = str(obj, 'cid', 128)
  if (obj.type === 'has') return { type: 'has', v: 1, cid }
  const epoch = int(obj, 'epoch', 1, Number.MAX_SAFE_INTEGER)
  switch (obj.type) {
    case 'assign': {
      const msg: AssignMessage = { type: 'assign', v: 1, cid, epoch, name: str(obj, 'name'), size: int(obj, 'size', 0, FILE_BYTES_MAX), role: holderRole(obj), sources: strList(obj, 'sources', CONTROL_SOURCES_MAX) }
      if (obj.backup !== undefined) msg.backup = str(obj, 'backup', 128)
      return msg
    }
    case 'coordinate':
      return { type: 'coordinate', v: 1, cid, epoch, owner: str(obj, 'owner', 128), pastOwners: strList(obj, 'pastOwners', COORDINATE_PEERS_MAX, 128), excluded: strList(obj, 'excluded', COORDINATE_PEERS_MAX, 128) }
    case 'receipt':
      return { type: 'receipt', v: 1, cid, epoch, role: holderRole(obj) }
    case 'lease':
      return { type: 'lease', v: 1, cid, epoch, role: holderRole(obj) }
    case 'decline':
      return { type: 'decline', v: 1, cid, epoch, role: holderRole(obj), reason: str(obj, 'reason', 256) }
    case 'replicate':
      return { type: 'replicate', v: 1, cid, epoch, name: str(obj, 'name'), size: int(obj, 'size', 0, FILE_BYTES_MAX), sources: strList(obj, 'sources', CONTROL_SOURCES_MAX) }
    case 'archived':
      return { type: 'archived', v: 1, cid, epoch }
    case 'handoff':
      return { type: 'handoff', v: 1, cid, epoch, to: str(obj, 'to', 128) }
    case 'progress': {
      const state = obj.state
      if (state !== 'processing' && state !== 'processed' && state !== 'failed') throw new MessageError('state: expected processing, processed or failed')
      const msg: ProgressMessage = { type: 'progress', v: 1, cid, epoch, state, attempt: int(obj, 'attempt', 0, 1_000_000) }
      if (obj.error !== undefined) msg.error = str(obj, 'error', 2048)
      return msg
    }
    default:
      throw new MessageError(`unknown control message type ${JSON.stringify(obj.type)}`)
  }
}

export function decodeControlReply (bytes: Uint8Array): ControlReply {
  const obj = parse(bytes, CONTROL_MESSAGE_BYTES_MAX)
  if (obj.type !== 'reply' || typeof obj.ok !== 'boolean') throw new MessageError('expected a reply')
  const reply: ControlReply = { type: 'reply', v: 1, ok: obj.ok }
  if (obj.code !== undefined) reply.code = str(obj, 'code', 64)
  if (obj.error !== undefined) reply.error = str(obj, 'error', 2048)
  return reply
}

// ---- broadcast channels (CHANNELS_TOPIC) ----

/**
 * A publisher's notice that version `version` of channel `channel` is the file `cid`. Signed by the publisher
 * itself (`sig` over channelAnnounceSigningBytes, with the key of the peer ID `publisher`), not only by the
 * gossipsub envelope, so any node that holds it can re-publish it to a node that was away and the receiver
 * can still check who published it.
 */
export interface ChannelAnnounceMessage {
  type: 'channel-announce'
  v: 1
  channel: string
  version: number
  cid: string
  size: number
  /** The published file's name: metadata only, never used as a path. */
  name: string
  publisher: string
  /** Base64 signature by `publisher`'s key over channelAnnounceSigningBytes(this message). */
  sig: string
}

/**
 * What the sender holds of one channel: version 0 = nothing yet (it follows the channel: whoever knows a
 * newer version re-publishes its announcement); `complete` = the whole version `version`; else, while
 * fetching, `have` is a base64 bitmap over the version's distinct leaves in first-occurrence order (bit i
 * = byte[i >> 3] & (1 << (i & 7))), omitted when the version has more than CHANNEL_HAVE_BITMAP_BLOCKS_MAX.
 */
export interface ChannelHaveMessage {
  type: 'channel-have'
  v: 1
  channel: string
  version: number
  cid?: string
  complete: boolean
  /** Distinct leaves of the version (the bitmap's length in bits). */
  blocks?: number
  have?: string
}

export type ChannelMessage = ChannelAnnounceMessage | ChannelHaveMessage

const CHANNEL_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/
const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/
const SIGNATURE_CHARS_MAX = 256

/** True if `s` is a valid channel name: 1-64 bytes of [A-Za-z0-9._-], not starting with '.', '_' or '-'. */
export function isChannelName (s: unknown): s is string {
  return typeof s === 'string' && s.length > 0 && s.length <= CHANNEL_NAME_BYTES_MAX && CHANNEL_NAME_RE.test(s)
}

/** The bytes a publisher signs: a domain-separation prefix and every field but the signature, in a fixed order. */
export function channelAnnounceSigningBytes (msg: Omit<ChannelAnnounceMessage, 'sig'>): Uint8Array {
  return encoder.encode(`filemesh/channel-announce/1\n${JSON.stringify([msg.channel, msg.version, msg.cid, msg.size, msg.name, msg.publisher])}`)
}

/** Bytes of a bitmap over `blocks` bits. */
export function bitmapBytes (blocks: number): number {
  return Math.ceil(blocks / 8)
}

function channelName (obj: Record<string, unknown>): string {
  const v = obj.channel
  if (!isChannelName(v)) throw new MessageError(`channel: expected 1-${CHANNEL_NAME_BYTES_MAX} characters of A-Z a-z 0-9 . _ - (not starting with . _ -)`)
  return v
}

export function decodeChannelMessage (bytes: Uint8Array): ChannelMessage {
  const obj = parse(bytes, GOSSIP_MESSAGE_BYTES_MAX)
  const channel = channelName(obj)
  if (obj.type === 'channel-announce') {
    const sig = str(obj, 'sig', SIGNATURE_CHARS_MAX)
    if (!BASE64_RE.test(sig)) throw new MessageError('sig: expected base64')
    return {
      type: 'channel-announce', v: 1, channel, version: int(obj, 'version', 1, Number.MAX_SAFE_INTEGER), cid: str(obj, 'cid', 128),
      size: int(obj, 'size', 0, FILE_BYTES_MAX), name: str(obj, 'name'), publisher: str(obj, 'publisher', 128), sig
    }
  }
  if (obj.type === 'channel-have') {
    const version = int(obj, 'version', 0, Number.MAX_SAFE_INTEGER)
    if (typeof obj.complete !== 'boolean') throw new MessageError('complete: expected a boolean')
    const msg: ChannelHaveMessage = { type: 'channel-have', v: 1, channel, version, complete: obj.complete }
    if (version === 0) {
      if (obj.complete || obj.cid !== undefined || obj.blocks !== undefined || obj.have !== undefined) throw new MessageError('version 0 (nothing held) takes no cid, blocks or have')
      return msg
    }
    msg.cid = str(obj, 'cid', 128)
    if (obj.blocks !== undefined) msg.blocks = int(obj, 'blocks', 1, FILE_LEAVES_MAX)
    if (obj.have !== undefined) {
      if (obj.complete) throw new MessageError('have: not with complete')
      const have = obj.have
      const blocks = msg.blocks
      if (blocks == null || blocks > CHANNEL_HAVE_BITMAP_BLOCKS_MAX) throw new MessageError(`have: needs blocks <= ${CHANNEL_HAVE_BITMAP_BLOCKS_MAX}`)
      if (typeof have !== 'string' || !BASE64_RE.test(have) || have.length !== 4 * Math.ceil(bitmapBytes(blocks) / 3)) throw new MessageError('have: expected a base64 bitmap of blocks bits')
      msg.have = have
    }
    return msg
  }
  throw new MessageError(`unknown channel message type ${JSON.stringify(obj.type)}`)
}
