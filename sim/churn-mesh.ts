/**
 * The churn harness's view of its daemons, over sim/local-mesh.ts: every node gets a fixed loopback port and
 * (for ingest and backup nodes) a peer identity created before anything starts, so every node can list the
 * ingest and backup nodes as bootstrap peers, as an operator would, and a node restarted after a SIGKILL
 * comes back at the same address with the same peer ID and data dir. Daemons log JSON
 * (FILEMESH_LOG_FORMAT=json) so the checker can read their events; processors run the recording command.
 * A detached watchdog shell notes this process's children (the daemons, by pid) every second and SIGKILLs
 * them if this process dies without cleaning up (SIGKILL, a test runner tearing its worker down), so a dead
 * harness never leaks a mesh.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import net from 'node:net'
import fs from 'node:fs/promises'
import path from 'node:path'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { loadOrCreateIdentity } from '../node/mesh.ts'
import type { NodeStatus } from '../node/status.ts'
import { LocalMesh } from './local-mesh.ts'
import type { StartNodeOptions } from './local-mesh.ts'
import { churnCommand } from './churn-command.ts'
import type { CheckedNode } from './churn-checker.ts'
import type { ScheduledNode } from './churn-schedule.ts'

/** Ports are picked below the kernel's ephemeral range (32768–60999 here), so outgoing connections never take them. */
export const PORT_RANGE_MIN = 20_000
export const PORT_RANGE_MAX = 32_000
/** An in-place inbox file with no other evidence counts as complete after this long (the daemon's default is 30 s). */
export const CHURN_QUIET_MS = 5_000
export const STATUS_TIMEOUT_MS = 3_000
export const START_ATTEMPTS_MAX = 3
/** While the harness ($1) lives, notes its children (not this shell) once a second; when it is gone, SIGKILLs them. */
const WATCHDOG_SCRIPT = 'kids=""; while kill -0 "$1" 2>/dev/null; do kids=$(pgrep -P "$1" | grep -vx "$$" | tr "\\n" " "); sleep 1; done; [ -n "$kids" ] && kill -9 $kids 2>/dev/null; exit 0'

export class ChurnMesh {
  readonly mesh: LocalMesh
  readonly root: string
  readonly nodes = new Map<string, ScheduledNode>()
  readonly up = new Set<string>()
  readonly #ports = new Map<string, number>()
  readonly #peerIds = new Map<string, string>()
  readonly #processMs: number
  #watchdog: ChildProcess | undefined

  constructor (root: string, nodes: ScheduledNode[], processMs: number) {
    this.root = root
    this.mesh = new LocalMesh(root)
    this.#processMs = processMs
    for (const n of nodes) this.nodes.set(n.name, n)
  }

  recordPath (name: string): string {
    return path.join(this.root, 'records', `${name}.log`)
  }

  /** Ports for every node, identities for the bootstrap (ingest and backup) nodes, the watchdog. */
  async prepare (): Promise<void> {
    await fs.mkdir(path.join(this.root, 'records'), { recursive: true })
    this.#watchdog = spawn('/bin/sh', ['-c', WATCHDOG_SCRIPT, 'churn-watchdog', String(process.pid)], { detached: true, stdio: 'ignore' })
    this.#watchdog.unref()
    for (const n of this.nodes.values()) {
      this.#ports.set(n.name, await freePort(new Set(this.#ports.values())))
      if (isBootstrapNode(n)) {
        const dir = this.mesh.dataDir(n.name)
        await fs.mkdir(dir, { recursive: true })
        this.#peerIds.set(n.name, peerIdFromPrivateKey(await loadOrCreateIdentity(dir)).toString())
      }
    }
  }

