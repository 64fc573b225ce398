/**
 * The mesh side of `npm run bench`: 1 ingest + 1 processor + 1 backup as separate `filemesh run` processes
 * (sim/local-mesh.ts), files dropped into the inbox rsync-style (sim/workload.ts), each file's finish time
 * taken from the ingest's JSON log (both durable receipts recorded), resources read from /proc, and the
 * result checked against the sources (archive byte-identical, processed exactly once on the right bytes).
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { LocalMesh, tail, waitFor } from './local-mesh.ts'
import type { MeshDaemon } from './local-mesh.ts'
import { IngestLogTail } from './ingest-log.ts'
import type { FileTimes } from './ingest-log.ts'
import { cpuSeconds, peakRssMiB, rssMiB } from './proc-stats.ts'
import { checkOutcome, checkPassed, dropLikeRsync, payload, recordingCommand, sha256Hex } from './workload.ts'
import type { CheckReport, LedgerEntry } from './workload.ts'
import type { NodeStatus } from '../node/status.ts'

export const BENCH_NODES = ['ingest', 'processor', 'backup'] as const
export type BenchNode = typeof BENCH_NODES[number]
/** How often the ingest's log is read while waiting for receipts. */
export const DEFAULT_LOG_POLL_MS = 100

export interface BenchFile extends LedgerEntry {
  seed: number
  index: number
}

/** `count` files named PREFIX-NNNN.bin of `size` bytes with seeded content (sha256 computed up front). */
export function makeFiles (prefix: string, seed: number, count: number, size: number): BenchFile[] {
  const width = String(count).length
  return Array.from({ length: count }, (_, index) => {
    const bytes = payload(seed, index, size)
    return { name: `${prefix}-${String(index).padStart(width, '0')}.bin`, size, seed, index, sha256: sha256Hex(bytes) }
  })
}

export function fileBytes (f: BenchFile): Buffer {
  return payload(f.seed, f.index, f.size)
}

export interface BatchResult {
  files: number
  bytes: number
  /** Wall clock (ms since the epoch) when the first drop started. */
  startedMs: number
  /** Wall clock when the last file had both receipts (from the ingest's log). */
  lastDoneMs: number
  elapsedMs: number
  /** From the first drop until the ingest had received (claimed, hashed, recorded) the last file. */
  intakeMs: number
  /** Per file, from received by the ingest to both receipts recorded. */
  receivedToDoneMs: number[]
}

export interface SingleResult {
  /** Wall clock when the file appeared under its final name in the inbox. */
  renamedMs: number
  doneMs: number
  times: FileTimes
}

export interface MeshBenchInit {
  root: string
  timeoutMs: number
  /** Extra NODE_OPTIONS for the daemons (e.g. --cpu-prof). */
  nodeOptions?: string
  say: (s: string) => void
  /** Aborted on Ctrl-C: drops and waits stop at once. */
  signal?: AbortSignal
}

export class MeshBench {
  readonly mesh: LocalMesh
  readonly ledger: BenchFile[] = []
  readonly #init: MeshBenchInit
  readonly #processorLog: string
  #tail: IngestLogTail | undefined
  #starting: Promise<void> | undefined

  constructor (init: MeshBenchInit) {
    this.#init = init
    this.mesh = new LocalMesh(path.join(init.root, 'mesh'))
    this.#processorLog = path.join(init.root, 'mesh', 'processor-processed.log')
  }

  daemon (name: BenchNode): MeshDaemon {
    return this.mesh.get(name)
  }

  async start (): Promise<void> {
    this.#starting = this.#spawn()
    await this.#starting
    await waitFor('the ingest node to see all 3 members', async () => (await this.mesh.status('ingest')).members.length === 3, 30_000)
  }

