/**
 * The inbox watcher: decides when a file dropped into the inbox directory is complete, and hands it
 * to the claimer exactly once.
 *
 * Why it is built this way (DESIGN.md §6, notes/reliability.md §2): senders never say when a file is
 * done, and `fs.watch` drops events silently when its queue overflows. So a periodic rescan of the one
 * directory is the source of truth and watch events only wake it early. A file is READY when
 *  - `rename`: it arrived by rename/link (its inode was seen under a temp name, or ctime > mtime), its
 *    (size, mtime, ctime, ino) held still for `settleMs` and no local process has it open for writing;
 *  - `sidecar`: `NAME.sha256` (hash matches) or `NAME.size` (size matches, settled, no writer) exists;
 *    a sidecar that does not match holds the file back, whatever else is true;
 *  - `quiet`: nothing changed for `quietMs` (monotonic clock) and no local writer ("unverified
 *    completeness": a killed in-place writer looks exactly like this).
 * Ready files go to `onReady` one at a time, oldest mtime first, from a bounded queue.
 */

import { watch, type Dirent, type FSWatcher, type BigIntStats } from 'node:fs'
import fs from 'node:fs/promises'
import { createHash } from 'node:crypto'
import path from 'node:path'
import { createLogger } from './log.ts'
import { scanOpenWriters, identityKey, type FileIdentity, type OpenWriterScan } from './open-writers.ts'
import { MiB } from '../protocols/limits.ts'

export const DEFAULT_RESCAN_INTERVAL_MS = 2_000
export const DEFAULT_SETTLE_MS = 200
export const DEFAULT_QUIET_MS = 30_000
/** Delay between a watch event and the rescan it triggers (events arriving meanwhile share it). */
export const DEFAULT_WATCH_DEBOUNCE_MS = 100
/** Ready files waiting for `onReady` (plus the one inside it); more stay pending in the inbox. */
export const DEFAULT_READY_QUEUE_MAX = 256
export const DEFAULT_RETRY_BACKOFF_MIN_MS = 1_000
export const DEFAULT_RETRY_BACKOFF_MAX_MS = 60_000
/** Least time between two /proc scans for open writers (each costs one stat per open fd on the host). */
export const DEFAULT_OPEN_WRITER_SCAN_GAP_MS = 250
/** How long an inode seen under a temp name counts as evidence for a rename, and how many are kept. */
export const TEMP_INODE_TTL_MS = 10 * 60_000
/** How long fs.watch evidence about a name that is not in the inbox is kept. */
export const WATCH_EVIDENCE_TTL_MS = 10_000
export const TEMP_INODES_MAX = 100_000
/** Largest sidecar we read; more is not a sha256sum line or a byte count. */
export const SIDECAR_BYTES_MAX = 4096
/** Concurrent lstat calls during a scan. */
const STAT_CONCURRENCY = 32
/** Extra lstat calls allowed in flight for temp names seen in watch events. */
const TEMP_STATS_IN_FLIGHT_MAX = 64
const INCOMING_DIR = '.incoming'
const TEMP_SUFFIX = /\.(part|filepart|tmp)$/i
const SIDECAR_SUFFIX = /\.(sha256|size)$/

export type Readiness = 'rename' | 'sidecar' | 'quiet'

/** What identifies one version of a file; the claimer re-stats and compares all of it. */
export interface FileFingerprint {
  dev: bigint
  ino: bigint
  size: bigint
  mtimeNs: bigint
  ctimeNs: bigint
}

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

export interface MonotonicClock {
  nowMs: () => number
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
  retryBackoffMinMs?: number
  retryBackoffMaxMs?: number
  openWriterScanGapMs?: number
  /** Use `fs.watch` as a wake-up hint (default true). Without it, rescans alone find every file. */
  watch?: boolean
  /** Monotonic clock for settle/quiet periods (default `performance.now()`). */
  clock?: MonotonicClock
  /** Open-writer scanner (default /proc, see open-writers.ts). */
  scanOpenWriters?: (files: FileIdentity[], options: { signal: AbortSignal }) => Promise<OpenWriterScan>
}

