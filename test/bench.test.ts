/**
 * `npm run bench -- --quick` as CI runs it: a child process that starts real daemons (and rsync daemons when
 * rsync is installed). Benchmarks print figures, they are never timed assertions: this checks only that the
 * run completes, exits 0, verified every file against its source, prints the figures as its last line of
 * JSON with the agreed keys, and removes its temp dir.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'

const run = promisify(execFile)
const BENCH = fileURLToPath(new URL('../sim/bench.ts', import.meta.url))
const KEYS = [
  'e2eMBps', 'rsyncMBps', 'streamLimitMBps', 'landingEgressRatio', 'smallFilesPerSec', 'latencyP50Ms', 'latencyP99Ms',
  'broadcastSeconds', 'publisherEgressRatio', 'maxRssMiB', 'e2eVsRsync', 'e2eVsStreamLimit', 'verified'
]

describe('npm run bench -- --quick', () => {
  it('completes, verifies the bytes and prints the figures as one JSON line', async () => {
    // --no-install: a test never installs system packages; without rsync the reference is skipped (null).
    const { stdout, stderr } = await run(process.execPath, [BENCH, '--quick', '--no-install'], { timeout: 240_000, maxBuffer: 16 << 20 })
    const lines = stdout.trim().split('\n')
    const figures = JSON.parse(lines.at(-1) ?? '') as Record<string, unknown>
    for (const key of KEYS) expect(figures, `key ${key}`).toHaveProperty(key)
    expect(figures.verified).toBe(true)
    expect(figures.verifiedFiles).toBe(10 + 200 + 5)
    for (const key of ['e2eMBps', 'streamLimitMBps', 'landingEgressRatio', 'smallFilesPerSec', 'latencyP50Ms', 'maxRssMiB']) {
      expect(typeof figures[key], key).toBe('number')
    }
    // broadcast: 1 publisher -> 3 followers in quick mode; every follower's copy re-hashed to the source
    expect(typeof figures.broadcastSeconds).toBe('number')
    expect(typeof figures.publisherEgressRatio).toBe('number')
    expect(figures.broadcastVerified).toBe(true)
    if (figures.rsyncMBps == null) expect(typeof figures.rsyncSkipped).toBe('string')
    expect(stdout).toMatch(/filemesh bench \(quick\)/)

    const root = /in (\S*filemesh-bench-\S+?);/.exec(stderr)?.[1]
    expect(root, stderr).toBeDefined()
    await expect(fs.stat(root as string)).rejects.toMatchObject({ code: 'ENOENT' })
  }, 300_000)
})
