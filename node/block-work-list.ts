/**
 * The shared work of one BlockClient.fetchLeavesToFile (node/block-client.ts): blocks waiting for a source,
 * which sources failed which block, which sources were dropped. Every source's loop takes work from here.
 *
 * A block may have a preferred source (swarm transfer, node/swarm.ts: the landing node for this holder's
 * share, the partner holder for the partner's share). It waits in that source's queue (in leaf order) and
 * only that source takes it, until the source fails it (REFUSED, corrupt, NOT_FOUND once the source's
 * patience is spent) or is dropped; then it joins the open queue that every source takes from. A partner
 * that answers NOT_FOUND may just not have started its own fetch of the file yet: the block is asked again
 * `retryMs` later, for as long as the source has answered nothing but NOT_FOUND for less than `patienceMs`
 * (counted from when the first of those blocks was asked; any block it serves resets this).
 * A probe (swarm: is my partner ahead of me?) holds one source's queue back until another source answered
 * for the first block of it: if that source has it, it becomes the preferred source of the whole queue.
 * A block whose stream failed goes back to the front of its queue, unmarked. An item is exhausted once every
 * source failed it or was dropped; the first exhausted item fails the whole fetch. Workers wait on
 * `changed()` when nothing is left for them.
 */
import type { CID } from 'multiformats/cid'
import { assertAcceptedCid } from '../protocols/cid-policy.ts'
import { BLOCK_BYTES_MAX } from '../protocols/limits.ts'
import { messageOf } from '../protocols/blocks.ts'
import type { Leaf } from '../protocols/unixfs.ts'

/** Some block failed from every source of a file fetch. `failures` maps each peer to why. */
export class BlocksUnavailableError extends Error {
  override name = 'BlocksUnavailableError'
  readonly cid: CID
  readonly failures: Record<string, string>
  constructor (cid: CID, failures: Record<string, string>) {
    const why = Object.entries(failures).map(([peer, reason]) => `${peer}: ${reason}`).join('; ')
    super(`block ${cid.toString()} is unavailable from every source (${why === '' ? 'no sources' : why})`)
    this.cid = cid
    this.failures = failures
  }
}

/** A leaf and its byte range in the file (its CID fixes the content, so a length mismatch is a bug in the caller's leaf table). */
export type LeafRange = Leaf

export interface BlockWorkItem {
  cid: CID
  /** Position among the fetch's distinct leaves, in first-appearance order. */
  ordinal: number
  length: number
  /** Every offset the block is written at (a file may repeat a leaf, e.g. runs of zeros). */
  offsets: number[]
  /** The source asked first (one of the fetch's sources), if any. */
  preferred: string | undefined
  /** Sources that answered NOT_FOUND/REFUSED or sent corrupt bytes for it, with the reason. */
  failedBy: Map<string, string>
  /** When it was last taken (performance.now() ms). */
  takenAt: number
  /** Not taken again by its preferred source before this time (a retry after NOT_FOUND). */
  notBefore: number
  /** NOT_FOUND from the preferred source is retried while its patience lasts (a partner's share, not the probed queue's). */
  patient: boolean
}

export interface BlockWorkProbe {
  /** The source asked first. */
  source: string
  /** The source whose queue is held back until `source` answered for the first block in it. */
  instead: string
}

export interface BlockWorkListInit {
  leaves: LeafRange[]
  sources: string[]
  signal?: AbortSignal
  /** The source to ask first for the distinct leaf at `ordinal` (first-appearance order); undefined = any. */
  preferredSource?: (ordinal: number) => string | undefined
  /** How long a preferred source may answer nothing but NOT_FOUND before its blocks go to the others. */
  patienceMs?: number
  /** Delay before a preferred source is asked again for a block it answered NOT_FOUND. */
  retryMs?: number
  /** If `probe.source` has the first block of `probe.instead`'s queue, it is preferred for that whole queue. */
  probe?: BlockWorkProbe
}

/** What happened to a fetch's preferences, for its log line. */
export interface BlockWorkStats {
  /** The probe's outcome: its source was ahead, was not, did not answer in time, or there was no probe. */
  probe: 'ahead' | 'not-ahead' | 'timeout' | 'none'
  /** NOT_FOUND answers from a preferred source that were asked again later. */
  retries: number
  /** Blocks a preferred source failed (or was dropped with) that went to the other sources. */
  fallbacks: number
}

