/**
 * DESIGN §5 I4 for the churn harness: every file processed more than once must be explained by a fault.
 * For each pair of consecutive runs (a, b) of one file, the explanation is, in this order:
 *   1. a fault of a's node (SIGKILL or leave) between a's start and b's start: the owner died while the
 *      command ran (its orphaned command may still finish and record), or after the command finished but
 *      before "processed" was durably recorded;
 *   2. a partition that separated an owner from the file's coordinator (the ingest node that accepted it):
 *      one of the two runs is on the far side of the cut, and the cut overlaps the window between the runs
 *      or the coordinator reassigned the file's owner while the cut was in force (the far owner kept its
 *      copy and ran it, before or after the heal, while a new owner on the coordinator's side did too);
 *   3. a fault of a coordinator (ingest) in the same window, a weaker explanation.
 * A pair with none is untraced: a duplicate without a fault, which the design says cannot happen. A drain
 * never explains a duplicate (it hands off only files not yet started); one in the window is named in the
 * untraced line as a lead.
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

/**
 * `reassignedAt`: per CID, when a coordinator logged 'owner reassigned' (ties a pair of runs to a partition
 * even when both ran after the heal).
 */
export function traceDuplicates (runsByCid: Map<string, RunRecord[]>, byCid: Map<string, ChurnLedgerEntry>, faults: ExecutedFault[], nodes: CheckedNode[], t0Ms = 0, reassignedAt = new Map<string, number[]>()): DuplicateTrace[] {
  const ingests = new Set(nodes.filter((n) => n.roles.includes('ingest')).map((n) => n.name))
  const rel = (ms: number): string => `+${((ms - t0Ms) / 1000).toFixed(1)}s`
  const partitions = faults.filter((f) => f.kind === 'partition' && f.sides != null && f.error == null)
  const out: DuplicateTrace[] = []
  for (const [cid, all] of runsByCid) {
    if (all.length < 2) continue
    const runs = [...all].sort((a, b) => a.startMs - b.startMs)
    const coordinator = byCid.get(cid)?.ingest
    const causes: string[] = []
    let traced = true
    for (let i = 1; i < runs.length; i++) {
      const a = runs[i - 1] as RunRecord
      const b = runs[i] as RunRecord
      const inWindow = (f: ExecutedFault): boolean => f.atMs >= a.startMs - TRACE_SLACK_MS && f.atMs <= b.startMs + TRACE_SLACK_MS
      const stops = (f: ExecutedFault): boolean => f.kind === 'kill' || f.kind === 'leave'
      const runs2 = `run ${i} (${a.node} attempt ${a.attempt} epoch ${a.epoch}, ${rel(a.startMs)}–${rel(a.endMs)}) and run ${i + 1} (${b.node} attempt ${b.attempt} epoch ${b.epoch}, ${rel(b.startMs)})`
      const own = faults.find((f) => stops(f) && f.node === a.node && inWindow(f))
      if (own != null) {
        const phase = own.atMs < a.endMs ? 'while the command ran' : 'after the command finished, before "processed" was recorded'
        causes.push(`${own.kind === 'kill' ? 'SIGKILL' : 'leave'} of ${own.node} at ${rel(own.atMs)}${own.when != null ? ` (when=${own.when})` : ''} ${phase}, between ${runs2}`)
        continue
      }
      const cut = partitions.map((p) => ({ p, why: partitionExplains(p, a, b, coordinator, reassignedAt.get(cid) ?? []) })).find((x) => x.why != null)
      if (cut != null) {
        const p = cut.p
        causes.push(`partition ${rel(p.atMs)}–${p.healedAtMs != null ? rel(p.healedAtMs) : '?'} (${p.sides?.[0].join(',') ?? ''} | ${p.sides?.[1].join(',') ?? ''}): ${cut.why}, between ${runs2}`)
        continue
      }
      const coord = faults.find((f) => stops(f) && ingests.has(f.node) && inWindow(f))
      if (coord != null) {
        causes.push(`${coord.kind === 'kill' ? 'SIGKILL' : 'leave'} of ${coord.node} at ${rel(coord.atMs)}${coord.when != null ? ` (when=${coord.when})` : ''} (coordinator) between ${runs2}`)
        continue
      }
      traced = false
      const drain = faults.find((f) => f.kind === 'drain' && (f.node === a.node || f.node === b.node) && inWindow(f))
      causes.push(`UNTRACED: no fault of ${a.node}, partition or fault of a coordinator between ${runs2}${drain != null ? ` (${drain.node} was drained at ${rel(drain.atMs)}: a drain should not duplicate)` : ''}`)
    }
    out.push({ name: byCid.get(cid)?.name ?? '?', cid, runs: runs.map(({ node, attempt, epoch, startMs, endMs }) => ({ node, attempt, epoch, startMs, endMs })), causes, traced })
  }
  return out.sort((x, y) => x.name.localeCompare(y.name))
}

/** Why partition `p` explains runs a then b of a file coordinated by `coordinator`, or undefined. */
function partitionExplains (p: ExecutedFault, a: RunRecord, b: RunRecord, coordinator: string | undefined, reassigned: number[]): string | undefined {
  const sides = p.sides
  if (sides == null) return undefined
  const sideOf = (node: string | undefined): number => node == null ? -1 : sides[0].includes(node) ? 0 : sides[1].includes(node) ? 1 : -1
  const c = sideOf(coordinator)
  const far = [a.node, b.node].filter((n) => c >= 0 ? sideOf(n) !== c : false)
  // Without a known coordinator side, two runs on opposite sides are the evidence.
  if (c < 0 && !(sideOf(a.node) >= 0 && sideOf(b.node) >= 0 && sideOf(a.node) !== sideOf(b.node))) return undefined
  if (c >= 0 && far.length === 0) return undefined
  const healed = p.healedAtMs ?? Infinity
  const who = c >= 0 ? `${[...new Set(far)].join(' and ')} cut off from the coordinator ${coordinator ?? ''}` : `${a.node} and ${b.node} on opposite sides`
  if (p.atMs <= b.startMs + TRACE_SLACK_MS && healed >= a.startMs - TRACE_SLACK_MS) return `${who} while the runs started`
  const r = reassigned.find((t) => t >= p.atMs - TRACE_SLACK_MS && t <= healed + TRACE_SLACK_MS)
  if (r != null) return `${who}; the coordinator reassigned the owner during the cut`
  return undefined
}
