/**
 * The churn harness (sim/churn-*.ts): first its schedule (partitions and drains included) and its checker on
 * hand-made evidence, so we know it catches a lost, stuck, corrupt or unsafely deleted file and traces
 * duplicates (to kills and to partitions); then a small real churn run — 6 daemons, 80 files of 64 KiB–2 MiB,
 * ≥10 SIGKILL+restart of ingest, backups and processors over 60 s, one processor joining and then drained —
 * that must end with zero I1–I3 violations. Real partitions need network namespaces: test/netns.test.ts.
 *
 * The real run takes about two minutes. CI runs it; for local iteration only, skip it with
 * FILEMESH_SKIP_CHURN=1 (the checker tests still run).
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PARTITION_NODE, check, invariantsHold } from '../sim/churn-checker.ts'
import type { CheckedNode, ExecutedFault } from '../sim/churn-checker.ts'
import { churnCommand, readRunRecords } from '../sim/churn-command.ts'
import type { RunRecord } from '../sim/churn-command.ts'
import type { ChurnMesh } from '../sim/churn-mesh.ts'
import { Nemesis } from '../sim/churn-nemesis.ts'
import { ResourceSampler } from '../sim/churn-resources.ts'
import { traceDuplicates } from '../sim/churn-trace.ts'
import { referenceCid } from '../sim/churn-injector.ts'
import type { ChurnLedgerEntry } from '../sim/churn-injector.ts'
import { runChurn } from '../sim/churn-runner.ts'
import { formatReport, summaryJson } from '../sim/churn-report.ts'
import { defaultConfig, formatSchedule, generateSchedule, parseSchedule } from '../sim/churn-schedule.ts'
import { payload, sha256Hex } from '../sim/workload.ts'
import { Store } from '../node/store.ts'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

const SKIP_REAL_RUN = process.env.FILEMESH_SKIP_CHURN === '1'
const KiB = 1024

describe('churn schedule', () => {
  it('is the same for the same seed, differs for another, and survives a JSON round trip', () => {
    const cfg = { ...defaultConfig(5), nodes: 6, files: 40, faultWindowMs: 60_000, killEveryMs: 4_000 }
    const a = generateSchedule(cfg)
    expect(generateSchedule(cfg)).toEqual(a)
    expect(generateSchedule({ ...cfg, seed: 6 })).not.toEqual(a)
    expect(parseSchedule(JSON.stringify(a))).toEqual(a)
    const kills = a.faults.filter((f) => f.kind === 'kill')
    expect(kills.length).toBeGreaterThanOrEqual(8)
    expect(new Set(kills.map((k) => k.node)).size).toBeGreaterThan(2)
    expect(a.faults.some((f) => f.kind === 'leave')).toBe(false)
  })

  it('schedules partitions and drains from a second stream: files unchanged, replayable, sides that make sense', () => {
    const base = { ...defaultConfig(3), nodes: 6, files: 60, faultWindowMs: 120_000 }
    const plain = generateSchedule(base)
    const cfg = { ...base, partitions: 2, drains: 1 }
    const s = generateSchedule(cfg)
    expect(generateSchedule(cfg)).toEqual(s)
    expect(parseSchedule(JSON.stringify(s))).toEqual(s)
    expect(s.files).toEqual(plain.files)
    // Partitions alone change no kill.
    expect(generateSchedule({ ...base, partitions: 2 }).faults.filter((f) => f.kind === 'kill')).toEqual(plain.faults.filter((f) => f.kind === 'kill'))
    const parts = s.faults.flatMap((f) => f.kind === 'partition' ? [f] : [])
    expect(parts).toHaveLength(2)
    for (const p of parts) {
      const [a, b] = p.sides
      expect(a[0]).toBe('ingest1')
      expect(new Set([...a, ...b])).toEqual(new Set(s.nodes.map((n) => n.name)))
      for (const side of p.sides) {
        expect(side.some((n) => n.startsWith('backup'))).toBe(true)
        expect(side.some((n) => n.startsWith('proc'))).toBe(true)
      }
      expect(p.durationMs).toBeGreaterThanOrEqual(20_000)
      expect(p.durationMs).toBeLessThanOrEqual(40_000)
      expect(p.atMs + p.durationMs).toBeLessThanOrEqual(cfg.faultWindowMs)
    }
    expect(parts[1]!.atMs).toBeGreaterThanOrEqual(parts[0]!.atMs + parts[0]!.durationMs)
    const drains = s.faults.flatMap((f) => f.kind === 'drain' ? [f] : [])
    expect(drains).toHaveLength(1)
    expect(drains[0]?.node).toMatch(/^proc/)
    // A drained node is not killed from shortly before its drain on.
    expect(s.faults.filter((f) => f.kind === 'kill' && f.node === drains[0]?.node && f.atMs >= drains[0].atMs)).toEqual([])
    expect(formatSchedule(s)).toMatch(/1 drain, 2 partition/)
    expect(formatSchedule(s)).toMatch(/PARTITION ingest1,.* \| .* for \d+\.\ds/)
  })

  it('refuses bad partitions and schedules without an ingest node', () => {
    const s = generateSchedule({ ...defaultConfig(1), nodes: 5, files: 2 })
    expect(() => parseSchedule(JSON.stringify({ ...s, nodes: s.nodes.filter((n) => !n.roles.includes('ingest')) }))).toThrow(/ingest/)
    for (const bad of [{ sides: [[], ['proc1']], durationMs: 1 }, { sides: [['ingest1'], ['nobody']], durationMs: 1 }, { sides: [['ingest1', 'proc1'], ['proc1']], durationMs: 1 }, { sides: [['ingest1'], ['proc1']], durationMs: 0 }]) {
      expect(() => parseSchedule(JSON.stringify({ ...s, faults: [{ atMs: 1, kind: 'partition', ...bad }] }))).toThrow(/bad partition/)
    }
    expect(parseSchedule(JSON.stringify({ ...s, faults: [{ atMs: 1, kind: 'partition', sides: [['ingest1'], ['proc1']], durationMs: 5 }] })).faults).toHaveLength(1)
    expect(() => generateSchedule({ ...defaultConfig(1), partitions: 1, partitionMsMin: 5000, partitionMsMax: 4000 })).toThrow(/partition duration/)
  })
})

describe('partitions in the checker and the nemesis', () => {
  const t0 = Date.parse('2030-01-01T00:00:00Z')
  const at = (s: number): number => t0 + s * 1000
  const nodes: CheckedNode[] = ['ingest1', 'backup1', 'backup2', 'proc1', 'proc2'].map((name) => ({ name, roles: [name.replace(/\d+$/, '').replace('proc', 'process')], dataDir: '/x', logPath: '/x' }))
  const entry = (name: string): ChurnLedgerEntry => ({ name, size: 1, sha256: 'a'.repeat(64), cid: `cid-${name}`, via: 'rsync', injectedAtMs: t0, ingest: 'ingest1', lagMs: 0 })
  const run = (node: string, cid: string, startS: number, epoch: number): RunRecord => ({ node, cid, sha256: 'a'.repeat(64), startMs: at(startS), endMs: at(startS + 0.3), epoch, attempt: 1, name: cid })
  const partition: ExecutedFault = { kind: 'partition', node: PARTITION_NODE, sides: [['ingest1', 'backup1', 'proc1'], ['backup2', 'proc2']], scheduledAtMs: 0, atMs: at(10), healedAtMs: at(40) }

  it('traces a duplicate to the partition that cut its owner off from the coordinator', () => {
    const files = ['cut', 'late', 'near', 'noise'].map(entry)
    const byCid = new Map(files.map((e) => [e.cid, e]))
    const runs = new Map<string, RunRecord[]>([
      // The far owner ran it during the cut; the coordinator reassigned it to proc1, which ran it too.
      ['cid-cut', [run('proc2', 'cid-cut', 12, 1), run('proc1', 'cid-cut', 30, 2)]],
      // Both runs after the heal, but the owner was reassigned during the cut (from the coordinator's log).
      ['cid-late', [run('proc1', 'cid-late', 45, 2), run('proc2', 'cid-late', 50, 1)]],
      // Both on the coordinator's side: the partition explains nothing.
      ['cid-near', [run('proc1', 'cid-near', 12, 1), run('proc1', 'cid-near', 30, 1)]],
      // A far-side pair entirely before the cut: not the partition either.
      ['cid-noise', [run('proc2', 'cid-noise', 2, 1), run('proc1', 'cid-noise', 5, 2)]]
    ])
    const traces = new Map(traceDuplicates(runs, byCid, [partition], nodes, t0, new Map([['cid-late', [at(25)]]])).map((d) => [d.name, d]))
    expect(traces.get('cut')?.traced).toBe(true)
    expect(traces.get('cut')?.causes[0]).toMatch(/^partition \+10\.0s–\+40\.0s .*proc2 cut off from the coordinator ingest1 while the runs started/)
    expect(traces.get('late')?.traced).toBe(true)
    expect(traces.get('late')?.causes[0]).toMatch(/reassigned the owner during the cut/)
    expect(traces.get('near')?.traced).toBe(false)
    expect(traces.get('noise')?.traced).toBe(false)
    // A SIGKILL of the first run's node still comes first; a drain is named as a lead, never as a cause.
    const kill: ExecutedFault = { kind: 'kill', node: 'proc2', when: 'now', scheduledAtMs: 0, atMs: at(12.1), healedAtMs: at(14) }
    expect(traceDuplicates(runs, byCid, [partition, kill], nodes, t0).find((d) => d.name === 'cut')?.causes[0]).toMatch(/^SIGKILL of proc2/)
    const drain: ExecutedFault = { kind: 'drain', node: 'proc1', scheduledAtMs: 0, atMs: at(20), healedAtMs: at(22) }
    expect(traceDuplicates(runs, byCid, [drain], nodes, t0).find((d) => d.name === 'near')?.causes[0]).toMatch(/UNTRACED.*proc1 was drained at \+20\.0s/)
  })

  it('the nemesis skips partitions when the mesh has no namespaces, and the report says why', async () => {
    const said: string[] = []
    const mesh = { lab: undefined } as unknown as ChurnMesh
    const nemesis = new Nemesis(mesh, new ResourceSampler(() => []), { waitMaxMs: 0, signal: new AbortController().signal, say: (l) => { said.push(l) }, t0Ms: Date.now() })
    await nemesis.run({ atMs: 0, kind: 'partition', sides: [['ingest1'], ['proc1']], durationMs: 20_000 })
    await nemesis.settled()
    expect(nemesis.skippedPartitions).toBe(1)
    expect(nemesis.executed).toEqual([])
    expect(said[0]).toMatch(/PARTITION skipped/)
    const r = await check({ ledger: [], injectFailures: [], nodes: [], faults: [{ ...partition, crossSeen: [] }, { kind: 'drain', node: 'proc1', scheduledAtMs: 0, atMs: at(20), healedAtMs: at(22), drainMs: 2000 }], statuses: {}, resources: new Map(), leftovers: [], startedAtMs: t0, lastHealAtMs: at(40), quiesceLimitMs: 1000, partitionsSkipped: 'network namespaces need root' })
    expect(r.partitions).toBe(1)
    expect(r.drains).toBe(1)
    expect(r.partitionList[0]).toMatch(/at \+10\.0s for 30\.0s: ingest1,backup1,proc1 \| backup2,proc2 \(held/)
    const ctx = { seed: 1, root: '/x', scheduleFile: 'x', replayCommand: 'r', seedCommand: 's', ok: true, kept: false, quiesceLimitMs: 1000 }
    expect(summaryJson(r, ctx)).toMatchObject({ partitions: 1, drains: 1, partitionsSkipped: 'network namespaces need root' })
    expect(formatReport(r, ctx)).toMatch(/partitions +SKIPPED: network namespaces need root/)
  })
})

describe('churn checker on hand-made evidence', () => {
  let root: string
  beforeAll(async () => { root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-churn-check-')) })
  afterAll(async () => { await fs.rm(root, { recursive: true, force: true }) })

  it('finds lost, stuck, corrupt, unsafe deletes, and traces duplicates', async () => {
    const t0 = Date.parse('2030-01-01T00:00:00Z')
    const files = ['ok', 'corrupt', 'stuck', 'lost', 'unsafe', 'moved'].map((n, i) => {
      const bytes = payload(99, i, 3000 + i)
      return { bytes, name: `${n}.bin` }
    })
    const ledger: ChurnLedgerEntry[] = await Promise.all(files.map(async (f) => ({ name: f.name, size: f.bytes.length, sha256: sha256Hex(f.bytes), cid: await referenceCid(f.bytes), via: 'rsync' as const, injectedAtMs: t0, ingest: 'ingest1', lagMs: 0 })))
    const [ok, bad, stuck, lost, unsafe, moved] = ledger as [ChurnLedgerEntry, ChurnLedgerEntry, ChurnLedgerEntry, ChurnLedgerEntry, ChurnLedgerEntry, ChurnLedgerEntry]
    const dir = (n: string): string => path.join(root, n)
    for (const d of ['ingest1/inbox', 'ingest1/spool', 'backup1/archive', 'proc1/work']) await fs.mkdir(dir(d), { recursive: true })
    const bytesOf = (e: ChurnLedgerEntry): Uint8Array => (files.find((f) => f.name === e.name) as { bytes: Uint8Array }).bytes
    await fs.writeFile(path.join(dir('backup1/archive'), ok.name), bytesOf(ok))
    // A second, unindexed copy of ok.bin (what a SIGKILL between the archive's link and its index line leaves).
    await fs.writeFile(path.join(dir('backup1/archive'), 'ok~dup.bin'), bytesOf(ok))
    await fs.writeFile(path.join(dir('backup1/archive'), '.filemesh-index.tsv'), [ok, bad, unsafe, moved].map((e) => `${e.cid}\t${e.size}\t${e.name}\tT\n`).join(''))
    await fs.writeFile(path.join(dir('backup1/archive'), unsafe.name), bytesOf(unsafe))
    await fs.writeFile(path.join(dir('backup1/archive'), moved.name), bytesOf(moved))
    const flipped = Buffer.from(bytesOf(bad))
    flipped[7] = (flipped[7] as number) ^ 1
    await fs.writeFile(path.join(dir('backup1/archive'), bad.name), flipped)
    await fs.writeFile(path.join(dir('ingest1/inbox'), stuck.name), bytesOf(stuck))

    const at = (s: number): string => new Date(t0 + s * 1000).toISOString()
    const line = (s: number, msg: string, f: Record<string, string>): string => JSON.stringify({ time: at(s), level: 'info', component: 'x', msg, ...f }) + '\n'
    let ingestLog = ''
    let backupLog = ''
    let ownerLog = ''
    for (const e of [ok, bad, unsafe, moved]) {
      ingestLog += line(1, 'file received', { cid: e.cid, file: e.name }) + line(1, 'file placed', { cid: e.cid, owner: 'peer-p', backup: 'peer-b' })
      ownerLog += line(2, 'stored durably', { cid: e.cid, role: 'owner' })
      if (e !== unsafe) backupLog += line(2, 'stored durably', { cid: e.cid, role: 'backup' })
      ingestLog += line(3, 'receipt recorded', { cid: e.cid, role: 'owner', peer: 'peer-p' })
      if (e !== unsafe) ingestLog += line(3, 'receipt recorded', { cid: e.cid, role: 'backup', peer: 'peer-b' })
      // moved.bin: its owner is replaced after the receipt; the new owner never sends one, yet the copy is deleted.
      if (e === moved) ingestLog += line(3, 'owner reassigned', { cid: e.cid, from: 'peer-p', to: 'peer-q', epoch: '2' })
      ingestLog += line(4, 'file processed', { cid: e.cid }) + line(4, 'ingest copy deleted after both receipts', { cid: e.cid })
    }
    ingestLog += line(1, 'file received', { cid: stuck.cid, file: stuck.name }) + '{"torn'
    await fs.writeFile(dir('ingest1.log'), ingestLog)
    await fs.writeFile(dir('backup1.log'), backupLog)
    await fs.writeFile(dir('proc1.log'), ownerLog)
    const rec = (s: number, e: ChurnLedgerEntry, attempt: number, sha = e.sha256): string => `done ${t0 + s * 1000} ${t0 + s * 1000 + 300} proc1 ${e.cid} ${sha} 1 ${attempt} ${e.name}\n`
    await fs.writeFile(dir('proc1.records'), rec(2, ok, 1) + rec(6, ok, 2) + rec(2, bad, 1) + rec(2, unsafe, 1) + rec(2, unsafe, 2) + rec(2, moved, 1))

    const nodes: CheckedNode[] = [
      { name: 'ingest1', roles: ['ingest'], dataDir: dir('ingest1'), logPath: dir('ingest1.log') },
      { name: 'backup1', roles: ['backup'], dataDir: dir('backup1'), logPath: dir('backup1.log'), peerId: 'peer-b' },
      { name: 'proc1', roles: ['process'], dataDir: dir('proc1'), logPath: dir('proc1.log'), peerId: 'peer-p', recordPath: dir('proc1.records') }
    ]
    const faults: ExecutedFault[] = [{ kind: 'kill', node: 'proc1', when: 'processing', scheduledAtMs: 0, atMs: t0 + 4000, healedAtMs: t0 + 5000 }]
    const r = await check({ ledger, injectFailures: [], nodes, faults, statuses: {}, resources: new Map(), leftovers: [], startedAtMs: t0, lastHealAtMs: t0 + 5000, quiesceLimitMs: 1000 })

    // The corrupt file's only archive copy is bad: it is lost too (no intact copy left anywhere).
    expect(r.lost.map((p) => p.name)).toEqual([bad.name, lost.name])
    expect(r.stuck.map((p) => p.name)).toEqual([stuck.name])
    expect(r.stuck[0]?.why).toMatch(/ingest1\/inbox/)
    expect(r.corrupt.map((p) => p.name)).toEqual([bad.name])
    expect(r.unsafeDeletes.map((p) => p.name)).toEqual([unsafe.name, moved.name])
    expect(r.unsafeDeletes[0]?.why).toMatch(/no 'receipt recorded' role=backup/)
    expect(r.unsafeDeletes[1]?.why).toMatch(/no 'receipt recorded' role=owner/)
    expect(r.deletesChecked).toBe(4)
    expect(r.reassignments).toBe(1)
    expect(r.archiveAnomalies).toEqual([expect.stringMatching(/ok~dup\.bin is not in the archive index \(intact copy of ok\.bin\)/), expect.stringMatching(/holds 2 copies of ok\.bin/)])
    expect(r.accepted).toBe(5)
    expect(r.unparsedLogLines).toBe(1)
    const dups = new Map(r.duplicates.map((d) => [d.name, d]))
    expect(dups.get(ok.name)?.traced).toBe(true)
    expect(dups.get(ok.name)?.causes[0]).toMatch(/SIGKILL of proc1/)
    expect(dups.get(unsafe.name)?.traced).toBe(false)
    expect(invariantsHold(r)).toBe(false)
    const ctx = { seed: 1, root, scheduleFile: 'x', replayCommand: 'npm run churn -- --replay x', seedCommand: 'npm run churn -- --seed 1', ok: false, kept: true, quiesceLimitMs: 1000 }
    expect(formatReport(r, ctx)).toMatch(/replay: {2}npm run churn -- --replay x/)
    expect(summaryJson(r, ctx)).toMatchObject({ lost: 2, stuck: 1, corrupt: 1, unsafeDeletes: 2, duplicates: 2, duplicatesUntraced: 1, files: 6 })
  })

  it('accepts a missing log line only when the durable record and a SIGKILL of that node explain it', async () => {
    const t0 = Date.parse('2030-01-01T00:00:00Z')
    const bytes = payload(98, 0, 5000)
    const e: ChurnLedgerEntry = { name: 'gap.bin', size: bytes.length, sha256: sha256Hex(bytes), cid: await referenceCid(bytes), via: 'add', injectedAtMs: t0, ingest: 'ingest1', lagMs: 0 }
    const base = path.join(root, 'gap')
    const dir = (n: string): string => path.join(base, n)
    await fs.mkdir(dir('backup1/archive'), { recursive: true })
    await fs.mkdir(dir('ingest1'), { recursive: true })
    await fs.writeFile(path.join(dir('backup1/archive'), e.name), bytes)
    const at = (s: number): string => new Date(t0 + s * 1000).toISOString()
    const line = (s: number, msg: string, f: Record<string, string>): string => JSON.stringify({ time: at(s), level: 'info', msg, ...f }) + '\n'
    // The ingest recorded the backup's receipt at +2.5 s but was killed before logging it; the deletion came after its restart.
    await fs.writeFile(dir('ingest1.log'), line(1, 'file placed', { cid: e.cid, owner: 'peer-p', backup: 'peer-b' }) + line(2, 'receipt recorded', { cid: e.cid, role: 'owner', peer: 'peer-p' }) + line(4, 'file processed', { cid: e.cid }) + line(5, 'ingest copy deleted after both receipts', { cid: e.cid }))
    await fs.writeFile(dir('backup1.log'), line(2, 'stored durably', { cid: e.cid, role: 'backup' }))
    await fs.writeFile(dir('proc1.log'), line(2, 'stored durably', { cid: e.cid, role: 'owner' }))
    await fs.writeFile(dir('proc1.records'), `done ${t0 + 3000} ${t0 + 3100} proc1 ${e.cid} ${e.sha256} 1 1 ${e.name}\n`)
    const store = new Store(path.join(dir('ingest1'), 'db'))
    await store.open()
    await store.commit([store.putIngest({ cid: e.cid, name: e.name, size: e.size, spoolPath: '/x', readiness: 'add', receivedAt: at(1), phase: 'released', epoch: 1, owner: 'peer-p', backup: 'peer-b', ownerStoredAt: at(2), backupStoredAt: at(2.5), processing: 'processed', releasedAt: at(5) })])
    await store.close()
    const nodes: CheckedNode[] = [
      { name: 'ingest1', roles: ['ingest'], dataDir: dir('ingest1'), logPath: dir('ingest1.log') },
      { name: 'backup1', roles: ['backup'], dataDir: dir('backup1'), logPath: dir('backup1.log'), peerId: 'peer-b' },
      { name: 'proc1', roles: ['process'], dataDir: dir('proc1'), logPath: dir('proc1.log'), peerId: 'peer-p', recordPath: dir('proc1.records') }
    ]
    const input = { ledger: [e], injectFailures: [], nodes, statuses: {}, resources: new Map(), leftovers: [], startedAtMs: t0, lastHealAtMs: t0, quiesceLimitMs: 1000 }
    const kill: ExecutedFault = { kind: 'kill', node: 'ingest1', when: 'now', scheduledAtMs: 0, atMs: t0 + 2600, healedAtMs: t0 + 4000 }
    const explained = await check({ ...input, faults: [kill] })
    expect(explained.unsafeDeletes).toEqual([])
    expect(explained.deletesExplainedByStore).toEqual([expect.stringMatching(/receipt backup recorded durably on ingest1 .* SIGKILLed 100 ms later/)])
    expect(invariantsHold(explained)).toBe(true)
    // The same evidence without the SIGKILL: nothing explains the missing line.
    const unexplained = await check({ ...input, faults: [] })
    expect(unexplained.unsafeDeletes.map((p) => p.name)).toEqual([e.name])
    // A kill of another node does not explain it either.
    const elsewhere = await check({ ...input, faults: [{ ...kill, node: 'proc1' }] })
    expect(elsewhere.unsafeDeletes.map((p) => p.name)).toEqual([e.name])
  })

  it('the recording command records node, bytes, epoch, attempt and times', async () => {
    const file = path.join(root, 'data.bin')
    await fs.writeFile(file, 'hello')
    const records = path.join(root, 'cmd.records')
    const env = { ...process.env, FILEMESH_CID: 'bafyx', FILEMESH_EPOCH: '2', FILEMESH_ATTEMPT: '3', FILEMESH_NAME: 'a b.bin' }
    await promisify(execFile)('/bin/sh', ['-c', churnCommand(records, 'proc7', 10), 'sh', file], { env })
    const { records: recs, torn } = await readRunRecords(records)
    expect(torn).toBe(0)
    expect(recs).toHaveLength(1)
    expect(recs[0]).toMatchObject({ node: 'proc7', cid: 'bafyx', sha256: sha256Hex(Buffer.from('hello')), epoch: 2, attempt: 3, name: 'a b.bin' })
    expect((recs[0]?.endMs ?? 0) - (recs[0]?.startMs ?? 0)).toBeGreaterThanOrEqual(10)
  })
})

describe.skipIf(SKIP_REAL_RUN)('churn run with real daemons (skip locally with FILEMESH_SKIP_CHURN=1)', () => {
  it('6 daemons, 80 files, ≥10 SIGKILLs and a drain: no file lost, corrupt or deleted early', async () => {
    const schedule = generateSchedule({
      // Seed 16: 12 SIGKILLs (4 of the ingest node, 3 of backups) covering every kill moment: now, transfer, processing, after-drop;
      // the joining processor is drained at 35.8 s.
      ...defaultConfig(16),
      drains: 1,
      nodes: 6,
      files: 80,
      faultWindowMs: 60_000,
      killEveryMs: 4_000,
      fileBytesMin: 64 * KiB,
      fileBytesMax: 2048 * KiB,
      processMs: 200
    })
    expect(schedule.faults.filter((f) => f.kind === 'kill').length).toBeGreaterThanOrEqual(10)
    const lines: string[] = []
    // Abort (and clean up) before vitest's own timeout would leave the daemons running in the worker.
    const result = await runChurn({ schedule, quiesceLimitMs: 90_000, drainTimeoutMs: 60_000, say: (l) => { lines.push(l) }, signal: AbortSignal.timeout(225_000), keepOnAbort: true })
    const ctx = { seed: schedule.config.seed, root: result.root, scheduleFile: result.scheduleFile, replayCommand: result.replayCommand, seedCommand: '', ok: result.ok, kept: result.kept, quiesceLimitMs: 90_000 }
    const text = formatReport(result.report, ctx)
    process.stdout.write(`${text}\n${JSON.stringify(summaryJson(result.report, ctx))}\n`)
    if (!result.ok) process.stdout.write(lines.join('\n') + '\n')
    expect(result.report.kills).toBeGreaterThanOrEqual(10)
    expect(result.report.faultErrors.filter((e) => e.startsWith('drain'))).toEqual([])
    expect(result.report.drains).toBe(1)
    expect(result.report.files).toBe(80)
    expect(result.report.deletesChecked).toBeGreaterThan(0)
    expect({ lost: result.report.lost, stuck: result.report.stuck, corrupt: result.report.corrupt, unsafeDeletes: result.report.unsafeDeletes, injectFailures: result.report.injectFailures }).toEqual({ lost: [], stuck: [], corrupt: [], unsafeDeletes: [], injectFailures: [] })
    expect(result.ok).toBe(true)
  }, 240_000)
})
