/**
 * Runs a task at most once per interval per key, never dropping the last request: a call during the
 * cool-down runs once at its end (with the latest task). An optional random delay before each run, with
 * `suppress()` when another node did the same thing meanwhile, keeps a whole mesh from answering one
 * question at once (the suppression of mDNS and SSDP responders). Used for channel gossip
 * (node/channels.ts): have-maps, "I have it all" replies and re-announcements. Bounded: `keysMax` keys.
 */

export interface KeyedThrottleInit {
  intervalMs: number
  /** Each run waits a random 0..jitterMs first (default 0: the first run is immediate). */
  jitterMs?: number
  keysMax?: number
  nowMs?: () => number
  random?: () => number
}

interface Entry { lastMs: number, timer: NodeJS.Timeout | undefined, task: (() => void) | undefined }

export const DEFAULT_THROTTLE_KEYS_MAX = 4_096

export class KeyedThrottle {
  readonly #init: KeyedThrottleInit
  readonly #entries = new Map<string, Entry>()
  readonly #now: () => number
  readonly #random: () => number
  #stopped = false

  constructor (init: KeyedThrottleInit) {
    this.#init = init
    this.#now = init.nowMs ?? (() => performance.now())
    this.#random = init.random ?? Math.random
  }

  /** Runs `task` for `key` now (after the jitter) if the interval has passed, else once when it has. */
  schedule (key: string, task: () => void): void {
    if (this.#stopped) return
    let e = this.#entries.get(key)
    if (e == null) {
      if (this.#entries.size >= (this.#init.keysMax ?? DEFAULT_THROTTLE_KEYS_MAX)) this.#evictIdle()
      e = { lastMs: -Infinity, timer: undefined, task: undefined }
      this.#entries.set(key, e)
    }
    e.task = task
    if (e.timer != null) return
    const jitter = (this.#init.jitterMs ?? 0) > 0 ? this.#random() * (this.#init.jitterMs ?? 0) : 0
    const waitMs = Math.max(jitter, e.lastMs + this.#init.intervalMs - this.#now())
    if (waitMs <= 0) {
      this.#run(e)
      return
    }
    const entry = e
    entry.timer = setTimeout(() => { entry.timer = undefined; this.#run(entry) }, waitMs)
    entry.timer.unref?.()
  }

  /** Someone else just did `key`'s task: a pending run is dropped and the interval starts now. */
  suppress (key: string): void {
    const e = this.#entries.get(key)
    if (e == null) {
      this.#entries.set(key, { lastMs: this.#now(), timer: undefined, task: undefined })
      return
    }
    clearTimeout(e.timer)
    e.timer = undefined
    e.task = undefined
    e.lastMs = this.#now()
  }

  stop (): void {
    this.#stopped = true
    for (const e of this.#entries.values()) clearTimeout(e.timer)
    this.#entries.clear()
  }

  #run (e: Entry): void {
    const task = e.task
    e.task = undefined
    if (task == null || this.#stopped) return
    e.lastMs = this.#now()
    task()
  }

  /** Forgets keys with nothing pending, oldest first, until there is room for one more. */
  #evictIdle (): void {
    const max = this.#init.keysMax ?? DEFAULT_THROTTLE_KEYS_MAX
    for (const [key, e] of this.#entries) {
      if (this.#entries.size < max) return
      if (e.timer == null) this.#entries.delete(key)
    }
  }
}
