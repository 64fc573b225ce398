/**
 * One churn run, start to finish: start the schedule's daemons in a temp dir on loopback (or, when the
 * schedule has partitions, each in its own network namespace: sim/netns.ts; if namespaces cannot be made
 * here, the run says why and goes on on loopback without its partitions), inject its files
 * and carry out its faults at their offsets, stop faulting, wait (bounded) for quiescence, take every
 * daemon's final `filemesh status --json`, stop the daemons, and hand everything to the checker. Daemons,
 * namespaces and the temp dir are always cleaned up (abort included); the dir is kept on failure or when
 * asked, and said.
 * `npm run churn` (sim/churn.ts) is the command line; test/churn.test.ts runs a small schedule.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { NodeStatus } from '../node/status.ts'
import { check, invariantsHold } from './churn-checker.ts'
import type { CheckerInput, ChurnReport } from './churn-checker.ts'
import { Injector } from './churn-injector.ts'
import { ChurnMesh } from './churn-mesh.ts'
import { Nemesis, sleep } from './churn-nemesis.ts'
import { ResourceSampler, leftovers } from './churn-resources.ts'
import { formatSchedule, parseSchedule } from './churn-schedule.ts'
import type { ChurnSchedule, ScheduledFault, ScheduledFile } from './churn-schedule.ts'
import { CLI_PATH } from './local-mesh.ts'
import { NetnsLab } from './netns.ts'

export const DEFAULT_QUIESCE_LIMIT_MS = 120_000
export const QUIESCE_POLL_MS = 500
export const PROGRESS_INTERVAL_MS = 5_000
export const MEMBERS_TIMEOUT_MS = 30_000
export const CLI_STATUS_TIMEOUT_MS = 60_000
export const CHECKER_INPUT_FILE = 'checker-input.json'

/** Judges a kept run directory again with the current checker (the daemons' files and logs are all there). */
export async function recheck (root: string): Promise<{ report: ChurnReport, ok: boolean, schedule: ChurnSchedule, quiesceLimitMs: number }> {
  const raw = JSON.parse(await fs.readFile(path.join(root, CHECKER_INPUT_FILE), 'utf8'))
  const schedule = parseSchedule(await fs.readFile(path.join(root, 'schedule.json'), 'utf8'))
  const report = await check({ ...raw, resources: new Map(Object.entries(raw.resources ?? {})) } as CheckerInput)
  return { report, ok: invariantsHold(report), schedule, quiesceLimitMs: Number(raw.quiesceLimitMs ?? DEFAULT_QUIESCE_LIMIT_MS) }
}

export interface ChurnRunInit {
  schedule: ChurnSchedule
  /** How long after the last fault healed the mesh may take to finish every file. */
  quiesceLimitMs?: number
  /** Keep the run directory even when the run passes. */
  keep?: boolean
  /** Keep the run directory when `signal` aborts the run (a test's deadline; Ctrl-C in the CLI removes it). */
  keepOnAbort?: boolean
  /** Parent of the run directory (default the OS temp dir). */
  tmpDir?: string
  /** Progress lines (stderr in the CLI). */
  say?: (line: string) => void
  signal?: AbortSignal
  /** The command that replays a schedule file, e.g. `npm run churn -- --replay FILE`. */
  replayCommand?: (scheduleFile: string) => string
  /** How long a drain may take to reach "safe to remove" (default DEFAULT_DRAIN_TIMEOUT_MS). */
  drainTimeoutMs?: number
}

export interface ChurnResult {
  report: ChurnReport
  ok: boolean
  root: string
  kept: boolean
  scheduleFile: string
  replayCommand: string
}

export class ChurnAbortedError extends Error {
  override name = 'ChurnAbortedError'
}

