/**
 * Where a daemon's CPU time went, from the `.cpuprofile` that `node --cpu-prof` writes on exit: self time
 * summed per function and per package (a node_modules package, a project file, Node's internals, or V8's
 * own buckets such as "(garbage collector)"), so the benchmark can say what limits throughput without a
 * profiler UI.
 */
import fs from 'node:fs/promises'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  children?: number[]
}

interface CpuProfile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
  startTime: number
  endTime: number
}

export interface ProfileEntry {
  name: string
  ms: number
  share: number
}

export interface ProfileSummary {
  file: string
  totalMs: number
  /** Time not idle: everything but "(idle)". */
  busyMs: number
  byPackage: ProfileEntry[]
  byFunction: ProfileEntry[]
  /** Self time of Node internals and native code charged to the nearest caller in a package or project file. */
  byCaller: ProfileEntry[]
}

/** The package a script URL belongs to: `@scope/name`, a project path, `node:internal`, or the V8 bucket. */
export function packageOf (url: string, functionName: string): string {
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)'
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (nm?.[1] != null) return nm[1]
  if (url.startsWith('node:')) return 'node:internal'
  const own = /\/((?:node|protocols|sim)\/.+)$/.exec(url)
  return own?.[1] ?? url
}

function shortUrl (url: string): string {
  const nm = /node_modules\/(.+)$/.exec(url)
  if (nm?.[1] != null) return nm[1]
  const own = /\/((?:node|protocols|sim)\/.+)$/.exec(url)
  return own?.[1] ?? url
}

function frameName (node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame
  return url === '' ? (functionName || '(anonymous)') : `${functionName || '(anonymous)'} ${shortUrl(url)}:${lineNumber + 1}`
}

/** Code of a package or of the project (not Node's internals, not native, not a V8 bucket). */
function isOwnCode (node: ProfileNode): boolean {
  const url = node.callFrame.url
  return url !== '' && !url.startsWith('node:') && !url.startsWith('wasm:')
}

function top (map: Map<string, number>, total: number, n: number): ProfileEntry[] {
  return [...map.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map(([name, ms]) => ({ name, ms, share: total > 0 ? ms / total : 0 }))
}

export async function summarizeCpuProfile (file: string, topN = 12): Promise<ProfileSummary> {
  const profile = JSON.parse(await fs.readFile(file, 'utf8')) as CpuProfile
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  /** The nearest two frames of package or project code above `id`: "callee <- its caller". */
  const callerOf = (id: number): string => {
    const frames: string[] = []
    for (let cur: number | undefined = id; cur != null && frames.length < 2; cur = parent.get(cur)) {
      const n = byId.get(cur)
      if (n != null && isOwnCode(n)) frames.push(frameName(n))
    }
    const self = byId.get(id)
    return frames.length > 0 ? frames.join(' <- ') : (self != null ? frameName(self) : '(unknown)')
  }
  const selfUs = new Map<number, number>()
  // The time after sample i (until sample i+1) belongs to sample i, as in Chrome's profiler.
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i] as number
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? 0))
  }
  const byPackage = new Map<string, number>()
  const byFunction = new Map<string, number>()
  const byCaller = new Map<string, number>()
  let totalMs = 0
  let idleMs = 0
  for (const [id, us] of selfUs) {
    const node = byId.get(id)
    if (node == null) continue
    const ms = us / 1000
    const { functionName, url } = node.callFrame
    totalMs += ms
    if (functionName === '(idle)') idleMs += ms
    const pkg = packageOf(url, functionName)
    byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + ms)
    const fn = frameName(node)
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + ms)
    if (!isOwnCode(node) && !functionName.startsWith('(')) {
      const caller = callerOf(id)
      byCaller.set(caller, (byCaller.get(caller) ?? 0) + ms)
    }
  }
  byPackage.delete('(idle)')
  byFunction.delete('(idle)')
  const busyMs = totalMs - idleMs
  return { file, totalMs, busyMs, byPackage: top(byPackage, busyMs, topN), byFunction: top(byFunction, busyMs, topN), byCaller: top(byCaller, busyMs, topN) }
}

export function formatProfileSummary (name: string, s: ProfileSummary): string {
  const pct = (e: ProfileEntry): string => `${(e.share * 100).toFixed(1).padStart(5)}%  ${(e.ms / 1000).toFixed(2).padStart(7)} s  ${e.name}`
  return [
    `${name}: ${(s.busyMs / 1000).toFixed(1)} s busy of ${(s.totalMs / 1000).toFixed(1)} s profiled (${s.file})`,
    '  self time by package:',
    ...s.byPackage.map((e) => `    ${pct(e)}`),
    '  self time by function:',
    ...s.byFunction.map((e) => `    ${pct(e)}`),
    '  Node internals and native code, by the package or project code that called them (callee <- caller):',
    ...s.byCaller.map((e) => `    ${pct(e)}`)
  ].join('\n')
}
