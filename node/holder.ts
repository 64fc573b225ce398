/**
 * The holder side, on owner and backup nodes: accepts assignments from a file's coordinator, pulls the file's
 * blocks from its sources (verified against their CIDs, written at their offsets into a `.part` file), makes
 * it durable and sends the receipt; the owner then runs the processing command and reports the outcome.
 *
 * Durable steps, in order: assignment {sync} -> blocks verified and written -> fsync(file) -> rename -> fsync(dir)
 * -> stored + block index {sync} -> receipt. Processing: processing {sync} -> command -> processed {sync} ->
 * report -> (once the coordinator confirms the archive holds the file) unlink working copy. A backup also
 * takes archive copies handed off by a draining backup (`onReplicate`, node/replicate.ts). `reconcile()`
 * re-drives every record after a restart: a fetch starts over from a fresh `.part`, a receipt or report not
 * yet acknowledged is sent again, an interrupted command runs again (attempt + 1, so the command can tell
 * from FILEMESH_ATTEMPT), a kept working copy asks again whether the archive holds its file.
 *
 * Coordinator hand-off (node/core/takeover.ts): an owner learns the file's backup from its assignment and
 * copies its lease checks (on a re-run, or while the coordinator is unreachable) and outcome reports to it. It
 * accepts an assignment from that backup (a coordinator change at the same epoch, or a reassignment at a higher
 * one), and from a live backup member for a file it does not hold yet only at an epoch above 1 (a takeover's
 * reassignment is never a first placement). A coordinator answering 'moved' hands the owner to its backup.
 *
 * Swarm transfer (node/swarm.ts): if the assignment's sources name this node among the holders after the
 * coordinator, this node is holder k of n and pulls the leaves of its share (distinct-leaf ordinal ≡ k mod n)
 * from the coordinator and the others from the holders whose share they are; meanwhile its own written
 * leaves are served to them from the `.part` (LocalBlocks.inflight) until the stored copy is indexed.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import PQueue from 'p-queue'
import { peerIdFromString } from '@libp2p/peer-id'
import { CID } from 'multiformats/cid'
import type { AssignMessage, ControlReply, HolderRole, ProgressMessage, ReplicateMessage } from '../protocols/messages.ts'
import type { Role } from '../protocols/roles.ts'
import { parseCid, RAW_CODE } from '../protocols/cid-policy.ts'
import { resolveLeaves } from '../protocols/unixfs.ts'
import type { Leaf } from '../protocols/unixfs.ts'
import { assigned, coordinatorMoved, handoffAdopted, handoffAssigned, outcomeAcked, processingDone, processingFailed, processingRetry, processingStarted, receiptAcked, stored } from './core/lifecycle.ts'
import type { HolderRecord } from './core/lifecycle.ts'
import { ControlRequestError, ok, refuse } from './control.ts'
import type { ControlChannel } from './control.ts'
import type { Archive } from './archive.ts'
import type { BlockClient } from './block-client.ts'
import type { LocalBlocks } from './block-store.ts'
import type { InflightFetch } from './inflight-blocks.ts'
import { ownShare, swarmShare } from './swarm.ts'
import type { SwarmShare } from './swarm.ts'
import { ensureDir, errnoCode, freeBytes, fsyncDir, renameDurable, syncHandle, writeFully } from './fsutil.ts'
import type { Logger } from './log.ts'
import { backoffMs, killOrphanedCommand, runProcessingCommand } from './processor.ts'
import { KeyedLock } from './keyed-lock.ts'
import { Retrier, sleep } from './retrier.ts'
import { ThrottledLog } from './rate-limit.ts'
import type { Store } from './store.ts'

export interface HolderServiceComponents {
  store: Store
  control: ControlChannel
  client: BlockClient
  local: LocalBlocks
  log: Logger
  selfId: string
  /** True if `peerId` is a live member whose heartbeat carries the ingest role (the membership view). */
  isIngest: (peerId: string) => boolean
  /** True if `peerId` is a live member whose heartbeat carries the backup role: only such a peer may hand off archive copies. */
  isBackup?: (peerId: string) => boolean
}

export interface HolderCounters {
  /** Assignments refused: not from a live ingest member, not from the file's coordinator, bad CID or sources. */
  rejectedAssignments: number
  /** Assignments for a (file, role) already recorded at that epoch or a newer one: acknowledged, nothing changed. */
  repeatedAssignments: number
}

export interface HolderServiceInit {
  roles: Role[]
  /** Owner's working copies live here until processed. */
  workDir: string
  /** Backup's archive (required with the backup role). */
  archive?: Archive
  /** Shell command run for each owned file; undefined = nothing to run, the file counts as processed. */
  exec?: string
  execConcurrency?: number
  execAttemptsMax?: number
  execTimeoutMs?: number
  fetchConcurrency?: number
  /** Refuse new files, and give back files being fetched, when free space would fall below this. */
  minFreeBytes?: number
}