export const DEFAULT_PREFERRED_SOURCE_PATIENCE_MS = 2_000
export const DEFAULT_PREFERRED_SOURCE_RETRY_MS = 50

export class BlockWorkList {
  readonly bytesTotal: number
  /** Blocks only their preferred source takes, by source, in leaf order. */
  readonly #queues = new Map<string, BlockWorkItem[]>()
  /** Blocks any source that has not failed them takes. */
  #open: BlockWorkItem[] = []
  readonly #sources: string[]
  readonly #dropped = new Map<string, string>()
  readonly #controller = new AbortController()
  readonly #userSignal: AbortSignal | undefined
  readonly #onUserAbort = (): void => { this.abort(this.#userSignal?.reason) }
  readonly #patienceMs: number
  readonly #retryMs: number
  /** Per preferred source: when the first block it answered NOT_FOUND (since it last served one) was asked. */
  readonly #stalledSince = new Map<string, number>()
  #retryTimer: NodeJS.Timeout | undefined
  /** Items waiting in a queue for a retry to fall due. */
  readonly #retrying = new Set<BlockWorkItem>()
  /** The probe in progress: `held`'s queue waits until `source` answered for `item`. */
  #probe: { item: BlockWorkItem, source: string, held: string, taken: boolean } | undefined
  #probeTimer: NodeJS.Timeout | undefined
  readonly #stats: BlockWorkStats = { probe: 'none', retries: 0, fallbacks: 0 }
  #remaining: number
  #failed = false
  #failure: unknown
  #wait: PromiseWithResolvers<void> | undefined

