/**
 * The file lifecycle: the only place where a file's record changes state. Two records exist per file:
 *
 *  - the coordinator's record (`IngestRecord`, on the ingest node that accepted the file):
 *      received -> placed -> released
 *    plus the processing outcome reported by the owner (pending -> processing -> processed | failed);
 *  - a holder's record (`HolderRecord`, on the owner and on the backup):
 *      fetching -> stored -> (owner only) processing -> processed | failed, processing -> stored on a retry.
 *
 * Every transition is a pure function from a record to a new record (the input is never mutated); a transition
 * from the wrong state throws WrongStateError with the expected and actual states. The caller persists the
 * result in one LevelDB batch with {sync:true} before acting on it, so a crash between steps replays the same
 * transition idempotently (see daemon reconciliation).
 */
import type { HolderRole, ProgressState } from '../../protocols/messages.ts'

export type IngestPhase = 'received' | 'placed' | 'released'
export type ProcessingOutcome = 'pending' | 'processing' | 'processed' | 'failed'
export type Readiness = 'rename' | 'sidecar' | 'quiet' | 'add'

export interface IngestRecord {
  cid: string
  name: string
  size: number
  /** Where the ingest copy lives until it is released. */
  spoolPath: string
  readiness: Readiness
  receivedAt: string
  phase: IngestPhase
  /** 0 until placed; increases on every reassignment (the fencing epoch). */
  epoch: number
  owner?: string
  backup?: string
  placedAt?: string
  ownerStoredAt?: string
  backupStoredAt?: string
  processing: ProcessingOutcome
  processingAttempt?: number
  processingError?: string
  processedAt?: string
  /** Completions reported for an epoch that is not the current one: duplicates, never the result. */
  staleCompletions?: number
  /** Owners and backups replaced because they were gone too long or refused the file. */
  ownerReassignments?: number
  backupReassignments?: number
  /** Owners of earlier epochs, index = epoch - 1: only they can report a late (duplicate) completion. */
  pastOwners?: string[]
  releasedAt?: string
  /**
   * Backups replaced after their receipt (gone past the grace period while the file was still watched): each
   * keeps its durable archive copy, so the file has extra archive copies once they come back.
   */
  pastBackups?: string[]
  /** The owner was told the archive holds the file durably (it may then delete its working copy). */
  archiveConfirmedAt?: string
  /**
   * After release: the backup that recorded this file's coordination state (`coordinate`) and the epoch it
   * recorded. A released file's owner is assigned only once its backup recorded the epoch (node/core/takeover.ts).
   */
  standby?: { backup: string, epoch: number }
  /** The backup took over coordinating the file while this node was gone: this node defers to it for good. */
  takenOverBy?: string
  takenOverSeenAt?: string
}

export type HolderState = 'fetching' | 'stored' | 'processing' | 'processed' | 'failed'

export interface HolderRecord {
  cid: string
  name: string
  size: number
  role: HolderRole
  epoch: number
  /** Peer ID of the file's coordinator: receipts and progress go there. */
  coordinator: string
  /** Peers to pull blocks from. */
  sources: string[]
  state: HolderState
  assignedAt: string
  /** The stored copy: the owner's working file or the backup's archive file. */
  path?: string
  storedAt?: string
  /** The coordinator acknowledged our receipt. */
  receiptAcked: boolean
  /** Processing attempts started so far (owner only). */
  attempt: number
  lastError?: string
  processedAt?: string
  /** The coordinator acknowledged the latest processing outcome (processed or failed). */
  outcomeAcked: boolean
  /**
   * Receiving side of a hand-off: this archive copy was made at the request of this backup peer (which was
   * draining), not assigned by a coordinator; no receipt is owed until a coordinator assigns us the file.
   */
  handoffFrom?: string
  /** Sending side of a hand-off (draining backup): the backup chosen to take over this archive copy. */
  handoffTo?: string
  /** `handoffTo` confirmed it holds the file durably: this node's copy is no longer the only one. */
  handoffAckedAt?: string
  /**
   * Owner only: the file's backup, named by the assignment. The owner copies its reports to it (it stands in
   * as coordinator once the file is released) and accepts a reassignment or a coordinator change from it.
   */
  backup?: string
  /** Backup only: the coordination state this backup keeps for the file after release (node/core/takeover.ts). */
  standby?: StandbyRecord
}