export async function runChurn (init: ChurnRunInit): Promise<ChurnResult> {
  const { schedule } = init
  const say = init.say ?? (() => {})
  const signal = init.signal ?? new AbortController().signal
  const quiesceLimitMs = init.quiesceLimitMs ?? DEFAULT_QUIESCE_LIMIT_MS
  const root = await fs.mkdtemp(path.join(init.tmpDir ?? os.tmpdir(), 'filemesh-churn-'))
  const scheduleFile = path.join(root, 'schedule.json')
  await fs.writeFile(scheduleFile, JSON.stringify(schedule, null, 1) + '\n')
  const replayCommand = init.replayCommand?.(scheduleFile) ?? `npm run churn -- --replay ${scheduleFile}`
  say(formatSchedule(schedule))
  say(`schedule written to ${scheduleFile}; run directory ${root}`)

  let lab: NetnsLab | undefined
  let partitionsSkipped: string | undefined
  if (schedule.faults.some((f) => f.kind === 'partition')) {
    try {
      lab = await NetnsLab.create(schedule.nodes.map((n) => n.name), { say })
    } catch (err: any) {
      partitionsSkipped = String(err?.message ?? err)
      say(`PARTITIONS SKIPPED: ${partitionsSkipped}; running on 127.0.0.1 without them`)
    }
  }
  const mesh = new ChurnMesh(root, schedule.nodes, schedule.config.processMs, lab != null ? { lab } : {})
  const sampler = new ResourceSampler(() => mesh.livePids())
  let keep = init.keep === true
  try {
    await mesh.prepare()
    const initial = schedule.nodes.filter((n) => n.joinAtMs == null)
    const ingests = initial.filter((n) => n.roles.includes('ingest'))
    for (const n of ingests) await mesh.start(n.name)
    await Promise.all(initial.filter((n) => !n.roles.includes('ingest')).map(async (n) => { await mesh.start(n.name) }))
    for (const n of ingests) {
      await waitUntil(`${n.name} to see all ${initial.length} members`, async () => (await mesh.status(n.name)).members.length >= initial.length, MEMBERS_TIMEOUT_MS, signal)
    }
    sampler.start()
    say(`mesh up: ${initial.map((n) => n.name).join(' ')}`)

    const staging = path.join(root, 'staging')
    await fs.mkdir(staging, { recursive: true })
    const injector = new Injector({ seed: schedule.config.seed, stagingDir: staging })
    const t0 = Date.now()
    const nemesis = new Nemesis(mesh, sampler, { waitMaxMs: schedule.config.waitMaxMs, signal, say, t0Ms: t0, ...(init.drainTimeoutMs != null ? { drainTimeoutMs: init.drainTimeoutMs } : {}) })
    const progress = setInterval(() => { void progressLine(mesh, injector, nemesis, t0, say) }, PROGRESS_INTERVAL_MS)
    const tasks: Array<Promise<void>> = []
    const ingestNames = ingests.map((n) => n.name)
    type Step = { atMs: number, file?: ScheduledFile, fault?: ScheduledFault }
    const steps: Step[] = [...schedule.files.map((file) => ({ atMs: file.atMs, file })), ...schedule.faults.map((fault) => ({ atMs: fault.atMs, fault }))]
    steps.sort((a, b) => a.atMs - b.atMs || (a.file != null ? -1 : 1))
    try {
      for (const step of steps) {
        await sleep(t0 + step.atMs - Date.now(), signal)
        if (signal.aborted) break
        if (step.file != null) {
          const ingest = ingestNames[step.file.index % ingestNames.length] as string
          tasks.push(injector.inject(step.file, ingest, mesh.mesh.dataDir(ingest), t0 + step.atMs))
        } else if (step.fault != null) {
          tasks.push(nemesis.run(step.fault))
        }
      }
      await Promise.all(tasks)
      await nemesis.settled()
    } finally {
      clearInterval(progress)
    }
    if (signal.aborted) throw new ChurnAbortedError(`aborted during the fault window: ${String(signal.reason)}`)
    const lastHealAtMs = Math.max(t0, ...nemesis.executed.map((f) => f.healedAtMs ?? f.atMs))
    say(`faults over (${nemesis.executed.length} carried out); last fault healed at +${((lastHealAtMs - t0) / 1000).toFixed(1)}s; waiting up to ${quiesceLimitMs / 1000} s for quiescence`)

    let quiescedAtMs: number | undefined
    const deadline = Date.now() + quiesceLimitMs
    let lastSaid = 0
    while (Date.now() < deadline && !signal.aborted) {
      const q = await quiescence(mesh, injector.ledger.length)
      if (q.done) { quiescedAtMs = Date.now(); break }
      if (Date.now() - lastSaid > PROGRESS_INTERVAL_MS) { lastSaid = Date.now(); say(`  not quiescent yet: ${q.why}`) }
      await sleep(QUIESCE_POLL_MS, signal)
    }
    if (signal.aborted) throw new ChurnAbortedError(`aborted while waiting for quiescence: ${String(signal.reason)}`)
    say(quiescedAtMs != null ? `quiescent ${((quiescedAtMs - lastHealAtMs) / 1000).toFixed(1)} s after the last fault healed` : `NOT quiescent within ${quiesceLimitMs / 1000} s`)

    // One at a time: a CLI process per daemon at once would only add load at the moment we measure.
    const statuses: Record<string, NodeStatus | { error: string }> = {}
    for (const name of [...mesh.up]) {
      statuses[name] = await cliStatus(mesh.mesh.dataDir(name), mesh.cliEnv()).catch(async (err) => {
        say(`  \`filemesh status --json\` for ${name} failed (${String(err?.message ?? err).split('\n')[0]}); using the HTTP API`)
        return await mesh.status(name).catch((e) => ({ error: String(e?.message ?? e) }))
      })
    }
    await sampler.sample()
    sampler.stop()
    await mesh.stopAll()
    await lab?.destroy()
    const left: string[] = []
    for (const n of mesh.checkedNodes()) left.push(...await leftovers(n.name, n.dataDir, n.roles))
    const input: CheckerInput = {
      ledger: injector.ledger,
      injectFailures: injector.failures,
      nodes: mesh.checkedNodes(),
      faults: nemesis.executed,
      statuses,
      resources: sampler.byNode,
      leftovers: left,
      startedAtMs: t0,
      lastHealAtMs,
      quiescedAtMs,
      quiesceLimitMs,
      ...(partitionsSkipped != null ? { partitionsSkipped } : {})
    }
    // Everything the checker gets besides the files, so `npm run churn -- --check DIR` can judge a kept run again.
    await fs.writeFile(path.join(root, CHECKER_INPUT_FILE), JSON.stringify({ ...input, resources: Object.fromEntries(input.resources) }, null, 1) + '\n')
    await fs.writeFile(path.join(root, 'faults.txt'), nemesis.executed.map((f) => `+${((f.atMs - t0) / 1000).toFixed(1)}s ${f.kind} ${f.sides != null ? `${f.sides[0].join(',')} | ${f.sides[1].join(',')}` : f.node}${f.drainMs != null ? ` safe to remove after ${(f.drainMs / 1000).toFixed(1)}s` : ''}${f.when != null ? ` when=${f.when}` : ''}${f.momentMet === false ? ' (moment not seen)' : ''}${f.healedAtMs != null ? ` serving again +${((f.healedAtMs - t0) / 1000).toFixed(1)}s` : ''}${f.error != null ? ` ERROR ${f.error}` : ''}`).join('\n') + '\n')
    const report = await check(input)
    const ok = invariantsHold(report)
    if (!ok) keep = true
    return { report, ok, root, kept: keep, scheduleFile, replayCommand }
  } catch (err) {
    keep = keep || !(err instanceof ChurnAbortedError) || init.keepOnAbort === true
    if (keep && err instanceof Error) err.message += ` (run directory kept: ${root})`
    throw err
  } finally {
    sampler.stop()
    await mesh.stopAll().catch(() => {})
    await lab?.destroy().catch((err) => { say(`netns teardown failed: ${err?.message ?? err}`) })
    if (!keep) await fs.rm(root, { recursive: true, force: true }).catch(() => {})
    else say(`run directory kept: ${root}`)
  }
}

