/** Human-readable rendering of a node's status document (`filemesh status` without --json). */
import type { HolderCounts, NodeStatus } from './status.ts'

function mib (bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`
}

function holderLine (label: string, c: HolderCounts): string {
  return `  ${label.padEnd(8)} fetching ${c.fetching}, stored ${c.stored}, processing ${c.processing}, processed ${c.processed}, failed ${c.failed} (${mib(c.bytes)})\n`
}

export function formatStatus (s: NodeStatus): string {
  let out = `node ${s.peerId}  roles ${s.roles.join(',')}  api ${s.api}  up ${Math.round(s.uptimeMs / 1000)} s\n`
  if (s.inbox != null) out += `inbox ${s.inbox}\n`
  if (s.archive != null) out += `archive ${s.archive}\n`
  out += `\nmembers (${s.members.length} live)\n`
  for (const m of s.members) {
    out += `  ${m.peerId}  ${m.roles.join(',').padEnd(22)} weight ${m.weight}${m.draining ? '  DRAINING' : ''}  seen ${(m.lastSeenMsAgo / 1000).toFixed(1)} s ago${m.self ? '  (this node)' : ''}\n`
  }
  if (s.roles.includes('ingest')) {
    const f = s.files
    out += `\nfiles accepted here: ${f.total} (${mib(f.bytes)})\n`
    const rows: Array<[string, number]> = [
      ['received (waiting for placement)', f.received], ['placed (transfer under way)', f.placed], ['stored on owner', f.storedOnOwner],
      ['stored on backup', f.storedOnBackup], ['processing', f.processing], ['processed', f.processed], ['failed', f.failed],
      ['deleted from ingest', f.deletedFromIngest], ['late completions (duplicates)', f.staleCompletions],
      ['coordinated by the backup now', f.takenOverByBackup ?? 0]
    ]
    for (const [label, n] of rows) out += `  ${label.padEnd(32)} ${n}\n`
  }
  if (s.roles.includes('process') || s.roles.includes('backup')) {
    out += '\nfiles held here\n'
    if (s.roles.includes('process')) out += holderLine('owner', s.owner)
    if (s.roles.includes('backup')) out += holderLine('backup', s.backup)
    const t = s.standby
    if (s.roles.includes('backup') && t != null && t.standingBy + t.coordinating > 0) {
      out += `  coordination: standing by for ${t.standingBy}, taken over ${t.coordinating} (processed ${t.processedAfterTakeover}, late completions ${t.staleCompletions})\n`
    }
  }
  if (s.failed.length > 0) {
    out += '\nfailed files\n'
    for (const f of s.failed) out += `  ${f.cid}  ${f.name}  ${f.error ?? ''}\n`
  }
  return out
}
