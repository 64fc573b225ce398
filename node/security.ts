/**
 * Who may talk to this node, in one place: the swarm key (pre-shared key for `@libp2p/pnet`: a node without
 * it cannot complete a connection), the peer allowlist (enforced by the libp2p connection gater in both
 * directions, reloadable), and the control API's bearer token. Every loader checks its file strictly and
 * throws a `SecurityConfigError` that says what is wrong: a bad file is a configuration error (exit 78),
 * never a node that silently runs open.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import fs from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import type { ConnectionGater, PeerId } from '@libp2p/interface'
import type { Logger } from './log.ts'
import type { MeshNode } from './mesh.ts'

/** A security file (swarm key, allowlist, token) is missing, unreadable or malformed. A RangeError, so the CLI exits 78. */
export class SecurityConfigError extends RangeError {
  static readonly NAME = 'SecurityConfigError'
  override readonly name = 'SecurityConfigError'
  readonly file: string | undefined

  constructor (message: string, file?: string) {
    super(file != null ? `${file}: ${message}` : message)
    this.file = file
  }
}

export const SWARM_KEY_HEADER = '/key/swarm/psk/1.0.0/'
export const SWARM_KEY_ENCODING = '/base16/'
/** A swarm key is 256 bits (pnet PSK v1). */
export const SWARM_KEY_BYTES = 32
/** Largest swarm key file we read (the canonical one is 96 bytes). */
export const SWARM_KEY_FILE_BYTES_MAX = 1024
/** Largest allowlist file we read: ~19 000 peer IDs. */
export const PEER_LIST_FILE_BYTES_MAX = 1024 * 1024
/** Largest API token file we read. */
export const API_TOKEN_FILE_BYTES_MAX = 4096
/** Shortest API token we accept (characters). */
export const API_TOKEN_CHARS_MIN = 16
/** A refused peer is logged at most once per this interval (the rest are counted in `suppressed`). */
export const DEFAULT_GATER_LOG_INTERVAL_MS = 10_000
/** Refusal lines logged per interval over all peers, so a flood of fresh peer IDs cannot flood the log. */
export const DEFAULT_GATER_LOG_LINES_MAX = 20
/** How long a dial to a newly allowed peer may take after a reload. */
export const DEFAULT_RELOAD_DIAL_TIMEOUT_MS = 10_000

/** A parsed swarm key: `psk` is the canonical key file text that `preSharedKey({ psk })` takes. */
export interface SwarmKey {
  psk: Uint8Array
  /** First 16 hex digits of sha256(key): lets operators compare keys without showing them. */
  fingerprint: string
}

/** A new swarm key in the `/key/swarm/psk/1.0.0/` `/base16/` text format, with a final newline. */
export function generateSwarmKey (): string {
  return `${SWARM_KEY_HEADER}\n${SWARM_KEY_ENCODING}\n${randomBytes(SWARM_KEY_BYTES).toString('hex')}\n`
}

/** Parses swarm key file text strictly: three lines (header, encoding, 64 hex digits), trailing blank lines allowed. */
export function parseSwarmKey (text: string, file?: string): SwarmKey {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/).map((l) => l.trim())
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop()
  if (lines.length === 0) throw new SecurityConfigError('the swarm key file is empty; create one with `filemesh keygen -o FILE`', file)
  if (lines[0] !== SWARM_KEY_HEADER) throw new SecurityConfigError(`line 1 must be ${SWARM_KEY_HEADER} (a pnet v1 swarm key), got ${JSON.stringify(clip(lines[0] ?? ''))}`, file)
  if (lines[1] !== SWARM_KEY_ENCODING) throw new SecurityConfigError(`line 2 must be ${SWARM_KEY_ENCODING} (the only key encoding supported), got ${JSON.stringify(clip(lines[1] ?? ''))}`, file)
  if (lines.length < 3) throw new SecurityConfigError(`line 3 (the key, ${SWARM_KEY_BYTES * 2} hex digits) is missing`, file)
  if (lines.length > 3) throw new SecurityConfigError(`expected 3 lines, found ${lines.length}`, file)
  const hex = lines[2] as string
  if (!/^[0-9a-fA-F]*$/.test(hex)) throw new SecurityConfigError('line 3 (the key) must contain only hex digits 0-9, a-f', file)
  if (hex.length !== SWARM_KEY_BYTES * 2) throw new SecurityConfigError(`the key must be ${SWARM_KEY_BYTES * 2} hex digits (${SWARM_KEY_BYTES * 8} bits), found ${hex.length}`, file)
  const key = Buffer.from(hex, 'hex')
  return {
    psk: new TextEncoder().encode(`${SWARM_KEY_HEADER}\n${SWARM_KEY_ENCODING}\n${hex.toLowerCase()}`),
    fingerprint: createHash('sha256').update(key).digest('hex').slice(0, 16)
  }
}

