/**
 * Fetches one channel version into its `.part` from the swarm, BitTorrent-style, so that the publisher
 * uploads each block about once however many nodes follow the channel:
 *
 *  - every follower tells the others which blocks it has (channel-have bitmaps, routed here by
 *    node/channels.ts through `observe`); blocks a peer has are fetched from that peer, rarest first, the
 *    peer chosen at random among the holders that are free;
 *  - a block no other follower has yet ("fresh") is fetched from the publisher only by its owner: the
 *    follower that wins a rendezvous hash of (peer, block) among the followers currently fetching this
 *    version. The others wait for the owner to have it and take it from the owner. A fresh block whose owner
 *    went silent (no have for `staleMs`), or any fresh block once this fetch has made no progress for
 *    `endgameWaitMs` with nothing in flight from peers, is taken from the publisher anyway: a dead or stuck
 *    follower costs some duplicate egress, never a stall;
 *  - blocks this node already holds (an earlier version, another file) are copied locally first, so a new
 *    version that differs little from the last costs little.
 *
 * Each source in use has one worker with one long-lived block stream (node/channel-session.ts) that asks
 * for the next block it can give as soon as a slot frees, and closes once it has had nothing to give for
 * SESSION_IDLE_MS. Every block is verified against its CID before it is written. Memory: at most
 * `inFlightMax` blocks requested at once over all sources (CHANNEL_BLOCKS_IN_FLIGHT_MAX), `batchMax` per
 * source (DEFAULT_CHANNEL_BATCH_BLOCKS). Time and randomness are injectable.
 */
import type { FileHandle } from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import { BlockMismatchError, verifyBlock } from '../protocols/cid-policy.ts'
import { CHANNEL_BLOCKS_IN_FLIGHT_MAX, CHANNEL_PEERS_TRACKED_MAX } from '../protocols/limits.ts'
import type { Leaf } from '../protocols/unixfs.ts'
import type { ChannelBlockSession, ChannelSessionOpener } from './channel-session.ts'
import type { Logger } from './log.ts'
import { writeFully } from './fsutil.ts'

/**
 * Blocks asked of one source at a time (one stream). Small, because every follower serves every other: a
 * server holds the blocks it was asked for in memory until sent, so 4 x 9 peers is 36 MiB at most there.
 */
export const DEFAULT_CHANNEL_BATCH_BLOCKS = 4
/** No block written for this long and nothing in flight: fresh blocks owned by others are taken from the publisher (rare: an owner that is alive but cannot get them). */
export const DEFAULT_CHANNEL_ENDGAME_WAIT_MS = 10_000
/** A follower not heard from for this long (it sends a have every 2 s while fetching) no longer owns fresh blocks. */
export const DEFAULT_CHANNEL_PEER_STALE_MS = 6_000
export const DEFAULT_CHANNEL_RETRY_MS = 1_000
/** At the start, how long fresh blocks wait before they are taken from the publisher (so the followers learn of each other first). */
export const DEFAULT_CHANNEL_DISCOVERY_MS = 300
const IDLE_WAKE_MS = 250
/** A source's stream is closed once it has had no block for this fetch for this long. */
const SESSION_IDLE_MS = 2_000
const SOURCE_FAILURES_MAX = 3

export type { ChannelBlockSession, ChannelSessionOpener as ChannelFetchClient } from './channel-session.ts'

export interface ChannelFetchInit {
  /** The version's leaves in file order (may repeat a CID). */
  leaves: Leaf[]
  fh: FileHandle
  client: ChannelSessionOpener
  /** This node's own blocks, copied before anything is fetched. */
  local?: { getBlock: (cid: CID) => Promise<Uint8Array | undefined> }
  selfId: string
  /** Holds every block (it published the version). */
  publisher: string
  /** Called once a distinct leaf is verified and written at every offset (index in `items`). */
  onWritten?: (index: number) => void
  signal: AbortSignal
  log: Logger
  nowMs?: () => number
  random?: () => number
  inFlightMax?: number
  batchMax?: number
  endgameWaitMs?: number
  staleMs?: number
  retryMs?: number
  discoveryMs?: number
}

export interface ChannelFetchItem {
  cid: CID
  length: number
  offsets: number[]
}

