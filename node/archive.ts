/**
 * The backup's archive: a directory a person can browse, holding every archived file under its
 * sanitised original name, plus `.filemesh-index.tsv` (one `cid\tsize\trelPath\tISO-time` line per
 * file) to find any file by CID. A file is fetched into `.incoming/` (same filesystem), fsynced by
 * the writer, then committed: hard-linked to its name without ever replacing an existing entry
 * (symlinks planted in the archive are never followed), the directory fsynced, the index line
 * appended and fsynced, and only then the part file removed.
 *
 * Crash safety: if the process dies after the link and before the index line, the part file and
 * the archived name are the same inode; the retried commit recognises it and finishes the job.
 */

import type { Stats } from 'node:fs'
import * as fs from 'node:fs/promises'
import * as path from 'node:path'
import { collisionName, sanitizeName } from '../protocols/names.ts'
import { ExistsError, ensureDir, errnoCode, fsyncDir, linkNoClobber, syncHandle } from './fsutil.ts'
import { hashFile } from './hasher.ts'
import { createLogger } from './log.ts'
import type { Logger } from './log.ts'

export const INCOMING_DIR_NAME = '.incoming'
export const INDEX_FILE_NAME = '.filemesh-index.tsv'
/** Collision names tried (`name~TAG`, `name~TAG-1`, …) before a commit gives up. */
export const DEFAULT_COLLISION_ATTEMPTS_MAX = 1000
const CID_CHARS_MAX = 256

/** The archive root (or `.incoming/`) is not a real directory: a symlink, a file, or missing. */
export class ArchiveRootError extends Error {
  static readonly NAME = 'ArchiveRootError'
  override readonly name = 'ArchiveRootError'
  readonly path: string

  constructor (dirPath: string, why: string) {
    super(`archive directory ${dirPath} ${why}; refusing to use it`)
    this.path = dirPath
  }
}

/** The part file handed to commit is missing or not a regular file. */
export class PartFileError extends Error {
  static readonly NAME = 'PartFileError'
  override readonly name = 'PartFileError'
  readonly path: string

  constructor (partPath: string, why: string) {
    super(`part file ${partPath} ${why}`)
    this.path = partPath
  }
}

export interface ArchiveInit {
  /** The archive directory. Must be a real directory (not a symlink); created if missing. */
  dir: string
  /** Wall clock for the index's time column (default `() => new Date()`). */
  now?: () => Date
  log?: Logger
  collisionAttemptsMax?: number
}

export interface ArchiveEntry {
  cid: string
  size: number
  /** Path relative to the archive root (a single component today). */
  relPath: string
  /** ISO-8601 time of the commit. */
  time: string
}

export interface ArchiveCommit {
  /** Absolute path of the archived file. */
  path: string
  relPath: string
  /** True if this CID was already archived under this name; the part file was removed. */
  existed: boolean
}

export class Archive {
  readonly dir: string
  readonly incomingDir: string
  readonly indexPath: string
  private readonly now: () => Date
  private readonly log: Logger
  private readonly collisionAttemptsMax: number
  private index: Map<string, ArchiveEntry[]> | undefined
  /** The index file lacks its final newline (a torn append): the next append starts with one. */
  private indexNeedsNewline = false
  /** Commits run one at a time, so two commits never race for one name or one index line. */
  private queue: Promise<unknown> = Promise.resolve()

  constructor (init: ArchiveInit) {
    this.dir = path.resolve(init.dir)
    this.incomingDir = path.join(this.dir, INCOMING_DIR_NAME)
    this.indexPath = path.join(this.dir, INDEX_FILE_NAME)
    this.now = init.now ?? (() => new Date())
    this.log = init.log ?? createLogger('archive')
    this.collisionAttemptsMax = init.collisionAttemptsMax ?? DEFAULT_COLLISION_ATTEMPTS_MAX
  }

  /** Creates the archive directory and `.incoming/` (durably) and checks both are real directories. */
  async init (): Promise<void> {
    if (await lstatOrUndefined(this.dir) == null) await ensureDir(this.dir)
    await assertRealDir(this.dir)
    await ensureDir(this.incomingDir)
    await assertRealDir(this.incomingDir)
  }

