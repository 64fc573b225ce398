/**
 * Per-peer request rates, enforced on the block and control protocols and paced by honest senders: a token
 * bucket per peer (rate + burst), a penalty box for peers that went over (every new stream refused for
 * `penaltyMs`), and a log that says which peer misbehaved without letting that peer flood our log.
 *
 * Memory stays bounded whatever the peers do: at most `peersMax` peers are tracked; when full, peers whose
 * bucket is full again (they cost nothing to forget) go first, then the oldest. Time comes from an injected
 * monotonic clock, so the tests run without sleeping.
 */
import type { Logger, LogFields } from './log.ts'

export interface RateClock {
  /** Monotonic milliseconds. */
  nowMs: () => number
}

export const MONOTONIC_CLOCK: RateClock = { nowMs: () => performance.now() }

export interface TokenBucketInit {
  /** Tokens added per second. */
  ratePerSec: number
  /** Most tokens the bucket holds (and holds at start). */
  burst: number
  clock?: RateClock
}

/** A classic token bucket: `ratePerSec` tokens a second, at most `burst` saved up. */
export class TokenBucket {
  readonly ratePerSec: number
  readonly burst: number
  readonly #clock: RateClock
  #tokens: number
  #lastMs: number

  constructor (init: TokenBucketInit) {
    if (!(init.ratePerSec > 0) || !(init.burst >= 1)) throw new RangeError(`token bucket needs ratePerSec > 0 and burst >= 1, got ${init.ratePerSec} and ${init.burst}`)
    this.ratePerSec = init.ratePerSec
    this.burst = init.burst
    this.#clock = init.clock ?? MONOTONIC_CLOCK
    this.#tokens = init.burst
    this.#lastMs = this.#clock.nowMs()
  }

  /** Tokens available now (may be negative after `reserve`). */
  get tokens (): number {
    this.#refill()
    return this.#tokens
  }

  /** True if the bucket is full: forgetting it changes nothing. */
  get full (): boolean {
    return this.tokens >= this.burst
  }

  /** Takes `n` tokens if there are that many; false (and nothing taken) otherwise. */
  tryTake (n = 1): boolean {
    this.#refill()
    if (this.#tokens < n) return false
    this.#tokens -= n
    return true
  }

  /** Takes `n` tokens now, going into debt if needed; returns how long (ms) to wait before using them. */
  reserve (n = 1): number {
    this.#refill()
    this.#tokens -= n
    return this.#tokens >= 0 ? 0 : Math.ceil(-this.#tokens * 1000 / this.ratePerSec)
  }

  #refill (): void {
    const now = this.#clock.nowMs()
    const elapsedMs = Math.max(0, now - this.#lastMs)
    this.#lastMs = now
    this.#tokens = Math.min(this.burst, this.#tokens + elapsedMs * this.ratePerSec / 1000)
  }
}

export interface PeerRateLimiterInit {
  ratePerSec: number
  burst: number
  /** How long a peer that went over the limit has every new request refused. */
  penaltyMs: number
  /** Most peers tracked at once (default DEFAULT_RATE_PEERS_MAX). */
  peersMax?: number
  clock?: RateClock
}

/** What a limiter says about one request: go ahead, over the rate (refused, penalty starts), or still penalised. */
export type RateVerdict = 'ok' | 'limited' | 'penalised'

export interface PeerRateLimiterStats {
  /** Requests refused because the peer was over its rate. */
  limited: number
  /** Requests refused because the peer was serving a penalty. */
  refusedPenalised: number
  /** Penalties given. */
  penalties: number
  /** Peers serving a penalty now. */
  penalisedNow: number
  peersTracked: number
}

export const DEFAULT_RATE_PEERS_MAX = 10_000

interface PeerEntry {
  bucket: TokenBucket
  penaltyUntilMs: number
}

/** A token bucket per peer plus a penalty box. */
export class PeerRateLimiter {
  readonly #init: PeerRateLimiterInit
  readonly #clock: RateClock
  readonly #peersMax: number
  readonly #peers = new Map<string, PeerEntry>()
  #limited = 0
  #refusedPenalised = 0
  #penalties = 0

