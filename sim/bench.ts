/**
 * `npm run bench`: figures for the goals, each measured in this run next to the reference it is
 * judged against, also measured in this run on this machine:
 *   - end to end: 1 ingest + 1 processor + 1 backup (separate `filemesh run` processes), N × 10 MiB dropped
 *     into the inbox; MB/s from the first drop to the last file with both durable receipts, vs rsync fan-out
 *     (two `rsync --daemon` on loopback, both pushes at once with --fsync) and vs one raw libp2p stream;
 *     the landing node's block egress / payload;
 *   - small files (2,000 × 64 KiB) per second; latency of one 10 MiB file (drop -> both receipts), p50/p99;
 *   - peak RSS per daemon; broadcast is not built yet (null).
 * Prints progress on stderr, a table on stdout and, last, one JSON line. Every file is checked against its
 * source (archive byte-identical, processed exactly once on the right bytes): exit 1 if any check fails.
 *
 *   npm run bench [-- --quick] [--files N] [--file-mib N] [--small-files N] [--small-kib N]
 *                 [--latency-runs N] [--latency-mib N] [--stream-mib N] [--only e2e,small,latency,rsync,stream]
 *                 [--cpu-prof DIR] [--no-install] [--keep] [--timeout-s N]
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs, promisify } from 'node:util'
import { MeshBench, makeFiles, fileBytes, BENCH_NODES } from './bench-mesh.ts'
import type { BenchFile, BenchNode } from './bench-mesh.ts'
import { formatProfileSummary, summarizeCpuProfile } from './cpu-profile.ts'
import { ensureRsync, RsyncFanOut } from './rsync-fanout.ts'
import { measureStreamLimit } from './stream-limit.ts'
import { renderTable } from './bench-report.ts'
import type { BenchFigures } from './bench-report.ts'

const KiB = 1024
const MiB = 1024 * KiB
const PHASES = ['stream', 'rsync', 'e2e', 'small', 'latency'] as const
type Phase = typeof PHASES[number]
export const BROADCAST_NOT_BUILT = 'broadcast channels not implemented yet'

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    files: { type: 'string' },
    'file-mib': { type: 'string' },
    'small-files': { type: 'string' },
    'small-kib': { type: 'string' },
    'latency-runs': { type: 'string' },
    'latency-mib': { type: 'string' },
    'stream-mib': { type: 'string' },
    only: { type: 'string' },
    'cpu-prof': { type: 'string' },
    'no-install': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    'timeout-s': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false }
  }
})

if (opts.help) {
  process.stdout.write('usage: npm run bench -- [--quick] [--files N] [--file-mib N] [--small-files N] [--small-kib N] [--latency-runs N]\n' +
    '                      [--latency-mib N] [--stream-mib N] [--only e2e,small,latency,rsync,stream] [--cpu-prof DIR]\n' +
    '                      [--no-install] [--keep] [--timeout-s N]\n')
  process.exit(0)
}

function num (name: string, v: string | undefined, quick: number, full: number): number {
  const n = v == null ? (opts.quick ? quick : full) : Number(v)
  if (!Number.isFinite(n) || n < 0) {
    process.stderr.write(`--${name} must be a number >= 0\n`)
    process.exit(2)
  }
  return n
}

const cfg = {
  files: num('files', opts.files, 10, 50),
  fileBytes: Math.round(num('file-mib', opts['file-mib'], 4, 10) * MiB),
  smallFiles: num('small-files', opts['small-files'], 200, 2000),
  smallBytes: Math.round(num('small-kib', opts['small-kib'], 64, 64) * KiB),
  latencyRuns: num('latency-runs', opts['latency-runs'], 5, 20),
  latencyBytes: Math.round(num('latency-mib', opts['latency-mib'], 10, 10) * MiB),
  streamBytes: Math.round(num('stream-mib', opts['stream-mib'], 128, 512) * MiB),
  timeoutMs: num('timeout-s', opts['timeout-s'], 120, 900) * 1000
}
const only = new Set<Phase>(opts.only == null ? PHASES : opts.only.split(',').map((s) => s.trim()).filter((s): s is Phase => {
  if ((PHASES as readonly string[]).includes(s)) return true
  process.stderr.write(`--only: unknown phase ${s} (phases: ${PHASES.join(', ')})\n`)
  process.exit(2)
}))
const meshPhases = (['e2e', 'small', 'latency'] as const).filter((p) => only.has(p))
const say = (s: string): void => { process.stderr.write(s + '\n') }
const run = promisify(execFile)

const root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-bench-'))
const cpuProfDir = opts['cpu-prof'] != null ? path.resolve(opts['cpu-prof']) : undefined
let mesh: MeshBench | undefined
let rsync: RsyncFanOut | undefined
let cleaning: Promise<void> | undefined
let interrupted = false
const interrupt = new AbortController()
async function cleanup (): Promise<void> {
  cleaning ??= (async () => {
    await rsync?.stop().catch(() => {})
    await mesh?.stop().catch(() => {})
    if (opts.keep) say(`kept ${root}`)
    else await fs.rm(root, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 })
  })()
  await cleaning
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    interrupted = true
    interrupt.abort()
    say(`\n${sig}: stopping daemons and cleaning up`)
    cleanup().finally(() => process.exit(130))
  })
}

/** Nearest-rank percentile of `values` (p in 0..100). */
function percentile (values: number[], p: number): number | null {
  if (values.length === 0) return null
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number
}

