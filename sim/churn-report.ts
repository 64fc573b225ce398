/**
 * How a churn run reports: a human summary (files, lost, corrupt, unsafe deletes, processed more than once
 * with each duplicate traced, recovery after the last fault, throughput, max RSS per node, leftovers) and
 * ONE final JSON line with the same figures, for scripts and CI to parse (`lost`, `corrupt`, `unsafeDeletes`,
 * `duplicates`, `files`, `recoveryMsP99`, ...). Lists are capped so a bad run still prints a readable report.
 */
import type { ChurnReport, FileProblem } from './churn-checker.ts'

export const LIST_LINES_MAX = 20

export interface ReportContext {
  seed: number
  root: string
  scheduleFile: string
  replayCommand: string
  seedCommand: string
  ok: boolean
  kept: boolean
  quiesceLimitMs: number
}

export function summaryJson (r: ChurnReport, ctx: ReportContext): Record<string, unknown> {
  const untraced = r.duplicates.filter((d) => !d.traced).length
  return {
    ok: ctx.ok,
    seed: ctx.seed,
    files: r.files,
    bytes: r.bytes,
    accepted: r.accepted,
    processed: r.processed,
    archived: r.archived,
    archiveAnomalies: r.archiveAnomalies.length,
    lost: r.lost.length,
    stuck: r.stuck.length,
    corrupt: r.corrupt.length,
    unsafeDeletes: r.unsafeDeletes.length,
    deletesChecked: r.deletesChecked,
    injectFailures: r.injectFailures.length,
    duplicates: r.duplicates.length,
    duplicatesPct: pct(r.duplicates.length, r.files),
    duplicateRuns: r.duplicateRuns,
    duplicatesUntraced: untraced,
    reassignments: r.reassignments,
    daemonStaleCompletions: r.daemon.staleCompletions,
    kills: r.kills,
    joins: r.joins,
    leaves: r.leaves,
    drains: r.drains,
    partitions: r.partitions,
    ...(r.partitionsSkipped != null ? { partitionsSkipped: r.partitionsSkipped } : {}),
    faultErrors: r.faultErrors.length,
    recoveryMsP50: r.recoveryMs.p50,
    recoveryMsP99: r.recoveryMs.p99,
    recoveryMsMax: r.recoveryMs.max,
    quiesceMs: r.quiesceMs,
    injectLagMsMax: r.injectLagMs.max,
    restartMsMax: r.restartMs.max,
    elapsedMs: r.elapsedMs,
    throughputMBps: r.throughputMBps,
    maxRssMiB: Object.fromEntries(Object.entries(r.resources).map(([n, x]) => [n, +(x.maxRssBytes / 1048576).toFixed(1)])),
    maxFds: Object.fromEntries(Object.entries(r.resources).map(([n, x]) => [n, x.maxFds])),
    leftovers: r.leftovers.length,
    logErrorLines: Object.values(r.logErrors).reduce((n, m) => n + Object.values(m).reduce((a, b) => a + b, 0), 0),
    ...(ctx.ok ? {} : { replay: ctx.replayCommand, kept: ctx.root })
  }
}

