/**
 * One get by CID in progress on this node (fetch-by-cid.ts starts it, the API streams it): the file's DAG is
 * resolved (every node verified), then its leaves land in a sparse temp file under DATA/get, from this
 * node's own blocks where it has them and otherwise from several holders at once (BlockClient
 * .fetchLeavesToFile, every block verified against its CID).
 *
 * The leaves are fetched in segments of `segmentBytes`, `segmentsInFlight` at once, and `body()` streams the
 * prefix of the file made of complete segments while later ones are still arriving: the first byte leaves
 * after the first segment, the client sees real progress, and no byte is ever read from a hole of the sparse
 * file. Memory stays bounded: blocks go to disk as they arrive, the reader reads READ_CHUNK_BYTES at a time.
 *
 * `close()` (idempotent) stops the fetch and deletes the temp file; the API calls it after the last byte, on
 * error and on client abort, and FetchByCid.stop() on shutdown.
 */
import fs from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import type { CID } from 'multiformats/cid'
import { resolveLeaves } from '../protocols/unixfs.ts'
import type { Leaf } from '../protocols/unixfs.ts'
import type { BlockClient } from './block-client.ts'
import type { LocalBlocks } from './block-store.ts'
import type { Logger } from './log.ts'
import { writeFully } from './fsutil.ts'
import { messageOf } from '../protocols/blocks.ts'

/** File bytes fetched per segment (16 leaves). */
export const DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
/** Segments fetched at once: the next one keeps every source busy while the last blocks of one arrive. */
export const DEFAULT_SEGMENTS_IN_FLIGHT = 2
/** Bytes read from the temp file per chunk of the response. */
export const READ_CHUNK_BYTES = 256 * 1024

/** Some blocks of the file are held by no live member this node can reach. */
export class CidUnavailableError extends Error {
  override name = 'CidUnavailableError'
}

export interface CidDownloadComponents {
  local: Pick<LocalBlocks, 'getBlock'>
  client: Pick<BlockClient, 'getBlock' | 'fetchLeavesToFile'>
  /** Holders to pull from (peer IDs), looked up at most once, on first need; [] if none. */
  sources: (options: { signal: AbortSignal }) => Promise<string[]>
  /** True while `peer` is a live member: a holder that left is not asked again. */
  isLive: (peer: string) => boolean
  log: Logger
}

export interface CidDownloadInit {
  root: CID
  /** The temp file (created exclusively, deleted on close). */
  path: string
  segmentBytes?: number
  segmentsInFlight?: number
  /** Called once, when the download is closed. */
  onClose?: () => void
}

export interface CidDownloadStats {
  bytes: number
  /** Bytes copied from this node's own verified blocks. */
  bytesLocal: number
  /** Holders the leaves were pulled from. */
  sources: string[]
}

interface Segment {
  leaves: Leaf[]
  /** File offset just past the segment. */
  end: number
}

export class CidDownload {
  readonly root: CID
  readonly path: string
  readonly #c: CidDownloadComponents
  readonly #segmentBytes: number
  readonly #segmentsInFlight: number
  readonly #onClose: (() => void) | undefined
  readonly #controller = new AbortController()
  #size = 0
  #leaves: Leaf[] = []
  #fh: FileHandle | undefined
  #pump: Promise<void> | undefined
  /** Bytes [0, watermark) are complete and verified in the temp file. */
  #watermark = 0
  #failure: unknown
  #wait: PromiseWithResolvers<void> | undefined
  #closing: Promise<void> | undefined
  #bytesLocal = 0
  readonly #used = new Set<string>()

  constructor (components: CidDownloadComponents, init: CidDownloadInit) {
    this.#c = components
    this.root = init.root
    this.path = init.path
    this.#segmentBytes = Math.max(1, init.segmentBytes ?? DEFAULT_SEGMENT_BYTES)
    this.#segmentsInFlight = Math.max(1, init.segmentsInFlight ?? DEFAULT_SEGMENTS_IN_FLIGHT)
    this.#onClose = init.onClose
  }

  /** The file's size in bytes (known once `prepare` resolved). */
  get size (): number {
    return this.#size
  }

  get signal (): AbortSignal {
    return this.#controller.signal
  }

