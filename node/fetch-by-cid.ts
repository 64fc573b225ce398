/**
 * Fetch by CID: any node gets any file the mesh holds by its root CID, even if it holds nothing of it
 * (`filemesh get`, `GET /api/cid/CID`; the download itself is cid-download.ts).
 *
 * Finding holders uses the mesh's own index, not a DHT: this node's own holdings come first; otherwise every
 * live member is asked `has` over the control protocol, likely holders first (backup role, then process,
 * then ingest), at most GET_HOLDER_QUERIES_IN_FLIGHT_MAX at once, each within DEFAULT_HOLDER_QUERY_TIMEOUT_MS,
 * until GET_SOURCES_MAX have said yes or everyone was asked. A member says yes when its block index has the
 * root (a verified copy of it) and every child of the root, and the files behind those leaves are there:
 * a copy's index is written in one batch with the copy (store.ts), so that is a complete copy.
 *
 * At most GET_REQUESTS_MAX gets run at once (more: GetsBusyError); a get needs the file's size free in the
 * temp directory (else GetSpaceError); the temp directory is emptied on start and on stop.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import type { CID } from 'multiformats/cid'
import { RAW_CODE, parseCid } from '../protocols/cid-policy.ts'
import { GET_HOLDER_QUERIES_IN_FLIGHT_MAX, GET_REQUESTS_MAX, GET_SOURCES_MAX } from '../protocols/limits.ts'
import type { ControlReply, HasMessage } from '../protocols/messages.ts'
import type { Role } from '../protocols/roles.ts'
import { EMPTY_FILE_CID, decodeFileNode } from '../protocols/unixfs.ts'
import type { FileNode } from '../protocols/unixfs.ts'
import { CidDownload } from './cid-download.ts'
import type { CidDownloadComponents } from './cid-download.ts'
import { ok, refuse } from './control.ts'
import type { ControlChannel } from './control.ts'
import { ensureDir, freeBytes } from './fsutil.ts'
import type { ApiFile } from './api.ts'
import type { Logger } from './log.ts'
import type { Store } from './store.ts'

export { CidUnavailableError } from './cid-download.ts'

/** How long one member may take to answer "do you hold X?" before it counts as "no". */
export const DEFAULT_HOLDER_QUERY_TIMEOUT_MS = 3_000

/** No live member (this node included) holds the file. */
export class CidNotFoundError extends Error {
  override name = 'CidNotFoundError'
  readonly cid: string
  readonly asked: number
  constructor (cid: string, asked: number) {
    super(`no live member holds ${cid} (this node and ${asked} other member(s) asked)`)
    this.cid = cid
    this.asked = asked
  }
}

/** This node already serves GET_REQUESTS_MAX gets (or is stopping). */
export class GetsBusyError extends Error {
  override name = 'GetsBusyError'
}

/** The temp directory has less free space than the file needs. */
export class GetSpaceError extends Error {
  override name = 'GetSpaceError'
}

export interface FetchByCidComponents {
  store: Pick<Store, 'node' | 'leafLocations'>
  local: CidDownloadComponents['local']
  client: CidDownloadComponents['client']
  control: Pick<ControlChannel, 'request'>
  /** Live members other than this node (the membership view). */
  members: () => Array<{ id: string, roles: Role[] }>
  isLive: (peer: string) => boolean
  log: Logger
}

export interface FetchByCidInit {
  /** Where downloads are assembled (emptied on start and stop): DATA/get. */
  tempDir: string
  getsMax?: number
  sourcesMax?: number
  queriesInFlightMax?: number
  queryTimeoutMs?: number
  segmentBytes?: number
  segmentsInFlight?: number
}

export interface FetchByCidCounters {
  getsActive: number
  getsServed: number
  getsFailed: number
  getsNotFound: number
  getsBusy: number
  getsBytes: number
  hasQueriesAnswered: number
}

const ROLE_ORDER: Record<string, number> = { backup: 0, process: 1, ingest: 2 }

export class FetchByCid {
  readonly #c: FetchByCidComponents
  readonly #init: FetchByCidInit
  readonly #active = new Set<CidDownload>()
  #stopped = false
  readonly #counts = { served: 0, failed: 0, notFound: 0, busy: 0, bytes: 0, has: 0 }

