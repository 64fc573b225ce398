/**
 * Open-writer detection through /proc: does any local process hold a file open for writing?
 *
 * Why: a file written in place (scp, rsync --inplace) looks complete by size and timestamps while its
 * writer is merely stalled. On Linux the writer is visible: some `/proc/PID/fd/N` resolves to the file's
 * (dev, ino) and `/proc/PID/fdinfo/N` has O_WRONLY or O_RDWR in `flags`. scp/sftp uploads are written by
 * the local sshd, so this catches remote writers too. It needs root (or the writer's uid) to see other
 * users' processes; unreadable pids are skipped silently, so a non-root daemon sees only its own user's.
 *
 * One scan looks for many files at once (the inbox batches its candidates), is bounded in time, and
 * yields to the event loop every few hundred fds.
 */

import fs from 'node:fs'
import { setImmediate as yieldToLoop } from 'node:timers/promises'

/** How long one /proc scan may take before it gives up and answers "unknown". */
export const DEFAULT_OPEN_WRITER_SCAN_TIMEOUT_MS = 5_000
/**
 * fds examined synchronously between two yields to the event loop. Synchronous stat of a /proc fd link
 * costs ~10 us against ~40 us through the libuv thread pool (which hashing and LevelDB share), so a slice
 * blocks the loop for a few ms at most and the whole scan stays cheap (~0.2 s for 20,000 open fds).
 */
export const OPEN_WRITER_SCAN_SLICE_FDS = 256

/** O_ACCMODE bits in fdinfo `flags` (octal): O_WRONLY = 1, O_RDWR = 2. */
const O_ACCMODE = 0o3

const PROC_DIR = '/proc'

/** A file's identity: device and inode, as `fs.stat(..., { bigint: true })` reports them. */
export interface FileIdentity {
  dev: bigint
  ino: bigint
}

export interface OpenWriterScanInit {
  /** Give up after this long (default DEFAULT_OPEN_WRITER_SCAN_TIMEOUT_MS). */
  timeoutMs?: number
  signal?: AbortSignal
}

/**
 * The result of one /proc scan. `available: false`: /proc is not readable here (not Linux, or hidden).
 * `complete: false`: the scan ran out of time or was aborted, so a writer may have been missed.
 */
export type OpenWriterScan =
  | { available: false }
  | { available: true, complete: boolean, writers: Set<string>, pidsSkipped: number }

/** The key used in `OpenWriterScan.writers` for a file identity. */
export function identityKey (id: FileIdentity): string {
  return `${id.dev}:${id.ino}`
}

/**
 * Returns whether some local process has `path` open for writing; `undefined` when that cannot be told
 * (/proc not readable, or the scan ran out of time). Throws if `path` itself cannot be stat'ed.
 */
export async function hasOpenWriter (path: string, init: OpenWriterScanInit = {}): Promise<boolean | undefined> {
  const st = await fs.promises.stat(path, { bigint: true })
  const id = { dev: st.dev, ino: st.ino }
  const scan = await scanOpenWriters([id], init)
  if (!scan.available) return undefined
  if (scan.writers.has(identityKey(id))) return true
  return scan.complete ? false : undefined
}

/**
 * Scans /proc once for writers of any of `files`. Returns the keys (`identityKey`) of those found open
 * for writing. Never throws for unreadable or vanished processes.
 */
export async function scanOpenWriters (files: FileIdentity[], init: OpenWriterScanInit = {}): Promise<OpenWriterScan> {
  const wanted = new Set(files.map(identityKey))
  let pids: string[]
  try {
    pids = fs.readdirSync(PROC_DIR).filter(n => /^\d+$/.test(n))
    // /proc mounted but our own fds unreadable (hidepid, sandbox): we cannot see anything useful.
    fs.readdirSync(`${PROC_DIR}/self/fd`)
  } catch {
    return { available: false }
  }
  const writers = new Set<string>()
  if (wanted.size === 0) return { available: true, complete: true, writers, pidsSkipped: 0 }

  const deadline = performance.now() + (init.timeoutMs ?? DEFAULT_OPEN_WRITER_SCAN_TIMEOUT_MS)
  let pidsSkipped = 0
  let sliceLeft = OPEN_WRITER_SCAN_SLICE_FDS
  for (const pid of pids) {
    let fds: string[]
    try {
      fds = fs.readdirSync(`${PROC_DIR}/${pid}/fd`)
    } catch {
      pidsSkipped++ // gone, or not ours to read
      continue
    }
    for (const fd of fds) {
      if (--sliceLeft <= 0) {
        sliceLeft = OPEN_WRITER_SCAN_SLICE_FDS
        await yieldToLoop()
        if (performance.now() > deadline || init.signal?.aborted === true) return { available: true, complete: false, writers, pidsSkipped }
      }
      const key = fdTarget(pid, fd)
      if (key != null && wanted.has(key) && fdIsWritable(pid, fd)) writers.add(key)
    }
  }
  return { available: true, complete: true, writers, pidsSkipped }
}

/** The (dev, ino) key of what an fd points to, or undefined (gone, not a file, unreadable). */
function fdTarget (pid: string, fd: string): string | undefined {
  try {
    // stat() follows the magic link even to an unlinked file; sockets and pipes are not regular files.
    const st = fs.statSync(`${PROC_DIR}/${pid}/fd/${fd}`, { bigint: true })
    return st.isFile() ? identityKey({ dev: st.dev, ino: st.ino }) : undefined
  } catch {
    return undefined
  }
}

/** Whether fd was opened O_WRONLY or O_RDWR; false when unreadable (the fd closed meanwhile). */
function fdIsWritable (pid: string, fd: string): boolean {
  try {
    const info = fs.readFileSync(`${PROC_DIR}/${pid}/fdinfo/${fd}`, 'utf8')
    const m = /^flags:\s*([0-7]+)/m.exec(info)
    return m?.[1] != null && (parseInt(m[1], 8) & O_ACCMODE) !== 0
  } catch {
    return false
  }
}
