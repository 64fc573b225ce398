/**
 * The coordinator hand-off's pure decisions (node/core/takeover.ts and the transitions it adds to
 * node/core/lifecycle.ts): what a backup records from `coordinate`, when it takes over, how it reassigns
 * the owner (epoch + 1, never a past or excluded processor), how a stale completion is fenced, and when the
 * ingest must (again) tell the backup or defer to it. No I/O, no sleeps; test/takeover.test.ts runs daemons.
 */
import { describe, expect, it } from 'vitest'
import type { CoordinateMessage } from '../protocols/messages.ts'
import { WrongStateError, assigned, coordinationTakenOver, coordinatorMoved, ownerReassigned, placed, processingReport, progressFrom, receiptFrom, received, released, standbyRecorded, stored } from '../node/core/lifecycle.ts'
import type { StandbyRecord } from '../node/core/lifecycle.ts'
import { UNKNOWN_PEER, coordinateMessage, shouldTakeOver, standbyDue, standbyOffered, standbyOwnerReassigned, standbyWatched, takeoverExcluded, takenOver } from '../node/core/takeover.ts'
import { inPlay, successor } from '../node/core/coordinator.ts'
import { drainReport } from '../node/drain.ts'
import { countStandby } from '../node/status.ts'

const now = '2026-12-07T10:00:00.000Z'
const offer = (epoch: number, owner: string, pastOwners: string[] = [], excluded: string[] = []): CoordinateMessage => ({ type: 'coordinate', v: 1, cid: 'c', epoch, owner, pastOwners, excluded })

function releasedRec () {
  const p = placed(received({ cid: 'c', name: 'n', size: 1, spoolPath: '/s', readiness: 'rename', now }), 'O1', 'B', now)
  return released(receiptFrom(receiptFrom(p, 'O1', 'owner', now).rec, 'B', 'backup', now).rec, now)
}

describe('the backup standing by (pure)', () => {
  it('records the first offer and newer epochs; a repeat changes nothing; an older epoch or another owner at the same epoch is refused', () => {
    const first = standbyOffered(undefined, 'I', offer(1, 'O1'))
    expect(first.verdict).toBe('recorded')
    const s = first.rec as StandbyRecord
    expect(s).toMatchObject({ ingest: 'I', epoch: 1, owner: 'O1', processing: 'pending' })
    expect(standbyOffered(s, 'I', offer(1, 'O1')).verdict).toBe('repeat')
    expect(standbyOffered(s, 'I', offer(1, 'O2')).verdict).toBe('stale-epoch')
    const newer = standbyOffered({ ...s, processing: 'processing', processingAttempt: 1 }, 'I', offer(2, 'O2', ['O1'], ['O1']))
    expect(newer.verdict).toBe('recorded')
    expect(newer.rec).toMatchObject({ epoch: 2, owner: 'O2', pastOwners: ['O1'], processing: 'pending' })
    expect(newer.rec?.processingAttempt).toBeUndefined()
    expect(standbyOffered(newer.rec, 'I', offer(1, 'O1')).verdict).toBe('stale-epoch')
  })

  it('takes over only when the ingest is gone past the grace and the file is not processed; then refuses every offer', () => {
    const s = standbyOffered(undefined, 'I', offer(1, 'O1')).rec as StandbyRecord
    expect(shouldTakeOver(s, false)).toBe(false)
    expect(shouldTakeOver(s, true)).toBe(true)
    const done = processingReport(s, 'O1', 1, 'processed', 1, now).rec
    expect(standbyWatched(done)).toBe(false)
    expect(shouldTakeOver(done, true)).toBe(false)
    expect(() => takenOver(done, now)).toThrow(WrongStateError)
    const t = takenOver(s, now)
    expect(t.takenOverAt).toBe(now)
    expect(shouldTakeOver(t, true)).toBe(false)
    expect(() => takenOver(t, now)).toThrow(WrongStateError)
    expect(standbyOffered(t, 'I', offer(2, 'O9')).verdict).toBe('taken-over')
    expect(standbyOffered(t, 'I', offer(1, 'O1')).verdict).toBe('taken-over')
  })

  it('reassigns the owner after a takeover only: epoch + 1, the next processor never a past or excluded one', () => {
    const s = standbyOffered(undefined, 'I', offer(1, 'O1', [], ['X'])).rec as StandbyRecord
    expect(() => standbyOwnerReassigned(s, 'O2')).toThrow(WrongStateError)
    const t = takenOver(s, now)
    const candidates = ['O1', 'O2', 'X'].map((id) => ({ id, weight: 1 }))
    expect(takeoverExcluded(t)).toEqual(new Set(['X', 'O1']))
    const to = successor('c', candidates, takeoverExcluded(t))
    expect(to).toBe('O2')
    const r = standbyOwnerReassigned(t, to as string)
    expect(r).toMatchObject({ epoch: 2, owner: 'O2', pastOwners: ['O1'], processing: 'pending', ownerReassignments: 1 })
    expect(takeoverExcluded(r)).toEqual(new Set(['X', 'O1', 'O2']))
    expect(successor('c', candidates, takeoverExcluded(r))).toBeUndefined()
    // An epoch whose owner the backup never learned keeps its index.
    const gap = standbyOwnerReassigned(takenOver({ ...s, epoch: 3, pastOwners: [] }, now), 'O2')
    expect(gap.pastOwners).toEqual([UNKNOWN_PEER, UNKNOWN_PEER, 'O1'])
    expect(gap.epoch).toBe(4)
  })

  it('fences a completion from the old epoch: counted as a duplicate, never the result', () => {
    const r = standbyOwnerReassigned(takenOver(standbyOffered(undefined, 'I', offer(1, 'O1')).rec as StandbyRecord, now), 'O2')
    const stale = processingReport(r, 'O1', 1, 'processed', 2, now)
    expect(stale.verdict).toBe('stale-epoch')
    expect(stale.rec.processing).toBe('pending')
    expect(stale.rec.staleCompletions).toBe(1)
    expect(processingReport(r, 'mallory', 1, 'processed', 1, now).verdict).toBe('not-owner')
    expect(processingReport(r, 'O1', 2, 'processed', 1, now).verdict).toBe('not-owner')
    const done = processingReport(r, 'O2', 2, 'processed', 1, now)
    expect(done.verdict).toBe('recorded')
    expect(done.rec.processing).toBe('processed')
    expect(processingReport(done.rec, 'O2', 2, 'processed', 1, now).verdict).toBe('duplicate')
  })
})

