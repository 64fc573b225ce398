/**
 * The churn harness's fault schedule: which daemons exist, which files are injected when and how, and which
 * faults happen when. It is generated from one seed before anything starts, printed, written as JSON, and
 * can be replayed (`--replay schedule.json`), so a failing run can be repeated and shrunk by editing the file.
 * Times are milliseconds from the moment the mesh is up and injection starts. A real-process run is not
 * deterministic to the millisecond (scheduling, I/O), but the same schedule drives the same sequence of
 * injections and faults at the same offsets.
 *
 * Format `filemesh-churn-schedule/1`:
 *   nodes:  [{ name, roles, joinAtMs? }]            joinAtMs absent = started before the run begins
 *   files:  [{ atMs, index, name, size, via }]      via: 'rsync' (temp name + rename into the inbox) | 'add' (CLI)
 *   faults: [{ atMs, kind: 'kill', node, when, downMs }]
 *              SIGKILL, then restart with the same data dir after downMs. when: 'now'; 'transfer' (wait up to
 *              waitMaxMs until the node has a transfer in flight); 'processing' (until it runs the command);
 *              'after-drop' (ingest only: atMs is just after a file injection, so the kill lands in claim/hash)
 *           [{ atMs, kind: 'join', node }]           start a node of `nodes` that has joinAtMs (fresh data dir)
 *           [{ atMs, kind: 'leave', node }]          SIGTERM, never restarted (off by default: needs reassignment)
 *           [{ atMs, kind: 'drain', node }]          `filemesh drain --data DIR`: waits for "safe to remove", then
 *                                                    stops the node (SIGTERM), never restarted
 *           [{ atMs, kind: 'partition', sides: [[names], [names]], durationMs }]
 *              no packet passes between the two sides for durationMs, then the cut heals. Needs every daemon in
 *              its own network namespace (sim/netns.ts, root only); a run that cannot create them says why and
 *              carries out the other faults on loopback.
 * Drains and partitions are drawn from a second PRNG stream of the same seed, so adding them to a config keeps
 * its files and (but for nodes being drained) its kills.
 */
import { KiB } from '../protocols/limits.ts'
import { prng } from './workload.ts'

export const SCHEDULE_FORMAT = 'filemesh-churn-schedule/1'

export const DEFAULT_NODES = 7
export const DEFAULT_INGESTS = 1
export const DEFAULT_BACKUPS = 2
export const DEFAULT_FILES = 200
export const DEFAULT_FAULT_WINDOW_MS = 3 * 60_000
export const DEFAULT_KILL_EVERY_MS = 6_000
export const DEFAULT_FILE_BYTES_MIN = 64 * KiB
export const DEFAULT_FILE_BYTES_MAX = 4 * 1024 * KiB
/** Share of files injected with `filemesh add` (the rest rsync-style). */
export const DEFAULT_ADD_SHARE = 0.3
/** Files are injected during the first part of the fault window, so faults keep hitting files in flight. */
export const DEFAULT_INJECT_WINDOW_SHARE = 0.85
export const DEFAULT_DOWN_MS_MIN = 500
export const DEFAULT_DOWN_MS_MAX = 4_000
/** How long a 'transfer' / 'processing' kill waits for its moment before it kills anyway. */
export const DEFAULT_WAIT_MAX_MS = 5_000
/** What the generator assumes a restart takes, so it does not pick a node that is still coming back. */
export const RESTART_ALLOWANCE_MS = 2_500
/** A node that just joined or came back is not killed again for this long. */
export const SETTLE_AFTER_START_MS = 2_000
/** The ingest node is the coordinator of every file: it is picked for a SIGKILL this many times as often as another node. */
export const INGEST_KILL_WEIGHT = 2
export const DEFAULT_JOINS = 1
export const DEFAULT_LEAVES = 1
export const DEFAULT_DRAINS = 1
/** A partition lasts longer than the daemons' default reassign grace (15 s), so reassignment across the cut happens. */
export const DEFAULT_PARTITION_MS_MIN = 20_000
export const DEFAULT_PARTITION_MS_MAX = 40_000
/** No partition starts before this share of the fault window: files are in flight by then. */
export const PARTITION_EARLIEST_SHARE = 0.1
/** A partition takes at most this share of its slot of the fault window (N partitions, N slots). */
export const PARTITION_SLOT_SHARE_MAX = 0.8
/** Salt of the second PRNG stream (drains, partitions). */
export const AUX_STREAM_SALT = 0x5a17_c0de
/** Sleep in the processing command, so kills can land while it runs. */
export const DEFAULT_PROCESS_MS = 300

