/**
 * `npm run churn`: the churn harness's command line. Starts real daemons on loopback (each in its own network
 * namespace when the schedule partitions the mesh), injects files while a seeded nemesis kills and restarts
 * them, drains and partitions, waits for quiescence, and checks DESIGN §5 I1–I5 and I7 with an independent
 * checker. Prints the schedule first, progress on stderr, a summary and ONE final JSON line on
 * stdout. Exit 0 = no I1–I3 violation, 1 = violation (seed and replay command printed, run dir kept),
 * 2 = usage, 70 = the harness itself failed, 130 = interrupted.
 *
 *   npm run churn -- [--seed S] [--nodes N] [--files F] [--minutes M] [--kill-every-s K] [--replay schedule.json]
 *                    [--partitions N] [--partition-s MIN[-MAX]] [--drains [N]] [--leave [N]] [--joins J]
 *                    [--min-kib K | --min-mib M] [--max-kib K | --max-mib M] [--process-ms MS]
 *                    [--ingests I] [--backups B] [--quiesce-s S] [--drain-timeout-s S] [--keep]
 *   e.g. the long run of issue #3 (7 daemons + 1 joining = 8, 65 SIGKILLs, 1 partition, 1 drain, 1.7 GiB):
 *     npm run churn -- --seed 7 --nodes 7 --files 500 --minutes 20 --kill-every-s 18 --partitions 1 --drains 1 --min-mib 1 --max-mib 8
 *   npm run churn -- --check RUN_DIR     (judge a kept run directory again)
 */
import fs from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { recheck, runChurn } from './churn-runner.ts'
import { formatReport, summaryJson } from './churn-report.ts'
import { DEFAULT_DRAINS, DEFAULT_LEAVES, ScheduleError, defaultConfig, generateSchedule, parseSchedule } from './churn-schedule.ts'
import type { ChurnSchedule, ScheduleConfig } from './churn-schedule.ts'

const USAGE = `usage: npm run churn -- [options]
  --seed S            seed of the schedule (default: random, printed)
  --nodes N           daemons at the start: ≥1 ingest, ≥2 backups, the rest processors (default 7)
  --files F           files to inject (default 200)
  --minutes M         length of the fault window; files arrive in its first 85% (default 3)
  --kill-every-s K    mean time between SIGKILLs, uniform in [K/2, 3K/2] (default 6)
  --joins J           processors joining with a new data dir (default 1)
  --leave [N]         N processors leave for good (SIGTERM, no drain) (N default 1; default none)
  --drains [N]        N processors drained with \`filemesh drain\` until "safe to remove", then stopped (N default 1; default none)
  --partitions N      N network partitions of the mesh into two sides (default 0; --partition = 1); needs root
                      and iproute2 (each daemon in its own network namespace), else skipped with the reason
                      (FILEMESH_NETNS=off skips them on purpose)
  --partition-s MIN[-MAX]   how long each partition lasts, uniform (default 20-40: longer than the 15 s reassign grace)
  --min-kib K --max-kib K   file sizes, log-uniform (default 64 KiB – 4 MiB); or --min-mib M --max-mib M
  --process-ms MS     sleep in the processing command (default 300)
  --ingests I --backups B   (default 1 and 2)
  --quiesce-s S       how long after the last fault the mesh may take to finish (default 120)
  --drain-timeout-s S how long a drain may take to reach "safe to remove" (default 300)
  --replay FILE       run a schedule.json written by an earlier run (other schedule options are ignored)
  --check DIR         judge a kept run directory again (no daemons started)
  --keep              keep the run directory even on success
`

function usage (msg: string): never {
  process.stderr.write(`churn: ${msg}\n${USAGE}`)
  process.exit(2)
}