  constructor (components: FetchByCidComponents, init: FetchByCidInit) {
    this.#c = components
    this.#init = init
  }

  counters (): FetchByCidCounters {
    const c = this.#counts
    return { getsActive: this.#active.size, getsServed: c.served, getsFailed: c.failed, getsNotFound: c.notFound, getsBusy: c.busy, getsBytes: c.bytes, hasQueriesAnswered: c.has }
  }

  /** Empties the temp directory (downloads interrupted by a crash). */
  async start (): Promise<void> {
    await fs.rm(this.#init.tempDir, { recursive: true, force: true })
    await ensureDir(this.#init.tempDir)
  }

  /** Closes every download (their responses end early) and empties the temp directory. */
  async stop (): Promise<void> {
    this.#stopped = true
    await Promise.all([...this.#active].map(async (d) => { await d.close() }))
    await fs.rm(this.#init.tempDir, { recursive: true, force: true }).catch(() => {})
  }

  /** Control handler for `has`: ok if this node holds a complete, intact copy, else refused 'not-held'. */
  async onHas (_from: string, msg: HasMessage): Promise<ControlReply> {
    this.#counts.has++
    let root: CID
    try {
      root = parseCid(msg.cid)
    } catch (err) {
      return refuse('bad-cid', err instanceof Error ? err.message : String(err))
    }
    return await this.holds(root) ? ok() : refuse('not-held', `this node holds no complete copy of ${msg.cid}`)
  }

  /** True if this node's block index has the root and all its children, over files that are there. */
  async holds (root: CID): Promise<boolean> {
    const fileSizes = new Map<string, number>()
    if (root.code === RAW_CODE) return await this.#leafPresent(root, fileSizes)
    const bytes = await this.#c.local.getBlock(root) // verified against the root CID
    if (bytes == null) return false
    let node: FileNode
    try {
      node = decodeFileNode(root, bytes)
    } catch {
      return false
    }
    for (const link of node.links) {
      const present = link.cid.code === RAW_CODE
        ? await this.#leafPresent(link.cid, fileSizes)
        : await this.#c.store.node(link.cid.toString()) != null
      if (!present) return false
    }
    return true
  }

  async #leafPresent (cid: CID, fileSizes: Map<string, number>): Promise<boolean> {
    if (cid.equals(EMPTY_FILE_CID)) return true
    for (const loc of await this.#c.store.leafLocations(cid.toString())) {
      let size = fileSizes.get(loc.path)
      if (size == null) {
        size = await fs.stat(loc.path).then((s) => s.isFile() ? s.size : -1, () => -1)
        fileSizes.set(loc.path, size)
      }
      if (size >= loc.offset + loc.length) return true
    }
    return false
  }

  /**
   * Asks live members whether they hold `root`, likely holders first, GET_HOLDER_QUERIES_IN_FLIGHT_MAX at once,
   * each within the query timeout; stops once `sourcesMax` said yes. A member that fails to answer counts as no.
   */
  async findHolders (root: CID, options: { signal?: AbortSignal } = {}): Promise<{ holders: string[], asked: number }> {
    const candidates = this.#c.members().sort((a, b) => rank(a.roles) - rank(b.roles))
    const sourcesMax = this.#init.sourcesMax ?? GET_SOURCES_MAX
    const timeoutMs = this.#init.queryTimeoutMs ?? DEFAULT_HOLDER_QUERY_TIMEOUT_MS
    const enough = new AbortController()
    const msg: HasMessage = { type: 'has', v: 1, cid: root.toString() }
    const holders: string[] = []
    let next = 0
    let asked = 0
    const worker = async (): Promise<void> => {
      while (next < candidates.length && holders.length < sourcesMax && options.signal?.aborted !== true) {
        const peer = (candidates[next++] as { id: string }).id
        asked++
        const signals = [enough.signal, AbortSignal.timeout(timeoutMs), ...(options.signal != null ? [options.signal] : [])]
        try {
          await this.#c.control.request(peer, msg, { signal: AbortSignal.any(signals) })
          holders.push(peer)
          if (holders.length >= sourcesMax) enough.abort()
        } catch (err) {
          this.#c.log.debug('not a holder', { cid: msg.cid, peer, err })
        }
      }
    }
    const workers = Math.min(this.#init.queriesInFlightMax ?? GET_HOLDER_QUERIES_IN_FLIGHT_MAX, candidates.length)
    await Promise.all(Array.from({ length: workers }, worker))
    options.signal?.throwIfAborted()
    return { holders, asked }
  }

  /**
   * Starts a get of `cidText`: validates the CID (CidRejectedError), takes a slot (GetsBusyError), finds
   * holders unless this node holds the file (CidNotFoundError), resolves the DAG and starts the fetch. The
   * caller streams `body()` and must `close()` the download (also on error and abort).
   */
  async open (cidText: string, options: { signal?: AbortSignal } = {}): Promise<CidDownload> {
    const root = parseCid(cidText)
    const getsMax = this.#init.getsMax ?? GET_REQUESTS_MAX
    if (this.#stopped || this.#active.size >= getsMax) {
      this.#counts.busy++
      throw new GetsBusyError(this.#stopped ? 'this node is stopping' : `this node is serving ${getsMax} gets already; try again shortly`)
    }
    const cid = root.toString()
    const log = this.#c.log
    let holders: Promise<string[]> | undefined
    const download: CidDownload = new CidDownload({
      local: this.#c.local,
      client: this.#c.client,
      isLive: this.#c.isLive,
      log,
      sources: async ({ signal }) => await (holders ??= this.findHolders(root, { signal }).then((r) => r.holders))
    }, {
      root,
      path: path.join(this.#init.tempDir, `${cid}.${randomBytes(4).toString('hex')}.part`),
      segmentBytes: this.#init.segmentBytes,
      segmentsInFlight: this.#init.segmentsInFlight,
      onClose: () => { this.#active.delete(download) }
    })
    this.#active.add(download)
    try {
      if (!await this.holds(root)) {
        const found = await this.findHolders(root, { signal: options.signal })
        if (found.holders.length === 0) {
          this.#counts.notFound++
          throw new CidNotFoundError(cid, found.asked)
        }
        holders = Promise.resolve(found.holders)
      }
      await download.prepare({ signal: options.signal, checkSpace: async (bytes) => { await this.#checkSpace(bytes) } })
    } catch (err) {
      if (!(err instanceof CidNotFoundError)) this.#counts.failed++
      await download.close()
      throw err
    }
    log.info('get started', { cid, bytes: download.size, holders: (holders != null ? await holders : []).length })
    return download
  }

  /** `open` for the API: the download as a response body; `close(err?)` records and logs how it ended. */
  async serve (cidText: string, options: { signal?: AbortSignal } = {}): Promise<ApiFile> {
    const download = await this.open(cidText, options)
    const started = performance.now()
    let closed = false
    return {
      size: download.size,
      headers: { 'x-filemesh-cid': download.root.toString() },
      body: download.body(),
      close: async (err) => {
        if (closed) return
        closed = true
        await download.close()
        const ms = Math.round(performance.now() - started)
        const { bytesLocal, sources } = download.stats()
        const fields = { cid: download.root.toString(), bytes: download.size, bytesLocal, sources: sources.join(' '), ms }
        if (err == null) {
          this.#counts.served++
          this.#counts.bytes += download.size
          this.#c.log.info('get served', { ...fields, MBps: ms > 0 ? +(download.size / 1e3 / ms).toFixed(1) : undefined })
        } else {
          this.#counts.failed++
          this.#c.log.warn('get ended early', { ...fields, err })
        }
      }
    }
  }

  async #checkSpace (bytes: number): Promise<void> {
    const free = await freeBytes(this.#init.tempDir)
    if (free < bytes) throw new GetSpaceError(`the file is ${bytes} bytes but ${this.#init.tempDir} has ${free} free`)
  }
}

function rank (roles: Role[]): number {
  return Math.min(...roles.map((r) => ROLE_ORDER[r] ?? 3), 3)
}
