/**
 * Group commit (node/group-commit.ts): concurrent callers share store batches and directory fsyncs, and no
 * caller is told "durable" before the batch (or the fsync started after its request) that covers it is done.
 * The store and the fsync are stand-ins that record what they were asked, and when.
 */

import { describe, it, expect } from 'vitest'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { CommitGroup, DirSync } from '../node/group-commit.ts'
import { Store } from '../node/store.ts'
import type { StoreOp } from '../node/store.ts'

/** A controllable async step: `calls` records each call's argument; `finish(i)` settles call i. */
function gatedStep<A> (): { fn: (a: A) => Promise<void>, calls: A[], finish: (i: number, err?: Error) => void } {
  const calls: A[] = []
  const settle: Array<(err?: Error) => void> = []
  return {
    calls,
    fn: async (a: A) => {
      calls.push(a)
      await new Promise<void>((resolve, reject) => { settle.push((err) => { err != null ? reject(err) : resolve() }) })
    },
    finish: (i, err) => { settle[i]?.(err) }
  }
}

const op = (key: string): StoreOp => ({ type: 'put', key, value: key }) as unknown as StoreOp
const tick = async (): Promise<void> => { for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve)) }

describe('CommitGroup', () => {
  it('writes callers that arrive during a write together in the next batch, each resolved only when its batch is', async () => {
    const step = gatedStep<StoreOp[]>()
    const group = new CommitGroup(step.fn)
    const done: string[] = []
    const a = group.commit([op('a')]).then(() => { done.push('a') })
    await tick()
    const b = group.commit([op('b1'), op('b2')]).then(() => { done.push('b') })
    const c = group.commit([op('c')]).then(() => { done.push('c') })
    await tick()
    expect(step.calls.map((ops) => ops.map((o) => (o as any).key))).toEqual([['a']]) // b and c wait for a's write
    step.finish(0)
    await a
    await tick()
    expect(done).toEqual(['a'])
    expect(step.calls[1]?.map((o) => (o as any).key)).toEqual(['b1', 'b2', 'c']) // one batch, in order
    step.finish(1)
    await Promise.all([b, c])
    expect(done).toEqual(['a', 'b', 'c'])
    expect(group.counters).toEqual({ batches: 2, callers: 3 })
  })

  it('a failed batch fails its callers only; the next batch goes on', async () => {
    const step = gatedStep<StoreOp[]>()
    const group = new CommitGroup(step.fn)
    const a = group.commit([op('a')])
    await tick()
    const b = group.commit([op('b')])
    step.finish(0, new Error('disk gone'))
    await expect(a).rejects.toThrow('disk gone')
    await tick()
    step.finish(1)
    await expect(b).resolves.toBeUndefined()
  })

  it('commits to a real store: every caller\'s ops are there once all resolved', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-group-'))
    const store = new Store(path.join(dir, 'db'))
    await store.open()
    try {
      const group = new CommitGroup(async (ops) => { await store.commit(ops) })
      const claims = Array.from({ length: 50 }, (_, i) => ({ id: `c${i}`, name: `f${i}`, inboxPath: `/in/f${i}`, spoolPath: `/spool/c${i}`, readiness: 'rename' as const, claimedAt: new Date(0).toISOString() }))
      await Promise.all(claims.map(async (c) => { await group.commit([store.putClaim(c)]) }))
      const stored: string[] = []
      for await (const c of store.claims()) stored.push(c.id)
      expect(stored.sort()).toEqual(claims.map((c) => c.id).sort())
      expect(group.counters.batches).toBeLessThan(50)
    } finally {
      await store.close()
      await fs.rm(dir, { recursive: true, force: true })
    }
  })
})

describe('DirSync', () => {
  it('a request made while an fsync runs is served by a new fsync started after it, shared with others', async () => {
    const step = gatedStep<string>()
    const dirSync = new DirSync(step.fn)
    const order: string[] = []
    const first = dirSync.sync('/d').then(() => { order.push('first') })
    await tick()
    // These arrive while the first fsync runs: it may have started before their renames, so it cannot count.
    const second = dirSync.sync('/d').then(() => { order.push('second') })
    const third = dirSync.sync('/d').then(() => { order.push('third') })
    const other = dirSync.sync('/other').then(() => { order.push('other') })
    await tick()
    expect(step.calls).toEqual(['/d', '/other'])
    step.finish(0)
    await first
    await tick()
    expect(order).toEqual(['first'])
    expect(step.calls).toEqual(['/d', '/other', '/d']) // one more fsync of /d, for both waiters
    step.finish(2)
    await Promise.all([second, third])
    expect(order).toEqual(['first', 'second', 'third'])
    step.finish(1)
    await other
    expect(dirSync.counters).toEqual({ fsyncs: 3, requests: 4 })
  })

  it('a request after the fsync ended starts a fresh one', async () => {
    const calls: string[] = []
    const dirSync = new DirSync(async (d) => { calls.push(d) })
    await dirSync.sync('/d')
    await dirSync.sync('/d')
    expect(calls).toEqual(['/d', '/d'])
  })

  it('fsyncs a real directory', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-dirsync-'))
    try {
      const dirSync = new DirSync()
      await Promise.all(Array.from({ length: 10 }, async () => { await dirSync.sync(dir) }))
      expect(dirSync.counters.fsyncs).toBeLessThanOrEqual(10)
    } finally {
      await fs.rm(dir, { recursive: true, force: true })
    }
  })
})
