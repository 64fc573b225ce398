/** The processing command runner: env and $1, exit status mapping, group kill on timeout/abort, output logging. */

import { readFileSync } from 'node:fs'
import * as fs from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import type { LogFields, Logger } from '../node/log.ts'
import { backoffMs, runProcessingCommand } from '../node/processor.ts'
import type { ProcessingJob } from '../node/processor.ts'

interface Logged { level: string, msg: string, fields: LogFields }

function captureLog (): { log: Logger, lines: Logged[] } {
  const lines: Logged[] = []
  const make = (): Logger => ({
    debug: (msg, fields = {}) => { lines.push({ level: 'debug', msg, fields }) },
    info: (msg, fields = {}) => { lines.push({ level: 'info', msg, fields }) },
    warn: (msg, fields = {}) => { lines.push({ level: 'warn', msg, fields }) },
    error: (msg, fields = {}) => { lines.push({ level: 'error', msg, fields }) },
    child: () => make()
  })
  return { log: make(), lines }
}

let dir: string
let file: string
const strays: number[] = []

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-proc-'))
  file = path.join(dir, 'my file.dat')
  await fs.writeFile(file, 'payload')
})

afterEach(async () => {
  for (const pid of strays.splice(0)) { try { process.kill(pid, 'SIGKILL') } catch {} }
  await fs.rm(dir, { recursive: true, force: true })
})

function job (command: string, extra: Partial<ProcessingJob> = {}): ProcessingJob {
  return { command, path: file, cid: 'bafkreitestcid', name: 'my file.dat', size: 7, epoch: 3, attempt: 2, ...extra }
}

/** Alive and not a zombie (PID 1 in a container may never reap an orphan). */
function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false
    throw err
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

