import { describe, expect, it } from 'vitest'
import {
  WrongStateError, assigned, canRelease, ownerReassigned, outcomeAcked, placed, processingDone, processingFailed, processingRetry,
  processingStarted, progressFrom, receiptAcked, receiptFrom, received, released, stored
} from '../node/core/lifecycle.ts'

const now = '2026-11-22T00:00:00.000Z'
const fresh = () => received({ cid: 'bafyroot', name: 'a.bin', size: 10, spoolPath: '/spool/x', readiness: 'rename', now })

describe('coordinator record', () => {
  it('goes received -> placed -> released only with both receipts', () => {
    const p = placed(fresh(), 'owner1', 'backup1', now)
    expect(p.phase).toBe('placed')
    expect(p.epoch).toBe(1)
    expect(canRelease(p)).toBe(false)
    expect(() => released(p, now)).toThrow(/receipts missing/)
    const r1 = receiptFrom(p, 'owner1', 'owner', now)
    expect(r1.verdict).toBe('recorded')
    expect(canRelease(r1.rec)).toBe(false)
    const r2 = receiptFrom(r1.rec, 'backup1', 'backup', now)
    expect(canRelease(r2.rec)).toBe(true)
    expect(released(r2.rec, now).phase).toBe('released')
  })

  it('throws WrongStateError with expected and actual on a wrong transition', () => {
    const p = placed(fresh(), 'o', 'b', now)
    try {
      placed(p, 'o', 'b', now)
      expect.unreachable()
    } catch (err) {
      expect(err).toBeInstanceOf(WrongStateError)
      expect((err as WrongStateError).expected).toEqual(['received'])
      expect((err as WrongStateError).actual).toBe('placed')
    }
    expect(() => receiptFrom(fresh(), 'o', 'owner', now)).toThrow(WrongStateError)
  })

  it('ignores receipts from peers that are not the holder, and repeats', () => {
    const p = placed(fresh(), 'o', 'b', now)
    expect(receiptFrom(p, 'mallory', 'owner', now).verdict).toBe('not-holder')
    expect(receiptFrom(p, 'o', 'backup', now).verdict).toBe('not-holder')
    const r = receiptFrom(p, 'o', 'owner', now).rec
    expect(receiptFrom(r, 'o', 'owner', now).verdict).toBe('duplicate')
  })

  it('records processing only from the current owner and epoch; a stale completion is counted', () => {
    const p = placed(fresh(), 'o', 'b', now)
    expect(progressFrom(p, 'x', 1, 'processed', 1, now).verdict).toBe('not-owner')
    expect(progressFrom(p, 'o', 7, 'processed', 1, now).verdict).toBe('not-owner')
    const moved = ownerReassigned(p, 'o2', now)
    expect(moved.epoch).toBe(2)
    expect(progressFrom(moved, 'mallory', 1, 'processed', 1, now).verdict).toBe('not-owner')
    const stale = progressFrom(moved, 'o', 1, 'processed', 1, now)
    expect(stale.verdict).toBe('stale-epoch')
    expect(stale.rec.staleCompletions).toBe(1)
    expect(stale.rec.processing).toBe('pending')
    const done = progressFrom(p, 'o', 1, 'processed', 1, now)
    expect(done.rec.processing).toBe('processed')
    expect(progressFrom(done.rec, 'o', 1, 'failed', 2, now).verdict).toBe('ignored')
    expect(progressFrom(done.rec, 'o', 1, 'processed', 1, now).verdict).toBe('duplicate')
  })
})

describe('holder record', () => {
  const a = () => assigned({ cid: 'bafyroot', name: 'a', size: 1, role: 'owner', epoch: 1, coordinator: 'c', sources: ['c'], now })

  it('goes fetching -> stored -> processing -> processed', () => {
    const s = stored(a(), '/work/x', now)
    expect(s.state).toBe('stored')
    const acked = receiptAcked(s)
    const p = processingStarted(acked)
    expect(p.attempt).toBe(1)
    const retry = processingRetry(p, 'exit 1')
    expect(retry.state).toBe('stored')
    const p2 = processingStarted(retry)
    expect(p2.attempt).toBe(2)
    const d = processingDone(p2, now)
    expect(d.state).toBe('processed')
    expect(d.lastError).toBeUndefined()
    expect(outcomeAcked(d).outcomeAcked).toBe(true)
  })

  it('restarts an interrupted run as a new attempt', () => {
    const p = processingStarted(stored(a(), '/w', now))
    expect(processingStarted(p).attempt).toBe(2)
  })

  it('refuses wrong transitions', () => {
    expect(() => receiptAcked(a())).toThrow(WrongStateError)
    expect(() => processingStarted(a())).toThrow(WrongStateError)
    expect(() => processingDone(stored(a(), '/w', now), now)).toThrow(WrongStateError)
    const backup = stored(assigned({ cid: 'r', name: 'a', size: 1, role: 'backup', epoch: 1, coordinator: 'c', sources: [], now }), '/a', now)
    expect(() => processingStarted(backup)).toThrow(WrongStateError)
    expect(() => processingFailed(stored(a(), '/w', now), 'x')).toThrow(WrongStateError)
  })
})
