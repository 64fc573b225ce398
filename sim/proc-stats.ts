/**
 * What a running process costs, read from Linux's /proc: peak resident memory (VmHWM) and CPU time used.
 * The benchmark samples its daemons with these, from outside, so the daemons need no instrumentation and
 * the figures cover everything the process does (V8 heap, LevelDB, buffers, native code).
 */
import fs from 'node:fs/promises'

/** Clock ticks per second of /proc/PID/stat times (USER_HZ: 100 on every Linux the project runs on). */
export const CLOCK_TICKS_PER_SECOND = 100

/** Peak resident set size (VmHWM) of `pid` in MiB, or undefined if the process is gone or not on Linux. */
export async function peakRssMiB (pid: number): Promise<number | undefined> {
  return await statusFieldMiB(pid, 'VmHWM')
}

/** Current resident set size (VmRSS) of `pid` in MiB. */
export async function rssMiB (pid: number): Promise<number | undefined> {
  return await statusFieldMiB(pid, 'VmRSS')
}

async function statusFieldMiB (pid: number, field: string): Promise<number | undefined> {
  let text: string
  try {
    text = await fs.readFile(`/proc/${pid}/status`, 'utf8')
  } catch {
    return undefined
  }
  const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(text)
  return m?.[1] != null ? Number(m[1]) / 1024 : undefined
}

/** User + system CPU seconds `pid` has used so far (its own threads, not its children). */
export async function cpuSeconds (pid: number): Promise<number | undefined> {
  let text: string
  try {
    text = await fs.readFile(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  // The command name (field 2) may contain spaces and parentheses: fields are counted after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
  const utime = Number(fields[11])
  const stime = Number(fields[12])
  return Number.isFinite(utime) && Number.isFinite(stime) ? (utime + stime) / CLOCK_TICKS_PER_SECOND : undefined
}

export interface MachineCpuTimes {
  /** Clock ticks spent running anything (user, nice, system, irq, softirq), summed over all CPUs. */
  busy: number
  /** All clock ticks, idle and iowait and steal included. */
  total: number
}

/** The machine's CPU time counters (first line of /proc/stat), or undefined off Linux. */
export async function machineCpuTimes (): Promise<MachineCpuTimes | undefined> {
  let text: string
  try {
    text = await fs.readFile('/proc/stat', 'utf8')
  } catch {
    return undefined
  }
  const f = (/^cpu\s+(.*)$/m.exec(text)?.[1] ?? '').trim().split(/\s+/).map(Number)
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f
  return { busy: user + nice + system + irq + softirq, total: user + nice + system + idle + iowait + irq + softirq + steal }
}

/** How many CPUs were busy on average between two samples (0..number of CPUs). */
export function busyCores (before: MachineCpuTimes, after: MachineCpuTimes, cpus: number): number {
  const total = after.total - before.total
  return total > 0 ? (after.busy - before.busy) / total * cpus : 0
}
