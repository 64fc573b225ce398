/**
 * DESIGN §5 I7 for the churn harness: samples each daemon's peak resident memory (VmHWM from
 * /proc/PID/status, the kernel's own high-water mark, so a peak between samples is not missed while the
 * process lives) and its open file descriptors, keeping the maximum per node name across restarts; and
 * lists what is left in the directories that must be empty when the mesh is idle (inbox, spool, work,
 * work/.incoming, archive/.incoming).
 */
import fs from 'node:fs/promises'
import path from 'node:path'

export const DEFAULT_SAMPLE_INTERVAL_MS = 1_000

export interface NodeResources {
  /** Largest VmHWM seen over all incarnations of the node, bytes. */
  maxRssBytes: number
  maxFds: number
  samples: number
}

export class ResourceSampler {
  readonly byNode = new Map<string, NodeResources>()
  readonly #pids: () => Array<{ name: string, pid: number }>
  #timer: NodeJS.Timeout | undefined
  #busy = false

  /** `pids` lists the daemons alive right now. */
  constructor (pids: () => Array<{ name: string, pid: number }>) {
    this.#pids = pids
  }

  start (intervalMs = DEFAULT_SAMPLE_INTERVAL_MS): void {
    this.#timer = setInterval(() => { void this.sample() }, intervalMs)
  }

  stop (): void {
    clearInterval(this.#timer)
  }

  /** One sample of every live daemon (also call it right before a planned kill or stop). */
  async sample (): Promise<void> {
    if (this.#busy) return
    this.#busy = true
    try {
      await Promise.all(this.#pids().map(async ({ name, pid }) => { await this.sampleOne(name, pid) }))
    } finally {
      this.#busy = false
    }
  }

  async sampleOne (name: string, pid: number): Promise<void> {
    let hwm: number | undefined
    let fds: number | undefined
    try {
      const status = await fs.readFile(`/proc/${pid}/status`, 'utf8')
      const m = /^VmHWM:\s+(\d+) kB/m.exec(status)
      if (m?.[1] != null) hwm = Number(m[1]) * 1024
      fds = (await fs.readdir(`/proc/${pid}/fd`)).length
    } catch {
      return // the process exited between listing and reading
    }
    const r = this.byNode.get(name) ?? { maxRssBytes: 0, maxFds: 0, samples: 0 }
    r.maxRssBytes = Math.max(r.maxRssBytes, hwm ?? 0)
    r.maxFds = Math.max(r.maxFds, fds ?? 0)
    r.samples++
    this.byNode.set(name, r)
  }
}

/** Visible entries of the idle-must-be-empty directories of one node's data dir, as `node/dir/name`. */
export async function leftovers (node: string, dataDir: string, roles: readonly string[]): Promise<string[]> {
  const dirs: string[] = []
  if (roles.includes('ingest')) dirs.push('inbox', 'spool')
  if (roles.includes('process')) dirs.push('work', 'work/.incoming')
  if (roles.includes('backup')) dirs.push('archive/.incoming')
  const out: string[] = []
  for (const d of dirs) {
    let names: string[]
    try {
      names = await fs.readdir(path.join(dataDir, d))
    } catch (err: any) {
      if (err.code === 'ENOENT') continue
      throw err
    }
    // work/ holds .incoming itself; the inbox may hold nothing at all once every file is claimed.
    for (const n of names) if (!(d === 'work' && n === '.incoming')) out.push(`${node}/${d}/${n}`)
  }
  return out
}
