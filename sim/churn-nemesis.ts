/**
 * Carries out the schedule's faults on real daemons: SIGKILL and restart (optionally waiting for the
 * moment the node is moving blocks or running the processing command, bounded by waitMaxMs), a processor
 * joining with a fresh data dir, a processor leaving with SIGTERM. Faults on one node run one at a time
 * (a per-node chain), and every action is recorded with wall-clock times for the checker's trace.
 */
import type { ExecutedFault } from './churn-checker.ts'
import type { ChurnMesh } from './churn-mesh.ts'
import type { ResourceSampler } from './churn-resources.ts'
import type { ScheduledFault } from './churn-schedule.ts'

export const MOMENT_POLL_MS = 100

export class Nemesis {
  readonly executed: ExecutedFault[] = []
  readonly #mesh: ChurnMesh
  readonly #sampler: ResourceSampler
  readonly #waitMaxMs: number
  readonly #chains = new Map<string, Promise<void>>()
  readonly #signal: AbortSignal
  readonly #say: (line: string) => void
  readonly #t0Ms: number

  constructor (mesh: ChurnMesh, sampler: ResourceSampler, init: { waitMaxMs: number, signal: AbortSignal, say: (line: string) => void, t0Ms: number }) {
    this.#mesh = mesh
    this.#sampler = sampler
    this.#waitMaxMs = init.waitMaxMs
    this.#signal = init.signal
    this.#say = init.say
    this.#t0Ms = init.t0Ms
  }

  /** Queues `fault` behind earlier faults of the same node; resolves when it is done (never rejects). */
  async run (fault: ScheduledFault): Promise<void> {
    if (fault.kind === 'partition') throw new Error('partition faults are not implemented (see sim/churn-schedule.ts)')
    const prev = this.#chains.get(fault.node) ?? Promise.resolve()
    const next = prev.then(async () => { await this.#run(fault) })
    this.#chains.set(fault.node, next)
    await next
  }

  async #run (fault: Exclude<ScheduledFault, { kind: 'partition' }>): Promise<void> {
    if (this.#signal.aborted) return
    const rec: ExecutedFault = { kind: fault.kind, node: fault.node, scheduledAtMs: fault.atMs, atMs: Date.now() }
    this.executed.push(rec)
    const rel = (): string => `+${((Date.now() - this.#t0Ms) / 1000).toFixed(1)}s`
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
