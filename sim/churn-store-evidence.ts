/**
 * A second look at an ingest deletion the log check (I3) could not justify. A daemon writes a log line right
 * after the durable write it reports, so a SIGKILL can land between the two: the receipt (or the holder's
 * stored copy) is durable, the line never appears, and after the restart the step is not logged again (a
 * repeated receipt is a no-op). For such a deletion only, the checker opens the stopped daemons' stores and
 * accepts the gap if the durable record shows the step happened before the deletion AND that node was
 * SIGKILLed between the step and the deletion. Anything else stays an unsafe delete.
 */
import path from 'node:path'
import type { HolderRole } from '../protocols/messages.ts'
import { Store } from '../node/store.ts'
import type { CheckedNode, ExecutedFault, FileProblem } from './churn-checker.ts'

/** How far before the recorded time of a step a kill may be and still explain its missing log line (clock of the record vs. of the harness). */
export const EXPLAIN_SLACK_MS = 1_000

export interface LogGap {
  kind: 'receipt' | 'stored'
  role: HolderRole
  /** The holder that sent the receipt, when known (for a 'stored' gap). */
  peer?: string
}

export interface SuspectDelete {
  coordinator: string
  cid: string
  name: string
  deletedAtMs: number
  gaps: LogGap[]
  /** Problems no store can explain (a receipt from a holder that is not the current one). */
  hard: string[]
  why: string
}

export async function explainFromStores (suspects: SuspectDelete[], nodes: CheckedNode[], faults: ExecutedFault[]): Promise<{ unsafe: FileProblem[], explained: string[] }> {
  const unsafe: FileProblem[] = []
  const explained: string[] = []
  const stores = new Map<string, Store | null>()
  const open = async (node: CheckedNode): Promise<Store | null> => {
    if (!stores.has(node.name)) {
      const s = new Store(path.join(node.dataDir, 'db'))
      stores.set(node.name, await s.open().then(() => s, () => null))
    }
    return stores.get(node.name) ?? null
  }
  const killedBetween = (node: string, fromMs: number, toMs: number): ExecutedFault | undefined =>
    faults.find((f) => f.kind === 'kill' && f.node === node && f.atMs >= fromMs - EXPLAIN_SLACK_MS && f.atMs <= toMs)
  try {
    for (const s of suspects) {
      const reasons: string[] = []
      let ok = s.hard.length === 0
      for (const gap of s.gaps) {
        if (!ok) break
        const holder = gap.kind === 'receipt' ? nodes.find((n) => n.name === s.coordinator) : nodes.find((n) => n.peerId === gap.peer) ?? nodes.find((n) => n.roles.includes(gap.role === 'owner' ? 'process' : 'backup'))
        const store = holder != null ? await open(holder) : null
        let atIso: string | undefined
        if (store != null && gap.kind === 'receipt') {
          const rec = await store.getIngest(s.cid)
          atIso = gap.role === 'owner' ? rec?.ownerStoredAt : rec?.backupStoredAt
        } else if (store != null) {
          atIso = (await store.getHolder(s.cid, gap.role))?.storedAt
        }
        const atMs = atIso != null ? Date.parse(atIso) : NaN
        const kill = holder != null && Number.isFinite(atMs) && atMs <= s.deletedAtMs ? killedBetween(holder.name, atMs, s.deletedAtMs) : undefined
        if (kill == null) { ok = false; break }
        reasons.push(`${gap.kind} ${gap.role} recorded durably on ${holder?.name ?? '?'} at ${atIso ?? '?'}, which was SIGKILLed ${kill.atMs - atMs} ms later, before its log line`)
      }
      if (ok) explained.push(`${s.name}: ${reasons.join('; ')}`)
      else unsafe.push({ name: s.name, cid: s.cid, why: s.why })
    }
  } finally {
    for (const store of stores.values()) await store?.close().catch(() => {})
  }
  return { unsafe, explained }
}