  constructor (init: PeerRateLimiterInit) {
    if (!(init.penaltyMs >= 0)) throw new RangeError(`penaltyMs must be >= 0, got ${init.penaltyMs}`)
    this.#init = init
    this.#clock = init.clock ?? MONOTONIC_CLOCK
    this.#peersMax = Math.max(1, init.peersMax ?? DEFAULT_RATE_PEERS_MAX)
  }

  /** One request of `peer` costing `n` tokens: 'ok', or refused ('limited' starts a penalty). */
  take (peer: string, n = 1): RateVerdict {
    const entry = this.#entry(peer)
    if (this.#clock.nowMs() < entry.penaltyUntilMs) {
      this.#refusedPenalised++
      return 'penalised'
    }
    if (entry.bucket.tryTake(n)) return 'ok'
    this.#limited++
    this.#penalise(entry)
    return 'limited'
  }

  /**
   * For a sender pacing itself: takes `n` tokens of `peer`'s bucket now, going into debt if needed, and
   * returns how long (ms) to wait before sending. Never penalises.
   */
  reserve (peer: string, n = 1): number {
    return this.#entry(peer).bucket.reserve(n)
  }

  /** Puts `peer` in the penalty box now (a frame over a limit, too many streams, ...). */
  penalise (peer: string): void {
    this.#penalise(this.#entry(peer))
  }

  isPenalised (peer: string): boolean {
    const entry = this.#peers.get(peer)
    return entry != null && this.#clock.nowMs() < entry.penaltyUntilMs
  }

  /** Counts a request refused because its peer is penalised (checked with isPenalised). */
  countRefused (): void {
    this.#refusedPenalised++
  }