/**
 * A backup's copy of the coordination state of a released, unprocessed file: what it needs to take over as
 * coordinator if the ingest node is gone (node/core/takeover.ts), and, once it has, its coordinator record.
 */
export interface StandbyRecord {
  /** The ingest node coordinating the file until this backup takes over. */
  ingest: string
  epoch: number
  owner: string
  /** Owners of earlier epochs, index = epoch - 1 ('' when unknown): only they can report a late completion. */
  pastOwners: string[]
  /** Processors never chosen again for the file (they refused it or were replaced). */
  excluded: string[]
  processing: ProcessingOutcome
  processingAttempt?: number
  processingError?: string
  processedAt?: string
  staleCompletions?: number
  /** Set once this backup coordinates the file (the ingest was gone past the takeover grace); never unset. */
  takenOverAt?: string
  ownerReassignments?: number
}

export class WrongStateError extends Error {
  override name = 'WrongStateError'
  readonly expected: readonly string[]
  readonly actual: string

  constructor (what: string, expected: readonly string[], actual: string) {
    super(`${what}: expected state ${expected.join(' or ')}, was ${actual}`)
    this.expected = expected
    this.actual = actual
  }
}

function expectPhase (rec: IngestRecord, what: string, ...phases: IngestPhase[]): void {
  if (!phases.includes(rec.phase)) throw new WrongStateError(`${what} ${rec.cid}`, phases, rec.phase)
}

function expectState (rec: HolderRecord, what: string, ...states: HolderState[]): void {
  if (!states.includes(rec.state)) throw new WrongStateError(`${what} ${rec.cid}/${rec.role}`, states, rec.state)
}

// ---- coordinator (ingest) record ------------------------------------------------------------------------

/** (none) -> received: the file is claimed into the spool, hashed, and about to be recorded. */
export function received (init: { cid: string, name: string, size: number, spoolPath: string, readiness: Readiness, now: string }): IngestRecord {
  return { cid: init.cid, name: init.name, size: init.size, spoolPath: init.spoolPath, readiness: init.readiness, receivedAt: init.now, phase: 'received', epoch: 0, processing: 'pending' }
}

/** received -> placed: owner and backup chosen; epoch 1. */
export function placed (rec: IngestRecord, owner: string, backup: string, now: string): IngestRecord {
  expectPhase(rec, 'place', 'received')
  return { ...rec, phase: 'placed', owner, backup, epoch: 1, placedAt: now }
}

export type ReceiptVerdict = 'recorded' | 'duplicate' | 'not-holder'

/** placed -> placed (or released -> released, idempotent): a holder's durable receipt. */
export function receiptFrom (rec: IngestRecord, peer: string, role: HolderRole, now: string): { rec: IngestRecord, verdict: ReceiptVerdict } {
  if (rec.phase === 'received') throw new WrongStateError(`receipt ${rec.cid}`, ['placed', 'released'], rec.phase)
  const holder = role === 'owner' ? rec.owner : rec.backup
  if (holder !== peer) return { rec, verdict: 'not-holder' }
  const field = role === 'owner' ? 'ownerStoredAt' : 'backupStoredAt'
  if (rec[field] != null) return { rec, verdict: 'duplicate' }
  return { rec: { ...rec, [field]: now }, verdict: 'recorded' }
}

/** True once the owner and the backup both hold the file durably: the ingest copy may go. */
export function canRelease (rec: IngestRecord): boolean {
  return rec.phase === 'placed' && rec.ownerStoredAt != null && rec.backupStoredAt != null
}

