/**
 * `npm run bench`: figures for the goals, each measured in this run next to the reference it is
 * judged against, also measured in this run on this machine:
 *   - end to end: 1 ingest + 1 processor + 1 backup (separate `filemesh run` processes), N × 10 MiB dropped
 *     into the inbox; MB/s from the first drop to the last file with both durable receipts, vs rsync fan-out
 *     (two `rsync --daemon` on loopback, both pushes at once with --fsync) and vs one raw libp2p stream;
 *     the landing node's block egress / payload;
 *   - small files (2,000 × 64 KiB) per second; latency of one 10 MiB file (drop -> both receipts), p50/p99;
 *   - broadcast (sim/bench-broadcast.ts): 1 publisher + N followers (separate daemons), one file published on
 *     a channel: seconds until every follower switched NAME.current, publisher egress / file size;
 *   - peak RSS per daemon.
 * Prints progress on stderr, a table on stdout and, last, one JSON line. Every file is checked against its
 * source (archive byte-identical, processed exactly once on the right bytes): exit 1 if any check fails.
 *
 *   npm run bench [-- --quick] [--files N] [--file-mib N] [--small-files N] [--small-kib N]
 *                 [--latency-runs N] [--latency-mib N] [--stream-mib N] [--broadcast-followers N] [--broadcast-mib N]
 *                 [--only e2e,small,latency,rsync,stream,broadcast]
 *                 [--cpu-prof DIR] [--no-install] [--keep] [--timeout-s N]
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { MeshBench, makeFiles, BENCH_NODES } from './bench-mesh.ts'
import type { BenchNode } from './bench-mesh.ts'
import { formatProfileSummary, summarizeCpuProfile } from './cpu-profile.ts'
import { ensureRsync, RsyncFanOut } from './rsync-fanout.ts'
import { measureStreamLimit } from './stream-limit.ts'
import { pushBatch, pushEach, syncDisks } from './bench-rsync.ts'
import { busyCores, machineCpuTimes } from './proc-stats.ts'
import { startWatchdog } from './watchdog.ts'
import { BroadcastBench } from './bench-broadcast.ts'
import { percentile, ratio, renderTable } from './bench-report.ts'
import type { BenchFigures, PhaseRecord } from './bench-report.ts'

const KiB = 1024
const MiB = 1024 * KiB
const PHASES = ['stream', 'rsync', 'e2e', 'small', 'latency', 'broadcast'] as const
type Phase = typeof PHASES[number]

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
    'broadcast-followers': { type: 'string' },
    'broadcast-mib': { type: 'string' },
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
    '                      [--latency-mib N] [--stream-mib N] [--broadcast-followers N] [--broadcast-mib N]\n' +
    '                      [--only e2e,small,latency,rsync,stream,broadcast] [--cpu-prof DIR]\n' +
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
  broadcastFollowers: Math.round(num('broadcast-followers', opts['broadcast-followers'], 3, 10)),
  broadcastBytes: Math.round(num('broadcast-mib', opts['broadcast-mib'], 8, 200) * MiB),
  timeoutMs: num('timeout-s', opts['timeout-s'], 120, 900) * 1000
}
const only = new Set<Phase>(opts.only == null ? PHASES : opts.only.split(',').map((s) => s.trim()).filter((s): s is Phase => {
  if ((PHASES as readonly string[]).includes(s)) return true
  process.stderr.write(`--only: unknown phase ${s} (phases: ${PHASES.join(', ')})\n`)
  process.exit(2)
}))
const meshPhases = (['e2e', 'small', 'latency'] as const).filter((p) => only.has(p))
const say = (s: string): void => { process.stderr.write(s + '\n') }

const root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-bench-'))
// If this process is killed without a chance to clean up, the watchdog stops the daemons and removes root.
const watchdog = startWatchdog(root)
const cpuProfDir = opts['cpu-prof'] != null ? path.resolve(opts['cpu-prof']) : undefined
let mesh: MeshBench | undefined
let rsync: RsyncFanOut | undefined
let broadcast: BroadcastBench | undefined
let cleaning: Promise<void> | undefined
let interrupted = false
const interrupt = new AbortController()
async function cleanup (): Promise<void> {
  cleaning ??= (async () => {
    await rsync?.stop().catch(() => {})
    await mesh?.stop().catch(() => {})
    await broadcast?.stop().catch(() => {})
    if (opts.keep) say(`kept ${root}`)
    else await fs.rm(root, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 })
    watchdog.stop()
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

const MBps = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000)

/** Runs one phase and records its wall time, the load average around it and (mesh phases) the daemons' peak RSS. */
async function phase (f: BenchFigures, name: string, fn: () => Promise<void>): Promise<void> {
  const loadAtStart = os.loadavg()[0] ?? 0
  const started = performance.now()
  await fn()
  const rec: PhaseRecord = { seconds: (performance.now() - started) / 1000, loadAtStart, loadAtEnd: os.loadavg()[0] ?? 0 }
  if (mesh != null && ['e2e', 'small', 'latency'].includes(name)) rec.peakRssMiB = await mesh.peakRssMiB()
  f.phases[name] = rec
}

