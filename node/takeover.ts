/**
 * The backup side of the coordinator hand-off (rules in node/core/takeover.ts): a backup records the
 * coordination state the ingest sends it for each released, unprocessed file it archives (`coordinate`, kept
 * on its backup holder record with {sync:true}), hears the owner's copied reports, and, once the ingest node has
 * been absent past the takeover grace, becomes the file's coordinator for good: it answers the owner's
 * progress, lease, receipt, archived and decline messages, and replaces an owner absent past the reassign grace
 * with the next processor in rendezvous order at epoch + 1 (the same decisions as the ingest's loop).
 *
 * Crash safety: every decision (recorded standby, takeover, owner change) is one holder-record batch {sync}
 * before anything is sent; `reconcile()` re-reads every standby record after a start, so a backup killed
 * mid-takeover resumes: a taken-over file's owner is assigned again (an idempotent repeat for the owner), and
 * a standby file is watched again (the absence clocks start over: a restart only delays a takeover).
 */
import type { ControlReply, CoordinateMessage, DeclineMessage, LeaseMessage, ProgressMessage, ReceiptMessage, ArchivedMessage } from '../protocols/messages.ts'
import { AbsenceTracker, DEFAULT_REASSIGN_GRACE_MS, FINAL_REFUSALS, successor } from './core/coordinator.ts'
import type { HolderRecord, StandbyRecord } from './core/lifecycle.ts'
import { processingReport } from './core/lifecycle.ts'
import { TAKEOVER_GRACE_FACTOR, shouldTakeOver, standbyOffered, standbyOwnerReassigned, standbyWatched, takeoverExcluded, takenOver } from './core/takeover.ts'
import type { Candidate } from './core/placement.ts'
import { ControlRequestError, ok, refuse } from './control.ts'
import type { ControlChannel } from './control.ts'
import type { Logger } from './log.ts'
import { Retrier } from './retrier.ts'
import type { Store } from './store.ts'

export interface BackupCoordinatorComponents {
  store: Store
  control: Pick<ControlChannel, 'request'>
  log: Logger
  selfId: string
  isLive: (peer: string) => boolean
  /** Live, non-draining process members: the candidates for a new owner. */
  processCandidates: () => Candidate[]
  /** Read-modify-write of this node's backup record of `cid` under the holder's per-record lock; undefined = no change. */
  updateBackup: (cid: string, fn: (rec: HolderRecord) => HolderRecord | undefined) => Promise<HolderRecord | undefined>
}

export interface BackupCoordinatorInit {
  /** An owner absent this long is replaced (after a takeover). */
  reassignGraceMs?: number
  /** The ingest absent this long: this backup takes over coordinating its released, unprocessed files. */
  takeoverGraceMs?: number
  /** How often standby files are checked. */
  checkIntervalMs?: number
}

export const DEFAULT_TAKEOVER_CHECK_INTERVAL_MS = 1_000

export interface BackupCoordinatorCounters {
  /** Files this backup coordinates after taking over from their absent ingest node (over all records). */
  takeovers: number
  /** Owners this backup replaced as coordinator (since this process started). */
  takeoverReassignments: number
  /** Reports about standby files refused: not from the owner, or from an old epoch. */
  rejectedStandbyReports: number
}

export class BackupCoordinator {
  readonly #c: BackupCoordinatorComponents
  readonly #checkIntervalMs: number
  readonly #ingestAbsence: AbsenceTracker
  readonly #ownerAbsence: AbsenceTracker
  readonly #retrier: Retrier
  /** Backup records with a standby still watched (not processed). */
  readonly #watched = new Set<string>()
  #timer: NodeJS.Timeout | undefined
  #checking = false
  readonly counters: BackupCoordinatorCounters = { takeovers: 0, takeoverReassignments: 0, rejectedStandbyReports: 0 }

