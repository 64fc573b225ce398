/**
 * The inbox watcher's table of what is in the inbox: one entry per (name, inode), indexed by name too, and
 * how one stat updates it. An entry carries its file's fingerprint history (for the settle and quiet
 * rules), its delivery state and when the rules should look at it again.
 *
 * Delivery states: pending -> queued -> delivering -> delivered; a failed delivery -> retry (-> queued
 * again after a backoff); a new version of the file (its fingerprint changed) -> pending, except while
 * delivering (the delivery re-checks its own version).
 */

import fs from 'node:fs/promises'
import path from 'node:path'
import type { BigIntStats } from 'node:fs'
import { fingerprintOf, fpKey } from './inbox-rules.ts'
import type { FileFingerprint, MonotonicClock, Observation, Readiness } from './inbox-rules.ts'
import type { BoundDigest } from './inbox-sidecar.ts'
import type { TempInodes } from './inbox-evidence.ts'

export type EntryState = 'pending' | 'queued' | 'delivering' | 'delivered' | 'retry'

/** One (name, inode) seen in the inbox. */
export interface Entry extends Observation {
  key: string
  name: string
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
  hash?: BoundDigest
  hashing: boolean
  seenInScan: number
  /** Clock time at which the rules should look at it again (Infinity: on an event or a rescan). */
  dueAtMs: number
  /** ...with a fresh stat first. */
  restatDue: boolean
}

/** Delivery order: oldest mtime first, then by name. */
export function byMtime (a: Entry, b: Entry): number {
  return a.fp.mtimeNs < b.fp.mtimeNs ? -1 : a.fp.mtimeNs > b.fp.mtimeNs ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0
}

export function isWaiting (e: Entry): boolean {
  return e.state === 'pending' || e.state === 'retry'
}

export class InboxEntries {
  readonly #dir: string
  readonly #clock: MonotonicClock
  readonly #temps: TempInodes
  readonly #byKey = new Map<string, Entry>()
  readonly #byName = new Map<string, Set<Entry>>()

  constructor (dir: string, clock: MonotonicClock, temps: TempInodes) {
    this.#dir = dir
    this.#clock = clock
    this.#temps = temps
  }

  get size (): number {
    return this.#byKey.size
  }

  values (): IterableIterator<Entry> {
    return this.#byKey.values()
  }

  /** Whether `e` is still the table's entry for its key (not forgotten or replaced). */
  has (e: Entry): boolean {
    return this.#byKey.get(e.key) === e
  }

  named (name: string): Iterable<Entry> {
    return this.#byName.get(name) ?? []
  }

  /** Stats one inbox name and records what it saw; a name that is gone (or not a regular file) is forgotten. */
  async observe (name: string, scanId = 0): Promise<void> {
    const before = this.#clock.nowMs()
    let st: BigIntStats | undefined
    try {
      st = await fs.lstat(path.join(this.#dir, name), { bigint: true })
    } catch {}
    if (st == null || !st.isFile()) {
      for (const e of this.named(name)) if (e.state !== 'delivering') this.forget(e)
      return
    }
    const after = this.#clock.nowMs()
    const fp = fingerprintOf(st)
    const key = `${name}\0${st.ino}`
    // Another inode under this name: that file was replaced (a delivery in flight re-checks its own).
    for (const other of this.named(name)) if (other.key !== key && other.state !== 'delivering') this.forget(other)
    const e = this.#byKey.get(key)
    if (e == null) {
      this.#add(this.#newEntry(key, name, fp, st, before, after, scanId))
      return
    }
    e.seenInScan = scanId
    e.lastStatMs = before
    if (!e.renamedFromTemp) e.renamedFromTemp = this.#temps.take(st)
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

  /** True (and the entries marked seen) if every entry under `name` is queued or being delivered. */
  onlyInFlight (name: string, scanId: number): boolean {
    const set = this.#byName.get(name)
    if (set == null || set.size === 0) return false
    for (const e of set) if (e.state !== 'queued' && e.state !== 'delivering') return false
    for (const e of set) e.seenInScan = scanId
    return true
  }

  /** Forgets every entry a full scan did not see (except deliveries in flight). */
  forgetUnseen (scanId: number): void {
    for (const e of this.#byKey.values()) if (e.seenInScan !== scanId && e.state !== 'delivering') this.forget(e)
  }

  forget (e: Entry): void {
    if (this.#byKey.get(e.key) === e) this.#byKey.delete(e.key)
    const set = this.#byName.get(e.name)
    set?.delete(e)
    if (set?.size === 0) this.#byName.delete(e.name)
  }

  /** The earliest due time of a waiting entry (Infinity: none). */
  nextDueMs (): number {
    let due = Infinity
    for (const e of this.#byKey.values()) if (isWaiting(e) && e.dueAtMs < due) due = e.dueAtMs
    return due
  }

  #newEntry (key: string, name: string, fp: FileFingerprint, st: BigIntStats, before: number, after: number, scanId: number): Entry {
    return {
      key, name, fp, fpSinceMs: after, lastStatMs: before, observations: 1, renamedFromTemp: this.#temps.take(st),
      state: 'pending', sidecarPaths: [], failures: 0, retryAtMs: 0, readyLogged: false, mismatchWarned: false, hashing: false,
      seenInScan: scanId, dueAtMs: Infinity, restatDue: false
    }
  }

  #add (e: Entry): void {
    this.#byKey.set(e.key, e)
    let set = this.#byName.get(e.name)
    if (set == null) this.#byName.set(e.name, set = new Set())
    set.add(e)
  }
}