function ratio (a: number | null, b: number | null): number | null {
  return a == null || b == null || b === 0 ? null : a / b
}

const MBps = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000)

async function dropCaches (): Promise<void> {
  // Flush dirty pages so one phase's writeback does not land in the next phase's timing.
  await run('sync').catch(() => {})
}

async function streamPhase (f: BenchFigures): Promise<void> {
  say(`libp2p single stream: ${cfg.streamBytes / MiB} MiB in 1 MiB sends, receiver in a worker thread, then on the same thread`)
  const two = await measureStreamLimit({ totalBytes: cfg.streamBytes, receiverInWorker: true })
  f.streamLimitMBps = two.MBps
  const one = await measureStreamLimit({ totalBytes: cfg.streamBytes, receiverInWorker: false })
  f.streamLimitOneThreadMBps = one.MBps
}

/** Writes the same files the mesh gets as rsync's sources; returns their paths. */
async function writeSources (dir: string, files: BenchFile[]): Promise<string[]> {
  await fs.mkdir(dir, { recursive: true })
  const out: string[] = []
  for (const file of files) {
    const p = path.join(dir, file.name)
    await fs.writeFile(p, fileBytes(file))
    out.push(p)
  }
  return out
}

async function checkPushed (dirs: string[], sub: string, count: number, bytes: number): Promise<void> {
  for (const d of dirs) {
    const names = await fs.readdir(path.join(d, sub))
    let total = 0
    for (const n of names) total += (await fs.stat(path.join(d, sub, n))).size
    if (names.length !== count || total !== bytes) throw new Error(`rsync reference: ${d}/${sub} has ${names.length} files, ${total} bytes; expected ${count}, ${bytes}`)
  }
}