export interface ChannelFetchStats {
  blocksDone: number
  blocksTotal: number
  bytesFromPublisher: number
  bytesFromPeers: number
  bytesLocal: number
  /** Blocks a follower advertised but did not have. */
  notFound: number
  /** Streams that failed (peer gone, timeout, refused, corrupt block); their blocks went back to the others. */
  sourceFailures: number
}

interface Holding { complete: boolean, bitmap?: Uint8Array, heardMs: number, seed: number }

interface Source { id: PeerId, busy: boolean, failuresInRow: number, backoffUntilMs: number, dropped: boolean, failed: Set<number> }

class SourceFailure extends Error {
  override name = 'SourceFailure'
}

const WANT = 0
const IN_FLIGHT = 1
const DONE = 2

export class ChannelFetch {
  readonly items: ChannelFetchItem[]
  /** Bit i set = item i is written here (the bitmap this node advertises). */
  readonly bitmap: Uint8Array
  readonly #init: ChannelFetchInit
  readonly #state: Uint8Array
  readonly #order: number[]
  readonly #index = new Map<string, number>()
  readonly #peers = new Map<string, Holding>()
  /** Per block, how many partial holders (other followers still fetching) advertise it. */
  readonly #count: Uint16Array
  readonly #sources = new Map<string, Source>()
  readonly #now: () => number
  readonly #selfSeed: number
  readonly #startedMs: number
  #done = 0
  #inFlight = 0
  #lastProgressMs: number
  #wake: PromiseWithResolvers<void> | undefined
  #fatal: unknown
  readonly #workers = new Set<Promise<void>>()
  readonly stats: ChannelFetchStats

  constructor (init: ChannelFetchInit) {
    this.#init = init
    this.#now = init.nowMs ?? (() => performance.now())
    const items: ChannelFetchItem[] = []
    for (const leaf of init.leaves) {
      const key = leaf.cid.toString()
      const at = this.#index.get(key)
      if (at == null) {
        this.#index.set(key, items.length)
        items.push({ cid: leaf.cid, length: leaf.length, offsets: [leaf.offset] })
      } else {
        (items[at] as ChannelFetchItem).offsets.push(leaf.offset)
      }
    }
    this.items = items
    this.bitmap = new Uint8Array(Math.ceil(items.length / 8))
    this.#state = new Uint8Array(items.length)
    this.#count = new Uint16Array(items.length)
    this.#order = shuffled(items.length, init.random ?? Math.random)
    this.#selfSeed = seedOf(init.selfId)
    this.#startedMs = this.#now()
    this.#lastProgressMs = this.#startedMs
    this.stats = { blocksDone: 0, blocksTotal: items.length, bytesFromPublisher: 0, bytesFromPeers: 0, bytesLocal: 0, notFound: 0, sourceFailures: 0 }
  }

  get complete (): boolean {
    return this.#done === this.items.length
  }

  /** What `peer` holds of this version now (from its channel-have message). */
  observe (peer: string, holding: { complete: boolean, bitmap?: Uint8Array }): void {
    if (peer === this.#init.selfId) return
    if (holding.bitmap != null && holding.bitmap.length !== this.bitmap.length) return
    const prev = this.#peers.get(peer)
    if (prev == null && this.#peers.size >= CHANNEL_PEERS_TRACKED_MAX) return
    const bitmap = holding.complete ? undefined : holding.bitmap
    this.#recount(prev?.bitmap, bitmap)
    this.#peers.set(peer, { complete: holding.complete, bitmap, heardMs: this.#now(), seed: prev?.seed ?? seedOf(peer) })
    const src = this.#sources.get(peer)
    if (src != null && src.dropped && src.failuresInRow > 0) { // it speaks again: give it another chance
      src.dropped = false
      src.failuresInRow = 0
      src.backoffUntilMs = 0
    }
    this.#notify()
  }

  /** Drops what `peer` advertised (until its next have message). */
  #forget (peer: string): void {
    const h = this.#peers.get(peer)
    if (h == null) return
    this.#recount(h.bitmap, undefined)
    this.#peers.delete(peer)
  }

  /** Keeps #count in step when a peer's bitmap changes from `before` to `after`. */
  #recount (before: Uint8Array | undefined, after: Uint8Array | undefined): void {
    for (let byte = 0; byte < this.bitmap.length; byte++) {
      const b = before?.[byte] ?? 0
      const a = after?.[byte] ?? 0
      if (a === b) continue
      for (let bit = 0; bit < 8; bit++) {
        const i = byte * 8 + bit
        const had = (b >> bit) & 1
        const has = (a >> bit) & 1
        if (had !== has && i < this.items.length) this.#count[i] = (this.#count[i] as number) + (has - had)
      }
    }
  }

