/**
 * Runs the owner's processing command on one file: `/bin/sh -c COMMAND sh PATH` (so `$1` is the
 * path) with FILEMESH_* variables, in the file's directory and in its own process group, so a
 * timeout or an abort can stop the command and everything it started. Output is logged line by line
 * with the file's CID, bounded in line length and line count. The exit status becomes an outcome;
 * the daemon decides about retries from its persisted attempt count (see `backoffMs`).
 *
 * Exit status contract for the command: 0 = done, 75 (EX_TEMPFAIL) = try again later, anything
 * else (or death by a signal) = failed. The command should be idempotent: it gets FILEMESH_EPOCH
 * and FILEMESH_ATTEMPT, and a file may be processed again after a crash or partition.
 */

import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import fs from 'node:fs/promises'
import * as path from 'node:path'
import { performance } from 'node:perf_hooks'
import { KiB } from '../protocols/limits.ts'
import { createLogger } from './log.ts'
import type { Logger } from './log.ts'

/** Exit status asking for a retry (sysexits EX_TEMPFAIL). */
export const EXIT_TEMPFAIL = 75
export const DEFAULT_PROCESS_TIMEOUT_MS = 60 * 60_000
/** Time between SIGTERM and SIGKILL to the command's process group. */
export const DEFAULT_KILL_GRACE_MS = 5_000
/** After the shell exits, how long to wait for its output pipes to close (a background child may hold them). */
export const DEFAULT_OUTPUT_DRAIN_MS = 2_000
export const DEFAULT_OUTPUT_LINE_BYTES_MAX = 4 * KiB
export const DEFAULT_OUTPUT_LINES_MAX = 1000
export const DEFAULT_BACKOFF_BASE_MS = 1_000
export const DEFAULT_BACKOFF_MAX_MS = 60_000

export interface ProcessingJob {
  /** Shell command line; the file's path is `$1`. */
  command: string
  path: string
  cid: string
  /** Original file name (FILEMESH_NAME). */
  name: string
  size: number
  epoch: number
  attempt: number
}

export type ProcessOutcome = 'ok' | 'retry' | 'failed'

export interface ProcessResult {
  outcome: ProcessOutcome
  exitCode: number | null
  signal: string | null
  durationMs: number
  /** Why it failed when the exit status alone does not say: spawn error, timeout, abort. */
  error?: string
}

export interface RunProcessingInit {
  /** Kill the command (whole process group) after this long. Default 1 h. */
  timeoutMs?: number
  /** Abort kills the command like a timeout; the result says `error: 'aborted'` (never rejects). */
  signal?: AbortSignal
  log?: Logger
  /** Extra environment variables, over process.env; the FILEMESH_* variables always win. */
  env?: Record<string, string | undefined>
  killGraceMs?: number
  outputDrainMs?: number
  outputLineBytesMax?: number
  outputLinesMax?: number
  /** Called with the command's pid (= its process group ID) right after it started, e.g. to persist it. */
  onSpawn?: (pid: number) => void
}