  /**
   * Where to write the file with this CID before commit: `DIR/.incoming/CID.part`, on the archive's
   * filesystem so the commit is a link, not a copy. Deterministic, so a restart finds a previous
   * attempt; one writer per CID at a time.
   */
  incomingPath (cid: string): string {
    return path.join(this.incomingDir, `${cidFileStem(cid)}.part`)
  }

  /**
   * Archives the fully written and fsynced `partPath` as `name` (sanitised) without overwriting
   * anything: free name → link, fsync dir, index line, remove part. Name taken by this CID (per the
   * index) → `existed`, part removed. Taken by anything else, a symlink included → `name~TAG`,
   * `name~TAG-1`, … The result is always directly inside the archive directory.
   */
  async commit (partPath: string, name: string, cid: string): Promise<ArchiveCommit> {
    const run = this.queue.then(async () => this.commitNow(partPath, name, cid))
    this.queue = run.catch(() => {})
    return run
  }

  /** The most recent index entry for `cid`, if archived. */
  async lookup (cid: string): Promise<ArchiveEntry | undefined> {
    const entries = (await this.loadIndex()).get(cid)
    return entries?.[entries.length - 1]
  }

  private async commitNow (partPath: string, name: string, cid: string): Promise<ArchiveCommit> {
    cidFileStem(cid)
    await assertRealDir(this.dir)
    const part = await lstatOrUndefined(partPath)
    if (part == null) throw new PartFileError(partPath, 'does not exist')
    if (!part.isFile()) throw new PartFileError(partPath, 'is not a regular file')
    const index = await this.loadIndex()
    const known = index.get(cid) ?? []
    const base = sanitizeName(name)

    let vanished = 0
    for (let n = -1; n < this.collisionAttemptsMax; n++) {
      const relPath = n < 0 ? base : collisionName(base, cid, n)
      const target = this.resolveInside(relPath)
      try {
        await linkNoClobber(partPath, target)
      } catch (err) {
        if (!(err instanceof ExistsError)) throw err
        const existing = await lstatOrUndefined(target)
        if (existing == null && vanished++ < 3) { n--; continue } // removed meanwhile: try that name again
        if (existing == null) continue
        if (existing.isFile() && existing.ino === part.ino && existing.dev === part.dev) {
          // Our own link from an attempt that crashed before finishing.
          await fsyncDir(this.dir)
          const existed = known.some((e) => e.relPath === relPath)
          if (!existed) await this.appendIndex({ cid, size: part.size, relPath, time: this.now().toISOString() })
          await fs.rm(partPath, { force: true })
          return { path: target, relPath, existed }
        }
        if (existing.isFile() && known.some((e) => e.relPath === relPath && e.size === existing.size)) {
          await fs.rm(partPath, { force: true })
          this.log.debug('already archived', { cid, path: relPath })
          return { path: target, relPath, existed: true }
        }
        if (existing.isFile() && existing.size === part.size && !this.isIndexed(index, relPath) && (await hashFile(target)).root.toString() === cid) {
          // A copy of this very file that a crash left unindexed (killed after the link, before the index line,
          // and the part file was removed since): adopt it instead of archiving a second copy.
          await this.appendIndex({ cid, size: part.size, relPath, time: this.now().toISOString() })
          await fs.rm(partPath, { force: true })
          this.log.warn('adopted an unindexed archive copy left by a crash', { cid, path: relPath })
          return { path: target, relPath, existed: false }
        }
        if (existing.isSymbolicLink()) this.log.warn('symlink at archive name, not followed', { cid, path: relPath })
        continue
      }
      await fsyncDir(this.dir)
      await this.appendIndex({ cid, size: part.size, relPath, time: this.now().toISOString() })
      await fs.rm(partPath, { force: true })
      if (n >= 0) this.log.info('name taken, archived under a collision name', { cid, name: base, path: relPath })
      this.log.info('archived', { cid, path: relPath, bytes: part.size })
      return { path: target, relPath, existed: false }
    }
    throw new Error(`archive: no free name for ${cid} after ${this.collisionAttemptsMax} attempts (${base})`)
  }

