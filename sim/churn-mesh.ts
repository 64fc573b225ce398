/**
 * The churn harness's view of its daemons, over sim/local-mesh.ts: every node gets a fixed loopback port and
 * (for ingest and backup nodes) a peer identity created before anything starts, so every node can list the
 * ingest and backup nodes as bootstrap peers, as an operator would, and a node restarted after a SIGKILL
 * comes back at the same address with the same peer ID and data dir. Daemons log JSON
 * (FILEMESH_LOG_FORMAT=json) so the checker can read their events; processors run the recording command.
 * A detached watchdog shell notes this process's children (the daemons, by pid) every second and SIGKILLs
 * them if this process dies without cleaning up (SIGKILL, a test runner tearing its worker down), so a dead
 * harness never leaks a mesh.
 * With a NetnsLab (partitions), every daemon runs in its own network namespace instead: it listens on its
 * namespace's address, and its API on that address too (--api-public, with a bearer token the harness and
 * its CLI calls send), so the harness reaches it across any cut; the watchdog also tears the namespaces down.
 */
import { execFile, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import net from 'node:net'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { loadOrCreateIdentity } from '../node/mesh.ts'
import type { NodeStatus } from '../node/status.ts'
import { CLI_PATH, LocalMesh } from './local-mesh.ts'
import type { NetnsLab } from './netns.ts'
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
/**
 * How long one start may take to serve. Generous: on a loaded host (other work on 2 cores) a daemon has been
 * seen to need 20–30 s just to load and open its store, and a node the harness gives up on stays down for the
 * rest of the run. The time a (re)start took is reported either way.
 */
export const CHURN_START_TIMEOUT_MS = 120_000
/** In a namespace every daemon has its own address, so ports can be fixed. */
export const NETNS_P2P_PORT = 4101
export const NETNS_API_PORT = 5101
export const API_TOKEN_FILE = 'api-token'
/** `filemesh drain` gives up after this long (the node is then left running, draining). */
export const DEFAULT_DRAIN_TIMEOUT_MS = 300_000
/**
 * While the harness ($1) lives, notes its children (not this shell) once a second; when it is gone, SIGKILLs
 * them, then runs the teardown command $2 (if any: the network namespaces). "Lives" means running, not a
 * zombie: a SIGKILLed harness whose parent does not reap it (PID 1 here does not) stays a zombie, and its
 * children are already re-parented, so a snapshot is kept only if the harness still ran after it was taken.
 */
const WATCHDOG_SCRIPT = [
  'alive () { st=$(sed "s/.*) //" "/proc/$1/stat" 2>/dev/null | cut -c1); [ -n "$st" ] && [ "$st" != Z ]; }',
  'kids=""',
  'while alive "$1"; do k=$(pgrep -P "$1" | grep -vx "$$" | tr "\\n" " "); alive "$1" && kids=$k; sleep 1; done',
  '[ -n "$kids" ] && kill -9 $kids 2>/dev/null',
  '[ -n "$2" ] && sleep 1 && sh -c "$2"',
  'exit 0'
].join('; ')

export interface ChurnMeshInit {
  /** Run every daemon in its own network namespace of this lab (for partitions). */
  lab?: NetnsLab
}

export interface DrainOutcome {
  safe: boolean
  /** What `filemesh drain` printed (stdout, then stderr). */
  output: string
  exitCode: number | null
}

export class ChurnMesh {
  readonly mesh: LocalMesh
  readonly root: string
  readonly nodes = new Map<string, ScheduledNode>()
  readonly up = new Set<string>()
  readonly #ports = new Map<string, number>()
  readonly #peerIds = new Map<string, string>()
  readonly #processMs: number
  readonly lab: NetnsLab | undefined
  /** API bearer token (namespaced daemons only: their API is not on loopback). */
  readonly #apiToken: string | undefined
  #watchdog: ChildProcess | undefined

  constructor (root: string, nodes: ScheduledNode[], processMs: number, init: ChurnMeshInit = {}) {
    this.root = root
    this.lab = init.lab
    this.#apiToken = init.lab != null ? randomBytes(24).toString('hex') : undefined
    this.mesh = new LocalMesh(root, this.#apiToken != null ? { apiToken: this.#apiToken } : {})
    this.#processMs = processMs
    for (const n of nodes) this.nodes.set(n.name, n)
  }

  get apiTokenFile (): string {
    return path.join(this.root, API_TOKEN_FILE)
  }

  /** Environment for `filemesh` CLI calls against these daemons (the API token, if any). */
  cliEnv (): NodeJS.ProcessEnv {
    return this.#apiToken != null ? { ...process.env, FILEMESH_API_TOKEN: this.#apiToken } : { ...process.env }
  }

  recordPath (name: string): string {
    return path.join(this.root, 'records', `${name}.log`)
  }

  /** Ports for every node, identities for the bootstrap (ingest and backup) nodes, the watchdog. */
  async prepare (): Promise<void> {
    await fs.mkdir(path.join(this.root, 'records'), { recursive: true })
    this.#watchdog = spawn('/bin/sh', ['-c', WATCHDOG_SCRIPT, 'churn-watchdog', String(process.pid), this.lab?.cleanupScript() ?? ''], { detached: true, stdio: 'ignore' })
    this.#watchdog.unref()
    if (this.#apiToken != null) await fs.writeFile(this.apiTokenFile, this.#apiToken + '\n', { mode: 0o600 })
    for (const n of this.nodes.values()) {
      this.#ports.set(n.name, this.lab != null ? NETNS_P2P_PORT : await freePort(new Set(this.#ports.values())))
      if (isBootstrapNode(n)) {
        const dir = this.mesh.dataDir(n.name)
        await fs.mkdir(dir, { recursive: true })
        this.#peerIds.set(n.name, peerIdFromPrivateKey(await loadOrCreateIdentity(dir)).toString())
      }
    }
  }

  #startOptions (name: string): StartNodeOptions {
    const n = this.#node(name)
    const host = (x: string): string => this.lab?.ip(x) ?? '127.0.0.1'
    const bootstrap = [...this.nodes.values()].filter((b) => b.name !== name && isBootstrapNode(b)).map((b) => `/ip4/${host(b.name)}/tcp/${this.#ports.get(b.name) ?? 0}/p2p/${this.#peerIds.get(b.name) ?? ''}`)
    const args = ['--listen', `/ip4/${host(name)}/tcp/${this.#ports.get(name) ?? 0}`, '--quiet-ms', String(CHURN_QUIET_MS)]
    if (this.lab != null) args.push('--api', `${host(name)}:${NETNS_API_PORT}`, '--api-public', '--api-token-file', this.apiTokenFile)
    if (n.roles.includes('process')) args.push('--exec', churnCommand(this.recordPath(name), name, this.#processMs))
    return { roles: n.roles, bootstrap, args, env: { FILEMESH_LOG_FORMAT: 'json' }, startTimeoutMs: CHURN_START_TIMEOUT_MS, ...(this.lab != null ? { wrap: this.lab.wrap(name) } : {}) }
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
    return await this.mesh.status(name, STATUS_TIMEOUT_MS)
  }

  /**
   * `filemesh drain --data DIR` as an operator runs it: waits until the node says "safe to remove" (exit 0) or
   * the timeout passes (exit 75, blockers printed). Does not stop the node.
   */
  async drain (name: string, timeoutMs = DEFAULT_DRAIN_TIMEOUT_MS, signal?: AbortSignal): Promise<DrainOutcome> {
    const args = [CLI_PATH, 'drain', '--data', this.mesh.dataDir(name), '--timeout-s', String(Math.max(1, Math.ceil(timeoutMs / 1000)))]
    return await new Promise((resolve) => {
      execFile(process.execPath, args, { env: this.cliEnv(), timeout: timeoutMs + 60_000, maxBuffer: 1 << 20, ...(signal != null ? { signal } : {}) }, (err, out, errOut) => {
        const exitCode = err == null ? 0 : typeof (err as any).code === 'number' ? (err as any).code as number : null
        const output = `${out}${errOut}`.trim()
        resolve({ safe: exitCode === 0 && /^safe to remove$/m.test(out), output, exitCode })
      })
    })
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
