/**
 * The rsync side of `npm run bench`: the same files the mesh gets, written as rsync's sources, pushed by
 * the fan-out (sim/rsync-fanout.ts) to both rsync daemons at once, checked on arrival (count and bytes in
 * each destination), then removed so the next phase starts with an empty disk and page cache.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import { promisify } from 'node:util'
import { fileBytes } from './bench-mesh.ts'
import type { BenchFile } from './bench-mesh.ts'
import type { RsyncFanOut } from './rsync-fanout.ts'

const run = promisify(execFile)

/** Flushes dirty pages, so one phase's writeback does not land in the next phase's timing. */
export async function syncDisks (): Promise<void> {
  await run('sync').catch(() => {})
}

/** Writes `files` into `dir` (created); returns their paths. */
async function writeSources (dir: string, files: BenchFile[]): Promise<string[]> {
  await fs.mkdir(dir, { recursive: true })
  const out: string[] = []
  for (const file of files) {
    const p = path.join(dir, file.name)
    await fs.writeFile(p, fileBytes(file))
    out.push(p)
  }
  return out
}

async function checkPushed (dirs: string[], sub: string, files: BenchFile[]): Promise<void> {
  const bytes = files.reduce((n, f) => n + f.size, 0)
  for (const d of dirs) {
    const names = await fs.readdir(path.join(d, sub))
    let total = 0
    for (const n of names) total += (await fs.stat(path.join(d, sub, n))).size
    if (names.length !== files.length || total !== bytes) {
      throw new Error(`rsync reference: ${d}/${sub} has ${names.length} files, ${total} bytes; expected ${files.length}, ${bytes}`)
    }
  }
}

async function removeAll (paths: string[]): Promise<void> {
  await Promise.all(paths.map(async (p) => { await fs.rm(p, { recursive: true, force: true }) }))
}

/** Pushes all `files` as one directory (one rsync run per destination); resolves with the wall time in ms. */
export async function pushBatch (fanOut: RsyncFanOut, sub: string, files: BenchFile[]): Promise<number> {
  const src = path.join(fanOut.root, `src-${sub}`)
  await writeSources(src, files)
  await syncDisks()
  const ms = await fanOut.push([src + '/'], sub)
  await checkPushed(fanOut.destinations, sub, files)
  await removeAll([src, ...fanOut.destinations.map((d) => path.join(d, sub))])
  return ms
}

/** Pushes the files one at a time (one rsync run per file and destination); resolves with each push's ms. */
export async function pushEach (fanOut: RsyncFanOut, sub: string, files: BenchFile[]): Promise<number[]> {
  const src = path.join(fanOut.root, `src-${sub}`)
  const paths = await writeSources(src, files)
  const samples: number[] = []
  for (const p of paths) {
    await syncDisks()
    samples.push(await fanOut.push([p], sub))
  }
  await checkPushed(fanOut.destinations, sub, files)
  await removeAll([src, ...fanOut.destinations.map((d) => path.join(d, sub))])
  return samples
}
