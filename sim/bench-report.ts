/**
 * The figures `npm run bench` prints: their JSON shape (the last line of its output, a contract for CI and
 * for the closing note) and the human table with each figure's reference, ratio and the issue's goal.
 */

export type NodeFigures = Record<'ingest' | 'processor' | 'backup', number | null>

export interface PhaseRecord {
  seconds: number
  /** 1-minute load average when the phase started and ended: other work on the machine skews every figure. */
  loadAtStart: number
  loadAtEnd: number
  /** Each daemon's peak RSS (VmHWM) at the end of a mesh phase. */
  peakRssMiB?: NodeFigures
}

export interface BenchFigures {
  mode: 'quick' | 'full'
  files: number
  fileMiB: number
  smallFiles: number
  smallKiB: number
  latencyRuns: number
  latencyMiB: number
  streamMiB: number
  /** Payload MB/s (1e6 bytes) from the first drop to the last file with both durable receipts. */
  e2eMBps: number | null
  e2eSeconds?: number
  /** When the ingest had received (claimed, hashed, recorded) the last file, from the first drop. */
  e2eIntakeSeconds?: number
  /** Median per file from received by the ingest to both receipts recorded. */
  e2eReceivedToReceiptsP50Ms?: number | null
  /** The same files pushed by two concurrent rsync --fsync to two rsync daemons on loopback. */
  rsyncMBps: number | null
  rsync?: string
  rsyncFsync?: boolean
  rsyncSkipped?: string
  /** One libp2p stream, receiver on its own thread (as two daemons would be). */
  streamLimitMBps: number | null
  /** The same with both nodes on one thread. */
  streamLimitOneThreadMBps: number | null
  e2eVsRsync: number | null
  e2eVsStreamLimit: number | null
  /** Block bytes the ingest node served during the end-to-end run / payload bytes. */
  landingEgressRatio: number | null
  /** Block bytes the processor and backup served to each other / payload bytes. */
  peerEgressRatio?: number
  e2eCpuSeconds?: NodeFigures
  /** CPUs of the whole machine busy on average during the end-to-end run (all processes, kernel included). */
  e2eMachineBusyCores?: number
  smallMachineBusyCores?: number
  smallCpuSeconds?: NodeFigures
  smallFilesPerSec: number | null
  /** Files per second the ingest received (claimed, hashed, recorded), first drop to last received. */
  smallIntakeFilesPerSec?: number
  smallReceivedToReceiptsP50Ms?: number | null
  rsyncSmallFilesPerSec: number | null
  smallVsRsync: number | null
  latencyP50Ms: number | null
  latencyP99Ms: number | null
  latencyP50BreakdownMs?: { inboxToReceived: number | null, receivedToPlaced: number | null, placedToBothReceipts: number | null }
  rsyncLatencyP50Ms: number | null
  rsyncLatencyP99Ms: number | null
  latencyP50VsRsync: number | null
  broadcastFollowers: number
  broadcastMiB: number
  /** From the publish request until every follower's NAME.current points at the new version. */
  broadcastSeconds: number | null
  /** Block bytes the publisher served during the broadcast / file size. */
  publisherEgressRatio: number | null
  /** Block bytes the followers served each other / file size. */
  broadcastFollowersEgressRatio?: number
  /** Median follower's switch time, from the publish request. */
  broadcastSwitchP50Seconds?: number | null
  /** The publish request alone (copy into the node, hash, record, announce). */
  broadcastPublishSeconds?: number
  /** File bytes delivered to all followers together per second (1e6 bytes). */
  broadcastMBps?: number
  broadcastPeakRssMiB?: { publisher: number | null, followersMax: number | null }
  /** Every follower's copy re-hashed to the source. */
  broadcastVerified?: boolean
  /** Channel gossip messages (announcements, have-maps) all nodes sent during the broadcast. */
  broadcastChannelMessages?: number
  /** CPU seconds all broadcast daemons used during the broadcast; and per second, all together, while idle before it. */
  broadcastCpuSeconds?: number | null
  broadcastIdleCpuPerSecond?: number | null
  /** Why the broadcast figures are null, when they are. */
  broadcastReason?: string
  maxRssMiB: number | null
  rssMiB?: NodeFigures
  /** Resident set size of each daemon right after it started (before any file). */
  rssAtStartMiB?: NodeFigures
  /** Resident set size of each daemon at the end, idle after the last phase. */
  rssAtEndMiB?: NodeFigures
  /** Every file archived byte-identical and processed exactly once on the right bytes (null: no mesh phase ran). */
  verified: boolean | null
  verifiedFiles?: number
  cpus: number
  loadAvg1m: number
  node: string
  phases: Record<string, PhaseRecord>
}