/** Reads and parses a swarm key file; warns (through `log`) when group or others may read it. */
export async function loadSwarmKey (file: string, init: { log?: Logger } = {}): Promise<SwarmKey> {
  const { text, mode } = await readSmallFile(file, SWARM_KEY_FILE_BYTES_MAX, 'swarm key')
  const key = parseSwarmKey(text, file)
  if ((mode & 0o077) !== 0) init.log?.warn('the swarm key file is readable by group or others; chmod 600 it', { file, mode: `0${(mode & 0o777).toString(8)}` })
  return key
}

/**
 * Writes a swarm key to `file` with mode 0600, never replacing an existing file (exclusive create),
 * and fsyncs it. Throws a SecurityConfigError if the file exists.
 */
export async function writeSwarmKeyFile (file: string, text: string): Promise<void> {
  let fh: fs.FileHandle
  try {
    fh = await fs.open(file, 'wx', 0o600)
  } catch (err: any) {
    if (err.code === 'EEXIST') throw new SecurityConfigError('already exists; refusing to overwrite a swarm key (remove it first if you really mean to replace it)', file)
    throw new SecurityConfigError(`cannot create: ${err.code ?? err.message}`, file)
  }
  try {
    await fh.writeFile(text)
    await fh.chmod(0o600)
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** Parses an allowlist: one peer ID per line, `#` starts a comment, blank lines ignored. Returns canonical IDs. */
export function parsePeerList (text: string, file?: string): Set<string> {
  const peers = new Set<string>()
  const bad: string[] = []
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim()
    if (line === '') return
    try {
      peers.add(peerIdFromString(line).toString())
    } catch {
      bad.push(`line ${i + 1}: ${JSON.stringify(clip(line))} is not a peer ID`)
    }
  })
  if (bad.length > 0) throw new SecurityConfigError(`${bad.length} bad line(s) in the peer allowlist: ${bad.slice(0, 3).join('; ')}${bad.length > 3 ? '; ...' : ''}`, file)
  return peers
}

export async function loadPeerList (file: string): Promise<Set<string>> {
  const { text } = await readSmallFile(file, PEER_LIST_FILE_BYTES_MAX, 'peer allowlist')
  return parsePeerList(text, file)
}

/** Reads an API token file: one line of at least 16 visible ASCII characters (e.g. `openssl rand -hex 32`). */
export async function loadApiToken (file: string): Promise<string> {
  const { text } = await readSmallFile(file, API_TOKEN_FILE_BYTES_MAX, 'API token')
  return parseApiToken(text, file)
}

export function parseApiToken (text: string, file?: string): string {
  const token = text.trim()
  if (!/^[\x21-\x7e]*$/.test(token)) throw new SecurityConfigError('the API token must be one line of visible ASCII characters (no spaces)', file)
  if (token.length < API_TOKEN_CHARS_MIN) throw new SecurityConfigError(`the API token must be at least ${API_TOKEN_CHARS_MIN} characters, found ${token.length} (try \`openssl rand -hex 32\`)`, file)
  return token
}

/** True if an `Authorization` header carries `Bearer TOKEN` for this token; compares in constant time. */
export function bearerTokenMatches (header: string | undefined, token: string): boolean {
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header ?? '')
  const given = createHash('sha256').update(m?.[1] ?? '').digest()
  const expected = createHash('sha256').update(token).digest()
  return timingSafeEqual(given, expected) && m != null
}

export interface PeerGateInit {
  /** This node's peer ID: always allowed. */
  selfId: string
  /** The allowlist file, re-read by `reload()`. */
  file: string
  /** The list already loaded from `file` (see `loadPeerList`). */
  peers: Set<string>
  log: Logger
  logIntervalMs?: number
  logLinesMax?: number
  nowMs?: () => number
}

export type GateReload =
  | { ok: true, peers: number, added: string[], removed: string[] }
  | { ok: false, error: string }

/**
 * The peer allowlist as a libp2p connection gater: a dial to, or an encrypted connection (either way)
 * with, a peer not on the list is refused, counted, and logged with the peer (rate-limited).
 */
export class PeerGate {
  readonly #selfId: string
  readonly #file: string
  readonly #log: Logger
  readonly #logIntervalMs: number
  readonly #logLinesMax: number
  readonly #nowMs: () => number
  readonly #lastLogged = new Map<string, { atMs: number, suppressed: number }>()
  #allowed: Set<string>
  #rejections = 0
  #windowStartMs = -Infinity
  #windowLines = 0

  constructor (init: PeerGateInit) {
    this.#selfId = init.selfId
    this.#file = init.file
    this.#allowed = new Set(init.peers)
    this.#log = init.log
    this.#logIntervalMs = init.logIntervalMs ?? DEFAULT_GATER_LOG_INTERVAL_MS
    this.#logLinesMax = init.logLinesMax ?? DEFAULT_GATER_LOG_LINES_MAX
    this.#nowMs = init.nowMs ?? (() => performance.now())
  }

  /** Connections and dials refused so far. */
  get rejections (): number {
    return this.#rejections
  }