/** placed -> released: the spool copy was unlinked (and its directory fsynced). */
export function released (rec: IngestRecord, now: string): IngestRecord {
  expectPhase(rec, 'release', 'placed')
  if (!canRelease(rec)) throw new Error(`release ${rec.cid}: receipts missing (owner ${rec.ownerStoredAt ?? 'none'}, backup ${rec.backupStoredAt ?? 'none'})`)
  return { ...rec, phase: 'released', releasedAt: now }
}

/**
 * placed | released -> same phase, epoch + 1: the owner is gone (or refused), the next processor in rendezvous
 * order takes over. Only while the file is not processed; a completion from the old epoch is then a duplicate.
 */
export function ownerReassigned (rec: IngestRecord, owner: string, now: string): IngestRecord {
  expectPhase(rec, 'reassign owner', 'placed', 'released')
  if (rec.processing === 'processed') throw new WrongStateError(`reassign owner ${rec.cid}`, ['pending', 'processing', 'failed'], rec.processing)
  const pastOwners = [...(rec.pastOwners ?? [])]
  pastOwners[rec.epoch - 1] = rec.owner ?? ''
  const next: IngestRecord = { ...rec, owner, epoch: rec.epoch + 1, processing: 'pending', ownerReassignments: (rec.ownerReassignments ?? 0) + 1, placedAt: now, pastOwners }
  delete next.ownerStoredAt
  delete next.processingAttempt
  delete next.processingError
  return next
}

/** placed -> placed: the backup is gone (or refused) before its receipt; the next backup member takes over. */
export function backupReassigned (rec: IngestRecord, backup: string): IngestRecord {
  expectPhase(rec, 'reassign backup', 'placed')
  if (rec.backupStoredAt != null) throw new WrongStateError(`reassign backup ${rec.cid}`, ['no backup receipt'], 'backup receipt recorded')
  return { ...rec, backup, backupReassignments: (rec.backupReassignments ?? 0) + 1 }
}

export type ProgressVerdict = 'recorded' | 'duplicate' | 'stale-epoch' | 'not-owner' | 'ignored'

/** Processing outcome reported by the owner. A report for an older epoch is counted, never taken as the result. */
export function progressFrom (rec: IngestRecord, peer: string, epoch: number, state: ProgressState, attempt: number, now: string, error?: string): { rec: IngestRecord, verdict: ProgressVerdict } {
  if (rec.phase === 'received') throw new WrongStateError(`progress ${rec.cid}`, ['placed', 'released'], rec.phase)
  return processingReport(rec, peer, epoch, state, attempt, now, error)
}

/** The fields the fencing of processing reports reads and writes: on the ingest's record and on a backup's standby record. */
export interface ProcessingFields {
  epoch: number
  owner?: string
  pastOwners?: string[]
  processing: ProcessingOutcome
  processingAttempt?: number
  processingError?: string
  processedAt?: string
  staleCompletions?: number
}

/**
 * The owner's report judged by whichever node coordinates the file (the ingest, or the backup after a
 * takeover): only the owner of the current epoch sets the outcome; a completion from the owner of an older
 * epoch is counted as a duplicate, never the result.
 */
export function processingReport<R extends ProcessingFields> (rec: R, peer: string, epoch: number, state: ProgressState, attempt: number, now: string, error?: string): { rec: R, verdict: ProgressVerdict } {
  if (epoch !== rec.epoch) {
    // Only the owner of that earlier epoch can have completed a duplicate run; anyone else is not the owner.
    if (epoch > rec.epoch || rec.pastOwners?.[epoch - 1] !== peer) return { rec, verdict: 'not-owner' }
    if (state === 'processed') return { rec: { ...rec, staleCompletions: (rec.staleCompletions ?? 0) + 1 }, verdict: 'stale-epoch' }
    return { rec, verdict: 'stale-epoch' }
  }
  if (peer !== rec.owner) return { rec, verdict: 'not-owner' }
  if (rec.processing === 'processed') return { rec, verdict: state === 'processed' ? 'duplicate' : 'ignored' }
  if (rec.processing === state && rec.processingAttempt === attempt) return { rec, verdict: 'duplicate' }
  const next: R = { ...rec, processing: state, processingAttempt: attempt }
  if (state === 'processed') next.processedAt = now
  if (error != null) next.processingError = error
  else delete next.processingError
  return { rec: next, verdict: 'recorded' }
}

