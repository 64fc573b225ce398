/**
 * `filemesh publish --channel NAME FILE`: hands FILE to a node run with `--publisher`, which makes it the
 * channel's next version. The file is copied (a reflink where the filesystem can) into the node's channels
 * `.incoming` directory under a random ID (its path comes from the node's status), then the node is asked
 * over its API to publish that ID: the request never carries a path, and the node renames the copy into
 * place (same filesystem), so it keeps its own copy and the caller may change or delete FILE afterwards.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { isChannelName } from '../protocols/messages.ts'
import { parseHostPort } from './api.ts'
import type { PublishResult } from './channels.ts'
import type { NodeStatus } from './status.ts'

export type PublishFailure = 'usage' | 'unreachable' | 'unauthorized' | 'refused' | 'failed'

export class PublishError extends Error {
  override name = 'PublishError'
  readonly reason: PublishFailure
  constructor (reason: PublishFailure, message: string) {
    super(message)
    this.reason = reason
  }
}

export interface PublishInit {
  /** The node's API, host:port. */
  api: string
  token?: string
  channel: string
  file: string
  timeoutMs?: number
}

export const DEFAULT_PUBLISH_TIMEOUT_MS = 3_600_000

export async function publishFile (init: PublishInit): Promise<PublishResult> {
  if (!isChannelName(init.channel)) throw new PublishError('usage', `not a channel name: ${JSON.stringify(init.channel)} (1-64 of A-Z a-z 0-9 . _ -, not starting with . _ -)`)
  const st = await fs.stat(init.file).catch((err) => { throw new PublishError('usage', `cannot publish ${init.file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`) })
  if (!st.isFile()) throw new PublishError('usage', `cannot publish ${init.file}: not a regular file`)
  const status = await call<NodeStatus>(init, '/api/status', 'GET')
  const incoming = status.channels?.incoming
  if (incoming == null) throw new PublishError('refused', `the node at ${init.api} has no broadcast channels`)
  if (status.channels?.publisher !== true) throw new PublishError('refused', `the node at ${init.api} does not publish channels: start it with \`filemesh run --publisher\``)
  const staged = `${randomBytes(12).toString('hex')}.publish`
  const stagedPath = path.join(incoming, staged)
  try {
    await fs.copyFile(init.file, stagedPath, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE)
  } catch (err: any) {
    await fs.rm(stagedPath, { force: true })
    throw new PublishError('failed', `cannot copy ${init.file} into ${incoming}: ${err.code ?? err.message}`)
  }
  try {
    return await call<PublishResult>(init, '/api/channels/publish', 'POST', { channel: init.channel, staged, name: path.basename(init.file) })
  } finally {
    await fs.rm(stagedPath, { force: true }) // gone already if the node took it
  }
}

async function call<T> (init: PublishInit, urlPath: string, method: 'GET' | 'POST', body?: unknown): Promise<T> {
  const { host, port } = parseHostPort(init.api)
  const headers: Record<string, string> = { ...(init.token != null ? { authorization: `Bearer ${init.token}` } : {}), ...(body != null ? { 'content-type': 'application/json' } : {}) }
  let res: Response
  try {
    res = await fetch(`http://${host.includes(':') ? `[${host}]` : host}:${port}${urlPath}`, { method, headers, body: body != null ? JSON.stringify(body) : undefined, signal: AbortSignal.timeout(init.timeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS) })
  } catch (err: any) {
    throw new PublishError('unreachable', `cannot reach the daemon's API at ${init.api}: ${err.cause?.code ?? err.message}. Is it running?`)
  }
  const text = await res.text()
  let json: any
  try { json = JSON.parse(text) } catch { json = undefined }
  if (res.status === 401) throw new PublishError('unauthorized', `the daemon at ${init.api} refused the request (401): ${init.token == null ? 'its API needs a token; pass --api-token-file FILE or set FILEMESH_API_TOKEN' : 'wrong API token'}`)
  if (res.status === 400 || res.status === 403 || res.status === 404) throw new PublishError('refused', `the daemon at ${init.api} refused: ${json?.error ?? res.status}`)
  if (!res.ok || json == null) throw new PublishError('failed', `the daemon at ${init.api} answered ${res.status}${json?.error != null ? `: ${String(json.error)}` : ''}`)
  return json as T
}
