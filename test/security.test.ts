/**
 * The private mesh with real daemon processes: a keyed ingest + process + backup trio (swarm key from
 * `filemesh keygen`, peer allowlist) refuses a node without the key, a node with another key, and a node with
 * the key but not on the allowlist (in both directions), and keeps moving files while it does; the outsider
 * joins once listed and the members get SIGHUP. Also: the API token, keygen, and bad security files.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { preSharedKey } from '@libp2p/pnet'
import type { Logger } from '../node/log.ts'
import { loadOrCreateIdentity } from '../node/mesh.ts'
import { PeerGate, SecurityConfigError, bearerTokenMatches, generateSwarmKey, parsePeerList, parseSwarmKey } from '../node/security.ts'
import { CLI_PATH, LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { dropLikeRsync, payload, readProcessingLog, recordingCommand, sha256File, sha256Hex } from '../sim/workload.ts'

const run = promisify(execFile)
const TRIO = ['ingest', 'proc', 'backup']
/** Longer than one rejoin interval (5 s), so a refused node has retried at least once. */
const OBSERVE_MS = 6_000
const KEY_FORMAT = /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}\n$/

describe('private mesh: swarm key, allowlist, API token', () => {
  let root: string
  let mesh: LocalMesh
  let keyFile: string
  let allowFile: string
  let procLog: string
  const ids = new Map<string, string>()
  let fileSeed = 0

  const keyed = (): string[] => ['--swarm-key', keyFile, '--allow-peers', allowFile]
  const log = async (name: string): Promise<string> => await fs.readFile(mesh.get(name).logPath, 'utf8')
  const memberIds = async (name: string): Promise<string[]> => (await mesh.status(name)).members.map((m) => m.peerId)
  const writeAllowlist = async (names: string[]): Promise<void> => {
    const text = ['# filemesh members', ...names.flatMap((n) => ['', `${ids.get(n) as string}   # ${n}`])].join('\n') + '\n'
    await fs.writeFile(`${allowFile}.tmp`, text)
    await fs.rename(`${allowFile}.tmp`, allowFile)
  }

  /** A file dropped on the keyed ingest node is processed by `proc` and archived by `backup`, byte-identical. */
  const fileFlows = async (): Promise<void> => {
    const name = `flow-${++fileSeed}.dat`
    const bytes = payload(11, fileSeed, 300_000 + fileSeed)
    await dropLikeRsync(mesh.get('ingest').info.inbox as string, name, bytes)
    const archived = path.join(mesh.get('backup').info.archive as string, name)
    await waitFor(`${name} processed by proc and archived by backup`, async () => {
      const rec = (await readProcessingLog(procLog, 'proc')).find((r) => r.name === name)
      return rec?.sha256 === sha256Hex(bytes) && await sha256File(archived).catch(() => '') === sha256Hex(bytes)
    }, 30_000, 100)
  }

  /** Polls for OBSERVE_MS of `name`'s uptime: it must never appear in any listed node's membership, nor see them. */
  const neverJoins = async (name: string, watchers: string[]): Promise<void> => {
    const id = ids.get(name) as string
    await waitFor(`${name} observed for ${OBSERVE_MS} ms`, async () => {
      for (const w of watchers) expect(await memberIds(w), `${name} in ${w}'s membership`).not.toContain(id)
      const own = await mesh.status(name)
      expect(own.members.map((m) => m.peerId)).toEqual([id])
      return own.uptimeMs >= OBSERVE_MS
    }, OBSERVE_MS + 15_000, 250)
  }

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-security-'))
    mesh = new LocalMesh(root)
    keyFile = path.join(root, 'swarm.key')
    allowFile = path.join(root, 'allow-peers')
    procLog = path.join(root, 'proc.processed')
    await run(process.execPath, [CLI_PATH, 'keygen', '-o', keyFile])
    // Identities made ahead of time, so the allowlist can name the peers before they start.
    for (const name of [...TRIO, 'late', 'outsider', 'nokey', 'wrongkey']) {
      await fs.mkdir(mesh.dataDir(name), { recursive: true })
      ids.set(name, peerIdFromPrivateKey(await loadOrCreateIdentity(mesh.dataDir(name))).toString())
    }
    // The keyless nodes are listed, so only the swarm key keeps them out.
    await writeAllowlist([...TRIO, 'late', 'nokey', 'wrongkey'])
    await mesh.start('ingest', { roles: ['ingest'], args: [...keyed(), '--quiet-ms', '5000'] })
    await Promise.all([
      mesh.start('proc', { roles: ['process'], args: [...keyed(), '--exec', recordingCommand(procLog)] }),
      mesh.start('backup', { roles: ['backup'], args: keyed() })
    ])
    await waitFor('the keyed trio to see each other', async () => {
      for (const n of TRIO) if ((await mesh.status(n)).members.length !== 3) return false
      return true
    }, 30_000)
  }, 60_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null) await fs.rm(root, { recursive: true, force: true })
  })

  it('a node without the swarm key cannot join, warns that its mesh is open, and the keyed mesh keeps serving', async () => {
    await mesh.start('nokey', { roles: ['process'], args: ['--exec', recordingCommand(path.join(root, 'nokey.processed'))] })
    expect(mesh.get('nokey').info.peerId).toBe(ids.get('nokey'))
    await Promise.all([neverJoins('nokey', TRIO), fileFlows()])
    expect((await mesh.status('ingest')).counters.gaterRejections).toBe(0)
    const warnings = (await log('nokey')).split('\n').filter((l) => /WARN .*NO SWARM KEY/.test(l))
    expect(warnings).toHaveLength(1)
    expect(await log('ingest')).not.toMatch(/NO SWARM KEY/)
    await mesh.stop('nokey')
  }, 40_000)

  it('a node with another swarm key cannot join, and the keyed mesh keeps serving', async () => {
    const otherKey = path.join(root, 'other.key')
    await run(process.execPath, [CLI_PATH, 'keygen', '-o', otherKey])
    await mesh.start('wrongkey', { roles: ['process'], args: ['--swarm-key', otherKey, '--exec', recordingCommand(path.join(root, 'wrongkey.processed'))] })
    expect(mesh.get('wrongkey').info.peerId).toBe(ids.get('wrongkey'))
    await Promise.all([neverJoins('wrongkey', TRIO), fileFlows()])
    expect((await mesh.status('ingest')).counters.gaterRejections).toBe(0)
    await mesh.stop('wrongkey')
  }, 40_000)

  it('a node with the key but not on the allowlist is refused both ways; listed and after SIGHUP it joins', async () => {
    const outsider = ids.get('outsider') as string
    const before = (await mesh.status('ingest')).counters.gaterRejections ?? 0
    // It dials us: the outsider bootstraps through ingest, which refuses it.
    const outsiderStartedMs = Date.now()
    await mesh.start('outsider', { roles: ['process'], args: ['--swarm-key', keyFile, '--exec', recordingCommand(path.join(root, 'outsider.processed'))] })
    expect(mesh.get('outsider').info.peerId).toBe(outsider)
    await waitFor('ingest to refuse the outsider', async () => ((await mesh.status('ingest')).counters.gaterRejections ?? 0) > before, 15_000)
    // We dial it: a listed member told to bootstrap through the outsider and ingest refuses to dial the outsider.
    await mesh.start('late', { roles: ['ingest'], args: keyed(), bootstrap: [mesh.get('outsider').info.addrs[0] as string, mesh.get('ingest').info.addrs[0] as string] })
    await waitFor('late to refuse dialling the outsider and join the trio', async () => {
      const s = await mesh.status('late')
      return (s.counters.gaterRejections ?? 0) > 0 && s.members.length === 4
    }, 20_000)
    await Promise.all([neverJoins('outsider', [...TRIO, 'late']), fileFlows()])
    const refusals = (await log('ingest')).split('\n').filter((l) => l.includes('refused a peer not on the allowlist'))
    expect(refusals.some((l) => l.includes(`peer=${outsider}`) && l.includes('direction=inbound'))).toBe(true)
    expect((await log('late')).split('\n').some((l) => l.includes('refused a peer not on the allowlist') && l.includes(`peer=${outsider}`) && l.includes('direction=dial'))).toBe(true)
    // Rate-limited: the outsider retries every 5 s, ingest logs it at most once per 10 s.
    expect(refusals.length).toBeLessThanOrEqual(Math.ceil((Date.now() - outsiderStartedMs) / 10_000) + 1)

    // A bad file on reload keeps the old list.
    await fs.writeFile(allowFile, `${outsider}\nnot-a-peer-id\n`)
    mesh.get('ingest').proc.kill('SIGHUP')
    await waitFor('ingest to log the failed reload', async () => /allowlist reload failed/.test(await log('ingest')), 10_000)
    expect((await memberIds('ingest')).sort()).toEqual([...TRIO, 'late'].map((n) => ids.get(n)).sort())
    expect(mesh.get('ingest').proc.exitCode).toBeNull()

    // Listed, and the members reload: the outsider joins without a restart. Alone, it redials its bootstrap
    // peer (ingest) every 5 s; `late` dials it on reload because it knows its address.
    await writeAllowlist([...TRIO, 'late', 'nokey', 'wrongkey', 'outsider'])
    for (const n of TRIO) mesh.get(n).proc.kill('SIGHUP')
    await waitFor('the outsider to get in through ingest', async () => (await memberIds('ingest')).includes(outsider), 15_000)
    mesh.get('late').proc.kill('SIGHUP')
    await waitFor('the outsider in every member\'s membership', async () => {
      for (const n of [...TRIO, 'late']) if (!(await memberIds(n)).includes(outsider)) return false
      return (await mesh.status('outsider')).members.length === 5
    }, 20_000)
    for (const n of [...TRIO, 'late']) expect(mesh.get(n).proc.exitCode).toBeNull()
  }, 60_000)

  it('the API with a token answers 401 without it and serves with it; a public API needs a token', async () => {
    const tokenFile = path.join(root, 'api.token')
    const token = 'f'.repeat(8) + sha256Hex(Buffer.from('token')).slice(0, 32)
    await fs.writeFile(tokenFile, token + '\n', { mode: 0o600 })
    const d = await mesh.start('api', { roles: ['backup'], bootstrap: [], args: ['--swarm-key', keyFile, '--api-token-file', tokenFile] })
    const url = `http://${d.info.api}/api/status`
    expect((await fetch(url)).status).toBe(401)
    expect((await fetch(url, { headers: { authorization: `Bearer ${token}x` } })).status).toBe(401)
    expect((await fetch(`http://${d.info.api}/healthz`)).status).toBe(401)
    const ok = await fetch(url, { headers: { authorization: `Bearer ${token}` } })
    expect(ok.status).toBe(200)
    expect((await ok.json() as { peerId: string }).peerId).toBe(d.info.peerId)

    const refused = await run(process.execPath, [CLI_PATH, 'status', '--api', d.info.api], { env: { ...process.env, FILEMESH_API_TOKEN: '' } }).catch((e) => e)
    expect(refused.code).toBe(1)
    expect(refused.stderr).toMatch(/401.*--api-token-file/)
    const viaFile = await run(process.execPath, [CLI_PATH, 'status', '--api', d.info.api, '--api-token-file', tokenFile, '--json'])
    expect(JSON.parse(viaFile.stdout).peerId).toBe(d.info.peerId)
    const viaEnv = await run(process.execPath, [CLI_PATH, 'status', '--api', d.info.api, '--json'], { env: { ...process.env, FILEMESH_API_TOKEN: token } })
    expect(JSON.parse(viaEnv.stdout).counters.gaterRejections).toBe(0)
    await mesh.stop('api')

    const pub = await run(process.execPath, [CLI_PATH, 'run', '--data', path.join(root, 'pub'), '--roles', 'backup', '--api', '0.0.0.0:0', '--api-public']).catch((e) => e)
    expect(pub.code).toBe(78)
    expect(pub.stderr).toMatch(/not loopback.*--api-token-file/)
  }, 60_000)

  it('keygen prints a key in the pnet format that run accepts; -o writes 0600 and never overwrites; bad keys are exit 78', async () => {
    const [a, b] = await Promise.all([run(process.execPath, [CLI_PATH, 'keygen']), run(process.execPath, [CLI_PATH, 'keygen'])])
    expect(a.stdout).toMatch(KEY_FORMAT)
    expect(b.stdout).toMatch(KEY_FORMAT)
    expect(a.stdout).not.toBe(b.stdout)
    // The trio runs with a key made by `keygen -o`.
    expect(await fs.readFile(keyFile, 'utf8')).toMatch(KEY_FORMAT)
    expect((await fs.stat(keyFile)).mode & 0o777).toBe(0o600)
    expect(await log('ingest')).toMatch(/private mesh: only nodes with this swarm key can connect/)
    const original = await fs.readFile(keyFile, 'utf8')
    const again = await run(process.execPath, [CLI_PATH, 'keygen', '-o', keyFile]).catch((e) => e)
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/already exists/)
    expect(await fs.readFile(keyFile, 'utf8')).toBe(original)

    const cases: Array<[string, RegExp]> = [
      [original.replace('/base16/', '/base64/'), /line 2 must be \/base16\//],
      [original.trimEnd().slice(0, -2) + '\n', /64 hex digits .* found 62/],
      [original.trimEnd().slice(0, -1) + 'g\n', /only hex digits/],
      ['', /empty/]
    ]
    await Promise.all(cases.map(async ([text, why], i) => {
      const bad = path.join(root, `bad-${i}.key`)
      await fs.writeFile(bad, text)
      const res = await run(process.execPath, [CLI_PATH, 'run', '--data', path.join(root, `bad-${i}`), '--roles', 'backup', '--swarm-key', bad]).catch((e) => e)
      expect(res.code, `case ${i}`).toBe(78)
      expect(res.stderr, `case ${i}`).toMatch(why)
    }))
  }, 60_000)
})

