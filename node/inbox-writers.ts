/**
 * The inbox's open-writer gate: one /proc scan (node/open-writers.ts) answers for every file the rules
 * found ready at once, and scans are spaced so that they take at most about a tenth of the time (each
 * costs a stat per open fd on the host, ~5 ms for 1,000 fds) yet never delay a lone file: the first file
 * after a quiet spell is checked at once.
 */

import type { Logger } from './log.ts'
import type { FileIdentity, OpenWriterScan } from './open-writers.ts'

/** Least time between two /proc scans for open writers. */
export const DEFAULT_OPEN_WRITER_SCAN_GAP_MS = 25
/** And at least this many times the last scan's duration: the scans take at most ~1/10 of the time. */
export const OPEN_WRITER_SCAN_GAP_FACTOR = 10

/** 'proc': writers are checked; 'unavailable': /proc unreadable, the rules run without that check. */
export type WriterCheckState = 'proc' | 'unavailable' | 'not-yet'

export type ScanOpenWriters = (files: FileIdentity[], options: { signal: AbortSignal }) => Promise<OpenWriterScan>

export class WriterGate {
  readonly #scan: ScanOpenWriters
  readonly #gapMs: number
  readonly #log: Logger
  readonly #signal: AbortSignal
  #lastEnd = -Infinity
  #lastTookMs = 0
  state: WriterCheckState = 'not-yet'
  scans = 0

  constructor (scan: ScanOpenWriters, init: { gapMs: number, log: Logger, signal: AbortSignal }) {
    this.#scan = scan
    this.#gapMs = init.gapMs
    this.#log = init.log
    this.#signal = init.signal
  }

  /** Milliseconds until the next scan may run (0: now). */
  waitMs (): number {
    const gap = Math.max(this.#gapMs, OPEN_WRITER_SCAN_GAP_FACTOR * this.#lastTookMs)
    return Math.max(0, this.#lastEnd + gap - performance.now())
  }

  /**
   * The keys (`identityKey`) of `files` open for writing; an empty set when /proc is unavailable (then
   * `state` says so); undefined when the scan was incomplete (nobody is cleared this time). An empty list
   * only learns `state` (two readdirs).
   */
  async check (files: FileIdentity[]): Promise<Set<string> | undefined> {
    const t0 = performance.now()
    if (files.length > 0) this.scans++
    let scan: OpenWriterScan
    try {
      scan = await this.#scan(files, { signal: this.#signal })
    } catch (err) {
      this.#log.warn('open-writer scan failed', { err })
      return undefined
    } finally {
      this.#lastEnd = performance.now()
      if (files.length > 0) this.#lastTookMs = this.#lastEnd - t0
    }
    if (!scan.available) {
      if (this.state !== 'unavailable') this.#log.warn('/proc not readable: cannot tell whether inbox files are still open for writing')
      this.state = 'unavailable'
      return new Set()
    }
    this.state = 'proc'
    if (!scan.complete) {
      if (!this.#signal.aborted) this.#log.warn('open-writer scan incomplete; will retry', { pidsSkipped: scan.pidsSkipped })
      return undefined
    }
    return scan.writers
  }
}
