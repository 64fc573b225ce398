/**
 * Files for the demo, tests and benchmarks, and the independent checks of what the mesh did with them.
 * Content comes from AES-128-CTR over zeros keyed by the seed: deterministic, incompressible, GB/s. Files are
 * dropped the way rsync does (hidden temp name in the inbox, then rename). The processing command used here
 * appends "cid sha256 name epoch attempt" to a per-node log, so the checker can prove each file was processed
 * exactly once, by whom, and on the right bytes.
 */
import { createCipheriv, createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'

export interface LedgerEntry {
  name: string
  size: number
  sha256: string
}

/** A small seeded PRNG (mulberry32) for sizes, names and schedules. */
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** `length` bytes from the seeded PRNG: small deterministic inputs for unit tests (payload() is faster for MiBs). */
export function pseudoRandomBytes (length: number, seed: number): Uint8Array {
  const rand = prng(seed)
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = Math.floor(rand() * 256)
  return out
}

export function payload (seed: number, index: number, size: number): Buffer {
  const key = createHash('sha256').update(`filemesh-${seed}-${index}`).digest()
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32))
  return cipher.update(Buffer.alloc(size))
}

export function sha256Hex (bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

export async function sha256File (file: string): Promise<string> {
  const h = createHash('sha256')
  const fh = await fs.open(file, 'r')
  try {
    for await (const chunk of fh.createReadStream({ highWaterMark: 1 << 20 })) h.update(chunk as Buffer)
  } finally {
    await fh.close().catch(() => {})
  }
  return h.digest('hex')
}

/** Writes `bytes` as `.NAME.XXXXXX` in `inbox`, then renames it to NAME: what rsync does by default. */
export async function dropLikeRsync (inbox: string, name: string, bytes: Uint8Array): Promise<void> {
  const temp = path.join(inbox, `.${name}.${Math.random().toString(36).slice(2, 8)}`)
  await fs.writeFile(temp, bytes)
  await fs.rename(temp, path.join(inbox, name))
}

/** The processing command: records cid, the sha256 of the bytes it was given, name, epoch and attempt. */
export function recordingCommand (logPath: string): string {
  const q = `'${logPath.replaceAll("'", "'\\''")}'`
  return `h=$(sha256sum "$1" | cut -c1-64) && printf '%s %s %s %s %s\\n' "$FILEMESH_CID" "$h" "$FILEMESH_EPOCH" "$FILEMESH_ATTEMPT" "$FILEMESH_NAME" >> ${q}`
}

export interface ProcessingRecord {
  cid: string
  sha256: string
  epoch: number
  attempt: number
  name: string
  node: string
}

export async function readProcessingLog (file: string, node: string): Promise<ProcessingRecord[]> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err: any) {
    if (err.code === 'ENOENT') return []
    throw err
  }
  return text.split('\n').filter((l) => l !== '').map((line) => {
    const [cid, sha256, epoch, attempt, ...rest] = line.split(' ')
    return { cid: cid ?? '', sha256: sha256 ?? '', epoch: Number(epoch), attempt: Number(attempt), name: rest.join(' '), node }
  })
}

export interface CheckReport {
  files: number
  archivedOk: number
  archiveMissing: string[]
  archiveCorrupt: string[]
  processedOnce: number
  processedTwiceOrMore: string[]
  notProcessed: string[]
  processedWrongBytes: string[]
  perProcessor: Record<string, number>
}

/** Compares the ledger with the archive directory and the processing logs. */
export async function checkOutcome (ledger: LedgerEntry[], archiveDir: string, logs: Array<{ node: string, file: string }>): Promise<CheckReport> {
  const report: CheckReport = { files: ledger.length, archivedOk: 0, archiveMissing: [], archiveCorrupt: [], processedOnce: 0, processedTwiceOrMore: [], notProcessed: [], processedWrongBytes: [], perProcessor: {} }
  for (const entry of ledger) {
    let digest: string | undefined
    try { digest = await sha256File(path.join(archiveDir, entry.name)) } catch { digest = undefined }
    if (digest == null) report.archiveMissing.push(entry.name)
    else if (digest !== entry.sha256) report.archiveCorrupt.push(entry.name)
    else report.archivedOk++
  }
  const byName = new Map<string, ProcessingRecord[]>()
  for (const { node, file } of logs) {
    report.perProcessor[node] = 0
    for (const rec of await readProcessingLog(file, node)) {
      report.perProcessor[node]++
      byName.set(rec.name, [...(byName.get(rec.name) ?? []), rec])
    }
  }
  for (const entry of ledger) {
    const recs = byName.get(entry.name) ?? []
    if (recs.length === 0) report.notProcessed.push(entry.name)
    else if (recs.length > 1) report.processedTwiceOrMore.push(entry.name)
    else report.processedOnce++
    if (recs.some((r) => r.sha256 !== entry.sha256)) report.processedWrongBytes.push(entry.name)
  }
  return report
}

export function checkPassed (r: CheckReport): boolean {
  return r.archivedOk === r.files && r.processedOnce === r.files && r.processedWrongBytes.length === 0
}

export async function listVisible (dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir)).filter((n) => !n.startsWith('.'))
  } catch (err: any) {
    if (err.code === 'ENOENT') return []
    throw err
  }
}
