/**
 * Inbox readiness against a real directory: rename/link arrival, sidecars, quiet period, open writers,
 * ignored names, exactly-once delivery under many rescans, a burst of 500 files, claims at once (no settle,
 * no rescan) and several at a time (never two for one name), and a clean stop.
 */

import { describe, it, expect, afterEach, beforeAll } from 'vitest'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { InboxWatcher, type InboxWatcherInit, type ReadyFile } from '../node/inbox.ts'
import { hasOpenWriter } from '../node/open-writers.ts'
import { configureLogging } from '../node/log.ts'

const logLines: string[] = []
beforeAll(() => { configureLogging({ level: 'info', format: 'json', sink: { write: (l) => { logLines.push(l) } } }) })

const cleanups: Array<() => Promise<void> | void> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function tempDir (): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-inbox-'))
  cleanups.push(async () => { await fs.rm(dir, { recursive: true, force: true }) })
  return dir
}

async function waitFor (cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

type Consume = (f: ReadyFile) => Promise<void>

async function startWatcher (dir: string, init: Partial<InboxWatcherInit> = {}, consume?: Consume): Promise<{ w: InboxWatcher, reported: ReadyFile[] }> {
  const reported: ReadyFile[] = []
  const w = new InboxWatcher({
    rescanIntervalMs: 100,
    settleMs: 50,
    quietMs: 60_000,
    watchDebounceMs: 20,
    openWriterScanGapMs: 50,
    ...init,
    dir,
    onReady: async (f) => {
      reported.push(f)
      await consume?.(f)
    }
  })
  cleanups.push(async () => { await w.stop() })
  await w.start()
  return { w, reported }
}

/** Waits until the watcher has completed `n` more scans than now (a scan started earlier does not count). */
async function scansPass (w: InboxWatcher, n: number): Promise<void> {
  const target = w.stats().scans + n + 1
  await waitFor(() => w.stats().scans >= target, `${n} more scans`)
}

const names = (r: ReadyFile[]): string[] => r.map(f => f.name).sort()
const HOUR_S = 3600

/** Sets mtime an hour ahead: then ctime < mtime, so only a tracked temp inode can show a rename. */
async function futureMtime (p: string): Promise<void> {
  const t = Date.now() / 1000 + HOUR_S
  await fs.utimes(p, t, t)
}

describe('InboxWatcher: arrival by rename', () => {
  it('a file written under a temp name and renamed is ready well before quietMs (inode seen as temp)', async () => {
    const dir = await tempDir()
    const { w, reported } = await startWatcher(dir)
    const tmp = path.join(dir, '.report.csv.tmp')
    await fs.writeFile(tmp, 'x'.repeat(10_000))
    await futureMtime(tmp)
    await waitFor(() => w.stats().tempInodesTracked >= 1, 'temp inode tracked')
    const t0 = performance.now()
    await fs.rename(tmp, path.join(dir, 'report.csv'))
    await waitFor(() => reported.length === 1, 'report.csv ready')
    expect(performance.now() - t0).toBeLessThan(5_000)
    expect(reported[0]).toMatchObject({ name: 'report.csv', readiness: 'rename', size: 10_000, path: path.join(dir, 'report.csv') })
    expect(reported[0]?.fingerprint.size).toBe(10_000n)
    expect(w.stats().readyRename).toBe(1)
    expect(w.stats().unverifiedCompleteness).toBe(0)
    expect(logLines.some(l => l.includes('"inbox file ready"') && l.includes('"readiness":"rename"') && l.includes('"bytes":10000'))).toBe(true)
  })

  it('a file whose ctime is later than its mtime (scp -p, rsync set the times after writing) is ready', async () => {
    const dir = await tempDir()
    const { reported } = await startWatcher(dir)
    const p = path.join(dir, 'preserved.bin')
    await fs.writeFile(p, 'data')
    await fs.utimes(p, new Date('2020-01-01'), new Date('2020-01-01'))
    await waitFor(() => reported.length === 1, 'preserved.bin ready')
    expect(reported[0]).toMatchObject({ name: 'preserved.bin', readiness: 'rename', size: 4 })
  })

  it('a file hard-linked from a temp name (sftp rename = link + unlink) is ready', async () => {
    const dir = await tempDir()
    const { reported } = await startWatcher(dir, { watch: false })
    const part = path.join(dir, 'upload.dat.part')
    await fs.writeFile(part, 'abc')
    await futureMtime(part)
    // Without watch events the scan sees the temp name and the link in one listing; temp names go first.
    await fs.link(part, path.join(dir, 'upload.dat'))
    await waitFor(() => reported.length === 1, 'upload.dat ready')
    expect(reported[0]).toMatchObject({ name: 'upload.dat', readiness: 'rename' })
  })
})

describe('InboxWatcher: fs.watch evidence of a rename', () => {
  it('a file moved in whole (no write seen under its name) is ready quickly even when its temp name was never seen', async () => {
    const dir = await tempDir()
    const outside = await tempDir()
    const { reported } = await startWatcher(dir)
    const src = path.join(outside, 'whole.bin')
    await fs.writeFile(src, 'complete contents')
    await futureMtime(src) // ctime < mtime: neither the temp-inode nor the ctime rule applies
    await fs.rename(src, path.join(dir, 'whole.bin'))
    await waitFor(() => reported.length === 1, 'whole.bin ready', 5_000)
    expect(reported[0]).toMatchObject({ name: 'whole.bin', readiness: 'rename' })
  })

  it('a file written in place under its final name gets no such evidence', async () => {
    const dir = await tempDir()
    const { w, reported } = await startWatcher(dir)
    const p = path.join(dir, 'inplace.bin')
    const fh = await fs.open(p, 'w')
    await fh.write('first part ')
    await fh.write('second part')
    await fh.close()
    await futureMtime(p)
    await scansPass(w, 5)
    expect(reported).toEqual([])
  })
})

describe('InboxWatcher: in-place writes and the quiet rule', () => {
  it('a file that keeps growing is not ready; once left alone it is ready via quiet after quietMs', async () => {
    const dir = await tempDir()
    const quietMs = 1_000
    const { w, reported } = await startWatcher(dir, { quietMs })
    const p = path.join(dir, 'growing.log')
    await fs.writeFile(p, 'start\n')
    const growUntil = performance.now() + 2.5 * quietMs
    let lastWrite = 0
    while (performance.now() < growUntil) {
      await fs.appendFile(p, 'more bytes\n')
      lastWrite = performance.now()
      await new Promise(resolve => setTimeout(resolve, 100)) // a slow sender, not synchronisation
      expect(reported).toEqual([])
    }
    await waitFor(() => reported.length === 1, 'growing.log ready', 10_000)
    expect(performance.now() - lastWrite).toBeGreaterThanOrEqual(quietMs)
    expect(reported[0]).toMatchObject({ name: 'growing.log', readiness: 'quiet' })
    expect(reported[0]?.size).toBe((await fs.stat(p)).size)
    expect(w.stats().unverifiedCompleteness).toBe(1)
  })

  it('the quiet period is measured on the injected monotonic clock', async () => {
    const dir = await tempDir()
    await fs.writeFile(path.join(dir, 'slow.bin'), 'in place')
    let offsetMs = 0
    const clock = { nowMs: () => performance.now() + offsetMs }
    const { w, reported } = await startWatcher(dir, { quietMs: 30_000, clock })
    await scansPass(w, 3)
    expect(reported).toEqual([])
    offsetMs += 31_000
    w.rescanNow()
    await waitFor(() => reported.length === 1, 'slow.bin ready once the clock moved', 3_000)
    expect(reported[0]).toMatchObject({ name: 'slow.bin', readiness: 'quiet' })
  })

  it('a file held open for writing by another process is never ready while open, even past quietMs', async () => {
    const dir = await tempDir()
    const p = path.join(dir, 'held.bin')
    await fs.writeFile(p, 'partial')
    // ctime > mtime too, so the rename rule would fire as well if it ignored the writer.
    await fs.utimes(p, new Date('2020-01-01'), new Date('2020-01-01'))
    // `exec sleep`: the holder is this very pid, so killing it closes fd 3 (a forked sleep would inherit it).
    const child: ChildProcess = spawn('sh', ['-c', `exec 3>>"${p}"; echo open; exec sleep 30`], { stdio: ['ignore', 'pipe', 'inherit'] })
    cleanups.push(() => { child.kill('SIGKILL') })
    await new Promise<void>((resolve) => { child.stdout?.once('data', () => { resolve() }) })
    const open = await hasOpenWriter(p)
    if (open === undefined) return // no readable /proc here: nothing to test
    expect(open).toBe(true)

    const quietMs = 500
    const { w, reported } = await startWatcher(dir, { quietMs })
    const t0 = performance.now()
    const scansBefore = w.stats().openWriterScans
    await waitFor(() => reported.length > 0 || (performance.now() - t0 > 3 * quietMs && w.stats().openWriterScans >= scansBefore + 3), 'several writer checks past quietMs')
    expect(reported).toEqual([])

    const exited = new Promise(resolve => child.once('exit', resolve))
    child.kill('SIGKILL')
    await exited
    expect(await hasOpenWriter(p)).toBe(false)
    await waitFor(() => reported.length === 1, 'held.bin ready after its writer exits')
    expect(reported[0]?.name).toBe('held.bin')
  })

  it('hasOpenWriter is false for a file only open for reading', async () => {
    const dir = await tempDir()
    const p = path.join(dir, 'r.bin')
    await fs.writeFile(p, 'r')
    const fh = await fs.open(p, 'r')
    try {
      const open = await hasOpenWriter(p)
      if (open !== undefined) expect(open).toBe(false)
    } finally {
      await fh.close()
    }
    const wh = await fs.open(p, 'r+')
    try {
      const open = await hasOpenWriter(p)
      if (open !== undefined) expect(open).toBe(true)
    } finally {
      await wh.close()
    }
  })
})

describe('InboxWatcher: sidecars', () => {
  const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex')

  it('a matching NAME.sha256 makes the file ready; a mismatching one holds it back and warns once', async () => {
    const dir = await tempDir()
    const { w, reported } = await startWatcher(dir)
    const good = path.join(dir, 'good.bin')
    const bad = path.join(dir, 'bad.bin')
    await fs.writeFile(good, 'good content')
    await fs.writeFile(bad, 'bad content')
    await futureMtime(good)
    await futureMtime(bad)
    await fs.writeFile(good + '.sha256', `${sha256('good content')}  good.bin\n`)
    await fs.writeFile(bad + '.sha256', `${sha256('something else')}  bad.bin\n`)
    await waitFor(() => reported.length >= 1, 'good.bin ready')
    expect(reported[0]).toMatchObject({ name: 'good.bin', readiness: 'sidecar', sidecarPath: good + '.sha256', sidecarPaths: [good + '.sha256'] })
    await waitFor(() => w.stats().sidecarMismatches === 1, 'mismatch seen')
    await scansPass(w, 5)
    expect(names(reported)).toEqual(['good.bin'])
    expect(logLines.filter(l => l.includes('"sidecar does not match file; waiting"') && l.includes('bad.bin'))).toHaveLength(1)

    // The sender fixes its sidecar: now it matches.
    await fs.writeFile(bad + '.sha256', sha256('bad content').toUpperCase() + '\n')
    await waitFor(() => reported.length === 2, 'bad.bin ready after the sidecar is fixed')
    expect(reported[1]).toMatchObject({ name: 'bad.bin', readiness: 'sidecar' })
    expect(w.stats().readySidecar).toBe(2)
  })

  it('a NAME.size sidecar: matching -> ready, mismatching (a truncated upload) -> not', async () => {
    const dir = await tempDir()
    const { w, reported } = await startWatcher(dir)
    const whole = path.join(dir, 'whole.bin')
    const cut = path.join(dir, 'cut.bin')
    await fs.writeFile(whole, Buffer.alloc(1234, 1))
    await fs.writeFile(cut, Buffer.alloc(783, 1))
    await futureMtime(whole)
    await futureMtime(cut)
    await fs.writeFile(whole + '.size', '1234\n')
    await fs.writeFile(cut + '.size', '50000000\n')
    await waitFor(() => reported.length >= 1, 'whole.bin ready')
    expect(reported[0]).toMatchObject({ name: 'whole.bin', readiness: 'sidecar', sidecarPath: whole + '.size', size: 1234 })
    await scansPass(w, 5)
    expect(names(reported)).toEqual(['whole.bin'])
    expect(w.stats().sidecarMismatches).toBe(1)
  })

  it('a mismatching sidecar overrides the rename and quiet rules', async () => {
    const dir = await tempDir()
    const { w, reported } = await startWatcher(dir, { quietMs: 200 })
    const p = path.join(dir, 'renamed.bin')
    await fs.writeFile(p, 'abc')
    await fs.utimes(p, new Date('2020-01-01'), new Date('2020-01-01'))
    await fs.writeFile(p + '.size', '4')
    await scansPass(w, 8)
    expect(reported).toEqual([])
  })
})

describe('InboxWatcher: what is ignored', () => {
  it('ignores dotfiles, .part/.filepart/.tmp, directories, .incoming/, symlinks, FIFOs and orphan sidecars', async () => {
    const dir = await tempDir()
    const outside = await tempDir()
    const target = path.join(outside, 'target.bin')
    await fs.writeFile(target, 'target')
    for (const n of ['.hidden', 'a.part', 'b.filepart', 'c.tmp', 'D.TMP', 'orphan.sha256', 'orphan.size']) {
      await fs.writeFile(path.join(dir, n), 'x')
    }
    await fs.mkdir(path.join(dir, 'subdir'))
    await fs.writeFile(path.join(dir, 'subdir', 'inner.bin'), 'x')
    await fs.mkdir(path.join(dir, '.incoming'))
    await fs.writeFile(path.join(dir, '.incoming', 'staged.bin'), 'x')
    await fs.symlink(target, path.join(dir, 'link.bin'))
    await new Promise<void>((resolve, reject) => {
      spawn('mkfifo', [path.join(dir, 'pipe')]).once('exit', (code) => { code === 0 ? resolve() : reject(new Error(`mkfifo ${code}`)) })
    })
    await fs.writeFile(path.join(dir, 'real.bin'), 'real')
    const quietMs = 300
    const { w, reported } = await startWatcher(dir, { quietMs })
    await waitFor(() => reported.length === 1, 'real.bin ready')
    const t0 = performance.now()
    await waitFor(() => performance.now() - t0 > 2 * quietMs, 'past quietMs')
    await scansPass(w, 3)
    expect(names(reported)).toEqual(['real.bin'])
    expect(w.stats().pending).toBe(0)
  })

  it('a file moved out of .incoming/ into the inbox counts as renamed', async () => {
    const dir = await tempDir()
    await fs.mkdir(path.join(dir, '.incoming'))
    const staged = path.join(dir, '.incoming', 'big.bin')
    await fs.writeFile(staged, 'payload')
    await futureMtime(staged)
    const { w, reported } = await startWatcher(dir)
    await waitFor(() => w.stats().tempInodesTracked >= 1, '.incoming inode tracked')
    await fs.rename(staged, path.join(dir, 'big.bin'))
    await waitFor(() => reported.length === 1, 'big.bin ready')
    expect(reported[0]).toMatchObject({ name: 'big.bin', readiness: 'rename' })
  })
})

describe('InboxWatcher: delivery', () => {
  it('reports each file exactly once although it stays in the inbox through many rescans', async () => {
    const dir = await tempDir()
    for (let i = 0; i < 20; i++) {
      const p = path.join(dir, `f${i}.bin`)
      await fs.writeFile(p, `file ${i}`)
      await fs.utimes(p, new Date(2020, 0, 1, 0, 0, 20 - i), new Date(2020, 0, 1, 0, 0, 20 - i))
    }
    const { w, reported } = await startWatcher(dir, { rescanIntervalMs: 20 })
    await waitFor(() => reported.length === 20, '20 files reported')
    for (let i = 0; i < 10; i++) w.rescanNow()
    await scansPass(w, 30)
    expect(reported).toHaveLength(20)
    expect(new Set(reported.map(f => f.name)).size).toBe(20)
    // Oldest mtime first: f19 was given the oldest time.
    expect(reported.map(f => f.name).slice(0, 3)).toEqual(['f19.bin', 'f18.bin', 'f17.bin'])
    expect(w.stats().delivered).toBe(20)
  })

  it('a file reported, then rewritten under the same name and inode, is reported again', async () => {
    const dir = await tempDir()
    const p = path.join(dir, 'again.bin')
    await fs.writeFile(p, 'v1')
    await fs.utimes(p, new Date('2020-01-01'), new Date('2020-01-01'))
    const { reported } = await startWatcher(dir)
    await waitFor(() => reported.length === 1, 'first version')
    await fs.appendFile(p, ' and v2')
    await fs.utimes(p, new Date('2021-01-01'), new Date('2021-01-01'))
    await waitFor(() => reported.length === 2, 'second version')
    expect(reported[1]).toMatchObject({ name: 'again.bin', size: 9, ino: reported[0]?.ino })
  })

  it('retries with backoff when the consumer throws, and calls onReady one at a time when asked to', async () => {
    const dir = await tempDir()
    for (const n of ['a.bin', 'b.bin', 'c.bin']) {
      await fs.writeFile(path.join(dir, n), n)
      await fs.utimes(path.join(dir, n), new Date('2020-01-01'), new Date('2020-01-01'))
    }
    let failuresLeft = 2
    let inside = 0
    let maxInside = 0
    const { w, reported } = await startWatcher(dir, { retryBackoffMinMs: 50, retryBackoffMaxMs: 200, deliveryConcurrency: 1 }, async (f) => {
      inside++
      maxInside = Math.max(maxInside, inside)
      await new Promise(resolve => setTimeout(resolve, 5))
      inside--
      if (f.name === 'b.bin' && failuresLeft-- > 0) throw new Error('spool full')
      await fs.rename(f.path, path.join(dir, `.claimed-${f.name}`))
    })
    await waitFor(() => w.stats().delivered === 3, 'all three delivered')
    expect(names(reported)).toEqual(['a.bin', 'b.bin', 'b.bin', 'b.bin', 'c.bin'])
    expect(w.stats().deliveryFailures).toBe(2)
    expect(maxInside).toBe(1)
    await scansPass(w, 3)
    expect(reported).toHaveLength(5)
    expect(w.stats()).toMatchObject({ pending: 0, queued: 0 })
  })

  for (const watch of [true, false]) {
    it(`500 files dropped at once are all reported exactly once (watch: ${watch})`, async () => {
      const dir = await tempDir()
      const spool = await tempDir()
      const seen = new Map<string, number>()
      const { w } = await startWatcher(dir, { watch, quietMs: 1_000, readyQueueMax: 64 }, async (f) => {
        seen.set(f.name, (seen.get(f.name) ?? 0) + 1)
        await fs.rename(f.path, path.join(spool, f.name))
      })
      const N = 500
      await Promise.all(Array.from({ length: N }, async (_, i) => {
        const tmp = path.join(dir, `.f${i}.XXXXXX`)
        await fs.writeFile(tmp, `payload ${i}`)
        await fs.rename(tmp, path.join(dir, `f${i}.dat`))
      }))
      await waitFor(() => seen.size === N, `${N} files reported`, 20_000)
      await scansPass(w, 3)
      expect([...seen.values()].every(c => c === 1)).toBe(true)
      expect(await fs.readdir(spool)).toHaveLength(N)
      expect((await fs.readdir(dir)).filter(n => !n.startsWith('.'))).toEqual([])
      expect(w.stats()).toMatchObject({ delivered: N, tracked: 0, pending: 0, queued: 0 })
    })
  }
})

describe('InboxWatcher: latency and concurrency', () => {
  it('a renamed file is ready at once: no settle period, found by its watch event without a rescan', async () => {
    const dir = await tempDir()
    const outside = await tempDir()
    // A settle period and a rescan interval far longer than the deadline: only the event path can be this quick.
    const { w, reported } = await startWatcher(dir, { settleMs: 60_000, rescanIntervalMs: 60_000 })
    const scansBefore = w.stats().scans
    const src = path.join(outside, 'fast.bin')
    await fs.writeFile(src, Buffer.alloc(64 * 1024, 7))
    const t0 = performance.now()
    await fs.rename(src, path.join(dir, 'fast.bin'))
    await waitFor(() => reported.length === 1, 'fast.bin ready', 5_000)
    expect(performance.now() - t0).toBeLessThan(2_000)
    expect(reported[0]).toMatchObject({ name: 'fast.bin', readiness: 'rename', size: 64 * 1024 })
    expect(w.stats().scans).toBe(scansBefore)
    expect(w.stats().quickPasses).toBeGreaterThan(0)
  })

  it('without a working open-writer check, a renamed file must still hold still for settleMs', async () => {
    const dir = await tempDir()
    const outside = await tempDir()
    const settleMs = 400
    const { w, reported } = await startWatcher(dir, { settleMs, scanOpenWriters: async () => ({ available: false }) })
    expect(w.stats().openWriterCheck).toBe('unavailable')
    const src = path.join(outside, 'slow.bin')
    await fs.writeFile(src, 'whole')
    await fs.rename(src, path.join(dir, 'slow.bin'))
    const t0 = performance.now()
    await waitFor(() => reported.length === 1, 'slow.bin ready', 5_000)
    expect(performance.now() - t0).toBeGreaterThanOrEqual(settleMs - 50)
    expect(reported[0]).toMatchObject({ name: 'slow.bin', readiness: 'rename' })
  })

  it('delivers several files at once, at most deliveryConcurrency, each exactly once', async () => {
    const dir = await tempDir()
    const spool = await tempDir()
    const N = 40
    for (let i = 0; i < N; i++) {
      await fs.writeFile(path.join(dir, `c${i}.bin`), `c ${i}`)
      await fs.utimes(path.join(dir, `c${i}.bin`), new Date('2020-01-01'), new Date('2020-01-01'))
    }
    let inside = 0
    let maxInside = 0
    const seen = new Map<string, number>()
    let release: () => void = () => {}
    const gate = new Promise<void>((resolve) => { release = resolve })
    const { w } = await startWatcher(dir, { deliveryConcurrency: 4 }, async (f) => {
      seen.set(f.name, (seen.get(f.name) ?? 0) + 1)
      inside++
      maxInside = Math.max(maxInside, inside)
      await gate
      await fs.rename(f.path, path.join(spool, f.name))
      inside--
    })
    cleanups.push(() => { release() }) // runs before the watcher's stop (cleanups run in reverse)
    await waitFor(() => inside === 4, 'four deliveries in flight')
    await scansPass(w, 2)
    expect(inside).toBe(4) // no fifth one while the first four are inside
    release()
    await waitFor(() => seen.size === N && inside === 0, `${N} files delivered`)
    await scansPass(w, 2)
    expect(maxInside).toBe(4)
    expect([...seen.values()].every((c) => c === 1)).toBe(true)
    expect(await fs.readdir(spool)).toHaveLength(N)
  })

  it('never hands out two versions of one name at the same time', async () => {
    const dir = await tempDir()
    const outside = await tempDir()
    const p = path.join(dir, 'same.bin')
    await fs.writeFile(p, 'version one')
    await fs.utimes(p, new Date('2020-01-01'), new Date('2020-01-01'))
    let inside = 0
    let overlapped = false
    let release: () => void = () => {}
    const gate = new Promise<void>((resolve) => { release = resolve })
    const { reported } = await startWatcher(dir, { deliveryConcurrency: 8 }, async (f) => {
      inside++
      if (inside > 1) overlapped = true
      if (f.size === 'version one'.length) await gate // the first version stays inside until released
      inside--
    })
    cleanups.push(() => { release() })
    await waitFor(() => reported.length === 1, 'first version handed out')
    // Replace it under the same name with a new inode, complete (arrived by rename): ready at once, but must wait.
    const src = path.join(outside, 'same.bin')
    await fs.writeFile(src, 'version two, longer')
    await fs.rename(src, p)
    const t0 = performance.now()
    await waitFor(() => performance.now() - t0 > 500, 'time for a wrong hand-off to happen')
    expect(reported).toHaveLength(1)
    release()
    await waitFor(() => reported.length === 2, 'second version handed out after the first returned')
    expect(reported[1]?.size).toBe('version two, longer'.length)
    expect(overlapped).toBe(false)
  })
})

describe('InboxWatcher: lifecycle', () => {
  it('start() fails with InboxUnavailableError for a missing directory', async () => {
    const dir = await tempDir()
    const w = new InboxWatcher({ dir: path.join(dir, 'missing'), onReady: async () => {} })
    await expect(w.start()).rejects.toMatchObject({ name: 'InboxUnavailableError' })
  })

  it('stop() aborts the consumer signal and leaves nothing that keeps a process alive', async () => {
    const dir = await tempDir()
    await fs.writeFile(path.join(dir, 'x.bin'), 'x')
    const inboxModule = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../node/inbox.ts')
    const script = `
      import { InboxWatcher } from ${JSON.stringify(inboxModule)}
      import { configureLogging } from ${JSON.stringify(inboxModule.replace(/inbox\.ts$/, 'log.ts'))}
      configureLogging({ level: 'error' })
      let aborted = false
      let called
      const entered = new Promise(resolve => { called = resolve })
      // A long rescan interval: a timer left behind by stop() would keep this process alive past the deadline.
      const w = new InboxWatcher({ dir: ${JSON.stringify(dir)}, quietMs: 50, settleMs: 10, rescanIntervalMs: 60_000, watchDebounceMs: 5,
        onReady: async (f, { signal }) => {
          called()
          await new Promise(resolve => signal.addEventListener('abort', () => { aborted = true; resolve() }))
        } })
      await w.start()
      await entered
      await w.stop()
      console.log(JSON.stringify({ aborted }))
    `
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
    cleanups.push(() => { child.kill('SIGKILL') })
    let out = ''
    child.stdout?.on('data', (d: Buffer) => { out += d.toString() })
    const code = await new Promise<number | null>((resolve) => {
      const t = setTimeout(() => { resolve(-1) }, 15_000)
      child.once('exit', (c) => { clearTimeout(t); resolve(c) })
    })
    expect(code).toBe(0) // -1: the process did not exit on its own after stop()
    expect(JSON.parse(out.trim())).toEqual({ aborted: true })
  })
})
