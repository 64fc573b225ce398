import { describe, expect, it } from 'vitest'
import { drainReport } from '../node/drain.ts'
import { assigned, placed, processingDone, processingStarted, received, released, receiptFrom, stored, receiptAcked, outcomeAcked, progressFrom } from '../node/core/lifecycle.ts'

const now = '2026-11-22T00:00:00.000Z'

describe('drain report', () => {
  it('is safe for an idle draining processor, and names what blocks otherwise', () => {
    const base = { roles: ['process'] as const, ingest: [], inboxFiles: 0 }
    expect(drainReport({ ...base, roles: ['process'], draining: true, holder: [] })).toEqual({ draining: true, safe: true, blockers: [] })
    expect(drainReport({ ...base, roles: ['process'], draining: false, holder: [] }).safe).toBe(false)
    const fetching = assigned({ cid: 'c', name: 'n', size: 1, role: 'owner', epoch: 1, coordinator: 'i', sources: [], now })
    const r = drainReport({ ...base, roles: ['process'], draining: true, holder: [fetching] })
    expect(r.safe).toBe(false)
    expect(r.blockers.join()).toMatch(/1 owned file/)
    const done = outcomeAcked(processingDone(processingStarted(receiptAcked(stored(fetching, '/w', now))), now))
    expect(drainReport({ ...base, roles: ['process'], draining: true, holder: [done] }).safe).toBe(true)
  })

  it('never calls a backup that holds the only archive copies safe', () => {
    const rec = receiptAcked(stored(assigned({ cid: 'c', name: 'n', size: 1, role: 'backup', epoch: 1, coordinator: 'i', sources: [], now }), '/a/n', now))
    const r = drainReport({ roles: ['backup'], draining: true, ingest: [], holder: [rec], inboxFiles: 0 })
    expect(r.safe).toBe(false)
    expect(r.blockers.join()).toMatch(/only in this node's archive/)
  })

  it("waits for an ingest node's files to be released and processed, and its inbox to be empty", () => {
    const p = placed(received({ cid: 'c', name: 'n', size: 1, spoolPath: '/s', readiness: 'rename', now }), 'o', 'b', now)
    const both = receiptFrom(receiptFrom(p, 'o', 'owner', now).rec, 'b', 'backup', now).rec
    const rel = released(both, now)
    expect(drainReport({ roles: ['ingest'], draining: true, ingest: [p], holder: [], inboxFiles: 2 }).blockers).toHaveLength(2)
    expect(drainReport({ roles: ['ingest'], draining: true, ingest: [rel], holder: [], inboxFiles: 0 }).blockers.join()).toMatch(/not processed yet/)
    const done = progressFrom(rel, 'o', 1, 'processed', 1, now).rec
    expect(drainReport({ roles: ['ingest'], draining: true, ingest: [done], holder: [], inboxFiles: 0 }).safe).toBe(true)
  })
})
