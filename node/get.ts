/**
 * The client side of `filemesh get CID`: asks a daemon's API for the file (GET /api/cid/CID; the daemon finds
 * the holders and pulls the blocks, fetch-by-cid.ts) and writes it to PATH or stdout.
 *
 * To PATH: the bytes go to PATH.part, are fsynced, and only a complete file that re-hashes to CID is moved
 * to PATH (a no-clobber link unless `force`, then the directory is fsynced); on any failure PATH.part is
 * deleted, so PATH is either absent, untouched, or the whole verified file. To stdout: the bytes are
 * written as they come; a failure after the first byte is reported by the exit code only.
 * Either way the CLI re-hashes what it received into the file's UnixFS root (hash-on-the-fly, 1 MiB of
 * memory) and fails if it is not CID: the daemon verifies every block, this checks the whole path to here.
 */
import { once } from 'node:events'
import fs from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import path from 'node:path'
import type { CID } from 'multiformats/cid'
import { parseCid, rawLeafCid } from '../protocols/cid-policy.ts'
import { BLOCK_BYTES } from '../protocols/limits.ts'
import { buildFileDag } from '../protocols/unixfs.ts'
import { parseHostPort } from './api.ts'
import { ExistsError, fsyncDir, linkNoClobber } from './fsutil.ts'

/** Why a get failed; the CLI maps each to its exit code. */
export type GetFailure = 'usage' | 'bad-cid' | 'unreachable' | 'unauthorized' | 'not-found' | 'busy' | 'timeout' | 'interrupted' | 'exists' | 'failed'

export class GetError extends Error {
  override name = 'GetError'
  readonly reason: GetFailure
  constructor (reason: GetFailure, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.reason = reason
  }
}

export interface GetInit {
  /** The daemon's API, HOST:PORT. */
  api: string
  token?: string
  cid: string
  /** Write here (via OUTPUT.part); default stdout. */
  output?: string
  /** Replace `output` if it exists. */
  force?: boolean
  /** Give up after this long (GetError 'timeout'). */
  timeoutMs?: number
  /** Draw a progress bar here (a TTY); nothing if undefined. */
  progress?: NodeJS.WriteStream
  /** Where the bytes go without `output` (default process.stdout). */
  stdout?: NodeJS.WritableStream
  signal?: AbortSignal
}

export interface GetResult {
  cid: string
  bytes: number
  ms: number
  path?: string
}

const O_NOFOLLOW = fs.constants.O_NOFOLLOW ?? 0
/** Errors that mean nothing listens at the API address. */
const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT_TIMEOUT'])
const PROGRESS_INTERVAL_MS = 100

/** Fetches `init.cid` through the daemon at `init.api`; throws GetError. */
export async function getFile (init: GetInit): Promise<GetResult> {
  let root: CID
  try {
    root = parseCid(init.cid)
  } catch (err) {
    throw new GetError('bad-cid', err instanceof Error ? err.message : String(err))
  }
  const cid = root.toString()
  if (init.output != null) await checkOutput(init.output, init.force === true)
  const timeout = init.timeoutMs != null ? AbortSignal.timeout(init.timeoutMs) : undefined
  const signal = AbortSignal.any([...(timeout != null ? [timeout] : []), ...(init.signal != null ? [init.signal] : [])])
  const started = performance.now()
  const bar = init.progress != null ? new ProgressBar(init.progress) : undefined
  bar?.status(`looking for ${cid} in the mesh...`)
  try {
    const res = await request(init, cid, signal)
    const total = Number(res.headers.get('content-length'))
    if (!Number.isSafeInteger(total) || total < 0 || res.body == null) throw new GetError('failed', `the daemon at ${init.api} sent no Content-Length`)
    const sink = init.output != null ? await FileSink.open(init.output) : new StreamSink(init.stdout ?? process.stdout)
    let bytes = 0
    try {
      const hasher = new FileDagHasher()
      for await (const chunk of res.body) {
        hasher.update(chunk)
        await sink.write(chunk)
        bytes += chunk.byteLength
        bar?.update(bytes, total, performance.now() - started)
      }
      if (bytes !== total) throw new GetError('failed', `the daemon sent ${bytes} of ${total} bytes`)
      const actual = hasher.root().toString()
      if (actual !== cid) throw new GetError('failed', `the ${bytes} bytes received hash to ${actual}, not ${cid}: not written`)
      await sink.commit(init.force === true)
    } catch (err) {
      await sink.abort()
      throw err
    }
    bar?.done(bytes, total, performance.now() - started)
    return { cid, bytes, ms: Math.round(performance.now() - started), path: init.output }
  } catch (err) {
    bar?.clear()
    throw classify(err, init, timeout)
  }
}

