/**
 * The node's state: one LevelDB database, sublevels for each kind of record. This file is the key layout;
 * nothing else names a sublevel or builds a key.
 *
 *   1. meta        'version' -> STORE_VERSION (checked at open: a database from another layout is refused)
 *                  'draining' -> { since }  present while `filemesh drain` holds this node out of service (survives restarts)
 *   2. claims      claimId -> Claim             intent log of a claim in progress (inbox -> spool -> hashed)
 *   3. ingest      rootCid -> IngestRecord      the coordinator's record of every file this node accepted
 *   4. holder      rootCid '/' role -> HolderRecord   files this node holds as owner or backup (a backup's record
 *                  also carries its standby coordination state of the file: node/core/takeover.ts)
 *   5. leaves      leafCid '/' rootCid '/' copy -> LeafLocation   where a raw leaf's bytes are (file, offset, length)
 *   6. nodes       dagPbCid '/' rootCid '/' copy -> bytes        dag-pb (UnixFS) interior nodes, a few KiB per file
 *   7. tombstones  rootCid -> Tombstone          files released by this ingest node: the same bytes again are a duplicate
 *   8. roots       rootCid '/' copy '/' ('l'|'n') '/' blockCid -> ''   reverse of 5 and 6, to drop one copy's entries
 *   9. channels    channelName -> ChannelRecord  broadcast channels (node/channels.ts): versions held, newest known, published
 *
 * `copy` names which copy of the file on this node the entry points into: 'spool' (ingest), 'owner' (working
 * copy), 'backup' (archive), 'channel:NAME:VERSION' (one version of a broadcast channel: the same bytes may be
 * two versions or two channels, each dropped on its own); one machine with several roles can hold several
 * copies of one file.
 *
 * File bytes are never stored here: a raw leaf is a byte range of a plain file (spool, work or archive).
 * Every write that a receipt, a deletion or a processing decision depends on goes through `commit()`, one
 * batch with {sync:true} (one fdatasync of the WAL).
 */
import { Level } from 'level'
import type { HolderRole } from '../protocols/messages.ts'
import type { HolderRecord, IngestRecord, Readiness } from './core/lifecycle.ts'
import type { ChannelRecord } from './channel-record.ts'

export const STORE_VERSION = 1

export interface Claim {
  id: string
  name: string
  inboxPath: string
  spoolPath: string
  readiness: Readiness
  claimedAt: string
  /** Sidecars (NAME.sha256, NAME.size) that came with the file, removed together with it. */
  sidecarPaths?: string[]
}

export interface LeafLocation {
  path: string
  offset: number
  length: number
}

export type CopyKind = 'spool' | 'owner' | 'backup' | `channel:${string}:${number}`

/** The copy kind of one version of a broadcast channel (channel names have no ':'). */
export function channelCopy (channel: string, version: number): CopyKind {
  return `channel:${channel}:${version}`
}

export interface Tombstone {
  name: string
  size: number
  releasedAt: string
}

export class StoreVersionError extends Error {
  override name = 'StoreVersionError'
}

type Json = Record<string, any>
type JsonSub = ReturnType<Level<string, Json>['sublevel']>

/** One operation of a batch, built by the Store's op helpers. */
export interface StoreOp {
  type: 'put' | 'del'
  sublevel: any
  key: string
  value?: unknown
}

export class Store {
  readonly db: Level<string, Json>
  readonly #meta: JsonSub
  readonly #claims: JsonSub
  readonly #ingest: JsonSub
  readonly #holder: JsonSub
  readonly #leaves: JsonSub
  readonly #nodes: any
  readonly #tombstones: JsonSub
  readonly #roots: JsonSub
  readonly #channels: JsonSub

  constructor (path: string) {
    this.db = new Level<string, Json>(path, { valueEncoding: 'json' })
    this.#meta = this.db.sublevel('meta', { valueEncoding: 'json' })
    this.#claims = this.db.sublevel('claims', { valueEncoding: 'json' })
    this.#ingest = this.db.sublevel('ingest', { valueEncoding: 'json' })
    this.#holder = this.db.sublevel('holder', { valueEncoding: 'json' })
    this.#leaves = this.db.sublevel('leaves', { valueEncoding: 'json' })
    this.#nodes = this.db.sublevel<string, Uint8Array>('nodes', { valueEncoding: 'view' })
    this.#tombstones = this.db.sublevel('tombstones', { valueEncoding: 'json' })
    this.#roots = this.db.sublevel('roots', { valueEncoding: 'json' })
    this.#channels = this.db.sublevel('channels', { valueEncoding: 'json' })
  }

