/**
 * Crash-safe filesystem steps, each naming its fsync (reliability notes §1): write to a temp file
 * created with O_EXCL in the same directory, fsync it, rename, fsync the directory. Without the
 * directory fsync a renamed file can vanish on power loss (ALICE, OSDI'14).
 *
 * An fsync failure is fatal: after a failed fsync ext4, XFS and Btrfs mark the dirty pages clean, so a
 * retried fsync "succeeds" without the data (Rebello et al., ATC'20). The process logs and exits with
 * EX_SOFTWARE (70); on restart it re-verifies from disk. Tests replace the exit with `setFatalHandler`.
 */

import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import * as path from 'node:path'
import { createLogger } from './log.ts'

const log = createLogger('fsutil')

/** Exit status after a failed fsync (sysexits EX_SOFTWARE). */
export const FSYNC_FATAL_EXIT_CODE = 70

/** An fsync (of a file or a directory) failed: the data it covered must be considered lost. */
export class FsyncFailedError extends Error {
  static readonly NAME = 'FsyncFailedError'
  override readonly name = 'FsyncFailedError'
  readonly code: string | undefined
  readonly path: string

  constructor (filePath: string, cause: unknown) {
    const code = errnoCode(cause)
    super(`fsync of ${filePath} failed (${code ?? String(cause)}); the process must restart and re-verify from disk`, { cause })
    this.code = code
    this.path = filePath
  }
}

/** The destination of a no-clobber link or create already exists (possibly as a symlink or directory). */
export class ExistsError extends Error {
  static readonly NAME = 'ExistsError'
  override readonly name = 'ExistsError'
  readonly path: string

  constructor (filePath: string, cause?: unknown) {
    super(`${filePath} already exists`, { cause })
    this.path = filePath
  }
}

export type FatalHandler = (err: FsyncFailedError) => void

function exitProcess (err: FsyncFailedError): void {
  log.error('fsync failed, exiting; restart re-verifies from disk', { err, path: err.path, code: err.code })
  process.exit(FSYNC_FATAL_EXIT_CODE)
}

let fatalHandler: FatalHandler = exitProcess
let fatalHandlerSet = false

/**
 * Replaces what happens on a fatal fsync failure (default: log and `process.exit(70)`). Settable once
 * per process so that nothing can quietly downgrade the policy later; a second call throws.
 */
export function setFatalHandler (handler: FatalHandler): void {
  if (fatalHandlerSet) throw new Error('the fsync fatal handler is already set')
  fatalHandlerSet = true
  fatalHandler = handler
}

/**
 * The fsync failure policy: wrap `err` as an FsyncFailedError, hand it to the fatal handler (which by
 * default exits), and throw it in case the handler returns. Never returns, so no caller can go on to
 * retry the fsync and trust it.
 */
export function fatalOnFsyncError (err: unknown, filePath: string): never {
  const failure = err instanceof FsyncFailedError ? err : new FsyncFailedError(filePath, err)
  fatalHandler(failure)
  throw failure
}

/** fsyncs an open file; any failure goes to `fatalOnFsyncError`. */
export async function syncHandle (fh: Pick<FileHandle, 'sync'>, filePath: string): Promise<void> {
  try {
    await fh.sync()
  } catch (err) {
    fatalOnFsyncError(err, filePath)
  }
}

/** fsyncs a directory so that entries created, renamed or removed in it survive a crash. */
export async function fsyncDir (dir: string): Promise<void> {
  const fh = await fs.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
  try {
    await syncHandle(fh, dir)
  } finally {
    await fh.close()
  }
}

export interface WriteFileDurableInit {
  /** File mode of a newly written file (default 0o644, less the umask). */
  mode?: number
}

/**
 * Replaces `filePath` atomically and durably with `data`: temp file in the same directory (O_EXCL,
 * named `.NAME.RANDOM.tmp` so inbox scanners skip it), write, fsync, rename, fsync the directory.
 * On error the temp file is removed and the old content, if any, is left in place.
 */
export async function writeFileDurable (filePath: string, data: string | Uint8Array, init: WriteFileDurableInit = {}): Promise<void> {
  const dir = path.dirname(filePath)
  const tmp = path.join(dir, `.${path.basename(filePath)}.${randomBytes(6).toString('hex')}.tmp`)
  const fh = await fs.open(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, init.mode ?? 0o644)
  let renamed = false
  try {
    try {
      await fh.writeFile(data)
      await syncHandle(fh, tmp)
    } finally {
      await fh.close()
    }
    await fs.rename(tmp, filePath)
    renamed = true
    await fsyncDir(dir)
  } finally {
    if (!renamed) await fs.rm(tmp, { force: true }).catch(() => {})
  }
}

/** Renames durably: rename, then fsync the destination directory and, if different, the source directory. */
export async function renameDurable (from: string, to: string): Promise<void> {
  await fs.rename(from, to)
  const toDir = path.dirname(path.resolve(to))
  const fromDir = path.dirname(path.resolve(from))
  await fsyncDir(toDir)
  if (fromDir !== toDir) await fsyncDir(fromDir)
}

/**
 * Hard-links `from` to `to` without ever replacing `to`: if `to` exists (any type, a symlink included:
 * link() does not follow it) this throws ExistsError. Does not fsync; the caller fsyncs the directory.
 * Note: if `from` is a symlink, Linux links the symlink itself; callers check `from` with lstat.
 */
export async function linkNoClobber (from: string, to: string): Promise<void> {
  try {
    await fs.link(from, to)
  } catch (err) {
    if (errnoCode(err) === 'EEXIST') throw new ExistsError(to, err)
    throw err
  }
}

/** Bytes available to an unprivileged user on the filesystem holding `filePath`. */
export async function freeBytes (filePath: string): Promise<number> {
  const s = await fs.statfs(filePath)
  return s.bavail * s.bsize
}

/**
 * mkdir -p that makes the new directories durable: every directory it creates is fsynced into its
 * parent. An existing directory is left alone (no fsync). Throws if `dirPath` exists and is not a directory.
 */
export async function ensureDir (dirPath: string): Promise<void> {
  const target = path.resolve(dirPath)
  const first = await fs.mkdir(target, { recursive: true })
  if (first == null) return
  // `first` is the topmost directory created; every directory from it down to `target` is new.
  const created: string[] = []
  for (let d = target; ; d = path.dirname(d)) {
    created.unshift(d)
    if (d === first || d === path.dirname(d)) break
  }
  for (const d of created) await fsyncDir(path.dirname(d))
}

/** The errno code (`ENOENT`, `EIO`…) of a Node system error, if it is one. */
export function errnoCode (err: unknown): string | undefined {
  if (typeof err === 'object' && err != null && 'code' in err && typeof err.code === 'string') return err.code
  return undefined
}

/** Writes all of `bytes` at `offset` (a positional write may be short). */
export async function writeFully (fh: FileHandle, bytes: Uint8Array, offset: number): Promise<void> {
  let done = 0
  while (done < bytes.byteLength) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.byteLength - done, offset + done)
    if (bytesWritten <= 0) throw new Error(`short write at offset ${offset + done}`)
    done += bytesWritten
  }
}