/**
 * placed | released -> same phase: the file's backup took over coordinating it while this node was gone
 * (it refused our `coordinate` with 'taken-over'). This node defers for good: it never reassigns the file again.
 */
export function coordinationTakenOver (rec: IngestRecord, backup: string, now: string): IngestRecord {
  expectPhase(rec, 'defer to the backup', 'released')
  return rec.takenOverBy != null ? rec : { ...rec, takenOverBy: backup, takenOverSeenAt: now }
}

/** The backup recorded the released file's coordination state at `epoch` (its `coordinate` reply was ok). */
export function standbyRecorded (rec: IngestRecord, backup: string, epoch: number): IngestRecord {
  expectPhase(rec, 'record the standby', 'released')
  return { ...rec, standby: { backup, epoch } }
}

// ---- holder (owner / backup) record ---------------------------------------------------------------------

/** (none) -> fetching: a coordinator assigned us the file. */
export function assigned (init: { cid: string, name: string, size: number, role: HolderRole, epoch: number, coordinator: string, sources: string[], now: string, backup?: string }): HolderRecord {
  const { now, backup, ...fields } = init
  const rec: HolderRecord = { ...fields, state: 'fetching', assignedAt: now, receiptAcked: false, attempt: 0, outcomeAcked: false }
  if (backup != null && init.role === 'owner') rec.backup = backup
  return rec
}

/**
 * Owner, any state: the file's backup now coordinates it (it took over from the ingest node), at `epoch` (ours
 * or newer). Receipt and outcome are reported again, to it; a newer epoch is adopted like a reassignment.
 */
export function coordinatorMoved (rec: HolderRecord, to: string, epoch: number): HolderRecord {
  if (rec.role !== 'owner' || rec.backup !== to) throw new WrongStateError(`move coordinator ${rec.cid}/${rec.role}`, ['owner whose backup is the new coordinator'], `${rec.role} with backup ${rec.backup ?? 'none'}`)
  const reported = rec.state === 'processed' || rec.state === 'failed'
  return { ...rec, coordinator: to, epoch: Math.max(rec.epoch, epoch), receiptAcked: rec.state === 'fetching' ? rec.receiptAcked : false, outcomeAcked: reported ? false : rec.outcomeAcked }
}

/** fetching -> stored: every block verified and fsynced, the file renamed into place, the directory fsynced. */
export function stored (rec: HolderRecord, path: string, now: string): HolderRecord {
  expectState(rec, 'store', 'fetching')
  return { ...rec, state: 'stored', path, storedAt: now }
}

/** Any state after stored: the coordinator acknowledged our receipt. */
export function receiptAcked (rec: HolderRecord): HolderRecord {
  if (rec.state === 'fetching') throw new WrongStateError(`receipt ack ${rec.cid}/${rec.role}`, ['stored', 'processing', 'processed', 'failed'], rec.state)
  return { ...rec, receiptAcked: true }
}

/** stored -> processing (or processing -> processing after a crash mid-run): one more attempt starts. */
export function processingStarted (rec: HolderRecord): HolderRecord {
  if (rec.role !== 'owner') throw new WrongStateError(`process ${rec.cid}`, ['owner'], rec.role)
  expectState(rec, 'start processing', 'stored', 'processing')
  return { ...rec, state: 'processing', attempt: rec.attempt + 1, outcomeAcked: false }
}

/** processing -> stored: the attempt failed but may be retried later. */
export function processingRetry (rec: HolderRecord, error: string): HolderRecord {
  expectState(rec, 'retry', 'processing')
  return { ...rec, state: 'stored', lastError: error }
}

