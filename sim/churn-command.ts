/**
 * The processing command the churn harness gives its processors: like workload.ts's `recordingCommand`, but
 * each record also names the node and carries the wall-clock start and end of the run (ms since the epoch),
 * so the checker can tell which node processed a file when, and tie a second run of the same file to the
 * fault that caused it (the owner killed while the command ran, or before "processed" was recorded).
 * An optional sleep widens the window in which a kill lands during processing. One `>>` append of a short
 * line per run (a single write(2), atomic with O_APPEND), so concurrent runs never interleave.
 *
 * Record line: `done START_MS END_MS NODE CID SHA256 EPOCH ATTEMPT NAME`
 */
import fs from 'node:fs/promises'

export interface RunRecord {
  node: string
  startMs: number
  endMs: number
  cid: string
  sha256: string
  epoch: number
  attempt: number
  name: string
}

function shQuote (s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`
}

export function churnCommand (recordPath: string, node: string, sleepMs: number): string {
  if (!/^[\w-]+$/.test(node)) throw new Error(`node name ${node} is not a plain word`)
  const sleep = sleepMs > 0 ? ` && sleep ${(sleepMs / 1000).toFixed(3)}` : ''
  return `s=$(date +%s%3N) && h=$(sha256sum "$1" | cut -c1-64)${sleep} && printf 'done %s %s %s %s %s %s %s %s\\n' "$s" "$(date +%s%3N)" ${node} "$FILEMESH_CID" "$h" "$FILEMESH_EPOCH" "$FILEMESH_ATTEMPT" "$FILEMESH_NAME" >> ${shQuote(recordPath)}`
}

/** Reads one record file; a torn last line (the shell killed mid-write) is skipped and counted. */
export async function readRunRecords (file: string): Promise<{ records: RunRecord[], torn: number }> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err: any) {
    if (err.code === 'ENOENT') return { records: [], torn: 0 }
    throw err
  }
  const records: RunRecord[] = []
  let torn = 0
  for (const line of text.split('\n')) {
    if (line === '') continue
    const [tag, start, end, node, cid, sha256, epoch, attempt, ...rest] = line.split(' ')
    const rec = { node: node ?? '', startMs: Number(start), endMs: Number(end), cid: cid ?? '', sha256: sha256 ?? '', epoch: Number(epoch), attempt: Number(attempt), name: rest.join(' ') }
    if (tag !== 'done' || !Number.isFinite(rec.startMs) || !Number.isFinite(rec.endMs) || !/^[0-9a-f]{64}$/.test(rec.sha256) || rec.name === '') torn++
    else records.push(rec)
  }
  return { records, torn }
}
