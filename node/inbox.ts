/**
 * The inbox watcher: decides when a file dropped into the inbox directory is complete and hands it to the
 * claimer exactly once. Its parts: the readiness rules (node/inbox-rules.ts, pure), the fs.watch half
 * (node/inbox-watch.ts), the table of what is in the inbox (node/inbox-entries.ts), the open-writer gate
 * (node/inbox-writers.ts), sidecars (node/inbox-sidecar.ts) and the ready queue (node/inbox-delivery.ts).
 *
 * Why it is built this way (DESIGN.md §6, notes/reliability.md §2): senders never say when a file is done,
 * and `fs.watch` drops events silently when its queue overflows. So a periodic full rescan of the one
 * directory is the source of truth; a watch event makes the watcher look at the name it names at once
 * (one lstat, not a rescan of the whole backlog), which is what lets a file that arrived by rename be
 * claimed within milliseconds. Passes never overlap: each one stats the names it looks at, waits for the
 * watch events queued meanwhile (`eventBarrier`), then applies the rules to the entries it touched (a full
 * rescan: to all), batching the open-writer checks into one /proc scan. Entries that must be looked at
 * again later (settle or quiet periods, retries, a writer scan not yet due) carry a due time.
 */

import fs from 'node:fs/promises'
import path from 'node:path'
import type { Dirent } from 'node:fs'
import { createLogger } from './log.ts'
import { scanOpenWriters, identityKey } from './open-writers.ts'
import { eventBarrier, fingerprintOf, fpKey, isIgnoredName, isSidecarName, judge, SIDECAR_SUFFIXES, stableMs } from './inbox-rules.ts'
import type { FileFingerprint, MonotonicClock, Readiness } from './inbox-rules.ts'
import { checkSidecars, SidecarHasher } from './inbox-sidecar.ts'
import { TempInodes, TEMP_INODES_MAX, trackTemp } from './inbox-evidence.ts'
import { InboxEntries, byMtime, isWaiting } from './inbox-entries.ts'
import type { Entry } from './inbox-entries.ts'
import { InboxEvents, INCOMING_DIR } from './inbox-watch.ts'
import { DEFAULT_OPEN_WRITER_SCAN_GAP_MS, WriterGate } from './inbox-writers.ts'
import type { ScanOpenWriters, WriterCheckState } from './inbox-writers.ts'
import { DeliveryQueue } from './inbox-delivery.ts'

export { isIgnoredName, isSidecarName } from './inbox-rules.ts'
export type { FileFingerprint, MonotonicClock, Readiness } from './inbox-rules.ts'

export const DEFAULT_RESCAN_INTERVAL_MS = 2_000
export const DEFAULT_SETTLE_MS = 200
export const DEFAULT_QUIET_MS = 30_000
/** Delay of the full rescan asked for by a watch event that names no file. */
export const DEFAULT_WATCH_DEBOUNCE_MS = 100
/** Ready files waiting for `onReady`; more stay pending in the inbox until the queue is half empty. */
export const DEFAULT_READY_QUEUE_MAX = 256
/** `onReady` calls in flight at once (never two for the same name). */
export const DEFAULT_DELIVERY_CONCURRENCY = 8
export const DEFAULT_RETRY_BACKOFF_MIN_MS = 1_000
export const DEFAULT_RETRY_BACKOFF_MAX_MS = 60_000
/** Concurrent lstat calls during a pass. */
const STAT_CONCURRENCY = 32

export interface ReadyFile {
  path: string
  name: string
  size: number
  /** Inode as a number (exact below 2^53); `fingerprint.ino` is exact. */
  ino: number
  mtimeMs: number
  readiness: Readiness
  /** The sidecar that proved completeness (readiness 'sidecar'; the .sha256 one when both exist). */
  sidecarPath?: string
  /** Every sidecar present for this file, whatever the readiness: the claimer removes them. */
  sidecarPaths: string[]
  fingerprint: FileFingerprint
}

