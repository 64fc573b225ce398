/**
 * Drain: take a node out of service without losing anything. Once draining, the node's heartbeat says so:
 * coordinators place no new files on it and hand its not-yet-started files to the next member in rendezvous
 * order; it refuses new assignments; an ingest node stops claiming from its inbox. The node is safe to remove
 * when nothing it alone is responsible for remains: `drainReport` says what still blocks it, in words an
 * operator can act on. A draining backup hands each of its archive copies to another backup node by itself
 * (node/replicate.ts) and is safe once every hand-off is acknowledged; a processor keeps a processed file's
 * working copy until the archive holds the file, and is not safe to remove while it keeps one.
 */
import type { HolderRecord, IngestRecord } from './core/lifecycle.ts'
import type { Role } from '../protocols/roles.ts'

export interface DrainReport {
  draining: boolean
  safe: boolean
  /** What still keeps the node from being safe to remove; empty when safe. */
  blockers: string[]
}

export interface DrainInput {
  draining: boolean
  roles: readonly Role[]
  ingest: Iterable<IngestRecord>
  holder: Iterable<HolderRecord>
  /** Files waiting in the inbox (ingest role). */
  inboxFiles: number
  /** Live, non-draining backup members other than this node that could take its archive copies (undefined: unknown). */
  handoffTargets?: number
  /** Processed files whose working copy is kept until the archive holds them (process role). */
  keptWorkingCopies?: number
}

export function drainReport (input: DrainInput): DrainReport {
  const blockers: string[] = []
  if (!input.draining) blockers.push('not draining: run `filemesh drain` first')
  if (input.roles.includes('ingest')) {
    let unreleased = 0
    let undecided = 0
    for (const rec of input.ingest) {
      if (rec.phase !== 'released') unreleased++
      // A file whose backup took over coordinating it is not this node's to wait for.
      else if (rec.takenOverBy == null && (rec.processing === 'pending' || rec.processing === 'processing')) undecided++
    }
    if (input.inboxFiles > 0) blockers.push(`${input.inboxFiles} file(s) still in the inbox: move them to another ingest node's inbox`)
    if (unreleased > 0) blockers.push(`${unreleased} accepted file(s) not yet held by their owner and backup`)
    if (undecided > 0) blockers.push(`${undecided} file(s) coordinated here are not processed yet`)
  }
  let ownerBusy = 0
  let ownerUnreported = 0
  let backupBusy = 0
  let archived = 0
  for (const rec of input.holder) {
    if (rec.role === 'owner') {
      if (rec.state === 'fetching' || rec.state === 'stored' || rec.state === 'processing') ownerBusy++
      else if (!rec.outcomeAcked || !rec.receiptAcked) ownerUnreported++
    } else {
      // A copy handed to us by a draining backup owes no receipt; one we handed off is held durably elsewhere.
      if (rec.state === 'fetching' || (!rec.receiptAcked && rec.handoffFrom == null)) backupBusy++
      else if (rec.handoffAckedAt == null) archived++
    }
  }
  if (ownerBusy > 0) blockers.push(`${ownerBusy} owned file(s) still being fetched or processed (not-yet-started ones are handed to other processors)`)
  if (ownerUnreported > 0) blockers.push(`${ownerUnreported} processing outcome(s) not yet acknowledged by their coordinator`)
  if (backupBusy > 0) blockers.push(`${backupBusy} backup file(s) still being fetched or not yet acknowledged`)
  if ((input.keptWorkingCopies ?? 0) > 0) blockers.push(`${input.keptWorkingCopies ?? 0} processed file(s) keep their working copy here until the archive holds them durably (a backup is missing)`)
  if (archived > 0) {
    blockers.push(input.handoffTargets === 0
      ? `${archived} archived file(s) exist only in this node's archive and no other live backup node can take them: start another backup node, the copies are then handed to it automatically`
      : `${archived} archive copy(ies) still being handed off to another backup node (until acknowledged they exist only in this node's archive)`)
  }
  return { draining: input.draining, safe: blockers.length === 0, blockers }
}
