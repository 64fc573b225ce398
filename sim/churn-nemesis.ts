/**
 * Carries out the schedule's faults on real daemons: SIGKILL and restart (optionally waiting for the
 * moment the node is moving blocks or running the processing command, bounded by waitMaxMs), a processor
 * joining with a fresh data dir, a processor leaving with SIGTERM, a processor drained with `filemesh drain`
 * (until "safe to remove", then stopped; if it never gets there it is left running, draining, and the fault
 * is reported as failed), and a partition of the mesh (cut, wait, heal: needs the mesh's NetnsLab; without
 * one, partitions are skipped and counted). Faults on one node run one at a time (a per-node chain;
 * partitions have their own), and every action is recorded with wall-clock times for the checker's trace.
 */
import { PARTITION_NODE } from './churn-checker.ts'
import type { ExecutedFault } from './churn-checker.ts'
import { DEFAULT_DRAIN_TIMEOUT_MS } from './churn-mesh.ts'
import type { ChurnMesh } from './churn-mesh.ts'
import type { ResourceSampler } from './churn-resources.ts'
import { fmtS } from './churn-schedule.ts'
import type { NodeFault, ScheduledFault } from './churn-schedule.ts'

export const MOMENT_POLL_MS = 100
/** A cut is checked shortly before its heal only if it lasts this long (members expire after 5 heartbeats, 5 s by default). */
export const CUT_CHECK_MIN_MS = 12_000
/** How long before the heal the check starts (it asks every node's status, STATUS_TIMEOUT_MS at most), so it never delays the heal. */
export const CUT_CHECK_BEFORE_HEAL_MS = 4_000

export class Nemesis {
  readonly executed: ExecutedFault[] = []
  /** Partitions of the schedule not carried out (the mesh has no network namespaces). */
  skippedPartitions = 0
  readonly #mesh: ChurnMesh
  readonly #sampler: ResourceSampler
  readonly #waitMaxMs: number
  readonly #chains = new Map<string, Promise<void>>()
  readonly #signal: AbortSignal
  readonly #say: (line: string) => void
  readonly #t0Ms: number
  readonly #drainTimeoutMs: number

  constructor (mesh: ChurnMesh, sampler: ResourceSampler, init: { waitMaxMs: number, signal: AbortSignal, say: (line: string) => void, t0Ms: number, drainTimeoutMs?: number }) {
    this.#mesh = mesh
    this.#sampler = sampler
    this.#waitMaxMs = init.waitMaxMs
    this.#signal = init.signal
    this.#say = init.say
    this.#t0Ms = init.t0Ms
    this.#drainTimeoutMs = init.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS
  }

