/**
 * Sidecars: `NAME.sha256` (a sha256sum line) and `NAME.size` (a decimal byte count), written by a sender
 * after the data to say the file is complete. Reading them, and hashing a file for its `.sha256` with the
 * result bound to the fingerprint it was computed on (a file changed meanwhile gets no digest).
 */

import fs from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { MiB } from '../protocols/limits.ts'
import { fingerprintOf, fpKey } from './inbox-rules.ts'
import type { FileFingerprint, SidecarVerdict } from './inbox-rules.ts'

/** Largest sidecar we read; more is not a sha256sum line or a byte count. */
export const SIDECAR_BYTES_MAX = 4096

/** A file's sha256, valid for the version `fpKey` names. */
export interface BoundDigest {
  fpKey: string
  hex: string
}

/**
 * The verdict of every sidecar in `paths` for the file version `fp`: a mismatch anywhere wins; a `.sha256`
 * is checked against `digest` (when it is for `fp`; otherwise 'need-hash'); an unreadable one is 'wait'.
 */
export async function checkSidecars (paths: string[], fp: FileFingerprint, digest: BoundDigest | undefined): Promise<SidecarVerdict> {
  let verdict: SidecarVerdict = { kind: 'wait' }
  for (const p of paths) {
    let text: string
    try {
      text = await readHead(p)
    } catch {
      return { kind: 'wait' }
    }
    if (p.endsWith('.size')) {
      const m = /^\s*(\d+)\s*$/.exec(text)
      if (m?.[1] == null) return { kind: 'mismatch', reason: 'size sidecar is not a decimal byte count' }
      if (BigInt(m[1]) !== fp.size) return { kind: 'mismatch', reason: `size sidecar says ${m[1]}` }
      if (verdict.kind !== 'match') verdict = { kind: 'match', path: p, strong: false }
      continue
    }
    const m = /^\s*([0-9a-fA-F]{64})(\s|$)/.exec(text)
    if (m?.[1] == null) return { kind: 'mismatch', reason: 'sha256 sidecar is not a hex digest' }
    if (digest?.fpKey !== fpKey(fp)) return { kind: 'need-hash' }
    if (digest.hex !== m[1].toLowerCase()) return { kind: 'mismatch', reason: 'sha256 differs' }
    verdict = { kind: 'match', path: p, strong: true }
  }
  return verdict
}

async function readHead (p: string): Promise<string> {
  const fh = await fs.open(p, 'r')
  try {
    const buf = Buffer.alloc(SIDECAR_BYTES_MAX)
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0)
    return buf.subarray(0, bytesRead).toString('utf8')
  } finally {
    await fh.close()
  }
}

/** The sha256 of the file at `p` if it is still version `fp` before and after reading it; else undefined. */
export async function digestIfUnchanged (p: string, fp: FileFingerprint, options: { signal: AbortSignal }): Promise<BoundDigest | undefined> {
  const fh = await fs.open(p, 'r')
  try {
    const key = fpKey(fp)
    if (fpKey(fingerprintOf(await fh.stat({ bigint: true }))) !== key) return undefined
    const hash = createHash('sha256')
    const buf = Buffer.allocUnsafe(MiB)
    for (;;) {
      options.signal.throwIfAborted()
      const { bytesRead } = await fh.read(buf, 0, buf.length, null)
      if (bytesRead === 0) break
      hash.update(buf.subarray(0, bytesRead))
    }
    if (fpKey(fingerprintOf(await fh.stat({ bigint: true }))) !== key) return undefined
    return { fpKey: key, hex: hash.digest('hex') }
  } finally {
    await fh.close()
  }
}

/**
 * Hashes files for their `.sha256` sidecars one at a time (they can be GBs), each result bound to the
 * fingerprint it saw; `done` is called after each file, digest or not.
 */
export class SidecarHasher<T extends { hashing: boolean, hash?: BoundDigest }> {
  readonly #queue: Array<{ item: T, path: string, fp: FileFingerprint }> = []
  readonly #done: (item: T) => void
  readonly #signal: AbortSignal
  readonly #onError: (item: T, err: unknown) => void
  #running?: Promise<void>

  constructor (init: { done: (item: T) => void, onError: (item: T, err: unknown) => void, signal: AbortSignal }) {
    this.#done = init.done
    this.#onError = init.onError
    this.#signal = init.signal
  }

  request (item: T, path: string, fp: FileFingerprint): void {
    if (item.hashing || this.#signal.aborted) return
    item.hashing = true
    this.#queue.push({ item, path, fp })
    this.#running ??= this.#loop().finally(() => { this.#running = undefined })
  }

  /** Resolves when the file being hashed (if any) is done; call after aborting the signal. */
  async settled (): Promise<void> {
    await this.#running
  }

  async #loop (): Promise<void> {
    for (let job = this.#queue.shift(); job != null && !this.#signal.aborted; job = this.#queue.shift()) {
      try {
        const digest = await digestIfUnchanged(job.path, job.fp, { signal: this.#signal })
        if (digest != null) job.item.hash = digest
      } catch (err) {
        if (!this.#signal.aborted) this.#onError(job.item, err)
      } finally {
        job.item.hashing = false
      }
      this.#done(job.item)
    }
  }
}
