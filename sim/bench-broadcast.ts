/**
 * The broadcast figure of `npm run bench`: 1 publisher + N followers, each a separate `filemesh run`
 * process (sim/local-mesh.ts). One file is published on a channel through the publisher's API (the code
 * `filemesh publish` runs); the clock runs from the publish request until every follower's NAME.current
 * points at the new version. The publisher's egress is the block bytes it served meanwhile (status
 * `transfer.served.bytesSent`) over the file size. Every follower's copy is then re-hashed against the source.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { publishFile } from '../node/publish.ts'
import { LocalMesh, tail, waitFor } from './local-mesh.ts'
import { cpuSeconds, peakRssMiB } from './proc-stats.ts'
import { payload, sha256File, sha256Hex } from './workload.ts'
import type { NodeStatus } from '../node/status.ts'

export const BROADCAST_CHANNEL = 'bench'
/** How often the followers' NAME.current links are read while waiting. */
export const DEFAULT_SWITCH_POLL_MS = 20
const STATUS_TIMEOUT_MS = 30_000

export interface BroadcastBenchInit {
  root: string
  followers: number
  fileBytes: number
  timeoutMs: number
  say: (s: string) => void
  signal?: AbortSignal
  nodeOptions?: string
}

export interface BroadcastResult {
  /** From the publish request until the last follower switched NAME.current. */
  seconds: number
  /** Publisher's block bytes served during the broadcast / file size. */
  publisherEgressRatio: number
  /** Block bytes the followers served each other / file size (the swarm's share). */
  followersEgressRatio: number
  /** When each follower switched, seconds from the publish request, ascending. */
  switchSeconds: number[]
  /** Seconds the publish request took (copy into the node, hash, record, announce). */
  publishSeconds: number
  /** Channel gossip messages (announcements, have-maps) all nodes sent during the broadcast. */
  channelMessages: number
  /** CPU seconds all daemons used during the broadcast, and per second while idle just before it. */
  cpuSeconds: number | null
  idleCpuPerSecond: number | null
  /** Every follower's current version re-hashes to the source. */
  verified: boolean
  problems: string[]
  peakRssMiB: { publisher: number | null, followersMax: number | null }
}

export class BroadcastBench {
  readonly mesh: LocalMesh
  readonly #init: BroadcastBenchInit
  readonly #names: string[]

  constructor (init: BroadcastBenchInit) {
    this.#init = init
    this.mesh = new LocalMesh(path.join(init.root, 'broadcast'))
    this.#names = Array.from({ length: init.followers }, (_, i) => `follower${String(i + 1).padStart(2, '0')}`)
  }