describe('the ingest before and after a takeover (pure)', () => {
  it('tells the backup after release until it recorded the current epoch, not for processed files or itself', () => {
    const rel = releasedRec()
    expect(standbyDue(rel, 'I')).toBe(true)
    expect(standbyDue(rel, 'B')).toBe(false) // the ingest is its own backup: nobody to stand by
    const recorded = standbyRecorded(rel, 'B', 1)
    expect(standbyDue(recorded, 'I')).toBe(false)
    const moved = ownerReassigned(recorded, 'O2', now)
    expect(standbyDue(moved, 'I')).toBe(true) // a new owner waits until the backup recorded epoch 2
    expect(coordinateMessage(moved, ['O1'])).toEqual({ type: 'coordinate', v: 1, cid: 'c', epoch: 2, owner: 'O2', pastOwners: ['O1'], excluded: ['O1'] })
    expect(standbyDue(progressFrom(rel, 'O1', 1, 'processed', 1, now).rec, 'I')).toBe(false)
    const p = placed(received({ cid: 'c', name: 'n', size: 1, spoolPath: '/s', readiness: 'rename', now }), 'O1', 'B', now)
    expect(standbyDue(p, 'I')).toBe(false) // not released: the ingest has the only say
  })

  it('defers for good once the backup took over', () => {
    const rel = releasedRec()
    const deferred = coordinationTakenOver(rel, 'B', now)
    expect(deferred.takenOverBy).toBe('B')
    expect(standbyDue(deferred, 'I')).toBe(false)
    expect(inPlay(rel)).toBe(true)
    expect(inPlay(deferred)).toBe(false) // never watched, never reassigned here again
    // A drained ingest is not held back by a file its backup coordinates now.
    expect(drainReport({ roles: ['ingest'], draining: true, ingest: [rel], holder: [], inboxFiles: 0 }).safe).toBe(false)
    expect(drainReport({ roles: ['ingest'], draining: true, ingest: [deferred], holder: [], inboxFiles: 0 }).safe).toBe(true)
    expect(coordinationTakenOver(deferred, 'B', now)).toBe(deferred)
    expect(() => coordinationTakenOver(placed(received({ cid: 'c', name: 'n', size: 1, spoolPath: '/s', readiness: 'rename', now }), 'O', 'B', now), 'B', now)).toThrow(WrongStateError)
  })
})

describe('the owner following its backup (pure)', () => {
  it('moves its coordinator to its recorded backup only, and reports again under the newer epoch', () => {
    const a = stored(assigned({ cid: 'c', name: 'n', size: 1, role: 'owner', epoch: 1, coordinator: 'I', sources: ['I'], now, backup: 'B' }), '/w/c', now)
    expect(a.backup).toBe('B')
    const m = coordinatorMoved({ ...a, receiptAcked: true }, 'B', 1)
    expect(m).toMatchObject({ coordinator: 'B', epoch: 1, receiptAcked: false })
    expect(coordinatorMoved(a, 'B', 3).epoch).toBe(3)
    expect(() => coordinatorMoved(a, 'mallory', 2)).toThrow(WrongStateError)
    const backupRec = assigned({ cid: 'c', name: 'n', size: 1, role: 'backup', epoch: 1, coordinator: 'I', sources: [], now, backup: 'B' })
    expect(backupRec.backup).toBeUndefined()
  })

  it('status counts standing by, taken over, processed after a takeover and late completions', () => {
    const backupRec = stored(assigned({ cid: 'c', name: 'n', size: 1, role: 'backup', epoch: 1, coordinator: 'I', sources: [], now }), '/a/n', now)
    const s = standbyOffered(undefined, 'I', offer(1, 'O1')).rec as StandbyRecord
    const r = standbyOwnerReassigned(takenOver(s, now), 'O2')
    const done = processingReport(processingReport(r, 'O1', 1, 'processed', 1, now).rec, 'O2', 2, 'processed', 1, now).rec
    const counts = { standingBy: 0, coordinating: 0, processedAfterTakeover: 0, staleCompletions: 0 }
    for (const standby of [s, r, done]) countStandby(counts, { ...backupRec, standby })
    countStandby(counts, backupRec)
    expect(counts).toEqual({ standingBy: 1, coordinating: 2, processedAfterTakeover: 1, staleCompletions: 1 })
  })
})