  #startOptions (name: string): StartNodeOptions {
    const n = this.#node(name)
    const bootstrap = [...this.nodes.values()].filter((b) => b.name !== name && isBootstrapNode(b)).map((b) => `/ip4/127.0.0.1/tcp/${this.#ports.get(b.name) ?? 0}/p2p/${this.#peerIds.get(b.name) ?? ''}`)
    const args = ['--listen', `/ip4/127.0.0.1/tcp/${this.#ports.get(name) ?? 0}`, '--quiet-ms', String(CHURN_QUIET_MS)]
    if (n.roles.includes('process')) args.push('--exec', churnCommand(this.recordPath(name), name, this.#processMs))
    return { roles: n.roles, bootstrap, args, env: { FILEMESH_LOG_FORMAT: 'json' } }
  }

  /** Starts (or restarts, same data dir and address) a daemon; retries a failed start a few times. */
  async start (name: string): Promise<void> {
    let lastErr: unknown
    for (let attempt = 1; attempt <= START_ATTEMPTS_MAX; attempt++) {
      try {
        await this.mesh.start(name, this.#startOptions(name))
        this.up.add(name)
        return
      } catch (err) {
        lastErr = err
        await new Promise((resolve) => setTimeout(resolve, 1_000))
      }
    }
    throw lastErr
  }

  async kill (name: string, signal: NodeJS.Signals): Promise<void> {
    this.up.delete(name)
    await this.mesh.stop(name, signal)
  }

  pid (name: string): number | undefined {
    return this.up.has(name) ? this.mesh.nodes.get(name)?.proc.pid : undefined
  }

  livePids (): Array<{ name: string, pid: number }> {
    return [...this.up].flatMap((name) => { const pid = this.pid(name); return pid != null ? [{ name, pid }] : [] })
  }

  async status (name: string): Promise<NodeStatus> {
    const d = this.mesh.get(name)
    const res = await fetch(`http://${d.info.api}/api/status`, { signal: AbortSignal.timeout(STATUS_TIMEOUT_MS) })
    if (!res.ok) throw new Error(`${name}: status answered ${res.status}`)
    return await res.json() as NodeStatus
  }

  ingests (): string[] {
    return [...this.nodes.values()].filter((n) => n.roles.includes('ingest')).map((n) => n.name)
  }

  peerName (peerId: string): string | undefined {
    for (const [name, d] of this.mesh.nodes) if (d.info.peerId === peerId) return name
    return undefined
  }

  /** Every node that ever ran, as the checker needs it. */
  checkedNodes (): CheckedNode[] {
    return [...this.mesh.nodes.values()].map((d) => {
      const n = this.#node(d.name)
      return { name: d.name, roles: [...n.roles], dataDir: d.dataDir, logPath: d.logPath, peerId: d.info.peerId, archiveDir: d.info.archive, ...(n.roles.includes('process') ? { recordPath: this.recordPath(d.name) } : {}) }
    })
  }

  /** Stops every daemon (SIGTERM, SIGKILL after a while) and the watchdog. */
  async stopAll (): Promise<void> {
    await Promise.all([...this.mesh.nodes.keys()].map(async (n) => { await this.kill(n, 'SIGTERM') }))
    if (this.#watchdog?.pid != null && this.#watchdog.exitCode == null) this.#watchdog.kill('SIGKILL')
  }

  #node (name: string): ScheduledNode {
    const n = this.nodes.get(name)
    if (n == null) throw new Error(`no node ${name} in the schedule`)
    return n
  }
}

function isBootstrapNode (n: ScheduledNode): boolean {
  return n.joinAtMs == null && (n.roles.includes('ingest') || n.roles.includes('backup'))
}

async function freePort (taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = PORT_RANGE_MIN + Math.floor(Math.random() * (PORT_RANGE_MAX - PORT_RANGE_MIN))
    if (taken.has(port)) continue
    const free = await new Promise<boolean>((resolve) => {
      const srv = net.createServer()
      srv.once('error', () => { resolve(false) })
      srv.listen(port, '127.0.0.1', () => { srv.close(() => { resolve(true) }) })
    })
    if (free) return port
  }
  throw new Error(`no free port found in ${PORT_RANGE_MIN}–${PORT_RANGE_MAX}`)
}
