/**
 * The churn harness's independent checker: from its own ledger (name, size, sha256, reference CID of every
 * injected file), the backups' archive directories, the processing command's records, the daemons' JSON
 * logs and their final `status --json`, it evaluates DESIGN §5:
 *   I1 no loss     every injected file processed ≥1 on the right bytes and archived byte-identical on some
 *                  backup; otherwise `stuck` (a copy still exists in an inbox, spool or work dir) or `lost`
 *   I2 corruption  no archived copy and no processed copy differs from the ledger's bytes
 *   I3 deletion    each ingest deletion is preceded, in that ingest's log, by 'receipt recorded' for owner and
 *                  backup from the holders current at that point, and each of them logged 'stored durably'
 *                  before it (churn-deletions.ts)
 *   I4 multiplicity runs per file from the command's records; each extra run traced to a fault (a kill or
 *                  leave of the first run's node, a partition that cut an owner off from its coordinator,
 *                  or a kill of a coordinator)
 *   I5 liveness    per-file completion after the last fault healed; time to quiescence
 *   I7 resources   max RSS and fds per node; idle directories empty
 * It never trusts the daemon's own counts for a verdict; they are reported next to its own for comparison.
 */
import type { NodeStatus } from '../node/status.ts'
import { readRunRecords } from './churn-command.ts'
import type { RunRecord } from './churn-command.ts'
import type { ChurnLedgerEntry } from './churn-injector.ts'
import { MSG_DELETED, MSG_OWNER_REASSIGNED, MSG_PLACED, MSG_PROCESSED, MSG_RECEIPT, MSG_RECEIVED, MSG_STALE, readNodeLog } from './churn-logs.ts'
import type { LogEvent, NodeLog } from './churn-logs.ts'
import type { NodeResources } from './churn-resources.ts'
import type { KillMoment } from './churn-schedule.ts'
import { findCopies, inspectArchives } from './churn-archives.ts'
import { checkDeletions } from './churn-deletions.ts'
import { traceDuplicates } from './churn-trace.ts'
import type { DuplicateTrace } from './churn-trace.ts'

export interface CheckedNode {
  name: string
  roles: string[]
  dataDir: string
  logPath: string
  peerId?: string
  archiveDir?: string
  /** The processing command's record file (processors). */
  recordPath?: string
}

export interface ExecutedFault {
  kind: 'kill' | 'join' | 'leave' | 'drain' | 'partition'
  /** The node faulted; PARTITION_NODE for a partition. */
  node: string
  /** Partition: the two sides, by node name. */
  sides?: [string[], string[]]
  /** Partition: nodes that still saw a live member across the cut just before the heal (empty: the cut held). */
  crossSeen?: string[]
  /** Drain: from the drain request to "safe to remove". */
  drainMs?: number
  when?: KillMoment
  scheduledAtMs: number
  /** Wall-clock ms of the SIGKILL / start / SIGTERM. */
  atMs: number
  /** For 'transfer' / 'processing' kills: the moment was seen before the kill (else it timed out). */
  momentMet?: boolean
  /** Wall-clock ms when the node served again (kill), first served (join), was stopped (leave, drain), or the cut healed (partition). */
  healedAtMs?: number
  /** How long the (re)start took until the daemon served. */
  startMs?: number
  error?: string
}

export interface CheckerInput {
  ledger: ChurnLedgerEntry[]
  injectFailures: Array<{ name: string, error: string }>
  nodes: CheckedNode[]
  faults: ExecutedFault[]
  statuses: Record<string, NodeStatus | { error: string }>
  resources: Map<string, NodeResources>
  leftovers: string[]
  startedAtMs: number
  lastHealAtMs: number
  quiescedAtMs?: number
  quiesceLimitMs: number
  /** Why the schedule's partitions were not carried out (no network namespaces here). */
  partitionsSkipped?: string
}

export const PARTITION_NODE = 'mesh'

export interface FileProblem {
  name: string
  cid: string
  why: string
}

