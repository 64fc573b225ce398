/**
 * The blocks of files this node is fetching right now, so peers can have them before the file is complete
 * (swarm transfer, node/swarm.ts: the holders of a file pull disjoint shares from the landing node and the
 * rest from each other as it arrives).
 *
 * A holder's fetch registers here: `begin()` when it starts, `expect()` once the DAG is resolved (its `.part`
 * file, and the leaves it will itself pull from the landing node: in a swarm transfer its own share only, so
 * that two partners never wait on each other), `written()` for each leaf verified and written there (any
 * leaf, whoever sent it), `moving()` before the `.part` is renamed or deleted (no longer read there, the
 * written leaves expected here until the stored copy is indexed), `end()` after that. LocalBlocks reads the
 * written ranges (and re-verifies them, like every block it returns); the block server uses `waitFor` to
 * hold a request for a block expected here for a bounded time instead of answering NOT_FOUND.
 *
 * Nothing here is durable or trusted: a range is only a hint where verified bytes were written; a reader
 * that finds other bytes there (the file was replaced) fails the CID check and answers NOT_FOUND.
 */
import type { CID } from 'multiformats/cid'
import type { Leaf } from '../protocols/unixfs.ts'
import type { LeafLocation } from './store.ts'

/** Where a block's bytes are: a byte range of a plain file (the store's index entry). */
export type BlockLocation = LeafLocation

/** A leaf of a file being fetched: its CID and its byte range in the file. */
export type InflightLeaf = Leaf

export interface InflightStats {
  /** Fetches registered now (begun and not ended). */
  fetches: number
  /** Requests waiting for an expected block now. */
  waiting: number
}

/** One fetch's registration; every method is idempotent after `end()`. */
export interface InflightFetch {
  /** The fetch writes into the file at `path` and will itself pull `leaves` (replaces an earlier call's). */
  expect(path: string, leaves: readonly InflightLeaf[]): void
  /** `leaf` was verified and written at its offset: peers may have it now. */
  written(leaf: InflightLeaf): void
  /** The file is about to be renamed or deleted: its ranges are no longer read, its leaves still expected. */
  moving(): void
  /** The fetch is over (stored and indexed, given up, or stopped): forgotten. */
  end(): void
}

interface FetchState {
  ended: boolean
  path: string | undefined
  /** Leaves still expected (not written yet). */
  expected: Set<string>
  /** Written leaves by CID: offset and length in `path`. */
  located: Map<string, { offset: number, length: number }>
}

export class InflightBlocks {
  readonly #fetches = new Set<FetchState>()
  readonly #waiters = new Map<string, Set<() => void>>()
  #waiting = 0

  stats (): InflightStats {
    return { fetches: this.#fetches.size, waiting: this.#waiting }
  }

  /** Registers a fetch that is starting (nothing expected until its `expect()`). */
  begin (): InflightFetch {
    const state: FetchState = { ended: false, path: undefined, expected: new Set(), located: new Map() }
    this.#fetches.add(state)
    return {
      expect: (path, leaves) => {
        if (state.ended) return
        state.path = path
        state.located.clear()
        state.expected = new Set(leaves.map((leaf) => leaf.cid.toString()))
        this.#wakeAll()
      },
      written: (leaf) => {
        if (state.ended || state.path == null) return
        const key = leaf.cid.toString()
        state.located.set(key, { offset: leaf.offset, length: leaf.length })
        state.expected.delete(key)
        this.#wake(key)
      },
      moving: () => {
        if (state.ended) return
        for (const key of state.located.keys()) state.expected.add(key)
        state.located.clear()
      },
      end: () => {
        if (state.ended) return
        state.ended = true
        state.located.clear()
        state.expected.clear()
        this.#fetches.delete(state)
        this.#wakeAll()
      }
    }
  }

  /** Ranges of files being fetched where verified bytes of `cid` were written. */
  locations (cid: string): BlockLocation[] {
    const found: BlockLocation[] = []
    for (const f of this.#fetches) {
      const at = f.located.get(cid)
      if (at != null && f.path != null) found.push({ path: f.path, ...at })
    }
    return found
  }

  /** True while some active fetch will write `cid` here (pulled by itself, or written and being moved). */
  expects (cid: string): boolean {
    for (const f of this.#fetches) {
      if (f.expected.has(cid)) return true
    }
    return false
  }

  /**
   * Resolves true once a range of `cid` is registered, false once no active fetch expects it any more, after
   * `ms`, or on abort. At once when it is already located (true) or not expected (false).
   */
  async waitFor (cid: CID, ms: number, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    const key = cid.toString()
    if (this.locations(key).length > 0) return true
    if (!this.expects(key) || options.signal?.aborted === true || ms <= 0) return false
    const { promise, resolve } = Promise.withResolvers<boolean>()
    let set = this.#waiters.get(key)
    if (set == null) {
      set = new Set()
      this.#waiters.set(key, set)
    }
    const waiters = set
    let settled = false
    const finish = (located: boolean): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      options.signal?.removeEventListener('abort', onAbort)
      waiters.delete(check)
      if (waiters.size === 0 && this.#waiters.get(key) === waiters) this.#waiters.delete(key)
      this.#waiting--
      resolve(located)
    }
    const check = (): void => {
      if (this.locations(key).length > 0) finish(true)
      else if (!this.expects(key)) finish(false)
    }
    const onAbort = (): void => { finish(false) }
    const timer = setTimeout(() => { finish(false) }, ms)
    this.#waiting++
    waiters.add(check)
    options.signal?.addEventListener('abort', onAbort, { once: true })
    return await promise
  }

  #wake (key: string): void {
    const set = this.#waiters.get(key)
    if (set != null) for (const check of [...set]) check()
  }

  /** A fetch learnt its leaves or ended: every waiter checks whether its block is still expected. */
  #wakeAll (): void {
    for (const set of [...this.#waiters.values()]) for (const check of [...set]) check()
  }
}
