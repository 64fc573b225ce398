/**
 * A mesh of real `filemesh run` daemons on loopback, each a separate child process with its own data
 * directory under one root: used by `npm start` (the demo), the integration tests and the benchmarks.
 * Daemons are started by the CLI exactly as an operator would, report readiness through DATA/node.json,
 * and are stopped with SIGTERM (or killed with SIGKILL) like any service. A daemon can run under a command
 * prefix that execs it in place (`ip netns exec NS`: sim/netns.ts), and `status()` can send an API token.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { NodeInfo } from '../node/daemon.ts'
import type { NodeStatus } from '../node/status.ts'

export const CLI_PATH = fileURLToPath(new URL('../node/cli.ts', import.meta.url))

export interface MeshDaemon {
  name: string
  roles: string[]
  dataDir: string
  logPath: string
  proc: ChildProcess
  info: NodeInfo
  args: string[]
  /** Command prefix the daemon runs under (e.g. `ip netns exec NS`); empty for none. */
  wrap?: string[]
}

export interface StartNodeOptions {
  roles: string[]
  /** Join through these full multiaddrs; default the first node started. */
  bootstrap?: string[]
  args?: string[]
  env?: Record<string, string>
  startTimeoutMs?: number
  /** Run the daemon under this command prefix, e.g. `['ip', 'netns', 'exec', 'NS']` (it must exec the daemon in place, keeping its pid). */
  wrap?: string[]
}

export interface LocalMeshInit {
  /** Bearer token `status()` sends (daemons started with --api-token-file holding it). */
  apiToken?: string
}

export class LocalMesh {
  readonly root: string
  readonly nodes = new Map<string, MeshDaemon>()
  readonly #apiToken: string | undefined

  constructor (root: string, init: LocalMeshInit = {}) {
    this.root = root
    this.#apiToken = init.apiToken
  }

  dataDir (name: string): string {
    return path.join(this.root, name)
  }

  /** Starts `filemesh run` for `name` and resolves once it serves (its node.json names its pid). */
  async start (name: string, opts: StartNodeOptions): Promise<MeshDaemon> {
    const dataDir = this.dataDir(name)
    await fsp.mkdir(dataDir, { recursive: true })
    await fsp.rm(path.join(dataDir, 'node.json'), { force: true })
    const first = [...this.nodes.values()].find((n) => n.name !== name && n.proc.exitCode == null && n.proc.signalCode == null)
    const bootstrap = opts.bootstrap ?? (first != null ? [first.info.addrs[0] as string] : [])
    // A short stop timeout: tests and the demo stop daemons often, and interrupted work resumes on restart anyway.
    const stopTimeout = (opts.args ?? []).includes('--stop-timeout-ms') ? [] : ['--stop-timeout-ms', '3000']
    const args = ['run', '--data', dataDir, '--roles', opts.roles.join(','), ...bootstrap.flatMap((b) => ['--bootstrap', b]), ...stopTimeout, ...(opts.args ?? [])]
    const logPath = path.join(this.root, `${name}.log`)
    const log = fs.openSync(logPath, 'a')
    const wrap = opts.wrap ?? []
    const proc = spawnDaemon(wrap, args, log, { ...process.env, FILEMESH_LOG_FORMAT: 'logfmt', ...opts.env })
    fs.closeSync(log)
    const info = await waitForNodeInfo(dataDir, proc, logPath, opts.startTimeoutMs ?? 30_000)
    const daemon: MeshDaemon = { name, roles: opts.roles, dataDir, logPath, proc, info, args, ...(wrap.length > 0 ? { wrap } : {}) }
    this.nodes.set(name, daemon)
    return daemon
  }

  get (name: string): MeshDaemon {
    const d = this.nodes.get(name)
    if (d == null) throw new Error(`no node named ${name}`)
    return d
  }

  async status (name: string, timeoutMs = 10_000): Promise<NodeStatus> {
    const res = await fetch(`http://${this.get(name).info.api}/api/status`, { signal: AbortSignal.timeout(timeoutMs), headers: this.#apiToken != null ? { authorization: `Bearer ${this.#apiToken}` } : {} })
    if (!res.ok) throw new Error(`${name}: status answered ${res.status}`)
    return await res.json() as NodeStatus
  }

  /** Stops one daemon with `signal` and waits for it to exit (SIGKILL after `timeoutMs`). */
  async stop (name: string, signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 20_000): Promise<void> {
    const d = this.nodes.get(name)
    if (d == null) return
    await stopProcess(d.proc, signal, timeoutMs)
  }

  async stopAll (): Promise<void> {
    await Promise.all([...this.nodes.keys()].map(async (n) => { await this.stop(n) }))
  }

  /** Restarts a stopped daemon with the same arguments and data directory. */
  async restart (name: string): Promise<MeshDaemon> {
    const d = this.get(name)
    await this.stop(name)
    await fsp.rm(path.join(d.dataDir, 'node.json'), { force: true })
    const log = fs.openSync(d.logPath, 'a')
    const proc = spawnDaemon(d.wrap ?? [], d.args, log, { ...process.env, FILEMESH_LOG_FORMAT: 'logfmt' })
    fs.closeSync(log)
    const info = await waitForNodeInfo(d.dataDir, proc, d.logPath, 30_000)
    const next = { ...d, proc, info }
    this.nodes.set(name, next)
    return next
  }
}

function spawnDaemon (wrap: string[], args: string[], log: number, env: NodeJS.ProcessEnv): ChildProcess {
  const [cmd, ...rest] = [...wrap, process.execPath, CLI_PATH, ...args] as [string, ...string[]]
  return spawn(cmd, rest, { stdio: ['ignore', log, log], env })
}

export async function stopProcess (proc: ChildProcess, signal: NodeJS.Signals, timeoutMs: number): Promise<void> {
  if (proc.exitCode != null || proc.signalCode != null) return
  const exited = new Promise<void>((resolve) => { proc.once('exit', () => { resolve() }) })
  proc.kill(signal)
  const timer = setTimeout(() => { proc.kill('SIGKILL') }, timeoutMs)
  await exited
  clearTimeout(timer)
}

async function waitForNodeInfo (dataDir: string, proc: ChildProcess, logPath: string, timeoutMs: number): Promise<NodeInfo> {
  const deadline = Date.now() + timeoutMs
  const file = path.join(dataDir, 'node.json')
  while (Date.now() < deadline) {
    if (proc.exitCode != null || proc.signalCode != null) {
      throw new Error(`daemon in ${dataDir} exited (${proc.exitCode ?? proc.signalCode}) before serving:\n${await tail(logPath)}`)
    }
    try {
      const info = JSON.parse(await fsp.readFile(file, 'utf8')) as NodeInfo
      if (info.pid === proc.pid) return info
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  proc.kill('SIGKILL')
  throw new Error(`daemon in ${dataDir} did not serve within ${timeoutMs} ms:\n${await tail(logPath)}`)
}

export async function tail (file: string, lines = 30): Promise<string> {
  try {
    return (await fsp.readFile(file, 'utf8')).split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}

/** Polls `fn` until it returns a truthy value or the deadline passes (then throws with `what`). */
export async function waitFor<T> (what: string, fn: () => Promise<T | undefined | false>, timeoutMs: number, intervalMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let lastErr: unknown
  while (Date.now() < deadline) {
    try {
      const v = await fn()
      if (v != null && v !== false) return v
    } catch (err) {
      lastErr = err
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr != null ? ` (last error: ${String(lastErr)})` : ''}`)
}