export interface ChurnReport {
  files: number
  bytes: number
  injectFailures: Array<{ name: string, error: string }>
  accepted: number
  processed: number
  archived: number
  lost: FileProblem[]
  stuck: FileProblem[]
  corrupt: FileProblem[]
  unsafeDeletes: FileProblem[]
  /** Ingest deletions the I3 check looked at (so a pass is not vacuous). */
  deletesChecked: number
  /** Of those, deletions a SIGKILL kept out of the log, found in the coordinator's store. */
  deletesUnlogged: number
  /** Deletions whose missing log line a durable record and a SIGKILL explain (see churn-store-evidence.ts). */
  deletesExplainedByStore: string[]
  /** Owner and backup reassignments logged by coordinators (the daemon's answer to a holder gone too long). */
  reassignments: number
  duplicates: DuplicateTrace[]
  duplicateRuns: number
  archiveCopies: number
  unknownArchived: string[]
  /** Not I1–I3 violations, but wrong archive states: files missing from the archive index, a CID stored twice on one backup. */
  archiveAnomalies: string[]
  daemon: { processed: number, deleted: number, failed: number, staleCompletions: number, statusErrors: string[] }
  kills: number
  killsByMoment: Record<string, number>
  joins: number
  leaves: number
  /** Drains that reached "safe to remove" and stopped the node. */
  drains: number
  /** Partitions carried out (cut and healed). */
  partitions: number
  /** Sides and length of each partition, for the summary. */
  partitionList: string[]
  partitionsSkipped?: string
  faultErrors: string[]
  recoveryMs: { p50: number, p99: number, max: number, files: number }
  /** Injection finished this late against the schedule (host load); restarts took this long to serve. */
  injectLagMs: { p50: number, max: number }
  restartMs: { p50: number, max: number }
  quiesceMs: number | null
  elapsedMs: number
  throughputMBps: number
  resources: Record<string, NodeResources>
  leftovers: string[]
  logErrors: Record<string, Record<string, number>>
  /** warn-level messages over all nodes, most frequent first. */
  logWarnings: Array<[string, number]>
  unparsedLogLines: number
  tornRecords: number
}