async function streamPhase (f: BenchFigures): Promise<void> {
  say(`libp2p single stream: ${cfg.streamBytes / MiB} MiB in 1 MiB sends, receiver in a worker thread, then on the same thread`)
  const two = await measureStreamLimit({ totalBytes: cfg.streamBytes, receiverInWorker: true })
  f.streamLimitMBps = two.MBps
  const one = await measureStreamLimit({ totalBytes: cfg.streamBytes, receiverInWorker: false })
  f.streamLimitOneThreadMBps = one.MBps
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
  const fanOut = new RsyncFanOut(avail.rsync, path.join(root, 'rsync'))
  rsync = fanOut
  try {
    interrupt.signal.throwIfAborted()
    await fanOut.start(2)
    if (only.has('e2e') && cfg.files > 0) {
      say(`rsync fan-out: ${cfg.files} × ${cfg.fileBytes / MiB} MiB to 2 daemons at once`)
      const ms = await pushBatch(fanOut, 'e2e', makeFiles('e2e', 1, cfg.files, cfg.fileBytes))
      f.rsyncMBps = MBps(cfg.files * cfg.fileBytes, ms)
    }
    if (only.has('small') && cfg.smallFiles > 0) {
      say(`rsync fan-out: ${cfg.smallFiles} × ${cfg.smallBytes / KiB} KiB to 2 daemons at once`)
      const ms = await pushBatch(fanOut, 'small', makeFiles('small', 2, cfg.smallFiles, cfg.smallBytes))
      f.rsyncSmallFilesPerSec = cfg.smallFiles / (ms / 1000)
    }
    if (only.has('latency') && cfg.latencyRuns > 0) {
      say(`rsync fan-out latency: ${cfg.latencyRuns} pushes of one ${cfg.latencyBytes / MiB} MiB file to 2 daemons at once`)
      const samples = await pushEach(fanOut, 'lat', makeFiles('lat', 3, cfg.latencyRuns, cfg.latencyBytes))
      f.rsyncLatencyP50Ms = percentile(samples, 50)
      f.rsyncLatencyP99Ms = percentile(samples, 99)
    }
  } finally {
    await fanOut.stop()
    rsync = undefined
    await fs.rm(fanOut.root, { recursive: true, force: true })
  }
}

function cpuDelta (before: Record<BenchNode, number | null>, after: Record<BenchNode, number | null>): Record<BenchNode, number | null> {
  return Object.fromEntries(BENCH_NODES.map((n) => {
    const a = before[n]
    const b = after[n]
    return [n, a == null || b == null ? null : b - a]
  })) as Record<BenchNode, number | null>
}