async function rsyncPhase (f: BenchFigures): Promise<void> {
  const avail = await ensureRsync({ install: !opts['no-install'], log: say })
  if (!avail.ok) {
    f.rsyncSkipped = avail.reason
    say(`rsync reference skipped: ${avail.reason}`)
    return
  }
  f.rsync = `${avail.rsync.version}${avail.installed ? ' (installed by the bench)' : ''}`
  f.rsyncFsync = avail.rsync.fsync
  if (!avail.rsync.fsync) say(`${avail.rsync.version} has no --fsync: pushing without it and running sync inside the timed section`)
  const dir = path.join(root, 'rsync')
  rsync = new RsyncFanOut(avail.rsync, dir)
  try {
    interrupt.signal.throwIfAborted()
    await rsync.start(2)
    if (only.has('e2e') && cfg.files > 0) {
      const files = makeFiles('e2e', 1, cfg.files, cfg.fileBytes)
      const src = path.join(dir, 'src-e2e')
      await writeSources(src, files)
      await dropCaches()
      say(`rsync fan-out: ${cfg.files} × ${cfg.fileBytes / MiB} MiB to 2 daemons at once`)
      const ms = await rsync.push([src + '/'], 'e2e')
      await checkPushed(rsync.destinations, 'e2e', cfg.files, cfg.files * cfg.fileBytes)
      f.rsyncMBps = MBps(cfg.files * cfg.fileBytes, ms)
      await Promise.all([src, ...rsync.destinations.map((d) => path.join(d, 'e2e'))].map(async (p) => { await fs.rm(p, { recursive: true, force: true }) }))
    }
    if (only.has('small') && cfg.smallFiles > 0) {
      const files = makeFiles('small', 2, cfg.smallFiles, cfg.smallBytes)
      const src = path.join(dir, 'src-small')
      await writeSources(src, files)
      await dropCaches()
      say(`rsync fan-out: ${cfg.smallFiles} × ${cfg.smallBytes / KiB} KiB to 2 daemons at once`)
      const ms = await rsync.push([src + '/'], 'small')
      await checkPushed(rsync.destinations, 'small', cfg.smallFiles, cfg.smallFiles * cfg.smallBytes)
      f.rsyncSmallFilesPerSec = cfg.smallFiles / (ms / 1000)
      await Promise.all([src, ...rsync.destinations.map((d) => path.join(d, 'small'))].map(async (p) => { await fs.rm(p, { recursive: true, force: true }) }))
    }
    if (only.has('latency') && cfg.latencyRuns > 0) {
      const files = makeFiles('lat', 3, cfg.latencyRuns, cfg.latencyBytes)
      const src = path.join(dir, 'src-lat')
      const paths = await writeSources(src, files)
      await dropCaches()
      say(`rsync fan-out latency: ${cfg.latencyRuns} pushes of one ${cfg.latencyBytes / MiB} MiB file to 2 daemons at once`)
      const samples: number[] = []
      for (const p of paths) samples.push(await rsync.push([p], 'lat'))
      f.rsyncLatencyP50Ms = percentile(samples, 50)
      f.rsyncLatencyP99Ms = percentile(samples, 99)
    }
  } finally {
    await rsync.stop()
    rsync = undefined
    await fs.rm(dir, { recursive: true, force: true })
  }
}

async function meshPhase (f: BenchFigures): Promise<boolean> {
  if (cpuProfDir != null) await fs.mkdir(cpuProfDir, { recursive: true })
  mesh = new MeshBench({ root, timeoutMs: cfg.timeoutMs, say, signal: interrupt.signal, ...(cpuProfDir != null ? { nodeOptions: `--cpu-prof --cpu-prof-dir=${cpuProfDir}` } : {}) })
  say('starting 1 ingest + 1 processor + 1 backup daemon')
  await mesh.start()
  f.rssAtStartMiB = await mesh.rssMiB()
  const pids = Object.fromEntries(BENCH_NODES.map((n) => [n, mesh?.daemon(n).info.pid]))
  if (only.has('e2e') && cfg.files > 0) {
    const files = makeFiles('e2e', 1, cfg.files, cfg.fileBytes)
    await dropCaches()
    say(`end to end: ${cfg.files} × ${cfg.fileBytes / MiB} MiB dropped into the inbox`)
    const served0 = await mesh.servedBytes()
    const cpu0 = await mesh.cpuSeconds()
    const r = await mesh.dropBatch(files, 'end to end')
    const cpu1 = await mesh.cpuSeconds()
    const served1 = await mesh.servedBytes()
    f.e2eMBps = MBps(r.bytes, r.elapsedMs)
    f.e2eSeconds = r.elapsedMs / 1000
    f.landingEgressRatio = (served1.ingest - served0.ingest) / r.bytes
    f.peerEgressRatio = (served1.processor - served0.processor + served1.backup - served0.backup) / r.bytes
    f.e2eCpuSeconds = Object.fromEntries(BENCH_NODES.map((n) => [n, cpu0[n] == null || cpu1[n] == null ? null : (cpu1[n] as number) - (cpu0[n] as number)])) as Record<BenchNode, number | null>
    await mesh.waitIdle()
  }
  if (only.has('small') && cfg.smallFiles > 0) {
    const files = makeFiles('small', 2, cfg.smallFiles, cfg.smallBytes)
    await dropCaches()
    say(`small files: ${cfg.smallFiles} × ${cfg.smallBytes / KiB} KiB dropped into the inbox`)
    const r = await mesh.dropBatch(files, 'small files')
    f.smallFilesPerSec = r.files / (r.elapsedMs / 1000)
    await mesh.waitIdle()
  }
  if (only.has('latency') && cfg.latencyRuns > 0) {
    const files = makeFiles('lat', 3, cfg.latencyRuns, cfg.latencyBytes)
    say(`latency: ${cfg.latencyRuns} runs of one ${cfg.latencyBytes / MiB} MiB file, drop -> both receipts`)
    const total: number[] = []
    const detect: number[] = []
    const place: number[] = []
    const transfer: number[] = []
    for (const file of files) {
      await dropCaches()
      const r = await mesh.dropOne(file)
      total.push(r.doneMs - r.renamedMs)
      if (r.times.receivedMs != null) detect.push(r.times.receivedMs - r.renamedMs)
      if (r.times.receivedMs != null && r.times.placedMs != null) place.push(r.times.placedMs - r.times.receivedMs)
      if (r.times.placedMs != null) transfer.push(r.doneMs - r.times.placedMs)
      await mesh.waitIdle()
    }
    f.latencyP50Ms = percentile(total, 50)
    f.latencyP99Ms = percentile(total, 99)
    f.latencyP50BreakdownMs = { inboxToReceived: percentile(detect, 50), receivedToPlaced: percentile(place, 50), placedToBothReceipts: percentile(transfer, 50) }
  }
  const rss = await mesh.peakRssMiB()
  f.rssMiB = rss
  f.maxRssMiB = Math.max(...Object.values(rss).filter((v): v is number => v != null))
  say(`verifying ${mesh.ledger.length} files against their sources`)
  const v = await mesh.verify()
  f.verified = v.ok
  f.verifiedFiles = v.report.archivedOk
  for (const p of v.problems) say(`VERIFY FAILED: ${p}`)
  await mesh.stop()
  if (cpuProfDir != null) {
    for (const name of await fs.readdir(cpuProfDir)) {
      const node = BENCH_NODES.find((n) => name.includes(`.${String(pids[n])}.`))
      if (node == null || !name.endsWith('.cpuprofile')) continue
      process.stdout.write(formatProfileSummary(node, await summarizeCpuProfile(path.join(cpuProfDir, name))) + '\n\n')
    }
  }
  return v.ok
}