export async function check (input: CheckerInput): Promise<ChurnReport> {
  const logs = await Promise.all(input.nodes.map(async (n) => await readNodeLog(n.name, n.logPath)))
  const runs: RunRecord[] = []
  let tornRecords = 0
  for (const n of input.nodes) {
    if (n.recordPath == null) continue
    const { records, torn } = await readRunRecords(n.recordPath)
    runs.push(...records)
    tornRecords += torn
  }
  const byCid = new Map(input.ledger.map((e) => [e.cid, e]))
  const byName = new Map(input.ledger.map((e) => [e.name, e]))

  // I2 (archives) and the archived half of I1.
  const archives = await inspectArchives(input.nodes.filter((n) => n.roles.includes('backup')), byCid, byName)
  const corrupt: FileProblem[] = [...archives.corrupt]
  const archivedOk = archives.archivedOk

  // I2 (processed bytes) and the processed half of I1.
  const processedOk = new Set<string>()
  const runsByCid = new Map<string, RunRecord[]>()
  for (const r of runs) {
    const entry = byCid.get(r.cid) ?? byName.get(r.name)
    if (entry == null) continue
    runsByCid.set(entry.cid, [...(runsByCid.get(entry.cid) ?? []), r])
    if (r.sha256 === entry.sha256) processedOk.add(entry.cid)
    else corrupt.push({ name: entry.name, cid: entry.cid, why: `${r.node} processed bytes with sha256 ${r.sha256.slice(0, 12)}… (attempt ${r.attempt})` })
  }

  // I1: what is missing, and whether a copy still exists somewhere (stuck) or nowhere (lost).
  const lost: FileProblem[] = []
  const stuck: FileProblem[] = []
  const incomplete = input.ledger.filter((e) => !processedOk.has(e.cid) || !archivedOk.has(e.cid))
  const copies = incomplete.length > 0 ? await findCopies(input.nodes, new Set(incomplete.map((e) => e.sha256))) : new Map<string, string[]>()
  const accepted = acceptedCids(logs)
  for (const e of incomplete) {
    const missing = [!accepted.has(e.cid) ? 'never accepted by an ingest node' : '', !processedOk.has(e.cid) ? 'not processed' : '', !archivedOk.has(e.cid) ? 'not archived' : ''].filter((s) => s !== '').join(', ')
    const where = copies.get(e.sha256) ?? []
    if (where.length > 0) stuck.push({ name: e.name, cid: e.cid, why: `${missing}; a copy is still in ${where.join(', ')}` })
    else lost.push({ name: e.name, cid: e.cid, why: `${missing}; no intact copy anywhere in the mesh` })
  }

  // I3: deletion only after both receipts, each from the current holder, each holder's copy stored durably first.
  const deletions = await checkDeletions(logs, input.nodes, input.faults, byCid)

  // I4.
  const duplicates = traceDuplicates(runsByCid, byCid, input.faults, input.nodes, input.startedAtMs, reassignmentTimes(logs))
  const duplicateRuns = duplicates.reduce((n, d) => n + d.runs.length - 1, 0)

  // I5: per-file completion (outcome recorded and ingest copy deleted) after the last fault healed.
  const done = completionTimes(logs)
  const afterHeal = input.ledger.map((e) => done.get(e.cid)).filter((t): t is number => t != null && t > input.lastHealAtMs).map((t) => t - input.lastHealAtMs).sort((a, b) => a - b)
  const endMs = input.quiescedAtMs ?? Math.max(input.lastHealAtMs, ...done.values())
  const bytes = input.ledger.reduce((n, e) => n + e.size, 0)
  const elapsedMs = Math.max(1, endMs - input.startedAtMs)

  const daemon = { processed: 0, deleted: 0, failed: 0, staleCompletions: 0, statusErrors: [] as string[] }
  for (const [name, s] of Object.entries(input.statuses)) {
    if ('error' in s) { daemon.statusErrors.push(`${name}: ${s.error}`); continue }
    daemon.processed += s.files.processed
    daemon.deleted += s.files.deletedFromIngest
    daemon.failed += s.files.failed
    daemon.staleCompletions += s.files.staleCompletions
  }
  const kills = input.faults.filter((f) => f.kind === 'kill')
  const partitions = input.faults.filter((f) => f.kind === 'partition' && f.error == null)
  const killsByMoment: Record<string, number> = {}
  for (const k of kills) {
    const key = k.when === 'transfer' || k.when === 'processing' ? `${k.when}${k.momentMet === true ? '' : ' (moment not seen)'}` : k.when ?? 'now'
    killsByMoment[key] = (killsByMoment[key] ?? 0) + 1
  }
  const logErrors: Record<string, Record<string, number>> = {}
  for (const l of logs) if (l.errors.size > 0) logErrors[l.node] = Object.fromEntries(l.errors)
  const warnings = new Map<string, number>()
  for (const l of logs) for (const [msg, c] of l.warnings) warnings.set(msg, (warnings.get(msg) ?? 0) + c)
  return {
    files: input.ledger.length,
    bytes,
    injectFailures: input.injectFailures,
    accepted: input.ledger.filter((e) => accepted.has(e.cid)).length,
    processed: processedOk.size,
    archived: archivedOk.size,
    lost,
    stuck,
    corrupt,
    unsafeDeletes: deletions.unsafe,
    deletesChecked: deletions.checked,
    deletesUnlogged: deletions.unlogged,
    deletesExplainedByStore: deletions.explained,
    reassignments: deletions.reassignments,
    duplicates,
    duplicateRuns,
    archiveCopies: archives.copies,
    unknownArchived: archives.unknown,
    archiveAnomalies: archives.anomalies,
    daemon,
    kills: kills.length,
    killsByMoment,
    joins: input.faults.filter((f) => f.kind === 'join').length,
    leaves: input.faults.filter((f) => f.kind === 'leave').length,
    drains: input.faults.filter((f) => f.kind === 'drain' && f.error == null && f.healedAtMs != null).length,
    partitions: partitions.length,
    partitionList: partitions.map((p) => `at +${((p.atMs - input.startedAtMs) / 1000).toFixed(1)}s for ${(((p.healedAtMs ?? p.atMs) - p.atMs) / 1000).toFixed(1)}s: ${p.sides?.[0].join(',') ?? '?'} | ${p.sides?.[1].join(',') ?? '?'}${p.crossSeen == null ? '' : p.crossSeen.length === 0 ? ' (held: no node saw the other side before the heal)' : ` (LEAKED: ${p.crossSeen.join(', ')})`}`),
    ...(input.partitionsSkipped != null ? { partitionsSkipped: input.partitionsSkipped } : {}),
    faultErrors: input.faults.filter((f) => f.error != null).map((f) => `${f.kind} ${f.node}: ${f.error ?? ''}`),
    recoveryMs: { p50: quantile(afterHeal, 0.5), p99: quantile(afterHeal, 0.99), max: afterHeal.at(-1) ?? 0, files: afterHeal.length },
    injectLagMs: spread(input.ledger.map((e) => e.lagMs)),
    restartMs: spread(input.faults.flatMap((f) => f.startMs != null ? [f.startMs] : [])),
    quiesceMs: input.quiescedAtMs != null ? Math.max(0, input.quiescedAtMs - input.lastHealAtMs) : null,
    elapsedMs,
    throughputMBps: +(bytes / 1e6 / (elapsedMs / 1000)).toFixed(2),
    resources: Object.fromEntries(input.resources),
    leftovers: input.leftovers,
    logErrors,
    logWarnings: [...warnings].sort((a, b) => b[1] - a[1]),
    unparsedLogLines: logs.reduce((n, l) => n + l.unparsed, 0),
    tornRecords
  }
}