export interface InboxStats {
  scans: number
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
  /** 'proc': writers are checked; 'unavailable': /proc unreadable, the rules run without that check. */
  openWriterCheck: 'proc' | 'unavailable' | 'not-yet'
}

/** Thrown by `start()` when the inbox directory cannot be listed. */
export class InboxUnavailableError extends Error {
  override name = 'InboxUnavailableError'
}

type EntryState = 'pending' | 'queued' | 'delivering' | 'delivered' | 'retry'

/** One (name, inode) seen in the inbox. */
interface Entry {
  key: string
  name: string
  fp: FileFingerprint
  /** Clock time after the first stat that saw `fp`, and before the latest one. */
  fpSinceMs: number
  lastStatMs: number
  /** Stats that saw exactly `fp`. */
  observations: number
  /** Its inode was seen under a temp name before it appeared here. */
  renamedFromTemp: boolean
  state: EntryState
  readiness?: Readiness
  sidecarPath?: string
  sidecarPaths: string[]
  failures: number
  retryAtMs: number
  readyLogged: boolean
  mismatchWarned: boolean
  hash?: { fpKey: string, hex: string }
  hashing: boolean
  seenInScan: number
}

type SidecarVerdict = { kind: 'match', path: string, strong: boolean } | { kind: 'mismatch', reason: string } | { kind: 'wait' }

export function isIgnoredName (name: string): boolean {
  return name.startsWith('.') || TEMP_SUFFIX.test(name)
}

export function isSidecarName (name: string): boolean {
  return SIDECAR_SUFFIX.test(name)
}

function fingerprintOf (st: BigIntStats): FileFingerprint {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs }
}

function fpKey (fp: FileFingerprint): string {
  return `${fp.dev}:${fp.ino}:${fp.size}:${fp.mtimeNs}:${fp.ctimeNs}`
}

async function mapLimit<T> (items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T
      await fn(item)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}

export class InboxWatcher {
  private readonly dir: string
  private readonly onReady: InboxWatcherInit['onReady']
  private readonly rescanIntervalMs: number
  private readonly settleMs: number
  private readonly quietMs: number
  private readonly watchDebounceMs: number
  private readonly readyQueueMax: number
  private readonly retryBackoffMinMs: number
  private readonly retryBackoffMaxMs: number
  private readonly openWriterScanGapMs: number
  private readonly useWatch: boolean
  private readonly clock: MonotonicClock
  private readonly scanWriters: NonNullable<InboxWatcherInit['scanOpenWriters']>
  private readonly log = createLogger('inbox')
  private readonly abort = new AbortController()

  private readonly entries = new Map<string, Entry>()
  private queue: Entry[] = []
  /** dev:ino -> when and with which birth time it was last seen under a temp name. */
  private readonly tempInodes = new Map<string, { birthNs: bigint, seenAtMs: number }>()
  private readonly tempNamesStatted = new Set<string>()
  /**
   * name -> what fs.watch said since the name last appeared: `moved` after a 'rename' event (IN_CREATE,
   * IN_MOVED_TO or a delete), `written` after a 'change' event (IN_MODIFY, IN_ATTRIB). A name that appeared
   * with no write under it arrived whole by rename or link.
   */
  private readonly watchEvidence = new Map<string, { moved: boolean, written: boolean, atMs: number }>()
  private tempStatsInFlight = 0

  private started = false
  private stopped = false
  private watcher?: FSWatcher
  private watcherDirIno?: bigint
  private watchFailWarned = false
  private timer?: ReturnType<typeof setTimeout>
  private timerDueMs = Infinity
  private scanning?: Promise<void>
  private rescanRequested = false
  private scanCount = 0
  private dirErrorCode?: string
  private delivering?: Promise<void>
  private hashing?: Promise<void>
  private readonly hashQueue: Entry[] = []
  private heldBack = false
  private lastWriterScanMs = -Infinity
  private writerCheck: InboxStats['openWriterCheck'] = 'not-yet'
  private readonly counters = { watchEvents: 0, watcherErrors: 0, delivered: 0, deliveryFailures: 0, readyRename: 0, readySidecar: 0, readyQuiet: 0, sidecarMismatches: 0, openWriterScans: 0, lastScanMs: 0 }