export type KillMoment = 'now' | 'transfer' | 'processing' | 'after-drop'
export type FileVia = 'rsync' | 'add'

export interface ScheduledNode {
  name: string
  roles: Array<'ingest' | 'process' | 'backup'>
  joinAtMs?: number
}

export interface ScheduledFile {
  atMs: number
  /** Payload index: bytes = payload(seed, index, size). */
  index: number
  name: string
  size: number
  via: FileVia
}

export type ScheduledFault =
  | { atMs: number, kind: 'kill', node: string, when: KillMoment, downMs: number }
  | { atMs: number, kind: 'join', node: string }
  | { atMs: number, kind: 'leave', node: string }
  | { atMs: number, kind: 'drain', node: string }
  | { atMs: number, kind: 'partition', sides: [string[], string[]], durationMs: number }

export type NodeFault = Exclude<ScheduledFault, { kind: 'partition' }>

export interface ScheduleConfig {
  seed: number
  nodes: number
  ingests: number
  backups: number
  files: number
  faultWindowMs: number
  killEveryMs: number
  fileBytesMin: number
  fileBytesMax: number
  addShare: number
  downMsMin: number
  downMsMax: number
  waitMaxMs: number
  joins: number
  /** Processors leaving for good (SIGTERM, no restart); 0 unless --leave. */
  leaves: number
  /** Processors drained with `filemesh drain`, then stopped; 0 unless --drains. */
  drains: number
  /** Network partitions of the mesh into two sides; 0 unless --partitions. */
  partitions: number
  partitionMsMin: number
  partitionMsMax: number
  processMs: number
}

export interface ChurnSchedule {
  format: typeof SCHEDULE_FORMAT
  config: ScheduleConfig
  nodes: ScheduledNode[]
  files: ScheduledFile[]
  faults: ScheduledFault[]
}

export class ScheduleError extends Error {
  override name = 'ScheduleError'
}

export function defaultConfig (seed: number): ScheduleConfig {
  return {
    seed,
    nodes: DEFAULT_NODES,
    ingests: DEFAULT_INGESTS,
    backups: DEFAULT_BACKUPS,
    files: DEFAULT_FILES,
    faultWindowMs: DEFAULT_FAULT_WINDOW_MS,
    killEveryMs: DEFAULT_KILL_EVERY_MS,
    fileBytesMin: DEFAULT_FILE_BYTES_MIN,
    fileBytesMax: DEFAULT_FILE_BYTES_MAX,
    addShare: DEFAULT_ADD_SHARE,
    downMsMin: DEFAULT_DOWN_MS_MIN,
    downMsMax: DEFAULT_DOWN_MS_MAX,
    waitMaxMs: DEFAULT_WAIT_MAX_MS,
    joins: DEFAULT_JOINS,
    leaves: 0,
    drains: 0,
    partitions: 0,
    partitionMsMin: DEFAULT_PARTITION_MS_MIN,
    partitionMsMax: DEFAULT_PARTITION_MS_MAX,
    processMs: DEFAULT_PROCESS_MS
  }
}