export const DEFAULT_EXEC_CONCURRENCY = 2
export const DEFAULT_EXEC_ATTEMPTS_MAX = 3
export const DEFAULT_EXEC_TIMEOUT_MS = 3_600_000
export const DEFAULT_FETCH_CONCURRENCY = 4
export const DEFAULT_MIN_FREE_BYTES = 1024 * 1024 * 1024
/** Coordinator answers that mean this node is no longer the file's holder for this epoch. */
const SUPERSEDED_CODES = new Set(['not-holder', 'not-owner', 'unknown-file', 'stale-epoch'])
/** How long the owner keeps trying to have the coordinator confirm its lease before running anyway. */
const LEASE_CHECK_TIMEOUT_MS = 10_000
const LEASE_CHECK_RETRY_MS = 500
/** One try of the lease check waits at most this long, so the backup is asked too before the check times out. */
const LEASE_CHECK_TRY_MS = 5_000
/** The coordinator's answer when the file's backup coordinates it now: follow the backup. */
const MOVED_CODE = 'moved'
/** A copy of a report to the backup waits at most this long: the coordinator's answer is what counts. */
const BACKUP_CC_TIMEOUT_MS = 3_000
/** Copies of an outcome report to the backup are tried this many times (the backup may be gone for good). */
const BACKUP_CC_ATTEMPTS_MAX = 8
/** The backup's refusals that mean our epoch is over. */
const CC_SUPERSEDED_CODES = new Set(['not-owner', 'stale-epoch'])
/** How often a processed owner asks whether the archive holds the file yet (doubling up to the max). */
const ARCHIVE_CHECK_BASE_MS = 1_000
const ARCHIVE_CHECK_MAX_MS = 30_000

function isSuperseded (err: unknown): err is ControlRequestError {
  return err instanceof ControlRequestError && SUPERSEDED_CODES.has(err.code ?? '')
}

function isMoved (err: unknown): err is ControlRequestError {
  return err instanceof ControlRequestError && err.code === MOVED_CODE
}

/** The backup to copy an owner's reports to, if it is another node than the coordinator and this one. */
function ccBackup (rec: HolderRecord, self: string): string | undefined {
  return rec.role === 'owner' && rec.backup != null && rec.backup !== rec.coordinator && rec.backup !== self ? rec.backup : undefined
}

export class HolderService {
  readonly #store: Store
  readonly #control: ControlChannel
  readonly #client: BlockClient
  readonly #local: LocalBlocks
  readonly #log: Logger
  readonly #self: string
  readonly #init: HolderServiceInit
  readonly #fetches: PQueue
  readonly #runs: PQueue
  readonly #retrier: Retrier
  readonly #active = new Set<string>()
  /** Every read-modify-write of a holder record runs under its key. */
  readonly #locks = new KeyedLock()
  /** Running processing commands by CID, so a superseded owner can stop its run at once. */
  readonly #runsByCid = new Map<string, AbortController>()
  #draining = false
  readonly #stop = new AbortController()
  readonly #isIngest: (peerId: string) => boolean
  readonly #isBackup: (peerId: string) => boolean
  /** Processed files whose working copy is kept until the coordinator confirms the archive holds them. */
  readonly #keptCopies = new Set<string>()
  readonly #throttled: ThrottledLog
  readonly counters: HolderCounters = { rejectedAssignments: 0, repeatedAssignments: 0 }

  constructor (components: HolderServiceComponents, init: HolderServiceInit) {
    this.#store = components.store
    this.#isIngest = components.isIngest
    this.#isBackup = components.isBackup ?? (() => false)
    this.#throttled = new ThrottledLog(components.log)
    this.#control = components.control
    this.#client = components.client
    this.#local = components.local
    this.#log = components.log
    this.#self = components.selfId
    this.#init = init
    this.#fetches = new PQueue({ concurrency: init.fetchConcurrency ?? DEFAULT_FETCH_CONCURRENCY })
    this.#runs = new PQueue({ concurrency: init.execConcurrency ?? DEFAULT_EXEC_CONCURRENCY })
    this.#retrier = new Retrier(this.#log)
  }