/** Refuses to start when PATH exists (without force) or cannot be a file. */
async function checkOutput (output: string, force: boolean): Promise<void> {
  const dir = path.dirname(path.resolve(output))
  if ((await fs.stat(dir).catch(() => undefined))?.isDirectory() !== true) throw new GetError('usage', `${dir} is not a directory: cannot write ${output} there`)
  const st = await fs.lstat(output).catch(() => undefined)
  if (st == null) return
  if (st.isDirectory()) throw new GetError('usage', `${output} is a directory: give a file path to -o`)
  if (!force) throw new GetError('exists', `${output} already exists; pass --force to replace it`)
}

async function request (init: GetInit, cid: string, signal: AbortSignal): Promise<Response> {
  const { host, port } = parseHostPort(init.api)
  let res: Response
  try {
    res = await fetch(`http://${host.includes(':') ? `[${host}]` : host}:${port}/api/cid/${cid}`, { signal, headers: init.token != null ? { authorization: `Bearer ${init.token}` } : {} })
  } catch (err: any) {
    if (signal.aborted) throw err
    const code = err?.cause?.code ?? err?.code
    if (!CONNECT_ERRORS.has(code)) throw new GetError('failed', `the daemon at ${init.api} closed the connection before answering (${code ?? err?.message}); see its log`)
    throw new GetError('unreachable', `cannot reach the daemon's API at ${init.api}: ${code}. Is it running?`)
  }
  if (res.ok) return res
  const body = await res.json().catch(() => ({})) as { error?: string, code?: string }
  const why = body.error ?? `HTTP ${res.status}`
  switch (res.status) {
    case 400: throw new GetError('bad-cid', why)
    case 401: throw new GetError('unauthorized', `the daemon at ${init.api} refused the request (401): ${init.token == null ? 'its API needs a token; pass --api-token-file FILE or set FILEMESH_API_TOKEN' : 'wrong API token'}`)
    case 404: throw new GetError(body.code === 'not-found' ? 'not-found' : 'failed', body.code === 'not-found' ? why : `the daemon at ${init.api} cannot serve gets (${why}); is it an older version?`)
    case 503: throw new GetError('busy', `${why} (HTTP 503)`)
    default: throw new GetError('failed', `the daemon at ${init.api} answered ${res.status}: ${why}`)
  }
}

function classify (err: unknown, init: GetInit, timeout: AbortSignal | undefined): GetError {
  if (err instanceof GetError) return err
  if (timeout?.aborted === true) return new GetError('timeout', `gave up after ${Math.round((init.timeoutMs ?? 0) / 1000)} s (--timeout-s)`, { cause: err })
  if (init.signal?.aborted === true) return new GetError('interrupted', 'interrupted', { cause: err })
  const e = err as any
  const why = e?.cause?.code ?? e?.cause?.message ?? e?.code ?? e?.message ?? String(err)
  return new GetError('failed', `the get failed: ${e?.message === 'terminated' ? 'the daemon ended the transfer early (see its log)' : why}`, { cause: err })
}

interface Sink {
  write: (chunk: Uint8Array) => Promise<void>
  /** Makes the bytes final (PATH in place, or stdout flushed). */
  commit: (force: boolean) => Promise<void>
  /** Drops what was written, where it can (the part file). Never throws. */
  abort: () => Promise<void>
}

/** PATH.part, opened without following a symlink, truncated; moved to PATH by commit. */
class FileSink implements Sink {
  readonly #path: string
  readonly #part: string
  readonly #fh: FileHandle
  #closed = false

  private constructor (target: string, part: string, fh: FileHandle) {
    this.#path = target
    this.#part = part
    this.#fh = fh
  }

  static async open (target: string): Promise<FileSink> {
    const part = `${target}.part`
    let fh: FileHandle
    try {
      fh = await fs.open(part, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | O_NOFOLLOW, 0o644)
    } catch (err: any) {
      throw new GetError('failed', `cannot write ${part}: ${err?.code ?? err?.message}`)
    }
    return new FileSink(target, part, fh)
  }