/** True when no I1–I3 invariant was violated. */
export function invariantsHold (r: ChurnReport): boolean {
  return r.lost.length === 0 && r.stuck.length === 0 && r.corrupt.length === 0 && r.unsafeDeletes.length === 0 && r.injectFailures.length === 0
}

/** Files an ingest node recorded: 'file received', or any later coordinator event (a SIGKILL can fall between the commit and its log line). */
function acceptedCids (logs: NodeLog[]): Set<string> {
  const out = new Set<string>()
  const coordinatorMsgs = new Set([MSG_RECEIVED, MSG_PLACED, MSG_RECEIPT, MSG_DELETED, MSG_PROCESSED])
  for (const l of logs) for (const ev of l.events) if (coordinatorMsgs.has(ev.msg) && ev.cid != null) out.add(ev.cid)
  return out
}

/** When each file's owner was reassigned, per its coordinators' logs. */
function reassignmentTimes (logs: NodeLog[]): Map<string, number[]> {
  const out = new Map<string, number[]>()
  for (const l of logs) for (const ev of l.events) if (ev.msg === MSG_OWNER_REASSIGNED && ev.cid != null) out.set(ev.cid, [...(out.get(ev.cid) ?? []), ev.timeMs])
  return out
}

/** Wall-clock ms at which each file was finished for its coordinator: outcome recorded and ingest copy deleted. */
function completionTimes (logs: NodeLog[]): Map<string, number> {
  const processed = new Map<string, number>()
  const deleted = new Map<string, number>()
  const note = (m: Map<string, number>, ev: LogEvent): void => { if (ev.cid != null) m.set(ev.cid, Math.max(m.get(ev.cid) ?? 0, ev.timeMs)) }
  for (const l of logs) {
    for (const ev of l.events) {
      if (ev.msg === MSG_PROCESSED || ev.msg === MSG_STALE) note(processed, ev)
      else if (ev.msg === MSG_DELETED) note(deleted, ev)
    }
  }
  const out = new Map<string, number>()
  for (const [cid, t] of deleted) {
    const p = processed.get(cid)
    if (p != null) out.set(cid, Math.max(p, t))
  }
  return out
}

function spread (xs: number[]): { p50: number, max: number } {
  const sorted = [...xs].sort((a, b) => a - b)
  return { p50: quantile(sorted, 0.5), max: sorted.at(-1) ?? 0 }
}

export function quantile (sorted: number[], q: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0
}
