/**
 * The local control API (HTTP, loopback by default): `GET /api/status` (what `filemesh status --json`
 * prints), `GET /healthz` (the event loop answers), `GET /readyz` (store open and libp2p started, else 503).
 * `POST /api/scrub` re-hashes every stored copy now; `POST /api/drain` starts draining, `GET /api/drain` says whether the node is safe to remove. It never takes
 * a path or a name from the request. With a token (required off loopback), every
 * request must carry `Authorization: Bearer TOKEN`, else 401.
 * `GET /api/cid/CID` streams the file whose root CID is CID (fetch-by-cid.ts: from whichever members hold it)
 * with Content-Length; 400 invalid or unsupported CID, 404 no live member holds it, 502 the holders could not
 * give it, 503 too many gets at once, 507 no room for it; an error after the headers cuts the body short.
 * `POST /api/channels/publish` with a small JSON body {channel, staged, name?} publishes a file that
 * `filemesh publish` staged in the node's channels `.incoming` directory (named by the random ID `staged`,
 * never a path) as the channel's next version; 400 bad request, 403 this node is not a publisher.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { Logger } from './log.ts'
import { bearerTokenMatches } from './security.ts'
import { CHANNEL_PUBLISH_REQUEST_BYTES_MAX } from '../protocols/limits.ts'

export interface ApiHandlers {
  status: () => Promise<unknown>
  ready: () => boolean
  /** Start draining (POST /api/drain) and report; GET /api/drain reports only. */
  drain: () => Promise<unknown>
  drainStatus: () => Promise<unknown>
  /** Re-hash every stored copy now and repair what is corrupt (POST /api/scrub). */
  scrub: () => Promise<unknown>
  /** GET /api/cid/CID: the file whose root CID is CID; throws typed errors (see CID_ERROR_STATUS). */
  getCid?: (cid: string, options: { signal: AbortSignal }) => Promise<ApiFile>
  /** POST /api/channels/publish: publish a staged file; throws ChannelPublishError (code bad-request/not-publisher). */
  publish?: (req: { channel: string, staged: string, name?: string }) => Promise<unknown>
}

/** Largest JSON body of POST /api/channels/publish. */
const PUBLISH_BODY_BYTES_MAX = CHANNEL_PUBLISH_REQUEST_BYTES_MAX
const PUBLISH_ERROR_STATUS: Record<string, number> = { 'bad-request': 400, 'not-publisher': 403 }

/** A file streamed as a response body. */
export interface ApiFile {
  size: number
  /** Extra response headers. */
  headers: Record<string, string>
  /** Exactly `size` bytes; throws if they cannot all be produced (the response is then cut short). */
  body: AsyncIterable<Uint8Array>
  /** Called once when the response is over: no `err` if every byte was sent. */
  close: (err?: unknown) => Promise<void>
}

/** HTTP status and error code of the typed errors a get by CID throws, by error name. */
const CID_ERROR_STATUS: Record<string, [number, string]> = {
  CidRejectedError: [400, 'bad-cid'],
  DagError: [400, 'not-a-file'],
  CidNotFoundError: [404, 'not-found'],
  CidUnavailableError: [502, 'unavailable'],
  BlocksUnavailableError: [502, 'unavailable'],
  GetsBusyError: [503, 'busy'],
  GetSpaceError: [507, 'no-space']
}

export interface ApiServerInit {
  /** Bearer token every request must carry; none = open (only acceptable on loopback). */
  token?: string
}

export class ApiServer {
  readonly #server: http.Server
  readonly #log: Logger
  readonly #token: string | undefined
  #unauthorized = 0