  async write (chunk: Uint8Array): Promise<void> {
    let done = 0
    while (done < chunk.byteLength) done += (await this.#fh.write(chunk, done, chunk.byteLength - done)).bytesWritten
  }

  async commit (force: boolean): Promise<void> {
    await this.#fh.sync()
    await this.#close()
    if (force) {
      await fs.rename(this.#part, this.#path)
    } else {
      // link() never replaces an existing file, unlike rename(): PATH created meanwhile is left alone.
      try {
        await linkNoClobber(this.#part, this.#path)
      } catch (err: any) {
        if (err instanceof ExistsError) throw new GetError('exists', `${this.#path} appeared while fetching; pass --force to replace it`)
        if (err?.code !== 'EPERM' && err?.code !== 'ENOTSUP' && err?.code !== 'EXDEV') throw err
        await fs.rename(this.#part, this.#path) // no hard links on this filesystem
      }
      await fs.rm(this.#part, { force: true })
    }
    await fsyncDir(path.dirname(path.resolve(this.#path)))
  }

  async abort (): Promise<void> {
    await this.#close().catch(() => {})
    await fs.rm(this.#part, { force: true }).catch(() => {})
  }

  async #close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#fh.close()
  }
}

/** stdout (or any writable), with its backpressure. */
class StreamSink implements Sink {
  readonly #out: NodeJS.WritableStream
  #error: Error | undefined
  readonly #onError = (err: Error): void => { this.#error = err }

  constructor (out: NodeJS.WritableStream) {
    this.#out = out
    out.on('error', this.#onError)
  }

  async write (chunk: Uint8Array): Promise<void> {
    if (this.#error != null) throw new GetError('failed', `cannot write to stdout: ${(this.#error as any).code ?? this.#error.message}`)
    if (!this.#out.write(chunk)) await Promise.race([once(this.#out, 'drain'), once(this.#out, 'error')])
  }

  // The error listener stays: a late EPIPE must not crash the process after the get succeeded.
  async commit (): Promise<void> {
    if (this.#error != null) throw new GetError('failed', `cannot write to stdout: ${(this.#error as any).code ?? this.#error.message}`)
  }

  async abort (): Promise<void> {}
}

/**
 * The UnixFS root of a byte stream, computed as it passes (profile unixfs-v1-2025: 1 MiB raw leaves,
 * balanced, 1024 links per node), holding one leaf's bytes and the leaf CIDs.
 */
export class FileDagHasher {
  readonly #buf = new Uint8Array(BLOCK_BYTES)
  #fill = 0
  readonly #leaves: Array<{ cid: CID, length: number }> = []

  update (chunk: Uint8Array): void {
    let at = 0
    while (at < chunk.byteLength) {
      const n = Math.min(this.#buf.byteLength - this.#fill, chunk.byteLength - at)
      this.#buf.set(chunk.subarray(at, at + n), this.#fill)
      this.#fill += n
      at += n
      if (this.#fill === this.#buf.byteLength) this.#leaf()
    }
  }

  root (): CID {
    if (this.#fill > 0 || this.#leaves.length === 0) this.#leaf()
    return buildFileDag(this.#leaves).root
  }

  #leaf (): void {
    this.#leaves.push({ cid: rawLeafCid(this.#buf.subarray(0, this.#fill)), length: this.#fill })
    this.#fill = 0
  }
}

/** "  12.0 MiB / 50.0 MiB  [#######.................]  24%  85.3 MB/s" */
export function formatProgress (bytes: number, total: number, elapsedMs: number, barWidth = 24): string {
  const mib = (n: number): string => (n / 1048576).toFixed(1)
  const fraction = total > 0 ? Math.min(1, bytes / total) : 1
  const filled = Math.round(fraction * barWidth)
  const mbps = elapsedMs > 0 ? bytes / 1e3 / elapsedMs : 0
  return `${mib(bytes)} MiB / ${mib(total)} MiB  [${'#'.repeat(filled)}${'.'.repeat(barWidth - filled)}]  ${String(Math.floor(fraction * 100)).padStart(3)}%  ${mbps.toFixed(1)} MB/s`
}

/** One line on a terminal, redrawn at most every PROGRESS_INTERVAL_MS. */
class ProgressBar {
  readonly #out: NodeJS.WriteStream
  #lastMs = -Infinity

  constructor (out: NodeJS.WriteStream) {
    this.#out = out
  }

  status (text: string): void {
    this.#draw(text)
  }

  update (bytes: number, total: number, elapsedMs: number): void {
    if (elapsedMs - this.#lastMs < PROGRESS_INTERVAL_MS) return
    this.#lastMs = elapsedMs
    this.#draw(formatProgress(bytes, total, elapsedMs))
  }

  done (bytes: number, total: number, elapsedMs: number): void {
    this.#draw(formatProgress(bytes, total, elapsedMs))
    this.#out.write('\n')
  }

  clear (): void {
    this.#out.write('\r\x1b[K')
  }

  #draw (text: string): void {
    this.#out.write(`\r\x1b[K${text.slice(0, Math.max(20, (this.#out.columns ?? 80) - 1))}`)
  }
}