/** Builds the whole schedule from `config` alone (same config, same schedule). */
export function generateSchedule (config: ScheduleConfig): ChurnSchedule {
  const processors = config.nodes - config.ingests - config.backups
  if (config.ingests < 1 || config.backups < 2 || processors < 1) throw new ScheduleError(`--nodes ${config.nodes} leaves ${processors} processors: need ≥1 ingest, ≥2 backups and ≥1 processor`)
  if (config.fileBytesMin < 0 || config.fileBytesMax < config.fileBytesMin) throw new ScheduleError('file size range is empty')
  if (!(config.partitionMsMin > 0) || config.partitionMsMax < config.partitionMsMin) throw new ScheduleError('partition duration range is empty')
  const rand = prng(config.seed)
  const aux = prng((config.seed ^ AUX_STREAM_SALT) >>> 0)
  const between = (lo: number, hi: number): number => lo + rand() * (hi - lo)
  const nodes: ScheduledNode[] = [
    ...range(config.ingests).map((i): ScheduledNode => ({ name: `ingest${i}`, roles: ['ingest'] })),
    ...range(config.backups).map((i): ScheduledNode => ({ name: `backup${i}`, roles: ['backup'] })),
    ...range(processors).map((i): ScheduledNode => ({ name: `proc${i}`, roles: ['process'] }))
  ]

  const injectWindowMs = config.faultWindowMs * DEFAULT_INJECT_WINDOW_SHARE
  const logMin = Math.log(Math.max(1, config.fileBytesMin))
  const logMax = Math.log(Math.max(1, config.fileBytesMax))
  const files: ScheduledFile[] = range(config.files).map((i): ScheduledFile => {
    const size = Math.min(config.fileBytesMax, Math.max(config.fileBytesMin, Math.round(Math.exp(between(logMin, logMax)))))
    return { atMs: Math.round(rand() * injectWindowMs), index: i - 1, name: `churn-${String(i).padStart(4, '0')}.bin`, size, via: rand() < config.addShare ? 'add' : 'rsync' }
  }).sort((a, b) => a.atMs - b.atMs || a.index - b.index)

  const faults: ScheduledFault[] = []
  /** When each node may be faulted again (Infinity = gone or not yet joined). */
  const freeAt = new Map<string, number>(nodes.map((n) => [n.name, 0]))
  for (let j = 1; j <= config.joins; j++) {
    const name = `proc${processors + j}`
    const atMs = Math.round(between(0.1, 0.7) * config.faultWindowMs)
    nodes.push({ name, roles: ['process'], joinAtMs: atMs })
    faults.push({ atMs, kind: 'join', node: name })
    freeAt.set(name, atMs + RESTART_ALLOWANCE_MS + SETTLE_AFTER_START_MS)
  }
  for (let l = 0; l < config.leaves; l++) {
    const atMs = Math.round(between(0.2, 0.8) * config.faultWindowMs)
    const candidates = nodes.filter((n) => n.roles.includes('process') && (freeAt.get(n.name) ?? Infinity) <= atMs)
    // Never the last processor: someone has to process what arrives.
    if (candidates.length < 2) continue
    const node = pick(rand, candidates).name
    faults.push({ atMs, kind: 'leave', node })
    freeAt.set(node, Infinity)
  }
  /** When a drained node stops being a candidate for kills. */
  const goneAt = new Map<string, number>()
  for (let d = 0; d < config.drains; d++) {
    const atMs = Math.round((0.2 + aux() * 0.5) * config.faultWindowMs)
    const candidates = nodes.filter((n) => n.roles.includes('process') && (freeAt.get(n.name) ?? Infinity) <= atMs && !goneAt.has(n.name))
    if (candidates.length < 2) continue
    const node = pick(aux, candidates).name
    faults.push({ atMs, kind: 'drain', node })
    goneAt.set(node, atMs)
  }
  // A kill must be over (restarted and settled) before its node's drain begins.
  const killClearMs = config.waitMaxMs + config.downMsMax + RESTART_ALLOWANCE_MS + SETTLE_AFTER_START_MS
  const notDrained = (n: ScheduledNode, atMs: number): boolean => !(atMs + killClearMs >= (goneAt.get(n.name) ?? Infinity))
  for (let p = 0; p < config.partitions; p++) {
    const slotMs = config.faultWindowMs / config.partitions
    const durationMs = Math.round(Math.min(config.partitionMsMin + aux() * (config.partitionMsMax - config.partitionMsMin), slotMs * PARTITION_SLOT_SHARE_MAX))
    const earliest = Math.max(p * slotMs, PARTITION_EARLIEST_SHARE * config.faultWindowMs)
    const atMs = Math.round(earliest + aux() * Math.max(0, (p + 1) * slotMs - durationMs - earliest))
    faults.push({ atMs, kind: 'partition', sides: splitSides(aux, nodes), durationMs })
  }

  const maxDown = Math.max(1, Math.floor(config.nodes / 3))
  const downUntil: number[] = []
  for (let t = config.killEveryMs * between(0.5, 1.5); t < config.faultWindowMs; t += config.killEveryMs * between(0.5, 1.5)) {
    const atMs = Math.round(t)
    const busy = downUntil.filter((u) => u > atMs).length
    const candidates = nodes.filter((n) => (freeAt.get(n.name) ?? Infinity) <= atMs && notDrained(n, atMs))
    if (busy >= maxDown || candidates.length === 0) continue
    const node = pickWeighted(rand, candidates, (n) => n.roles.includes('ingest') ? INGEST_KILL_WEIGHT : 1)
    const moments: KillMoment[] = node.roles.includes('ingest') ? ['now', 'transfer', 'after-drop'] : node.roles.includes('backup') ? ['now', 'transfer'] : ['now', 'transfer', 'processing']
    let when = pick(rand, moments)
    let killAtMs = atMs
    if (when === 'after-drop') {
      const next = files.find((f) => f.atMs >= atMs)
      if (next != null && next.atMs < config.faultWindowMs) killAtMs = next.atMs + Math.round(between(20, 400))
      else when = 'now'
    }
    const downMs = Math.round(between(config.downMsMin, config.downMsMax))
    const waitMs = when === 'transfer' || when === 'processing' ? config.waitMaxMs : 0
    const until = killAtMs + waitMs + downMs + RESTART_ALLOWANCE_MS
    downUntil.push(until)
    freeAt.set(node.name, until + SETTLE_AFTER_START_MS)
    faults.push({ atMs: killAtMs, kind: 'kill', node: node.name, when, downMs })
  }
  faults.sort((a, b) => a.atMs - b.atMs)
  return { format: SCHEDULE_FORMAT, config, nodes, files, faults }
}

