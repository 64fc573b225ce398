/**
 * A second look at an ingest deletion the log check (I3) could not justify. A daemon writes a log line right
 * after the durable write it reports, so a SIGKILL can land between the two: the receipt (or the holder's
 * stored copy) is durable, the line never appears, and after the restart the step is not logged again (a
 * repeated receipt is a no-op). For such a deletion only, the checker opens the stopped daemons' stores and
 * accepts the gap if the durable record shows the step happened before the deletion AND that node was
 * SIGKILLed between the step and the deletion. Anything else stays an unsafe delete.
 */
import fs from 'node:fs/promises'
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

/** When each (coordinator, cid) was released, per the coordinator's store; absent if not released. */
export async function releaseTimes (items: Array<{ coordinator: string, cid: string }>, nodes: CheckedNode[]): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  const byNode = new Map<string, string[]>()
  for (const { coordinator, cid } of items) byNode.set(coordinator, [...(byNode.get(coordinator) ?? []), cid])
  for (const [name, cids] of byNode) {
    const node = nodes.find((n) => n.name === name)
    const store = node != null ? await openStore(node) : null
    if (store == null) continue
    try {
      for (const cid of cids) {
        const rec = await store.getIngest(cid)
        if (rec?.phase === 'released' && rec.releasedAt != null) out.set(`${name}/${cid}`, Date.parse(rec.releasedAt))
      }
    } finally {
      await store.close().catch(() => {})
    }
  }
  return out
}

/** Opens a stopped daemon's store read-only in effect; never creates a database where the daemon left none. */
async function openStore (node: CheckedNode): Promise<Store | null> {
  const dir = path.join(node.dataDir, 'db')
  if (!await fs.stat(dir).then((st) => st.isDirectory(), () => false)) return null
  const s = new Store(dir)
  return await s.open().then(() => s, () => null)
}

export async function explainFromStores (suspects: SuspectDelete[], nodes: CheckedNode[], faults: ExecutedFault[]): Promise<{ unsafe: FileProblem[], explained: string[] }> {
  const unsafe: FileProblem[] = []
  const explained: string[] = []
  const stores = new Map<string, Store | null>()
  const open = async (node: CheckedNode): Promise<Store | null> => {
    if (!stores.has(node.name)) stores.set(node.name, await openStore(node))
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