  constructor (init: BlockWorkListInit) {
    this.#sources = [...new Set(init.sources)]
    this.#patienceMs = init.patienceMs ?? DEFAULT_PREFERRED_SOURCE_PATIENCE_MS
    this.#retryMs = init.retryMs ?? DEFAULT_PREFERRED_SOURCE_RETRY_MS
    const byCid = new Map<string, BlockWorkItem>()
    let bytesTotal = 0
    let first: BlockWorkItem | undefined
    for (const leaf of init.leaves) {
      if (!Number.isSafeInteger(leaf.offset) || leaf.offset < 0 || !Number.isSafeInteger(leaf.length) || leaf.length < 0 || leaf.length > BLOCK_BYTES_MAX) {
        throw new RangeError(`bad leaf range offset=${leaf.offset} length=${leaf.length} for ${leaf.cid.toString()}`)
      }
      assertAcceptedCid(leaf.cid)
      const key = leaf.cid.toString()
      const item = byCid.get(key)
      if (item == null) {
        const wanted = init.preferredSource?.(byCid.size)
        const preferred = wanted != null && this.#sources.includes(wanted) ? wanted : undefined
        const fresh: BlockWorkItem = { cid: leaf.cid, ordinal: byCid.size, length: leaf.length, offsets: [leaf.offset], preferred, failedBy: new Map(), takenAt: 0, notBefore: 0, patient: preferred != null && preferred !== init.probe?.instead }
        byCid.set(key, fresh)
        first ??= fresh
        this.#queueOf(fresh).push(fresh)
      } else if (item.length !== leaf.length) {
        throw new RangeError(`leaf ${key} appears with lengths ${item.length} and ${leaf.length}`)
      } else {
        item.offsets.push(leaf.offset)
      }
      bytesTotal += leaf.length
    }
    this.bytesTotal = bytesTotal
    this.#remaining = byCid.size
    const probe = init.probe
    if (probe != null && probe.source !== probe.instead && this.#sources.includes(probe.source)) {
      const item = this.#queues.get(probe.instead)?.shift()
      if (item != null) {
        this.#probe = { item, source: probe.source, held: probe.instead, taken: false }
        // A partner that cannot even be reached does not hold the queue back for longer than its patience.
        this.#probeTimer = setTimeout(() => { this.#releaseProbe() }, this.#patienceMs)
      }
    }
    this.#userSignal = init.signal
    if (init.signal?.aborted === true) {
      this.abort(init.signal.reason)
    } else if (first != null && this.#sources.length === 0) {
      this.abort(new BlocksUnavailableError(first.cid, {}))
    } else if (this.#remaining > 0) {
      init.signal?.addEventListener('abort', this.#onUserAbort, { once: true })
    }
  }

  /** Aborted when the fetch fails or the caller aborts: every stream operation of the fetch listens to it. */
  get signal (): AbortSignal {
    return this.#controller.signal
  }

  get finished (): boolean {
    return this.#failed || this.#remaining === 0
  }

  stats (): BlockWorkStats {
    return { ...this.#stats }
  }

  /** Throws why the fetch failed, if it did. */
  result (): void {
    if (this.#failed) throw this.#failure
  }

  /** Resolves at the next change (work given back, a block done, a source failed or dropped, the fetch finished). */
  async changed (): Promise<void> {
    if (this.finished) return
    this.#wait ??= Promise.withResolvers()
    await this.#wait.promise
  }

  hasWorkFor (peer: string): boolean {
    if (this.finished) return false
    const probe = this.#probe
    if (probe != null && !probe.taken && probe.source === peer) return true
    const head = probe?.held === peer ? undefined : this.#queues.get(peer)?.[0]
    if (head != null && head.notBefore <= performance.now()) return true
    return this.#open.some(item => !item.failedBy.has(peer))
  }

  /** The next block for `peer`: from its own queue first (unless a retry is not due), then the first open one it has not failed. Now in flight for it. */
  take (peer: string): BlockWorkItem | undefined {
    if (this.finished) return undefined
    const now = performance.now()
    const probe = this.#probe
    if (probe != null && !probe.taken && probe.source === peer) {
      probe.taken = true
      probe.item.takenAt = now
      return probe.item
    }
    const queue = probe?.held === peer ? undefined : this.#queues.get(peer)
    const head = queue?.[0]
    let item: BlockWorkItem | undefined
    if (head != null && head.notBefore <= now) {
      item = queue?.shift()
    } else {
      const i = this.#open.findIndex(open => !open.failedBy.has(peer))
      item = i < 0 ? undefined : this.#open.splice(i, 1)[0]
    }
    if (item != null) {
      item.takenAt = now
      this.#retrying.delete(item)
    }
    return item
  }

  /** `peer` delivered the block (verified and written). */
  complete (item: BlockWorkItem, peer: string): void {
    this.#stalledSince.delete(peer)
    this.#remaining--
    if (this.#remaining === 0) this.#cleanUp()
    this.#settleProbe(item, true)
    this.#notify()
  }

  /**
   * `peer` answered NOT_FOUND: its preferred blocks are asked again later while its patience lasts (it may
   * not have started fetching the file yet), any other block goes to the other sources.
   */
  notFound (item: BlockWorkItem, peer: string): void {
    if (item.preferred !== peer || !item.patient || this.finished) {
      this.fail(item, peer, 'not-found')
      return
    }
    const since = this.#stalledSince.get(peer) ?? item.takenAt
    this.#stalledSince.set(peer, since)
    const now = performance.now()
    if (now - since >= this.#patienceMs) {
      this.fail(item, peer, 'not-found')
      return
    }
    item.notBefore = now + this.#retryMs
    this.#stats.retries++
    this.#retrying.add(item)
    this.#insertOrdered(this.#queueOf(item), item)
    this.#wakeAt(item.notBefore)
  }

  /** `peer` answered `reason` for the block: back to the list for the other sources. */
  fail (item: BlockWorkItem, peer: string, reason: string): void {
    item.failedBy.set(peer, reason)
    this.giveBack([item])
  }

  /** In-flight blocks whose stream failed (or failed blocks): back to their queue, unmarked, ahead of the rest. */
  giveBack (items: BlockWorkItem[]): void {
    if (items.length === 0 || this.finished) return
    const toOpen: BlockWorkItem[] = []
    for (const item of items) {
      this.#settleProbe(item, false)
      const queue = this.#queueOf(item)
      if (queue === this.#open && item.preferred != null && item.failedBy.size > 0) this.#stats.fallbacks++
      if (queue === this.#open) toOpen.push(item)
      else this.#insertOrdered(queue, item)
    }
    this.#open.unshift(...toOpen)
    this.#checkExhausted()
    this.#notify()
  }

  /** `peer` is not used for the rest of this fetch (dead, or it served corrupt bytes): its queue opens to all. */
  dropSource (peer: string, err: unknown): void {
    this.#dropped.set(peer, messageOf(err))
    if (this.#probe?.source === peer) this.#releaseProbe()
    const queue = this.#queues.get(peer)
    if (queue != null) {
      this.#queues.delete(peer)
      this.#stats.fallbacks += queue.length
      this.#open = [...queue, ...this.#open]
    }
    this.#checkExhausted()
    this.#notify()
  }

  abort (err: unknown): void {
    if (this.finished) return
    this.#failed = true
    this.#failure = err
    this.#cleanUp()
    this.#controller.abort(err)
    this.#notify()
  }

  /**
   * The probe's block was delivered (`ahead`: its source has the file, or is ahead of us: every block of the
   * held queue is asked from it first) or not (the held queue is released as it was). False if `item` is not
   * the probe's.
   */
  #settleProbe (item: BlockWorkItem, ahead: boolean): boolean {
    const probe = this.#probe
    if (probe?.item !== item) return false
    this.#probe = undefined
    clearTimeout(this.#probeTimer)
    this.#stats.probe = ahead ? 'ahead' : 'not-ahead'
    const held = this.#queues.get(probe.held)
    if (ahead && held != null && held.length > 0 && !this.#dropped.has(probe.source)) {
      this.#queues.delete(probe.held)
      for (const moved of held) {
        moved.preferred = probe.source
        moved.patient = false
      }
      const target = this.#queueOf(held[0] as BlockWorkItem)
      target.push(...held)
      target.sort((a, b) => a.ordinal - b.ordinal)
    }
    this.#notify()
    return true
  }

  /** Gives up the probe without an answer (its source was dropped or is too slow): the held queue is released. */
  #releaseProbe (): void {
    const probe = this.#probe
    if (probe == null || this.finished) return
    this.#settleProbe(probe.item, false)
    this.#stats.probe = 'timeout'
    // Not asked yet: back to its own queue. In flight: it comes back through complete, fail or giveBack.
    if (!probe.taken) this.#insertOrdered(this.#queueOf(probe.item), probe.item)
  }

  /** A source's queue stays in leaf order: it is asked in the order its partner fetches them. */
  #insertOrdered (queue: BlockWorkItem[], item: BlockWorkItem): void {
    let lo = 0
    let hi = queue.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((queue[mid] as BlockWorkItem).ordinal < item.ordinal) lo = mid + 1
      else hi = mid
    }
    queue.splice(lo, 0, item)
  }

  /** Wakes the workers when a retry falls due (one timer, re-armed for the next retry still waiting). */
  #wakeAt (at: number): void {
    if (this.#retryTimer != null || this.finished) return
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined
      this.#notify()
      const now = performance.now()
      let next = Infinity
      for (const item of this.#retrying) if (item.notBefore > now) next = Math.min(next, item.notBefore)
      if (next !== Infinity) this.#wakeAt(next)
    }, Math.max(0, at - performance.now()))
  }

  /** The queue an item waits in now: its preferred source's while that source has neither failed it nor been dropped. */
  #queueOf (item: BlockWorkItem): BlockWorkItem[] {
    const p = item.preferred
    if (p == null || item.failedBy.has(p) || this.#dropped.has(p)) return this.#open
    let queue = this.#queues.get(p)
    if (queue == null) {
      queue = []
      this.#queues.set(p, queue)
    }
    return queue
  }

  /** Only open items can be exhausted: a queued one still has its preferred source. */
  #checkExhausted (): void {
    for (const item of this.#open) {
      if (this.#sources.every(s => item.failedBy.has(s) || this.#dropped.has(s))) {
        const failures: Record<string, string> = {}
        for (const s of this.#sources) failures[s] = item.failedBy.get(s) ?? this.#dropped.get(s) ?? 'unknown'
        this.abort(new BlocksUnavailableError(item.cid, failures))
        return
      }
    }
  }

  #notify (): void {
    const wait = this.#wait
    this.#wait = undefined
    wait?.resolve()
  }

  #cleanUp (): void {
    clearTimeout(this.#probeTimer)
    clearTimeout(this.#retryTimer)
    this.#retryTimer = undefined
    this.#userSignal?.removeEventListener('abort', this.#onUserAbort)
  }
}