/** Checks a schedule read from JSON (a replay file may have been edited by hand). */
export function parseSchedule (text: string): ChurnSchedule {
  let s: any
  try { s = JSON.parse(text) } catch (err: any) { throw new ScheduleError(`schedule is not JSON: ${err.message}`) }
  if (s?.format !== SCHEDULE_FORMAT) throw new ScheduleError(`schedule format must be ${SCHEDULE_FORMAT}, was ${String(s?.format)}`)
  if (!Array.isArray(s.nodes) || !Array.isArray(s.files) || !Array.isArray(s.faults) || typeof s.config !== 'object') throw new ScheduleError('schedule needs config, nodes, files and faults')
  const names = new Set<string>()
  for (const n of s.nodes) {
    if (typeof n?.name !== 'string' || !/^[a-z0-9-]+$/.test(n.name) || names.has(n.name)) throw new ScheduleError(`bad or repeated node name ${JSON.stringify(n?.name)}`)
    if (!Array.isArray(n.roles) || n.roles.length === 0) throw new ScheduleError(`node ${n.name} has no roles`)
    names.add(n.name)
  }
  const fileNames = new Set<string>()
  for (const f of s.files) {
    if (!Number.isFinite(f?.atMs) || !Number.isSafeInteger(f.index) || !Number.isSafeInteger(f.size) || f.size < 0 || typeof f.name !== 'string' || !/^[\w.-]+$/.test(f.name) || fileNames.has(f.name) || (f.via !== 'rsync' && f.via !== 'add')) {
      throw new ScheduleError(`bad file entry ${JSON.stringify(f)}`)
    }
    fileNames.add(f.name)
  }
  for (const f of s.faults) {
    if (!Number.isFinite(f?.atMs)) throw new ScheduleError(`fault without atMs: ${JSON.stringify(f)}`)
    if (f.kind === 'partition') {
      const sides = f.sides
      const ok = Array.isArray(sides) && sides.length === 2 && sides.every((x: unknown) => Array.isArray(x) && x.length > 0 && x.every((n) => names.has(n))) &&
        new Set([...sides[0], ...sides[1]]).size === sides[0].length + sides[1].length && Number.isFinite(f.durationMs) && f.durationMs > 0
      if (!ok) throw new ScheduleError(`bad partition (two non-empty, disjoint sides of known nodes and durationMs > 0): ${JSON.stringify(f)}`)
      continue
    }
    if (f.kind !== 'kill' && f.kind !== 'join' && f.kind !== 'leave' && f.kind !== 'drain') throw new ScheduleError(`unknown fault kind ${String(f.kind)}`)
    if (!names.has(f.node)) throw new ScheduleError(`fault names an unknown node ${String(f.node)}`)
    if (f.kind === 'kill' && (!['now', 'transfer', 'processing', 'after-drop'].includes(f.when) || !(f.downMs >= 0))) throw new ScheduleError(`bad kill ${JSON.stringify(f)}`)
  }
  if (!s.nodes.some((n: ScheduledNode) => n.roles.includes('ingest') && n.joinAtMs == null)) throw new ScheduleError('schedule has no ingest node at the start')
  s.files.sort((a: ScheduledFile, b: ScheduledFile) => a.atMs - b.atMs)
  s.faults.sort((a: ScheduledFault, b: ScheduledFault) => a.atMs - b.atMs)
  const config = { ...defaultConfig(Number(s.config.seed ?? 0)), ...s.config }
  delete config.partition // format 1 before partitions had a boolean here
  return { ...s, config } as ChurnSchedule
}

