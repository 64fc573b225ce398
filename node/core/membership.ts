/**
 * The live membership view: who is in the mesh, with which roles and weight, as last heard from their signed
 * heartbeats. A member is live while its last heartbeat is younger than the TTL (about 5 missed beats); a
 * heartbeat whose sequence number (sender wall-clock ms) is not above the last one seen from that member is a replay.
 * Placement reads `candidates(role)`. Time comes from an injected clock (monotonic milliseconds).
 */
import type { HeartbeatMessage } from '../../protocols/messages.ts'
import type { Role } from '../../protocols/roles.ts'
import type { Candidate } from './placement.ts'

export interface Clock {
  /** Monotonic milliseconds. */
  nowMs: () => number
}

export interface Member {
  id: string
  roles: Role[]
  weight: number
  draining: boolean
  addrs: string[]
  seq: number
  lastSeenMs: number
  self: boolean
}

export interface MembershipViewInit {
  selfId: string
  clock: Clock
  /** A member not heard from for this long is no longer live. */
  ttlMs?: number
}

export const DEFAULT_MEMBER_TTL_MS = 5_000

export type MemberChange = 'joined' | 'updated' | 'unchanged' | 'replay'

export class MembershipView {
  readonly #selfId: string
  readonly #clock: Clock
  readonly #ttlMs: number
  readonly #members = new Map<string, Member>()

  constructor (init: MembershipViewInit) {
    this.#selfId = init.selfId
    this.#clock = init.clock
    this.#ttlMs = init.ttlMs ?? DEFAULT_MEMBER_TTL_MS
  }

  get ttlMs (): number {
    return this.#ttlMs
  }

  /** Records a heartbeat from `id`. 'joined' when the member was not live before; roles or draining changes are 'updated'. */
  observe (id: string, hb: HeartbeatMessage): MemberChange {
    const now = this.#clock.nowMs()
    const prev = this.#members.get(id)
    const wasLive = prev != null && now - prev.lastSeenMs <= this.#ttlMs
    // Senders use wall-clock milliseconds as the sequence (strictly increasing, also across restarts).
    if (prev != null && hb.seq <= prev.seq) return 'replay'
    const next: Member = { id, roles: [...hb.roles], weight: hb.weight, draining: hb.draining, addrs: [...hb.addrs], seq: hb.seq, lastSeenMs: now, self: id === this.#selfId }
    this.#members.set(id, next)
    if (!wasLive) return 'joined'
    const changed = prev.draining !== next.draining || prev.weight !== next.weight || prev.roles.join() !== next.roles.join()
    return changed ? 'updated' : 'unchanged'
  }

  isLive (id: string): boolean {
    const m = this.#members.get(id)
    return m != null && this.#clock.nowMs() - m.lastSeenMs <= this.#ttlMs
  }

  get (id: string): Member | undefined {
    return this.#members.get(id)
  }

  /** Live members, in a stable order. */
  live (): Member[] {
    const now = this.#clock.nowMs()
    return [...this.#members.values()].filter((m) => now - m.lastSeenMs <= this.#ttlMs).sort((a, b) => a.id < b.id ? -1 : 1)
  }

  /** Live, non-draining members with `role`, as placement candidates. */
  candidates (role: Role): Candidate[] {
    return this.live().filter((m) => !m.draining && m.roles.includes(role)).map((m) => ({ id: m.id, weight: m.weight }))
  }

  /** Forgets members silent for more than 100 TTLs (bounded memory); returns their IDs. */
  sweep (): string[] {
    const now = this.#clock.nowMs()
    const forgotten: string[] = []
    for (const m of this.#members.values()) {
      if (now - m.lastSeenMs > this.#ttlMs * 100) {
        this.#members.delete(m.id)
        forgotten.push(m.id)
      }
    }
    return forgotten
  }

  all (): Member[] {
    return [...this.#members.values()]
  }
}
