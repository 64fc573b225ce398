/**
 * The inbox's readiness rules (DESIGN.md §6, notes/reliability.md §2), apart from the watcher that applies
 * them (node/inbox.ts), so each rule reads in one place and is a pure function of what was observed.
 *
 * A file is READY when
 *  - `rename`: it arrived by rename/link: its inode was seen under a temp name, or ctime > mtime (the times
 *    were set after the last write), or fs.watch saw the name appear with no write under it (checked only
 *    after every watch event queued before the stat was delivered: see `eventBarrier`). Such a file is
 *    complete the moment it appears, so it is ready at once, provided no local process has it open for
 *    writing; only when /proc cannot tell (no writer check) must it also hold still for `settleMs`;
 *  - `sidecar`: `NAME.sha256` matches its content (ready at once), or `NAME.size` matches its size, it held
 *    still for `settleMs` and has no writer; a sidecar that does not match holds the file back, whatever
 *    else is true;
 *  - `quiet`: nothing changed for `quietMs` (monotonic clock) and no local writer ("unverified
 *    completeness": a killed in-place writer looks exactly like this).
 */

import type { BigIntStats } from 'node:fs'
import { setImmediate as nextTurn } from 'node:timers/promises'

export type Readiness = 'rename' | 'sidecar' | 'quiet'

/** Monotonic clock for settle and quiet periods (default `performance.now()`; tests inject their own). */
export interface MonotonicClock {
  nowMs: () => number
}

const TEMP_SUFFIX = /\.(part|filepart|tmp)$/i
const SIDECAR_SUFFIX = /\.(sha256|size)$/
export const SIDECAR_SUFFIXES = ['.sha256', '.size'] as const

/** What identifies one version of a file; the claimer re-stats and compares all of it. */
export interface FileFingerprint {
  dev: bigint
  ino: bigint
  size: bigint
  mtimeNs: bigint
  ctimeNs: bigint
}

/** Dotfiles and temp names: never claimed (their inodes are remembered as evidence of a later rename). */
export function isIgnoredName (name: string): boolean {
  return name.startsWith('.') || TEMP_SUFFIX.test(name)
}

export function isSidecarName (name: string): boolean {
  return SIDECAR_SUFFIX.test(name)
}

/** The file a sidecar name describes (`a.bin.sha256` -> `a.bin`). */
export function sidecarSubject (name: string): string {
  return name.replace(SIDECAR_SUFFIX, '')
}

export function fingerprintOf (st: BigIntStats): FileFingerprint {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs }
}

export function fpKey (fp: FileFingerprint): string {
  return `${fp.dev}:${fp.ino}:${fp.size}:${fp.mtimeNs}:${fp.ctimeNs}`
}

/**
 * Resolves once every fs.watch event queued before the call has been delivered: the second of two
 * check-phase turns comes after a full poll phase, and libuv reads the inotify fd to EAGAIN in every poll
 * phase. A write under a name queues IN_MODIFY before its bytes are visible to a stat, so after a stat and
 * this barrier, "no write event seen" means the size the stat saw was not written under this name.
 */
export async function eventBarrier (): Promise<void> {
  await nextTurn()
  await nextTurn()
}

/** What the watcher knows about one version (fingerprint) of a file. */
export interface Observation {
  fp: FileFingerprint
  /** Clock time after the first stat that saw `fp`. */
  fpSinceMs: number
  /** Clock time before the latest stat that saw `fp`. */
  lastStatMs: number
  /** Stats that saw exactly `fp`. */
  observations: number
}

export type SidecarVerdict =
  | { kind: 'match', path: string, strong: boolean }
  | { kind: 'mismatch', reason: string }
  /** A `.sha256` sidecar whose file has no digest for this fingerprint yet. */
  | { kind: 'need-hash' }
  | { kind: 'wait' }

export interface RuleSettings {
  settleMs: number
  quietMs: number
  /** Whether the open-writer check works here ('proc'); otherwise rename evidence must also settle. */
  writerCheck: boolean
}

export type Verdict =
  /** Ready once the open-writer check (if `writerCheck`) clears it. */
  | { kind: 'ready', readiness: Readiness, sidecarPath?: string, writerCheck: boolean }
  /** Not ready; look again in `dueInMs` (with a fresh stat if `restat`), or when an event or rescan says so. */
  | { kind: 'wait', dueInMs?: number, restat: boolean }
  | { kind: 'hash' }
  | { kind: 'mismatch', reason: string }

/** How long `o`'s fingerprint has held still across stats; -1 after a single stat. */
export function stableMs (o: Observation): number {
  return o.observations >= 2 ? o.lastStatMs - o.fpSinceMs : -1
}

/**
 * The rules. `renamed`: evidence that the file arrived whole (see the header); `sidecar`: the verdict of
 * its sidecars, undefined when it has none. Pure: the caller does the I/O (stats, sidecar reads, hashing,
 * the writer scan) and acts on the verdict.
 */
export function judge (o: Observation, renamed: boolean, sidecar: SidecarVerdict | undefined, nowMs: number, s: RuleSettings): Verdict {
  const stable = stableMs(o)
  const untilSettled = (): Verdict => ({ kind: 'wait', dueInMs: Math.max(0, s.settleMs - Math.max(0, stable)), restat: true })
  if (sidecar != null) {
    switch (sidecar.kind) {
      case 'match':
        if (sidecar.strong) return { kind: 'ready', readiness: 'sidecar', sidecarPath: sidecar.path, writerCheck: false } // the hash proves the content
        return stable >= s.settleMs ? { kind: 'ready', readiness: 'sidecar', sidecarPath: sidecar.path, writerCheck: true } : untilSettled()
      case 'mismatch':
        return { kind: 'mismatch', reason: sidecar.reason }
      case 'need-hash':
        // Hash only a version seen twice (a file still arriving would be hashed for nothing).
        return o.observations >= 2 ? { kind: 'hash' } : { kind: 'wait', dueInMs: s.settleMs, restat: true }
      case 'wait':
        return { kind: 'wait', dueInMs: s.settleMs, restat: true }
    }
  }
  if (renamed) {
    if (s.writerCheck || stable >= s.settleMs) return { kind: 'ready', readiness: 'rename', writerCheck: true }
    return untilSettled()
  }
  if (stable >= s.quietMs) return { kind: 'ready', readiness: 'quiet', writerCheck: true }
  return { kind: 'wait', dueInMs: Math.max(0, o.fpSinceMs + s.quietMs - nowMs), restat: true }
}
