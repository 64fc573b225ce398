/**
 * This node's blocks, served to peers and read for local copies: raw leaves are byte ranges of plain files
 * (spool, work, archive) located through the store's leaf index; dag-pb nodes are kept in the store. Every
 * block is re-hashed against its CID right before it leaves this function: a corrupt copy is reported and
 * skipped, never served. Leaves of files this node is fetching right now are found too, in their `.part`
 * files (node/inflight-blocks.ts), so a swarm partner can have them as they arrive; `waitFor` lets the block
 * server hold a request for a leaf such a fetch is about to write.
 */
import fs from 'node:fs/promises'
import type { CID } from 'multiformats/cid'
import { BlockMismatchError, DAG_PB_CODE, RAW_CODE, verifyBlock } from '../protocols/cid-policy.ts'
import { InflightBlocks } from './inflight-blocks.ts'
import type { Logger } from './log.ts'
import type { Store } from './store.ts'

const EMPTY_RAW_CID = 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'

export class LocalBlocks {
  readonly #store: Store
  readonly #log: Logger
  /** Fetches in progress on this node: holders register their `.part` files' leaves here. */
  readonly inflight: InflightBlocks
  #corruptReads = 0

  constructor (store: Store, log: Logger, inflight: InflightBlocks = new InflightBlocks()) {
    this.#store = store
    this.#log = log
    this.inflight = inflight
  }

  get corruptReads (): number {
    return this.#corruptReads
  }

  /** The verified bytes of `cid`, or undefined if this node has no intact copy. */
  async getBlock (cid: CID, _options?: { signal?: AbortSignal }): Promise<Uint8Array | undefined> {
    const key = cid.toString()
    if (cid.code === DAG_PB_CODE) {
      const bytes = await this.#store.node(key)
      if (bytes == null) return undefined
      return this.#checked(cid, bytes, 'store') ? bytes : undefined
    }
    if (cid.code !== RAW_CODE) return undefined
    if (key === EMPTY_RAW_CID) return new Uint8Array(0)
    for (const loc of await this.#store.leafLocations(key)) {
      const bytes = await this.#read(key, loc, false)
      if (bytes != null && this.#checked(cid, bytes, loc.path)) return bytes
    }
    // A `.part` being written: verified bytes were written there, but the file may have been replaced by a
    // fresh attempt since the range was looked up, so a mismatch here is not corruption, only not found.
    for (const loc of this.inflight.locations(key)) {
      const bytes = await this.#read(key, loc, true)
      if (bytes == null) continue
      try {
        verifyBlock(cid, bytes)
        return bytes
      } catch (err) {
        if (!(err instanceof BlockMismatchError)) throw err
        this.#log.debug('a part file no longer holds the block it was written with', { cid: key, file: loc.path })
      }
    }
    return undefined
  }

  /** The range's bytes, or undefined if the file is gone (or, for a part file, `partial`, shorter). */
  async #read (key: string, loc: { path: string, offset: number, length: number }, partial: boolean): Promise<Uint8Array | undefined> {
    try {
      return await readRange(loc.path, loc.offset, loc.length)
    } catch (err: any) {
      if (err.code !== 'ENOENT' && !(partial && err.code === 'ESHORT')) this.#log.warn('cannot read block', { cid: key, file: loc.path, err })
      return undefined
    }
  }

  /** True while a fetch on this node is about to write the leaf `cid` (or does not know its leaves yet). */
  expects (cid: CID): boolean {
    return cid.code === RAW_CODE && this.inflight.expects(cid.toString())
  }

  /**
   * Waits (at most `ms`) for a leaf that a fetch on this node is about to write: true once it can be read,
   * false at once if no fetch here expects it. Callers read it with getBlock either way (the fetch may have
   * just been stored and indexed).
   */
  async waitFor (cid: CID, ms: number, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    if (cid.code !== RAW_CODE) return false
    return await this.inflight.waitFor(cid, ms, options)
  }

  #checked (cid: CID, bytes: Uint8Array, where: string): boolean {
    try {
      verifyBlock(cid, bytes)
      return true
    } catch (err) {
      if (!(err instanceof BlockMismatchError)) throw err
      this.#corruptReads++
      this.#log.error('stored block does not match its CID: not serving it', { cid: cid.toString(), file: where })
      return false
    }
  }
}

async function readRange (path: string, offset: number, length: number): Promise<Uint8Array> {
  const fh = await fs.open(path, 'r')
  try {
    const buf = Buffer.allocUnsafe(length)
    let done = 0
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done)
      if (bytesRead === 0) throw Object.assign(new Error(`${path} is shorter than expected`), { code: 'ESHORT' })
      done += bytesRead
    }
    return buf
  } finally {
    await fh.close()
  }
}
