/**
 * The follower side of broadcast channels: fetches the newest announced version of each followed channel
 * from the swarm and installs it. One fetch per channel at a time; a newer announcement aborts an older
 * fetch (a node that was away goes straight to the newest version). A fetch that fails is retried with
 * backoff from a fresh `.part` until it succeeds or a newer version replaces it; one that can never succeed
 * (the announced CID is not a file of the announced size) is given up and logged.
 *
 * Steps: resolve the DAG (dag-pb nodes from this node, holders, or the publisher) -> `.part` created and
 * registered with the in-flight registry (node/inflight-blocks.ts: peers can have its leaves as they are
 * written) -> ChannelFetch fills it from the swarm, every block verified -> fsync -> install
 * (node/channel-install.ts: rename, record + index {sync}, NAME.current switched, old versions pruned).
 * While it fetches, the node gossips its have-map (at most every `haveIntervalMs`, and at least every
 * `haveHeartbeatMs` so the others know it is alive); once installed, that it has the version complete.
 */
import fs from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import type { CID } from 'multiformats/cid'
import { parseCid } from '../protocols/cid-policy.ts'
import { CHANNEL_HAVE_BITMAP_BLOCKS_MAX, CHANNEL_PEERS_TRACKED_MAX } from '../protocols/limits.ts'
import type { ChannelAnnounceMessage, ChannelHaveMessage } from '../protocols/messages.ts'
import { resolveLeaves } from '../protocols/unixfs.ts'
import { ChannelFetch } from './channel-fetch.ts'
import type { ChannelFetchClient, ChannelFetchStats } from './channel-fetch.ts'
import type { ChannelInstaller } from './channel-install.ts'
import type { ChannelStore } from './channel-store.ts'
import { syncHandle } from './fsutil.ts'
import type { InflightBlocks } from './inflight-blocks.ts'
import { KeyedThrottle } from './keyed-throttle.ts'
import type { Logger } from './log.ts'
import { backoffMs } from './processor.ts'
import { sleep } from './retrier.ts'

/**
 * A fetching follower's have-map goes out at most this often. Every gossip message costs each node a
 * signature check per copy it receives (gossipsub verifies before it drops duplicates, and a small mesh
 * delivers each message several times), so have-maps are coalesced: a block becomes visible to the others
 * at most this late, which costs nothing while each follower has other blocks to fetch meanwhile.
 */
export const DEFAULT_CHANNEL_HAVE_INTERVAL_MS = 500
/** ...and at least this often, so the others know it is alive (DEFAULT_CHANNEL_PEER_STALE_MS is 3x this). */
export const DEFAULT_CHANNEL_HAVE_HEARTBEAT_MS = 2_000

/** The announced version can never be fetched (not a file, or not of the announced size): given up. */
export class ChannelVersionError extends Error {
  override name = 'ChannelVersionError'
}

export interface ChannelFollowerComponents {
  installer: ChannelInstaller
  disk: ChannelStore
  /** One-off block requests (the DAG's dag-pb nodes). */
  client: { getBlock: (peer: ReturnType<typeof peerIdFromString>, cid: CID, options?: { signal?: AbortSignal }) => Promise<Uint8Array> }
  /** Block streams for the leaves (node/channel-session.ts). */
  sessions: ChannelFetchClient
  /** This node's blocks (reused before fetching) and its in-flight registry (what it serves from `.part` files). */
  local: { getBlock: (cid: CID) => Promise<Uint8Array | undefined>, inflight: InflightBlocks }
  selfId: string
  /** Publishes a have message on the channels topic. */
  send: (msg: ChannelHaveMessage) => void
  log: Logger
}

export interface ChannelFollowerInit {
  haveIntervalMs?: number
  haveHeartbeatMs?: number
}

export interface ActiveFetchStatus extends ChannelFetchStats {
  version: number
  cid: string
  publisher: string
}

interface Active {
  ann: ChannelAnnounceMessage
  controller: AbortController
  /** What other nodes said they hold of this version (replayed into the fetch once it exists). */
  peers: Map<string, { complete: boolean, bitmap?: Uint8Array }>
  fetch?: ChannelFetch
  heartbeat?: NodeJS.Timeout
  done?: Promise<void>
}