let parsed
try {
  parsed = parseArgs({
    allowPositionals: false,
    options: {
      seed: { type: 'string' },
      nodes: { type: 'string' },
      files: { type: 'string' },
      minutes: { type: 'string' },
      'kill-every-s': { type: 'string' },
      joins: { type: 'string' },
      leave: { type: 'string' },
      partition: { type: 'boolean', default: false },
      partitions: { type: 'string' },
      'partition-s': { type: 'string' },
      drains: { type: 'string' },
      'drain-timeout-s': { type: 'string' },
      'min-kib': { type: 'string' },
      'max-kib': { type: 'string' },
      'min-mib': { type: 'string' },
      'max-mib': { type: 'string' },
      'process-ms': { type: 'string' },
      ingests: { type: 'string' },
      backups: { type: 'string' },
      'quiesce-s': { type: 'string', default: '120' },
      replay: { type: 'string' },
      check: { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false }
    },
    // `--leave` and `--drains` without a number mean one processor.
    args: process.argv.slice(2).flatMap((a, i, all) => {
      const bare = all[i + 1] == null || all[i + 1]?.startsWith('--') === true
      return a === '--leave' && bare ? [a, String(DEFAULT_LEAVES)] : a === '--drains' && bare ? [a, String(DEFAULT_DRAINS)] : [a]
    })
  })
} catch (err: any) {
  usage(err.message)
}
const opts = parsed.values
if (opts.help) {
  process.stdout.write(USAGE)
  process.exit(0)
}

function num (name: string, v: string | undefined, min: number): number | undefined {
  if (v == null) return undefined
  const n = Number(v)
  if (!Number.isFinite(n) || n < min) usage(`--${name} must be a number ≥ ${min}`)
  return n
}

if (opts.check != null) {
  const { report, ok, schedule: s, quiesceLimitMs } = await recheck(opts.check).catch((err) => usage(`cannot check ${opts.check}: ${err.message}`))
  const ctx = { seed: s.config.seed, root: opts.check, scheduleFile: `${opts.check}/schedule.json`, replayCommand: `npm run churn -- --replay ${opts.check}/schedule.json`, seedCommand: seedCommand(s.config), ok, kept: true, quiesceLimitMs }
  process.stdout.write(formatReport(report, ctx) + '\n' + JSON.stringify(summaryJson(report, ctx)) + '\n')
  process.exit(ok ? 0 : 1)
}