/** processing -> processed: the command exited 0. The working copy may be removed. */
export function processingDone (rec: HolderRecord, now: string): HolderRecord {
  expectState(rec, 'finish', 'processing')
  const next: HolderRecord = { ...rec, state: 'processed', processedAt: now, outcomeAcked: false }
  delete next.lastError
  return next
}

/** processing -> failed: out of attempts, or a permanent failure. The working copy is kept for inspection. */
export function processingFailed (rec: HolderRecord, error: string): HolderRecord {
  expectState(rec, 'fail', 'processing')
  return { ...rec, state: 'failed', lastError: error, outcomeAcked: false }
}

/** processed | failed: the coordinator acknowledged the outcome. */
export function outcomeAcked (rec: HolderRecord): HolderRecord {
  expectState(rec, 'outcome ack', 'processed', 'failed')
  return { ...rec, outcomeAcked: true }
}

// ---- re-replication of archive copies (additions) ------------------------------------------------------

/**
 * placed | released -> same phase: the backup is gone (past the grace period) after its receipt, while the file
 * is still watched; the next backup member takes over. The old backup keeps its copy (recorded in pastBackups:
 * an extra copy if it returns); the owner keeps its working copy until the new backup's receipt is recorded.
 */
export function backupReplaced (rec: IngestRecord, backup: string): IngestRecord {
  expectPhase(rec, 'replace backup', 'placed', 'released')
  if (rec.backupStoredAt == null) throw new WrongStateError(`replace backup ${rec.cid}`, ['backup receipt recorded'], 'no backup receipt')
  const next: IngestRecord = { ...rec, backup, backupReassignments: (rec.backupReassignments ?? 0) + 1, pastBackups: [...(rec.pastBackups ?? []), rec.backup ?? ''] }
  delete next.backupStoredAt
  delete next.archiveConfirmedAt
  return next
}

/** The owner was told that the archive holds the file durably. Idempotent. */
export function archiveConfirmed (rec: IngestRecord, now: string): IngestRecord {
  if (rec.backupStoredAt == null) throw new WrongStateError(`confirm archive ${rec.cid}`, ['backup receipt recorded'], 'no backup receipt')
  return rec.archiveConfirmedAt != null ? rec : { ...rec, archiveConfirmedAt: now }
}

/** (none) -> fetching: a draining backup asked us to hold its archive copy of a file. */
export function handoffAssigned (init: { cid: string, name: string, size: number, epoch: number, from: string, sources: string[], now: string }): HolderRecord {
  const { from, ...rest } = init
  return { ...assigned({ ...rest, role: 'backup', coordinator: from }), handoffFrom: from }
}

/**
 * A coordinator assigns us a file we hold (or are fetching) as a hand-off copy: from now on it is an ordinary
 * backup record of that coordinator, and the receipt goes to it.
 */
export function handoffAdopted (rec: HolderRecord, coordinator: string, epoch: number): HolderRecord {
  if (rec.role !== 'backup' || rec.handoffFrom == null) throw new WrongStateError(`adopt ${rec.cid}/${rec.role}`, ['hand-off copy'], 'assigned copy')
  const next: HolderRecord = { ...rec, coordinator, epoch: Math.max(rec.epoch, epoch), receiptAcked: false }
  delete next.handoffFrom
  return next
}

/** Sending side: `to` is the backup chosen to take over this archive copy (recorded before asking it). */
export function handoffChosen (rec: HolderRecord, to: string): HolderRecord {
  if (rec.role !== 'backup') throw new WrongStateError(`hand off ${rec.cid}/${rec.role}`, ['backup'], rec.role)
  expectState(rec, 'hand off', 'stored')
  const next: HolderRecord = { ...rec, handoffTo: to }
  delete next.handoffAckedAt
  return next
}

/** Sending side: `handoffTo` holds the file durably. */
export function handoffDone (rec: HolderRecord, now: string): HolderRecord {
  if (rec.handoffTo == null) throw new WrongStateError(`hand-off done ${rec.cid}/${rec.role}`, ['hand-off target chosen'], 'no target')
  return rec.handoffAckedAt != null ? rec : { ...rec, handoffAckedAt: now }
}
