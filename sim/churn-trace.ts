/**
 * DESIGN §5 I4 for the churn harness: every file processed more than once must be explained by a fault.
 * For each pair of consecutive runs (a, b) of one file, the explanation is a fault of a's node (SIGKILL or
 * leave) between a's start and b's start: the owner died while the command ran (its orphaned command may
 * still finish and record), or after the command finished but before "processed" was durably recorded.
 * Failing that, a fault of a coordinator (ingest) in the same window is named as a weaker explanation.
 * A pair with neither is untraced: a duplicate without a fault, which the design says cannot happen.
 */
import type { RunRecord } from './churn-command.ts'
import type { CheckedNode, ExecutedFault } from './churn-checker.ts'
import type { ChurnLedgerEntry } from './churn-injector.ts'

/** Tolerance between the shell's `date` and the harness's clock (same host, different processes). */
export const TRACE_SLACK_MS = 250

export interface DuplicateTrace {
  name: string
  cid: string
  runs: Array<Pick<RunRecord, 'node' | 'attempt' | 'epoch' | 'startMs' | 'endMs'>>
  /** One explanation per extra run. */
  causes: string[]
  traced: boolean
}

export function traceDuplicates (runsByCid: Map<string, RunRecord[]>, byCid: Map<string, ChurnLedgerEntry>, faults: ExecutedFault[], nodes: CheckedNode[], t0Ms = 0): DuplicateTrace[] {
  const ingests = new Set(nodes.filter((n) => n.roles.includes('ingest')).map((n) => n.name))
  const rel = (ms: number): string => `+${((ms - t0Ms) / 1000).toFixed(1)}s`
  const out: DuplicateTrace[] = []
  for (const [cid, all] of runsByCid) {
    if (all.length < 2) continue
    const runs = [...all].sort((a, b) => a.startMs - b.startMs)
    const causes: string[] = []
    let traced = true
    for (let i = 1; i < runs.length; i++) {
      const a = runs[i - 1] as RunRecord
      const b = runs[i] as RunRecord
      const inWindow = (f: ExecutedFault): boolean => f.kind !== 'join' && f.atMs >= a.startMs - TRACE_SLACK_MS && f.atMs <= b.startMs + TRACE_SLACK_MS
      const own = faults.find((f) => f.node === a.node && inWindow(f))
      const coord = own == null ? faults.find((f) => ingests.has(f.node) && inWindow(f)) : undefined
      const f = own ?? coord
      const runs2 = `run ${i} (${a.node} attempt ${a.attempt} epoch ${a.epoch}, ${rel(a.startMs)}–${rel(a.endMs)}) and run ${i + 1} (${b.node} attempt ${b.attempt} epoch ${b.epoch}, ${rel(b.startMs)})`
      if (f == null) {
        traced = false
        causes.push(`UNTRACED: no fault of ${a.node} or of a coordinator between ${runs2}`)
        continue
      }
      const what = `${f.kind === 'kill' ? 'SIGKILL' : 'leave'} of ${f.node} at ${rel(f.atMs)}${f.when != null ? ` (when=${f.when})` : ''}`
      const phase = f.atMs < a.endMs ? 'while the command ran' : 'after the command finished, before "processed" was recorded'
      causes.push(own != null ? `${what} ${phase}, between ${runs2}` : `${what} (coordinator) between ${runs2}`)
    }
    out.push({ name: byCid.get(cid)?.name ?? '?', cid, runs: runs.map(({ node, attempt, epoch, startMs, endMs }) => ({ node, attempt, epoch, startMs, endMs })), causes, traced })
  }
  return out.sort((x, y) => x.name.localeCompare(y.name))
}
