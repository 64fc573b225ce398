/**
 * Real network partitions for the churn harness and the partition test: every daemon runs in its own Linux
 * network namespace (`ip netns exec NS ...`), wired by a veth pair into one bridge in the root namespace.
 * The bridge has .254 of the run's subnet 10.213.SLOT.0/24, so the harness reaches every daemon's API whatever
 * is cut. A cut routes, in each namespace, every address of the other side via a "sink" namespace (.253) that
 * does not forward: packets between the sides are dropped silently (dials time out, open connections stall),
 * as on a real network, while each side still talks within itself. `heal` removes those routes.
 *
 * Names carry a per-run prefix `fmSLOT` (bridge fmSLOTbr, host-side veths fmSLOTvN, namespaces fmSLOT-NAME and
 * fmSLOT.sink). A slot is claimed with a lock file under /run/filemesh-netns naming the owner's pid and start
 * time; whatever a dead owner left (a crashed or SIGKILLed run) is removed before a slot is picked, and
 * `cleanupScript()` gives the same teardown as shell for a watchdog. Only root can do any of this: without it
 * (or without `ip`, or with FILEMESH_NETNS=off) `NetnsLab.create` throws a NetnsUnavailableError that says why.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'

export const NETNS_SUBNET_PREFIX = '10.213'
/** Slots (third octet of the subnet) tried, lowest free first. */
export const NETNS_SLOT_MIN = 1
export const NETNS_SLOT_MAX = 250
export const NETNS_BRIDGE_HOST = 254
export const NETNS_SINK_HOST = 253
export const NETNS_HOSTS_MAX = 250
export const NETNS_LOCK_DIR = '/run/filemesh-netns'
/** A claim mutex older than this was left by a process that died inside it. */
export const NETNS_CLAIM_STALE_MS = 30_000
export const NETNS_CLAIM_WAIT_MS = 60_000
export const IP_COMMAND_TIMEOUT_MS = 15_000

export class NetnsUnavailableError extends Error {
  override name = 'NetnsUnavailableError'
}

export class NetnsError extends Error {
  override name = 'NetnsError'
}

export interface NetnsHost {
  name: string
  ns: string
  ip: string
  veth: string
}

export interface NetnsLabInit {
  /** Progress lines (what was cleaned up, which subnet was taken). */
  say?: (line: string) => void
}

interface SlotLock {
  pid: number
  /** The owner's start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid apart. */
  start: string
}

export class NetnsLab {
  readonly slot: number
  readonly prefix: string
  readonly bridge: string
  readonly sinkNs: string
  readonly hosts: ReadonlyMap<string, NetnsHost>
  /** Routes a cut installed: [namespace, far address]. */
  #routes: Array<[string, string]> = []
  #sides: [string[], string[]] | undefined
  #destroyed = false

  private constructor (slot: number, names: string[]) {
    this.slot = slot
    this.prefix = `fm${slot}`
    this.bridge = `${this.prefix}br`
    this.sinkNs = `${this.prefix}.sink`
    this.hosts = new Map(names.map((name, i) => [name, { name, ns: `${this.prefix}-${name}`, ip: `${NETNS_SUBNET_PREFIX}.${slot}.${i + 1}`, veth: `${this.prefix}v${i + 1}` }]))
  }

  /**
   * Claims a free subnet, cleans up what dead runs left, and creates one namespace per name (plus the sink),
   * each with its address on the bridge. Throws NetnsUnavailableError (with the reason) if that cannot be done.
   */
  static async create (names: string[], init: NetnsLabInit = {}): Promise<NetnsLab> {
    const say = init.say ?? (() => {})
    await assertAvailable()
    if (names.length === 0 || names.length > NETNS_HOSTS_MAX) throw new NetnsError(`a lab needs 1–${NETNS_HOSTS_MAX} hosts, got ${names.length}`)
    for (const n of names) if (!/^[a-z0-9-]+$/.test(n)) throw new NetnsError(`host name ${JSON.stringify(n)} is not [a-z0-9-]+`)
    if (new Set(names).size !== names.length) throw new NetnsError('host names repeat')
    let slot: number
    try {
      slot = await withClaimMutex(async () => {
        const cleaned = await cleanStale()
        if (cleaned.length > 0) say(`netns: removed leftovers of dead runs: ${cleaned.join(' ')}`)
        return await claimSlot()
      })
    } catch (err: any) {
      throw err instanceof NetnsError ? err : new NetnsUnavailableError(`cannot claim a subnet for network namespaces: ${err?.message ?? err}`)
    }
    const lab = new NetnsLab(slot, names)
    try {
      await lab.#build()
    } catch (err: any) {
      await lab.destroy().catch(() => {})
      throw new NetnsUnavailableError(`cannot create network namespaces: ${String(err?.message ?? err).trim()}`)
    }
    say(`netns: ${names.length} namespaces ${lab.prefix}-* on ${lab.subnet} (bridge ${lab.bridge} ${lab.bridgeIp})`)
    return lab
  }