async function main (): Promise<number> {
  const f: BenchFigures = {
    mode: opts.quick ? 'quick' : 'full',
    files: cfg.files, fileMiB: cfg.fileBytes / MiB, smallFiles: cfg.smallFiles, smallKiB: cfg.smallBytes / KiB,
    latencyRuns: cfg.latencyRuns, latencyMiB: cfg.latencyBytes / MiB, streamMiB: cfg.streamBytes / MiB,
    e2eMBps: null, rsyncMBps: null, streamLimitMBps: null, streamLimitOneThreadMBps: null,
    e2eVsRsync: null, e2eVsStreamLimit: null, landingEgressRatio: null,
    smallFilesPerSec: null, rsyncSmallFilesPerSec: null, smallVsRsync: null,
    latencyP50Ms: null, latencyP99Ms: null, rsyncLatencyP50Ms: null, rsyncLatencyP99Ms: null, latencyP50VsRsync: null,
    broadcastSeconds: null, publisherEgressRatio: null, broadcastReason: BROADCAST_NOT_BUILT,
    maxRssMiB: null, verified: null,
    cpus: os.cpus().length, loadAvg1m: os.loadavg()[0] ?? 0, node: process.version
  }
  say(`filemesh bench (${f.mode}) in ${root}; ${f.cpus} CPUs, load ${f.loadAvg1m.toFixed(2)}`)
  if (only.has('stream')) await streamPhase(f)
  interrupt.signal.throwIfAborted()
  if (only.has('rsync')) await rsyncPhase(f)
  interrupt.signal.throwIfAborted()
  let ok = true
  if (meshPhases.length > 0) ok = await meshPhase(f)
  f.e2eVsRsync = ratio(f.e2eMBps, f.rsyncMBps)
  f.e2eVsStreamLimit = ratio(f.e2eMBps, f.streamLimitMBps)
  f.smallVsRsync = ratio(f.smallFilesPerSec, f.rsyncSmallFilesPerSec)
  f.latencyP50VsRsync = ratio(f.latencyP50Ms, f.rsyncLatencyP50Ms)
  process.stdout.write(renderTable(f) + '\n')
  process.stdout.write(JSON.stringify(f) + '\n')
  if (!ok) {
    say(`verification failed: daemon logs are in ${root} (kept)`)
    opts.keep = true
  }
  return ok ? 0 : 1
}

let code = 1
try {
  code = await main()
} catch (err: any) {
  if (!interrupted) {
    say(`\nbench failed: ${err?.stack ?? err}`)
    say(`daemon logs are in ${root} (kept)`)
    opts.keep = true
  }
} finally {
  await cleanup()
}
process.exit(code)