export interface InboxWatcherInit {
  /** The inbox directory (watched alone, not recursively). Required. */
  dir: string
  /** Takes the file away (renames it into the spool). Throwing means "try again later". */
  onReady: (file: ReadyFile, options: { signal: AbortSignal }) => Promise<void>
  rescanIntervalMs?: number
  settleMs?: number
  quietMs?: number
  watchDebounceMs?: number
  readyQueueMax?: number
  /** `onReady` calls in flight at once (default DEFAULT_DELIVERY_CONCURRENCY; 1 = one at a time). */
  deliveryConcurrency?: number
  retryBackoffMinMs?: number
  retryBackoffMaxMs?: number
  openWriterScanGapMs?: number
  /** Use `fs.watch` (default true). Without it, rescans alone find every file, a rescan interval later. */
  watch?: boolean
  /** Monotonic clock for settle/quiet periods (default `performance.now()`). */
  clock?: MonotonicClock
  /** Open-writer scanner (default /proc, see open-writers.ts). */
  scanOpenWriters?: ScanOpenWriters
}

export interface InboxStats {
  /** Full rescans completed. */
  scans: number
  /** Passes over the names named by watch events or due again (no directory listing). */
  quickPasses: number
  lastScanMs: number
  /** (name, inode) pairs currently tracked: every regular file in the inbox, delivered or not. */
  tracked: number
  watchEvents: number
  watcherErrors: number
  /** Files in the inbox not yet ready. */
  pending: number
  /** Ready files waiting for or inside `onReady`. */
  queued: number
  delivered: number
  deliveryFailures: number
  readyRename: number
  readySidecar: number
  readyQuiet: number
  /** Files declared ready by the quiet rule alone (= readyQuiet). */
  unverifiedCompleteness: number
  sidecarMismatches: number
  tempInodesTracked: number
  openWriterScans: number
  openWriterCheck: WriterCheckState
}

/** Thrown by `start()` when the inbox directory cannot be listed. */
export class InboxUnavailableError extends Error {
  override name = 'InboxUnavailableError'
}

async function mapLimit<T> (items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++] as T)
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}

export class InboxWatcher {
  readonly #dir: string
  readonly #onReady: InboxWatcherInit['onReady']
  readonly #rescanIntervalMs: number
  readonly #settleMs: number
  readonly #quietMs: number
  readonly #retryBackoffMinMs: number
  readonly #retryBackoffMaxMs: number
  readonly #clock: MonotonicClock
  readonly #log = createLogger('inbox')
  readonly #abort = new AbortController()
  readonly #temps = new TempInodes()
  readonly #entries: InboxEntries
  readonly #events?: InboxEvents
  readonly #writers: WriterGate
  readonly #hasher: SidecarHasher<Entry>
  readonly #queue: DeliveryQueue<Entry>
  /** Sidecar names present in the inbox (from the last full listing, kept current by watch events). */
  readonly #sidecars = new Set<string>()

  #started = false
  #stopped = false
  #dirErrorCode?: string
  /** Work for the pass loop besides what events named: a full rescan, entries due again. */
  #fullWanted = false
  #dueWanted = false
  #passing?: Promise<void>
  #fullTimer?: ReturnType<typeof setTimeout>
  #fullDueAt = Infinity
  #dueTimer?: ReturnType<typeof setTimeout>
  #dueTimerAt = Infinity
  readonly #counters = { scans: 0, quickPasses: 0, delivered: 0, deliveryFailures: 0, readyRename: 0, readySidecar: 0, readyQuiet: 0, sidecarMismatches: 0, lastScanMs: 0 }

