/**
 * The local control API (HTTP, loopback by default): `GET /api/status` (what `filemesh status --json`
 * prints), `GET /healthz` (the event loop answers), `GET /readyz` (store open and libp2p started, else 503).
 * `POST /api/scrub` re-hashes every stored copy now; `POST /api/drain` starts draining, `GET /api/drain` says whether the node is safe to remove. It never takes
 * a path or a name from the request. With a token (required off loopback), every
 * request must carry `Authorization: Bearer TOKEN`, else 401.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from './log.ts'
import { bearerTokenMatches } from './security.ts'

export interface ApiHandlers {
  status: () => Promise<unknown>
  ready: () => boolean
  /** Start draining (POST /api/drain) and report; GET /api/drain reports only. */
  drain: () => Promise<unknown>
  drainStatus: () => Promise<unknown>
  /** Re-hash every stored copy now and repair what is corrupt (POST /api/scrub). */
  scrub: () => Promise<unknown>
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