  stats (): CidDownloadStats {
    return { bytes: this.#size, bytesLocal: this.#bytesLocal, sources: [...this.#used] }
  }

  /**
   * Resolves the DAG (local nodes first, then the holders in turn), creates the temp file at its full size
   * (sparse) and starts fetching. `checkSpace(size)` may throw to refuse a file too large for the disk.
   * Throws the resolve error (CidUnavailableError if no holder could give a node), or the abort reason.
   */
  async prepare (options: { signal?: AbortSignal, checkSpace?: (bytes: number) => Promise<void> } = {}): Promise<void> {
    const signal = options.signal == null ? this.#controller.signal : AbortSignal.any([options.signal, this.#controller.signal])
    const { leaves, size } = await resolveLeaves(this.root, async (cid) => await this.#getNode(cid, signal), { signal })
    await options.checkSpace?.(size)
    signal.throwIfAborted()
    this.#size = size
    this.#leaves = leaves
    this.#fh = await fs.open(this.path, 'wx+', 0o600) // read and write: body() reads what the fetch wrote
    if (size > 0) await this.#fh.truncate(size)
    this.#pump = this.#fetchAll(this.#fh)
  }

  /** The file's bytes in order, each part verified before it is read; throws why the fetch failed. */
  async * body (): AsyncGenerator<Uint8Array> {
    const fh = this.#fh
    if (fh == null) throw new Error('CidDownload.body() before prepare()')
    let position = 0
    while (position < this.#size) {
      if (this.#failure != null) throw this.#failure
      this.#controller.signal.throwIfAborted()
      if (position >= this.#watermark) {
        await this.#changed()
        continue
      }
      const chunk = Buffer.allocUnsafe(Math.min(READ_CHUNK_BYTES, this.#watermark - position))
      await readFully(fh, chunk, position)
      position += chunk.byteLength
      yield chunk
    }
  }

  /** Stops the fetch, closes and deletes the temp file. Idempotent; never throws. */
  async close (): Promise<void> {
    this.#closing ??= this.#close()
    await this.#closing
  }

  async #close (): Promise<void> {
    if (!this.#controller.signal.aborted) this.#controller.abort(new Error('download closed'))
    this.#notify()
    await this.#pump?.catch(() => {})
    await this.#fh?.close().catch(() => {})
    await fs.rm(this.path, { force: true }).catch((err: unknown) => { this.#c.log.error('cannot delete a get temp file', { file: this.path, err }) })
    this.#onClose?.()
  }

  /** A dag-pb node (or raw root): this node's verified copy, else each holder in turn. */
  async #getNode (cid: CID, signal: AbortSignal): Promise<Uint8Array> {
    const local = await this.#c.local.getBlock(cid)
    if (local != null) return local
    let lastErr: unknown
    for (const peer of await this.#liveSources(signal)) {
      try {
        const bytes = await this.#c.client.getBlock(peerIdFromString(peer), cid, { signal })
        this.#used.add(peer)
        return bytes
      } catch (err) {
        signal.throwIfAborted()
        lastErr = err
      }
    }
    throw new CidUnavailableError(`no live holder could give block ${cid.toString()} of ${this.root.toString()}${lastErr != null ? ` (last error: ${messageOf(lastErr)})` : ''}`, { cause: lastErr })
  }

  async #liveSources (signal: AbortSignal): Promise<string[]> {
    const all = await this.#c.sources({ signal })
    const live = all.filter((p) => this.#c.isLive(p))
    return live.length > 0 ? live : all
  }

  /** Fetches every segment, `segmentsInFlight` at once, moving the watermark over each complete prefix. */
  async #fetchAll (fh: FileHandle): Promise<void> {
    const segments = splitSegments(this.#leaves, this.#segmentBytes)
    const done: boolean[] = segments.map(() => false)
    let next = 0
    let complete = 0
    const worker = async (): Promise<void> => {
      while (next < segments.length && this.#failure == null) {
        const i = next++
        await this.#fetchSegment(fh, segments[i] as Segment)
        done[i] = true
        while (complete < segments.length && done[complete] === true) {
          this.#watermark = (segments[complete] as Segment).end
          complete++
        }
        this.#notify()
      }
    }
    try {
      await Promise.all(Array.from({ length: Math.min(this.#segmentsInFlight, segments.length) }, worker))
    } catch (err) {
      this.#failure ??= err
      if (!this.#controller.signal.aborted) this.#controller.abort(err)
      this.#notify()
    }
  }

  async #fetchSegment (fh: FileHandle, segment: Segment): Promise<void> {
    const signal = this.#controller.signal
    const remote: Leaf[] = []
    for (const leaf of segment.leaves) {
      signal.throwIfAborted()
      const bytes = await this.#c.local.getBlock(leaf.cid) // verified, or undefined
      if (bytes != null && bytes.byteLength === leaf.length) {
        await writeFully(fh, bytes, leaf.offset)
        this.#bytesLocal += bytes.byteLength
      } else {
        remote.push(leaf)
      }
    }
    if (remote.length === 0) return
    const sources = await this.#liveSources(signal)
    if (sources.length === 0) throw new CidUnavailableError(`no live member holds the blocks of ${this.root.toString()} that this node lacks`)
    for (const s of sources) this.#used.add(s)
    await this.#c.client.fetchLeavesToFile({ leaves: remote, sources: sources.map((s) => peerIdFromString(s)), fileHandle: fh, signal })
  }

  async #changed (): Promise<void> {
    this.#wait ??= Promise.withResolvers()
    await this.#wait.promise
  }

  #notify (): void {
    const wait = this.#wait
    this.#wait = undefined
    wait?.resolve()
  }
}

/** Consecutive runs of leaves of about `segmentBytes` each (at least one leaf per segment). */
function splitSegments (leaves: Leaf[], segmentBytes: number): Segment[] {
  const segments: Segment[] = []
  let current: Leaf[] = []
  let bytes = 0
  for (const leaf of leaves) {
    current.push(leaf)
    bytes += leaf.length
    if (bytes >= segmentBytes) {
      segments.push({ leaves: current, end: leaf.offset + leaf.length })
      current = []
      bytes = 0
    }
  }
  const last = current[current.length - 1]
  if (last != null) segments.push({ leaves: current, end: last.offset + last.length })
  return segments
}

async function readFully (fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0
  while (done < buf.byteLength) {
    const { bytesRead } = await fh.read(buf, done, buf.byteLength - done, position + done)
    if (bytesRead === 0) throw new Error(`temp file ended at ${position + done}, expected ${position + buf.byteLength} bytes`)
    done += bytesRead
  }
}