/** Runs the processing command for `job` to completion; never rejects. */
export async function runProcessingCommand (job: ProcessingJob, options: RunProcessingInit = {}): Promise<ProcessResult> {
  const log = options.log ?? createLogger('processor')
  const started = performance.now()
  const elapsed = (): number => Math.round(performance.now() - started)
  const fields = { cid: job.cid, epoch: job.epoch, attempt: job.attempt }

  if (options.signal?.aborted === true) {
    return { outcome: 'failed', exitCode: null, signal: null, durationMs: 0, error: 'aborted' }
  }

  const filePath = path.resolve(job.path)
  const env: Record<string, string | undefined> = {
    ...process.env,
    ...options.env,
    FILEMESH_PATH: filePath,
    FILEMESH_NAME: job.name.replaceAll('\0', ''),
    FILEMESH_CID: job.cid,
    FILEMESH_SIZE: String(job.size),
    FILEMESH_EPOCH: String(job.epoch),
    FILEMESH_ATTEMPT: String(job.attempt)
  }

  let child: ChildProcess
  try {
    child = spawn('/bin/sh', ['-c', job.command, 'sh', filePath], {
      cwd: path.dirname(filePath),
      env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe']
    })
  } catch (err) {
    log.error('processing command could not start', { ...fields, err })
    return { outcome: 'failed', exitCode: null, signal: null, durationMs: elapsed(), error: errorText(err) }
  }

  if (child.pid != null && options.onSpawn != null) {
    try { options.onSpawn(child.pid) } catch (err) { log.warn('onSpawn hook failed', { ...fields, err }) }
  }
  const output = new OutputLogger(log, job.cid, options.outputLineBytesMax ?? DEFAULT_OUTPUT_LINE_BYTES_MAX, options.outputLinesMax ?? DEFAULT_OUTPUT_LINES_MAX)
  const stdoutDone = output.attach(child.stdout, 'stdout')
  const stderrDone = output.attach(child.stderr, 'stderr')

  return await new Promise<ProcessResult>((resolve) => {
    let stopReason: string | undefined
    let killTimer: NodeJS.Timeout | undefined
    let exited = false
    let settled = false

    const stop = (reason: string): void => {
      if (stopReason != null || exited) return
      stopReason = reason
      log.warn('stopping processing command', { ...fields, reason, pid: child.pid })
      killGroup(child, 'SIGTERM')
      killTimer = setTimeout(() => { killGroup(child, 'SIGKILL') }, timerMs(options.killGraceMs ?? DEFAULT_KILL_GRACE_MS))
    }
    const timeoutMs = options.timeoutMs ?? DEFAULT_PROCESS_TIMEOUT_MS
    const timeoutTimer = setTimeout(() => { stop(`timeout after ${timeoutMs} ms`) }, timerMs(timeoutMs))
    const onAbort = (): void => { stop('aborted') }
    options.signal?.addEventListener('abort', onAbort, { once: true })

    const finish = (result: ProcessResult): void => {
      if (settled) return
      settled = true
      clearTimeout(timeoutTimer)
      if (killTimer != null) clearTimeout(killTimer)
      options.signal?.removeEventListener('abort', onAbort)
      const level = result.outcome === 'ok' ? 'info' : 'warn'
      log[level]('processing command finished', { ...fields, outcome: result.outcome, code: result.exitCode, signal: result.signal, ms: result.durationMs, error: result.error })
      resolve(result)
    }

    child.on('error', (err) => {
      // Spawn failure (no /bin/sh, missing cwd). Kill failures cannot come here: we use process.kill.
      if (child.pid != null) return
      log.error('processing command could not start', { ...fields, err })
      finish({ outcome: 'failed', exitCode: null, signal: null, durationMs: elapsed(), error: errorText(err) })
    })

    child.once('spawn', () => { log.info('processing command started', { ...fields, pid: child.pid }) })

    child.once('exit', (code, signal) => {
      exited = true
      const durationMs = elapsed()
      const reason = stopReason
      clearTimeout(timeoutTimer)
      options.signal?.removeEventListener('abort', onAbort)
      // A background child may still hold the pipes: wait a bounded time for the rest of the output.
      const drain = setTimeout(() => {
        log.warn('processing command left processes holding its output open; no longer reading', { ...fields })
        child.stdout?.destroy()
        child.stderr?.destroy()
      }, options.outputDrainMs ?? DEFAULT_OUTPUT_DRAIN_MS)
      void Promise.all([stdoutDone, stderrDone]).then(() => {
        clearTimeout(drain)
        // A stopped command's leader is gone; whatever is left in its group goes too.
        if (reason != null) killGroup(child, 'SIGKILL')
        output.finish()
        finish({ ...classify(code, signal, reason), durationMs })
      })
    })
  })
}

function classify (code: number | null, signal: NodeJS.Signals | null, stopReason: string | undefined): Omit<ProcessResult, 'durationMs'> {
  const base = { exitCode: code, signal }
  if (stopReason != null) return { ...base, outcome: 'failed', error: stopReason }
  if (code === 0) return { ...base, outcome: 'ok' }
  if (code === EXIT_TEMPFAIL) return { ...base, outcome: 'retry' }
  if (signal != null) return { ...base, outcome: 'failed', error: `killed by ${signal}` }
  return { ...base, outcome: 'failed', error: `exit status ${code}` }
}

/** setTimeout fires at once for delays above 2^31-1 ms (~24.8 days); clamp instead. */
function timerMs (ms: number): number {
  return Math.min(Math.max(ms, 0), 2 ** 31 - 1)
}

function killGroup (child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid == null) return
  try {
    process.kill(-child.pid, signal)
  } catch {
    // ESRCH: the group is already gone.
  }
}

function errorText (err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err)
}

const NEWLINE = 0x0a

/** Splits a command's output into lines and logs them, with a cap on line length and line count. */
class OutputLogger {
  private readonly log: Logger
  private readonly cid: string
  private readonly lineBytesMax: number
  private readonly linesMax: number
  private lines = 0
  private droppedLines = 0
  private truncatedNoted = false