  /** Peers on the list (not counting this node unless listed). */
  get size (): number {
    return this.#allowed.size
  }

  isAllowed (peer: PeerId | string): boolean {
    const id = peer.toString()
    return id === this.#selfId || this.#allowed.has(id)
  }

  /** Re-reads the file; on any error keeps the current list and logs why. */
  async reload (): Promise<GateReload> {
    let next: Set<string>
    try {
      next = await loadPeerList(this.#file)
    } catch (err: any) {
      this.#log.error('allowlist reload failed; keeping the previous list', { file: this.#file, peers: this.#allowed.size, err })
      return { ok: false, error: String(err?.message ?? err) }
    }
    const added = [...next].filter((p) => !this.#allowed.has(p))
    const removed = [...this.#allowed].filter((p) => !next.has(p))
    this.#allowed = next
    this.#log.info('allowlist reloaded', { file: this.#file, peers: next.size, added: added.length, removed: removed.length })
    return { ok: true, peers: next.size, added, removed }
  }

  /** The gater to pass to libp2p (`connectionGater`). */
  gater (): ConnectionGater {
    return {
      denyDialPeer: (peerId) => this.#deny(peerId, 'dial'),
      denyInboundEncryptedConnection: (peerId) => this.#deny(peerId, 'inbound'),
      denyOutboundEncryptedConnection: (peerId) => this.#deny(peerId, 'outbound')
    }
  }

  #deny (peerId: PeerId, direction: 'dial' | 'inbound' | 'outbound'): boolean {
    if (this.isAllowed(peerId)) return false
    this.#rejections++
    this.#logRefusal(peerId.toString(), direction)
    return true
  }

  #logRefusal (peer: string, direction: string): void {
    const now = this.#nowMs()
    const last = this.#lastLogged.get(peer)
    if (last != null && now - last.atMs < this.#logIntervalMs) { last.suppressed++; return }
    if (now - this.#windowStartMs >= this.#logIntervalMs) {
      this.#windowStartMs = now
      this.#windowLines = 0
      for (const [p, e] of this.#lastLogged) if (now - e.atMs >= this.#logIntervalMs) this.#lastLogged.delete(p)
    }
    if (this.#windowLines >= this.#logLinesMax) return
    this.#windowLines++
    this.#lastLogged.set(peer, { atMs: now, suppressed: 0 })
    this.#log.warn('refused a peer not on the allowlist', { peer, direction, suppressed: last?.suppressed ?? 0, rejections: this.#rejections })
  }
}

/**
 * After a successful reload: closes connections to peers no longer allowed and dials newly allowed peers
 * whose addresses the peer store knows (e.g. a bootstrap peer refused so far), so they join without a restart.
 */
export async function applyAllowlist (node: MeshNode, gate: PeerGate, added: string[], log: Logger): Promise<void> {
  const revoked = new Set(node.getConnections().map((c) => c.remotePeer).filter((p) => !gate.isAllowed(p)).map(String))
  for (const id of revoked) {
    log.info('closing connections to a peer removed from the allowlist', { peer: id })
    await node.hangUp(peerIdFromString(id)).catch((err) => { log.warn('hang-up failed', { peer: id, err }) })
  }
  for (const id of added) {
    const peerId = peerIdFromString(id)
    if (id === node.peerId.toString() || node.getConnections(peerId).length > 0) continue
    const known = await node.peerStore.get(peerId).then((p) => p.addresses.length > 0, () => false)
    if (!known) continue
    node.dial(peerId, { signal: AbortSignal.timeout(DEFAULT_RELOAD_DIAL_TIMEOUT_MS) })
      .then(() => { log.info('connected to a newly allowed peer', { peer: id }) })
      .catch((err) => { log.debug('dial to a newly allowed peer failed', { peer: id, err }) })
  }
}

async function readSmallFile (file: string, maxBytes: number, what: string): Promise<{ text: string, mode: number }> {
  let fh: fs.FileHandle
  try {
    fh = await fs.open(file, 'r')
  } catch (err: any) {
    throw new SecurityConfigError(`cannot read the ${what} file: ${err.code ?? err.message}`, file)
  }
  try {
    const st = await fh.stat()
    if (!st.isFile()) throw new SecurityConfigError(`the ${what} file is not a regular file`, file)
    if (st.size > maxBytes) throw new SecurityConfigError(`the ${what} file is ${st.size} bytes, more than the ${maxBytes} allowed`, file)
    const buf = Buffer.alloc(maxBytes + 1)
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0)
    if (bytesRead > maxBytes) throw new SecurityConfigError(`the ${what} file is larger than the ${maxBytes} bytes allowed`, file)
    let text: string
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(0, bytesRead))
    } catch {
      throw new SecurityConfigError(`the ${what} file is not UTF-8 text`, file)
    }
    return { text, mode: st.mode }
  } finally {
    await fh.close()
  }
}

function clip (s: string, max = 40): string {
  return s.length > max ? `${s.slice(0, max)}...` : s
}
