/**
 * The inbox's ready queue: files judged ready wait here, oldest mtime first, and go to the consumer (the
 * claimer) several at once, so that one claim's fsyncs overlap the next one's (and concurrent claims can
 * share a group commit, node/group-commit.ts).
 *
 * Exactly once: an item is handed out by one worker (it leaves the queue before the hand-off), and two
 * items with the same key (two versions of one inbox name) are never handed out at the same time, so a
 * claim's rename-by-name only ever races with nothing of ours. The queue is bounded: what does not fit
 * stays in the inbox, and `onRoom` says when to offer it again.
 */

export interface DeliveryQueueInit<T> {
  /** Hand-offs in flight at most (default 1). */
  concurrency?: number
  /** Items waiting at most (default unbounded); `offer` refuses the rest. */
  maxQueued?: number
  /** Delivery order (sorted ascending). */
  compare: (a: T, b: T) => number
  /** Items with the same key are never delivered at the same time. */
  keyOf: (item: T) => string
  /** Whether a queued item is still wanted when its turn comes (false: dropped silently). */
  isCurrent: (item: T) => boolean
  deliver: (item: T) => Promise<void>
  /** Called after some items were refused, once the queue is half empty again. */
  onRoom?: () => void
}

export class DeliveryQueue<T> {
  readonly #init: DeliveryQueueInit<T>
  readonly #concurrency: number
  readonly #maxQueued: number
  #queue: T[] = []
  readonly #busyKeys = new Set<string>()
  readonly #running = new Set<Promise<void>>()
  #refused = false
  #closed = false

  constructor (init: DeliveryQueueInit<T>) {
    this.#init = init
    this.#concurrency = Math.max(1, init.concurrency ?? 1)
    this.#maxQueued = Math.max(1, init.maxQueued ?? Infinity)
  }

  /** Queues as many of `items` as fit; returns those that did not (they must be offered again later). */
  offer (items: T[]): T[] {
    const refused: T[] = []
    for (const item of items) {
      if (this.#closed || this.#queue.length >= this.#maxQueued) refused.push(item)
      else this.#queue.push(item)
    }
    if (refused.length > 0) this.#refused = true
    this.#queue.sort(this.#init.compare)
    this.#pump()
    return refused
  }

  /** Drops queued items that are no longer current (`init.isCurrent`). */
  prune (): void {
    this.#queue = this.#queue.filter(this.#init.isCurrent)
  }

  /** Stops handing out; resolves when the hand-offs in flight have settled. */
  async close (): Promise<void> {
    this.#closed = true
    this.#queue = []
    await Promise.allSettled([...this.#running])
  }

  #pump (): void {
    while (!this.#closed && this.#running.size < this.#concurrency) {
      const i = this.#queue.findIndex((item) => !this.#busyKeys.has(this.#init.keyOf(item)))
      if (i < 0) return
      const item = this.#queue.splice(i, 1)[0] as T
      if (!this.#init.isCurrent(item)) continue
      const key = this.#init.keyOf(item)
      this.#busyKeys.add(key)
      const run: Promise<void> = this.#init.deliver(item)
        .catch(() => {}) // deliver() records its own failures; nothing may escape a worker
        .finally(() => {
          this.#busyKeys.delete(key)
          this.#running.delete(run)
          if (this.#refused && this.#queue.length <= this.#maxQueued / 2) {
            this.#refused = false
            this.#init.onRoom?.()
          }
          this.#pump()
        })
      this.#running.add(run)
    }
  }
}
