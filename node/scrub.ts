/**
 * Scrub: re-hashes every file this node stores (spool copies, owners' working copies, archive copies) and
 * compares the root with the file's CID. A corrupt copy is never served (blocks are verified before they
 * leave, see block-store.ts); the scrub repairs it from any live member that still has the blocks (pulled,
 * verified, fsynced, renamed over the bad copy, directory fsynced), or reports it as unrecoverable.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { peerIdFromString } from '@libp2p/peer-id'
import { CID } from 'multiformats/cid'
import { resolveLeaves } from '../protocols/unixfs.ts'
import type { BlockClient } from './block-client.ts'
import type { LocalBlocks } from './block-store.ts'
import { ensureDir, fsyncDir, syncHandle } from './fsutil.ts'
import { hashFile } from './hasher.ts'
import type { Logger } from './log.ts'
import type { Store } from './store.ts'

export interface ScrubReport {
  checked: number
  bytes: number
  corrupt: number
  repaired: number
  /** CIDs whose only copies here are corrupt and that no live member could give back. */
  unrecoverable: string[]
  ms: number
}

export interface ScrubberComponents {
  store: Store
  client: BlockClient
  local: LocalBlocks
  /** Live members other than this node: where repairs come from. */
  peers: () => string[]
  log: Logger
}

interface StoredCopy {
  cid: string
  path: string
  what: string
}

export class Scrubber {
  readonly #c: ScrubberComponents
  #running: Promise<ScrubReport> | undefined
  #last: ScrubReport | undefined

  constructor (components: ScrubberComponents) {
    this.#c = components
  }

  get last (): ScrubReport | undefined {
    return this.#last
  }

  /** Runs one scrub (or joins the one running). */
  async run (options: { signal?: AbortSignal } = {}): Promise<ScrubReport> {
    this.#running ??= this.#scrub(options.signal).finally(() => { this.#running = undefined })
    return await this.#running
  }

  async #copies (): Promise<StoredCopy[]> {
    const copies: StoredCopy[] = []
    for await (const rec of this.#c.store.ingestRecords()) {
      if (rec.phase !== 'released') copies.push({ cid: rec.cid, path: rec.spoolPath, what: 'spool copy' })
    }
    for await (const rec of this.#c.store.holderRecords()) {
      if (rec.path == null || rec.state === 'fetching') continue
      if (rec.role === 'owner' && rec.state === 'processed') continue
      copies.push({ cid: rec.cid, path: rec.path, what: rec.role === 'owner' ? 'working copy' : 'archive copy' })
    }
    return copies
  }

  async #scrub (signal?: AbortSignal): Promise<ScrubReport> {
    const started = performance.now()
    const report: ScrubReport = { checked: 0, bytes: 0, corrupt: 0, repaired: 0, unrecoverable: [], ms: 0 }
    for (const copy of await this.#copies()) {
      if (signal?.aborted === true) break
      let root: string
      try {
        const manifest = await hashFile(copy.path, { signal })
        root = manifest.root.toString()
        report.bytes += manifest.size
      } catch (err: any) {
        if (err?.code === 'ENOENT') continue // removed meanwhile (released, processed)
        throw err
      }
      report.checked++
      if (root === copy.cid) continue
      report.corrupt++
      this.#c.log.error(`corrupt ${copy.what}: repairing`, { cid: copy.cid, file: copy.path, actual: root })
      if (await this.#repair(copy, signal)) {
        report.repaired++
        this.#c.log.warn(`repaired ${copy.what}`, { cid: copy.cid, file: copy.path })
      } else {
        report.unrecoverable.push(copy.cid)
        this.#c.log.error(`cannot repair ${copy.what}: no live member has the blocks; it is not served`, { cid: copy.cid, file: copy.path })
      }
    }
    report.ms = Math.round(performance.now() - started)
    this.#last = report
    this.#c.log.info('scrub finished', { ...report, unrecoverable: report.unrecoverable.length })
    return report
  }

  /** Pulls a fresh copy from the live members into a part file, verifies it, and renames it over the bad one. */
  async #repair (copy: StoredCopy, signal?: AbortSignal): Promise<boolean> {
    const sources = this.#c.peers().map((p) => peerIdFromString(p))
    if (sources.length === 0) return false
    const root = CID.parse(copy.cid)
    const dir = path.join(path.dirname(copy.path), '.incoming')
    await ensureDir(dir)
    const part = path.join(dir, `${copy.cid}.repair.part`)
    try {
      const { leaves, size } = await resolveLeaves(root, async (cid) => {
        const local = cid.code === 0x70 ? await this.#c.local.getBlock(cid) : undefined
        if (local != null) return local
        for (const peer of sources) {
          try { return await this.#c.client.getBlock(peer, cid, { signal }) } catch {}
        }
        throw new Error(`no live member has ${cid.toString()}`)
      })
      await fs.rm(part, { force: true })
      const fh = await fs.open(part, 'wx', 0o644)
      try {
        if (size > 0) await fh.truncate(size)
        await this.#c.client.fetchLeavesToFile({ leaves, sources, fileHandle: fh, signal })
        await syncHandle(fh, part)
      } finally {
        await fh.close()
      }
      if ((await hashFile(part)).root.toString() !== copy.cid) throw new Error('repaired copy does not hash to its CID')
      await fs.rename(part, copy.path)
      await fsyncDir(path.dirname(copy.path))
      return true
    } catch (err) {
      this.#c.log.warn('repair attempt failed', { cid: copy.cid, err })
      await fs.rm(part, { force: true }).catch(() => {})
      return false
    }
  }
}
