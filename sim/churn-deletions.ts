/**
 * DESIGN §5 I3 for the churn checker: no ingest copy deleted before durable receipts from owner and backup.
 * Read from each ingest node's own log, in its order: every 'ingest copy deleted after both receipts' must
 * follow a 'receipt recorded' for the owner and for the backup, each from the holder current at that point
 * (placement and reassignments followed; a reassignment voids that role's receipt, as the coordinator does),
 * and each of those holders must have logged 'stored durably' earlier (cross-process, by wall clock: the
 * holder logs after its fsyncs and before it sends the receipt). A gap a SIGKILL can explain (the durable
 * write happened, the log line did not) is settled from the stores: churn-store-evidence.ts. A deletion the
 * log does not show at all (SIGKILL right after it) is found in the coordinator's store and judged the same way.
 */
import type { CheckedNode, ExecutedFault, FileProblem } from './churn-checker.ts'
import type { ChurnLedgerEntry } from './churn-injector.ts'
import { MSG_BACKUP_REASSIGNED, MSG_DELETED, MSG_OWNER_REASSIGNED, MSG_PLACED, MSG_RECEIPT, MSG_STORED } from './churn-logs.ts'
import type { NodeLog } from './churn-logs.ts'
import { explainFromStores, releaseTimes } from './churn-store-evidence.ts'
import type { LogGap, SuspectDelete } from './churn-store-evidence.ts'

type Holders = { owner?: string, backup?: string }

export interface DeletionCheck {
  unsafe: FileProblem[]
  checked: number
  /** Deletions found in a coordinator's store but not in its log (checked all the same, at the store's time). */
  unlogged: number
  explained: string[]
  reassignments: number
}

export async function checkDeletions (logs: NodeLog[], nodes: CheckedNode[], faults: ExecutedFault[], byCid: Map<string, ChurnLedgerEntry>): Promise<DeletionCheck> {
  const unsafeDeletes: FileProblem[] = []
  const suspects: SuspectDelete[] = []
  let deletesChecked = 0
  let unlogged = 0
  let reassignments = 0
  /** First 'stored durably' per cid/role, and per cid/role/peer. */
  const storedAt = new Map<string, number>()
  const peerOf = new Map(nodes.map((n) => [n.name, n.peerId]))
  for (const log of logs) {
    for (const ev of log.events) {
      if (ev.msg !== MSG_STORED || ev.cid == null || ev.role == null) continue
      const peer = peerOf.get(log.node) ?? ''
      for (const key of [`${ev.cid}/${ev.role}`, `${ev.cid}/${ev.role}/${peer}`]) storedAt.set(key, Math.min(storedAt.get(key) ?? Infinity, ev.timeMs))
    }
  }
  /** Judges one deletion by `coordinator` at `deletedAtMs` against the receipts and holders its log showed by then. */
  const judge = (coordinator: string, cid: string, deletedAtMs: number, where: string, have: Map<string, { peer: string, timeMs: number }>, current: Holders | undefined): void => {
    deletesChecked++
    const name = byCid.get(cid)?.name ?? '?'
    const why: string[] = []
    const gaps: LogGap[] = []
    const hard: string[] = []
    for (const role of ['owner', 'backup'] as const) {
      const receipt = have.get(role)
      const from = receipt != null && receipt.timeMs <= deletedAtMs ? receipt.peer : undefined
      if (from == null) {
        why.push(`no '${MSG_RECEIPT}' role=${role} before it in ${coordinator}'s log`)
        gaps.push({ kind: 'receipt', role })
      } else if (current?.[role] != null && from !== current[role]) {
        hard.push(`the ${role} receipt came from ${from.slice(-8)}, but the current ${role} is ${String(current[role]).slice(-8)}`)
      }
      const holder = from ?? current?.[role]
      const storedKey = holder != null && holder !== '' ? `${cid}/${role}/${holder}` : `${cid}/${role}`
      if (!((storedAt.get(storedKey) ?? Infinity) <= deletedAtMs)) {
        why.push(`${holder != null ? `the ${role} ${holder.slice(-8)}` : 'no holder'} did not log '${MSG_STORED}' role=${role} before it`)
        gaps.push({ kind: 'stored', role, ...(holder != null ? { peer: holder } : {}) })
      }
    }
    if (why.length + hard.length > 0) suspects.push({ coordinator, cid, name, deletedAtMs, gaps, hard, why: `${coordinator} deleted its copy ${where}: ${[...hard, ...why].join('; ')}` })
  }

  const silent: Array<{ coordinator: string, cid: string, receipts: Map<string, { peer: string, timeMs: number }>, holders: Holders | undefined }> = []
  for (const log of logs) {
    // Per file on this coordinator: the current owner and backup (from placement and reassignments) and the
    // receipts recorded from them. A reassignment voids that role's receipt, as the coordinator's rule does.
    const holders = new Map<string, Holders>()
    const receipts = new Map<string, Map<string, { peer: string, timeMs: number }>>()
    const deleted = new Set<string>()
    for (const ev of log.events) {
      if (ev.cid == null) continue
      if (ev.msg === MSG_PLACED) {
        holders.set(ev.cid, { owner: ev.owner, backup: ev.backup })
        receipts.delete(ev.cid)
      }
      if (ev.msg === MSG_OWNER_REASSIGNED || ev.msg === MSG_BACKUP_REASSIGNED) {
        const role = ev.msg === MSG_OWNER_REASSIGNED ? 'owner' : 'backup'
        holders.set(ev.cid, { ...holders.get(ev.cid), [role]: ev.to })
        receipts.get(ev.cid)?.delete(role)
        reassignments++
      }
      if (ev.msg === MSG_RECEIPT && ev.role != null) receipts.set(ev.cid, (receipts.get(ev.cid) ?? new Map()).set(ev.role, { peer: ev.peer ?? '', timeMs: ev.timeMs }))
      if (ev.msg !== MSG_DELETED) continue
      deleted.add(ev.cid)
      judge(log.node, ev.cid, ev.timeMs, `at line ${ev.seq}`, receipts.get(ev.cid) ?? new Map(), holders.get(ev.cid))
    }
    // A file this node coordinated whose deletion was never logged (a SIGKILL after the deletion, before its line):
    // the store says whether and when it was released.
    for (const cid of new Set([...holders.keys(), ...receipts.keys()])) {
      if (!deleted.has(cid)) silent.push({ coordinator: log.node, cid, receipts: receipts.get(cid) ?? new Map(), holders: holders.get(cid) })
    }
  }
  if (silent.length > 0) {
    const releasedAt = await releaseTimes(silent.map((x) => ({ coordinator: x.coordinator, cid: x.cid })), nodes)
    for (const x of silent) {
      const at = releasedAt.get(`${x.coordinator}/${x.cid}`)
      if (at == null) continue
      unlogged++
      judge(x.coordinator, x.cid, at, 'with no log line (released per its store)', x.receipts, x.holders)
    }
  }
  const resolved = suspects.length > 0 ? await explainFromStores(suspects, nodes, faults) : { unsafe: [], explained: [] }
  unsafeDeletes.push(...resolved.unsafe)
  return { unsafe: unsafeDeletes, checked: deletesChecked, unlogged, explained: resolved.explained, reassignments }
}
