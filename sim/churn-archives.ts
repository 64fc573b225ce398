/**
 * The churn checker's look at the files themselves: every backup's archive directory (each visible file
 * matched to the ledger through the archive index, or by its name with a collision tag `~TAG` removed, and
 * re-hashed), and, for files that did not finish, where an intact copy still is (inbox, spool, work dirs),
 * which tells a stuck file from a lost one.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import type { CheckedNode, FileProblem } from './churn-checker.ts'
import type { ChurnLedgerEntry } from './churn-injector.ts'
import { sha256File } from './workload.ts'

export interface ArchiveInspection {
  /** CIDs with at least one byte-identical, correctly indexed copy on some backup. */
  archivedOk: Set<string>
  corrupt: FileProblem[]
  /** Archive copies matched to the ledger. */
  copies: number
  /** Archive files that match no ledger entry. */
  unknown: string[]
  anomalies: string[]
}

const COLLISION_TAG = /~[A-Za-z0-9]+(-\d+)?(?=\.[^.]*$|$)/

export async function inspectArchives (backups: CheckedNode[], byCid: Map<string, ChurnLedgerEntry>, byName: Map<string, ChurnLedgerEntry>): Promise<ArchiveInspection> {
  const out: ArchiveInspection = { archivedOk: new Set(), corrupt: [], copies: 0, unknown: [], anomalies: [] }
  for (const n of backups) {
    const dir = n.archiveDir ?? path.join(n.dataDir, 'archive')
    const index = await readArchiveIndex(dir)
    const copiesByCid = new Map<string, string[]>()
    for (const rel of await visibleFiles(dir)) {
      const indexedCid = index.get(rel)
      const entry = (indexedCid != null ? byCid.get(indexedCid) : undefined) ?? byName.get(rel.replace(COLLISION_TAG, ''))
      if (entry == null) { out.unknown.push(`${n.name}/${rel}`); continue }
      out.copies++
      const digest = await sha256File(path.join(dir, rel))
      if (digest !== entry.sha256) out.corrupt.push({ name: entry.name, cid: entry.cid, why: `archive copy ${n.name}/${rel} has sha256 ${digest.slice(0, 12)}…, expected ${entry.sha256.slice(0, 12)}…` })
      else if (indexedCid != null && indexedCid !== entry.cid) out.corrupt.push({ name: entry.name, cid: entry.cid, why: `archive index on ${n.name} says ${rel} is ${indexedCid}, the bytes are ${entry.cid}` })
      else out.archivedOk.add(entry.cid)
      if (indexedCid == null) out.anomalies.push(`${n.name}/${rel} is not in the archive index (${digest === entry.sha256 ? 'intact copy of' : 'bytes differ from'} ${entry.name})`)
      copiesByCid.set(entry.cid, [...(copiesByCid.get(entry.cid) ?? []), rel])
    }
    for (const [cid, rels] of copiesByCid) {
      if (rels.length > 1) out.anomalies.push(`${n.name} holds ${rels.length} copies of ${byCid.get(cid)?.name ?? cid}: ${rels.join(', ')}`)
    }
  }
  return out
}

/** Where intact copies (by sha256) of unfinished files still are: inboxes, spools, work dirs. */
export async function findCopies (nodes: CheckedNode[], wanted: Set<string>): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>()
  for (const n of nodes) {
    for (const dir of ['inbox', 'spool', 'work', 'work/.incoming'].map((d) => path.join(n.dataDir, d))) {
      for (const f of await visibleFiles(dir)) {
        const digest = await sha256File(path.join(dir, f)).catch(() => '')
        if (wanted.has(digest)) out.set(digest, [...(out.get(digest) ?? []), `${n.name}/${path.relative(n.dataDir, dir)}/${f}`])
      }
    }
  }
  return out
}

async function readArchiveIndex (dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  let text = ''
  try { text = await fs.readFile(path.join(dir, '.filemesh-index.tsv'), 'utf8') } catch {}
  for (const line of text.split('\n')) {
    const [cid, , relPath] = line.split('\t')
    if (cid != null && relPath != null && cid !== '') out.set(relPath, cid)
  }
  return out
}

/** Regular files, dotfiles excluded (temp names, the index, .incoming). */
async function visibleFiles (dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir, { withFileTypes: true })).filter((d) => d.isFile() && !d.name.startsWith('.')).map((d) => d.name)
  } catch (err: any) {
    if (err.code === 'ENOENT') return []
    throw err
  }
}