export function formatReport (r: ChurnReport, ctx: ReportContext): string {
  const rows: Array<[string, string]> = []
  const mib = r.bytes / 1048576
  rows.push(['files', `${r.files} injected (${mib.toFixed(1)} MiB), ${r.accepted} accepted, ${r.processed} processed on the right bytes, ${r.archived} archived byte-identical (${r.archiveCopies} archive copies)`])
  rows.push(['lost (I1)', String(r.lost.length)])
  rows.push(['stuck (I1)', `${r.stuck.length}${r.stuck.length > 0 ? ' (unfinished within the limit, a copy still exists)' : ''}`])
  rows.push(['corrupt (I2)', String(r.corrupt.length)])
  rows.push(['unsafe deletes (I3)', `${r.unsafeDeletes.length} of ${r.deletesChecked} ingest deletions checked${r.deletesUnlogged > 0 ? ` (${r.deletesUnlogged} found only in the store: killed before the log line)` : ''}${r.deletesExplainedByStore.length > 0 ? ` (${r.deletesExplainedByStore.length} missing log lines explained by a durable record + SIGKILL)` : ''}`])
  const untraced = r.duplicates.filter((d) => !d.traced).length
  rows.push(['processed >1 (I4)', `${r.duplicates.length} files (${pct(r.duplicates.length, r.files)}%), ${r.duplicateRuns} extra runs, ${r.duplicates.length - untraced} traced to a fault, ${untraced} untraced; daemon counted ${r.daemon.staleCompletions} stale-epoch completions; ${r.reassignments} holder reassignments`])
  rows.push(['faults', `${r.kills} SIGKILL+restart (${Object.entries(r.killsByMoment).map(([k, v]) => `${v} ${k}`).join(', ') || 'none'}), ${r.joins} joins, ${r.leaves} leaves, ${r.drains} drains (safe to remove, then stopped), ${r.partitions} partitions${r.faultErrors.length > 0 ? `, ${r.faultErrors.length} fault actions failed` : ''}`])
  if (r.partitionList.length > 0) rows.push(['partitions', r.partitionList.join('; ')])
  if (r.partitionsSkipped != null) rows.push(['partitions', `SKIPPED: ${r.partitionsSkipped}`])
  rows.push(['recovery (I5)', `${r.recoveryMs.files} files completed after the last fault healed: p50 ${s(r.recoveryMs.p50)}, p99 ${s(r.recoveryMs.p99)}, max ${s(r.recoveryMs.max)}; quiescence ${r.quiesceMs != null ? `${s(r.quiesceMs)} after the last fault healed` : `NOT reached within ${s(ctx.quiesceLimitMs)}`}`])
  rows.push(['load', `injection lag behind schedule p50 ${s(r.injectLagMs.p50)}, max ${s(r.injectLagMs.max)}; daemon (re)start to serving p50 ${s(r.restartMs.p50)}, max ${s(r.restartMs.max)}`])
  rows.push(['throughput', `${r.throughputMBps} MB/s end to end over ${s(r.elapsedMs)} (${(r.files / (r.elapsedMs / 1000)).toFixed(2)} files/s), including the fault window`])
  rows.push(['max RSS (I7)', Object.entries(r.resources).map(([n, x]) => `${n} ${(x.maxRssBytes / 1048576).toFixed(0)} MiB/${x.maxFds} fds`).join(', ')])
  rows.push(['leftovers (I7)', r.leftovers.length === 0 ? 'none (inbox, spool, work, .incoming empty)' : `${r.leftovers.length}: ${cap(r.leftovers).join(', ')}`])
  rows.push(['daemon view', `processed ${r.daemon.processed}, ingest copies deleted ${r.daemon.deleted}, failed ${r.daemon.failed}${r.daemon.statusErrors.length > 0 ? `; status errors: ${r.daemon.statusErrors.join('; ')}` : ''}`])
  const lines = ['', 'filemesh churn summary', ...rows.map(([k, v]) => `  ${k.padEnd(20)} ${v}`)]
  const section = (title: string, items: FileProblem[]): void => {
    if (items.length === 0) return
    lines.push(`${title}:`, ...cap(items.map((p) => `  ${p.name} ${p.cid}: ${p.why}`)))
  }
  section('LOST', r.lost)
  section('STUCK', r.stuck)
  section('CORRUPT', r.corrupt)
  section('UNSAFE DELETES', r.unsafeDeletes)
  if (r.deletesExplainedByStore.length > 0) lines.push('deletions justified from the stores, not the logs:', ...cap(r.deletesExplainedByStore.map((e) => `  ${e}`)))
  if (r.injectFailures.length > 0) lines.push('INJECTION FAILED:', ...cap(r.injectFailures.map((f) => `  ${f.name}: ${f.error}`)))
  if (r.duplicates.length > 0) lines.push('processed more than once:', ...cap(r.duplicates.flatMap((d) => [`  ${d.name} ×${d.runs.length}`, ...d.causes.map((c) => `    ${c}`)])))
  if (r.archiveAnomalies.length > 0) lines.push('archive anomalies (no I1–I3 violation, but a wrong archive state):', ...cap(r.archiveAnomalies.map((a) => `  ${a}`)))
  if (r.unknownArchived.length > 0) lines.push(`archived files not in the ledger: ${cap(r.unknownArchived).join(', ')}`)
  if (r.faultErrors.length > 0) lines.push('fault actions that failed:', ...cap(r.faultErrors.map((e) => `  ${e}`)))
  const errs = Object.entries(r.logErrors)
  if (errs.length > 0) lines.push('error lines in daemon logs:', ...cap(errs.flatMap(([n, m]) => Object.entries(m).map(([msg, c]) => `  ${n}: ${c}× ${msg}`))))
  if (r.logWarnings.length > 0) lines.push(`warnings in daemon logs: ${r.logWarnings.slice(0, 8).map(([m, c]) => `${c}× ${m}`).join('; ')}`)
  if (r.unparsedLogLines > 0 || r.tornRecords > 0) lines.push(`(${r.unparsedLogLines} non-JSON log lines, ${r.tornRecords} torn processing records skipped)`)
  lines.push(`result: ${ctx.ok ? 'PASS (no I1–I3 violation)' : 'FAIL'}  seed ${ctx.seed}`)
  if (!ctx.ok) {
    lines.push(`replay:  ${ctx.replayCommand}`)
    lines.push(`or:      ${ctx.seedCommand}`)
  }
  if (ctx.kept) lines.push(`run directory kept: ${ctx.root} (daemon logs NAME.log, processing records records/, schedule.json, faults.txt, checker-input.json; judge it again with: npm run churn -- --check ${ctx.root})`)
  return lines.join('\n')
}

function pct (n: number, total: number): number {
  return total === 0 ? 0 : +(100 * n / total).toFixed(2)
}

function s (ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`
}

function cap (xs: string[]): string[] {
  return xs.length <= LIST_LINES_MAX ? xs : [...xs.slice(0, LIST_LINES_MAX), `  … and ${xs.length - LIST_LINES_MAX} more`]
}
