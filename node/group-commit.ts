/**
 * Group commit for concurrent claims: several callers' durable steps share one fsync without any caller
 * giving up its guarantee.
 *  - `CommitGroup`: store batches submitted while one is being written go together in the next one (one
 *    {sync:true} batch = one WAL fdatasync). Each caller's ops stay atomic (they are in one batch) and in
 *    submission order; its promise resolves only once the batch holding them is durable.
 *  - `DirSync`: an fsync of a directory requested while one is running is served by the next one, started
 *    after the running one ends, so it always starts after the request (after the caller's rename or unlink
 *    that it must make durable). An fsync failure is fatal anyway (node/fsutil.ts): it reaches every waiter.
 */

import { fsyncDir } from './fsutil.ts'
import type { StoreOp } from './store.ts'

/** Callers' batches written together at most (bounds one batch's size and the wait of the first caller). */
export const COMMIT_GROUP_BATCHES_MAX = 256

interface Waiting {
  ops: StoreOp[]
  resolve: () => void
  reject: (err: unknown) => void
}

export class CommitGroup {
  readonly #write: (ops: StoreOp[]) => Promise<void>
  #waiting: Waiting[] = []
  #writing = false
  /** Batches written and callers served, for the status page and the bench. */
  readonly counters = { batches: 0, callers: 0 }

  /** `write` commits one batch durably (Store.commit). */
  constructor (write: (ops: StoreOp[]) => Promise<void>) {
    this.#write = write
  }

  /** Resolves once `ops` are durable (in one batch, possibly with other callers' ops). */
  async commit (ops: StoreOp[]): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#waiting.push({ ops, resolve, reject })
      this.#next()
    })
  }

  #next (): void {
    if (this.#writing || this.#waiting.length === 0) return
    this.#writing = true
    const group = this.#waiting.splice(0, COMMIT_GROUP_BATCHES_MAX)
    this.counters.batches++
    this.counters.callers += group.length
    this.#write(group.flatMap((w) => w.ops)).then(
      () => { for (const w of group) w.resolve() },
      (err) => { for (const w of group) w.reject(err) }
    ).finally(() => {
      this.#writing = false
      this.#next()
    })
  }
}

export class DirSync {
  readonly #sync: (dir: string) => Promise<void>
  readonly #dirs = new Map<string, { running: Promise<void>, next?: Promise<void> }>()
  readonly counters = { fsyncs: 0, requests: 0 }

  /** `sync` fsyncs a directory (default fsyncDir: a failure exits the process). */
  constructor (sync: (dir: string) => Promise<void> = fsyncDir) {
    this.#sync = sync
  }

  /** Resolves once an fsync of `dir` that started after this call has completed. */
  async sync (dir: string): Promise<void> {
    this.counters.requests++
    const state = this.#dirs.get(dir)
    if (state == null) {
      await this.#start(dir)
      return
    }
    state.next ??= state.running.then(noop, noop).then(async () => {
      await this.#start(dir, true)
    })
    await state.next
  }

  async #start (dir: string, replacing = false): Promise<void> {
    this.counters.fsyncs++
    const running = this.#sync(dir)
    const state = replacing ? this.#dirs.get(dir) : undefined
    if (state != null) {
      state.running = running
      delete state.next
    } else {
      this.#dirs.set(dir, { running })
    }
    try {
      await running
    } finally {
      const now = this.#dirs.get(dir)
      if (now?.running === running && now.next == null) this.#dirs.delete(dir)
    }
  }
}

function noop (): void {}
