/**
 * Injects the schedule's files into an ingest node and keeps the checker's own ledger of them: name, size,
 * sha256 and root CID of every injected file, computed here from the bytes (the CID by ipfs-unixfs-importer,
 * not by the daemon's hasher, so the ledger is independent of the code under test). Two paths, as senders
 * use them: rsync-style (hidden temp name in the inbox, then rename: sim/workload.ts) and `filemesh add` run
 * as a child process (hash, sidecar, link into the inbox). Both work whether the ingest daemon is up or not.
 * Injections run at most `concurrency` at a time, so a burst in the schedule cannot pile up processes.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import { importBytes } from 'ipfs-unixfs-importer'
import type { ImporterOptions } from 'ipfs-unixfs-importer'
import { CLI_PATH } from './local-mesh.ts'
import { dropLikeRsync, payload, sha256Hex } from './workload.ts'
import type { FileVia, ScheduledFile } from './churn-schedule.ts'

export interface ChurnLedgerEntry {
  name: string
  size: number
  sha256: string
  cid: string
  via: FileVia
  /** Wall-clock ms when the file became visible in the inbox. */
  injectedAtMs: number
  /** Which ingest node it went to. */
  ingest: string
  /** How late the injection finished against its scheduled time (load on the host, the injection queue). */
  lagMs: number
}

export interface InjectorInit {
  seed: number
  /** Scratch directory for `filemesh add` sources (same filesystem as the inboxes). */
  stagingDir: string
  /** Concurrent injections; default 2. */
  concurrency?: number
  env?: Record<string, string>
}

export const DEFAULT_INJECT_CONCURRENCY = 3
export const ADD_TIMEOUT_MS = 60_000

export class InjectError extends Error {
  override name = 'InjectError'
}

const IMPORTER_OPTIONS: ImporterOptions = { profile: 'unixfs-v1-2025', cidVersion: 1, rawLeaves: true, reduceSingleLeafToSelf: true }

/** The root CID ipfs-unixfs-importer gives `bytes` (profile unixfs-v1-2025): the ledger's reference. */
export async function referenceCid (bytes: Uint8Array): Promise<string> {
  const result = await importBytes(bytes, { put: async (cid) => cid }, IMPORTER_OPTIONS)
  return result.cid.toString()
}

export class Injector {
  readonly ledger: ChurnLedgerEntry[] = []
  /** Injections that failed (the file never reached an inbox): reported, never silently dropped. */
  readonly failures: Array<{ name: string, error: string }> = []
  readonly #init: InjectorInit
  readonly #waiting: Array<() => void> = []
  #running = 0

  constructor (init: InjectorInit) {
    this.#init = init
  }

  get pending (): number {
    return this.#running + this.#waiting.length
  }

  /** Injects one file into `ingest` (data dir `dataDir`), due at wall-clock `dueAtMs`; resolves when it is in the inbox, never rejects. */
  async inject (file: ScheduledFile, ingest: string, dataDir: string, dueAtMs: number): Promise<void> {
    await this.#slot()
    try {
      const bytes = payload(this.#init.seed, file.index, file.size)
      const entry: ChurnLedgerEntry = { name: file.name, size: file.size, sha256: sha256Hex(bytes), cid: await referenceCid(bytes), via: file.via, injectedAtMs: 0, ingest, lagMs: 0 }
      if (file.via === 'rsync') {
        const inbox = path.join(dataDir, 'inbox')
        await fs.mkdir(inbox, { recursive: true })
        await dropLikeRsync(inbox, file.name, bytes)
      } else {
        const cid = await this.#add(file.name, bytes, dataDir)
        if (cid !== entry.cid) throw new InjectError(`filemesh add printed CID ${cid}, the reference importer says ${entry.cid}`)
      }
      entry.injectedAtMs = Date.now()
      entry.lagMs = Math.max(0, entry.injectedAtMs - dueAtMs)
      this.ledger.push(entry)
    } catch (err: any) {
      this.failures.push({ name: file.name, error: err?.message ?? String(err) })
    } finally {
      this.#running--
      this.#waiting.shift()?.()
    }
  }

  async #slot (): Promise<void> {
    if (this.#running >= (this.#init.concurrency ?? DEFAULT_INJECT_CONCURRENCY)) await new Promise<void>((resolve) => this.#waiting.push(resolve))
    this.#running++
  }

  /** `filemesh add --data DIR SRC` as a child process; returns the CID it printed. */
  async #add (name: string, bytes: Uint8Array, dataDir: string): Promise<string> {
    const src = path.join(this.#init.stagingDir, name)
    await fs.writeFile(src, bytes)
    try {
      const stdout = await new Promise<string>((resolve, reject) => {
        execFile(process.execPath, [CLI_PATH, 'add', '--data', dataDir, src], { timeout: ADD_TIMEOUT_MS, env: { ...process.env, ...this.#init.env } }, (err, out, errOut) => {
          if (err != null) reject(new InjectError(`filemesh add ${name} failed: ${err.message} ${errOut}`))
          else resolve(out)
        })
      })
      return stdout.trim()
    } finally {
      await fs.rm(src, { force: true })
    }
  }
}
