/**
 * Archive hand-off: a draining backup node makes sure every archive copy it holds is also held durably by
 * another backup node before it calls itself safe to remove, so removing a backup never leaves a file with no
 * archive copy.
 *
 * For each stored archive copy: pick the next backup in rendezvous order for the file's CID among live,
 * non-draining backup members other than this node (a target that refuses for good is skipped), record the
 * choice on the copy's holder record ({sync:true}), ask it to `replicate` the file with this node (and the
 * copy's other known holders) as sources, and ask again until it answers that the file is durable there; then
 * tell the file's coordinator (best effort: while it still watches the file it makes the target the file's
 * backup, so it never picks a different one once this node is gone), and record the hand-off as done
 * ({sync:true}). The target fetches, verifies, fsyncs and archives the file like an assignment. Every step is idempotent: after a restart of either side the question is simply asked again
 * (`start()` re-drives every hand-off that was under way), and the draining node keeps serving its blocks
 * until it stops.
 */
import { CONTROL_SOURCES_MAX } from '../protocols/limits.ts'
import type { HolderRecord } from './core/lifecycle.ts'
import { handoffChosen, handoffDone } from './core/lifecycle.ts'
import { successor } from './core/coordinator.ts'
import type { Candidate } from './core/placement.ts'
import { ControlRequestError } from './control.ts'
import type { ControlChannel } from './control.ts'
import type { Logger } from './log.ts'
import type { Store } from './store.ts'
import { sleep } from './retrier.ts'

export interface ArchiveHandoffComponents {
  store: Store
  control: Pick<ControlChannel, 'request'>
  log: Logger
  selfId: string
  /** Live, non-draining backup members (this node included or not: it is never chosen). */
  backupCandidates: () => Candidate[]
  /** Read-modify-write of this node's backup record of `cid` under the holder's per-record lock; undefined = no change. */
  updateBackup: (cid: string, fn: (rec: HolderRecord) => HolderRecord | undefined) => Promise<HolderRecord | undefined>
}

export interface ArchiveHandoffInit {
  /** How often a target that is still fetching is asked again. */
  pollIntervalMs?: number
  /** While draining, how often the store is scanned for copies not handed off yet (new ones, refused ones). */
  rescanIntervalMs?: number
  /** Longest wait between attempts after a failure (no target, unreachable target). */
  retryMaxMs?: number
}

export const DEFAULT_HANDOFF_POLL_INTERVAL_MS = 1_000
export const DEFAULT_HANDOFF_RESCAN_INTERVAL_MS = 5_000
export const DEFAULT_HANDOFF_RETRY_MAX_MS = 15_000
/** Attempts to reach the file's coordinator with the hand-off notice before going on without it. */
const NOTICE_ATTEMPTS_MAX = 3
/** Refusals that mean "not this target": the next backup in rendezvous order is asked instead. */
const TARGET_REFUSALS = new Set(['wrong-role', 'draining', 'disk-full', 'not-backup', 'bad-cid', 'bad-message'])

export interface ArchiveHandoffStats {
  /** Hand-offs being driven now. */
  active: number
  /** Backup members this node could hand its copies to now. */
  targets: number
  /** Copies handed off (acknowledged) since this process started. */
  handedOff: number
}

export class ArchiveHandoff {
  readonly #c: ArchiveHandoffComponents
  readonly #pollMs: number
  readonly #rescanMs: number
  readonly #retryMaxMs: number
  readonly #active = new Set<string>()
  readonly #stop = new AbortController()
  #draining = false
  #rescanTimer: NodeJS.Timeout | undefined
  #scanning = false
  #handedOff = 0

  constructor (components: ArchiveHandoffComponents, init: ArchiveHandoffInit = {}) {
    this.#c = components
    this.#pollMs = init.pollIntervalMs ?? DEFAULT_HANDOFF_POLL_INTERVAL_MS
    this.#rescanMs = init.rescanIntervalMs ?? DEFAULT_HANDOFF_RESCAN_INTERVAL_MS
    this.#retryMaxMs = init.retryMaxMs ?? DEFAULT_HANDOFF_RETRY_MAX_MS
  }

  /** Re-drives every hand-off that was under way (a target chosen, not yet acknowledged) when the node stopped. */
  async start (): Promise<void> {
    for await (const rec of this.#c.store.holderRecords()) {
      if (rec.role === 'backup' && rec.handoffTo != null && rec.handoffAckedAt == null) this.#drive(rec.cid)
    }
  }