  constructor (init: InboxWatcherInit) {
    this.dir = path.resolve(init.dir)
    this.onReady = init.onReady
    this.rescanIntervalMs = init.rescanIntervalMs ?? DEFAULT_RESCAN_INTERVAL_MS
    this.settleMs = init.settleMs ?? DEFAULT_SETTLE_MS
    this.quietMs = init.quietMs ?? DEFAULT_QUIET_MS
    this.watchDebounceMs = init.watchDebounceMs ?? DEFAULT_WATCH_DEBOUNCE_MS
    this.readyQueueMax = Math.max(1, init.readyQueueMax ?? DEFAULT_READY_QUEUE_MAX)
    this.retryBackoffMinMs = init.retryBackoffMinMs ?? DEFAULT_RETRY_BACKOFF_MIN_MS
    this.retryBackoffMaxMs = init.retryBackoffMaxMs ?? DEFAULT_RETRY_BACKOFF_MAX_MS
    this.openWriterScanGapMs = init.openWriterScanGapMs ?? DEFAULT_OPEN_WRITER_SCAN_GAP_MS
    this.useWatch = init.watch ?? true
    this.clock = init.clock ?? { nowMs: () => performance.now() }
    this.scanWriters = init.scanOpenWriters ?? (async (files, opts) => await scanOpenWriters(files, opts))
  }

  /** Starts watching; resolves after the first full scan. Throws InboxUnavailableError if the dir is unreadable. */
  async start (): Promise<void> {
    if (this.started) throw new Error('InboxWatcher already started')
    this.started = true
    try {
      await fs.readdir(this.dir)
    } catch (err) {
      throw new InboxUnavailableError(`cannot list inbox ${this.dir}: ${(err as Error).message}`)
    }
    await this.ensureWatcher()
    this.log.info('watching inbox', { dir: this.dir, quietMs: this.quietMs, rescanIntervalMs: this.rescanIntervalMs })
    await this.runScan()
  }