  constructor (handlers: ApiHandlers, log: Logger, init: ApiServerInit = {}) {
    this.#log = log
    this.#token = init.token
    this.#server = http.createServer((req, res) => {
      this.#route(handlers, req, res).catch((err) => {
        this.#log.error('api request failed', { path: req.url, err })
        if (!res.headersSent) send(res, 500, { error: String(err?.message ?? err) })
        else res.destroy()
      })
    })
    this.#server.keepAliveTimeout = 5_000
    this.#server.headersTimeout = 10_000
    this.#server.requestTimeout = 30_000
  }

  async #route (h: ApiHandlers, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost')
    if (this.#token != null && !bearerTokenMatches(req.headers.authorization, this.#token)) {
      if (this.#unauthorized++ % 100 === 0) this.#log.warn('refused an API request without a valid token', { remote: req.socket.remoteAddress, path: url.pathname, refused: this.#unauthorized })
      res.setHeader('www-authenticate', 'Bearer realm="filemesh"')
      send(res, 401, { error: 'this API needs Authorization: Bearer TOKEN (filemesh status reads it from --api-token-file or FILEMESH_API_TOKEN)' })
      return
    }
    if (url.pathname.startsWith('/api/cid/')) { await this.#serveCid(h, url, req, res); return }
    if (url.pathname === '/api/channels/publish') { await this.#publish(h, req, res); return }
    if (url.pathname === '/api/drain' && req.method === 'POST') { req.resume(); send(res, 200, await h.drain()); return }
    if (url.pathname === '/api/scrub' && req.method === 'POST') { req.resume(); send(res, 200, await h.scrub()); return }
    if (req.method !== 'GET' && req.method !== 'HEAD') { send(res, 405, { error: 'only GET (and POST /api/drain)' }); return }
    switch (url.pathname) {
      case '/api/drain': send(res, 200, await h.drainStatus()); return
      case '/api/status': send(res, 200, await h.status()); return
      case '/healthz': send(res, 200, { ok: true }); return
      case '/readyz': { const r = h.ready(); send(res, r ? 200 : 503, { ready: r }); return }
      default: send(res, 404, { error: `no such endpoint ${url.pathname}; try /api/status` })
    }
  }

  /** GET /api/cid/CID: headers once the file's size is known, then its bytes; a client abort stops the get. */
  async #serveCid (h: ApiHandlers, url: URL, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'GET') { send(res, 405, { error: 'only GET /api/cid/CID' }); return }
    if (h.getCid == null) { send(res, 404, { error: 'this node does not serve gets by CID', code: 'not-supported' }); return }
    const client = new AbortController()
    const onClose = (): void => { if (!res.writableFinished) client.abort(new Error('the API client went away')) }
    res.on('close', onClose)
    let file: ApiFile
    try {
      file = await h.getCid(decodeURIComponent(url.pathname.slice('/api/cid/'.length)), { signal: client.signal })
    } catch (err: any) {
      res.off('close', onClose)
      if (client.signal.aborted) return
      const known = err instanceof URIError ? [400, 'bad-cid'] as const : CID_ERROR_STATUS[err?.name]
      if (known == null) throw err
      if (known[0] === 503) res.setHeader('retry-after', '1')
      send(res, known[0], { error: String(err?.message ?? err), code: known[1] })
      return
    }
    let failure: unknown
    const onAbort = (): void => { // stop the fetch at once, even while it waits for blocks
      failure ??= client.signal.reason
      file.close(failure).catch(() => {})
    }
    client.signal.addEventListener('abort', onAbort, { once: true })
    if (client.signal.aborted) onAbort()
    try {
      const chunks = file.body[Symbol.asyncIterator]()
      const first = await chunks.next() // the first part of the file: a failure before it still gets a status
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(file.size), 'cache-control': 'no-store', ...file.headers })
      await pipeline(Readable.from(resume(first, chunks), { objectMode: false }), res)
    } catch (err: any) {
      failure ??= err
      if (!res.headersSent && !client.signal.aborted) {
        const [status, code] = CID_ERROR_STATUS[err?.name] ?? [502, 'unavailable']
        send(res, status, { error: String(err?.message ?? err), code })
      } else {
        res.destroy() // the client sees fewer bytes than Content-Length: the get failed
      }
    } finally {
      client.signal.removeEventListener('abort', onAbort)
      res.off('close', onClose)
      await file.close(failure)
    }
  }

  /** POST /api/channels/publish: a bounded JSON body naming the channel and the staged file. */
  async #publish (h: ApiHandlers, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'POST') { send(res, 405, { error: 'only POST /api/channels/publish' }); return }
    if (h.publish == null) { send(res, 404, { error: 'this node does not publish channels', code: 'not-supported' }); return }
    let body: unknown
    try {
      body = JSON.parse(await readBody(req, PUBLISH_BODY_BYTES_MAX))
    } catch (err: any) {
      send(res, 400, { error: `expected a JSON body of at most ${PUBLISH_BODY_BYTES_MAX} bytes: ${String(err?.message ?? err)}`, code: 'bad-request' })
      return
    }
    const b = body as Record<string, unknown> | null
    if (typeof b !== 'object' || b == null || typeof b.channel !== 'string' || typeof b.staged !== 'string' || (b.name !== undefined && typeof b.name !== 'string')) {
      send(res, 400, { error: 'expected {"channel": NAME, "staged": ID, "name"?: FILENAME}', code: 'bad-request' })
      return
    }
    try {
      send(res, 200, await h.publish({ channel: b.channel, staged: b.staged, ...(typeof b.name === 'string' ? { name: b.name } : {}) }))
    } catch (err: any) {
      const status = err?.name === 'ChannelPublishError' ? PUBLISH_ERROR_STATUS[err.code] : undefined
      if (status == null) throw err
      send(res, status, { error: String(err.message), code: err.code })
    }
  }

  /** Listens on host:port (port 0 = any free port) and returns the bound "host:port". */
  async listen (hostPort: string): Promise<string> {
    const { host, port } = parseHostPort(hostPort)
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(port, host, () => { this.#server.off('error', reject); resolve() })
    })
    const addr = this.#server.address() as AddressInfo
    return `${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`
  }

  async close (): Promise<void> {
    this.#server.closeAllConnections()
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve() }) })
  }
}

/** The request body as text; rejects once it passes `maxBytes` (the rest is not read). */
async function readBody (req: http.IncomingMessage, maxBytes: number): Promise<string> {
  const chunks: Buffer[] = []
  let bytes = 0
  for await (const chunk of req) {
    bytes += (chunk as Buffer).byteLength
    if (bytes > maxBytes) throw new RangeError('body too large')
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** The rest of an iteration whose first result was already taken. */
async function * resume<T> (first: IteratorResult<T>, rest: AsyncIterator<T>): AsyncGenerator<T> {
  if (first.done === true) return
  yield first.value
  for (let r = await rest.next(); r.done !== true; r = await rest.next()) yield r.value
}

function send (res: http.ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body, null, 2) + '\n'
  res.writeHead(code, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' })
  res.end(text)
}

export function parseHostPort (s: string): { host: string, port: number } {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(s.trim())
  if (m == null) throw new RangeError(`expected HOST:PORT, got "${s}"`)
  const port = Number(m[2])
  if (port > 65535) throw new RangeError(`port out of range in "${s}"`)
  return { host: m[1] === '' ? '127.0.0.1' : (m[1] as string), port }
}

export function isLoopbackHost (host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host)
}