async function waitFor<T> (what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await probe()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function readPid (pidFile: string): Promise<number> {
  return waitFor('pid file', async () => {
    const text = await fs.readFile(pidFile, 'utf8').catch(() => '')
    return /^\d+\n$/.test(text) ? Number(text) : undefined
  })
}

describe('runProcessingCommand', () => {
  it('passes $1, the FILEMESH_* variables, the cwd, and extra env', async () => {
    const out = path.join(dir, 'out.txt')
    const r = await runProcessingCommand(job(
      'printf "%s\\n" "$1" "$FILEMESH_PATH" "$FILEMESH_NAME" "$FILEMESH_CID" "$FILEMESH_SIZE" "$FILEMESH_EPOCH" "$FILEMESH_ATTEMPT" "$EXTRA" "$(pwd)" > "$OUT"'
    ), { env: { OUT: out, EXTRA: 'extra value' }, log: captureLog().log })
    expect(r).toMatchObject({ outcome: 'ok', exitCode: 0, signal: null })
    expect(r.durationMs).toBeGreaterThanOrEqual(0)
    expect((await fs.readFile(out, 'utf8')).split('\n')).toEqual([
      file, file, 'my file.dat', 'bafkreitestcid', '7', '3', '2', 'extra value', await fs.realpath(dir), ''
    ])
  })

  it('FILEMESH_* variables win over the passed env', async () => {
    const out = path.join(dir, 'out.txt')
    await runProcessingCommand(job('echo "$FILEMESH_CID" > "$OUT"'), { env: { OUT: out, FILEMESH_CID: 'forged' }, log: captureLog().log })
    expect(await fs.readFile(out, 'utf8')).toBe('bafkreitestcid\n')
  })

  it.each([
    ['exit 0', 'ok', 0, null],
    ['exit 75', 'retry', 75, null],
    ['exit 1', 'failed', 1, null],
    ['exit 3', 'failed', 3, null],
    ['kill -TERM $$', 'failed', null, 'SIGTERM'],
    ['kill -KILL $$', 'failed', null, 'SIGKILL']
  ])('%s -> %s', async (command, outcome, exitCode, signal) => {
    const r = await runProcessingCommand(job(command), { log: captureLog().log })
    expect(r).toMatchObject({ outcome, exitCode, signal })
    if (outcome === 'failed') expect(r.error).toBeTypeOf('string')
  })

  it('a spawn error is a failure, not a throw', async () => {
    const r = await runProcessingCommand(job('exit 0', { path: path.join(dir, 'missing-dir', 'f') }), { log: captureLog().log })
    expect(r).toMatchObject({ outcome: 'failed', exitCode: null, signal: null })
    expect(r.error).toMatch(/ENOENT/)
  })

  it('timeout kills the whole process group, children included', async () => {
    const pidFile = path.join(dir, 'child.pid')
    const { log, lines } = captureLog()
    const run = runProcessingCommand(job(`sleep 30 & echo $! > "${pidFile}"; wait`), { timeoutMs: 300, killGraceMs: 5_000, log })
    const childPid = await readPid(pidFile)
    strays.push(childPid)
    expect(alive(childPid)).toBe(true)
    const r = await run
    expect(r).toMatchObject({ outcome: 'failed', exitCode: null, signal: 'SIGTERM', error: 'timeout after 300 ms' })
    expect(r.durationMs).toBeLessThan(5_000)
    await waitFor('child gone', () => alive(childPid) ? undefined : true)
    expect(lines.some((l) => l.msg === 'stopping processing command' && l.fields.cid === 'bafkreitestcid')).toBe(true)
  })

  it('escalates to SIGKILL when the group ignores SIGTERM', async () => {
    const pidFile = path.join(dir, 'child.pid')
    const run = runProcessingCommand(job(`trap "" TERM; sleep 30 & echo $! > "${pidFile}"; wait; wait`), { timeoutMs: 200, killGraceMs: 300, log: captureLog().log })
    const childPid = await readPid(pidFile)
    strays.push(childPid)
    const r = await run
    expect(r).toMatchObject({ outcome: 'failed', signal: 'SIGKILL', error: 'timeout after 200 ms' })
    await waitFor('child gone', () => alive(childPid) ? undefined : true)
  })

  it('abort stops the command and its children', async () => {
    const pidFile = path.join(dir, 'child.pid')
    const controller = new AbortController()
    const run = runProcessingCommand(job(`sleep 30 & echo $! > "${pidFile}"; wait`), { signal: controller.signal, log: captureLog().log })
    const childPid = await readPid(pidFile)
    strays.push(childPid)
    controller.abort()
    const r = await run
    expect(r).toMatchObject({ outcome: 'failed', error: 'aborted' })
    await waitFor('child gone', () => alive(childPid) ? undefined : true)
  })

  it('an already aborted signal starts nothing', async () => {
    const out = path.join(dir, 'ran')
    const r = await runProcessingCommand(job(`touch "${out}"`), { signal: AbortSignal.abort(), log: captureLog().log })
    expect(r).toMatchObject({ outcome: 'failed', error: 'aborted', exitCode: null })
    await expect(fs.access(out)).rejects.toMatchObject({ code: 'ENOENT' })
  })

  it('does not wait forever for a background child holding the output pipe', async () => {
    const pidFile = path.join(dir, 'child.pid')
    const r = await runProcessingCommand(job(`sleep 30 & echo $! > "${pidFile}"; echo done`), { outputDrainMs: 200, log: captureLog().log })
    strays.push(await readPid(pidFile))
    expect(r.outcome).toBe('ok')
  })

  it('logs output line by line with the CID, stdout and stderr', async () => {
    const { log, lines } = captureLog()
    await runProcessingCommand(job('echo first; echo oops >&2; printf "no newline"'), { log })
    const output = lines.filter((l) => l.msg === 'command output')
    expect(output.map((l) => [l.fields.stream, l.fields.line]).sort()).toEqual([
      ['stderr', 'oops'], ['stdout', 'first'], ['stdout', 'no newline']
    ])
    expect(output.every((l) => l.fields.cid === 'bafkreitestcid')).toBe(true)
  })

  it('caps line length and line count', async () => {
    const { log, lines } = captureLog()
    const r = await runProcessingCommand(job('head -c 10000 /dev/zero | tr "\\0" x; echo; echo short; i=0; while [ $i -lt 50 ]; do echo line $i; i=$((i+1)); done'), {
      log, outputLineBytesMax: 4096, outputLinesMax: 10
    })
    expect(r.outcome).toBe('ok')
    const output = lines.filter((l) => l.msg === 'command output')
    expect(output).toHaveLength(10)
    expect(output[0]?.fields).toMatchObject({ line: 'x'.repeat(4096), cut: true })
    expect(output[1]?.fields).toMatchObject({ line: 'short' })
    expect(output[1]?.fields.cut).toBeUndefined()
    expect(output[9]?.fields).toMatchObject({ line: 'line 7' })
    expect(lines.filter((l) => l.msg === 'output truncated')).toHaveLength(1)
    expect(lines.find((l) => l.msg === 'output lines dropped')?.fields.lines).toBe(42)
  })
})

describe('backoffMs', () => {
  it('grows exponentially with equal jitter and caps', () => {
    const at = (attempt: number, r: number): number => backoffMs(attempt, { random: () => r })
    expect(at(1, 0)).toBe(500)
    expect(at(1, 0.999999)).toBe(999)
    expect(at(2, 0)).toBe(1000)
    expect(at(3, 0.5)).toBe(3000)
    expect(at(7, 0)).toBe(30_000)
    expect(at(1000, 0.999999)).toBe(59_999)
    expect(at(0, 0)).toBe(500)
    expect(backoffMs(2, { baseMs: 10, maxMs: 15, random: () => 0 })).toBe(7)
  })

  it('rejects a random source out of range', () => {
    expect(() => backoffMs(1, { random: () => 1 })).toThrow(RangeError)
    expect(() => backoffMs(1, { random: () => Number.NaN })).toThrow(RangeError)
  })
})
