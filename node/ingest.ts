/**
 * The ingest side: claims ready files from the inbox into the spool, hashes them into blocks, records them
 * durably, places them (owner + backup by rendezvous over live members), tells the holders, collects their
 * receipts, and deletes the spool copy only once both receipts are recorded with {sync:true}. This node is
 * the coordinator of every file it accepted.
 *
 * Crash safety, step by step (each durable step names its fsync):
 *   claim:   claims/<id> {sync} -> rename inbox -> spool/<id> -> fsync both dirs
 *   accept:  hash -> re-stat -> one batch {sync}: del claim, put ingest record + leaf index
 *   place:   batch {sync}: record placed (epoch 1) -> assign to owner and backup (retried until acked) -> announce
 *   receipt: batch {sync}: record the receipt
 *   release: unlink spool file -> fsync spool dir -> batch {sync}: released + tombstone, drop leaf index
 * On start, `reconcile()` re-drives every record and claim that was in flight; every step is idempotent.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { FILES_TOPIC } from '../protocols/ids.ts'
import { GOSSIP_MESSAGE_BYTES_MAX } from '../protocols/limits.ts'
import { encodeMessage } from '../protocols/messages.ts'
import type { AnnounceMessage, ControlReply, HolderRole, ProgressMessage, ReceiptMessage } from '../protocols/messages.ts'
import { canRelease, placed, progressFrom, receiptFrom, received, released } from './core/lifecycle.ts'
import type { IngestRecord, Readiness } from './core/lifecycle.ts'
import { place } from './core/placement.ts'
import { ok, refuse } from './control.ts'
import type { ControlChannel } from './control.ts'
import { fsyncDir, renameDurable } from './fsutil.ts'
import { hashFile } from './hasher.ts'
import type { Logger } from './log.ts'
import type { MeshNode } from './mesh.ts'
import type { MembershipService } from './membership-service.ts'
import type { Claim, Store } from './store.ts'
import { KeyedLock } from './keyed-lock.ts'
import { Retrier } from './retrier.ts'

export interface IngestServiceInit {
  spoolDir: string
}

export interface ReadyFile {
  path: string
  name: string
  readiness: Readiness
  sidecarPaths?: string[]
}

export interface IngestCounters {
  accepted: number
  duplicates: number
  givenBack: number
  released: number
  rejectedReports: number
}

export class IngestService {
  readonly #store: Store
  readonly #node: MeshNode
  readonly #members: MembershipService
  readonly #control: ControlChannel
  readonly #log: Logger
  readonly #spoolDir: string
  readonly #retrier: Retrier
  /** Serialises changes to one file's record (receipts from owner and backup may arrive together). */
  readonly #locks = new KeyedLock()
  readonly #unplaced = new Set<string>()
  readonly counters: IngestCounters = { accepted: 0, duplicates: 0, givenBack: 0, released: 0, rejectedReports: 0 }

  constructor (components: { store: Store, node: MeshNode, members: MembershipService, control: ControlChannel, log: Logger }, init: IngestServiceInit) {
    this.#store = components.store
    this.#node = components.node
    this.#members = components.members
    this.#control = components.control
    this.#log = components.log
    this.#spoolDir = init.spoolDir
    this.#retrier = new Retrier(this.#log)
    this.#members.onChange(() => { this.#placeWaiting() })
  }

  get self (): string {
    return this.#node.peerId.toString()
  }

  stop (): void {
    this.#retrier.stop()
  }

  /** Claims a ready inbox file: intent log, rename into the spool, hash, record. Returns the root CID. */
  async claim (file: ReadyFile): Promise<string | undefined> {
    const id = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`
    const claim: Claim = { id, name: file.name, inboxPath: file.path, spoolPath: path.join(this.#spoolDir, id), readiness: file.readiness, claimedAt: new Date().toISOString() }
    if (file.sidecarPaths != null && file.sidecarPaths.length > 0) claim.sidecarPaths = file.sidecarPaths
    await this.#store.commit([this.#store.putClaim(claim)])
    try {
      await renameDurable(file.path, claim.spoolPath)
    } catch (err: any) {
      await this.#store.commit([this.#store.delClaim(id)])
      if (err.code === 'ENOENT') return undefined
      throw err
    }
    return await this.#accept(claim)
  }

  /** Hashes a claimed spool file and records it; gives it back to the inbox if it changed while we hashed it. */
  async #accept (claim: Claim): Promise<string | undefined> {
    const before = await fs.stat(claim.spoolPath)
    const manifest = await hashFile(claim.spoolPath)
    const after = await fs.stat(claim.spoolPath)
    if (after.size !== before.size || after.mtimeMs !== before.mtimeMs || after.size !== manifest.size) {
      // A writer still had the file open: hand it back under its name and try again later.
      this.#log.warn('file changed while being hashed: giving it back to the inbox', { file: claim.name })
      await renameDurable(claim.spoolPath, claim.inboxPath).catch((err) => { this.#log.error('cannot give a changed file back', { file: claim.name, err }) })
      await this.#store.commit([this.#store.delClaim(claim.id)])
      this.counters.givenBack++
      return undefined
    }
    const cid = manifest.root.toString()
    const existing = await this.#store.getIngest(cid) ?? await this.#store.getTombstone(cid)
    if (existing != null) {
      this.#log.warn('same content was already accepted: dropping the duplicate copy', { cid, file: claim.name, first: existing.name })
      await fs.rm(claim.spoolPath, { force: true })
      await fsyncDir(this.#spoolDir)
      await this.#store.commit([this.#store.delClaim(claim.id)])
      await this.#removeSidecar(claim)
      this.counters.duplicates++
      return cid
    }
    const rec = received({ cid, name: claim.name, size: manifest.size, spoolPath: claim.spoolPath, readiness: claim.readiness, now: new Date().toISOString() })
    await this.#store.commit([this.#store.delClaim(claim.id), this.#store.putIngest(rec), ...this.#store.blockIndexOps(cid, 'spool', claim.spoolPath, manifest.leaves, manifest.nodes)])
    await this.#removeSidecar(claim)
    this.counters.accepted++
    this.#log.info('file received', { cid, file: claim.name, bytes: manifest.size, readiness: claim.readiness })
    await this.#tryPlace(cid)
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
      return next
    })
    if (rec?.phase === 'placed') this.#drive(rec)
  }

  #placeWaiting (): void {
    for (const cid of this.#unplaced) this.#tryPlace(cid).catch((err) => { this.#log.error('placement failed', { cid, err }) })
  }

  /** Sends what a placed record still needs: assignments to holders without receipts, the announcement, release. */
  #drive (rec: IngestRecord): void {
    if (rec.phase !== 'placed' || rec.owner == null || rec.backup == null) return
    const announce: AnnounceMessage = { type: 'announce', v: 1, cid: rec.cid, name: rec.name, size: rec.size, owner: rec.owner, backup: rec.backup, epoch: rec.epoch }
    this.#node.services.pubsub.publish(FILES_TOPIC, encodeMessage(announce, GOSSIP_MESSAGE_BYTES_MAX)).catch((err) => { this.#log.debug('announce failed', { cid: rec.cid, err }) })
    for (const role of ['owner', 'backup'] as const) {
      if ((role === 'owner' ? rec.ownerStoredAt : rec.backupStoredAt) != null) continue
      const peer = role === 'owner' ? rec.owner : rec.backup
      this.#retrier.run(`assign:${rec.cid}:${role}`, async (signal) => {
        const current = await this.#store.getIngest(rec.cid)
        if (current == null || current.phase !== 'placed' || current.epoch !== rec.epoch) return
        await this.#control.request(peer, { type: 'assign', v: 1, cid: rec.cid, name: rec.name, size: rec.size, role, epoch: rec.epoch, sources: [this.self] }, { signal })
        this.#log.debug('holder accepted the assignment', { cid: rec.cid, peer, role })
      })
    }
    if (canRelease(rec)) this.#release(rec.cid)
  }

  /** A holder's receipt: record it durably, then release the spool copy once both are in. */
  async onReceipt (from: string, msg: ReceiptMessage): Promise<ControlReply> {
    return await this.#withLock(msg.cid, async () => {
      const rec = await this.#store.getIngest(msg.cid)
      if (rec == null || rec.phase === 'received') return refuse('unknown-file', 'no placed file with that CID here')
      const { rec: next, verdict } = receiptFrom(rec, from, msg.role, new Date().toISOString())
      if (verdict === 'not-holder') {
        this.counters.rejectedReports++
        this.#log.warn('receipt from a peer that is not the holder', { cid: msg.cid, peer: from, role: msg.role })
        return refuse('not-holder', `you are not this file's ${msg.role}`)
      }
      if (verdict === 'recorded') {
        await this.#store.commit([this.#store.putIngest(next)])
        this.#log.info('receipt recorded', { cid: msg.cid, peer: from, role: msg.role })
        this.#retrier.cancel(`assign:${msg.cid}:${msg.role}`)
      }
      if (canRelease(next)) queueMicrotask(() => { this.#release(next.cid) })
      return ok()
    })
  }

  /** The owner's processing report: recorded only from the owner of the current epoch. */
  async onProgress (from: string, msg: ProgressMessage): Promise<ControlReply> {
    return await this.#withLock(msg.cid, async () => {
      const rec = await this.#store.getIngest(msg.cid)
      if (rec == null || rec.phase === 'received') return refuse('unknown-file', 'no placed file with that CID here')
      const { rec: next, verdict } = progressFrom(rec, from, msg.epoch, msg.state, msg.attempt, new Date().toISOString(), msg.error)
      if (verdict === 'not-owner') {
        this.counters.rejectedReports++
        this.#log.warn('progress from a peer that is not the owner', { cid: msg.cid, peer: from })
        return refuse('not-owner', 'you are not this file\'s owner')
      }
      if (next !== rec) await this.#store.commit([this.#store.putIngest(next)])
      if (verdict === 'stale-epoch') this.#log.warn('completion from an old epoch: counted as a duplicate', { cid: msg.cid, peer: from, epoch: msg.epoch, current: rec.epoch })
      else if (verdict === 'recorded') this.#log.info(`file ${msg.state}`, { cid: msg.cid, peer: from, attempt: msg.attempt, err: msg.error })
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
      if (rec.phase === 'received') await this.#tryPlace(rec.cid)
      else if (rec.phase === 'placed') this.#drive(rec)
    }
  }
}

async function exists (p: string): Promise<boolean> {
  try {
    await fs.lstat(p)
    return true
  } catch {
    return false
  }
}
