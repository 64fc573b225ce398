/**
 * The fs.watch half of the inbox watcher: turns watch events into work for the next pass (the names to
 * look at), evidence of a rename (node/inbox-evidence.ts), and the inodes of temp names, which may live
 * only milliseconds (rsync renames right after writing) and are stat'ed at once.
 *
 * Only a hint (DESIGN.md §6): events overflow silently, so the watcher's periodic full rescan stays the
 * source of truth. An event without a usable name asks for a full rescan instead; a watcher that fails is
 * recreated by the next rescan (`ensure`), also when the inbox directory was replaced.
 */

import { watch, type FSWatcher } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import type { Logger } from './log.ts'
import { isIgnoredName, isSidecarName, sidecarSubject } from './inbox-rules.ts'
import type { MonotonicClock } from './inbox-rules.ts'
import { TEMP_INODES_MAX, trackTemp, WatchEvidence } from './inbox-evidence.ts'
import type { TempInodes } from './inbox-evidence.ts'

/** Extra lstat calls allowed in flight for temp names seen in watch events. */
export const TEMP_STATS_IN_FLIGHT_MAX = 64
export const INCOMING_DIR = '.incoming'

export interface InboxEventsInit {
  dir: string
  clock: MonotonicClock
  temps: TempInodes
  log: Logger
  /** Something to look at: names were added (`take()` them). */
  onWork: () => void
  /** An event named nothing usable, or the watcher failed: a full rescan is wanted after `delayMs`. */
  onRescan: (delayMs: number) => void
  /** Delay of the rescan asked for by an event without a name. */
  debounceMs: number
}

export class InboxEvents {
  readonly evidence = new WatchEvidence()
  readonly counters = { watchEvents: 0, watcherErrors: 0 }
  readonly #init: InboxEventsInit
  readonly #names = new Set<string>()
  readonly #sidecars = new Set<string>()
  readonly #tempNamesStatted = new Set<string>()
  #tempStatsInFlight = 0
  #watcher?: FSWatcher
  #dirIno?: bigint
  #failWarned = false
  #closed = false

  constructor (init: InboxEventsInit) {
    this.#init = init
  }

  /** Whether events named something not taken yet. */
  get pending (): boolean {
    return this.#names.size > 0
  }

  /** The names events asked to look at (a sidecar's event names its file too), and the sidecars to re-stat. */
  take (): { names: Set<string>, sidecars: string[] } {
    const out = { names: new Set(this.#names), sidecars: [...this.#sidecars] }
    this.#names.clear()
    this.#sidecars.clear()
    return out
  }

  /** Asks to look at `name` in the next pass (e.g. a queued file found changed). */
  touch (name: string): void {
    this.#names.add(name)
  }

  /** A full rescan starts: it covers everything events asked for, and stats every temp name again. */
  resetForRescan (): void {
    this.#names.clear()
    this.#sidecars.clear()
    this.#tempNamesStatted.clear()
  }

  /** (Re)creates the watcher unless one watches the current inbox directory. Never throws. */
  async ensure (): Promise<void> {
    if (this.#closed) return
    const { dir, log } = this.#init
    let dirIno: bigint
    try {
      dirIno = (await fs.stat(dir, { bigint: true })).ino
    } catch {
      return
    }
    if (this.#watcher != null && this.#dirIno === dirIno) return
    this.#watcher?.close()
    this.#watcher = undefined
    try {
      const w = watch(dir, { persistent: true }, (event, filename) => { this.#onEvent(event, filename) })
      w.on('error', (err) => {
        this.counters.watcherErrors++
        log.warn('inbox watcher failed; rescanning', { dir, err })
        w.close()
        if (this.#watcher === w) this.#watcher = undefined
        this.#init.onRescan(0)
      })
      this.#watcher = w
      this.#dirIno = dirIno
      this.#failWarned = false
    } catch (err) {
      if (!this.#failWarned) log.warn('cannot watch inbox; relying on rescans', { dir, err })
      this.#failWarned = true
    }
  }

  close (): void {
    this.#closed = true
    this.#watcher?.close()
    this.#watcher = undefined
  }

  #onEvent (event: string, filename: string | null): void {
    if (this.#closed) return
    this.counters.watchEvents++
    if (filename == null || filename.includes('/')) {
      this.#init.onRescan(this.#init.debounceMs)
      return
    }
    if (isIgnoredName(filename)) {
      if (filename !== INCOMING_DIR && !this.#tempNamesStatted.has(filename) && this.#tempStatsInFlight < TEMP_STATS_IN_FLIGHT_MAX &&
          this.#tempNamesStatted.size < TEMP_INODES_MAX) {
        this.#tempNamesStatted.add(filename)
        this.#tempStatsInFlight++
        void trackTemp(this.#init.temps, path.join(this.#init.dir, filename), () => this.#init.clock.nowMs()).finally(() => { this.#tempStatsInFlight-- })
      }
      return
    }
    if (isSidecarName(filename)) {
      this.#sidecars.add(filename)
      this.#names.add(sidecarSubject(filename))
    } else {
      if (event === 'rename') this.evidence.moved(filename, this.#init.clock.nowMs())
      else this.evidence.written(filename)
      this.#names.add(filename)
    }
    this.#init.onWork()
  }
}