describe('security files and the gater, without a network', () => {
  const newPeer = async (): Promise<string> => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
  const capture = (): { log: Logger, lines: Array<{ msg: string, fields?: Record<string, unknown> }> } => {
    const lines: Array<{ msg: string, fields?: Record<string, unknown> }> = []
    const log: Logger = {
      debug: () => {},
      info: (msg, fields) => { lines.push({ msg, fields }) },
      warn: (msg, fields) => { lines.push({ msg, fields }) },
      error: (msg, fields) => { lines.push({ msg, fields }) },
      child: () => log
    }
    return { log, lines }
  }

  it('parses swarm keys strictly, and pnet accepts what it returns', () => {
    const text = generateSwarmKey()
    const key = parseSwarmKey(text)
    expect(new TextDecoder().decode(key.psk)).toBe(text.trimEnd())
    expect(key.fingerprint).toMatch(/^[0-9a-f]{16}$/)
    expect(parseSwarmKey(text.replaceAll('\n', '\r\n').toUpperCase().replace('/KEY/SWARM/PSK/1.0.0/', '/key/swarm/psk/1.0.0/').replace('/BASE16/', '/base16/')).fingerprint).toBe(key.fingerprint)
    expect(() => preSharedKey({ psk: key.psk })()).not.toThrow()
    expect(() => parseSwarmKey(text.replace('1.0.0', '2.0.0'))).toThrow(/line 1 must be/)
    expect(() => parseSwarmKey(text + 'extra\n')).toThrow(/expected 3 lines/)
    expect(() => parseSwarmKey('/key/swarm/psk/1.0.0/\n/base16/\n')).toThrow(/line 3 .* missing/)
    expect(() => parseSwarmKey('nonsense')).toThrow(SecurityConfigError)
  })

  it('parses allowlists with comments and blank lines, and names bad lines', async () => {
    const [a, b] = [await newPeer(), await newPeer()]
    expect([...parsePeerList(`# members\n\n${a}  # first\n   ${b}\r\n\n`)]).toEqual([a, b])
    expect(() => parsePeerList(`${a}\nQmNotAPeer\n\nalso bad # c\n`, 'f')).toThrow(/f: 2 bad line\(s\).*line 2: "QmNotAPeer".*line 4: "also bad"/)
    expect(parsePeerList('# nobody\n').size).toBe(0)
  })

  it('the gater allows self and listed peers, refuses others in every direction, counts them, and rate-limits its log', async () => {
    const [self, member, stranger, other] = [await newPeer(), await newPeer(), await newPeer(), await newPeer()]
    let now = 0
    const { log, lines } = capture()
    const gate = new PeerGate({ selfId: self, file: '/nonexistent', peers: new Set([member]), log, logIntervalMs: 10_000, logLinesMax: 2, nowMs: () => now })
    const g = gate.gater()
    const pid = (s: string): any => ({ toString: () => s })
    expect(g.denyDialPeer?.(pid(self))).toBe(false)
    expect(g.denyInboundEncryptedConnection?.(pid(member), {} as any)).toBe(false)
    expect(g.denyDialPeer?.(pid(stranger))).toBe(true)
    expect(g.denyInboundEncryptedConnection?.(pid(stranger), {} as any)).toBe(true)
    expect(g.denyOutboundEncryptedConnection?.(pid(stranger), {} as any)).toBe(true)
    expect(gate.rejections).toBe(3)
    expect(lines).toHaveLength(1)
    expect(lines[0]?.fields).toMatchObject({ peer: stranger, direction: 'dial', suppressed: 0 })
    g.denyDialPeer?.(pid(other))
    g.denyDialPeer?.(pid(await newPeer())) // over logLinesMax in this interval: counted, not logged
    expect(lines).toHaveLength(2)
    now = 10_000
    g.denyDialPeer?.(pid(stranger))
    expect(lines).toHaveLength(3)
    expect(lines[2]?.fields).toMatchObject({ peer: stranger, suppressed: 2 })
    expect(gate.rejections).toBe(6)
    // A reload that fails keeps the list.
    expect((await gate.reload()).ok).toBe(false)
    expect(gate.isAllowed(member)).toBe(true)
    expect(lines.at(-1)?.msg).toMatch(/reload failed/)
  })

  it('compares bearer tokens exactly', () => {
    const t = 'a'.repeat(32)
    expect(bearerTokenMatches(`Bearer ${t}`, t)).toBe(true)
    expect(bearerTokenMatches(`bearer ${t} `, t)).toBe(true)
    for (const h of [undefined, '', t, `Bearer ${t}a`, `Bearer ${t.slice(1)}`, `Basic ${t}`, `Bearer ${t} x`]) expect(bearerTokenMatches(h, t), String(h)).toBe(false)
  })
})