  /** Queues `fault` behind earlier faults of the same node; resolves when it is done (never rejects). */
  async run (fault: ScheduledFault): Promise<void> {
    const key = fault.kind === 'partition' ? `(${PARTITION_NODE})` : fault.node
    const prev = this.#chains.get(key) ?? Promise.resolve()
    const next = prev.then(async () => { await (fault.kind === 'partition' ? this.#partition(fault) : this.#run(fault)) })
    this.#chains.set(key, next)
    await next
  }

  #rel (): string {
    return `+${((Date.now() - this.#t0Ms) / 1000).toFixed(1)}s`
  }

  /** Cuts the mesh into the fault's two sides for durationMs, then heals it (also when aborted or failing). */
  async #partition (fault: Extract<ScheduledFault, { kind: 'partition' }>): Promise<void> {
    if (this.#signal.aborted) return
    const lab = this.#mesh.lab
    if (lab == null) {
      this.skippedPartitions++
      this.#say(`${this.#rel()} PARTITION skipped (no network namespaces): ${fault.sides[0].join(',')} | ${fault.sides[1].join(',')}`)
      return
    }
    const rec: ExecutedFault = { kind: 'partition', node: PARTITION_NODE, sides: fault.sides, scheduledAtMs: fault.atMs, atMs: Date.now() }
    this.executed.push(rec)
    let cut = false
    try {
      await lab.cut(fault.sides)
      cut = true
      rec.atMs = Date.now()
      this.#say(`${this.#rel()} PARTITION ${fault.sides[0].join(',')} | ${fault.sides[1].join(',')} for ${fmtS(fault.durationMs)}`)
      const healAt = rec.atMs + fault.durationMs
      if (fault.durationMs >= CUT_CHECK_MIN_MS) {
        await sleep(healAt - CUT_CHECK_BEFORE_HEAL_MS - Date.now(), this.#signal)
        if (!this.#signal.aborted) {
          rec.crossSeen = await this.#crossSeen(fault.sides)
          if (rec.crossSeen.length > 0) this.#say(`${this.#rel()} PARTITION LEAKED: ${rec.crossSeen.join(', ')}`)
        }
      }
      await sleep(healAt - Date.now(), this.#signal)
    } catch (err: any) {
      rec.error = err?.message?.split('\n')[0] ?? String(err)
      this.#say(`${this.#rel()} PARTITION FAILED: ${rec.error}`)
    } finally {
      try {
        await lab.heal()
        if (cut) this.#say(`${this.#rel()} HEAL (after ${fmtS(Date.now() - rec.atMs)})`)
      } catch (err: any) {
        rec.error ??= `heal failed: ${err?.message ?? err}`
        this.#say(`${this.#rel()} HEAL FAILED: ${err?.message ?? err}`)
      }
      rec.healedAtMs = Date.now()
    }
  }

  /** Which running nodes still list a node of the other side as a live member (none, if the cut holds). */
  async #crossSeen (sides: [string[], string[]]): Promise<string[]> {
    const out: string[] = []
    await Promise.all([...this.#mesh.up].map(async (name) => {
      const mine = sides[0].includes(name) ? 0 : sides[1].includes(name) ? 1 : -1
      if (mine < 0) return
      const other = sides[1 - mine] as string[]
      try {
        const s = await this.#mesh.status(name)
        for (const m of s.members) {
          const peer = this.#mesh.peerName(m.peerId)
          if (!m.self && peer != null && other.includes(peer)) out.push(`${name} sees ${peer} (last heard ${m.lastSeenMsAgo} ms ago)`)
        }
      } catch {}
    }))
    return out.sort()
  }

  async #run (fault: NodeFault): Promise<void> {
    if (this.#signal.aborted) return
    const rec: ExecutedFault = { kind: fault.kind, node: fault.node, scheduledAtMs: fault.atMs, atMs: Date.now() }
    this.executed.push(rec)
    const rel = (): string => this.#rel()
    try {
      if (fault.kind === 'join') {
        await this.#mesh.start(fault.node)
        rec.healedAtMs = Date.now()
        rec.startMs = rec.healedAtMs - rec.atMs
        this.#say(`${rel()} JOIN ${fault.node}`)
        return
      }
      if (!this.#mesh.up.has(fault.node)) throw new Error('not running at the time of the fault')
      const pid = this.#mesh.pid(fault.node)
      if (fault.kind === 'leave') {
        if (pid != null) await this.#sampler.sampleOne(fault.node, pid)
        rec.atMs = Date.now()
        await this.#mesh.kill(fault.node, 'SIGTERM')
        this.#say(`${rel()} LEAVE ${fault.node} (SIGTERM)`)
        rec.healedAtMs = Date.now()
        return
      }
      if (fault.kind === 'drain') {
        this.#say(`${rel()} DRAIN ${fault.node}: \`filemesh drain --data ${this.#mesh.mesh.dataDir(fault.node)}\``)
        const outcome = await this.#mesh.drain(fault.node, this.#drainTimeoutMs, this.#signal)
        if (this.#signal.aborted) return
        rec.drainMs = Date.now() - rec.atMs
        if (!outcome.safe) throw new Error(`not safe to remove after ${fmtS(rec.drainMs)} (exit ${String(outcome.exitCode)}; left running, draining): ${outcome.output.replaceAll('\n', ' ').slice(0, 400)}`)
        const stopPid = this.#mesh.pid(fault.node)
        if (stopPid != null) await this.#sampler.sampleOne(fault.node, stopPid)
        await this.#mesh.kill(fault.node, 'SIGTERM')
        rec.healedAtMs = Date.now()
        this.#say(`${rel()} DRAINED ${fault.node}: safe to remove after ${fmtS(rec.drainMs)}; stopped`)
        return
      }
      rec.when = fault.when
      if (fault.when === 'transfer' || fault.when === 'processing') rec.momentMet = await this.#waitForMoment(fault.node, fault.when)
      if (pid != null) await this.#sampler.sampleOne(fault.node, pid)
      rec.atMs = Date.now()
      await this.#mesh.kill(fault.node, 'SIGKILL')
      this.#say(`${rel()} KILL ${fault.node} (when=${fault.when}${rec.momentMet === false ? ', moment not seen' : ''}), restart in ${(fault.downMs / 1000).toFixed(1)} s`)
      await sleep(fault.downMs, this.#signal)
      if (this.#signal.aborted) return
      const restartAt = Date.now()
      await this.#mesh.start(fault.node)
      rec.healedAtMs = Date.now()
      rec.startMs = rec.healedAtMs - restartAt
    } catch (err: any) {
      rec.error = err?.message?.split('\n')[0] ?? String(err)
      rec.healedAtMs ??= Date.now()
      this.#say(`${rel()} ${fault.kind.toUpperCase()} ${fault.node} FAILED: ${rec.error}`)
    }
  }

  /**
   * Waits (≤ waitMaxMs) until `name` is in a transfer (bytes served or fetched grew since the last poll; or, on
   * an ingest node, a placed file not yet released; on a holder, a copy still being fetched) or runs the
   * processing command. Returns whether the moment was seen.
   */
  async #waitForMoment (name: string, moment: 'transfer' | 'processing'): Promise<boolean> {
    const deadline = Date.now() + this.#waitMaxMs
    let lastBytes: number | undefined
    while (Date.now() < deadline && !this.#signal.aborted) {
      try {
        const s = await this.#mesh.status(name)
        if (moment === 'processing' && s.owner.processing > 0) return true
        if (moment === 'transfer') {
          const bytes = (s.transfer.served?.bytesSent ?? 0) + (s.transfer.fetched?.bytesReceived ?? 0)
          if (lastBytes != null && bytes > lastBytes) return true
          lastBytes = bytes
          const pending = s.roles.includes('ingest') ? s.files.total - s.files.received - s.files.deletedFromIngest : s.owner.fetching + s.backup.fetching
          if (pending > 0) return true
        }
      } catch {}
      await sleep(MOMENT_POLL_MS, this.#signal)
    }
    return false
  }

  /** Resolves when every queued fault has finished. */
  async settled (): Promise<void> {
    await Promise.all(this.#chains.values())
  }
}

export async function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted === true || ms <= 0) return
  await new Promise<void>((resolve) => {
    const t = setTimeout(done, ms)
    function done (): void { clearTimeout(t); signal?.removeEventListener('abort', done); resolve() }
    signal?.addEventListener('abort', done, { once: true })
  })
}