  get queued (): { fetching: number, processing: number } {
    return { fetching: this.#fetches.size + this.#fetches.pending, processing: this.#runs.size + this.#runs.pending }
  }

  async start (): Promise<void> {
    await ensureDir(path.join(this.#init.workDir, '.incoming'))
  }

  async stop (): Promise<void> {
    this.#stop.abort()
    this.#retrier.stop()
    this.#fetches.clear()
    this.#runs.clear()
  }

  /** A draining node takes no new files (a repeat of a known assignment is still acknowledged). */
  setDraining (draining: boolean): void {
    this.#draining = draining
  }

  /** True while nothing is being fetched or processed here. */
  get idle (): boolean {
    return this.#fetches.size + this.#fetches.pending + this.#runs.size + this.#runs.pending === 0
  }

  /**
   * A coordinator assigns us a file. Recorded durably before we say yes. Only a live member with the ingest
   * role may assign, and only a file's coordinator may reassign it (a higher epoch). The record is the
   * persistent de-duplication: a repeat (a retry, the gossip announcement, a replay long after gossipsub's
   * seen-cache or across a restart) with an epoch not above ours changes nothing and is acknowledged again;
   * a record past fetching never goes back to fetching.
   */
  async onAssign (from: string, msg: AssignMessage): Promise<ControlReply> {
    if (this.#draining && await this.#store.getHolder(msg.cid, msg.role) == null) return refuse('draining', 'this node is draining and takes no new files')
    const needed: Role = msg.role === 'owner' ? 'process' : 'backup'
    if (!this.#init.roles.includes(needed)) return refuse('wrong-role', `this node does not have the ${needed} role`)
    if (msg.role === 'backup' && this.#init.archive == null) return refuse('wrong-role', 'this node has no archive')
    // The file's backup coordinates it after a takeover (node/core/takeover.ts): it may assign the owner role.
    const fromBackup = msg.role === 'owner' && msg.backup === from && from !== this.#self && this.#isBackup(from)
    if (!this.#isIngest(from) && !fromBackup) return this.#reject(from, msg, 'not-coordinator', 'only a live ingest member may assign files')
    try {
      if (parseCid(msg.cid).toString() !== msg.cid) return this.#reject(from, msg, 'bad-cid', 'CID not in its canonical (base32) form')
      for (const s of msg.sources) peerIdFromString(s)
    } catch (err: any) {
      return this.#reject(from, msg, err?.name === 'CidRejectedError' ? 'bad-cid' : 'bad-message', String(err?.message ?? err))
    }
    if (await this.#store.getHolder(msg.cid, msg.role) == null) {
      const dir = msg.role === 'backup' ? (this.#init.archive as Archive).dir : this.#init.workDir
      const free = await freeBytes(dir)
      const minFree = this.#init.minFreeBytes ?? DEFAULT_MIN_FREE_BYTES
      if (free - msg.size < minFree) {
        this.#log.warn('refusing a file: disk too full', { cid: msg.cid, role: msg.role, bytes: msg.size, free, minFree })
        return refuse('disk-full', `${free} bytes free, ${msg.size} needed, ${minFree} kept free`)
      }
    }
    let repeated = false
    const rec = await this.#locks.run(`${msg.cid}/${msg.role}`, async () => {
      const existing = await this.#store.getHolder(msg.cid, msg.role)
      // A copy a draining backup handed to us, now assigned by a coordinator: it becomes that coordinator's
      // backup record and the receipt goes to it (the copy is kept; a fetch in progress goes on).
      if (existing?.handoffFrom != null && msg.role === 'backup') {
        const adopted = handoffAdopted(existing, from, msg.epoch)
        const next = adopted.state === 'fetching' ? { ...adopted, sources: [...new Set([...adopted.sources, from, ...msg.sources])] } : adopted
        await this.#store.commit([this.#store.putHolder(next)])
        return next
      }
      // Our recorded backup took over coordinating the file: follow it (a newer epoch is adopted).
      if (existing != null && msg.role === 'owner' && existing.backup === from && existing.coordinator !== from && msg.epoch >= existing.epoch) {
        const next = coordinatorMoved(existing, from, msg.epoch)
        await this.#store.commit([this.#store.putHolder(next)])
        return next
      }
      // The same assignment again: already recorded.
      if (existing != null && existing.epoch >= msg.epoch) {
        repeated = true
        return undefined
      }
      if (existing != null && existing.coordinator !== from) return 'not-coordinator' as const
      // A backup's first assignment of a file to us is a takeover's reassignment: never epoch 1.
      if (existing == null && !this.#isIngest(from) && msg.epoch < 2) return 'not-coordinator' as const
      if (existing != null && existing.state !== 'fetching') {
        // Reassigned to us under a newer epoch while we already hold the file: keep the copy and its state,
        // adopt the epoch, and report again (receipt, and the outcome if there is one) under it.
        const next: HolderRecord = { ...existing, epoch: msg.epoch, receiptAcked: false, outcomeAcked: existing.state === 'processed' || existing.state === 'failed' ? false : existing.outcomeAcked }
        await this.#store.commit([this.#store.putHolder(next)])
        return next
      }
      const sources = [...new Set([from, ...msg.sources])]
      const next = assigned({ cid: msg.cid, name: msg.name, size: msg.size, role: msg.role, epoch: msg.epoch, coordinator: from, sources, now: new Date().toISOString(), ...(msg.backup != null ? { backup: msg.backup } : {}) })
      await this.#store.commit([this.#store.putHolder(next)])
      return next
    })
    if (rec === 'not-coordinator') return this.#reject(from, msg, 'not-coordinator', 'only the file\'s coordinator may reassign it')
    if (repeated) this.counters.repeatedAssignments++
    if (rec != null) {
      this.#log.info('assigned', { cid: msg.cid, role: msg.role, peer: from, bytes: msg.size, epoch: msg.epoch, state: rec.state })
      this.#schedule(rec)
    }
    return ok()
  }

  /**
   * A draining backup hands us its archive copy of a file (ReplicateMessage). Only a live member with the
   * backup role may ask, and only for an archive copy: it cannot make this node own or process anything. The
   * record is created durably (as a hand-off copy: no receipt owed to anyone) and fetched like an assignment,
   * from the sender first. The answer is ok once the file is durable here, 'not-ready' while it is fetched;
   * the sender asks again until ok, so a restart of either side just repeats the question.
   */
  async onReplicate (from: string, msg: ReplicateMessage): Promise<ControlReply> {
    const what = { cid: msg.cid, role: 'backup' as const }
    if (!this.#init.roles.includes('backup') || this.#init.archive == null) return refuse('wrong-role', 'this node has no archive')
    if (from === this.#self || !this.#isBackup(from)) return this.#reject(from, what, 'not-backup', 'only a live backup member may hand off archive copies')
    try {
      if (parseCid(msg.cid).toString() !== msg.cid) return this.#reject(from, what, 'bad-cid', 'CID not in its canonical (base32) form')
      for (const s of msg.sources) peerIdFromString(s)
    } catch (err: any) {
      return this.#reject(from, what, err?.name === 'CidRejectedError' ? 'bad-cid' : 'bad-message', String(err?.message ?? err))
    }
    if (await this.#store.getHolder(msg.cid, 'backup') == null) {
      if (this.#draining) return refuse('draining', 'this node is draining and takes no new files')
      const free = await freeBytes((this.#init.archive).dir)
      const minFree = this.#init.minFreeBytes ?? DEFAULT_MIN_FREE_BYTES
      if (free - msg.size < minFree) {
        this.#log.warn('refusing an archive copy: disk too full', { cid: msg.cid, peer: from, bytes: msg.size, free, minFree })
        return refuse('disk-full', `${free} bytes free, ${msg.size} needed, ${minFree} kept free`)
      }
    }
    let created = false
    const rec = await this.#locks.run(`${msg.cid}/backup`, async () => {
      const existing = await this.#store.getHolder(msg.cid, 'backup')
      if (existing == null) {
        const sources = [...new Set([from, ...msg.sources])].filter((p) => p !== this.#self)
        const next = handoffAssigned({ cid: msg.cid, name: msg.name, size: msg.size, epoch: msg.epoch, from, sources, now: new Date().toISOString() })
        await this.#store.commit([this.#store.putHolder(next)])
        created = true
        return next
      }
      if (existing.state === 'fetching' && !existing.sources.includes(from)) {
        // Being fetched for its coordinator already: the sender is one more source (used from the next attempt on).
        const next: HolderRecord = { ...existing, sources: [...existing.sources, from] }
        await this.#store.commit([this.#store.putHolder(next)])
        return next
      }
      return existing
    })
    if (created) {
      this.#log.info('archive copy handed to us', { cid: msg.cid, peer: from, bytes: msg.size, name: msg.name })
      this.#schedule(rec)
    }
    if (rec.state === 'fetching') return refuse('not-ready', 'fetching the file')
    return ok()
  }

  /** Read-modify-write of this node's (cid, role) record under its lock (the archive hand-off records its steps with it). */
  async updateRecord (cid: string, role: HolderRole, fn: (r: HolderRecord) => HolderRecord | undefined): Promise<HolderRecord | undefined> {
    return await this.#update(cid, role, fn)
  }

  /** Processed files whose working copy is still kept because the archive does not hold them durably yet. */
  get keptWorkingCopies (): number {
    return this.#keptCopies.size
  }

  /** Counts and logs (throttled per peer) an assignment refused for its sender or content. */
  #reject (from: string, msg: { cid: string, role: HolderRole }, code: string, why: string): ControlReply {
    this.counters.rejectedAssignments++
    this.#throttled.warn(from, 'assignment refused', { cid: msg.cid.slice(0, 128), role: msg.role, code, err: why })
    return refuse(code, why)
  }

  /** Puts a record on the right queue for its state. */
  #schedule (rec: HolderRecord): void {
    const key = `${rec.cid}/${rec.role}`
    switch (rec.state) {
      case 'fetching':
        if (this.#active.has(key)) return
        this.#active.add(key)
        this.#fetches.add(async () => { await this.#fetch(rec) })
          .catch((err) => { this.#log.error('fetch task failed', { cid: rec.cid, err }) })
          .finally(() => { this.#active.delete(key) })
        return
      case 'stored':
      case 'processing':
        // A hand-off copy owes no receipt: the backup that handed it over asks until we say it is durable.
        if (!rec.receiptAcked && rec.handoffFrom == null) this.#sendReceipt(rec)
        if (rec.role === 'owner') this.#enqueueRun(rec)
        return
      case 'processed':
        if (!rec.receiptAcked) this.#sendReceipt(rec)
        // The working copy goes once the outcome is acknowledged and the archive holds the file (a crash before
        // that leaves the copy: ask again; a copy already gone only leaves its index entries to drop).
        if (!rec.outcomeAcked) this.#sendOutcome(rec)
        else if (rec.role === 'owner' && rec.path != null) {
          const workPath = rec.path
          fs.access(workPath).then(() => { this.#releaseWorkingCopy(rec) }, async () => { await this.#removeWorkingCopy(rec.cid, workPath) })
            .catch((err) => { this.#log.error('cannot remove working copy', { cid: rec.cid, err }) })
        }
        return
      case 'failed':
        if (!rec.receiptAcked) this.#sendReceipt(rec)
        if (!rec.outcomeAcked) this.#sendOutcome(rec)
    }
  }

  /**
   * Fetches the file until it is stored (or given up). Its leaves are registered with LocalBlocks.inflight
   * while they arrive, so the file's other holders can pull them from here (swarm transfer: the share rule is
   * in node/swarm.ts, derived from the assignment's sources), until the stored copy is indexed.
   */
  async #fetch (rec: HolderRecord): Promise<void> {
    const inflight = this.#local.inflight.begin()
    try {
      await this.#fetchAttempts(rec, inflight)
    } finally {
      inflight.end()
    }
  }

  async #fetchAttempts (rec: HolderRecord, inflight: InflightFetch): Promise<void> {
    const signal = this.#stop.signal
    const root = CID.parse(rec.cid)
    const sources = rec.sources.filter((s) => s !== this.#self).map((s) => peerIdFromString(s))
    const swarm = swarmShare(rec.sources, this.#self, rec.coordinator)
    const partPath = rec.role === 'backup' ? (this.#init.archive as Archive).incomingPath(rec.cid) : path.join(this.#init.workDir, '.incoming', `${rec.cid}.part`)
    const started = performance.now()
    for (let attempt = 1; !signal.aborted; attempt++) {
      try {
        // A file of one block (raw root, up to 1 MiB) is all fetched by resolving it: keep those bytes, not fetch them twice.
        const known = new Map<string, Uint8Array>()
        const { leaves, nodes, size } = await resolveLeaves(root, async (cid) => {
          const bytes = await this.#getNode(cid, sources, signal)
          if (cid.code === RAW_CODE) known.set(cid.toString(), bytes)
          return bytes
        })
        if (size !== rec.size) this.#log.warn('file size differs from the assignment', { cid: rec.cid, bytes: size, expected: rec.size })
        const bySource = await this.#fetchInto(partPath, leaves, sources, { swarm, inflight, signal, known })
        const finalPath = await this.#commitFile(rec, partPath)
        const index = this.#store.blockIndexOps(rec.cid, rec.role, finalPath, leaves, nodes)
        const next = await this.#locks.run(`${rec.cid}/${rec.role}`, async () => {
          const current = await this.#store.getHolder(rec.cid, rec.role) ?? rec
          const done = stored(current, finalPath, new Date().toISOString())
          await this.#store.commit([this.#store.putHolder(done), ...index])
          return done
        })
        const ms = Math.round(performance.now() - started)
        const fromCoordinator = bySource[rec.coordinator] ?? 0
        const fromPeers = Object.values(bySource).reduce((a, b) => a + b, 0) - fromCoordinator
        this.#log.info('stored durably', { cid: rec.cid, role: rec.role, file: finalPath, bytes: size, ms, MBps: ms > 0 ? +(size / 1e3 / ms).toFixed(1) : undefined, fromCoordinator, fromPeers, share: swarm != null ? `${swarm.index + 1}/${swarm.holders.length}` : undefined })
        this.#schedule(next)
        return
      } catch (err) {
        if (signal.aborted) return
        await fs.rm(partPath, { force: true }).catch(() => {})
        if (errnoCode(err) === 'ENOSPC' || errnoCode(err) === 'EDQUOT') {
          // Disk full: no receipt, the partial copy is gone; give the file back so the next candidate takes it.
          await this.#decline(rec, 'disk full')
          return
        }
        // Every source failed more than once: maybe the file went to another holder while we were away.
        if (attempt >= 2) {
          try {
            await this.#control.request(rec.coordinator, { type: 'lease', v: 1, cid: rec.cid, role: rec.role, epoch: rec.epoch }, { signal })
          } catch (leaseErr) {
            if (isSuperseded(leaseErr)) {
              await this.#superseded(rec.cid, rec.role, leaseErr.message)
              return
            }
          }
        }
        const delayMs = backoffMs(attempt, { baseMs: 500, maxMs: 30_000 })
        this.#log.warn('fetch failed: will retry', { cid: rec.cid, role: rec.role, attempt, retryInMs: delayMs, err })
        await sleep(delayMs, signal)
      }
    }
  }

  async #getNode (cid: CID, sources: ReturnType<typeof peerIdFromString>[], signal: AbortSignal): Promise<Uint8Array> {
    const local = await this.#local.getBlock(cid)
    if (local != null) return local
    let lastErr: unknown = new Error(`no source for ${cid.toString()}`)
    for (const peer of sources) {
      try {
        return await this.#client.getBlock(peer, cid, { signal })
      } catch (err) {
        lastErr = err
      }
    }
    throw lastErr
  }

  /**
   * Writes every leaf into a fresh part file (from peers, or from this node's own copy), then fsyncs it.
   * Leaves fetched from peers are registered with `inflight` as they are written, and dropped from it before
   * this returns or throws (before the part file is renamed or deleted). Returns the bytes taken from each peer.
   */
  async #fetchInto (partPath: string, leaves: Leaf[], sources: ReturnType<typeof peerIdFromString>[], options: { swarm: SwarmShare | undefined, inflight: InflightFetch, signal: AbortSignal, known?: Map<string, Uint8Array> }): Promise<Record<string, number>> {
    const { swarm, inflight, signal } = options
    let bySource: Record<string, number> = {}
    await fs.rm(partPath, { force: true })
    const fh = await fs.open(partPath, 'wx', 0o644)
    try {
      const total = leaves.reduce((n, l) => n + l.length, 0)
      if (total > 0) await fh.truncate(total)
      const remote: Leaf[] = []
      for (const leaf of leaves) {
        // Verified already: by LocalBlocks, or by resolveLeaves (`known`).
        const bytes = sources.length === 0 || leaf.length === 0 ? await this.#local.getBlock(leaf.cid) : options.known?.get(leaf.cid.toString())
        if (bytes != null) await writeFully(fh, bytes, leaf.offset)
        else remote.push(leaf)
      }
      if (remote.length > 0) {
        if (sources.length === 0) throw new Error('blocks missing locally and no other source')
        // Peers' requests wait only for what this node pulls from the landing node itself (node/swarm.ts).
        inflight.expect(partPath, swarm != null ? ownShare(swarm, remote) : remote)
        const result = await this.#client.fetchLeavesToFile({
          leaves: remote, sources, fileHandle: fh, signal, onWritten: (leaf) => { inflight.written(leaf) }, ...(swarm != null ? { swarm } : {})
        })
        bySource = result.bytesBySource
      }
      await syncHandle(fh, partPath) // an fsync error is fatal: the daemon exits rather than trust a retry
    } finally {
      inflight.moving()
      await fh.close()
    }
    return bySource
  }

  /** Moves a complete, fsynced part file into place: the owner's work dir or the backup's archive. */
  async #commitFile (rec: HolderRecord, partPath: string): Promise<string> {
    if (rec.role === 'backup') {
      const { path: finalPath } = await (this.#init.archive as Archive).commit(partPath, rec.name, rec.cid)
      return finalPath
    }
    const finalPath = path.join(this.#init.workDir, rec.cid)
    await renameDurable(partPath, finalPath)
    return finalPath
  }

  #sendReceipt (rec: HolderRecord): void {
    this.#retrier.run(`receipt:${rec.cid}:${rec.role}`, async (signal) => {
      // Re-read: the coordinator may have changed (moved to the file's backup) since the receipt was due.
      const current = await this.#store.getHolder(rec.cid, rec.role) ?? rec
      try {
        await this.#control.request(current.coordinator, { type: 'receipt', v: 1, cid: rec.cid, role: rec.role, epoch: current.epoch }, { signal })
      } catch (err) {
        // The backup coordinates the file now: the next attempt sends the receipt to it.
        if (isMoved(err) && await this.#followBackup(rec.cid, rec.role) != null) throw err
        if (!isSuperseded(err)) throw err
        await this.#superseded(rec.cid, rec.role, err.message)
        return
      }
      await this.#update(rec.cid, rec.role, (r) => r.receiptAcked ? undefined : receiptAcked(r))
      this.#log.debug('receipt acknowledged', { cid: rec.cid, role: rec.role, peer: current.coordinator })
    })
  }

  #sendOutcome (rec: HolderRecord): void {
    this.#retrier.run(`outcome:${rec.cid}`, async (signal) => {
      const current = await this.#store.getHolder(rec.cid, 'owner')
      if (current == null || (current.state !== 'processed' && current.state !== 'failed') || current.outcomeAcked) return
      const msg = { type: 'progress' as const, v: 1 as const, cid: rec.cid, epoch: current.epoch, state: current.state, attempt: current.attempt, ...(current.lastError != null ? { error: current.lastError.slice(0, 2000) } : {}) }
      const cc = ccBackup(current, this.#self)
      if (cc != null) this.#copyOutcome(cc, msg)
      try {
        await this.#control.request(current.coordinator, msg, { signal })
      } catch (err) {
        // The backup coordinates the file now: report to it (the next attempt reads the moved record).
        if (isMoved(err) && await this.#followBackup(rec.cid, 'owner') != null) throw err
        if (!isSuperseded(err)) throw err
        // Another owner holds the current epoch: our run was a duplicate, already counted by the coordinator.
        this.#log.warn('outcome refused: another owner has the current epoch', { cid: rec.cid, peer: current.coordinator, epoch: current.epoch, err: err.message })
      }
      if (current.state === 'processed') this.#releaseWorkingCopy(current)
      await this.#update(rec.cid, 'owner', (r) => r.outcomeAcked ? undefined : outcomeAcked(r))
    })
  }

  /**
   * Copies an outcome report to the file's backup (its standby coordinator must know the file is done), a few
   * times at most: the coordinator's answer is what counts, and the backup may be gone for good.
   */
  #copyOutcome (backup: string, msg: ProgressMessage): void {
    this.#retrier.run(`outcome-cc:${msg.cid}:${msg.epoch}:${msg.state}`, async (signal) => {
      for (let attempt = 1; attempt <= BACKUP_CC_ATTEMPTS_MAX && !signal.aborted; attempt++) {
        try {
          await this.#control.request(backup, msg, { signal: AbortSignal.any([signal, AbortSignal.timeout(BACKUP_CC_TIMEOUT_MS)]) })
          return
        } catch (err) {
          if (err instanceof ControlRequestError && err.code != null) return // answered: recorded or not its business
          await sleep(backoffMs(attempt, { baseMs: 500, maxMs: 15_000 }), signal)
        }
      }
    })
  }

  /**
   * Asks the file's backup (the standby coordinator) whether our epoch is still current: 'superseded' if it
   * says another owner has the file, 'confirmed' if it agrees, 'unknown' if it has no say or cannot be reached.
   */
  async #askBackup (rec: HolderRecord, signal: AbortSignal): Promise<'confirmed' | 'superseded' | 'unknown'> {
    const backup = ccBackup(rec, this.#self)
    if (backup == null) return 'unknown'
    try {
      await this.#control.request(backup, { type: 'progress', v: 1, cid: rec.cid, epoch: rec.epoch, state: 'processing', attempt: rec.attempt }, { signal: AbortSignal.any([signal, AbortSignal.timeout(BACKUP_CC_TIMEOUT_MS)]) })
      return 'confirmed'
    } catch (err) {
      return err instanceof ControlRequestError && CC_SUPERSEDED_CODES.has(err.code ?? '') ? 'superseded' : 'unknown'
    }
  }

  /** The coordinator answered 'moved': the file's backup coordinates it now; report to it from now on ({sync}). */
  async #followBackup (cid: string, role: HolderRole): Promise<HolderRecord | undefined> {
    const next = await this.#locks.run(`${cid}/${role}`, async () => {
      const current = await this.#store.getHolder(cid, role)
      if (current?.backup == null || current.backup === current.coordinator) return undefined
      const moved = coordinatorMoved(current, current.backup, current.epoch)
      await this.#store.commit([this.#store.putHolder(moved)])
      return moved
    })
    if (next != null) this.#log.warn('the coordinator says the file\'s backup coordinates it now: following it', { cid, peer: next.coordinator })
    return next
  }

  /** Applies `fn` to the current record under its lock and commits the result; undefined from `fn` = no change. */
  async #update (cid: string, role: HolderRole, fn: (r: HolderRecord) => HolderRecord | undefined): Promise<HolderRecord | undefined> {
    return await this.#locks.run(`${cid}/${role}`, async () => {
      const current = await this.#store.getHolder(cid, role)
      if (current == null) return undefined
      const next = fn(current)
      if (next == null) return current
      await this.#store.commit([this.#store.putHolder(next)])
      return next
    })
  }

  #enqueueRun (rec: HolderRecord): void {
    const key = `run:${rec.cid}`
    if (this.#active.has(key)) return
    this.#active.add(key)
    this.#runs.add(async () => { await this.#process(rec.cid) })
      .catch((err) => { this.#log.error('processing task failed', { cid: rec.cid, err }) })
      .finally(() => { this.#active.delete(key) })
  }

  /** Runs the processing command under the current epoch, retrying with backoff up to execAttemptsMax. */
  async #process (cid: string): Promise<void> {
    const signal = this.#stop.signal
    const attemptsMax = this.#init.execAttemptsMax ?? DEFAULT_EXEC_ATTEMPTS_MAX
    while (!signal.aborted) {
      const rec = await this.#update(cid, 'owner', (r) => r.state === 'stored' || r.state === 'processing' ? processingStarted(r) : undefined)
      if (rec == null || rec.state !== 'processing' || rec.path == null) return
      const lease = await this.#checkLease(rec, signal)
      if (lease === 'superseded' || signal.aborted) return
      const run = new AbortController()
      this.#runsByCid.set(cid, run)
      const runSignal = AbortSignal.any([signal, run.signal])
      const result = this.#init.exec == null
        ? { outcome: 'ok' as const, exitCode: 0, signal: null, durationMs: 0 }
        : await runProcessingCommand({ command: this.#init.exec, path: rec.path, cid, name: rec.name, size: rec.size, epoch: rec.epoch, attempt: rec.attempt }, {
          timeoutMs: this.#init.execTimeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS,
          signal: runSignal,
          log: this.#log.child('exec', { cid }),
          // Remember the command's process group: if this daemon is killed, the next start kills the orphan.
          onSpawn: (pid) => { fs.writeFile(this.#pidFile(cid), `${pid}\n`).catch(() => {}) }
        })
      await fs.rm(this.#pidFile(cid), { force: true })
      this.#runsByCid.delete(cid)
      if (runSignal.aborted) return
      if (result.outcome === 'ok') {
        const done = await this.#update(cid, 'owner', (r) => processingDone(r, new Date().toISOString()))
        this.#log.info('processed', { cid, attempt: rec.attempt, ms: result.durationMs })
        // The working copy stays until the coordinator confirms the archive holds the file (#releaseWorkingCopy,
        // once the outcome is acknowledged): if the backup was lost, the next backup fetches it from here.
        if (done != null) this.#sendOutcome(done)
        return
      }
      const error = result.error ?? `exit code ${String(result.exitCode)}${result.signal != null ? ` signal ${result.signal}` : ''}`
      if (rec.attempt >= attemptsMax) {
        const failed = await this.#update(cid, 'owner', (r) => processingFailed(r, error))
        this.#log.error('processing failed for good: the working copy is kept', { cid, attempt: rec.attempt, err: error, file: rec.path })
        if (failed != null) this.#sendOutcome(failed)
        return
      }
      await this.#update(cid, 'owner', (r) => processingRetry(r, error))
      const delayMs = backoffMs(rec.attempt, {})
      this.#log.warn('processing failed: will retry', { cid, attempt: rec.attempt, retryInMs: delayMs, err: error })
      await sleep(delayMs, signal)
    }
  }

  /**
   * The coordinator gave this file to another holder (we were gone too long, or refused): an owner drops its
   * record and working copy; a backup keeps its archive copy (a valid, verified copy) and stops reporting.
   */
  async #superseded (cid: string, role: HolderRole, why: string): Promise<void> {
    this.#log.warn('superseded: another holder has this file now', { cid, role, err: why })
    if (role === 'owner') this.#runsByCid.get(cid)?.abort()
    if (role === 'backup') {
      const current = await this.#store.getHolder(cid, role)
      if (current != null && current.state !== 'fetching') {
        await this.#update(cid, role, (r) => r.state !== 'fetching' && !r.receiptAcked ? receiptAcked(r) : undefined)
        return
      }
    }
    const rec = await this.#locks.run(`${cid}/${role}`, async () => {
      const current = await this.#store.getHolder(cid, role)
      if (current != null) await this.#store.commit([this.#store.delHolder(cid, role), ...await this.#store.dropBlockIndexOps(cid, role)])
      return current
    })
    if (rec?.path != null) {
      await fs.rm(rec.path, { force: true })
      await fsyncDir(path.dirname(rec.path))
    }
  }

  /** Gives the file back to its coordinator (until it acknowledges), then forgets it. */
  async #decline (rec: HolderRecord, reason: string): Promise<void> {
    this.#log.warn('giving the file back to its coordinator', { cid: rec.cid, role: rec.role, reason })
    this.#retrier.run(`decline:${rec.cid}:${rec.role}`, async (signal) => {
      // A hand-off copy has no coordinator to give it back to: the backup handing it off chooses another.
      if (rec.handoffFrom == null) {
        try {
          await this.#control.request(rec.coordinator, { type: 'decline', v: 1, cid: rec.cid, role: rec.role, epoch: rec.epoch, reason }, { signal })
        } catch (err) {
          if (!isSuperseded(err)) throw err
        }
      }
      await this.#locks.run(`${rec.cid}/${rec.role}`, async () => {
        const current = await this.#store.getHolder(rec.cid, rec.role)
        if (current?.state === 'fetching') await this.#store.commit([this.#store.delHolder(rec.cid, rec.role)])
      })
    })
  }