  /** Copies what this node already has, then fetches the rest; resolves when every leaf is written. */
  async run (): Promise<void> {
    try {
      await this.#reuseLocal()
      await this.#loop()
    } finally {
      this.#notify()
      await Promise.allSettled([...this.#workers]) // every stream closed before the caller closes the file
    }
  }

  async #loop (): Promise<void> {
    while (!this.complete) {
      this.#init.signal.throwIfAborted()
      if (this.#fatal != null) throw this.#fatal
      this.#schedule()
      if (this.complete) break
      const wake = this.#wake ??= Promise.withResolvers()
      // Wake at the latest after IDLE_WAKE_MS (backoffs, the endgame), and right when discovery ends.
      const discoveryLeftMs = this.#startedMs + (this.#init.discoveryMs ?? DEFAULT_CHANNEL_DISCOVERY_MS) - this.#now()
      const timer = setTimeout(() => { this.#notify() }, discoveryLeftMs > 0 ? Math.min(IDLE_WAKE_MS, discoveryLeftMs + 1) : IDLE_WAKE_MS)
      const onAbort = (): void => { this.#notify() }
      this.#init.signal.addEventListener('abort', onAbort, { once: true })
      try {
        await wake.promise
      } finally {
        clearTimeout(timer)
        this.#init.signal.removeEventListener('abort', onAbort)
      }
    }
    if (this.#fatal != null) throw this.#fatal
  }

  /** Resolves at the next change (a block written or failed, a have-map, a worker ending) or after `ms`. */
  async #changed (ms: number): Promise<void> {
    const wake = this.#wake ??= Promise.withResolvers()
    let timer: NodeJS.Timeout | undefined
    await Promise.race([wake.promise, new Promise<void>((resolve) => { timer = setTimeout(resolve, ms) })])
    clearTimeout(timer)
  }

  async #reuseLocal (): Promise<void> {
    const local = this.#init.local
    for (let i = 0; i < this.items.length; i++) {
      this.#init.signal.throwIfAborted()
      const item = this.items[i] as ChannelFetchItem
      const bytes = item.length === 0 ? new Uint8Array(0) : await local?.getBlock(item.cid)
      if (bytes == null || bytes.byteLength !== item.length) continue
      await this.#write(i, bytes)
      this.stats.bytesLocal += bytes.byteLength
    }
  }

  async #write (i: number, bytes: Uint8Array): Promise<void> {
    const item = this.items[i] as ChannelFetchItem
    if (this.#state[i] === DONE) return
    if (bytes.byteLength !== item.length) throw new Error(`leaf ${item.cid.toString()} has ${bytes.byteLength} bytes, the DAG says ${item.length}`)
    for (const offset of item.offsets) await writeFully(this.#init.fh, bytes, offset)
    this.#state[i] = DONE
    this.bitmap[i >> 3] = (this.bitmap[i >> 3] as number) | (1 << (i & 7))
    this.#done++
    this.stats.blocksDone = this.#done
    this.#lastProgressMs = this.#now()
    this.#init.onWritten?.(i)
  }

  #notify (): void {
    const w = this.#wake
    this.#wake = undefined
    w?.resolve()
  }

  #source (peer: string): Source {
    let s = this.#sources.get(peer)
    if (s == null) {
      s = { id: peerIdFromString(peer), busy: false, failuresInRow: 0, backoffUntilMs: 0, dropped: false, failed: new Set() }
      this.#sources.set(peer, s)
    }
    return s
  }

  #usable (peer: string, now: number): Source | undefined {
    const s = this.#source(peer)
    return s.busy || s.dropped || s.backoffUntilMs > now ? undefined : s
  }

  /** Starts a worker for every idle source that has something for us now: peers (in random order), then the publisher. */
  #schedule (): void {
    const now = this.#now()
    if (this.#inFlight >= (this.#init.inFlightMax ?? CHANNEL_BLOCKS_IN_FLIGHT_MAX)) return
    const keys = [...this.#peers.keys()].filter((p) => p !== this.#init.publisher)
    const order = shuffled(keys.length, this.#init.random ?? Math.random).map((i) => keys[i] as string)
    for (const peer of [...order, this.#init.publisher]) {
      const src = this.#usable(peer, now)
      if (src == null) continue
      if (this.#pick(peer, src, 1, now).length > 0) this.#startWorker(peer, src)
    }
  }

  #pick (peer: string, src: Source, room: number, now: number): number[] {
    return peer === this.#init.publisher ? this.#pickFromPublisher(src, room, now) : this.#pickFromPeer(peer, src, room, now)
  }

  #peerHas (h: Holding, i: number): boolean {
    return h.complete || (h.bitmap != null && ((h.bitmap[i >> 3] as number) & (1 << (i & 7))) !== 0)
  }

  /** Wanted blocks `peer` has, rarest first among a random sample (so followers spread over different blocks). */
  #pickFromPeer (peer: string, src: Source, room: number, now: number): number[] {
    const h = this.#peers.get(peer)
    if (h == null) return []
    const sample: number[] = []
    for (const i of this.#order) {
      if (this.#state[i] !== WANT || src.failed.has(i) || !this.#peerHas(h, i)) continue
      sample.push(i)
      if (sample.length >= room * 4) break
    }
    if (sample.length <= room) return sample
    return sample.sort((a, b) => (this.#count[a] as number) - (this.#count[b] as number)).slice(0, room)
  }

  /** Other followers that can give block i now (slow: looks at every peer). */
  #holders (i: number, now: number): number {
    let n = 0
    for (const [peer, h] of this.#peers) {
      if (peer === this.#init.publisher || !this.#peerHas(h, i)) continue
      const s = this.#sources.get(peer)
      if (s != null && (s.dropped || s.failed.has(i) || s.backoffUntilMs > now)) continue
      n++
    }
    return n
  }

  /** Fresh blocks this node owns (or whose owner is silent), or any fresh block in the endgame. */
  #pickFromPublisher (src: Source, room: number, now: number): number[] {
    if (now - this.#startedMs < (this.#init.discoveryMs ?? DEFAULT_CHANNEL_DISCOVERY_MS)) return []
    const staleMs = this.#init.staleMs ?? DEFAULT_CHANNEL_PEER_STALE_MS
    const fetchers: Holding[] = []
    for (const [peer, h] of this.#peers) if (peer !== this.#init.publisher && !h.complete && now - h.heardMs <= staleMs) fetchers.push(h)
    const endgame = this.#inFlight === 0 && now - this.#lastProgressMs >= (this.#init.endgameWaitMs ?? DEFAULT_CHANNEL_ENDGAME_WAIT_MS)
    // A follower that has everything serves it all: the publisher is not needed (unless it stops answering: endgame).
    if (!endgame && [...this.#peers].some(([peer, h]) => h.complete && peer !== this.#init.publisher && this.#sourceAlive(peer, now))) return []
    const mine: number[] = []
    const others: number[] = []
    for (const i of this.#order) {
      if (this.#state[i] !== WANT || src.failed.has(i)) continue
      // Advertised by another follower: take it from there, unless (endgame) none of them can give it.
      if ((this.#count[i] as number) > 0 && (!endgame || this.#holders(i, now) > 0)) continue
      if (this.#ownsFresh(i, fetchers)) mine.push(i)
      else if (endgame) others.push(i)
      if (mine.length >= room) break
    }
    return [...mine, ...others].slice(0, room)
  }

  #sourceAlive (peer: string, now: number): boolean {
    const s = this.#sources.get(peer)
    return s == null || (!s.dropped && s.backoffUntilMs <= now)
  }

  /** True if this node wins block i's rendezvous among the live fetchers. */
  #ownsFresh (i: number, fetchers: Holding[]): boolean {
    const mine = mix(this.#selfSeed, i)
    return fetchers.every((h) => mix(h.seed, i) < mine)
  }

  #startWorker (peer: string, src: Source): void {
    src.busy = true
    const worker = this.#work(peer, src)
      .catch((err) => { this.#fatal ??= err })
      .finally(() => {
        src.busy = false
        this.#workers.delete(worker)
        this.#notify()
      })
    this.#workers.add(worker)
  }

  /**
   * One source's loop: keep up to `batchMax` of the blocks it can give requested on one stream, write each
   * verified answer, stop when it has had nothing for us for SESSION_IDLE_MS. A source that fails is backed
   * off (and, after SOURCE_FAILURES_MAX in a row, dropped until it sends a new have-map); its blocks go
   * back for the others. Throws only a write error (the fetch fails).
   */
  async #work (peer: string, src: Source): Promise<void> {
    const signal = this.#init.signal
    const fromPublisher = peer === this.#init.publisher
    const batchMax = this.#init.batchMax ?? DEFAULT_CHANNEL_BATCH_BLOCKS
    const inFlightMax = this.#init.inFlightMax ?? CHANNEL_BLOCKS_IN_FLIGHT_MAX
    const mine: number[] = []
    let session: ChannelBlockSession | undefined
    let clean = false
    try {
      session = await this.#init.client.open(src.id, signal)
      let idleSinceMs = this.#now()
      while (!this.complete && !signal.aborted && this.#fatal == null) {
        const now = this.#now()
        const room = Math.min(batchMax - mine.length, inFlightMax - this.#inFlight)
        if (room > 0) {
          for (const i of this.#pick(peer, src, room, now)) {
            this.#state[i] = IN_FLIGHT
            this.#inFlight++
            mine.push(i)
            await session.request((this.items[i] as ChannelFetchItem).cid, signal)
          }
        }
        if (mine.length === 0) {
          if (now - idleSinceMs >= SESSION_IDLE_MS) break
          await this.#changed(IDLE_WAKE_MS)
          continue
        }
        idleSinceMs = now
        const { cid, response } = await session.next(signal)
        const i = mine.shift() as number
        this.#inFlight--
        if (response.status === 'not-found') {
          this.#state[i] = WANT
          // The publisher has every block of its version: not having one is a failure of the source.
          if (fromPublisher) throw new SourceFailure(`the publisher answered not-found for ${cid.toString()}`)
          // A follower advertised a block it does not have (it pruned the version, or lies): believe none
          // of its have-map until it sends a new one, and never ask it for this block again.
          src.failed.add(i)
          this.stats.notFound++
          this.#forget(peer)
          this.#notify()
          continue
        }
        if (response.status !== 'ok') {
          this.#state[i] = WANT
          throw new SourceFailure(`${peer} refused the request for ${cid.toString()}`)
        }
        try {
          verifyBlock(cid, response.bytes)
        } catch (err) {
          this.#state[i] = WANT
          if (!(err instanceof BlockMismatchError)) throw err
          src.dropped = true
          this.#init.log.warn('a channel source sent a corrupt block: not used for this version', { peer, cid: cid.toString() })
          throw new SourceFailure('corrupt block')
        }
        try {
          await this.#write(i, response.bytes)
        } catch (err) {
          this.#fatal ??= err
          throw err
        }
        src.failuresInRow = 0
        if (fromPublisher) this.stats.bytesFromPublisher += response.bytes.byteLength
        else this.stats.bytesFromPeers += response.bytes.byteLength
      }
      clean = mine.length === 0
    } catch (err) {
      if (this.#fatal != null) throw this.#fatal
      if (signal.aborted) return
      if (src.dropped) { this.stats.sourceFailures++; return }
      src.failuresInRow++
      this.stats.sourceFailures++
      src.backoffUntilMs = this.#now() + (this.#init.retryMs ?? DEFAULT_CHANNEL_RETRY_MS) * 2 ** Math.min(5, src.failuresInRow - 1)
      if (src.failuresInRow >= SOURCE_FAILURES_MAX && !fromPublisher) src.dropped = true
      this.#init.log.info('channel block source failed: its blocks go to the others', { peer, failures: src.failuresInRow, unanswered: mine.length, err })
    } finally {
      for (const i of mine) if (this.#state[i] === IN_FLIGHT) this.#state[i] = WANT
      this.#inFlight -= mine.length
      if (clean) await session?.close()
      else session?.abort(new Error('channel fetch of this source ended'))
    }
  }
}

/** 0..n-1 in random order (Fisher-Yates). */
function shuffled (n: number, random: () => number): number[] {
  const a = Array.from({ length: n }, (_, i) => i)
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    const t = a[i] as number
    a[i] = a[j] as number
    a[j] = t
  }
  return a
}

/** FNV-1a of a peer ID: its rendezvous seed. */
function seedOf (s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
  return h >>> 0
}

/** Rendezvous weight of (peer seed, block index): murmur3's finaliser over the two. */
function mix (seed: number, i: number): number {
  let h = (seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b)
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35)
  return (h ^ (h >>> 16)) >>> 0
}
