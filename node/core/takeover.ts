/**
 * The hand-off of coordination from the ingest node to the file's backup (DESIGN §4: "Each file has one
 * coordinator at a time (the ingest node until the hand-off, then its primary backup)"), as pure functions
 * over the backup's standby record (StandbyRecord, kept on its holder record) and the ingest's record.
 *
 * Why a standby and not an explicit hand-off at release: after release the ingest still does work only it
 * can do (it replaces a backup lost after its receipt: node/replicate.ts, test/rereplicate.test.ts), so it
 * stays the coordinator while it lives; the backup only has to be able to carry on when the ingest is gone.
 * The rules, which together keep one coordinator per epoch:
 *
 *  1. Once the file is released at the ingest (both receipts durable) and not processed, the ingest sends the
 *     backup `coordinate` (epoch, owner, past owners, excluded processors); the backup records it {sync}. The
 *     ingest sends it again after every owner change, and assigns a released file's new owner only after the
 *     backup recorded the new epoch: from release on, every epoch is agreed at the backup's record, so the
 *     ingest and the backup can never both hand out the same epoch.
 *  2. The owner reports to its coordinator and copies its reports to the backup (it learns the backup from its
 *     assignment), so the standby knows when processing is done and can refuse a stale owner's lease.
 *  3. If the ingest has been absent longer than the takeover grace (default 2 x the reassign grace) and the
 *     file is not processed, the backup takes over for good (`takenOver`). It then runs the coordinator's
 *     decisions (node/core/coordinator.ts): an owner absent past the reassign grace is replaced by the next
 *     processor in rendezvous order at epoch + 1; it tells the current owner it coordinates now (an `assign`
 *     at the same epoch, which an owner accepts only from its recorded backup).
 *  4. The ingest, back, never fights: its next `coordinate` is refused 'taken-over', and it records that the
 *     backup coordinates the file (lifecycle.coordinationTakenOver) and never reassigns it again; owners that
 *     ask it are answered 'moved' and follow the backup.
 *
 * Known limit: a backup replaced while it was away keeps a stale standby record; if the ingest is then gone
 * too, it may take over beside the new backup. The owners' epoch fencing and the duplicate count still hold.
 */
import { COORDINATE_PEERS_MAX } from '../../protocols/limits.ts'
import type { CoordinateMessage } from '../../protocols/messages.ts'
import type { IngestRecord, StandbyRecord } from './lifecycle.ts'
import { WrongStateError } from './lifecycle.ts'
import { ownerWatched } from './coordinator.ts'

/** The takeover grace as a multiple of the reassign grace when none is configured. */
export const TAKEOVER_GRACE_FACTOR = 2
/** Stands for an unknown owner of an epoch in `pastOwners` (never a peer ID). */
export const UNKNOWN_PEER = '-'

export type StandbyVerdict = 'recorded' | 'repeat' | 'taken-over' | 'stale-epoch'

/**
 * The ingest's `coordinate` judged against the standby record: a first one or a newer epoch is recorded
 * (processing starts again as pending: a new owner), the same epoch and owner again is a repeat; once this
 * backup took over, every offer is refused ('taken-over'); an older epoch, or another owner at the same
 * epoch, is refused ('stale-epoch').
 */
export function standbyOffered (current: StandbyRecord | undefined, ingest: string, msg: CoordinateMessage): { rec: StandbyRecord | undefined, verdict: StandbyVerdict } {
  if (current?.takenOverAt != null) return { rec: current, verdict: 'taken-over' }
  if (current != null && msg.epoch < current.epoch) return { rec: current, verdict: 'stale-epoch' }
  if (current != null && msg.epoch === current.epoch) return { rec: current, verdict: msg.owner === current.owner ? 'repeat' : 'stale-epoch' }
  const rec: StandbyRecord = { ingest, epoch: msg.epoch, owner: msg.owner, pastOwners: [...msg.pastOwners], excluded: [...msg.excluded], processing: 'pending' }
  if (current?.staleCompletions != null) rec.staleCompletions = current.staleCompletions
  return { rec, verdict: 'recorded' }
}

