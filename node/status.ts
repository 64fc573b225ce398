/**
 * What `filemesh status` shows: live members and this node's files by state. Computed from the durable
 * records on each call (a scan of the store), so it can never drift from what the node would do after a
 * restart. The JSON shape is the API's contract (`GET /api/status`, `status --json`).
 */
import type { Member } from './core/membership.ts'
import type { HolderRecord, IngestRecord } from './core/lifecycle.ts'
import type { Store } from './store.ts'
import type { ChannelsStatus } from './channel-status.ts'

export interface FileCounts {
  total: number
  received: number
  placed: number
  storedOnOwner: number
  storedOnBackup: number
  processing: number
  processed: number
  failed: number
  deletedFromIngest: number
  staleCompletions: number
  /** Released files whose backup took over coordinating them while this node was gone (this node defers). */
  takenOverByBackup: number
  bytes: number
}

export interface HolderCounts {
  fetching: number
  stored: number
  processing: number
  processed: number
  failed: number
  bytes: number
}

/** Backup only: released, unprocessed files whose coordination state this backup keeps (node/core/takeover.ts). */
export interface StandbyCounts {
  /** Standing by: the ingest node coordinates them, this backup takes over if it is gone past the takeover grace. */
  standingBy: number
  /** Taken over: this backup coordinates them (processed or not). */
  coordinating: number
  /** Of those, processed (under this backup's epochs). */
  processedAfterTakeover: number
  /** Completions from an old epoch reported to this backup: duplicates, never the result. */
  staleCompletions: number
}

export interface StatusMember {
  peerId: string
  roles: string[]
  weight: number
  draining: boolean
  lastSeenMsAgo: number
  self: boolean
}

export interface FailedFile {
  cid: string
  name: string
  role: 'coordinator' | 'owner'
  error?: string
}

export interface NodeStatus {
  peerId: string
  roles: string[]
  addrs: string[]
  api: string
  inbox?: string
  archive?: string
  uptimeMs: number
  /** This process's memory (bytes), to tell a leak (heapUsed, arrayBuffers grow) from memory kept by the runtime. */
  memory: { rss: number, heapUsed: number, external: number, arrayBuffers: number }
  members: StatusMember[]
  /** Files this node accepted and coordinates (ingest role). */
  files: FileCounts
  /** Files this node holds as processing owner / as backup. */
  owner: HolderCounts
  backup: HolderCounts
  standby: StandbyCounts
  failed: FailedFile[]
  /** Block bytes this node served to and fetched from each peer since it started. */
  transfer: {
    served?: { bytesSent: number, blocksSent: number, byPeer: Record<string, { bytesSent: number, blocks: number }> }
    fetched?: { bytesReceived: number, blocksReceived: number, byPeer: Record<string, { bytesReceived: number, blocks: number }> }
  }
  counters: Record<string, number>
  /** Broadcast channels followed or published here (node/channel-status.ts). */
  channels?: ChannelsStatus
}

export function emptyFileCounts (): FileCounts {
  return { total: 0, received: 0, placed: 0, storedOnOwner: 0, storedOnBackup: 0, processing: 0, processed: 0, failed: 0, deletedFromIngest: 0, staleCompletions: 0, takenOverByBackup: 0, bytes: 0 }
}

export function emptyHolderCounts (): HolderCounts {
  return { fetching: 0, stored: 0, processing: 0, processed: 0, failed: 0, bytes: 0 }
}

export function countIngest (counts: FileCounts, rec: IngestRecord): void {
  counts.total++
  counts.bytes += rec.size
  if (rec.phase === 'received') counts.received++
  if (rec.phase === 'placed' && rec.ownerStoredAt == null && rec.backupStoredAt == null) counts.placed++
  if (rec.ownerStoredAt != null) counts.storedOnOwner++
  if (rec.backupStoredAt != null) counts.storedOnBackup++
  if (rec.processing === 'processing') counts.processing++
  if (rec.processing === 'processed') counts.processed++
  if (rec.processing === 'failed') counts.failed++
  if (rec.phase === 'released') counts.deletedFromIngest++
  counts.staleCompletions += rec.staleCompletions ?? 0
  if (rec.takenOverBy != null) counts.takenOverByBackup++
}

export function countHolder (counts: HolderCounts, rec: HolderRecord): void {
  counts[rec.state]++
  counts.bytes += rec.size
}

export function countStandby (counts: StandbyCounts, rec: HolderRecord): void {
  const s = rec.standby
  if (rec.role !== 'backup' || s == null) return
  if (s.takenOverAt != null) counts.coordinating++
  else if (s.processing === 'pending' || s.processing === 'processing') counts.standingBy++
  if (s.takenOverAt != null && s.processing === 'processed') counts.processedAfterTakeover++
  counts.staleCompletions += s.staleCompletions ?? 0
}

export async function collectFileStatus (store: Store, failedMax = 50): Promise<{ files: FileCounts, owner: HolderCounts, backup: HolderCounts, standby: StandbyCounts, failed: FailedFile[] }> {
  const files = emptyFileCounts()
  const owner = emptyHolderCounts()
  const backup = emptyHolderCounts()
  const standby: StandbyCounts = { standingBy: 0, coordinating: 0, processedAfterTakeover: 0, staleCompletions: 0 }
  const failed: FailedFile[] = []
  for await (const rec of store.ingestRecords()) {
    countIngest(files, rec)
    if (rec.processing === 'failed' && failed.length < failedMax) failed.push({ cid: rec.cid, name: rec.name, role: 'coordinator', ...(rec.processingError != null ? { error: rec.processingError } : {}) })
  }
  for await (const rec of store.holderRecords()) {
    countHolder(rec.role === 'owner' ? owner : backup, rec)
    countStandby(standby, rec)
    if (rec.role === 'owner' && rec.state === 'failed' && failed.length < failedMax) failed.push({ cid: rec.cid, name: rec.name, role: 'owner', ...(rec.lastError != null ? { error: rec.lastError } : {}) })
  }
  return { files, owner, backup, standby, failed }
}

export function memberStatus (m: Member, nowMs: number): StatusMember {
  return { peerId: m.id, roles: [...m.roles], weight: m.weight, draining: m.draining, lastSeenMsAgo: Math.max(0, Math.round(nowMs - m.lastSeenMs)), self: m.self }
}