  get subnet (): string {
    return `${NETNS_SUBNET_PREFIX}.${this.slot}.0/24`
  }

  get bridgeIp (): string {
    return `${NETNS_SUBNET_PREFIX}.${this.slot}.${NETNS_BRIDGE_HOST}`
  }

  get sinkIp (): string {
    return `${NETNS_SUBNET_PREFIX}.${this.slot}.${NETNS_SINK_HOST}`
  }

  /** The sides of the cut in force, if any. */
  get sides (): [string[], string[]] | undefined {
    return this.#sides
  }

  host (name: string): NetnsHost {
    const h = this.hosts.get(name)
    if (h == null) throw new NetnsError(`no host ${name} in ${this.prefix}`)
    return h
  }

  ip (name: string): string {
    return this.host(name).ip
  }

  /** Command prefix that runs a program inside `name`'s namespace. */
  wrap (name: string): string[] {
    return ['ip', 'netns', 'exec', this.host(name).ns]
  }

  /** Cuts the mesh: no packet passes between a host of sides[0] and one of sides[1]. Hosts on neither side are untouched. */
  async cut (sides: [string[], string[]]): Promise<void> {
    if (this.#sides != null) throw new NetnsError('already cut: heal first')
    const [a, b] = sides.map((s) => s.map((n) => this.host(n)))
    if (a == null || b == null || a.length === 0 || b.length === 0) throw new NetnsError('a cut needs two non-empty sides')
    if (a.some((h) => b.includes(h))) throw new NetnsError('a host is on both sides')
    const routes: Array<[string, string]> = []
    for (const x of a) for (const y of b) routes.push([x.ns, y.ip], [y.ns, x.ip])
    this.#sides = [a.map((h) => h.name), b.map((h) => h.name)]
    this.#routes = routes
    await Promise.all(groupByNs(routes).map(async ([ns, ips]) => { await ipBatch(ns, ips.map((ip) => `route add ${ip}/32 via ${this.sinkIp}`)) }))
  }

  /** Removes the cut's routes; idempotent. */
  async heal (): Promise<void> {
    const routes = this.#routes
    this.#routes = []
    this.#sides = undefined
    const failures: string[] = []
    await Promise.all(groupByNs(routes).map(async ([ns, ips]) => {
      await ipBatch(ns, ips.map((ip) => `route del ${ip}/32`), true).catch((err) => { failures.push(`${ns}: ${String(err.message).trim()}`) })
    }))
    // A route that did not go away is checked directly: a heal that leaves the mesh cut would fail the run silently.
    for (const [ns, ips] of groupByNs(routes)) {
      const left = await ip(['-n', ns, '-4', 'route', 'show']).catch(() => '')
      const still = ips.filter((a) => new RegExp(`^${a.replaceAll('.', '\\.')} `, 'm').test(left))
      if (still.length > 0) throw new NetnsError(`heal left routes in ${ns}: ${still.join(' ')} (${failures.join('; ')})`)
    }
  }

  /** The same teardown as `destroy()`, as one shell command (for a watchdog that outlives this process). */
  cleanupScript (): string {
    return teardownScript(this.slot, [...this.hosts.values()])
  }

  /** Removes the veths, the bridge, the namespaces and the lock; idempotent; never throws for a missing piece. */
  async destroy (): Promise<void> {
    if (this.#destroyed) return
    this.#destroyed = true
    this.#routes = []
    this.#sides = undefined
    await removeSlot(this.slot, [...this.hosts.values()].map((h) => h.ns), [...this.hosts.values()].map((h) => h.veth))
  }

  async #build (): Promise<void> {
    const br = this.bridge
    await ip(['link', 'add', br, 'type', 'bridge'])
    await ip(['link', 'set', br, 'alias', `filemesh-netns pid=${process.pid}`])
    await ip(['addr', 'add', `${this.bridgeIp}/24`, 'dev', br])
    await ip(['link', 'set', br, 'up'])
    const wire = async (ns: string, veth: string, addr: string): Promise<void> => {
      await ip(['netns', 'add', ns])
      await ip(['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
      await ip(['link', 'set', veth, 'master', br, 'up'])
      await ipBatch(ns, ['link set lo up', `addr add ${addr}/24 dev eth0`, 'link set eth0 up'])
    }
    await wire(this.sinkNs, `${this.prefix}vs`, this.sinkIp)
    // The sink must drop what it receives, never route it on (a fresh namespace does not forward; make sure).
    await ip(['netns', 'exec', this.sinkNs, 'sh', '-c', 'echo 0 > /proc/sys/net/ipv4/ip_forward'])
    for (const h of this.hosts.values()) await wire(h.ns, h.veth, h.ip)
  }
}

/** Why namespaces cannot be used here, or undefined if they probably can (root, Linux, `ip` present). */
export async function netnsUnavailableReason (): Promise<string | undefined> {
  try {
    await assertAvailable()
    return undefined
  } catch (err: any) {
    return err?.message ?? String(err)
  }
}

async function assertAvailable (): Promise<void> {
  if (process.env.FILEMESH_NETNS === 'off') throw new NetnsUnavailableError('network namespaces disabled by FILEMESH_NETNS=off')
  if (process.platform !== 'linux') throw new NetnsUnavailableError(`network namespaces need Linux (this is ${process.platform})`)
  const uid = process.getuid?.()
  if (uid !== 0) throw new NetnsUnavailableError(`network namespaces need root (CAP_NET_ADMIN); running as uid ${String(uid)}`)
  try {
    await ip(['-V'])
  } catch (err: any) {
    throw new NetnsUnavailableError(err?.code === 'ENOENT' ? '`ip` (iproute2) is not installed: apt-get install -y iproute2' : `\`ip -V\` failed: ${err?.message ?? err}`)
  }
}

/** Removes the resources (and locks) of every slot whose owner is gone; returns what it removed. */
export async function cleanStale (): Promise<string[]> {
  const locks = await readLocks()
  const nss = (await ip(['netns', 'list']).catch(() => '')).split('\n').map((l) => l.split(' ')[0] ?? '').filter((n) => /^fm\d+[-.]/.test(n))
  const links = (await ip(['-o', 'link', 'show']).catch(() => '')).split('\n').map((l) => (l.split(': ')[1] ?? '').split('@')[0] ?? '').filter((n) => /^fm\d+(br|v\d+|vs)$/.test(n))
  const slotOf = (n: string): number => Number(/^fm(\d+)/.exec(n)?.[1])
  const slots = new Set([...locks.keys(), ...nss.map(slotOf), ...links.map(slotOf)])
  const removed: string[] = []
  for (const slot of slots) {
    const lock = locks.get(slot)
    if (lock != null && await ownerAlive(lock)) continue
    const mine = { ns: nss.filter((n) => slotOf(n) === slot), links: links.filter((n) => slotOf(n) === slot) }
    await removeSlot(slot, mine.ns, mine.links)
    removed.push(...mine.links, ...mine.ns, ...(lock != null ? [`lock ${slot} (pid ${lock.pid})`] : []))
  }
  return removed
}

async function removeSlot (slot: number, nss: string[], links: string[]): Promise<void> {
  // Deleting a host-side veth deletes its pair at once; deleting a namespace's name alone leaves the rest to the kernel's pace.
  for (const l of [...links.filter((l) => !l.endsWith('br')), `fm${slot}vs`]) await ip(['link', 'del', l]).catch(() => {})
  await ip(['link', 'del', `fm${slot}br`]).catch(() => {})
  for (const ns of [...nss, `fm${slot}.sink`]) await ip(['netns', 'del', ns]).catch(() => {})
  await fs.rm(lockFile(slot), { force: true })
}

function teardownScript (slot: number, hosts: NetnsHost[]): string {
  const q = (s: string): string => `'${s}'`
  const cmds = [
    ...hosts.map((h) => `ip link del ${q(h.veth)}`),
    `ip link del fm${slot}vs`,
    `ip link del fm${slot}br`,
    ...hosts.map((h) => `ip netns del ${q(h.ns)}`),
    `ip netns del fm${slot}.sink`,
    `rm -f ${q(lockFile(slot))}`
  ]
  return cmds.map((c) => `${c} 2>/dev/null`).join('; ')
}

function lockFile (slot: number): string {
  return path.join(NETNS_LOCK_DIR, `${slot}.lock`)
}

async function readLocks (): Promise<Map<number, SlotLock>> {
  const out = new Map<number, SlotLock>()
  let names: string[] = []
  try { names = await fs.readdir(NETNS_LOCK_DIR) } catch {}
  for (const n of names) {
    const m = /^(\d+)\.lock$/.exec(n)
    if (m == null) continue
    try {
      const j = JSON.parse(await fs.readFile(path.join(NETNS_LOCK_DIR, n), 'utf8'))
      out.set(Number(m[1]), { pid: Number(j.pid), start: String(j.start) })
    } catch {
      // An unreadable lock is a torn write of a claim that died: treat it as dead.
      out.set(Number(m[1]), { pid: 0, start: '' })
    }
  }
  return out
}

async function processStart (pid: number | 'self'): Promise<string | undefined> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

async function ownerAlive (lock: SlotLock): Promise<boolean> {
  if (!(lock.pid > 0)) return false
  const start = await processStart(lock.pid)
  return start != null && start === lock.start
}

/** Lowest slot with no lock and no route for its subnet in the root namespace; writes its lock. Runs under the claim mutex. */
async function claimSlot (): Promise<number> {
  const locks = await readLocks()
  const routes = await ip(['-4', 'route', 'show']).catch(() => '')
  const start = await processStart('self') ?? ''
  for (let slot = NETNS_SLOT_MIN; slot <= NETNS_SLOT_MAX; slot++) {
    if (locks.has(slot) || routes.includes(`${NETNS_SUBNET_PREFIX}.${slot}.`)) continue
    await fs.writeFile(lockFile(slot), JSON.stringify({ pid: process.pid, start, at: new Date().toISOString() }) + '\n', { flag: 'wx' })
    return slot
  }
  throw new NetnsError(`no free subnet ${NETNS_SUBNET_PREFIX}.${NETNS_SLOT_MIN}–${NETNS_SLOT_MAX}.0/24`)
}

/** Runs `fn` holding a machine-wide mutex (a directory), so two runs never pick the same slot or clean each other up. */
async function withClaimMutex<T> (fn: () => Promise<T>): Promise<T> {
  await fs.mkdir(NETNS_LOCK_DIR, { recursive: true, mode: 0o700 })
  const mutex = path.join(NETNS_LOCK_DIR, '.claim')
  const deadline = Date.now() + NETNS_CLAIM_WAIT_MS
  for (;;) {
    try {
      await fs.mkdir(mutex)
      break
    } catch (err: any) {
      if (err.code !== 'EEXIST') throw err
      const st = await fs.stat(mutex).catch(() => undefined)
      if (st != null && Date.now() - st.mtimeMs > NETNS_CLAIM_STALE_MS) await fs.rmdir(mutex).catch(() => {})
      if (Date.now() > deadline) throw new NetnsError(`${mutex} stayed held for ${NETNS_CLAIM_WAIT_MS} ms`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  try {
    return await fn()
  } finally {
    await fs.rmdir(mutex).catch(() => {})
  }
}

function groupByNs (routes: Array<[string, string]>): Array<[string, string[]]> {
  const m = new Map<string, string[]>()
  for (const [ns, a] of routes) m.set(ns, [...(m.get(ns) ?? []), a])
  return [...m]
}

async function ipBatch (ns: string, lines: string[], force = false): Promise<void> {
  await ip(['-n', ns, ...(force ? ['-force'] : []), '-batch', '-'], lines.join('\n') + '\n')
}

/** Runs `ip ARGS`; rejects with its stderr on failure. */
export async function ip (args: string[], stdin?: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    const child = execFile('ip', args, { timeout: IP_COMMAND_TIMEOUT_MS }, (err, out, errOut) => {
      if (err != null) {
        const e = new NetnsError(`ip ${args.join(' ')}: ${errOut.trim() || err.message}`) as NetnsError & { code?: unknown }
        e.code = (err as any).code
        reject(e)
      } else resolve(out)
    })
    if (stdin != null) child.stdin?.end(stdin)
  })
}
