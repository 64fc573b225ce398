/**
 * Wire messages: heartbeats and announcements (gossipsub), and control requests between a file's coordinator
 * and its holders (assign, receipt, progress) with their reply. JSON, one UTF-8 document per message, decoded
 * by hand-written validators: a decoder never throws anything but MessageError, never trusts a field it has not
 * checked, and refuses anything over its size limit before parsing. Pure: no I/O.
 */
import { CONTROL_MESSAGE_BYTES_MAX, FILE_BYTES_MAX, GOSSIP_MESSAGE_BYTES_MAX, HEARTBEAT_ADDRS_MAX } from './limits.ts'
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
  /** Peer IDs that hold the blocks now (the coordinator first). */
  sources: string[]
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

export type ControlRequest = AssignMessage | ReceiptMessage | ProgressMessage | LeaseMessage | DeclineMessage
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

export function encodeMessage (msg: ControlRequest | ControlReply | GossipMessage, maxBytes: number): Uint8Array {
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

function strList (obj: Record<string, unknown>, key: string, maxItems: number): string[] {
  const v = obj[key]
  if (!Array.isArray(v) || v.length > maxItems) throw new MessageError(`${key}: expected a list of at most ${maxItems} strings`)
  return v.map((item) => str({ item }, 'item', TEXT_MAX_BYTES))
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
  const epoch = int(obj, 'epoch', 1, Number.MAX_SAFE_INTEGER)
  switch (obj.type) {
    case 'assign':
      return { type: 'assign', v: 1, cid, epoch, name: str(obj, 'name'), size: int(obj, 'size', 0, FILE_BYTES_MAX), role: holderRole(obj), sources: strList(obj, 'sources', 16) }
    case 'receipt':
      return { type: 'receipt', v: 1, cid, epoch, role: holderRole(obj) }
    case 'lease':
      return { type: 'lease', v: 1, cid, epoch, role: holderRole(obj) }
    case 'decline':
      return { type: 'decline', v: 1, cid, epoch, role: holderRole(obj), reason: str(obj, 'reason', 256) }
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