  private isIndexed (index: Map<string, ArchiveEntry[]>, relPath: string): boolean {
    for (const entries of index.values()) if (entries.some((e) => e.relPath === relPath)) return true
    return false
  }

  /** The absolute path of `relPath`, asserting that it is a direct child of the archive directory. */
  private resolveInside (relPath: string): string {
    const target = path.join(this.dir, relPath)
    const rel = path.relative(this.dir, target)
    if (rel !== relPath || rel === '' || rel.startsWith('.') || path.isAbsolute(rel) || rel.includes(path.sep)) {
      throw new Error(`archive invariant broken: ${JSON.stringify(relPath)} resolves outside ${this.dir}`)
    }
    return target
  }

  private async loadIndex (): Promise<Map<string, ArchiveEntry[]>> {
    if (this.index != null) return this.index
    const index = new Map<string, ArchiveEntry[]>()
    let text = ''
    try {
      text = await fs.readFile(this.indexPath, 'utf8')
    } catch (err) {
      if (errnoCode(err) !== 'ENOENT') throw err
    }
    this.indexNeedsNewline = text !== '' && !text.endsWith('\n')
    let bad = 0
    for (const line of text.split('\n')) {
      if (line === '') continue
      const entry = parseIndexLine(line)
      if (entry == null) { bad++; continue }
      addEntry(index, entry)
    }
    if (bad > 0) this.log.warn('skipped malformed index lines', { path: this.indexPath, lines: bad })
    this.index = index
    return index
  }

  /** Appends one line to the index and fsyncs it (a new index file also gets a directory fsync). */
  private async appendIndex (entry: ArchiveEntry): Promise<void> {
    const index = await this.loadIndex()
    const fields = [entry.cid, String(entry.size), entry.relPath, entry.time]
    if (fields.some((f) => /[\t\n\r]/.test(f))) throw new Error(`archive invariant broken: index field with tab or newline: ${JSON.stringify(fields)}`)
    const line = (this.indexNeedsNewline ? '\n' : '') + fields.join('\t') + '\n'
    const fh = await fs.open(this.indexPath, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o644)
    let created: boolean
    try {
      created = (await fh.stat()).size === 0
      await fh.write(line)
      await syncHandle(fh, this.indexPath)
    } finally {
      await fh.close()
    }
    if (created) await fsyncDir(this.dir)
    this.indexNeedsNewline = false
    addEntry(index, entry)
  }
}

function addEntry (index: Map<string, ArchiveEntry[]>, entry: ArchiveEntry): void {
  const list = index.get(entry.cid)
  if (list == null) index.set(entry.cid, [entry])
  else list.push(entry)
}

function parseIndexLine (line: string): ArchiveEntry | undefined {
  const parts = line.split('\t')
  if (parts.length !== 4) return undefined
  const [cid, sizeText, relPath, time] = parts as [string, string, string, string]
  const size = Number(sizeText)
  if (cid === '' || relPath === '' || !/^\d+$/.test(sizeText) || !Number.isSafeInteger(size)) return undefined
  return { cid, size, relPath, time }
}

/** The CID as a file-name stem; CIDs are multibase strings, alphanumeric in every base we accept. */
function cidFileStem (cid: string): string {
  if (cid.length === 0 || cid.length > CID_CHARS_MAX || !/^[A-Za-z0-9]+$/.test(cid)) {
    throw new TypeError(`archive: not a CID string: ${JSON.stringify(cid.slice(0, 80))}`)
  }
  return cid
}

async function lstatOrUndefined (p: string): Promise<Stats | undefined> {
  try {
    return await fs.lstat(p)
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined
    throw err
  }
}

async function assertRealDir (dirPath: string): Promise<void> {
  const st = await lstatOrUndefined(dirPath)
  if (st == null) throw new ArchiveRootError(dirPath, 'does not exist')
  if (st.isSymbolicLink()) throw new ArchiveRootError(dirPath, 'is a symlink')
  if (!st.isDirectory()) throw new ArchiveRootError(dirPath, 'is not a directory')
}
