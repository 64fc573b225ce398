/**
 * The reference the mesh is measured against: the landing machine pushing every file to a processor and to
 * an archive with rsync (so it uploads each file twice). Two `rsync --daemon` instances on 127.0.0.1, each
 * with its own config, port and destination in a temp dir (`use chroot = no`, so no root is needed), and
 * both pushes run concurrently with `--fsync` (durable on arrival, like the mesh's receipts). An rsync
 * without --fsync pushes and then runs `sync` inside the timed section.
 */
import { execFile, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import fs from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { promisify } from 'node:util'
import { stopProcess } from './local-mesh.ts'

const run = promisify(execFile)

export const DEFAULT_RSYNC_START_TIMEOUT_MS = 10_000
export const DEFAULT_RSYNC_INSTALL_TIMEOUT_MS = 300_000
export const RSYNC_MODULE = 'dst'

export interface RsyncInfo {
  path: string
  version: string
  fsync: boolean
}

export type RsyncAvailability = { ok: true, rsync: RsyncInfo, installed: boolean } | { ok: false, reason: string }

async function which (cmd: string): Promise<string | undefined> {
  try {
    const { stdout } = await run('sh', ['-c', `command -v ${cmd}`])
    return stdout.trim() || undefined
  } catch {
    return undefined
  }
}

async function probe (file: string): Promise<RsyncInfo> {
  const { stdout: version } = await run(file, ['--version'])
  const { stdout: help } = await run(file, ['--help']).catch((err) => ({ stdout: String(err.stdout ?? '') }))
  return { path: file, version: version.split('\n')[0]?.trim() ?? 'rsync', fsync: /--fsync\b/.test(help) }
}

/** Finds rsync; if missing and `install`, tries `apt-get install -y rsync` (then once more after an update). */
export async function ensureRsync (opts: { install: boolean, log: (s: string) => void }): Promise<RsyncAvailability> {
  const found = await which('rsync')
  if (found != null) return { ok: true, rsync: await probe(found), installed: false }
  if (!opts.install) return { ok: false, reason: 'rsync is not installed (and installing it was not allowed)' }
  if (await which('apt-get') == null) return { ok: false, reason: 'rsync is not installed and there is no apt-get to install it' }
  if (process.getuid?.() !== 0) return { ok: false, reason: 'rsync is not installed and installing it needs root (apt-get install -y rsync)' }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  const attempts: string[][] = [['install', '-y', 'rsync'], ['update'], ['install', '-y', 'rsync']]
  let last = ''
  for (const args of attempts) {
    opts.log(`rsync missing: apt-get ${args.join(' ')}`)
    try {
      await run('apt-get', args, { env, timeout: DEFAULT_RSYNC_INSTALL_TIMEOUT_MS, maxBuffer: 16 << 20 })
      const now = await which('rsync')
      if (now != null) return { ok: true, rsync: await probe(now), installed: true }
    } catch (err: any) {
      last = String(err.stderr ?? err.message ?? err).trim().split('\n').slice(-1)[0] ?? ''
    }
  }
  return { ok: false, reason: `rsync is not installed and apt-get could not install it (${last})` }
}

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      srv.close(() => { typeof addr === 'object' && addr != null ? resolve(addr.port) : reject(new Error('no port')) })
    })
  })
}

async function canConnect (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1')
    sock.once('connect', () => { sock.destroy(); resolve(true) })
    sock.once('error', () => { resolve(false) })
  })
}

interface RsyncDaemon {
  port: number
  dir: string
  proc: ChildProcess
}

export class RsyncFanOut {
  readonly rsync: RsyncInfo
  readonly root: string
  readonly #daemons: RsyncDaemon[] = []
  readonly #clients = new Set<ChildProcess>()
  #stopped = false

  constructor (rsync: RsyncInfo, root: string) {
    this.rsync = rsync
    this.root = root
  }

  /** Destination directories, one per daemon. */
  get destinations (): string[] {
    return this.#daemons.map((d) => d.dir)
  }

  /** Starts `count` rsync daemons, each on its own port with its own config and destination. */
  async start (count: number): Promise<void> {
    await fs.mkdir(this.root, { recursive: true })
    for (let i = 0; i < count; i++) {
      const dir = path.join(this.root, `dst-${i}`)
      await fs.mkdir(dir, { recursive: true })
      const port = await freePort()
      const conf = path.join(this.root, `rsyncd-${i}.conf`)
      await fs.writeFile(conf, [
        `uid = ${process.getuid?.() ?? 0}`,
        `gid = ${process.getgid?.() ?? 0}`,
        'use chroot = no',
        `pid file = ${path.join(this.root, `rsyncd-${i}.pid`)}`,
        `log file = ${path.join(this.root, `rsyncd-${i}.log`)}`,
        `[${RSYNC_MODULE}]`,
        `  path = ${dir}`,
        '  read only = no',
        '  use chroot = no',
        ''
      ].join('\n'))
      const proc = spawn(this.rsync.path, ['--daemon', '--no-detach', `--config=${conf}`, `--port=${port}`, '--address=127.0.0.1'], { stdio: 'ignore' })
      this.#daemons.push({ port, dir, proc })
      if (this.#stopped) {
        await this.stop()
        throw new Error('rsync fan-out stopped while starting')
      }
      const deadline = Date.now() + DEFAULT_RSYNC_START_TIMEOUT_MS
      while (!await canConnect(port)) {
        if (proc.exitCode != null || proc.signalCode != null) throw new Error(`rsync --daemon exited (${proc.exitCode ?? proc.signalCode}); see ${this.root}/rsyncd-${i}.log`)
        if (Date.now() > deadline) throw new Error(`rsync --daemon did not listen on port ${port} within ${DEFAULT_RSYNC_START_TIMEOUT_MS} ms`)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  }

  /**
   * Pushes `sources` (files, or a directory given with a trailing slash) to every daemon at once, into the
   * subdirectory `dest` of its module, durably. Resolves with the wall time from the first spawn until every
   * push has exited (and, without --fsync, `sync` has returned).
   */
  async push (sources: string[], dest: string): Promise<number> {
    const started = performance.now()
    await Promise.all(this.#daemons.map(async (d) => {
      const args = ['-a', ...(this.rsync.fsync ? ['--fsync'] : []), ...sources, `rsync://127.0.0.1:${d.port}/${RSYNC_MODULE}/${dest}/`]
      await this.#client(args)
    }))
    if (!this.rsync.fsync) await run('sync')
    return performance.now() - started
  }

  async #client (args: string[]): Promise<void> {
    if (this.#stopped) throw new Error('rsync fan-out stopped')
    const proc = spawn(this.rsync.path, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    this.#clients.add(proc)
    let stderr = ''
    proc.stderr?.on('data', (b: Buffer) => { if (stderr.length < 4096) stderr += b.toString() })
    const code = await new Promise<number | null>((resolve) => { proc.once('exit', (c) => { resolve(c) }) })
    this.#clients.delete(proc)
    if (code !== 0) throw new Error(`rsync ${args.join(' ')} exited ${code}: ${stderr.trim()}`)
  }

  /** Stops the daemons and any push still running. */
  async stop (): Promise<void> {
    this.#stopped = true
    await Promise.all([...this.#clients, ...this.#daemons.map((d) => d.proc)].map(async (p) => { await stopProcess(p, 'SIGTERM', 5_000) }))
  }
}