/** One line per fault, plus a summary of the files: what the run prints before it starts. */
export function formatSchedule (s: ChurnSchedule): string {
  const c = s.config
  const bytes = s.files.reduce((n, f) => n + f.size, 0)
  const viaAdd = s.files.filter((f) => f.via === 'add').length
  const kills = s.faults.filter((f) => f.kind === 'kill')
  const lines = [
    `churn schedule (seed ${c.seed}): ${s.nodes.length} daemons (${s.nodes.map((n) => `${n.name}=${n.roles.join('+')}${n.joinAtMs != null ? '@join' : ''}`).join(' ')})`,
    `  files: ${s.files.length}, ${(bytes / 1048576).toFixed(1)} MiB, ${fmtBytes(c.fileBytesMin)}–${fmtBytes(c.fileBytesMax)}, ${s.files.length - viaAdd} rsync-style, ${viaAdd} via \`filemesh add\`, first at ${fmtS(s.files[0]?.atMs ?? 0)}, last at ${fmtS(s.files.at(-1)?.atMs ?? 0)}`,
    `  faults: ${kills.length} SIGKILL+restart (${countBy(kills.map((k) => k.when))}), ${s.faults.filter((f) => f.kind === 'join').length} join, ${s.faults.filter((f) => f.kind === 'leave').length} leave, ${s.faults.filter((f) => f.kind === 'drain').length} drain, ${s.faults.filter((f) => f.kind === 'partition').length} partition, over ${fmtS(c.faultWindowMs)}; processing command sleeps ${c.processMs} ms`
  ]
  for (const f of s.faults) lines.push(`  ${formatFault(f)}`)
  return lines.join('\n')
}

export function formatFault (f: ScheduledFault): string {
  switch (f.kind) {
    case 'kill': return `t=${fmtS(f.atMs)} KILL ${f.node} (when=${f.when}, restart after ${fmtS(f.downMs)})`
    case 'join': return `t=${fmtS(f.atMs)} JOIN ${f.node} (new data dir)`
    case 'leave': return `t=${fmtS(f.atMs)} LEAVE ${f.node} (SIGTERM, not restarted)`
    case 'drain': return `t=${fmtS(f.atMs)} DRAIN ${f.node} (\`filemesh drain\` until safe to remove, then stopped)`
    case 'partition': return `t=${fmtS(f.atMs)} PARTITION ${f.sides[0].join(',')} | ${f.sides[1].join(',')} for ${fmtS(f.durationMs)}`
  }
}

export function fmtS (ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`
}

function fmtBytes (n: number): string {
  return n >= 1048576 ? `${+(n / 1048576).toFixed(1)} MiB` : `${+(n / 1024).toFixed(1)} KiB`
}

function countBy (xs: string[]): string {
  const m = new Map<string, number>()
  for (const x of xs) m.set(x, (m.get(x) ?? 0) + 1)
  return [...m].map(([k, v]) => `${v} ${k}`).join(', ')
}

/**
 * Two sides for a partition: the first ingest node on side A; of each role (backups, processors, other
 * ingest nodes) one on each side when there are two or more, the rest at random. So the ingest side can
 * place and reassign within itself, and the far side holds files the coordinator cannot reach.
 */
function splitSides (rand: () => number, nodes: readonly ScheduledNode[]): [string[], string[]] {
  const a: string[] = []
  const b: string[] = []
  const roleOf = (n: ScheduledNode): string => n.roles.includes('ingest') ? 'ingest' : n.roles.includes('backup') ? 'backup' : 'process'
  for (const role of ['ingest', 'backup', 'process']) {
    const [first, ...rest] = nodes.filter((n) => roleOf(n) === role).map((n) => n.name)
    if (first == null) continue
    // The first ingest node stays on side A, so "the ingest's side" is always side A.
    const group = role === 'ingest' ? [first, ...shuffle(rand, rest)] : shuffle(rand, [first, ...rest])
    group.forEach((name, i) => { (i === 0 ? a : i === 1 && role !== 'ingest' ? b : rand() < 0.5 ? a : b).push(name) })
  }
  if (b.length === 0) { const moved = a.pop(); if (moved != null) b.push(moved) }
  return [a, b]
}

function shuffle<T> (rand: () => number, xs: T[]): T[] {
  const out = [...xs]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    const t = out[i] as T
    out[i] = out[j] as T
    out[j] = t
  }
  return out
}

function range (n: number): number[] {
  return Array.from({ length: Math.max(0, n) }, (_, i) => i + 1)
}

function pickWeighted<T> (rand: () => number, xs: readonly T[], weight: (x: T) => number): T {
  const total = xs.reduce((n, x) => n + weight(x), 0)
  let r = rand() * total
  for (const x of xs) {
    r -= weight(x)
    if (r < 0) return x
  }
  return pick(rand, xs)
}

function pick<T> (rand: () => number, xs: readonly T[]): T {
  const x = xs[Math.floor(rand() * xs.length)]
  if (x === undefined) throw new Error('pick from an empty list')
  return x
}