  async open (): Promise<void> {
    await this.db.open()
    const version = await this.#meta.get('version') as unknown
    if (version === undefined) {
      await this.commit([{ type: 'put', sublevel: this.#meta, key: 'version', value: STORE_VERSION }])
    } else if (version !== STORE_VERSION) {
      throw new StoreVersionError(`database layout version ${String(version)} is not ${STORE_VERSION}: use a data directory made by this version, or move the old one away`)
    }
  }

  async close (): Promise<void> {
    await this.db.close()
  }

  /** Applies `ops` atomically and durably (one fdatasync). */
  async commit (ops: StoreOp[]): Promise<void> {
    if (ops.length === 0) return
    await this.db.batch(ops as any, { sync: true })
  }

  /** When a drain of this node began (epoch ms), or undefined when it is in service. */
  async getDraining (): Promise<number | undefined> {
    const v = await this.#meta.get('draining') as { since?: unknown } | undefined
    return typeof v?.since === 'number' ? v.since : undefined
  }

  // ---- op builders ----
  putDraining (since: number): StoreOp { return { type: 'put', sublevel: this.#meta, key: 'draining', value: { since } } }
  delDraining (): StoreOp { return { type: 'del', sublevel: this.#meta, key: 'draining' } }
  putClaim (c: Claim): StoreOp { return { type: 'put', sublevel: this.#claims, key: c.id, value: c } }
  delClaim (id: string): StoreOp { return { type: 'del', sublevel: this.#claims, key: id } }
  putIngest (r: IngestRecord): StoreOp { return { type: 'put', sublevel: this.#ingest, key: r.cid, value: r } }
  putHolder (r: HolderRecord): StoreOp { return { type: 'put', sublevel: this.#holder, key: holderKey(r.cid, r.role), value: r } }
  delHolder (cid: string, role: HolderRole): StoreOp { return { type: 'del', sublevel: this.#holder, key: holderKey(cid, role) } }

  /** Ops that index one copy of a file's blocks: each raw leaf at its place in `path`, each dag-pb node's bytes. */
  blockIndexOps (rootCid: string, copy: CopyKind, path: string, leaves: ReadonlyArray<{ cid: { toString: () => string }, offset: number, length: number }>, nodes: ReadonlyArray<{ cid: { toString: () => string }, bytes: Uint8Array }>): StoreOp[] {
    const ops: StoreOp[] = []
    for (const leaf of leaves) {
      const c = leaf.cid.toString()
      ops.push({ type: 'put', sublevel: this.#leaves, key: `${c}/${rootCid}/${copy}`, value: { path, offset: leaf.offset, length: leaf.length } })
      ops.push({ type: 'put', sublevel: this.#roots, key: `${rootCid}/${copy}/l/${c}`, value: '' })
    }
    for (const node of nodes) {
      const c = node.cid.toString()
      ops.push({ type: 'put', sublevel: this.#nodes, key: `${c}/${rootCid}/${copy}`, value: node.bytes })
      ops.push({ type: 'put', sublevel: this.#roots, key: `${rootCid}/${copy}/n/${c}`, value: '' })
    }
    return ops
  }

  /** Ops that drop the block index entries of one copy of `rootCid` (that file is going away). */
  async dropBlockIndexOps (rootCid: string, copy: CopyKind): Promise<StoreOp[]> {
    const ops: StoreOp[] = []
    const prefix = `${rootCid}/${copy}/`
    for await (const key of this.#roots.keys({ gt: prefix, lt: `${prefix}\xff` })) {
      const [kind, c] = key.slice(prefix.length).split('/')
      ops.push({ type: 'del', sublevel: this.#roots, key })
      ops.push({ type: 'del', sublevel: kind === 'l' ? this.#leaves : this.#nodes, key: `${c ?? ''}/${rootCid}/${copy}` })
    }
    return ops
  }
  putTombstone (rootCid: string, t: Tombstone): StoreOp { return { type: 'put', sublevel: this.#tombstones, key: rootCid, value: t } }
  putChannel (r: ChannelRecord): StoreOp { return { type: 'put', sublevel: this.#channels, key: r.channel, value: r } }

  // ---- reads ----
  async getIngest (cid: string): Promise<IngestRecord | undefined> { return await this.#ingest.get(cid) as IngestRecord | undefined }
  async getHolder (cid: string, role: HolderRole): Promise<HolderRecord | undefined> { return await this.#holder.get(holderKey(cid, role)) as HolderRecord | undefined }
  async getTombstone (cid: string): Promise<Tombstone | undefined> { return await this.#tombstones.get(cid) as Tombstone | undefined }
  async getChannel (channel: string): Promise<ChannelRecord | undefined> { return await this.#channels.get(channel) as ChannelRecord | undefined }
  async * channelRecords (): AsyncGenerator<ChannelRecord> { for await (const v of this.#channels.values()) yield v as ChannelRecord }

  async * claims (): AsyncGenerator<Claim> { for await (const v of this.#claims.values()) yield v as Claim }
  async * ingestRecords (): AsyncGenerator<IngestRecord> { for await (const v of this.#ingest.values()) yield v as IngestRecord }
  async * holderRecords (): AsyncGenerator<HolderRecord> { for await (const v of this.#holder.values()) yield v as HolderRecord }

  /** Locations of a raw leaf in any file this node holds. */
  async leafLocations (leafCid: string): Promise<LeafLocation[]> {
    const out: LeafLocation[] = []
    for await (const v of this.#leaves.values({ gt: `${leafCid}/`, lt: `${leafCid}/\xff` })) out.push(v as LeafLocation)
    return out
  }

  /** The bytes of a dag-pb node, if this node has it for any root. */
  async node (nodeCid: string): Promise<Uint8Array | undefined> {
    for await (const v of this.#nodes.values({ gt: `${nodeCid}/`, lt: `${nodeCid}/\xff`, limit: 1 })) return v as Uint8Array
    return undefined
  }
}

function holderKey (cid: string, role: HolderRole): string {
  return `${cid}/${role}`
}