  /**
   * Deletes a processed file's working copy once its coordinator confirms the archive holds the file durably
   * (a recorded receipt from a live backup). Until then the copy stays and is served: if the backup was lost,
   * the coordinator's new backup fetches the file from here. A refusal other than 'not-archived' (the
   * coordinator does not know the file or us) keeps the copy for good: nothing is deleted unconfirmed.
   */
  #releaseWorkingCopy (rec: HolderRecord): void {
    const workPath = rec.path
    if (rec.role !== 'owner' || workPath == null) return
    this.#keptCopies.add(rec.cid)
    let waits = 0
    this.#retrier.run(`working-copy:${rec.cid}`, async (signal) => {
      let coordinator = (await this.#store.getHolder(rec.cid, 'owner'))?.coordinator ?? rec.coordinator
      while (!signal.aborted) {
        try {
          await this.#control.request(coordinator, { type: 'archived', v: 1, cid: rec.cid, epoch: rec.epoch }, { signal })
          break
        } catch (err) {
          if (!(err instanceof ControlRequestError) || err.code == null) throw err
          const moved = isMoved(err) ? await this.#followBackup(rec.cid, 'owner') : undefined
          if (moved != null) {
            coordinator = moved.coordinator // the backup coordinates the file now (and holds the archive copy)
            continue
          }
          if (err.code !== 'not-archived') {
            this.#log.warn('the coordinator cannot confirm the archive holds this file: the working copy is kept', { cid: rec.cid, peer: rec.coordinator, file: workPath, code: err.code, err: err.message })
            return
          }
          // Usual for a moment (processing finished before the backup's receipt); worth a line when it lasts.
          this.#log[++waits === 4 ? 'info' : 'debug']('keeping the working copy until the archive holds the file', { cid: rec.cid, peer: rec.coordinator, waits, err: err.message })
          await sleep(backoffMs(waits, { baseMs: ARCHIVE_CHECK_BASE_MS, maxMs: ARCHIVE_CHECK_MAX_MS }), signal)
        }
      }
      if (signal.aborted) return
      const current = await this.#store.getHolder(rec.cid, 'owner')
      if (current?.state !== 'processed' || current.path !== workPath) return
      await this.#removeWorkingCopy(rec.cid, workPath)
      this.#keptCopies.delete(rec.cid)
      this.#log.debug('working copy removed: the archive holds the file', { cid: rec.cid })
    })
  }

  async #removeWorkingCopy (cid: string, workPath: string): Promise<void> {
    await this.#store.commit(await this.#store.dropBlockIndexOps(cid, 'owner'))
    await fs.rm(workPath, { force: true })
    await fsyncDir(path.dirname(workPath))
  }

  /**
   * Lease check before a run: the coordinator confirms this epoch is current. If it says another owner took
   * over, the file is given up. If it cannot be reached (it may be down, or we just started and know no
   * address for it yet), keep asking for a while, then run anyway: a late completion of an old epoch is
   * fenced off and counted by the coordinator.
   */
  async #checkLease (rec: HolderRecord, signal: AbortSignal): Promise<'confirmed' | 'unconfirmed' | 'superseded'> {
    const deadline = performance.now() + LEASE_CHECK_TIMEOUT_MS
    let lastErr: unknown
    // A re-run (after a crash, maybe a long absence) asks the backup first: it may have taken over and moved the
    // file on while the ingest node is gone for good. So does every try after the coordinator could not be reached.
    let askBackup = rec.attempt > 1
    while (!signal.aborted && performance.now() < deadline) {
      const backup = askBackup ? await this.#askBackup(rec, signal) : 'unknown'
      if (backup === 'superseded') {
        await this.#superseded(rec.cid, 'owner', 'the file\'s backup has a newer epoch')
        return 'superseded'
      }
      try {
        const tryMs = Math.max(1, Math.min(LEASE_CHECK_TRY_MS, Math.ceil(deadline - performance.now())))
        await this.#control.request(rec.coordinator, { type: 'progress', v: 1, cid: rec.cid, epoch: rec.epoch, state: 'processing', attempt: rec.attempt }, { signal: AbortSignal.any([signal, AbortSignal.timeout(tryMs)]) })
        return 'confirmed'
      } catch (err) {
        if (isSuperseded(err)) {
          await this.#superseded(rec.cid, 'owner', err.message)
          return 'superseded'
        }
        if (isMoved(err)) {
          const moved = await this.#followBackup(rec.cid, 'owner')
          if (moved != null) { rec = moved; continue }
        }
        lastErr = err
        // The coordinator is unreachable (the ingest node may be gone): the backup, standing by, may answer.
        if (backup === 'confirmed') return 'confirmed'
        askBackup = true
        await sleep(LEASE_CHECK_RETRY_MS, signal)
      }
    }
    if (!signal.aborted) this.#log.warn('coordinator unreachable for the lease check: processing anyway', { cid: rec.cid, peer: rec.coordinator, err: lastErr })
    return 'unconfirmed'
  }

  #pidFile (cid: string): string {
    return path.join(this.#init.workDir, '.incoming', `${cid}.pid`)
  }

  /** Re-drives every record after a start; first kills processing commands orphaned by a crash of this daemon. */
  async reconcile (): Promise<void> {
    for await (const rec of this.#store.holderRecords()) {
      if (rec.role === 'owner' && rec.state === 'processing') {
        const pid = Number.parseInt(await fs.readFile(this.#pidFile(rec.cid), 'utf8').catch(() => ''), 10)
        if (Number.isSafeInteger(pid) && pid > 1 && await killOrphanedCommand(pid, rec.cid)) {
          this.#log.warn('killed a processing command left running by a crash; it will run again', { cid: rec.cid, pid })
        }
        await fs.rm(this.#pidFile(rec.cid), { force: true })
      }
      this.#schedule(rec)
    }
  }
}