/** The standby matters while the file is not processed (nor failed for good): the same rule as ownerWatched. */
export function standbyWatched (rec: StandbyRecord): boolean {
  return ownerWatched(rec)
}

/** True when the backup should take over: not yet, the file still unprocessed, the ingest absent past the takeover grace. */
export function shouldTakeOver (rec: StandbyRecord, ingestAbsentPastGrace: boolean): boolean {
  return rec.takenOverAt == null && standbyWatched(rec) && ingestAbsentPastGrace
}

/** standby -> coordinating: this backup is the file's coordinator from now on. */
export function takenOver (rec: StandbyRecord, now: string): StandbyRecord {
  if (rec.takenOverAt != null || !standbyWatched(rec)) throw new WrongStateError('take over coordination', ['standby, not processed'], rec.takenOverAt != null ? 'taken over' : rec.processing)
  return { ...rec, takenOverAt: now }
}

/** Processors never to be chosen again for the file: the excluded ones, every past owner, and the current owner. */
export function takeoverExcluded (rec: StandbyRecord): Set<string> {
  return new Set([...rec.excluded, ...rec.pastOwners.filter((p) => p !== '' && p !== UNKNOWN_PEER), rec.owner])
}

/**
 * coordinating -> coordinating, epoch + 1: the owner is gone (or refused); `to` takes over. Only after the
 * takeover and while the file is not processed; a completion from the old epoch is then a duplicate.
 */
export function standbyOwnerReassigned (rec: StandbyRecord, to: string): StandbyRecord {
  if (rec.takenOverAt == null) throw new WrongStateError('reassign owner as backup', ['taken over'], 'standby')
  if (!standbyWatched(rec)) throw new WrongStateError('reassign owner as backup', ['pending', 'processing'], rec.processing)
  const pastOwners = [...rec.pastOwners]
  for (let i = pastOwners.length; i < rec.epoch - 1; i++) pastOwners[i] = UNKNOWN_PEER
  pastOwners[rec.epoch - 1] = rec.owner
  const next: StandbyRecord = { ...rec, owner: to, epoch: rec.epoch + 1, pastOwners, excluded: [...new Set([...rec.excluded, rec.owner])], processing: 'pending', ownerReassignments: (rec.ownerReassignments ?? 0) + 1 }
  delete next.processingAttempt
  delete next.processingError
  return next
}

/**
 * Ingest side: the backup must (again) record this released file's coordination state: it is released, not
 * processed, not taken over, its backup's receipt is recorded, the backup is another node, and the backup has
 * not recorded the current epoch yet.
 */
export function standbyDue (rec: IngestRecord, self: string): boolean {
  if (rec.phase !== 'released' || rec.takenOverBy != null || !ownerWatched(rec)) return false
  if (rec.backup == null || rec.backup === self || rec.backupStoredAt == null || rec.owner == null) return false
  return rec.standby?.backup !== rec.backup || rec.standby.epoch !== rec.epoch
}

/** Ingest side: the `coordinate` message for a record (past owners and exclusions capped at the decoder's limit). */
export function coordinateMessage (rec: IngestRecord, excluded: Iterable<string>): CoordinateMessage {
  const pastOwners = Array.from({ length: Math.min(rec.epoch - 1, COORDINATE_PEERS_MAX) }, (_, i) => {
    const p = rec.pastOwners?.[i]
    return p == null || p === '' ? UNKNOWN_PEER : p
  })
  return { type: 'coordinate', v: 1, cid: rec.cid, epoch: rec.epoch, owner: rec.owner ?? UNKNOWN_PEER, pastOwners, excluded: [...new Set(excluded)].slice(0, COORDINATE_PEERS_MAX) }
}