  /** Stops timers, the watcher, hashing and the current `onReady` (its signal aborts); waits for them. */
  async stop (): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    this.abort.abort()
    if (this.timer != null) clearTimeout(this.timer)
    this.timer = undefined
    this.watcher?.close()
    this.watcher = undefined
    await Promise.allSettled([this.scanning, this.delivering, this.hashing])
    this.queue = []
  }

  /** Asks for a rescan as soon as possible (e.g. after an operator command). */
  rescanNow (): void {
    this.scheduleScan(0)
  }

  stats (): InboxStats {
    let pending = 0
    for (const e of this.entries.values()) if (e.state === 'pending' || e.state === 'retry') pending++
    let queued = 0
    for (const e of this.entries.values()) if (e.state === 'queued' || e.state === 'delivering') queued++
    return {
      ...this.counters,
      scans: this.scanCount,
      tracked: this.entries.size,
      pending,
      queued,
      unverifiedCompleteness: this.counters.readyQuiet,
      tempInodesTracked: this.tempInodes.size,
      openWriterCheck: this.writerCheck
    }
  }

  // ---- scheduling ----

  private scheduleScan (delayMs: number): void {
    if (this.stopped || !this.started) return
    const due = performance.now() + Math.max(0, delayMs)
    if (this.timer != null && this.timerDueMs <= due) return
    if (this.timer != null) clearTimeout(this.timer)
    this.timerDueMs = due
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.timerDueMs = Infinity
      void this.runScan()
    }, Math.max(0, delayMs))
  }

  private async runScan (): Promise<void> {
    if (this.stopped) return
    if (this.scanning != null) {
      this.rescanRequested = true
      await this.scanning
      return
    }
    this.scanning = (async () => {
      let nextDelayMs = this.rescanIntervalMs
      try {
        this.rescanRequested = false
        nextDelayMs = Math.min(nextDelayMs, await this.scan())
      } catch (err) {
        this.log.error('inbox scan failed', { dir: this.dir, err })
      } finally {
        this.scanning = undefined
      }
      if (this.rescanRequested) nextDelayMs = Math.min(nextDelayMs, this.watchDebounceMs)
      this.scheduleScan(nextDelayMs)
    })()
    await this.scanning
  }

  // ---- fs.watch: a hint only ----

  private async ensureWatcher (): Promise<void> {
    if (!this.useWatch || this.stopped) return
    let dirIno: bigint
    try {
      dirIno = (await fs.stat(this.dir, { bigint: true })).ino
    } catch {
      return
    }
    if (this.watcher != null && this.watcherDirIno === dirIno) return
    this.watcher?.close()
    this.watcher = undefined
    try {
      const w = watch(this.dir, { persistent: true }, (event, filename) => { this.onWatchEvent(event, filename) })
      w.on('error', (err) => {
        this.counters.watcherErrors++
        this.log.warn('inbox watcher failed; rescanning', { dir: this.dir, err })
        w.close()
        if (this.watcher === w) this.watcher = undefined
        this.scheduleScan(0)
      })
      this.watcher = w
      this.watcherDirIno = dirIno
      this.watchFailWarned = false
    } catch (err) {
      if (!this.watchFailWarned) this.log.warn('cannot watch inbox; relying on rescans', { dir: this.dir, err })
      this.watchFailWarned = true
    }
  }

  private onWatchEvent (_event: string, filename: string | null): void {
    if (this.stopped) return
    this.counters.watchEvents++
    // A temp name may live only milliseconds (rsync renames right after writing): stat it now.
    if (filename != null && isIgnoredName(filename) && filename !== INCOMING_DIR &&
        !this.tempNamesStatted.has(filename) && this.tempStatsInFlight < TEMP_STATS_IN_FLIGHT_MAX &&
        this.tempNamesStatted.size < TEMP_INODES_MAX) {
      this.tempNamesStatted.add(filename)
      this.tempStatsInFlight++
      void this.trackTemp(path.join(this.dir, filename)).finally(() => { this.tempStatsInFlight-- })
    }
    if (filename != null && !isIgnoredName(filename) && !isSidecarName(filename)) {
      if (_event === 'rename') {
        this.watchEvidence.delete(filename)
        if (this.watchEvidence.size < TEMP_INODES_MAX) this.watchEvidence.set(filename, { moved: true, written: false, atMs: this.clock.nowMs() })
      } else {
        const ev = this.watchEvidence.get(filename)
        if (ev != null) ev.written = true
      }
    }
    this.scheduleScan(this.watchDebounceMs)
  }

  // ---- the scan ----

  /** One full pass; returns how soon the next pass is due (ms). */
  private async scan (): Promise<number> {
    const scanId = ++this.scanCount
    const t0 = performance.now()
    await this.ensureWatcher()
    let dirents: Dirent[]
    try {
      dirents = await fs.readdir(this.dir, { withFileTypes: true })
      if (this.dirErrorCode != null) this.log.info('inbox readable again', { dir: this.dir })
      this.dirErrorCode = undefined
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'unknown'
      if (this.dirErrorCode !== code) this.log.warn('cannot list inbox', { dir: this.dir, err })
      this.dirErrorCode = code
      return this.rescanIntervalMs
    }
    this.tempNamesStatted.clear()
    const names = new Set(dirents.map(d => d.name))
    const temps: string[] = []
    const candidates: string[] = []
    // Dirent types come from lstat semantics (Node lstat()s when the filesystem reports DT_UNKNOWN), so
    // symlinks, directories, FIFOs and devices drop out here; observe() checks again after its lstat.
    for (const d of dirents) {
      if (d.name === INCOMING_DIR && d.isDirectory()) await this.trackIncoming(temps)
      else if (isIgnoredName(d.name)) { if (d.isFile()) temps.push(path.join(this.dir, d.name)) }
      else if (isSidecarName(d.name)) continue
      else if (d.isFile()) candidates.push(d.name)
    }
    // Temp names first, so that a link()ed pair seen in one listing counts as a rename.
    await mapLimit(temps, STAT_CONCURRENCY, async (p) => { await this.trackTemp(p) })
    await mapLimit(candidates, STAT_CONCURRENCY, async (name) => { await this.observe(name, scanId) })
    this.forgetUnseen(scanId)
    this.pruneWatchEvidence(names)
    this.pruneTempInodes()
    const nextDueMs = await this.evaluate(names)
    this.counters.lastScanMs = performance.now() - t0
    return nextDueMs
  }

  private async trackIncoming (out: string[]): Promise<void> {
    const sub = path.join(this.dir, INCOMING_DIR)
    try {
      for (const d of await fs.readdir(sub, { withFileTypes: true })) {
        if (!d.isDirectory() && out.length < TEMP_INODES_MAX) out.push(path.join(sub, d.name))
      }
    } catch {}
  }

  /** Remembers the inode of a file under a temp name: evidence if it later appears under a real name. */
  private async trackTemp (p: string): Promise<void> {
    let st: BigIntStats
    try {
      st = await fs.lstat(p, { bigint: true })
    } catch {
      return
    }
    if (!st.isFile()) return
    const key = identityKey(st)
    this.tempInodes.delete(key)
    this.tempInodes.set(key, { birthNs: st.birthtimeNs, seenAtMs: this.clock.nowMs() })
    if (this.tempInodes.size > TEMP_INODES_MAX) {
      const oldest = this.tempInodes.keys().next().value
      if (oldest != null) this.tempInodes.delete(oldest)
    }
  }

  private takeTempInode (st: BigIntStats): boolean {
    const key = identityKey(st)
    const rec = this.tempInodes.get(key)
    if (rec == null) return false
    this.tempInodes.delete(key)
    // A different birth time means the inode number was reused by a new file: no evidence.
    return rec.birthNs === 0n || st.birthtimeNs === 0n || rec.birthNs === st.birthtimeNs
  }

  private pruneTempInodes (): void {
    const cutoff = this.clock.nowMs() - TEMP_INODE_TTL_MS
    for (const [key, rec] of this.tempInodes) {
      if (rec.seenAtMs >= cutoff) break
      this.tempInodes.delete(key)
    }
  }

  private async observe (name: string, scanId: number): Promise<void> {
    const before = this.clock.nowMs()
    let st: BigIntStats
    try {
      st = await fs.lstat(path.join(this.dir, name), { bigint: true })
    } catch {
      return
    }
    if (!st.isFile()) return
    const after = this.clock.nowMs()
    const fp = fingerprintOf(st)
    const key = `${name}\0${st.ino}`
    let e = this.entries.get(key)
    if (e == null) {
      e = {
        key, name, fp, fpSinceMs: after, lastStatMs: before, observations: 1, renamedFromTemp: this.takeTempInode(st),
        state: 'pending', sidecarPaths: [], failures: 0, retryAtMs: 0, readyLogged: false, mismatchWarned: false, hashing: false, seenInScan: scanId
      }
      this.entries.set(key, e)
      return
    }
    e.seenInScan = scanId
    e.lastStatMs = before
    if (!e.renamedFromTemp) e.renamedFromTemp = this.takeTempInode(st)
    if (fpKey(e.fp) === fpKey(fp)) {
      e.observations++
      return
    }
    // Changed: a new version of the file. It must prove itself again (and may be reported again).
    e.fp = fp
    e.fpSinceMs = after
    e.observations = 1
    if (e.state === 'delivered') e.readyLogged = false
    if (e.state !== 'delivering') e.state = 'pending'
  }

  /** Drops evidence about names that have been gone for a while (claimed or deleted). */
  private pruneWatchEvidence (names: Set<string>): void {
    const cutoff = this.clock.nowMs() - WATCH_EVIDENCE_TTL_MS
    for (const [name, ev] of this.watchEvidence) {
      if (!names.has(name) && ev.atMs < cutoff) this.watchEvidence.delete(name)
    }
  }

  private forgetUnseen (scanId: number): void {
    let dropped = false
    for (const [key, e] of this.entries) {
      if (e.seenInScan === scanId || e.state === 'delivering') continue
      this.entries.delete(key)
      dropped = true
    }
    if (dropped || this.queue.some(e => e.state !== 'queued')) this.queue = this.queue.filter(e => e.state === 'queued' && this.entries.get(e.key) === e)
  }

  // ---- readiness ----

  /** Applies the rules to every pending entry; returns ms until some entry may change its verdict. */
  private async evaluate (names: Set<string>): Promise<number> {
    const now = this.clock.nowMs()
    let dueMs = this.rescanIntervalMs
    const needWriterCheck: Array<{ e: Entry, readiness: Readiness, sidecarPath?: string }> = []
    const ready: Entry[] = []
    for (const e of this.entries.values()) {
      if (e.state === 'retry') {
        if (now >= e.retryAtMs) ready.push(e)
        else dueMs = Math.min(dueMs, e.retryAtMs - now)
        continue
      }
      if (e.state !== 'pending') continue
      const stableMs = e.observations >= 2 ? e.lastStatMs - e.fpSinceMs : -1
      e.sidecarPaths = ['.sha256', '.size'].filter(s => names.has(e.name + s)).map(s => path.join(this.dir, e.name + s))
      if (e.sidecarPaths.length > 0) {
        const v = await this.checkSidecars(e)
        if (v.kind === 'match' && v.strong) {
          this.markReady(e, 'sidecar', v.path) // the hash proves the content: no settle or writer check
          ready.push(e)
        } else if (v.kind === 'match') {
          if (stableMs >= this.settleMs) needWriterCheck.push({ e, readiness: 'sidecar', sidecarPath: v.path })
          else dueMs = Math.min(dueMs, this.settleMs)
        } else if (v.kind === 'wait') {
          if (!e.hashing) dueMs = Math.min(dueMs, this.settleMs)
        } else if (!e.mismatchWarned) {
          e.mismatchWarned = true
          this.counters.sidecarMismatches++
          this.log.warn('sidecar does not match file; waiting', { name: e.name, bytes: Number(e.fp.size), reason: v.reason })
        }
        continue
      }
      const ev = this.watchEvidence.get(e.name)
      const movedIn = ev != null && ev.moved && !ev.written && e.fp.size > 0n
      const renamed = e.renamedFromTemp || e.fp.ctimeNs > e.fp.mtimeNs || movedIn
      if (renamed && stableMs >= this.settleMs) needWriterCheck.push({ e, readiness: 'rename' })
      else if (stableMs >= this.quietMs) needWriterCheck.push({ e, readiness: 'quiet' })
      else if (renamed) dueMs = Math.min(dueMs, this.settleMs)
      else dueMs = Math.min(dueMs, Math.max(this.settleMs, e.fpSinceMs + this.quietMs - now))
    }
    if (needWriterCheck.length > 0) {
      const wait = this.lastWriterScanMs + this.openWriterScanGapMs - performance.now()
      if (wait > 0) {
        dueMs = Math.min(dueMs, wait)
      } else {
        const open = await this.openWriters(needWriterCheck.map(c => c.e.fp))
        for (const c of needWriterCheck) {
          // Held open (or unknown): not ready; the periodic rescan looks again, without hurrying.
          if (open == null || open.has(identityKey(c.e.fp))) continue
          this.markReady(c.e, c.readiness, c.sidecarPath)
          ready.push(c.e)
        }
      }
    }
    this.enqueue(ready)
    return Math.max(0, dueMs)
  }

  /**
   * The keys of files open for writing; an empty set when /proc is unavailable (the rules then run
   * without this check); undefined when the scan was incomplete (nobody is cleared this time).
   */
  private async openWriters (fps: FileFingerprint[]): Promise<Set<string> | undefined> {
    this.lastWriterScanMs = performance.now()
    this.counters.openWriterScans++
    let scan: OpenWriterScan
    try {
      scan = await this.scanWriters(fps, { signal: this.abort.signal })
    } catch (err) {
      this.log.warn('open-writer scan failed', { err })
      return undefined
    }
    if (!scan.available) {
      if (this.writerCheck !== 'unavailable') this.log.warn('/proc not readable: cannot tell whether inbox files are still open for writing')
      this.writerCheck = 'unavailable'
      return new Set()
    }
    this.writerCheck = 'proc'
    if (!scan.complete) {
      if (!this.stopped) this.log.warn('open-writer scan incomplete; will retry', { pidsSkipped: scan.pidsSkipped })
      return undefined
    }
    return scan.writers
  }

  private markReady (e: Entry, readiness: Readiness, sidecarPath?: string): void {
    e.readiness = readiness
    e.sidecarPath = sidecarPath
  }

  /** Queues newly ready files (oldest mtime first), as many as the queue bound allows. */
  private enqueue (ready: Entry[]): void {
    ready.sort((a, b) => a.fp.mtimeNs < b.fp.mtimeNs ? -1 : a.fp.mtimeNs > b.fp.mtimeNs ? 1 : a.name < b.name ? -1 : 1)
    for (const e of ready) {
      if (this.queue.length >= this.readyQueueMax) {
        this.heldBack = true
        continue // stays pending in the inbox; the scan after the queue drains tries again
      }
      e.state = 'queued'
      this.queue.push(e)
      if (!e.readyLogged) {
        e.readyLogged = true
        if (e.readiness === 'rename') this.counters.readyRename++
        else if (e.readiness === 'sidecar') this.counters.readySidecar++
        else this.counters.readyQuiet++
        this.log.info('inbox file ready', { name: e.name, readiness: e.readiness, bytes: Number(e.fp.size), sidecar: e.sidecarPath })
      }
    }
    this.queue.sort((a, b) => a.fp.mtimeNs < b.fp.mtimeNs ? -1 : a.fp.mtimeNs > b.fp.mtimeNs ? 1 : 0)
    if (this.queue.length > 0 && this.delivering == null && !this.stopped) this.delivering = this.deliverLoop().finally(() => { this.delivering = undefined })
  }

  // ---- sidecars ----

  private async checkSidecars (e: Entry): Promise<SidecarVerdict> {
    let verdict: SidecarVerdict = { kind: 'wait' }
    for (const p of e.sidecarPaths) {
      let text: string
      try {
        const fh = await fs.open(p, 'r')
        try {
          const buf = Buffer.alloc(SIDECAR_BYTES_MAX)
          const { bytesRead } = await fh.read(buf, 0, buf.length, 0)
          text = buf.subarray(0, bytesRead).toString('utf8')
        } finally {
          await fh.close()
        }
      } catch {
        return { kind: 'wait' }
      }
      if (p.endsWith('.size')) {
        const m = /^\s*(\d+)\s*$/.exec(text)
        if (m?.[1] == null) return { kind: 'mismatch', reason: 'size sidecar is not a decimal byte count' }
        if (BigInt(m[1]) !== e.fp.size) return { kind: 'mismatch', reason: `size sidecar says ${m[1]}` }
        if (verdict.kind !== 'match') verdict = { kind: 'match', path: p, strong: false }
        continue
      }
      const m = /^\s*([0-9a-fA-F]{64})(\s|$)/.exec(text)
      if (m?.[1] == null) return { kind: 'mismatch', reason: 'sha256 sidecar is not a hex digest' }
      const key = fpKey(e.fp)
      if (e.hash?.fpKey !== key) {
        if (e.observations >= 2) this.startHash(e)
        return { kind: 'wait' }
      }
      if (e.hash.hex !== m[1].toLowerCase()) return { kind: 'mismatch', reason: 'sha256 differs' }
      verdict = { kind: 'match', path: p, strong: true }
    }
    return verdict
  }

  private startHash (e: Entry): void {
    if (e.hashing || this.stopped) return
    e.hashing = true
    this.hashQueue.push(e)
    if (this.hashing == null) this.hashing = this.hashLoop().finally(() => { this.hashing = undefined })
  }

  /** Hashes files one at a time (they can be GBs); each result is bound to the fingerprint it saw. */
  private async hashLoop (): Promise<void> {
    for (let e = this.hashQueue.shift(); e != null && !this.stopped; e = this.hashQueue.shift()) {
      try {
        const result = await this.hashFile(path.join(this.dir, e.name), e.fp)
        if (result != null) e.hash = result
      } catch (err) {
        if (!this.stopped) this.log.debug('hashing inbox file failed', { name: e.name, err })
      } finally {
        e.hashing = false
      }
      this.scheduleScan(0)
    }
  }

  private async hashFile (p: string, fp: FileFingerprint): Promise<{ fpKey: string, hex: string } | undefined> {
    const fh = await fs.open(p, 'r')
    try {
      const key = fpKey(fp)
      if (fpKey(fingerprintOf(await fh.stat({ bigint: true }))) !== key) return undefined
      const hash = createHash('sha256')
      const buf = Buffer.allocUnsafe(MiB)
      for (;;) {
        this.abort.signal.throwIfAborted()
        const { bytesRead } = await fh.read(buf, 0, buf.length, null)
        if (bytesRead === 0) break
        hash.update(buf.subarray(0, bytesRead))
      }
      if (fpKey(fingerprintOf(await fh.stat({ bigint: true }))) !== key) return undefined
      return { fpKey: key, hex: hash.digest('hex') }
    } finally {
      await fh.close()
    }
  }

  // ---- delivery ----

  private async deliverLoop (): Promise<void> {
    for (let e = this.queue.shift(); e != null && !this.stopped; e = this.queue.shift()) {
      if (e.state !== 'queued' || this.entries.get(e.key) !== e) continue
      const p = path.join(this.dir, e.name)
      let st: BigIntStats
      try {
        st = await fs.lstat(p, { bigint: true })
      } catch {
        this.entries.delete(e.key)
        continue
      }
      if (fpKey(fingerprintOf(st)) !== fpKey(e.fp)) {
        e.state = 'pending' // changed while queued: the next scan starts over
        continue
      }
      e.state = 'delivering'
      const file: ReadyFile = {
        path: p, name: e.name, size: Number(e.fp.size), ino: Number(e.fp.ino), mtimeMs: Number(e.fp.mtimeNs) / 1e6,
        readiness: e.readiness ?? 'quiet', sidecarPaths: e.sidecarPaths, fingerprint: e.fp
      }
      if (e.sidecarPath != null) file.sidecarPath = e.sidecarPath
      const wasFp = fpKey(e.fp)
      try {
        await this.onReady(file, { signal: this.abort.signal })
        this.counters.delivered++
        // If a scan saw a change while we were delivering, it is a new version: keep it pending.
        e.state = fpKey(e.fp) === wasFp ? 'delivered' : 'pending'
      } catch (err) {
        if (this.stopped) return
        this.counters.deliveryFailures++
        e.failures++
        const backoffMs = Math.min(this.retryBackoffMaxMs, this.retryBackoffMinMs * 2 ** Math.min(e.failures - 1, 30))
        e.retryAtMs = this.clock.nowMs() + backoffMs
        e.state = fpKey(e.fp) === wasFp ? 'retry' : 'pending'
        this.log.warn('inbox consumer failed; will retry', { name: e.name, attempt: e.failures, backoffMs, err })
        this.scheduleScan(backoffMs)
      }
      if (this.queue.length === 0 && this.heldBack) {
        this.heldBack = false
        this.scheduleScan(0)
      }
    }
  }
}
