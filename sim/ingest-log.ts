/**
 * Per-file times read from an ingest daemon's JSON log (FILEMESH_LOG_FORMAT=json): when each file was
 * received (claimed and hashed), placed, and when the owner's and the backup's durable receipts were
 * recorded. The benchmark tails the log instead of polling `GET /api/status`, which scans the whole store on
 * every call and would load the very daemon being measured; the log's timestamps (wall clock, ms) also give
 * each file's own finish time instead of the poll's granularity.
 */
import fs from 'node:fs/promises'

export interface FileTimes {
  cid: string
  name?: string
  receivedMs?: number
  placedMs?: number
  ownerReceiptMs?: number
  backupReceiptMs?: number
}

/** Bytes read from the log per poll at most (the rest is read by the next poll). */
export const LOG_READ_BYTES_MAX = 8 * 1048576

export class IngestLogTail {
  readonly file: string
  readonly #byCid = new Map<string, FileTimes>()
  readonly #byName = new Map<string, FileTimes>()
  #offset = 0
  #partial = ''
  /** The latest warning or error the daemon logged (shown while waiting, so a stuck run says why). */
  lastProblem: string | undefined

  constructor (file: string) {
    this.file = file
  }

  /** Reads what the daemon appended since the last call. */
  async poll (): Promise<void> {
    let fh: fs.FileHandle
    try {
      fh = await fs.open(this.file, 'r')
    } catch (err: any) {
      if (err.code === 'ENOENT') return
      throw err
    }
    try {
      const buf = Buffer.alloc(1 << 20)
      let total = 0
      while (total < LOG_READ_BYTES_MAX) {
        const { bytesRead } = await fh.read(buf, 0, buf.byteLength, this.#offset)
        if (bytesRead === 0) break
        this.#offset += bytesRead
        total += bytesRead
        const lines = (this.#partial + buf.toString('utf8', 0, bytesRead)).split('\n')
        this.#partial = lines.pop() ?? ''
        for (const line of lines) this.#line(line)
      }
    } finally {
      await fh.close()
    }
  }

  /** Times of the file received under `name` (the inbox name), if the log has mentioned it. */
  byName (name: string): FileTimes | undefined {
    return this.#byName.get(name)
  }

  /** When both durable receipts were recorded (the later of the two), or undefined if one is missing. */
  doneMs (name: string): number | undefined {
    const t = this.#byName.get(name)
    if (t?.ownerReceiptMs == null || t.backupReceiptMs == null) return undefined
    return Math.max(t.ownerReceiptMs, t.backupReceiptMs)
  }

  #entry (cid: string): FileTimes {
    let t = this.#byCid.get(cid)
    if (t == null) {
      t = { cid }
      this.#byCid.set(cid, t)
    }
    return t
  }

  #line (line: string): void {
    if (!line.startsWith('{')) return
    let rec: Record<string, unknown>
    try {
      rec = JSON.parse(line)
    } catch {
      return
    }
    if (rec.level === 'warn' || rec.level === 'error') {
      this.lastProblem = `${String(rec.time)} ${String(rec.level)} ${String(rec.msg)}${rec.err != null ? `: ${String(rec.err)}` : ''}`.slice(0, 300)
    }
    const cid = rec.cid
    const time = typeof rec.time === 'string' ? Date.parse(rec.time) : NaN
    if (typeof cid !== 'string' || !Number.isFinite(time)) return
    switch (rec.msg) {
      case 'file received': {
        const t = this.#entry(cid)
        t.receivedMs ??= time
        if (typeof rec.file === 'string') {
          t.name = rec.file
          this.#byName.set(rec.file, t)
        }
        break
      }
      case 'file placed':
        this.#entry(cid).placedMs ??= time
        break
      case 'receipt recorded': {
        const t = this.#entry(cid)
        if (rec.role === 'owner') t.ownerReceiptMs ??= time
        else if (rec.role === 'backup') t.backupReceiptMs ??= time
        break
      }
      default:
    }
  }
}