  stats (): PeerRateLimiterStats {
    const now = this.#clock.nowMs()
    let penalisedNow = 0
    for (const e of this.#peers.values()) if (now < e.penaltyUntilMs) penalisedNow++
    return { limited: this.#limited, refusedPenalised: this.#refusedPenalised, penalties: this.#penalties, penalisedNow, peersTracked: this.#peers.size }
  }

  #penalise (entry: PeerEntry): void {
    const now = this.#clock.nowMs()
    if (now >= entry.penaltyUntilMs) this.#penalties++
    entry.penaltyUntilMs = now + this.#init.penaltyMs
  }

  #entry (peer: string): PeerEntry {
    let entry = this.#peers.get(peer)
    if (entry != null) return entry
    if (this.#peers.size >= this.#peersMax) this.#evict()
    entry = { bucket: new TokenBucket({ ratePerSec: this.#init.ratePerSec, burst: this.#init.burst, clock: this.#clock }), penaltyUntilMs: 0 }
    this.#peers.set(peer, entry)
    return entry
  }

  /** Makes room: forget the idle (full bucket, no penalty), else the oldest tenth (so a sweep is amortised). */
  #evict (): void {
    const now = this.#clock.nowMs()
    for (const [peer, e] of this.#peers) {
      if (now >= e.penaltyUntilMs && e.bucket.full) this.#peers.delete(peer)
    }
    const target = this.#peers.size >= this.#peersMax ? Math.floor(this.#peersMax * 0.9) : this.#peersMax
    while (this.#peers.size >= Math.max(1, target)) {
      const oldest = this.#peers.keys().next()
      if (oldest.done === true) return
      this.#peers.delete(oldest.value)
    }
  }
}

export interface PeerSlotsInit {
  /** Slots one peer may hold at once. */
  perPeerMax: number
  /** Slots all peers together may hold at once (default: no limit beyond the per-peer one). */
  totalMax?: number
}

/**
 * Counting semaphore per peer with an overall cap: how many requests of a peer are being worked on at once.
 * `acquire` waits (backpressure, no error) until the peer and the total are under their caps; waiters are
 * served in arrival order among those that fit. Entries of idle peers are deleted, so memory follows the
 * number of peers with work in flight.
 */
export class PeerSlots {
  readonly #perPeerMax: number
  readonly #totalMax: number
  readonly #active = new Map<string, number>()
  readonly #waiters: Array<{ peer: string, grant: () => void }> = []
  #total = 0

  constructor (init: PeerSlotsInit) {
    if (!(init.perPeerMax >= 1)) throw new RangeError(`perPeerMax must be >= 1, got ${init.perPeerMax}`)
    this.#perPeerMax = init.perPeerMax
    this.#totalMax = init.totalMax ?? Number.POSITIVE_INFINITY
  }

  /** Slots held by `peer`, or by everyone. */
  active (peer?: string): number {
    return peer == null ? this.#total : (this.#active.get(peer) ?? 0)
  }

  /** Requests waiting for a slot. */
  get waiting (): number {
    return this.#waiters.length
  }

  /** Takes a slot if one is free for `peer` now. */
  tryAcquire (peer: string): boolean {
    if (!this.#fits(peer)) return false
    this.#take(peer)
    return true
  }

  /** Waits for a slot for `peer`; rejects with the signal's reason on abort (no slot held then). */
  async acquire (peer: string, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted()
    // A free slot now means no waiter could use it (release hands slots to waiters first).
    if (this.tryAcquire(peer)) return
    await new Promise<void>((resolve, reject) => {
      const waiter = {
        peer,
        grant: () => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        }
      }
      const onAbort = (): void => {
        const i = this.#waiters.indexOf(waiter)
        if (i >= 0) this.#waiters.splice(i, 1)
        reject(signal?.reason)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiters.push(waiter)
    })
  }

  /** Gives back one slot of `peer` and hands free slots to waiters. */
  release (peer: string): void {
    const n = this.#active.get(peer) ?? 0
    if (n <= 0) throw new Error(`PeerSlots.release: ${peer} holds no slot`)
    if (n === 1) this.#active.delete(peer)
    else this.#active.set(peer, n - 1)
    this.#total--
    for (let i = 0; i < this.#waiters.length && this.#total < this.#totalMax;) {
      const w = this.#waiters[i] as { peer: string, grant: () => void }
      if (!this.#fits(w.peer)) { i++; continue }
      this.#waiters.splice(i, 1)
      this.#take(w.peer)
      w.grant()
    }
  }

  #fits (peer: string): boolean {
    return this.#total < this.#totalMax && (this.#active.get(peer) ?? 0) < this.#perPeerMax
  }

  #take (peer: string): void {
    this.#active.set(peer, (this.#active.get(peer) ?? 0) + 1)
    this.#total++
  }
}

export interface ThrottledLogInit {
  /** Lines per key per minute (default DEFAULT_LOG_LINES_PER_MINUTE). */
  linesPerMinute?: number
  keysMax?: number
  clock?: RateClock
}

export const DEFAULT_LOG_LINES_PER_MINUTE = 10

/**
 * Warnings about a peer, at most `linesPerMinute` per peer; the next line that gets through says how many
 * were suppressed meanwhile. A flood of bad messages costs a counter, not a log line each.
 */
export class ThrottledLog {
  readonly #log: Logger
  readonly #limiter: PeerRateLimiter
  readonly #suppressed = new Map<string, number>()
  readonly #keysMax: number

  constructor (log: Logger, init: ThrottledLogInit = {}) {
    const perMinute = init.linesPerMinute ?? DEFAULT_LOG_LINES_PER_MINUTE
    this.#log = log
    this.#keysMax = init.keysMax ?? DEFAULT_RATE_PEERS_MAX
    this.#limiter = new PeerRateLimiter({ ratePerSec: perMinute / 60, burst: perMinute, penaltyMs: 0, peersMax: this.#keysMax, clock: init.clock })
  }

  /** Logs `msg` with `peer` unless that peer has used up its lines; true if the line was written. */
  warn (peer: string, msg: string, fields: LogFields = {}): boolean {
    if (this.#limiter.take(peer) !== 'ok') {
      if (this.#suppressed.size < this.#keysMax || this.#suppressed.has(peer)) this.#suppressed.set(peer, (this.#suppressed.get(peer) ?? 0) + 1)
      return false
    }
    const suppressed = this.#suppressed.get(peer)
    this.#suppressed.delete(peer)
    this.#log.warn(msg, { peer, ...fields, ...(suppressed != null ? { suppressed } : {}) })
    return true
  }
}