async function meshPhase (f: BenchFigures): Promise<boolean> {
  if (cpuProfDir != null) await fs.mkdir(cpuProfDir, { recursive: true })
  const m = new MeshBench({ root, timeoutMs: cfg.timeoutMs, say, signal: interrupt.signal, ...(cpuProfDir != null ? { nodeOptions: `--cpu-prof --cpu-prof-dir=${cpuProfDir}` } : {}) })
  mesh = m
  say('starting 1 ingest + 1 processor + 1 backup daemon')
  await m.start()
  f.rssAtStartMiB = await m.rssMiB()
  const pids = Object.fromEntries(BENCH_NODES.map((n) => [n, m.daemon(n).info.pid]))
  if (only.has('e2e') && cfg.files > 0) await phase(f, 'e2e', async () => {
    const files = makeFiles('e2e', 1, cfg.files, cfg.fileBytes)
    await syncDisks()
    say(`end to end: ${cfg.files} × ${cfg.fileBytes / MiB} MiB dropped into the inbox`)
    const served0 = await m.servedBytes()
    const cpu0 = await m.cpuSeconds()
    const machine0 = await machineCpuTimes()
    const r = await m.dropBatch(files, 'end to end')
    const machine1 = await machineCpuTimes()
    const cpu1 = await m.cpuSeconds()
    if (machine0 != null && machine1 != null) f.e2eMachineBusyCores = busyCores(machine0, machine1, os.cpus().length)
    const served1 = await m.servedBytes()
    f.e2eMBps = MBps(r.bytes, r.elapsedMs)
    f.e2eSeconds = r.elapsedMs / 1000
    f.e2eIntakeSeconds = r.intakeMs / 1000
    f.e2eReceivedToReceiptsP50Ms = percentile(r.receivedToDoneMs, 50)
    f.landingEgressRatio = (served1.ingest - served0.ingest) / r.bytes
    f.peerEgressRatio = (served1.processor - served0.processor + served1.backup - served0.backup) / r.bytes
    f.e2eCpuSeconds = cpuDelta(cpu0, cpu1)
    await m.waitIdle()
  })
  if (only.has('small') && cfg.smallFiles > 0) await phase(f, 'small', async () => {
    const files = makeFiles('small', 2, cfg.smallFiles, cfg.smallBytes)
    await syncDisks()
    say(`small files: ${cfg.smallFiles} × ${cfg.smallBytes / KiB} KiB dropped into the inbox`)
    const cpu0 = await m.cpuSeconds()
    const machine0 = await machineCpuTimes()
    const r = await m.dropBatch(files, 'small files')
    const machine1 = await machineCpuTimes()
    f.smallCpuSeconds = cpuDelta(cpu0, await m.cpuSeconds())
    if (machine0 != null && machine1 != null) f.smallMachineBusyCores = busyCores(machine0, machine1, os.cpus().length)
    f.smallFilesPerSec = r.files / (r.elapsedMs / 1000)
    f.smallIntakeFilesPerSec = r.files / (r.intakeMs / 1000)
    f.smallReceivedToReceiptsP50Ms = percentile(r.receivedToDoneMs, 50)
    await m.waitIdle()
  })
  if (only.has('latency') && cfg.latencyRuns > 0) await phase(f, 'latency', async () => {
    const files = makeFiles('lat', 3, cfg.latencyRuns, cfg.latencyBytes)
    say(`latency: ${cfg.latencyRuns} runs of one ${cfg.latencyBytes / MiB} MiB file, drop -> both receipts`)
    const total: number[] = []
    const detect: number[] = []
    const place: number[] = []
    const transfer: number[] = []
    for (const file of files) {
      await syncDisks()
      const r = await m.dropOne(file)
      total.push(r.doneMs - r.renamedMs)
      if (r.times.receivedMs != null) detect.push(r.times.receivedMs - r.renamedMs)
      if (r.times.receivedMs != null && r.times.placedMs != null) place.push(r.times.placedMs - r.times.receivedMs)
      if (r.times.placedMs != null) transfer.push(r.doneMs - r.times.placedMs)
      await m.waitIdle()
    }
    f.latencyP50Ms = percentile(total, 50)
    f.latencyP99Ms = percentile(total, 99)
    f.latencyP50BreakdownMs = { inboxToReceived: percentile(detect, 50), receivedToPlaced: percentile(place, 50), placedToBothReceipts: percentile(transfer, 50) }
  })
  const rss = await m.peakRssMiB()
  f.rssMiB = rss
  f.rssAtEndMiB = await m.rssMiB()
  f.maxRssMiB = Math.max(...Object.values(rss).filter((v): v is number => v != null))
  say(`verifying ${m.ledger.length} files against their sources`)
  const v = await m.verify()
  f.verified = v.ok
  f.verifiedFiles = v.report.archivedOk
  for (const p of v.problems) say(`VERIFY FAILED: ${p}`)
  await m.stop()
  if (cpuProfDir != null) {
    for (const name of await fs.readdir(cpuProfDir)) {
      const node = BENCH_NODES.find((n) => name.includes(`.${String(pids[n])}.`))
      if (node == null || !name.endsWith('.cpuprofile')) continue
      process.stdout.write(formatProfileSummary(node, await summarizeCpuProfile(path.join(cpuProfDir, name))) + '\n\n')
    }
  }
  return v.ok
}

