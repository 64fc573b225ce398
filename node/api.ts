/**
 * The local control API (HTTP, loopback by default): `GET /api/status` (what `filemesh status --json`
 * prints), `GET /healthz` (the event loop answers), `GET /readyz` (store open and libp2p started, else 503).
 * Read-only; it never takes a path or a name from the request.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from './log.ts'

export interface ApiHandlers {
  status: () => Promise<unknown>
  ready: () => boolean
}

export class ApiServer {
  readonly #server: http.Server
  readonly #log: Logger

  constructor (handlers: ApiHandlers, log: Logger) {
    this.#log = log
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
    if (req.method !== 'GET' && req.method !== 'HEAD') { send(res, 405, { error: 'only GET' }); return }
    switch (url.pathname) {
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