/** Nearest-rank percentile of `values` (p in 0..100). */
export function percentile (values: number[], p: number): number | null {
  if (values.length === 0) return null
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number
}

export function ratio (a: number | null, b: number | null): number | null {
  return a == null || b == null || b === 0 ? null : a / b
}

const fmt = (v: number | null | undefined, digits = 1, unit = ''): string => v == null ? '-' : `${v.toFixed(digits)}${unit}`
const x = (v: number | null | undefined): string => v == null ? '' : `${v.toFixed(2)}x`
const met = (v: number | null | undefined, ok: (v: number) => boolean): string => v == null ? 'n/a' : ok(v) ? 'yes' : 'NO'

function perNode (v: NodeFigures | undefined, digits: number): string {
  if (v == null) return '-'
  return Object.entries(v).map(([k, n]) => `${k} ${fmt(n, digits)}`).join(', ')
}

export function renderTable (f: BenchFigures): string {
  const rsyncRef = (s: string): string => f.rsyncSkipped != null ? `rsync skipped: ${f.rsyncSkipped}` : `rsync fan-out ${s}`
  const rows: string[][] = [
    ['figure', 'measured', 'reference (same run)', 'ratio', 'goal', 'met'],
    [`end to end (${f.files} × ${f.fileMiB} MiB)`, fmt(f.e2eMBps, 1, ' MB/s'), rsyncRef(fmt(f.rsyncMBps, 1, ' MB/s')), x(f.e2eVsRsync), '>= 1.0x rsync', met(f.e2eVsRsync, (r) => r >= 1)],
    ['', '', `libp2p 1 stream ${fmt(f.streamLimitMBps, 1, ' MB/s')} (1 thread ${fmt(f.streamLimitOneThreadMBps, 1)})`, x(f.e2eVsStreamLimit), '', ''],
    ['landing-node egress', fmt(f.landingEgressRatio, 2, 'x payload'), 'rsync fan-out sends 2x', '', '<= 1.1x', met(f.landingEgressRatio, (r) => r <= 1.1)],
    ['  owner+backup egress', fmt(f.peerEgressRatio, 2, 'x payload'), '', '', '', ''],
    [`small files (${f.smallFiles} × ${f.smallKiB} KiB)`, fmt(f.smallFilesPerSec, 0, ' files/s'), rsyncRef(fmt(f.rsyncSmallFilesPerSec, 0, ' files/s')), x(f.smallVsRsync), '>= 500 files/s', met(f.smallFilesPerSec, (r) => r >= 500)],
    [`latency p50 (${f.latencyMiB} MiB, ${f.latencyRuns} runs)`, fmt(f.latencyP50Ms, 0, ' ms'), rsyncRef(fmt(f.rsyncLatencyP50Ms, 0, ' ms')), x(f.latencyP50VsRsync), '<= 100 ms', met(f.latencyP50Ms, (r) => r <= 100)],
    ['latency p99', fmt(f.latencyP99Ms, 0, ' ms'), rsyncRef(fmt(f.rsyncLatencyP99Ms, 0, ' ms')), '', '', ''],
    [`broadcast (1 -> ${f.broadcastFollowers}, ${f.broadcastMiB} MiB)`, fmt(f.broadcastSeconds, 1, ' s'), f.broadcastReason ?? '', '', '', ''],
    ['  publisher egress', fmt(f.publisherEgressRatio, 2, 'x file'), `pushing to each sends ${f.broadcastFollowers}x`, '', '<= 1.3x', met(f.publisherEgressRatio, (r) => r <= 1.3)],
    ['max RSS per daemon', fmt(f.maxRssMiB, 0, ' MiB'), '', '', '<= 256 MiB', met(f.maxRssMiB, (r) => r <= 256)]
  ]
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? []
  const lines = rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd())
  const b = f.latencyP50BreakdownMs
  const notes = [
    `latency p50 by step: ${b == null ? '-' : `inbox -> received (detect, claim, hash) ${fmt(b.inboxToReceived, 0, ' ms')}, received -> placed ${fmt(b.receivedToPlaced, 0, ' ms')}, placed -> both receipts ${fmt(b.placedToBothReceipts, 0, ' ms')}`}`,
    `end to end: ingest received the last file after ${fmt(f.e2eIntakeSeconds, 1, ' s')} of ${fmt(f.e2eSeconds, 1, ' s')}; received -> both receipts p50 ${fmt(f.e2eReceivedToReceiptsP50Ms, 0, ' ms')} per file`,
    `end-to-end CPU seconds: ${perNode(f.e2eCpuSeconds, 1)}; machine busy ${fmt(f.e2eMachineBusyCores, 2)} of ${f.cpus} CPUs`,
    `small files: ingest intake ${fmt(f.smallIntakeFilesPerSec, 0, ' files/s')}; received -> both receipts p50 ${fmt(f.smallReceivedToReceiptsP50Ms, 0, ' ms')} per file; CPU seconds ${perNode(f.smallCpuSeconds, 1)}; machine busy ${fmt(f.smallMachineBusyCores, 2)} of ${f.cpus} CPUs`,
    `peak RSS MiB: ${perNode(f.rssMiB, 0)} (RSS after start: ${perNode(f.rssAtStartMiB, 0)}; at the end: ${perNode(f.rssAtEndMiB, 0)})`,
    `broadcast: publish request ${fmt(f.broadcastPublishSeconds, 2, ' s')}; median follower switched after ${fmt(f.broadcastSwitchP50Seconds, 1, ' s')}; followers served each other ${fmt(f.broadcastFollowersEgressRatio, 2, 'x file')}; ${f.broadcastChannelMessages ?? '-'} channel messages; daemons' CPU ${fmt(f.broadcastCpuSeconds, 1, ' s')} (idle ${fmt(f.broadcastIdleCpuPerSecond, 2, ' CPU-s/s')}); ${fmt(f.broadcastMBps, 1, ' MB/s')} delivered in all; peak RSS MiB publisher ${fmt(f.broadcastPeakRssMiB?.publisher, 0)}, followers max ${fmt(f.broadcastPeakRssMiB?.followersMax, 0)}; verified ${f.broadcastVerified == null ? '-' : f.broadcastVerified ? 'yes' : 'NO'}`,
    `rsync: ${f.rsync ?? f.rsyncSkipped ?? 'not run'}${f.rsyncFsync === false ? ' (no --fsync: sync after the push, timed)' : ''}`,
    `verified: ${f.verified == null ? 'no mesh phase ran' : f.verified ? `yes, ${f.verifiedFiles ?? 0} files byte-identical in the archive and processed exactly once` : 'NO (see the errors above)'}`,
    `phases: ${Object.entries(f.phases).map(([name, p]) => `${name} ${p.seconds.toFixed(1)} s (load ${p.loadAtStart.toFixed(1)} -> ${p.loadAtEnd.toFixed(1)}${p.peakRssMiB != null ? `, peak RSS ${perNode(p.peakRssMiB, 0)}` : ''})`).join('; ')}`,
    `machine: ${f.cpus} CPUs, load ${f.loadAvg1m.toFixed(2)} at start, Node ${f.node}; MB = 1e6 bytes`
  ]
  return [`filemesh bench (${f.mode})`, ...lines, '', ...notes].join('\n')
}
