/**
 * The ingest side: claims ready files from the inbox into the spool, hashes them into blocks, records them
 * durably, places them (owner + backup by rendezvous over live members), tells the holders, collects their
 * receipts, and deletes the spool copy only once both receipts are recorded with {sync:true}. This node is
 * the coordinator of every file it accepted.
 *
 * Crash safety, step by step (each durable step names its fsync):
 *   claim:   claims/<id> {sync} -> rename inbox -> spool/<id> -> fsync both dirs (batches and fsyncs shared by
 *            concurrent claims: node/group-commit.ts)
 *   accept:  hash -> re-stat -> one batch {sync}: del claim, put ingest record (placed at once if an owner and a
 *            backup are live) + leaf index
 *   place:   batch {sync}: record placed (epoch 1) -> assign to owner and backup (retried until acked) -> announce
 * Transfer is swarm-shaped (node/swarm.ts): while neither holder has the file, both are assigned it with
 * sources [this node, owner, backup]; each pulls a disjoint half from here and the other half from the other.
 *   receipt: batch {sync}: record the receipt
 *   release: unlink spool file -> fsync spool dir -> batch {sync}: released + tombstone, drop leaf index
 * On start, `reconcile()` re-drives every record and claim that was in flight; every step is idempotent.
 *
 * After release the file's backup stands by as coordinator (node/core/takeover.ts): this node sends it the
 * file's coordination state (`coordinate`, recorded as `standby` {sync} once acknowledged) until the file is
 * processed, assigns a released file's new owner only after the backup recorded the new epoch, and defers for
 * good (`takenOverBy` {sync}; owners asking are answered 'moved') once the backup says it took over.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { FILES_TOPIC } from '../protocols/ids.ts'
import { GOSSIP_MESSAGE_BYTES_MAX } from '../protocols/limits.ts'
import { encodeMessage } from '../protocols/messages.ts'
import type { AnnounceMessage, ArchivedMessage, ControlReply, DeclineMessage, HandoffMessage, HolderRole, LeaseMessage, ProgressMessage, ReceiptMessage } from '../protocols/messages.ts'
import { coordinateMessage, standbyDue } from './core/takeover.ts'
import { AbsenceTracker, DEFAULT_REASSIGN_GRACE_MS, FINAL_REFUSALS, archiveHolds, backupWatched, inPlay, ownerWatched, replaceDrainingBackup, successor } from './core/coordinator.ts'
import { archiveConfirmed, backupReassigned, backupReplaced, canRelease, coordinationTakenOver, ownerReassigned, placed, progressFrom, receiptFrom, received, released, standbyRecorded } from './core/lifecycle.ts'
import type { IngestRecord, Readiness } from './core/lifecycle.ts'
import { place } from './core/placement.ts'
import { ControlRequestError, ok, refuse } from './control.ts'
import type { ControlChannel } from './control.ts'
import { fsyncDir, renameDurable } from './fsutil.ts'
import { CommitGroup, DirSync } from './group-commit.ts'
import { hashFile } from './hasher.ts'
import type { Logger } from './log.ts'
import type { MeshNode } from './mesh.ts'
import type { MembershipService } from './membership-service.ts'
import type { Claim, Store } from './store.ts'
import { KeyedLock } from './keyed-lock.ts'
import { swarmSources } from './swarm.ts'
import { Retrier } from './retrier.ts'

export interface IngestServiceInit {
  spoolDir: string
  /** An owner or backup absent this long is replaced by the next member in rendezvous order. */
  reassignGraceMs?: number
  /** How often placed files are checked for absent holders. */
  holderCheckIntervalMs?: number
}

export const DEFAULT_HOLDER_CHECK_INTERVAL_MS = 1_000

export interface ReadyFile {
  path: string
  name: string
  readiness: Readiness
  sidecarPaths?: string[]
  /** The version the inbox judged ready (its fingerprint): a different file found after the rename is given back. */
  fingerprint?: ClaimedVersion
}

/** What identifies the version of an inbox file that was judged ready (ctime left out: the rename changes it). */
export interface ClaimedVersion {
  dev: bigint
  ino: bigint
  size: bigint
  mtimeNs: bigint
}