/** 1 publisher -> N followers, one file: seconds until every follower switched, publisher egress / file size. */
async function broadcastPhase (f: BenchFigures): Promise<boolean> {
  if (cfg.broadcastFollowers < 1 || cfg.broadcastBytes < 1) {
    f.broadcastReason = 'skipped: --broadcast-followers or --broadcast-mib is 0'
    return true
  }
  if (cpuProfDir != null) await fs.mkdir(cpuProfDir, { recursive: true })
  const b = new BroadcastBench({ root, followers: cfg.broadcastFollowers, fileBytes: cfg.broadcastBytes, timeoutMs: cfg.timeoutMs, say, signal: interrupt.signal, ...(cpuProfDir != null ? { nodeOptions: `--cpu-prof --cpu-prof-dir=${cpuProfDir}` } : {}) })
  broadcast = b
  try {
    say(`starting 1 publisher + ${cfg.broadcastFollowers} follower daemons`)
    await b.start()
    await syncDisks()
    say(`broadcast: one ${cfg.broadcastBytes / MiB} MiB file published to ${cfg.broadcastFollowers} followers`)
    const r = await b.run()
    f.broadcastSeconds = r.seconds
    f.publisherEgressRatio = r.publisherEgressRatio
    f.broadcastFollowersEgressRatio = r.followersEgressRatio
    f.broadcastSwitchP50Seconds = percentile(r.switchSeconds, 50)
    f.broadcastPublishSeconds = r.publishSeconds
    f.broadcastMBps = cfg.broadcastBytes * cfg.broadcastFollowers / 1e6 / r.seconds
    f.broadcastPeakRssMiB = r.peakRssMiB
    f.broadcastVerified = r.verified
    f.broadcastChannelMessages = r.channelMessages
    f.broadcastCpuSeconds = r.cpuSeconds
    f.broadcastIdleCpuPerSecond = r.idleCpuPerSecond
    for (const p of r.problems) say(`BROADCAST VERIFY FAILED: ${p}`)
    return r.verified
  } finally {
    await b.stop()
    broadcast = undefined
  }
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
    broadcastFollowers: cfg.broadcastFollowers, broadcastMiB: cfg.broadcastBytes / MiB, broadcastSeconds: null, publisherEgressRatio: null,
    maxRssMiB: null, verified: null,
    cpus: os.cpus().length, loadAvg1m: os.loadavg()[0] ?? 0, node: process.version, phases: {}
  }
  say(`filemesh bench (${f.mode}) in ${root}; ${f.cpus} CPUs, load ${f.loadAvg1m.toFixed(2)}`)
  if (only.has('stream')) await phase(f, 'stream', async () => { await streamPhase(f) })
  interrupt.signal.throwIfAborted()
  if (only.has('rsync')) await phase(f, 'rsync', async () => { await rsyncPhase(f) })
  interrupt.signal.throwIfAborted()
  let ok = true
  if (meshPhases.length > 0) ok = await meshPhase(f)
  interrupt.signal.throwIfAborted()
  if (only.has('broadcast')) await phase(f, 'broadcast', async () => { ok = await broadcastPhase(f) && ok })
  const broadcastRss = [f.broadcastPeakRssMiB?.publisher, f.broadcastPeakRssMiB?.followersMax].filter((v): v is number => v != null)
  if (broadcastRss.length > 0) f.maxRssMiB = Math.max(f.maxRssMiB ?? 0, ...broadcastRss)
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
