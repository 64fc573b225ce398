/**
 * The on-disk layout of broadcast channels, and the only code that changes it. Under the channels root
 * (default DATA/channels):
 *
 *   NAME/NAME.vN          a complete, verified version (read-only, mode 0444), never modified after its rename
 *   NAME/NAME.vN.part     a version being fetched; never served as a version, removed at start
 *   NAME/NAME.current     symlink -> NAME.vN (relative): the version readers use; replaced atomically
 *   NAME/.NAME.current.*.tmp   a symlink about to replace NAME.current (removed at start if a crash left it)
 *   .incoming/ID.publish  a file `filemesh publish` handed to the daemon (same filesystem, so it is renamed)
 *
 * A reader that opens NAME.current gets a whole published version or the one before, never a partial one:
 * versions appear only by rename after fsync, and the link is switched by rename over it (then the
 * directory is fsynced). Old versions are unlinked only after the link moved on; a reader that opened one
 * keeps reading it (open it once, then read from the descriptor).
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import path from 'node:path'
import { isChannelName } from '../protocols/messages.ts'
import { versionFileName } from './channel-record.ts'
import { ensureDir, fsyncDir, renameDurable, syncHandle } from './fsutil.ts'

export const INCOMING_DIR = '.incoming'
/** A staged publish file: a random ID the CLI chose, nothing a request could turn into a path. */
const STAGED_NAME_RE = /^[A-Za-z0-9_-]{8,64}\.publish$/
/** Staged files older than this are removed at start (a `filemesh publish` that never asked the daemon). */
export const DEFAULT_STAGED_MAX_AGE_MS = 3_600_000

export class ChannelPathError extends Error {
  override name = 'ChannelPathError'
}

export class ChannelStore {
  readonly root: string

  constructor (root: string) {
    this.root = path.resolve(root)
  }

  get incomingDir (): string {
    return path.join(this.root, INCOMING_DIR)
  }

  dir (channel: string): string {
    if (!isChannelName(channel)) throw new ChannelPathError(`not a channel name: ${JSON.stringify(channel)}`)
    return path.join(this.root, channel)
  }

  versionPath (channel: string, version: number): string {
    return path.join(this.dir(channel), versionFileName(channel, version))
  }

  partPath (channel: string, version: number): string {
    return `${this.versionPath(channel, version)}.part`
  }

  currentPath (channel: string): string {
    return path.join(this.dir(channel), `${channel}.current`)
  }

  async init (): Promise<void> {
    await ensureDir(this.root)
    await ensureDir(this.incomingDir)
  }

  /** A staged publish file by its name (as the CLI wrote it), checked to be a plain regular file. */
  async staged (name: string): Promise<string> {
    if (!STAGED_NAME_RE.test(name)) throw new ChannelPathError(`not a staged publish file name: ${JSON.stringify(name)}`)
    const file = path.join(this.incomingDir, name)
    const st = await fs.lstat(file).catch((err) => { throw new ChannelPathError(`no staged file ${name}: ${err.code ?? err.message}`) })
    if (!st.isFile()) throw new ChannelPathError(`staged ${name} is not a regular file`)
    return file
  }

  /** fsyncs a staged file (the CLI copies without): its bytes must be durable before it is recorded as a version. */
  async syncStaged (file: string): Promise<void> {
    const fh = await fs.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW)
    try {
      await syncHandle(fh, file)
    } finally {
      await fh.close()
    }
  }

  /** Creates a fresh NAME.vN.part of `size` bytes (any older one is removed) and returns it open for writing. */
  async createPart (channel: string, version: number, size: number): Promise<{ path: string, fh: FileHandle }> {
    await ensureDir(this.dir(channel))
    const part = this.partPath(channel, version)
    await fs.rm(part, { force: true })
    const fh = await fs.open(part, 'wx', 0o644)
    try {
      if (size > 0) await fh.truncate(size)
    } catch (err) {
      await fh.close()
      throw err
    }
    return { path: part, fh }
  }

  /** Moves a complete, fsynced file (a part, or a staged publish file) to NAME.vN, read-only; fsyncs the directories. */
  async commitVersion (from: string, channel: string, version: number): Promise<string> {
    await ensureDir(this.dir(channel))
    const to = this.versionPath(channel, version)
    await fs.chmod(from, 0o444)
    await renameDurable(from, to)
    return to
  }

  /** Points NAME.current at NAME.vN: a new symlink under a temp name, renamed over the old one, directory fsynced. */
  async switchCurrent (channel: string, version: number): Promise<void> {
    const dir = this.dir(channel)
    const tmp = path.join(dir, `.${channel}.current.${randomBytes(6).toString('hex')}.tmp`)
    await fs.symlink(versionFileName(channel, version), tmp)
    try {
      await fs.rename(tmp, this.currentPath(channel))
    } catch (err) {
      await fs.rm(tmp, { force: true })
      throw err
    }
    await fsyncDir(dir)
  }

  /** The version NAME.current points at, if it is a link to a version file of this channel. */
  async current (channel: string): Promise<number | undefined> {
    const target = await fs.readlink(this.currentPath(channel)).catch(() => undefined)
    if (target == null) return undefined
    const m = /^(.*)\.v(\d+)$/.exec(target)
    if (m == null || m[1] !== channel) return undefined
    const n = Number(m[2])
    return Number.isSafeInteger(n) ? n : undefined
  }

  /** Size of NAME.vN, or undefined if it is missing. */
  async versionSize (channel: string, version: number): Promise<number | undefined> {
    const st = await fs.lstat(this.versionPath(channel, version)).catch(() => undefined)
    return st?.isFile() === true ? st.size : undefined
  }

  /** Removes version files (after the link moved on) and fsyncs the directory once. */
  async removeVersions (channel: string, versions: number[]): Promise<void> {
    if (versions.length === 0) return
    for (const v of versions) await fs.rm(this.versionPath(channel, v), { force: true })
    await fsyncDir(this.dir(channel))
  }

  /**
   * At start: removes what a crash or an interrupted fetch left in the channel's directory (parts, temp
   * links, version files the record does not list). Returns the names removed.
   */
  async sweep (channel: string, keepVersions: Set<number>): Promise<string[]> {
    const dir = this.dir(channel)
    const names = await fs.readdir(dir).catch((err) => { if (err.code === 'ENOENT') return [] as string[]; throw err })
    const removed: string[] = []
    for (const name of names) {
      const version = new RegExp(`^${escapeRe(channel)}\\.v(\\d+)$`).exec(name)
      const stray = name.endsWith('.part') || (name.startsWith(`.${channel}.current.`) && name.endsWith('.tmp')) ||
        (version != null && !keepVersions.has(Number(version[1])))
      if (!stray) continue
      await fs.rm(path.join(dir, name), { force: true })
      removed.push(name)
    }
    if (removed.length > 0) await fsyncDir(dir)
    return removed
  }

  /** Removes staged publish files older than `maxAgeMs` (a CLI that never asked the daemon to publish them). */
  async sweepIncoming (maxAgeMs = DEFAULT_STAGED_MAX_AGE_MS): Promise<number> {
    const now = Date.now()
    let removed = 0
    for (const name of await fs.readdir(this.incomingDir).catch(() => [] as string[])) {
      const file = path.join(this.incomingDir, name)
      const st = await fs.lstat(file).catch(() => undefined)
      if (st == null || now - st.mtimeMs < maxAgeMs) continue
      await fs.rm(file, { force: true })
      removed++
    }
    return removed
  }
}

function escapeRe (s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