export interface IngestCounters {
  accepted: number
  duplicates: number
  givenBack: number
  released: number
  rejectedReports: number
  ownerReassignments: number
  backupReassignments: number
  /** Backups replaced after their receipt (they keep their copies: extra archive copies), over all records. */
  extraArchiveCopies: number
  /** Files whose backup took over coordinating them while this node was gone (this node defers), over all records. */
  deferredToBackup: number
}

export class IngestService {
  readonly #store: Store
  readonly #node: MeshNode
  readonly #members: MembershipService
  readonly #control: ControlChannel
  readonly #log: Logger
  readonly #spoolDir: string
  readonly #retrier: Retrier
  /** Claims' store batches and directory fsyncs, shared by concurrent claims (group commit). */
  readonly #commits: CommitGroup
  readonly #dirSync = new DirSync()
  /** Serialises changes to one file's record (receipts from owner and backup may arrive together). */
  readonly #locks = new KeyedLock()
  readonly #unplaced = new Set<string>()
  /** Placed files whose owner or backup still matters: checked for absence every holderCheckIntervalMs. */
  readonly #watched = new Set<string>()
  readonly #absence: AbsenceTracker
  /** Peers that refused a file or were replaced for it: never chosen for it again by this run. */
  readonly #excluded = new Map<string, Set<string>>()
  /** Released files whose backup recorded their state before this node's last start: asked again (it may have taken over). */
  readonly #reconfirm = new Set<string>()
  readonly #checkIntervalMs: number
  #checkTimer: NodeJS.Timeout | undefined
  #checking = false
  readonly counters: IngestCounters = { accepted: 0, duplicates: 0, givenBack: 0, released: 0, rejectedReports: 0, ownerReassignments: 0, backupReassignments: 0, extraArchiveCopies: 0, deferredToBackup: 0 }

  constructor (components: { store: Store, node: MeshNode, members: MembershipService, control: ControlChannel, log: Logger }, init: IngestServiceInit) {
    this.#store = components.store
    this.#node = components.node
    this.#members = components.members
    this.#control = components.control
    this.#log = components.log
    this.#spoolDir = init.spoolDir
    this.#retrier = new Retrier(this.#log)
    this.#commits = new CommitGroup(async (ops) => { await this.#store.commit(ops) })
    this.#absence = new AbsenceTracker(init.reassignGraceMs ?? DEFAULT_REASSIGN_GRACE_MS)
    this.#checkIntervalMs = init.holderCheckIntervalMs ?? DEFAULT_HOLDER_CHECK_INTERVAL_MS
    this.#members.onChange(() => { this.#placeWaiting() })
  }

  start (): void {
    this.#checkTimer = setInterval(() => {
      if (this.#checking) return
      this.#checking = true
      this.#checkHolders().catch((err) => { this.#log.error('holder check failed', { err }) }).finally(() => { this.#checking = false })
    }, this.#checkIntervalMs)
  }

  get self (): string {
    return this.#node.peerId.toString()
  }