  constructor (log: Logger, cid: string, lineBytesMax: number, linesMax: number) {
    this.log = log
    this.cid = cid
    this.lineBytesMax = lineBytesMax
    this.linesMax = linesMax
  }

  /** Reads `stream` to its end (or destruction); resolves then. */
  async attach (stream: NodeJS.ReadableStream | null, name: 'stdout' | 'stderr'): Promise<void> {
    if (stream == null) return
    let pending: Buffer[] = []
    let pendingBytes = 0
    /** The current line passed lineBytesMax: it was logged cut short, the rest is skipped. */
    let skipping = false
    const emit = (line: Buffer, cut: boolean): void => {
      this.line(name, line.toString('utf8').replace(/\r$/, ''), cut)
    }
    await new Promise<void>((resolve) => {
      stream.on('data', (chunk: Buffer) => {
        let start = 0
        while (start < chunk.length) {
          const nl = chunk.indexOf(NEWLINE, start)
          const end = nl < 0 ? chunk.length : nl
          if (!skipping) {
            const take = Math.min(end - start, this.lineBytesMax - pendingBytes)
            pending.push(chunk.subarray(start, start + take))
            pendingBytes += take
            if (pendingBytes >= this.lineBytesMax && (nl < 0 || end - start > take)) {
              emit(Buffer.concat(pending), true)
              pending = []
              pendingBytes = 0
              skipping = true
            }
          }
          if (nl < 0) break
          if (!skipping) emit(Buffer.concat(pending), false)
          pending = []
          pendingBytes = 0
          skipping = false
          start = nl + 1
        }
      })
      const done = (): void => {
        if (pendingBytes > 0 && !skipping) emit(Buffer.concat(pending), false)
        pending = []
        pendingBytes = 0
        resolve()
      }
      stream.once('end', done)
      stream.once('close', done)
      stream.on('error', done)
    })
  }

  private line (stream: 'stdout' | 'stderr', text: string, cut: boolean): void {
    if (this.lines >= this.linesMax) {
      this.droppedLines++
      if (!this.truncatedNoted) {
        this.truncatedNoted = true
        this.log.warn('output truncated', { cid: this.cid, lines: this.linesMax })
      }
      return
    }
    this.lines++
    this.log.info('command output', { cid: this.cid, stream, line: text, ...(cut ? { cut: true } : {}) })
  }

  /** Logs how many lines were dropped, if any. */
  finish (): void {
    if (this.droppedLines > 0) this.log.warn('output lines dropped', { cid: this.cid, lines: this.droppedLines })
  }
}

export interface BackoffInit {
  baseMs?: number
  maxMs?: number
  /** Uniform in [0, 1). Core code passes its seeded Random; Math.random only in adapters. */
  random?: () => number
}

/**
 * Delay before retry number `attempt` (1 = first retry): exponential from `baseMs`, capped at
 * `maxMs`, with "equal jitter": uniform in [cap/2, cap), so retries spread out but never collapse to 0.
 */
export function backoffMs (attempt: number, init: BackoffInit = {}): number {
  const baseMs = init.baseMs ?? DEFAULT_BACKOFF_BASE_MS
  const maxMs = init.maxMs ?? DEFAULT_BACKOFF_MAX_MS
  const random = init.random ?? Math.random
  const exponent = Math.min(Math.max(Math.floor(attempt) - 1, 0), 52)
  const capMs = Math.min(maxMs, baseMs * 2 ** exponent)
  const r = random()
  if (!(r >= 0 && r < 1)) throw new RangeError(`backoffMs: random() must return a number in [0, 1), got ${r}`)
  return Math.floor(capMs / 2 + r * capMs / 2)
}

/**
 * Kills the process group `pgid` if it is still a processing command for `cid` (checked through
 * /proc/PID/environ, so a reused PID of an unrelated process is never signalled). Used on restart: a daemon
 * killed with SIGKILL leaves its commands running in their own groups; they must not finish a second run
 * alongside the new attempt. Returns true if a group was killed.
 */
export async function killOrphanedCommand (pgid: number, cid: string): Promise<boolean> {
  let environ: string
  try {
    environ = await fs.readFile(`/proc/${pgid}/environ`, 'latin1')
  } catch {
    return false
  }
  if (!environ.split('\0').includes(`FILEMESH_CID=${cid}`)) return false
  try {
    process.kill(-pgid, 'SIGKILL')
    return true
  } catch {
    return false
  }
}