let schedule: ChurnSchedule
try {
  if (opts.replay != null) {
    schedule = parseSchedule(await fs.readFile(opts.replay, 'utf8'))
  } else {
    const seed = num('seed', opts.seed, 0) ?? Math.floor(Math.random() * 2 ** 31)
    const c: ScheduleConfig = defaultConfig(seed)
    c.nodes = num('nodes', opts.nodes, 4) ?? c.nodes
    c.files = num('files', opts.files, 1) ?? c.files
    c.faultWindowMs = Math.round((num('minutes', opts.minutes, 0.05) ?? c.faultWindowMs / 60_000) * 60_000)
    c.killEveryMs = Math.round((num('kill-every-s', opts['kill-every-s'], 0.5) ?? c.killEveryMs / 1000) * 1000)
    c.joins = num('joins', opts.joins, 0) ?? c.joins
    c.leaves = num('leave', opts.leave, 0) ?? 0
    c.drains = num('drains', opts.drains, 0) ?? 0
    c.partitions = num('partitions', opts.partitions, 0) ?? (opts.partition ? 1 : 0)
    if (opts['partition-s'] != null) {
      const m = /^(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?$/.exec(opts['partition-s'])
      if (m == null) usage('--partition-s must be S or MIN-MAX (seconds)')
      c.partitionMsMin = Math.round(Number(m[1]) * 1000)
      c.partitionMsMax = Math.round(Number(m[2] ?? m[1]) * 1000)
    }
    if (opts['min-kib'] != null && opts['min-mib'] != null) usage('give --min-kib or --min-mib, not both')
    if (opts['max-kib'] != null && opts['max-mib'] != null) usage('give --max-kib or --max-mib, not both')
    c.fileBytesMin = Math.round((num('min-kib', opts['min-kib'], 0) ?? ((num('min-mib', opts['min-mib'], 0) ?? c.fileBytesMin / 1048576) * 1024)) * 1024)
    c.fileBytesMax = Math.round((num('max-kib', opts['max-kib'], 0) ?? ((num('max-mib', opts['max-mib'], 0) ?? c.fileBytesMax / 1048576) * 1024)) * 1024)
    c.processMs = num('process-ms', opts['process-ms'], 0) ?? c.processMs
    c.ingests = num('ingests', opts.ingests, 1) ?? c.ingests
    c.backups = num('backups', opts.backups, 2) ?? c.backups
    schedule = generateSchedule(c)
  }
} catch (err: any) {
  if (err instanceof ScheduleError || err.code === 'ENOENT') usage(err.message)
  throw err
}

/** The command that regenerates this schedule from its seed. */
function seedCommand (c: ScheduleConfig): string {
  const d = defaultConfig(c.seed)
  const parts = [`npm run churn -- --seed ${c.seed}`]
  if (c.nodes !== d.nodes) parts.push(`--nodes ${c.nodes}`)
  if (c.files !== d.files) parts.push(`--files ${c.files}`)
  if (c.faultWindowMs !== d.faultWindowMs) parts.push(`--minutes ${c.faultWindowMs / 60_000}`)
  if (c.killEveryMs !== d.killEveryMs) parts.push(`--kill-every-s ${c.killEveryMs / 1000}`)
  if (c.joins !== d.joins) parts.push(`--joins ${c.joins}`)
  if (c.leaves > 0) parts.push(`--leave ${c.leaves}`)
  if (c.drains > 0) parts.push(`--drains ${c.drains}`)
  if (c.partitions > 0) parts.push(`--partitions ${c.partitions}`)
  if (c.partitions > 0 && (c.partitionMsMin !== d.partitionMsMin || c.partitionMsMax !== d.partitionMsMax)) parts.push(`--partition-s ${c.partitionMsMin / 1000}-${c.partitionMsMax / 1000}`)
  const size = (n: number): string => n % 1048576 === 0 ? `-mib ${n / 1048576}` : `-kib ${n / 1024}`
  if (c.fileBytesMin !== d.fileBytesMin) parts.push(`--min${size(c.fileBytesMin)}`)
  if (c.fileBytesMax !== d.fileBytesMax) parts.push(`--max${size(c.fileBytesMax)}`)
  if (c.processMs !== d.processMs) parts.push(`--process-ms ${c.processMs}`)
  if (c.ingests !== d.ingests) parts.push(`--ingests ${c.ingests}`)
  if (c.backups !== d.backups) parts.push(`--backups ${c.backups}`)
  return parts.join(' ')
}

const ac = new AbortController()
let interrupted = false
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) process.exit(130)
    interrupted = true
    process.stderr.write(`\n${sig}: stopping the daemons and cleaning up (again to exit at once)\n`)
    ac.abort()
  })
}

const say = (line: string): void => { process.stderr.write(line + '\n') }
const quiesceLimitMs = (num('quiesce-s', opts['quiesce-s'], 1) ?? 120) * 1000
const drainTimeoutS = num('drain-timeout-s', opts['drain-timeout-s'], 1)
try {
  const result = await runChurn({ schedule, quiesceLimitMs, keep: opts.keep, say, signal: ac.signal, ...(drainTimeoutS != null ? { drainTimeoutMs: drainTimeoutS * 1000 } : {}) })
  const ctx = { seed: schedule.config.seed, root: result.root, scheduleFile: result.scheduleFile, replayCommand: result.replayCommand, seedCommand: seedCommand(schedule.config), ok: result.ok, kept: result.kept, quiesceLimitMs }
  process.stdout.write(formatReport(result.report, ctx) + '\n')
  process.stdout.write(JSON.stringify(summaryJson(result.report, ctx)) + '\n')
  process.exitCode = result.ok ? 0 : 1
} catch (err: any) {
  if (interrupted) {
    process.exitCode = 130
  } else {
    say(`churn: the harness failed: ${err?.stack ?? err}`)
    say(`seed ${schedule.config.seed}; replay with: ${seedCommand(schedule.config)}`)
    process.exitCode = 70
  }
}
