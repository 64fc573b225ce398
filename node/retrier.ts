/**
 * Runs keyed background tasks until they succeed: exponential backoff with jitter between attempts, at most
 * one run per key at a time, cancellable by key, all stopped at shutdown. Used for deliveries that must
 * eventually happen (assignments, receipts, outcome reports); each task re-reads the durable record first, so
 * a retry after the work became moot is a no-op.
 */
import type { Logger } from './log.ts'

export interface RetrierInit {
  baseDelayMs?: number
  maxDelayMs?: number
}

export const DEFAULT_RETRY_BASE_DELAY_MS = 250
export const DEFAULT_RETRY_MAX_DELAY_MS = 15_000

export class Retrier {
  readonly #log: Logger
  readonly #baseMs: number
  readonly #maxMs: number
  readonly #tasks = new Map<string, AbortController>()
  #stopped = false

  constructor (log: Logger, init: RetrierInit = {}) {
    this.#log = log
    this.#baseMs = init.baseDelayMs ?? DEFAULT_RETRY_BASE_DELAY_MS
    this.#maxMs = init.maxDelayMs ?? DEFAULT_RETRY_MAX_DELAY_MS
  }

  get pending (): number {
    return this.#tasks.size
  }

  has (key: string): boolean {
    return this.#tasks.has(key)
  }

  /** Starts `fn` under `key` unless a task with that key is already running. */
  run (key: string, fn: (signal: AbortSignal) => Promise<void>): void {
    if (this.#stopped || this.#tasks.has(key)) return
    const ac = new AbortController()
    this.#tasks.set(key, ac)
    this.#loop(key, fn, ac).finally(() => {
      if (this.#tasks.get(key) === ac) this.#tasks.delete(key)
    })
  }

  cancel (key: string): void {
    this.#tasks.get(key)?.abort()
    this.#tasks.delete(key)
  }

  stop (): void {
    this.#stopped = true
    for (const ac of this.#tasks.values()) ac.abort()
    this.#tasks.clear()
  }

  async #loop (key: string, fn: (signal: AbortSignal) => Promise<void>, ac: AbortController): Promise<void> {
    for (let attempt = 0; !ac.signal.aborted; attempt++) {
      try {
        await fn(ac.signal)
        return
      } catch (err) {
        if (ac.signal.aborted) return
        const delayMs = Math.min(this.#maxMs, this.#baseMs * 2 ** Math.min(attempt, 16)) * (0.5 + Math.random() / 2)
        this.#log[attempt >= 3 ? 'warn' : 'debug']('will retry', { task: key, attempt: attempt + 1, retryInMs: Math.round(delayMs), err })
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, delayMs)
          ac.signal.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
        })
      }
    }
  }
}

/** Waits `ms`, or less if `signal` aborts first (then resolves, never rejects). */
export async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return
  await new Promise<void>((resolve) => {
    const t = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve() }, ms)
    const onAbort = (): void => { clearTimeout(t); resolve() }
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