  constructor (init: InboxWatcherInit) {
    this.#dir = path.resolve(init.dir)
    this.#onReady = init.onReady
    this.#rescanIntervalMs = init.rescanIntervalMs ?? DEFAULT_RESCAN_INTERVAL_MS
    this.#settleMs = init.settleMs ?? DEFAULT_SETTLE_MS
    this.#quietMs = init.quietMs ?? DEFAULT_QUIET_MS
    this.#retryBackoffMinMs = init.retryBackoffMinMs ?? DEFAULT_RETRY_BACKOFF_MIN_MS
    this.#retryBackoffMaxMs = init.retryBackoffMaxMs ?? DEFAULT_RETRY_BACKOFF_MAX_MS
    this.#clock = init.clock ?? { nowMs: () => performance.now() }
    this.#entries = new InboxEntries(this.#dir, this.#clock, this.#temps)
    if (init.watch ?? true) {
      this.#events = new InboxEvents({
        dir: this.#dir, clock: this.#clock, temps: this.#temps, log: this.#log, debounceMs: init.watchDebounceMs ?? DEFAULT_WATCH_DEBOUNCE_MS,
        onWork: () => { this.#kick() },
        onRescan: (delayMs) => { this.#scheduleFull(delayMs) }
      })
    }
    const scan: ScanOpenWriters = init.scanOpenWriters ?? (async (files, opts) => await scanOpenWriters(files, opts))
    this.#writers = new WriterGate(scan, { gapMs: init.openWriterScanGapMs ?? DEFAULT_OPEN_WRITER_SCAN_GAP_MS, log: this.#log, signal: this.#abort.signal })
    this.#hasher = new SidecarHasher<Entry>({
      signal: this.#abort.signal,
      onError: (e, err) => { this.#log.debug('hashing inbox file failed', { name: e.name, err }) },
      done: (e) => {
        this.#due(e, -Infinity, true)
        this.#dueWanted = true
        this.#kick()
      }
    })
    this.#queue = new DeliveryQueue<Entry>({
      concurrency: init.deliveryConcurrency ?? DEFAULT_DELIVERY_CONCURRENCY,
      maxQueued: init.readyQueueMax ?? DEFAULT_READY_QUEUE_MAX,
      compare: byMtime,
      keyOf: (e) => e.name,
      isCurrent: (e) => e.state === 'queued' && this.#entries.has(e),
      deliver: async (e) => { await this.#deliver(e) },
      onRoom: () => { this.#recheckPending() }
    })
  }

  /** Starts watching; resolves after the first full scan. Throws InboxUnavailableError if the dir is unreadable. */
  async start (): Promise<void> {
    if (this.#started) throw new Error('InboxWatcher already started')
    this.#started = true
    try {
      await fs.readdir(this.#dir)
    } catch (err) {
      throw new InboxUnavailableError(`cannot list inbox ${this.#dir}: ${(err as Error).message}`)
    }
    await this.#events?.ensure()
    await this.#writers.check([]) // learns whether /proc can tell
    this.#log.info('watching inbox', { dir: this.#dir, quietMs: this.#quietMs, rescanIntervalMs: this.#rescanIntervalMs, openWriterCheck: this.#writers.state })
    this.#fullWanted = true
    this.#kick()
    await this.#passing
  }

  /** Stops timers, the watcher, hashing and the `onReady` calls in flight (their signal aborts); waits for them. */
  async stop (): Promise<void> {
    if (this.#stopped) return
    this.#stopped = true
    this.#abort.abort()
    clearTimeout(this.#fullTimer)
    clearTimeout(this.#dueTimer)
    this.#events?.close()
    await Promise.allSettled([this.#passing, this.#queue.close(), this.#hasher.settled()])
  }

  /** Asks for a full rescan as soon as possible (e.g. after an operator command). */
  rescanNow (): void {
    this.#fullWanted = true
    this.#kick()
  }

  stats (): InboxStats {
    let pending = 0
    let queued = 0
    for (const e of this.#entries.values()) {
      if (isWaiting(e)) pending++
      else if (e.state === 'queued' || e.state === 'delivering') queued++
    }
    return {
      ...this.#counters,
      watchEvents: this.#events?.counters.watchEvents ?? 0,
      watcherErrors: this.#events?.counters.watcherErrors ?? 0,
      tracked: this.#entries.size,
      pending,
      queued,
      unverifiedCompleteness: this.#counters.readyQuiet,
      tempInodesTracked: this.#temps.size,
      openWriterScans: this.#writers.scans,
      openWriterCheck: this.#writers.state
    }
  }

  // ---- the pass loop ----

  #kick (): void {
    if (this.#stopped || !this.#started || this.#passing != null) return
    this.#passing = this.#passLoop()
      .catch((err) => { this.#log.error('inbox pass failed', { dir: this.#dir, err }) })
      .finally(() => {
        this.#passing = undefined
        if (this.#stopped) return
        this.#armTimers()
        if (this.#fullWanted || this.#dueWanted || this.#events?.pending === true) this.#kick()
      })
  }

  async #passLoop (): Promise<void> {
    while (!this.#stopped) {
      if (this.#fullWanted) {
        this.#fullWanted = false
        this.#dueWanted = false
        this.#events?.resetForRescan()
        await this.#fullScan()
      } else if (this.#dueWanted || this.#events?.pending === true) {
        this.#dueWanted = false
        await this.#quickPass()
      } else {
        return
      }
    }
  }

  #armTimers (): void {
    if (this.#fullDueAt === Infinity) this.#scheduleFull(this.#rescanIntervalMs)
    const due = this.#entries.nextDueMs()
    if (due === Infinity || due >= this.#dueTimerAt) return
    clearTimeout(this.#dueTimer)
    this.#dueTimerAt = due
    this.#dueTimer = setTimeout(() => {
      this.#dueTimer = undefined
      this.#dueTimerAt = Infinity
      this.#dueWanted = true
      this.#kick()
    }, Math.max(0, due - this.#clock.nowMs()))
  }

  #scheduleFull (delayMs: number): void {
    if (this.#stopped) return
    const at = performance.now() + delayMs
    if (at >= this.#fullDueAt) return
    clearTimeout(this.#fullTimer)
    this.#fullDueAt = at
    this.#fullTimer = setTimeout(() => {
      this.#fullTimer = undefined
      this.#fullDueAt = Infinity
      this.rescanNow()
    }, delayMs)
  }

  /** Every pending entry is looked at again at the next pass (the queue has room for what was held back). */
  #recheckPending (): void {
    for (const e of this.#entries.values()) if (e.state === 'pending') e.dueAtMs = -Infinity
    this.#dueWanted = true
    this.#kick()
  }

  // ---- passes ----

  /** Lists the directory, stats every candidate not already queued, forgets what is gone, applies the rules to all. */
  async #fullScan (): Promise<void> {
    const scanId = ++this.#counters.scans
    const t0 = performance.now()
    await this.#events?.ensure()
    let dirents: Dirent[]
    try {
      dirents = await fs.readdir(this.#dir, { withFileTypes: true })
      if (this.#dirErrorCode != null) this.#log.info('inbox readable again', { dir: this.#dir })
      this.#dirErrorCode = undefined
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'unknown'
      if (this.#dirErrorCode !== code) this.#log.warn('cannot list inbox', { dir: this.#dir, err })
      this.#dirErrorCode = code
      return
    }
    const names = new Set<string>()
    const temps: string[] = []
    const candidates: string[] = []
    this.#sidecars.clear()
    // Dirent types come from lstat semantics (Node lstat()s when the filesystem reports DT_UNKNOWN), so
    // symlinks, directories, FIFOs and devices drop out here; observe() checks again after its lstat.
    for (const d of dirents) {
      names.add(d.name)
      if (d.name === INCOMING_DIR && d.isDirectory()) await this.#listIncoming(temps)
      else if (isIgnoredName(d.name)) { if (d.isFile()) temps.push(path.join(this.#dir, d.name)) }
      else if (isSidecarName(d.name)) this.#sidecars.add(d.name)
      else if (!d.isFile()) continue
      else if (this.#entries.onlyInFlight(d.name, scanId)) continue // queued or being claimed: the delivery re-stats it
      else candidates.push(d.name)
    }
    // Temp names first, so that a link()ed pair seen in one listing counts as a rename.
    await mapLimit(temps, STAT_CONCURRENCY, async (p) => { await trackTemp(this.#temps, p, () => this.#clock.nowMs()) })
    await mapLimit(candidates, STAT_CONCURRENCY, async (name) => { await this.#entries.observe(name, scanId) })
    this.#entries.forgetUnseen(scanId)
    this.#queue.prune()
    const now = this.#clock.nowMs()
    this.#events?.evidence.prune(names, now)
    this.#temps.prune(now)
    await eventBarrier()
    await this.#evaluate([...this.#entries.values()])
    this.#counters.lastScanMs = performance.now() - t0
  }

  /** Stats the names watch events named (and entries due again), then applies the rules to their entries. */
  async #quickPass (): Promise<void> {
    this.#counters.quickPasses++
    const { names, sidecars } = this.#events?.take() ?? { names: new Set<string>(), sidecars: [] }
    const now = this.#clock.nowMs()
    const due: Entry[] = []
    for (const e of this.#entries.values()) {
      if (!isWaiting(e) || e.dueAtMs > now) continue
      due.push(e)
      if (e.restatDue) names.add(e.name)
    }
    await mapLimit(sidecars, STAT_CONCURRENCY, async (name) => {
      const present = await fs.lstat(path.join(this.#dir, name)).then((st) => st.isFile(), () => false)
      if (present) this.#sidecars.add(name)
      else this.#sidecars.delete(name)
    })
    await mapLimit([...names], STAT_CONCURRENCY, async (name) => { await this.#entries.observe(name) })
    await eventBarrier()
    const touched = new Set(due)
    for (const name of names) for (const e of this.#entries.named(name)) touched.add(e)
    await this.#evaluate([...touched])
  }

  async #listIncoming (out: string[]): Promise<void> {
    const sub = path.join(this.#dir, INCOMING_DIR)
    try {
      for (const d of await fs.readdir(sub, { withFileTypes: true })) {
        if (!d.isDirectory() && out.length < TEMP_INODES_MAX) out.push(path.join(sub, d.name))
      }
    } catch {}
  }

  // ---- readiness ----

  /** Applies the rules to `entries` (pending or retrying ones), checks open writers in one scan, queues the ready. */
  async #evaluate (entries: Entry[]): Promise<void> {
    const now = this.#clock.nowMs()
    const settings = { settleMs: this.#settleMs, quietMs: this.#quietMs, writerCheck: this.#writers.state === 'proc' }
    const check: Array<{ e: Entry, readiness: Readiness, sidecarPath?: string }> = []
    const ready: Entry[] = []
    for (const e of entries) {
      if (!this.#entries.has(e)) continue
      if (e.state === 'retry') {
        if (now >= e.retryAtMs) ready.push(e)
        else this.#due(e, e.retryAtMs, false)
        continue
      }
      if (e.state !== 'pending') continue
      e.dueAtMs = Infinity
      e.sidecarPaths = SIDECAR_SUFFIXES.filter((s) => this.#sidecars.has(e.name + s)).map((s) => path.join(this.#dir, e.name + s))
      const sidecar = e.sidecarPaths.length > 0 ? await checkSidecars(e.sidecarPaths, e.fp, e.hash) : undefined
      if (this.#stopped) return
      const movedIn = e.fp.size > 0n && this.#events?.evidence.movedIn(e.name) === true
      const renamed = e.renamedFromTemp || e.fp.ctimeNs > e.fp.mtimeNs || movedIn
      const v = judge(e, renamed, sidecar, now, settings)
      if (v.kind === 'ready') {
        const c = { e, readiness: v.readiness, ...(v.sidecarPath != null ? { sidecarPath: v.sidecarPath } : {}) }
        if (v.writerCheck) check.push(c)
        else ready.push(this.#markReady(c))
      } else if (v.kind === 'wait') {
        if (v.dueInMs != null) this.#due(e, now + v.dueInMs, v.restat)
      } else if (v.kind === 'hash') {
        this.#hasher.request(e, path.join(this.#dir, e.name), e.fp)
      } else if (!e.mismatchWarned) {
        e.mismatchWarned = true
        this.#counters.sidecarMismatches++
        this.#log.warn('sidecar does not match file; waiting', { name: e.name, bytes: Number(e.fp.size), reason: v.reason })
      }
    }
    if (check.length > 0) {
      const waitMs = this.#writers.waitMs()
      if (waitMs > 0) {
        for (const c of check) this.#due(c.e, now + waitMs, false)
      } else {
        const open = await this.#writers.check(check.map((c) => c.e.fp))
        for (const c of check) {
          // Held open (or unknown): not ready; the next rescan looks again, without hurrying.
          if (open == null || open.has(identityKey(c.e.fp))) continue
          // /proc turned out unreadable: rename evidence must settle after all.
          if (this.#writers.state !== 'proc' && c.readiness === 'rename' && stableMs(c.e) < this.#settleMs) {
            this.#due(c.e, now + this.#settleMs, true)
            continue
          }
          ready.push(this.#markReady(c))
        }
      }
    }
    this.#enqueue(ready)
  }

  #due (e: Entry, atMs: number, restat: boolean): void {
    e.dueAtMs = atMs
    e.restatDue = restat
  }

  #markReady (c: { e: Entry, readiness: Readiness, sidecarPath?: string }): Entry {
    c.e.readiness = c.readiness
    c.e.sidecarPath = c.sidecarPath
    return c.e
  }

  /** Queues newly ready files (oldest mtime first), as many as the queue bound allows; the rest stay pending. */
  #enqueue (ready: Entry[]): void {
    if (ready.length === 0) return
    for (const e of ready) e.state = 'queued'
    const refused = new Set(this.#queue.offer(ready))
    for (const e of ready) {
      if (refused.has(e)) {
        e.state = e.failures > 0 ? 'retry' : 'pending'
        continue
      }
      if (e.readyLogged) continue
      e.readyLogged = true
      if (e.readiness === 'rename') this.#counters.readyRename++
      else if (e.readiness === 'sidecar') this.#counters.readySidecar++
      else this.#counters.readyQuiet++
      this.#log.info('inbox file ready', { name: e.name, readiness: e.readiness, bytes: Number(e.fp.size), sidecar: e.sidecarPath })
    }
  }

  // ---- delivery (called by the queue, several at once, never two for one name) ----

  async #deliver (e: Entry): Promise<void> {
    const p = path.join(this.#dir, e.name)
    let fp: FileFingerprint
    try {
      fp = fingerprintOf(await fs.lstat(p, { bigint: true }))
    } catch {
      this.#entries.forget(e)
      return
    }
    if (fpKey(fp) !== fpKey(e.fp) || e.state !== 'queued') {
      if (e.state === 'queued') e.state = 'pending' // changed while queued: looked at again from scratch
      this.#events?.touch(e.name)
      this.#dueWanted = true
      this.#kick()
      return
    }
    e.state = 'delivering'
    const file: ReadyFile = {
      path: p, name: e.name, size: Number(e.fp.size), ino: Number(e.fp.ino), mtimeMs: Number(e.fp.mtimeNs) / 1e6,
      readiness: e.readiness ?? 'quiet', sidecarPaths: e.sidecarPaths, fingerprint: e.fp
    }
    if (e.sidecarPath != null) file.sidecarPath = e.sidecarPath
    const wasFp = fpKey(e.fp)
    try {
      await this.#onReady(file, { signal: this.#abort.signal })
      this.#counters.delivered++
      // If a pass saw a change while we were delivering, it is a new version: keep it pending.
      e.state = fpKey(e.fp) === wasFp ? 'delivered' : 'pending'
    } catch (err) {
      if (this.#stopped) return
      this.#counters.deliveryFailures++
      e.failures++
      const backoffMs = Math.min(this.#retryBackoffMaxMs, this.#retryBackoffMinMs * 2 ** Math.min(e.failures - 1, 30))
      e.retryAtMs = this.#clock.nowMs() + backoffMs
      e.state = fpKey(e.fp) === wasFp ? 'retry' : 'pending'
      if (e.state === 'retry') this.#due(e, e.retryAtMs, false)
      this.#log.warn('inbox consumer failed; will retry', { name: e.name, attempt: e.failures, backoffMs, err })
      if (this.#passing == null) this.#armTimers()
    }
  }
}
