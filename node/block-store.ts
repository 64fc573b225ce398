/**
 * This node's blocks, served to peers and read for local copies: raw leaves are byte ranges of plain files
 * (spool, work, archive) located through the store's leaf index; dag-pb nodes are kept in the store. Every
 * block is re-hashed against its CID right before it leaves this function: a corrupt copy is reported and
 * skipped, never served.
 */
import fs from 'node:fs/promises'
import type { CID } from 'multiformats/cid'
import { BlockMismatchError, DAG_PB_CODE, RAW_CODE, verifyBlock } from '../protocols/cid-policy.ts'
import type { Logger } from './log.ts'
import type { Store } from './store.ts'

const EMPTY_RAW_CID = 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'

export class LocalBlocks {
  readonly #store: Store
  readonly #log: Logger
  #corruptReads = 0

  constructor (store: Store, log: Logger) {
    this.#store = store
    this.#log = log
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
      let bytes: Uint8Array
      try {
        bytes = await readRange(loc.path, loc.offset, loc.length)
      } catch (err: any) {
        if (err.code !== 'ENOENT') this.#log.warn('cannot read block', { cid: key, file: loc.path, err })
        continue
      }
      if (this.#checked(cid, bytes, loc.path)) return bytes
    }
    return undefined
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