export class ChannelFollower {
  readonly #c: ChannelFollowerComponents
  readonly #init: ChannelFollowerInit
  readonly #active = new Map<string, Active>()
  readonly #haves: KeyedThrottle
  /** Versions that can never be fetched ('channel/version'), not tried again. */
  readonly #givenUp = new Set<string>()
  #stopped = false

  constructor (components: ChannelFollowerComponents, init: ChannelFollowerInit = {}) {
    this.#c = components
    this.#init = init
    this.#haves = new KeyedThrottle({ intervalMs: init.haveIntervalMs ?? DEFAULT_CHANNEL_HAVE_INTERVAL_MS })
  }

  /** Starts fetching `ann` unless this version or a newer one is being fetched already; aborts an older fetch. */
  fetch (ann: ChannelAnnounceMessage): void {
    if (this.#stopped || this.#givenUp.has(`${ann.channel}/${ann.version}`)) return
    const old = this.#active.get(ann.channel)
    if (old != null) {
      if (old.ann.version >= ann.version) return
      this.#c.log.info('a newer version was announced: the fetch of the older one stops', { channel: ann.channel, version: old.ann.version, newer: ann.version })
      old.controller.abort(new Error('superseded by a newer version'))
    }
    const a: Active = { ann, controller: new AbortController(), peers: new Map() }
    this.#active.set(ann.channel, a)
    a.done = this.#run(a)
      .catch((err) => { this.#c.log.error('channel fetch failed', { channel: ann.channel, version: ann.version, err }) })
      .finally(() => {
        clearInterval(a.heartbeat)
        if (this.#active.get(ann.channel) === a) this.#active.delete(ann.channel)
      })
  }

  /** Aborts the fetch of `channel` if it is for a version below `version` (that version is installed by other means). */
  cancelBelow (channel: string, version: number): void {
    const a = this.#active.get(channel)
    if (a != null && a.ann.version < version) a.controller.abort(new Error('a newer version is installed'))
  }

  /** A have message about a version being fetched here goes to that fetch; returns whether it was one. */
  observe (from: string, msg: ChannelHaveMessage): boolean {
    const a = this.#active.get(msg.channel)
    if (a == null || a.ann.version !== msg.version || a.ann.cid !== msg.cid || from === this.#c.selfId) return false
    if (!a.peers.has(from) && a.peers.size >= CHANNEL_PEERS_TRACKED_MAX) return true
    const holding = { complete: msg.complete, ...(msg.have != null ? { bitmap: new Uint8Array(Buffer.from(msg.have, 'base64')) } : {}) }
    a.peers.set(from, holding)
    a.fetch?.observe(from, holding)
    return true
  }

  status (channel: string): ActiveFetchStatus | undefined {
    const a = this.#active.get(channel)
    if (a == null) return undefined
    const stats = a.fetch?.stats ?? { blocksDone: 0, blocksTotal: 0, bytesFromPublisher: 0, bytesFromPeers: 0, bytesLocal: 0, notFound: 0, sourceFailures: 0 }
    return { version: a.ann.version, cid: a.ann.cid, publisher: a.ann.publisher, ...stats }
  }

  isFetching (channel: string): boolean {
    return this.#active.has(channel)
  }

  async stop (): Promise<void> {
    this.#stopped = true
    this.#haves.stop()
    const running = [...this.#active.values()]
    for (const a of running) a.controller.abort(new Error('stopping'))
    await Promise.all(running.map(async (a) => { await a.done }))
  }

  /** Fetch attempts with backoff until installed, superseded, stopped, or impossible. */
  async #run (a: Active): Promise<void> {
    const signal = a.controller.signal
    this.#sendHave(a)
    a.heartbeat = setInterval(() => { this.#sendHave(a) }, this.#init.haveHeartbeatMs ?? DEFAULT_CHANNEL_HAVE_HEARTBEAT_MS)
    for (let attempt = 1; !signal.aborted; attempt++) {
      try {
        await this.#fetchOnce(a)
        return
      } catch (err) {
        if (signal.aborted) return
        if (err instanceof ChannelVersionError) {
          this.#givenUp.add(`${a.ann.channel}/${a.ann.version}`)
          this.#c.log.error('the announced channel version cannot be fetched: giving it up', { channel: a.ann.channel, version: a.ann.version, cid: a.ann.cid, err })
          return
        }
        const delayMs = backoffMs(attempt, { baseMs: 500, maxMs: 30_000 })
        this.#c.log.warn('channel fetch failed: will retry', { channel: a.ann.channel, version: a.ann.version, attempt, retryInMs: delayMs, err })
        await sleep(delayMs, signal)
      }
    }
  }

  async #fetchOnce (a: Active): Promise<void> {
    const { ann } = a
    const signal = a.controller.signal
    let root: CID
    try {
      root = parseCid(ann.cid)
    } catch (err) {
      throw new ChannelVersionError(`announced CID is not accepted: ${(err as Error).message}`)
    }
    const started = performance.now()
    const dag = await resolveLeaves(root, async (cid) => await this.#getNode(a, cid), { signal }).catch((err) => {
      if (err?.name === 'DagError') throw new ChannelVersionError(`announced CID is not a file: ${err.message}`)
      throw err
    })
    if (dag.size !== ann.size) throw new ChannelVersionError(`announced size ${ann.size} but the file is ${dag.size} bytes`)
    const { path: part, fh } = await this.#c.disk.createPart(ann.channel, ann.version, dag.size)
    const reg = this.#c.local.inflight.begin()
    let installed = false
    try {
      try {
        reg.expect(part, dag.leaves)
        const swarm = new ChannelFetch({
          leaves: dag.leaves,
          fh,
          client: this.#c.sessions,
          local: this.#c.local,
          selfId: this.#c.selfId,
          publisher: ann.publisher,
          signal,
          log: this.#c.log,
          onWritten: (i) => {
            const item = swarm.items[i]
            if (item != null) reg.written({ cid: item.cid, offset: item.offsets[0] as number, length: item.length })
            this.#haves.schedule(ann.channel, () => { this.#sendHave(a) })
          }
        })
        a.fetch = swarm
        for (const [peer, holding] of a.peers) swarm.observe(peer, holding)
        this.#sendHave(a)
        await swarm.run()
        await syncHandle(fh, part) // an fsync failure is fatal: the daemon exits rather than trust a retry
      } finally {
        await fh.close()
      }
      signal.throwIfAborted()
      reg.moving()
      await this.#c.installer.install(ann, { from: part, leaves: dag.leaves, nodes: dag.nodes })
      installed = true
    } finally {
      reg.end()
      if (!installed) await fs.rm(part, { force: true }).catch(() => {})
    }
    const s = a.fetch?.stats
    const ms = Math.round(performance.now() - started)
    this.#c.log.info('channel version installed', { channel: ann.channel, version: ann.version, cid: ann.cid, bytes: dag.size, ms, fromPublisher: s?.bytesFromPublisher, fromPeers: s?.bytesFromPeers, local: s?.bytesLocal, notFound: s?.notFound, sourceFailures: s?.sourceFailures })
    this.#c.send({ type: 'channel-have', v: 1, channel: ann.channel, version: ann.version, cid: ann.cid, complete: true })
  }

  /** A dag-pb node: from this node, else from nodes holding the whole version (in random order), else the publisher. */
  async #getNode (a: Active, cid: CID): Promise<Uint8Array> {
    const local = await this.#c.local.getBlock(cid)
    if (local != null) return local
    const holders = shuffle([...a.peers].filter(([peer, h]) => h.complete && peer !== a.ann.publisher).map(([peer]) => peer))
    let lastErr: unknown = new Error(`no source for ${cid.toString()}`)
    for (const peer of [...holders, a.ann.publisher]) {
      try {
        return await this.#c.client.getBlock(peerIdFromString(peer), cid, { signal: a.controller.signal })
      } catch (err) {
        lastErr = err
      }
    }
    throw lastErr
  }

  #sendHave (a: Active): void {
    if (a.controller.signal.aborted) return
    const msg: ChannelHaveMessage = { type: 'channel-have', v: 1, channel: a.ann.channel, version: a.ann.version, cid: a.ann.cid, complete: false }
    const f = a.fetch
    if (f != null) {
      msg.blocks = f.items.length
      if (f.items.length <= CHANNEL_HAVE_BITMAP_BLOCKS_MAX) msg.have = Buffer.from(f.bitmap).toString('base64')
    }
    this.#c.send(msg)
  }
}

function shuffle<T> (items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    const t = items[i] as T
    items[i] = items[j] as T
    items[j] = t
  }
  return items
}