  async start (): Promise<void> {
    const env: Record<string, string> = { FILEMESH_LOG_FORMAT: 'json' }
    if (this.#init.nodeOptions != null) env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} ${this.#init.nodeOptions}`.trim()
    await fs.mkdir(this.mesh.root, { recursive: true })
    const pub = await this.mesh.start('publisher', { roles: ['ingest'], args: ['--publisher'], env })
    const list = path.join(this.mesh.root, 'publishers.txt')
    await fs.writeFile(list, `${pub.info.peerId}\n`)
    this.#init.signal?.throwIfAborted()
    const started = await Promise.allSettled(this.#names.map(async (name) => await this.mesh.start(name, {
      roles: ['process'], args: ['--follow', BROADCAST_CHANNEL, '--channel-publishers', list], env, startTimeoutMs: 60_000
    })))
    for (const r of started) if (r.status === 'rejected') throw r.reason
    const all = this.#names.length + 1
    for (const name of ['publisher', ...this.#names]) {
      await waitFor(`${name} to see all ${all} members`, async () => (await this.#status(name)).members.length === all, 60_000, 250)
    }
  }

  /** Publishes one `fileBytes` file and waits until every follower shows it. */
  async run (): Promise<BroadcastResult> {
    const file = path.join(this.mesh.root, 'release.bin')
    const bytes = payload(77, 0, this.#init.fileBytes)
    await fs.writeFile(file, bytes)
    const sha = sha256Hex(bytes)
    const links = this.#names.map((n) => path.join(this.mesh.dataDir(n), 'channels', BROADCAST_CHANNEL, `${BROADCAST_CHANNEL}.current`))
    const idle0 = await this.#cpu()
    const idleStart = performance.now()
    await new Promise((resolve) => setTimeout(resolve, 2_000))
    const cpu0 = await this.#cpu()
    const idleCpuPerSecond = idle0 == null || cpu0 == null ? null : (cpu0 - idle0) / ((performance.now() - idleStart) / 1000)
    const served0 = await this.#served()
    const t0 = performance.now()
    const result = await publishFile({ api: this.mesh.get('publisher').info.api, channel: BROADCAST_CHANNEL, file })
    const publishSeconds = (performance.now() - t0) / 1000
    const target = `${BROADCAST_CHANNEL}.v${result.version}`
    const switched = new Map<string, number>()
    const deadline = t0 + this.#init.timeoutMs
    let lastReport = performance.now()
    while (switched.size < links.length) {
      this.#init.signal?.throwIfAborted()
      for (const [i, link] of links.entries()) {
        const name = this.#names[i] as string
        if (switched.has(name)) continue
        if (await fs.readlink(link).catch(() => '') === target) switched.set(name, (performance.now() - t0) / 1000)
      }
      if (switched.size === links.length) break
      await this.#assertAlive()
      if (performance.now() > deadline) throw new Error(`broadcast: ${links.length - switched.size} of ${links.length} followers did not switch within ${this.#init.timeoutMs} ms`)
      if (performance.now() - lastReport > 5_000) {
        lastReport = performance.now()
        this.#init.say(`  broadcast: ${switched.size}/${links.length} followers switched`)
      }
      await new Promise((resolve) => setTimeout(resolve, DEFAULT_SWITCH_POLL_MS))
    }
    const seconds = Math.max(...switched.values())
    const cpu1 = await this.#cpu()
    const served1 = await this.#served()
    const problems: string[] = []
    for (const [i, link] of links.entries()) {
      const got = await sha256File(link).catch((err) => `unreadable: ${String(err)}`)
      if (got !== sha) problems.push(`${this.#names[i] ?? ''}: ${target} does not match the source (${got})`)
    }
    const followersServed = this.#names.reduce((n, name) => n + ((served1.get(name) ?? 0) - (served0.get(name) ?? 0)), 0)
    const rss = await Promise.all(this.#names.map(async (n) => await peakRssMiB(this.mesh.get(n).info.pid) ?? 0))
    return {
      seconds,
      publisherEgressRatio: ((served1.get('publisher') ?? 0) - (served0.get('publisher') ?? 0)) / this.#init.fileBytes,
      followersEgressRatio: followersServed / this.#init.fileBytes,
      switchSeconds: [...switched.values()].sort((a, b) => a - b),
      publishSeconds,
      channelMessages: (served1.get('#messages') ?? 0) - (served0.get('#messages') ?? 0),
      cpuSeconds: cpu0 == null || cpu1 == null ? null : cpu1 - cpu0,
      idleCpuPerSecond,
      verified: problems.length === 0,
      problems,
      peakRssMiB: { publisher: await peakRssMiB(this.mesh.get('publisher').info.pid) ?? null, followersMax: rss.length > 0 ? Math.max(...rss) : null }
    }
  }

  /** Block bytes each node served so far, and (key '#messages') channel messages all nodes sent. */
  async #served (): Promise<Map<string, number>> {
    const out = new Map<string, number>([['#messages', 0]])
    for (const name of ['publisher', ...this.#names]) {
      const s = await this.#status(name)
      out.set(name, s.transfer.served?.bytesSent ?? 0)
      out.set('#messages', (out.get('#messages') ?? 0) + (s.channels?.counters.messagesSent ?? 0))
    }
    return out
  }

  /** A daemon's status; patient (a loaded machine can take seconds to answer), tried three times. */
  async #status (name: string): Promise<NodeStatus> {
    let lastErr: unknown
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const res = await fetch(`http://${this.mesh.get(name).info.api}/api/status`, { signal: AbortSignal.timeout(STATUS_TIMEOUT_MS) })
        if (res.ok) return await res.json() as NodeStatus
        lastErr = new Error(`${name}: status answered ${res.status}`)
      } catch (err) {
        lastErr = err
      }
    }
    throw new Error(`${name}: no status: ${String(lastErr)}`)
  }

  /** CPU seconds used so far by all daemons together. */
  async #cpu (): Promise<number | null> {
    let total = 0
    for (const d of this.mesh.nodes.values()) {
      const s = await cpuSeconds(d.info.pid)
      if (s == null) return null
      total += s
    }
    return total
  }

  async #assertAlive (): Promise<void> {
    for (const d of this.mesh.nodes.values()) {
      if (d.proc.exitCode != null || d.proc.signalCode != null) throw new Error(`daemon ${d.name} exited (${d.proc.exitCode ?? d.proc.signalCode}):\n${await tail(d.logPath)}`)
    }
  }

  async stop (): Promise<void> {
    await this.mesh.stopAll()
  }
}