  stop (): void {
    clearInterval(this.#checkTimer)
    this.#retrier.stop()
  }

  /**
   * Claims a ready inbox file: intent log, rename into the spool, hash, record. Returns the root CID.
   * Safe to call for many files at once (the inbox does, DEFAULT_DELIVERY_CONCURRENCY): concurrent claims
   * share their {sync:true} batches and directory fsyncs (node/group-commit.ts), each step still durable
   * before the next one that depends on it.
   */
  async claim (file: ReadyFile): Promise<string | undefined> {
    const id = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`
    const claim: Claim = { id, name: file.name, inboxPath: file.path, spoolPath: path.join(this.#spoolDir, id), readiness: file.readiness, claimedAt: new Date().toISOString() }
    if (file.sidecarPaths != null && file.sidecarPaths.length > 0) claim.sidecarPaths = file.sidecarPaths
    await this.#commits.commit([this.#store.putClaim(claim)])
    try {
      await fs.rename(file.path, claim.spoolPath)
    } catch (err: any) {
      await this.#commits.commit([this.#store.delClaim(id)])
      if (err.code === 'ENOENT') return undefined
      throw err
    }
    // The rename is made durable in both directories while the file is hashed; #accept waits for it before
    // anything records the spool copy (or moves it again).
    const durable = Promise.all([this.#dirSync.sync(this.#spoolDir), this.#dirSync.sync(path.dirname(path.resolve(file.path)))]).then(() => {})
    durable.catch(() => {}) // awaited by #accept; this only keeps an early throw there from leaving it unhandled
    return await this.#accept(claim, file.fingerprint, durable)
  }

  /**
   * Hashes a claimed spool file and records it; gives it back to the inbox if it is not the version the inbox
   * judged ready (`expected`: replaced or rewritten before the rename) or if it changed while we hashed it.
   * A file accepted while an owner and a backup are live is recorded placed in the same batch.
   */
  async #accept (claim: Claim, expected?: ClaimedVersion, claimDurable?: Promise<void>): Promise<string | undefined> {
    const before = await fs.stat(claim.spoolPath, { bigint: true })
    const unexpected = expected != null && (before.dev !== expected.dev || before.ino !== expected.ino || before.size !== expected.size || before.mtimeNs !== expected.mtimeNs)
    const manifest = unexpected ? undefined : await hashFile(claim.spoolPath)
    const after = await fs.stat(claim.spoolPath, { bigint: true })
    await claimDurable
    if (manifest == null || after.size !== before.size || after.mtimeNs !== before.mtimeNs || after.ino !== before.ino || Number(after.size) !== manifest.size) {
      // A writer still had the file open (or the name held another file): hand it back under its name, try later.
      this.#log.warn(manifest == null ? 'file is not the version found ready: giving it back to the inbox' : 'file changed while being hashed: giving it back to the inbox', { file: claim.name })
      await renameDurable(claim.spoolPath, claim.inboxPath).catch((err) => { this.#log.error('cannot give a changed file back', { file: claim.name, err }) })
      await this.#commits.commit([this.#store.delClaim(claim.id)])
      this.counters.givenBack++
      return undefined
    }
    const cid = manifest.root.toString()
    const outcome = await this.#withLock(cid, async () => {
      const existing = await this.#store.getIngest(cid) ?? await this.#store.getTombstone(cid)
      if (existing != null) return { existing }
      const now = new Date().toISOString()
      const rec = received({ cid, name: claim.name, size: manifest.size, spoolPath: claim.spoolPath, readiness: claim.readiness, now })
      const view = this.#members.view
      const { owner, backup } = place(cid, view.candidates('process'), view.candidates('backup'))
      const next = owner != null && backup != null ? placed(rec, owner, backup, now) : rec
      await this.#commits.commit([this.#store.delClaim(claim.id), this.#store.putIngest(next), ...this.#store.blockIndexOps(cid, 'spool', claim.spoolPath, manifest.leaves, manifest.nodes)])
      if (next.phase === 'placed') this.#watched.add(cid)
      return { next }
    })
    if (outcome.existing != null) {
      this.#log.warn('same content was already accepted: dropping the duplicate copy', { cid, file: claim.name, first: outcome.existing.name })
      await fs.rm(claim.spoolPath, { force: true })
      await this.#dirSync.sync(this.#spoolDir)
      await this.#commits.commit([this.#store.delClaim(claim.id)])
      await this.#removeSidecar(claim)
      this.counters.duplicates++
      return cid
    }
    const next = outcome.next
    await this.#removeSidecar(claim)
    this.counters.accepted++
    this.#log.info('file received', { cid, file: claim.name, bytes: manifest.size, readiness: claim.readiness })
    if (next.phase === 'placed') {
      this.#log.info('file placed', { cid, owner: next.owner, backup: next.backup, epoch: next.epoch })
      this.#drive(next)
    } else {
      await this.#tryPlace(cid)
    }
    return cid
  }

  async #removeSidecar (claim: Claim): Promise<void> {
    for (const p of claim.sidecarPaths ?? []) await fs.rm(p, { force: true }).catch(() => {})
  }

  async #withLock<T> (cid: string, fn: () => Promise<T>): Promise<T> {
    return await this.#locks.run(cid, fn)
  }

  /** received -> placed when an owner and a backup are live; otherwise waits for a membership change. */
  async #tryPlace (cid: string): Promise<void> {
    const rec = await this.#withLock(cid, async () => {
      const current = await this.#store.getIngest(cid)
      if (current == null || current.phase !== 'received') return current
      const view = this.#members.view
      const { owner, backup } = place(cid, view.candidates('process'), view.candidates('backup'))
      if (owner == null || backup == null) {
        if (!this.#unplaced.has(cid)) this.#log.warn('no live processor or backup: the file waits', { cid, processors: view.candidates('process').length, backups: view.candidates('backup').length })
        this.#unplaced.add(cid)
        return undefined
      }
      this.#unplaced.delete(cid)
      const next = placed(current, owner, backup, new Date().toISOString())
      await this.#store.commit([this.#store.putIngest(next)])
      this.#log.info('file placed', { cid, owner, backup, epoch: next.epoch })
      this.#watched.add(cid)
      return next
    })
    if (rec?.phase === 'placed') this.#drive(rec)
  }

  #placeWaiting (): void {
    for (const cid of this.#unplaced) this.#tryPlace(cid).catch((err) => { this.#log.error('placement failed', { cid, err }) })
  }

  /** Sends what a placed record still needs: assignments to holders without receipts, the announcement, release. */
  #drive (rec: IngestRecord): void {
    if (rec.phase === 'received' || rec.owner == null || rec.backup == null || rec.takenOverBy != null) return
    // A released file's new owner is assigned only once its backup recorded the epoch (takeover rule 1).
    const standby = this.#coordinateDue(rec)
    if (standby) this.#sendCoordinate(rec.cid)
    if (rec.phase === 'placed') {
      const announce: AnnounceMessage = { type: 'announce', v: 1, cid: rec.cid, name: rec.name, size: rec.size, owner: rec.owner, backup: rec.backup, epoch: rec.epoch }
      this.#node.services.pubsub.publish(FILES_TOPIC, encodeMessage(announce, GOSSIP_MESSAGE_BYTES_MAX)).catch((err) => { this.#log.debug('announce failed', { cid: rec.cid, err }) })
    }
    for (const role of ['owner', 'backup'] as const) {
      if ((role === 'owner' ? rec.ownerStoredAt : rec.backupStoredAt) != null) continue
      if (role === 'owner' && (!ownerWatched(rec) || standby)) continue
      const peer = role === 'owner' ? rec.owner : rec.backup
      this.#retrier.run(assignKey(rec.cid, role, peer), async (signal) => {
        const current = await this.#store.getIngest(rec.cid)
        if (current == null || current.phase === 'received' || current.takenOverBy != null || (role === 'owner' ? current.owner : current.backup) !== peer) return
        if ((role === 'owner' ? current.ownerStoredAt : current.backupStoredAt) != null) return
        if (role === 'owner' && this.#coordinateDue(current)) return // assigned once the backup recorded the epoch
        try {
          await this.#control.request(peer, { type: 'assign', v: 1, cid: rec.cid, name: rec.name, size: rec.size, role, epoch: current.epoch, sources: this.#sourcesOf(current, role), ...(role === 'owner' && current.backup != null ? { backup: current.backup } : {}) }, { signal })
        } catch (err) {
          if (!(err instanceof ControlRequestError) || !FINAL_REFUSALS.has(err.code ?? '')) throw err
          this.#log.warn('holder refused the file: choosing the next candidate', { cid: rec.cid, peer, role, code: err.code })
          await this.#reassign(rec.cid, role, peer, `refused: ${err.code ?? ''}`)
          return
        }
        this.#log.debug('holder accepted the assignment', { cid: rec.cid, peer, role })
      })
    }
    if (canRelease(rec)) this.#release(rec.cid)
  }

  /**
   * Who can give a holder the file's blocks now: this node while it has the spool copy, and holders with
   * receipts. While neither holder has the file, [this node, owner, backup] to both (the swarm rule,
   * node/swarm.ts): each takes its share from here and the rest from the other, so this node sends the
   * file about once.
   */
  #sourcesOf (rec: IngestRecord, role: HolderRole): string[] {
    if (rec.phase === 'placed' && rec.owner != null && rec.backup != null && rec.ownerStoredAt == null && rec.backupStoredAt == null) {
      return swarmSources(this.self, [rec.owner, rec.backup])
    }
    const sources: string[] = []
    if (rec.phase === 'placed') sources.push(this.self)
    if (role === 'owner' && rec.backupStoredAt != null && rec.backup != null) sources.push(rec.backup)
    if (role === 'backup' && rec.ownerStoredAt != null && rec.owner != null) sources.push(rec.owner)
    return sources.length > 0 ? sources : [this.self]
  }

  /** Checks every watched file's owner and backup; replaces those absent (or draining) past the grace period. */
  async #checkHolders (): Promise<void> {
    const view = this.#members.view
    const now = performance.now()
    for (const cid of [...this.#watched]) {
      const rec = await this.#store.getIngest(cid)
      if (rec == null || !inPlay(rec)) {
        this.#watched.delete(cid)
        this.#absence.forget(`${cid}/owner`)
        this.#absence.forget(`${cid}/backup`)
        this.#excluded.delete(cid)
        continue
      }
      for (const role of ['owner', 'backup'] as const) {
        const peer = role === 'owner' ? rec.owner : rec.backup
        const watched = role === 'owner' ? ownerWatched(rec) : backupWatched(rec)
        if (peer == null || !watched) {
          this.#absence.forget(`${cid}/${role}`)
          continue
        }
        const member = view.get(peer)
        // A draining holder gives up work it has not started: an owner before processing, a backup before its receipt
        // (after it, a draining backup hands its copy to another backup itself, and stays a source until it stops).
        const handsOff = member?.draining === true && view.isLive(peer) && (role === 'backup' ? replaceDrainingBackup(rec) : rec.processing === 'pending')
        if (handsOff || this.#absence.observe(`${cid}/${role}`, view.isLive(peer), now)) {
          await this.#reassign(cid, role, peer, handsOff ? 'draining' : 'absent')
        }
      }
    }
  }

  /** Replaces `from` as the file's `role` holder with the next member in rendezvous order (owner: epoch + 1). */
  async #reassign (cid: string, role: HolderRole, from: string, reason: string): Promise<void> {
    const next = await this.#withLock(cid, async () => {
      const rec = await this.#store.getIngest(cid)
      if (rec == null || rec.takenOverBy != null || (role === 'owner' ? rec.owner : rec.backup) !== from) return undefined
      if (role === 'owner' ? !ownerWatched(rec) : !backupWatched(rec)) return undefined
      const excluded = this.#excluded.get(cid) ?? new Set<string>()
      excluded.add(from)
      this.#excluded.set(cid, excluded)
      const view = this.#members.view
      let to: string | undefined
      if (role === 'owner') {
        to = successor(cid, view.candidates('process'), excluded)
      } else {
        // A backup replaced after its receipt keeps its copy but would take a new assignment as a repeat (no
        // new receipt): never chosen again for the file.
        const notPast = new Set([...excluded, ...(rec.pastBackups ?? [])])
        const notOwner = new Set([...notPast, ...(rec.owner != null ? [rec.owner] : [])])
        to = successor(cid, view.candidates('backup'), notOwner) ?? successor(cid, view.candidates('backup'), notPast)
      }
      if (to == null) {
        this.#log.warn(`no other ${role} to take over: the file waits`, { cid, peer: from, reason })
        excluded.delete(from)
        return undefined
      }
      // A backup lost after its receipt is replaced too (re-replication); it keeps its copy if it comes back.
      const afterReceipt = role === 'backup' && rec.backupStoredAt != null
      const updated = role === 'owner' ? ownerReassigned(rec, to, new Date().toISOString()) : afterReceipt ? backupReplaced(rec, to) : backupReassigned(rec, to)
      await this.#store.commit([this.#store.putIngest(updated)])
      this.#absence.forget(`${cid}/${role}`)
      if (role === 'owner') this.counters.ownerReassignments++
      else this.counters.backupReassignments++
      if (afterReceipt) this.counters.extraArchiveCopies++
      this.#log.warn(`${role} reassigned`, { cid, from, to, epoch: updated.epoch, reason })
      return updated
    })
    if (next != null) this.#drive(next)
  }

  /**
   * Tells the released file's backup its coordination state until the backup recorded the current epoch
   * (takeover rule 1), then drives the record again (a new owner waits for this). A 'taken-over' refusal
   * means the backup coordinates the file now: this node defers for good.
   */
  #sendCoordinate (cid: string): void {
    this.#retrier.run(`coordinate:${cid}`, async (signal) => {
      // Loops while due: the owner may change (epoch + 1) while a message is on its way; each epoch is recorded.
      while (!signal.aborted) {
        const rec = await this.#store.getIngest(cid)
        if (rec == null || !this.#coordinateDue(rec) || rec.backup == null) break
        const backup = rec.backup
        const msg = coordinateMessage(rec, this.#excluded.get(cid) ?? [])
        try {
          await this.#control.request(backup, msg, { signal })
        } catch (err) {
          if (err instanceof ControlRequestError && err.code === 'taken-over') {
            await this.#deferToBackup(cid, backup)
            return
          }
          throw err
        }
        await this.#withLock(cid, async () => {
          const current = await this.#store.getIngest(cid)
          if (current == null || current.backup !== backup || current.epoch !== msg.epoch || current.owner !== msg.owner) return
          this.#reconfirm.delete(cid)
          if (!standbyDue(current, this.self)) return
          await this.#store.commit([this.#store.putIngest(standbyRecorded(current, backup, msg.epoch))])
          this.#log.debug('backup recorded the coordination state', { cid, peer: backup, epoch: msg.epoch })
        })
      }
      // The new owner (if any) waited for this: assign it now.
      const current = await this.#store.getIngest(cid)
      if (current != null && !signal.aborted) this.#drive(current)
    })
  }

  /**
   * Due to tell the backup the file's coordination state: by the takeover rules (standbyDue), or because this
   * node restarted since the backup last recorded it (the backup may have taken over meanwhile).
   */
  #coordinateDue (rec: IngestRecord): boolean {
    if (standbyDue(rec, this.self)) return true
    return this.#reconfirm.has(rec.cid) && rec.phase === 'released' && rec.takenOverBy == null && ownerWatched(rec) && rec.standby != null && rec.standby.backup === rec.backup
  }

  /** The backup took over coordinating the file while this node was gone: record it {sync} and never touch the file again. */
  async #deferToBackup (cid: string, backup: string): Promise<void> {
    const deferred = await this.#withLock(cid, async () => {
      const rec = await this.#store.getIngest(cid)
      if (rec == null || rec.phase !== 'released' || rec.takenOverBy != null || rec.backup !== backup) return false
      await this.#store.commit([this.#store.putIngest(coordinationTakenOver(rec, backup, new Date().toISOString()))])
      return true
    })
    if (!deferred) return
    this.#watched.delete(cid)
    this.#absence.forget(`${cid}/owner`)
    this.#absence.forget(`${cid}/backup`)
    this.counters.deferredToBackup++
    this.#log.warn('the backup took over coordinating the file while this node was away: deferring to it', { cid, peer: backup })
  }

  /** The refusal for reports about a file whose backup coordinates it now: the owner follows the backup. */
  #moved (rec: IngestRecord): ControlReply | undefined {
    return rec.takenOverBy != null ? refuse('moved', `the file's backup ${rec.takenOverBy} coordinates it now`) : undefined
  }

  /** A holder's receipt: record it durably, then release the spool copy once both are in. */
  async onReceipt (from: string, msg: ReceiptMessage): Promise<ControlReply> {
    return await this.#withLock(msg.cid, async () => {
      const rec = await this.#store.getIngest(msg.cid)
      if (rec == null || rec.phase === 'received') return refuse('unknown-file', 'no placed file with that CID here')
      const moved = this.#moved(rec)
      if (moved != null) return moved
      const { rec: next, verdict } = receiptFrom(rec, from, msg.role, new Date().toISOString())
      if (verdict === 'not-holder') {
        this.counters.rejectedReports++
        this.#log.warn('receipt from a peer that is not the holder', { cid: msg.cid, peer: from, role: msg.role })
        return refuse('not-holder', `you are not this file's ${msg.role}`)
      }
      if (verdict === 'recorded') {
        await this.#store.commit([this.#store.putIngest(next)])
        this.#log.info('receipt recorded', { cid: msg.cid, peer: from, role: msg.role })
        this.#retrier.cancel(assignKey(msg.cid, msg.role, from))
        // A backup replacing one lost after release stands by as coordinator once its copy is durable.
        if (this.#coordinateDue(next)) this.#sendCoordinate(next.cid)
      }
      if (canRelease(next)) queueMicrotask(() => { this.#release(next.cid) })
      return ok()
    })
  }

  /** A holder gives a file back (disk full): the next candidate in rendezvous order gets it. */
  async onDecline (from: string, msg: DeclineMessage): Promise<ControlReply> {
    const rec = await this.#store.getIngest(msg.cid)
    if (rec == null || rec.phase === 'received') return refuse('unknown-file', 'no placed file with that CID here')
    const moved = this.#moved(rec)
    if (moved != null) return moved
    if ((msg.role === 'owner' ? rec.owner : rec.backup) !== from) return refuse('not-holder', `the file's ${msg.role} is another node now`)
    this.#log.warn('holder declined the file: choosing the next candidate', { cid: msg.cid, peer: from, role: msg.role, reason: msg.reason })
    await this.#reassign(msg.cid, msg.role, from, `declined: ${msg.reason}`)
    return ok()
  }

  /** A holder asks whether it still holds the file: yes only for the current holder (and, for the owner, epoch). */
  async onLease (from: string, msg: LeaseMessage): Promise<ControlReply> {
    const rec = await this.#store.getIngest(msg.cid)
    if (rec == null || rec.phase === 'received') return refuse('unknown-file', 'no placed file with that CID here')
    const moved = this.#moved(rec)
    if (moved != null) return moved
    if ((msg.role === 'owner' ? rec.owner : rec.backup) !== from) return refuse('not-holder', `the file's ${msg.role} is another node now`)
    if (msg.role === 'owner' && msg.epoch !== rec.epoch) return refuse('stale-epoch', `epoch ${msg.epoch} is over; the file's epoch is ${rec.epoch}`)
    return ok()
  }

  /**
   * An owner (current or past) asks whether the archive holds the file durably before deleting its working
   * copy: yes once the current backup's receipt is recorded and that backup is live. A yes to the current
   * owner of a processed file is recorded: the file needs no more watching.
   */
  async onArchived (from: string, msg: ArchivedMessage): Promise<ControlReply> {
    return await this.#withLock(msg.cid, async () => {
      const rec = await this.#store.getIngest(msg.cid)
      if (rec == null || rec.phase === 'received') return refuse('unknown-file', 'no placed file with that CID here')
      const moved = this.#moved(rec)
      if (moved != null) return moved
      if (from !== rec.owner && rec.pastOwners?.includes(from) !== true) return refuse('not-owner', 'you are not this file\'s owner')
      if (!archiveHolds(rec, (peer) => this.#members.view.isLive(peer))) {
        return refuse('not-archived', rec.backupStoredAt == null ? `no receipt from the backup ${rec.backup ?? ''} yet` : `the backup ${rec.backup ?? ''} is not live`)
      }
      if (from === rec.owner && rec.processing === 'processed' && rec.archiveConfirmedAt == null) {
        await this.#store.commit([this.#store.putIngest(archiveConfirmed(rec, new Date().toISOString()))])
        this.#log.debug('owner told the archive holds the file', { cid: msg.cid, peer: from, backup: rec.backup })
      }
      return ok()
    })
  }

  /**
   * The file's backup (draining) handed its archive copy to another live backup member: while the file is
   * still watched, that member becomes the backup (the old one is a past backup, keeping its copy) and is
   * assigned the file, which it holds already; its receipt is then recorded as usual. Only the current
   * backup may say so, and only for a live, non-draining backup member.
   */
  async onHandoff (from: string, msg: HandoffMessage): Promise<ControlReply> {
    let updated: IngestRecord | undefined
    const reply = await this.#withLock(msg.cid, async () => {
      const rec = await this.#store.getIngest(msg.cid)
      if (rec == null || rec.phase === 'received') return refuse('unknown-file', 'no placed file with that CID here')
      if (rec.backup !== from) {
        if (rec.pastBackups?.includes(from) === true) return ok() // replaced already; its copy is an extra one
        this.counters.rejectedReports++
        this.#log.warn('hand-off notice from a peer that is not the backup', { cid: msg.cid, peer: from })
        return refuse('not-holder', 'you are not this file\'s backup')
      }
      if (rec.backupStoredAt == null || !backupWatched(rec)) return ok()
      if (msg.to === from || !this.#members.view.candidates('backup').some((c) => c.id === msg.to)) return refuse('bad-target', `${msg.to} is not a live, non-draining backup member`)
      updated = backupReplaced(rec, msg.to)
      await this.#store.commit([this.#store.putIngest(updated)])
      this.#absence.forget(`${msg.cid}/backup`)
      this.counters.backupReassignments++
      this.counters.extraArchiveCopies++
      this.#log.info('backup handed off its copy: the new backup takes over', { cid: msg.cid, from, to: msg.to })
      return ok()
    })
    if (updated != null) this.#drive(updated)
    return reply
  }