  /** Starts the daemons; settles only once every spawned daemon serves or has failed (so stop() finds them all). */
  async #spawn (): Promise<void> {
    this.#init.signal?.throwIfAborted()
    await fs.mkdir(this.mesh.root, { recursive: true })
    const env: Record<string, string> = { FILEMESH_LOG_FORMAT: 'json' }
    if (this.#init.nodeOptions != null) env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} ${this.#init.nodeOptions}`.trim()
    const ingest = await this.mesh.start('ingest', { roles: ['ingest'], args: ['--quiet-ms', '30000'], env })
    this.#init.signal?.throwIfAborted()
    const started = await Promise.allSettled([
      this.mesh.start('processor', { roles: ['process'], args: ['--exec', recordingCommand(this.#processorLog)], env }),
      this.mesh.start('backup', { roles: ['backup'], env })
    ])
    for (const r of started) if (r.status === 'rejected') throw r.reason
    this.#tail = new IngestLogTail(ingest.logPath)
  }

  async status (name: BenchNode = 'ingest'): Promise<NodeStatus> {
    return await this.mesh.status(name)
  }

  get #logTail (): IngestLogTail {
    if (this.#tail == null) throw new Error('mesh not started')
    return this.#tail
  }

  /** Drops every file as fast as it can be written, then waits until each has both durable receipts. */
  async dropBatch (files: BenchFile[], what: string): Promise<BatchResult> {
    const inbox = this.daemon('ingest').info.inbox as string
    this.ledger.push(...files)
    const startedMs = Date.now()
    for (const f of files) {
      this.#init.signal?.throwIfAborted()
      await dropLikeRsync(inbox, f.name, fileBytes(f))
    }
    const lastDoneMs = await this.#waitDone(files, what)
    let lastReceivedMs = startedMs
    const receivedToDoneMs: number[] = []
    for (const f of files) {
      const t = this.#logTail.byName(f.name)
      const done = this.#logTail.doneMs(f.name)
      if (t?.receivedMs == null || done == null) continue
      lastReceivedMs = Math.max(lastReceivedMs, t.receivedMs)
      receivedToDoneMs.push(done - t.receivedMs)
    }
    return { files: files.length, bytes: files.reduce((n, f) => n + f.size, 0), startedMs, lastDoneMs, elapsedMs: lastDoneMs - startedMs, intakeMs: lastReceivedMs - startedMs, receivedToDoneMs }
  }

  /** Drops one file and waits for both receipts; latency counts from the rename into the inbox. */
  async dropOne (f: BenchFile): Promise<SingleResult> {
    const inbox = this.daemon('ingest').info.inbox as string
    this.ledger.push(f)
    this.#init.signal?.throwIfAborted()
    await dropLikeRsync(inbox, f.name, fileBytes(f))
    const renamedMs = Date.now()
    const doneMs = await this.#waitDone([f], f.name)
    return { renamedMs, doneMs, times: this.#logTail.byName(f.name) ?? { cid: '' } }
  }

  async #waitDone (files: BenchFile[], what: string): Promise<number> {
    const pending = new Set(files.map((f) => f.name))
    const deadline = Date.now() + this.#init.timeoutMs
    let lastDone = 0
    let lastReport = Date.now()
    while (true) {
      this.#init.signal?.throwIfAborted()
      await this.#logTail.poll()
      for (const name of pending) {
        const done = this.#logTail.doneMs(name)
        if (done != null) {
          pending.delete(name)
          lastDone = Math.max(lastDone, done)
        }
      }
      if (pending.size === 0) return lastDone
      await this.#assertAlive()
      if (Date.now() > deadline) throw new Error(`${what}: ${pending.size} of ${files.length} files still lack a receipt after ${this.#init.timeoutMs} ms`)
      if (Date.now() - lastReport > 5_000) {
        lastReport = Date.now()
        const problem = this.#logTail.lastProblem
        this.#init.say(`  ${what}: ${files.length - pending.size}/${files.length} files have both receipts${problem != null ? ` (ingest's last warning: ${problem})` : ''}`)
      }
      await new Promise((resolve) => setTimeout(resolve, DEFAULT_LOG_POLL_MS))
    }
  }

  async #assertAlive (): Promise<void> {
    for (const name of BENCH_NODES) {
      const d = this.daemon(name)
      if (d.proc.exitCode != null || d.proc.signalCode != null) {
        throw new Error(`daemon ${name} exited (${d.proc.exitCode ?? d.proc.signalCode}):\n${await tail(d.logPath)}`)
      }
    }
  }

  /** Waits until every dropped file is processed (or failed) and its ingest copy deleted: the mesh is idle. */
  async waitIdle (): Promise<NodeStatus> {
    const total = this.ledger.length
    return await waitFor('every file processed and released', async () => {
      await this.#assertAlive()
      const s = await this.status()
      const f = s.files
      return f.total >= total && f.processed + f.failed >= total && f.deletedFromIngest >= total ? s : undefined
    }, this.#init.timeoutMs, 250)
  }

  async cpuSeconds (): Promise<Record<BenchNode, number | null>> {
    return await this.#perNode(async (d) => await cpuSeconds(d.info.pid))
  }

  async peakRssMiB (): Promise<Record<BenchNode, number | null>> {
    return await this.#perNode(async (d) => await peakRssMiB(d.info.pid))
  }

  async rssMiB (): Promise<Record<BenchNode, number | null>> {
    return await this.#perNode(async (d) => await rssMiB(d.info.pid))
  }

  async #perNode (fn: (d: MeshDaemon) => Promise<number | undefined>): Promise<Record<BenchNode, number | null>> {
    const out: Record<string, number | null> = {}
    for (const name of BENCH_NODES) out[name] = await fn(this.daemon(name)) ?? null
    return out as Record<BenchNode, number | null>
  }

  /** Block bytes each node has served so far (status `transfer.served.bytesSent`). */
  async servedBytes (): Promise<Record<BenchNode, number>> {
    const out: Record<string, number> = {}
    for (const name of BENCH_NODES) out[name] = (await this.status(name)).transfer.served?.bytesSent ?? 0
    return out as Record<BenchNode, number>
  }

  /** Checks every dropped file against its source: archive, processing record, the ingest's counts. */
  async verify (): Promise<{ ok: boolean, report: CheckReport, problems: string[] }> {
    const s = await this.waitIdle()
    const report = await checkOutcome(this.ledger, this.daemon('backup').info.archive as string, [{ node: 'processor', file: this.#processorLog }])
    const problems: string[] = []
    if (!checkPassed(report)) {
      problems.push(`archive: ${report.archivedOk}/${report.files} byte-identical (missing ${report.archiveMissing.length}, corrupt ${report.archiveCorrupt.length}); ` +
        `processed once ${report.processedOnce}, twice or more ${report.processedTwiceOrMore.length}, not processed ${report.notProcessed.length}, wrong bytes ${report.processedWrongBytes.length}`)
    }
    const f = s.files
    if (f.total !== this.ledger.length) problems.push(`ingest accepted ${f.total} files, ${this.ledger.length} were dropped`)
    if (f.storedOnOwner !== f.total || f.storedOnBackup !== f.total) problems.push(`receipts: owner ${f.storedOnOwner}, backup ${f.storedOnBackup} of ${f.total}`)
    if (f.failed !== 0) problems.push(`${f.failed} files failed processing`)
    if (f.staleCompletions !== 0) problems.push(`${f.staleCompletions} stale completions`)
    return { ok: problems.length === 0, report, problems }
  }

  /** Stops every daemon, also those still starting (a daemon joins `mesh.nodes` only once it serves). */
  async stop (): Promise<void> {
    await this.#starting?.catch(() => {})
    await this.mesh.stopAll()
  }
}