/** Finished = every injected file accepted, its outcome recorded and its ingest copy deleted, and no holder busy. */
async function quiescence (mesh: ChurnMesh, injected: number): Promise<{ done: boolean, why: string }> {
  let accepted = 0
  let finished = 0
  let deleted = 0
  const busy: string[] = []
  for (const name of [...mesh.up]) {
    let s: NodeStatus
    try { s = await mesh.status(name) } catch (err: any) { return { done: false, why: `${name} status: ${err?.message ?? err}` } }
    if (s.roles.includes('ingest')) {
      accepted += s.files.total
      finished += s.files.processed + s.files.failed
      deleted += s.files.deletedFromIngest
    }
    const b = s.owner.fetching + s.owner.stored + s.owner.processing + s.backup.fetching + (s.counters.fetchQueue ?? 0) + (s.counters.processQueue ?? 0)
    if (b > 0) busy.push(`${name}(${s.owner.fetching}f/${s.owner.stored}s/${s.owner.processing}p owner, ${s.backup.fetching}f backup)`)
  }
  const done = accepted >= injected && finished >= accepted && deleted >= accepted && busy.length === 0
  return { done, why: `accepted ${accepted}/${injected}, outcome recorded ${finished}, ingest copies deleted ${deleted}${busy.length > 0 ? `, busy: ${busy.join(' ')}` : ''}` }
}

