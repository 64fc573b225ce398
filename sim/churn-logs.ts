/**
 * Reads the daemons' JSON log lines (FILEMESH_LOG_FORMAT=json; one file per node, appended across restarts,
 * so the order of one node's lines is the order of its events) into the few events the checker needs:
 * on the ingest side a file received, a receipt recorded, the ingest copy deleted, the outcome recorded;
 * a holder reassigned; on holders a copy stored durably. Lines that are not JSON (a torn line at a SIGKILL, stderr messages)
 * are counted and skipped. The message texts are the daemon's; if one changes, change it here.
 */
import fs from 'node:fs/promises'

export const MSG_RECEIVED = 'file received'
export const MSG_PLACED = 'file placed'
export const MSG_RECEIPT = 'receipt recorded'
export const MSG_DELETED = 'ingest copy deleted after both receipts'
export const MSG_PROCESSED = 'file processed'
export const MSG_STORED = 'stored durably'
export const MSG_STALE = 'completion from an old epoch: counted as a duplicate'
export const MSG_OWNER_REASSIGNED = 'owner reassigned'
export const MSG_BACKUP_REASSIGNED = 'backup reassigned'

export interface LogEvent {
  node: string
  /** Line number in the node's log: the node's own order of events. */
  seq: number
  timeMs: number
  level: string
  msg: string
  cid?: string
  peer?: string
  role?: string
  file?: string
  /** 'file placed': the chosen holders; 'X reassigned': the new one. */
  owner?: string
  backup?: string
  to?: string
}

export interface NodeLog {
  node: string
  events: LogEvent[]
  /** Lines that did not parse as JSON. */
  unparsed: number
  /** error-level lines by message (a daemon's own alarm). */
  errors: Map<string, number>
  warnings: Map<string, number>
}

const KEPT = new Set([MSG_RECEIVED, MSG_PLACED, MSG_RECEIPT, MSG_DELETED, MSG_PROCESSED, MSG_STORED, MSG_STALE, MSG_OWNER_REASSIGNED, MSG_BACKUP_REASSIGNED])

export async function readNodeLog (node: string, file: string): Promise<NodeLog> {
  const out: NodeLog = { node, events: [], unparsed: 0, errors: new Map(), warnings: new Map() }
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err: any) {
    if (err.code === 'ENOENT') return out
    throw err
  }
  let seq = 0
  for (const line of text.split('\n')) {
    if (line === '') continue
    seq++
    let j: any
    try {
      j = JSON.parse(line)
    } catch {
      out.unparsed++
      continue
    }
    if (typeof j !== 'object' || j == null || typeof j.msg !== 'string') {
      out.unparsed++
      continue
    }
    if (j.level === 'error') out.errors.set(j.msg, (out.errors.get(j.msg) ?? 0) + 1)
    if (j.level === 'warn') out.warnings.set(j.msg, (out.warnings.get(j.msg) ?? 0) + 1)
    if (!KEPT.has(j.msg)) continue
    out.events.push({ node, seq, timeMs: Date.parse(j.time), level: j.level, msg: j.msg, cid: str(j.cid), peer: str(j.peer), role: str(j.role), file: str(j.file), owner: str(j.owner), backup: str(j.backup), to: str(j.to) })
  }
  return out
}

function str (v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined
}