  constructor (components: BackupCoordinatorComponents, init: BackupCoordinatorInit = {}) {
    this.#c = components
    const reassignGraceMs = init.reassignGraceMs ?? DEFAULT_REASSIGN_GRACE_MS
    this.#ownerAbsence = new AbsenceTracker(reassignGraceMs)
    this.#ingestAbsence = new AbsenceTracker(init.takeoverGraceMs ?? reassignGraceMs * TAKEOVER_GRACE_FACTOR)
    this.#checkIntervalMs = init.checkIntervalMs ?? DEFAULT_TAKEOVER_CHECK_INTERVAL_MS
    this.#retrier = new Retrier(components.log)
  }

  /** Re-reads every standby record (after a start): watched again; a taken-over file's owner is assigned again. */
  async reconcile (): Promise<void> {
    for await (const rec of this.#c.store.holderRecords()) {
      const s = rec.role === 'backup' ? rec.standby : undefined
      if (s == null) continue
      if (s.takenOverAt != null) this.counters.takeovers++
      if (!standbyWatched(s)) continue
      this.#watched.add(rec.cid)
      if (s.takenOverAt != null) this.#assignOwner(rec, s)
    }
  }

  start (): void {
    this.#timer = setInterval(() => {
      if (this.#checking) return
      this.#checking = true
      this.#check().catch((err) => { this.#c.log.error('standby check failed', { err }) }).finally(() => { this.#checking = false })
    }, this.#checkIntervalMs)
  }

  stop (): void {
    clearInterval(this.#timer)
    this.#retrier.stop()
  }

  /** True if this node keeps a standby record for `cid`: reports about it are answered here. */
  async coordinates (cid: string): Promise<boolean> {
    return (await this.#c.store.getHolder(cid, 'backup'))?.standby != null
  }

  /** The ingest's coordination state of a released file we archive: recorded {sync}, or refused once we took over. */
  async onCoordinate (from: string, msg: CoordinateMessage): Promise<ControlReply> {
    let reply: ControlReply = ok()
    let recorded = false
    const rec = await this.#c.updateBackup(msg.cid, (r) => {
      if (r.coordinator !== from || r.handoffFrom != null) { reply = refuse('not-coordinator', 'only the file\'s coordinator may send its coordination state'); return undefined }
      if (r.state === 'fetching') { reply = refuse('not-ready', 'the archive copy is not durable here yet'); return undefined }
      const { rec: next, verdict } = standbyOffered(r.standby, from, msg)
      if (verdict === 'taken-over') reply = refuse('taken-over', `this backup coordinates the file since ${r.standby?.takenOverAt ?? ''} (epoch ${r.standby?.epoch ?? 0}, owner ${r.standby?.owner ?? ''})`)
      if (verdict === 'stale-epoch') reply = refuse('stale-epoch', `this backup recorded epoch ${r.standby?.epoch ?? 0} with owner ${r.standby?.owner ?? ''}`)
      if (verdict !== 'recorded' || next == null) return undefined
      recorded = true
      return { ...r, standby: next }
    })
    if (rec == null) return refuse('unknown-file', 'no archive copy of that file here')
    if (recorded) {
      this.#watched.add(msg.cid)
      this.#c.log.debug('standing by as the file\'s coordinator', { cid: msg.cid, peer: from, epoch: msg.epoch, owner: msg.owner })
    }
    return reply
  }

