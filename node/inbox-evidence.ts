/**
 * Evidence that a file arrived in the inbox whole, by rename or link, kept between scans:
 *  - `TempInodes`: inodes seen under a temp name (`.f.XXXXXX`, `f.part`, `.incoming/f`); the same inode
 *    later under a real name was renamed (or linked) there;
 *  - `WatchEvidence`: what fs.watch said about a name since it last appeared: `moved` after a 'rename'
 *    event (IN_CREATE, IN_MOVED_TO or a delete), `written` after a 'change' event (IN_MODIFY, IN_ATTRIB).
 *    A name that appeared with no write under it arrived whole by rename or link.
 * Both are bounded in size and age; losing evidence only makes a file wait for the quiet rule.
 */

import fs from 'node:fs/promises'
import type { BigIntStats } from 'node:fs'
import { identityKey } from './open-writers.ts'

/** How long an inode seen under a temp name counts as evidence for a rename, and how many are kept. */
export const TEMP_INODE_TTL_MS = 10 * 60_000
export const TEMP_INODES_MAX = 100_000
/** How long fs.watch evidence about a name that is not in the inbox is kept, and how many names at most. */
export const WATCH_EVIDENCE_TTL_MS = 10_000
export const WATCH_EVIDENCE_NAMES_MAX = 100_000

export class TempInodes {
  /** dev:ino -> when and with which birth time it was last seen under a temp name (oldest first). */
  readonly #seen = new Map<string, { birthNs: bigint, seenAtMs: number }>()

  get size (): number {
    return this.#seen.size
  }

  remember (st: BigIntStats, nowMs: number): void {
    const key = identityKey(st)
    this.#seen.delete(key)
    this.#seen.set(key, { birthNs: st.birthtimeNs, seenAtMs: nowMs })
    if (this.#seen.size > TEMP_INODES_MAX) {
      const oldest = this.#seen.keys().next().value
      if (oldest != null) this.#seen.delete(oldest)
    }
  }

  /** Whether `st`'s inode was seen under a temp name (the evidence is used up). */
  take (st: BigIntStats): boolean {
    const key = identityKey(st)
    const rec = this.#seen.get(key)
    if (rec == null) return false
    this.#seen.delete(key)
    // A different birth time means the inode number was reused by a new file: no evidence.
    return rec.birthNs === 0n || st.birthtimeNs === 0n || rec.birthNs === st.birthtimeNs
  }

  prune (nowMs: number): void {
    const cutoff = nowMs - TEMP_INODE_TTL_MS
    for (const [key, rec] of this.#seen) {
      if (rec.seenAtMs >= cutoff) break
      this.#seen.delete(key)
    }
  }
}

/** Stats a temp name and remembers its inode (nothing if it is gone already or not a regular file). */
export async function trackTemp (temps: TempInodes, p: string, nowMs: () => number): Promise<void> {
  let st: BigIntStats
  try {
    st = await fs.lstat(p, { bigint: true })
  } catch {
    return
  }
  if (st.isFile()) temps.remember(st, nowMs())
}

export class WatchEvidence {
  readonly #byName = new Map<string, { moved: boolean, written: boolean, atMs: number }>()

  /** A 'rename' event: the name appeared or went; whatever was written under it before no longer counts. */
  moved (name: string, nowMs: number): void {
    this.#byName.delete(name)
    if (this.#byName.size < WATCH_EVIDENCE_NAMES_MAX) this.#byName.set(name, { moved: true, written: false, atMs: nowMs })
  }

  /** A 'change' event: something was written under the name (or its attributes changed). */
  written (name: string): void {
    const ev = this.#byName.get(name)
    if (ev != null) ev.written = true
  }

  /** The name appeared by a rename event and nothing was written under it since. */
  movedIn (name: string): boolean {
    const ev = this.#byName.get(name)
    return ev != null && ev.moved && !ev.written
  }

  /** Drops evidence about names that have been gone for a while (claimed or deleted). */
  prune (present: Set<string>, nowMs: number): void {
    const cutoff = nowMs - WATCH_EVIDENCE_TTL_MS
    for (const [name, ev] of this.#byName) {
      if (!present.has(name) && ev.atMs < cutoff) this.#byName.delete(name)
    }
  }
}
