/**
 * The coordinator's decisions about a placed file, as pure functions over its record, the live membership
 * and an injected clock: is the file still in play, has its owner or backup been gone past the grace
 * period, and who takes over (the next member in rendezvous order, never one that refused or failed it).
 * In-flight work never moves because a member joined: only absence past the grace period, or a refusal,
 * moves a file; the epoch bump that goes with an owner change fences off a late completion from the old one.
 */
import type { IngestRecord } from './lifecycle.ts'
import { rank } from './placement.ts'
import type { Candidate } from './placement.ts'

export const DEFAULT_REASSIGN_GRACE_MS = 15_000

/** Assignment refusals that mean "not this member": the file goes to the next candidate, never back to it. */
export const FINAL_REFUSALS: ReadonlySet<string> = new Set(['wrong-role', 'disk-full', 'draining'])

/**
 * The coordinator keeps watching a file until it is processed (or failed for good), its ingest copy is
 * released, and, once processed, the owner was told the archive holds it (so the owner's copy may go); or
 * until it learns that the file's backup took over coordinating it (node/core/takeover.ts).
 */
export function inPlay (rec: IngestRecord): boolean {
  if (rec.phase === 'received' || rec.takenOverBy != null) return false
  return rec.phase !== 'released' || ownerWatched(rec) || backupWatched(rec)
}

/** The owner matters until processing finished one way or the other. */
export function ownerWatched (rec: Pick<IngestRecord, 'processing'>): boolean {
  return rec.processing === 'pending' || rec.processing === 'processing'
}

/**
 * The backup matters until its receipt is recorded, and after that while the file is not processed yet, or
 * processed but the owner not yet told that the archive holds it: a backup lost then is replaced (the owner
 * still has its copy to fetch from). A file that failed for good keeps the owner's copy, so it is not watched.
 */
export function backupWatched (rec: IngestRecord): boolean {
  if (rec.phase === 'received') return false
  if (rec.backupStoredAt == null) return true
  return ownerWatched(rec) || (rec.processing === 'processed' && rec.archiveConfirmedAt == null)
}

/** A draining backup is replaced at once only before its receipt; after it, the backup hands off its copy itself. */
export function replaceDrainingBackup (rec: IngestRecord): boolean {
  return rec.backupStoredAt == null
}

/** True when the archive holds the file durably: the current backup's receipt is recorded and it is live. */
export function archiveHolds (rec: IngestRecord, isLive: (peer: string) => boolean): boolean {
  return rec.phase !== 'received' && rec.backupStoredAt != null && rec.backup != null && isLive(rec.backup)
}

/** The next member in rendezvous order for `cid`, skipping `exclude`; undefined if none is left. */
export function successor (cid: string, candidates: readonly Candidate[], exclude: ReadonlySet<string>): string | undefined {
  return rank(candidates.filter((c) => !exclude.has(c.id)), cid)[0]?.id
}

/**
 * Tracks since when each watched holder has been absent. `observe` returns true once a holder has been
 * continuously absent for at least `graceMs`.
 */
export class AbsenceTracker {
  readonly #since = new Map<string, number>()
  readonly #graceMs: number

  constructor (graceMs: number = DEFAULT_REASSIGN_GRACE_MS) {
    this.#graceMs = graceMs
  }

  observe (key: string, live: boolean, nowMs: number): boolean {
    if (live) {
      this.#since.delete(key)
      return false
    }
    const since = this.#since.get(key)
    if (since == null) {
      this.#since.set(key, nowMs)
      return false
    }
    return nowMs - since >= this.#graceMs
  }

  forget (key: string): void {
    this.#since.delete(key)
  }

  get size (): number {
    return this.#since.size
  }
}