  stop (): void {
    clearInterval(this.#rescanTimer)
    this.#stop.abort()
  }

  /** Starts handing off every archive copy (now and, while draining, every copy stored later). Idempotent. */
  setDraining (draining: boolean): void {
    if (draining === this.#draining) return
    this.#draining = draining
    clearInterval(this.#rescanTimer)
    if (!draining) return
    this.#scan()
    this.#rescanTimer = setInterval(() => { this.#scan() }, this.#rescanMs)
    this.#rescanTimer.unref()
  }

  stats (): ArchiveHandoffStats {
    return { active: this.#active.size, targets: this.#targets().length, handedOff: this.#handedOff }
  }

  #targets (): Candidate[] {
    return this.#c.backupCandidates().filter((c) => c.id !== this.#c.selfId)
  }

  #scan (): void {
    if (this.#scanning || this.#stop.signal.aborted) return
    this.#scanning = true
    void (async () => {
      for await (const rec of this.#c.store.holderRecords()) {
        if (rec.role === 'backup' && rec.state === 'stored' && rec.handoffAckedAt == null) this.#drive(rec.cid)
      }
    })().catch((err) => { this.#c.log.error('hand-off scan failed', { err }) }).finally(() => { this.#scanning = false })
  }

  #drive (cid: string): void {
    if (this.#active.has(cid) || this.#stop.signal.aborted) return
    this.#active.add(cid)
    this.#handOff(cid, this.#stop.signal)
      .catch((err) => { if (!this.#stop.signal.aborted) this.#c.log.error('hand-off failed', { cid, err }) })
      .finally(() => { this.#active.delete(cid) })
  }

  /** Drives one copy's hand-off until a target confirms it holds the file durably (or the copy is gone). */
  async #handOff (cid: string, signal: AbortSignal): Promise<void> {
    const { store, control, log, selfId } = this.#c
    const refused = new Set<string>()
    let failures = 0
    while (!signal.aborted) {
      const rec = await store.getHolder(cid, 'backup')
      if (rec == null || rec.state !== 'stored' || rec.handoffAckedAt != null) return
      const targets = this.#targets()
      const usable = (id: string | undefined): id is string => id != null && !refused.has(id) && targets.some((t) => t.id === id)
      const to = usable(rec.handoffTo) ? rec.handoffTo : successor(cid, targets, refused)
      if (to == null) {
        // No other backup member (yet), or every one refused: wait for the membership to change.
        if (failures++ === 0) log.warn('no other backup member can take this archive copy yet: waiting', { cid, refused: refused.size })
        refused.clear()
        await sleep(Math.min(this.#retryMaxMs, this.#pollMs * 2 ** Math.min(failures, 10)), signal)
        continue
      }
      if (rec.handoffTo !== to) {
        await this.#c.updateBackup(cid, (r) => r.state === 'stored' && r.handoffAckedAt == null && r.handoffTo !== to ? handoffChosen(r, to) : undefined)
        log.info('handing off an archive copy', { cid, to, name: rec.name, bytes: rec.size })
      }
      const sources = [selfId, ...rec.sources.filter((p) => p !== selfId && p !== to)].filter((p, i, all) => all.indexOf(p) === i).slice(0, CONTROL_SOURCES_MAX)
      try {
        await control.request(to, { type: 'replicate', v: 1, cid, name: rec.name, size: rec.size, epoch: rec.epoch, sources }, { signal })
      } catch (err) {
        if (signal.aborted) return
        const code = err instanceof ControlRequestError ? err.code : undefined
        if (code === 'not-ready') {
          failures = 0
          await sleep(this.#pollMs, signal)
          continue
        }
        if (code != null && TARGET_REFUSALS.has(code)) {
          log.warn('backup refused the archive copy: asking the next one', { cid, to, code, err: (err as Error).message })
          refused.add(to)
          continue
        }
        failures++
        log[failures >= 3 ? 'warn' : 'debug']('hand-off request failed: will retry', { cid, to, attempt: failures, err })
        await sleep(Math.min(this.#retryMaxMs, this.#pollMs * 2 ** Math.min(failures, 10)), signal)
        continue
      }
      // A copy assigned by a coordinator: tell it who holds the file now (a copy handed to us has none to tell).
      if (rec.handoffFrom == null) await this.#notice(rec, to, signal)
      const done = await this.#c.updateBackup(cid, (r) => r.handoffTo === to && r.handoffAckedAt == null ? handoffDone(r, new Date().toISOString()) : undefined)
      if (done?.handoffAckedAt != null && done.handoffTo === to) {
        this.#handedOff++
        log.info('archive copy handed off: the other backup holds it durably', { cid, to })
        return
      }
    }
  }

  /**
   * Tells the file's coordinator that `to` holds the file durably. Any answer ends it (ok: `to` is the
   * backup now, or the coordinator no longer watches the file; refused: this node is not its backup any
   * more); an unreachable coordinator is tried a few times, then the hand-off goes on without it (it
   * replaces this node once it is gone, by absence).
   */
  async #notice (rec: HolderRecord, to: string, signal: AbortSignal): Promise<void> {
    for (let attempt = 1; attempt <= NOTICE_ATTEMPTS_MAX && !signal.aborted; attempt++) {
      try {
        await this.#c.control.request(rec.coordinator, { type: 'handoff', v: 1, cid: rec.cid, epoch: rec.epoch, to }, { signal })
        return
      } catch (err) {
        if (err instanceof ControlRequestError) {
          this.#c.log.debug('coordinator answered the hand-off notice', { cid: rec.cid, peer: rec.coordinator, code: err.code })
          return
        }
        if (attempt === NOTICE_ATTEMPTS_MAX) this.#c.log.warn('coordinator unreachable for the hand-off notice: going on without it', { cid: rec.cid, peer: rec.coordinator, err })
        else await sleep(this.#pollMs * 2 ** attempt, signal)
      }
    }
  }
}