  /** The owner's report (its own, or a copy): judged like the coordinator does (epoch fencing). */
  async onProgress (from: string, msg: ProgressMessage): Promise<ControlReply> {
    let reply: ControlReply = ok()
    await this.#c.updateBackup(msg.cid, (r) => {
      if (r.standby == null) { reply = refuse('unknown-file', 'no coordination state of that file here'); return undefined }
      const { rec: next, verdict } = processingReport(r.standby, from, msg.epoch, msg.state, msg.attempt, new Date().toISOString(), msg.error)
      if (verdict === 'not-owner') reply = this.#rejected(msg.cid, from, 'not-owner', 'you are not this file\'s owner')
      if (verdict === 'stale-epoch') {
        reply = refuse('stale-epoch', `epoch ${msg.epoch} is over; the file's epoch is ${r.standby.epoch}`)
        if (msg.state === 'processed') this.#c.log.warn('completion from an old epoch: counted as a duplicate', { cid: msg.cid, peer: from, epoch: msg.epoch, current: r.standby.epoch })
      }
      if (verdict === 'recorded') this.#c.log.info(`file ${msg.state} (reported to the backup)`, { cid: msg.cid, peer: from, epoch: msg.epoch, attempt: msg.attempt })
      return next !== r.standby ? { ...r, standby: next } : undefined
    })
    return reply
  }

  /** Lease of the owner of the current epoch; a backup has no lease to give (this node is the backup). */
  async onLease (from: string, msg: LeaseMessage): Promise<ControlReply> {
    const s = await this.#standby(msg.cid)
    if (s == null) return refuse('unknown-file', 'no coordination state of that file here')
    if (msg.role !== 'owner' || s.owner !== from) return this.#rejected(msg.cid, from, 'not-holder', `the file's ${msg.role} is another node now`)
    if (msg.epoch !== s.epoch) return refuse('stale-epoch', `epoch ${msg.epoch} is over; the file's epoch is ${s.epoch}`)
    return ok()
  }

  /** The new owner's receipt: acknowledged (the owner's copy matters only until processed; this node holds the archive). */
  async onReceipt (from: string, msg: ReceiptMessage): Promise<ControlReply> {
    const s = await this.#standby(msg.cid)
    if (s == null) return refuse('unknown-file', 'no coordination state of that file here')
    if (msg.role !== 'owner' || s.owner !== from) return this.#rejected(msg.cid, from, 'not-holder', `you are not this file's ${msg.role}`)
    return ok()
  }

  /** An owner (current or past) asks whether the archive holds the file: yes, this node's copy is durable. */
  async onArchived (from: string, msg: ArchivedMessage): Promise<ControlReply> {
    const rec = await this.#c.store.getHolder(msg.cid, 'backup')
    const s = rec?.standby
    if (rec == null || s == null) return refuse('unknown-file', 'no coordination state of that file here')
    if (from !== s.owner && !s.pastOwners.includes(from)) return this.#rejected(msg.cid, from, 'not-owner', 'you are not this file\'s owner')
    if (rec.state === 'fetching') return refuse('not-archived', 'the archive copy is not durable here')
    return ok()
  }

  /** The owner gives the file back (disk full): after a takeover, the next processor gets it. */
  async onDecline (from: string, msg: DeclineMessage): Promise<ControlReply> {
    const s = await this.#standby(msg.cid)
    if (s == null) return refuse('unknown-file', 'no coordination state of that file here')
    if (msg.role !== 'owner' || s.owner !== from) return this.#rejected(msg.cid, from, 'not-holder', `you are not this file's ${msg.role}`)
    if (s.takenOverAt == null) return refuse('not-coordinator', 'the ingest node coordinates this file')
    await this.#reassignOwner(msg.cid, from, `declined: ${msg.reason}`)
    return ok()
  }

  async #standby (cid: string): Promise<StandbyRecord | undefined> {
    return (await this.#c.store.getHolder(cid, 'backup'))?.standby
  }

  #rejected (cid: string, from: string, code: string, why: string): ControlReply {
    this.counters.rejectedStandbyReports++
    this.#c.log.warn('report about a standby file refused', { cid, peer: from, code })
    return refuse(code, why)
  }

  /** Takes over files whose ingest is absent past the takeover grace; then replaces owners absent past the reassign grace. */
  async #check (): Promise<void> {
    const now = performance.now()
    for (const cid of [...this.#watched]) {
      const s = await this.#standby(cid)
      if (s == null || !standbyWatched(s)) {
        this.#watched.delete(cid)
        this.#ingestAbsence.forget(cid)
        this.#ownerAbsence.forget(cid)
        continue
      }
      // The owner's absence is tracked while standing by too, so a takeover finds it already timed.
      const ownerGone = this.#ownerAbsence.observe(cid, this.#c.isLive(s.owner), now)
      if (s.takenOverAt == null) {
        if (shouldTakeOver(s, this.#ingestAbsence.observe(cid, this.#c.isLive(s.ingest), now))) await this.#takeOver(cid)
        continue
      }
      if (ownerGone) await this.#reassignOwner(cid, s.owner, 'absent')
    }
  }

  /** standby -> coordinating ({sync}); then tells the current owner that this node coordinates the file. */
  async #takeOver (cid: string): Promise<void> {
    let taken: StandbyRecord | undefined
    const rec = await this.#c.updateBackup(cid, (r) => {
      if (r.standby == null || !shouldTakeOver(r.standby, true)) return undefined
      taken = takenOver(r.standby, new Date().toISOString())
      return { ...r, standby: taken }
    })
    if (rec == null || taken == null) return
    this.#ingestAbsence.forget(cid)
    this.counters.takeovers++
    this.#c.log.warn('the ingest node is gone past the takeover grace: this backup coordinates the file now', { cid, peer: taken.ingest, epoch: taken.epoch, owner: taken.owner })
    this.#assignOwner(rec, taken)
  }

  /** Replaces `from` as the owner with the next processor in rendezvous order, epoch + 1 ({sync} before the assignment). */
  async #reassignOwner (cid: string, from: string, reason: string): Promise<void> {
    let outcome = 'moot' as 'moot' | 'no-candidate' | 'reassigned'
    const rec = await this.#c.updateBackup(cid, (r) => {
      const s = r.standby
      if (s == null || s.takenOverAt == null || s.owner !== from || !standbyWatched(s)) return undefined
      const to = successor(cid, this.#c.processCandidates(), takeoverExcluded(s))
      if (to == null) {
        outcome = 'no-candidate'
        return undefined
      }
      outcome = 'reassigned'
      return { ...r, standby: standbyOwnerReassigned(s, to) }
    })
    if (outcome === 'no-candidate') this.#c.log.warn('no other processor to take over: the file waits', { cid, peer: from, reason })
    if (outcome !== 'reassigned' || rec?.standby == null) return
    this.#ownerAbsence.forget(cid)
    this.counters.takeoverReassignments++
    this.#c.log.warn('owner reassigned by the backup', { cid, from, to: rec.standby.owner, epoch: rec.standby.epoch, reason })
    this.#assignOwner(rec, rec.standby)
  }

  /** Assigns the file to the standby's owner at its epoch, from this node (the archive), until acknowledged. */
  #assignOwner (rec: HolderRecord, s: StandbyRecord): void {
    const { owner, epoch } = s
    this.#retrier.run(`assign:${rec.cid}:${owner}:${epoch}`, async (signal) => {
      const current = await this.#standby(rec.cid)
      if (current == null || current.owner !== owner || current.epoch !== epoch || !standbyWatched(current)) return
      try {
        await this.#c.control.request(owner, { type: 'assign', v: 1, cid: rec.cid, name: rec.name, size: rec.size, role: 'owner', epoch, sources: [this.#c.selfId], backup: this.#c.selfId }, { signal })
      } catch (err) {
        if (!(err instanceof ControlRequestError)) throw err // unreachable: asked again (until it is replaced)
        if (FINAL_REFUSALS.has(err.code ?? '')) {
          this.#c.log.warn('processor refused the file: choosing the next candidate', { cid: rec.cid, peer: owner, code: err.code })
          await this.#reassignOwner(rec.cid, owner, `refused: ${err.code ?? ''}`)
          return
        }
        // Any other refusal is an answer too (e.g. an owner that does not know this backup keeps its coordinator).
        this.#c.log.warn('owner did not take the assignment from the backup', { cid: rec.cid, peer: owner, epoch, code: err.code, err: err.message })
        return
      }
      this.#c.log.debug('owner accepted the assignment from the backup', { cid: rec.cid, peer: owner, epoch })
    })
  }
}
