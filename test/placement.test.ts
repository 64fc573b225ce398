import { describe, expect, it } from 'vitest'
import { place, rank, score } from '../node/core/placement.ts'
import type { Candidate } from '../node/core/placement.ts'

const members = (n: number, prefix = 'peer'): Candidate[] => Array.from({ length: n }, (_, i) => ({ id: `${prefix}-${i}`, weight: 1 }))
const keys = (n: number): string[] => Array.from({ length: n }, (_, i) => `bafy-key-${i}`)

describe('rendezvous placement', () => {
  it('is stable: the same inputs give the same ranking, whatever the input order', () => {
    const m = members(10)
    for (const key of keys(100)) {
      expect(rank(m, key).map((c) => c.id)).toEqual(rank([...m].reverse(), key).map((c) => c.id))
    }
  })

  it('spreads 10k keys over 10 members within ±10% of fair', () => {
    const m = members(10)
    const counts = new Map<string, number>()
    for (const key of keys(10_000)) {
      const owner = rank(m, key)[0]?.id as string
      counts.set(owner, (counts.get(owner) ?? 0) + 1)
    }
    expect(counts.size).toBe(10)
    for (const n of counts.values()) expect(Math.abs(n - 1000)).toBeLessThanOrEqual(100)
  })

  it('moves about 1/N of the keys when a member joins, and only to the newcomer', () => {
    const before = members(10)
    const after = [...before, { id: 'peer-new', weight: 1 }]
    let moved = 0
    for (const key of keys(10_000)) {
      const a = rank(before, key)[0]?.id
      const b = rank(after, key)[0]?.id
      if (a !== b) {
        moved++
        expect(b).toBe('peer-new')
      }
    }
    expect(moved / 10_000).toBeGreaterThan(0.09 * 0.8)
    expect(moved / 10_000).toBeLessThan(0.09 * 1.2)
  })

  it('moves only the keys of a member that leaves', () => {
    const before = members(10)
    const after = before.filter((c) => c.id !== 'peer-3')
    let moved = 0
    for (const key of keys(10_000)) {
      const a = rank(before, key)[0]?.id
      const b = rank(after, key)[0]?.id
      if (a !== b) {
        moved++
        expect(a).toBe('peer-3')
      }
    }
    expect(moved / 10_000).toBeGreaterThan(0.08)
    expect(moved / 10_000).toBeLessThan(0.12)
  })

  it('gives a weight-2 member about twice the keys of a weight-1 member', () => {
    const m: Candidate[] = [{ id: 'a', weight: 1 }, { id: 'b', weight: 2 }, { id: 'c', weight: 1 }]
    const counts: Record<string, number> = { a: 0, b: 0, c: 0 }
    for (const key of keys(20_000)) counts[rank(m, key)[0]?.id as string]!++
    expect(counts.b! / 20_000).toBeGreaterThan(0.45)
    expect(counts.b! / 20_000).toBeLessThan(0.55)
  })

  it('puts the backup on another machine than the owner when it can', () => {
    const both = members(3, 'node')
    for (const key of keys(500)) {
      const p = place(key, both, both)
      expect(p.owner).toBeDefined()
      expect(p.backup).toBeDefined()
      expect(p.backup).not.toBe(p.owner)
    }
    const single = members(1, 'node')
    expect(place('k', single, single)).toEqual({ owner: 'node-0', backup: 'node-0' })
    expect(place('k', [], single)).toEqual({ owner: undefined, backup: 'node-0' })
  })

  it('rejects a non-positive weight', () => {
    expect(() => score('a', 'k', 0)).toThrow(RangeError)
    expect(() => score('a', 'k', Number.NaN)).toThrow(RangeError)
  })
})