async function progressLine (mesh: ChurnMesh, injector: Injector, nemesis: Nemesis, t0: number, say: (line: string) => void): Promise<void> {
  const parts: string[] = []
  for (const name of mesh.ingests()) {
    if (!mesh.up.has(name)) { parts.push(`${name} down`); continue }
    try {
      const s = await mesh.status(name)
      const f = s.files
      parts.push(`${name}: accepted ${f.total} processed ${f.processed} deleted ${f.deletedFromIngest}${mesh.lab?.sides != null ? ` sees ${s.members.length} members` : ''}`)
    } catch { parts.push(`${name} unreachable`) }
  }
  const down = [...mesh.nodes.keys()].filter((n) => !mesh.up.has(n) && mesh.mesh.nodes.has(n))
  const cut = mesh.lab?.sides
  say(`+${((Date.now() - t0) / 1000).toFixed(0)}s injected ${injector.ledger.length} | ${parts.join(' | ')} | faults ${nemesis.executed.length} | down: ${down.join(',') || 'none'}${cut != null ? ` | CUT ${cut[0].join(',')} / ${cut[1].join(',')}` : ''}`)
}

/** `filemesh status --json --data DIR`, as an operator would run it. */
async function cliStatus (dataDir: string, env: NodeJS.ProcessEnv): Promise<NodeStatus> {
  return await new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI_PATH, 'status', '--json', '--data', dataDir], { timeout: CLI_STATUS_TIMEOUT_MS, maxBuffer: 16 << 20, env }, (err, out, errOut) => {
      if (err != null) reject(new Error(`exit ${String(err.code ?? err.signal)}${err.killed ? ` (killed after ${CLI_STATUS_TIMEOUT_MS} ms)` : ''}: ${errOut.trim()}`))
      else {
        try { resolve(JSON.parse(out) as NodeStatus) } catch (e) { reject(e as Error) }
      }
    })
  })
}

async function waitUntil (what: string, fn: () => Promise<boolean>, timeoutMs: number, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (signal.aborted) throw new ChurnAbortedError('aborted')
    try { if (await fn()) return } catch {}
    await sleep(200, signal)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
}