  /** The owner's processing report: recorded only from the owner of the current epoch. */
  async onProgress (from: string, msg: ProgressMessage): Promise<ControlReply> {
    return await this.#withLock(msg.cid, async () => {
      const rec = await this.#store.getIngest(msg.cid)
      if (rec == null || rec.phase === 'received') return refuse('unknown-file', 'no placed file with that CID here')
      const moved = this.#moved(rec)
      if (moved != null) return moved
      const { rec: next, verdict } = progressFrom(rec, from, msg.epoch, msg.state, msg.attempt, new Date().toISOString(), msg.error)
      if (verdict === 'not-owner') {
        this.counters.rejectedReports++
        this.#log.warn('progress from a peer that is not the owner', { cid: msg.cid, peer: from })
        return refuse('not-owner', 'you are not this file\'s owner')
      }
      if (next !== rec) await this.#store.commit([this.#store.putIngest(next)])
      if (verdict === 'stale-epoch') {
        if (msg.state === 'processed') this.#log.warn('completion from an old epoch: counted as a duplicate', { cid: msg.cid, peer: from, epoch: msg.epoch, current: rec.epoch })
        return refuse('stale-epoch', `epoch ${msg.epoch} is over; the file's epoch is ${rec.epoch}`)
      }
      if (verdict === 'recorded') this.#log.info(`file ${msg.state}`, { cid: msg.cid, peer: from, attempt: msg.attempt, err: msg.error })
      return ok()
    })
  }

  #release (cid: string): void {
    this.#retrier.run(`release:${cid}`, async () => {
      await this.#withLock(cid, async () => {
        const rec = await this.#store.getIngest(cid)
        if (rec == null || !canRelease(rec)) return
        // The receipts are durable (recorded with sync): now the copy may go. Unlink, fsync the directory, record.
        await fs.rm(rec.spoolPath, { force: true })
        await fsyncDir(path.dirname(rec.spoolPath))
        const next = released(rec, new Date().toISOString())
        await this.#store.commit([
          this.#store.putIngest(next),
          this.#store.putTombstone(cid, { name: rec.name, size: rec.size, releasedAt: next.releasedAt ?? '' }),
          ...await this.#store.dropBlockIndexOps(cid, 'spool')
        ])
        this.counters.released++
        this.#log.info('ingest copy deleted after both receipts', { cid, file: rec.name })
        // Not processed yet: the backup stands by as coordinator from now on (node/core/takeover.ts).
        if (this.#coordinateDue(next)) this.#sendCoordinate(cid)
      })
    })
  }

  /** Re-drives everything in flight after a start: claims, unplaced and placed records. */
  async reconcile (): Promise<void> {
    for await (const claim of this.#store.claims()) {
      const inSpool = await exists(claim.spoolPath)
      if (inSpool) {
        this.#log.info('resuming an interrupted claim', { file: claim.name })
        await this.#accept(claim).catch((err) => { this.#log.error('cannot resume claim', { file: claim.name, err }) })
      } else {
        await this.#store.commit([this.#store.delClaim(claim.id)])
      }
    }
    for await (const rec of this.#store.ingestRecords()) {
      this.counters.extraArchiveCopies += rec.pastBackups?.length ?? 0
      if (rec.takenOverBy != null) this.counters.deferredToBackup++
      // Back after a stop: ask the backup again whether it took over meanwhile, before any owner change here.
      if (rec.phase === 'released' && rec.standby != null && rec.takenOverBy == null && ownerWatched(rec)) this.#reconfirm.add(rec.cid)
      if (rec.phase === 'received') await this.#tryPlace(rec.cid)
      else this.#drive(rec)
      if (inPlay(rec)) this.#watched.add(rec.cid)
    }
  }
}

function assignKey (cid: string, role: HolderRole, peer: string): string {
  return `assign:${cid}:${role}:${peer}`
}

async function exists (p: string): Promise<boolean> {
  try {
    await fs.lstat(p)
    return true
  } catch {
    return false
  }
}
