import { describe, expect, it } from 'vitest'
import { drainReport } from '../node/drain.ts'
import { assigned, handoffAssigned, handoffChosen, handoffDone, placed, processingDone, processingStarted, received, released, receiptFrom, stored, receiptAcked, outcomeAcked, progressFrom } from '../node/core/lifecycle.ts'

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

describe('drain report: archive hand-off and kept working copies', () => {
  const copy = (cid: string): ReturnType<typeof receiptAcked> => receiptAcked(stored(assigned({ cid, name: 'n', size: 1, role: 'backup', epoch: 1, coordinator: 'i', sources: ['i'], now }), `/a/${cid}`, now))
  const base = { roles: ['backup'] as Array<'backup'>, draining: true, ingest: [], inboxFiles: 0 }

  it('a draining backup is safe once every copy it holds was handed off and acknowledged', () => {
    const a = handoffDone(handoffChosen(copy('a'), 'B'), now)
    const b = handoffChosen(copy('b'), 'B')
    const waiting = drainReport({ ...base, holder: [a, b], handoffTargets: 1 })
    expect(waiting.safe).toBe(false)
    expect(waiting.blockers).toEqual(["1 archive copy(ies) still being handed off to another backup node (until acknowledged they exist only in this node's archive)"])
    expect(drainReport({ ...base, holder: [a, handoffDone(b, now)], handoffTargets: 1 })).toEqual({ draining: true, safe: true, blockers: [] })
  })

  it('says so when no other backup node can take the copies', () => {
    const r = drainReport({ ...base, holder: [copy('a'), copy('b')], handoffTargets: 0 })
    expect(r.blockers.join()).toMatch(/2 archived file\(s\) exist only in this node's archive and no other live backup node can take them/)
  })

  it('a copy handed to us owes no receipt: counted as an archive copy (to hand off in turn), not as busy', () => {
    const fetching = handoffAssigned({ cid: 'h', name: 'n', size: 1, epoch: 1, from: 'A', sources: ['A'], now })
    expect(drainReport({ ...base, holder: [fetching], handoffTargets: 1 }).blockers.join()).toMatch(/1 backup file\(s\) still being fetched/)
    const held = stored(fetching, '/a/h', now)
    expect(held.receiptAcked).toBe(false)
    expect(drainReport({ ...base, holder: [held], handoffTargets: 1 }).blockers.join()).toMatch(/1 archive copy\(ies\) still being handed off/)
    expect(drainReport({ ...base, holder: [handoffDone(handoffChosen(held, 'C'), now)], handoffTargets: 1 }).safe).toBe(true)
  })

  it('a processor keeping a working copy until the archive holds the file is not safe to remove', () => {
    const r = drainReport({ roles: ['process'], draining: true, ingest: [], holder: [], inboxFiles: 0, keptWorkingCopies: 2 })
    expect(r.safe).toBe(false)
    expect(r.blockers.join()).toMatch(/2 processed file\(s\) keep their working copy here until the archive holds them/)
  })
})
