/**
 * The per-peer limits of node/rate-limit.ts on an injected clock: token bucket refill and debt, penalties that
 * start at the first request over the rate and end on time, bounded memory under many peers, the counting
 * semaphore's caps and abort, and a throttled log that stays quiet under a flood.
 */
import { describe, expect, it } from 'vitest'
import { PeerRateLimiter, PeerSlots, ThrottledLog, TokenBucket } from '../node/rate-limit.ts'
import { createLogger, configureLogging } from '../node/log.ts'

function fakeClock (): { nowMs: () => number, advance: (ms: number) => void } {
  let now = 1_000
  return { nowMs: () => now, advance: (ms) => { now += ms } }
}

describe('TokenBucket', () => {
  it('starts full, refills at its rate, never above its burst', () => {
    const clock = fakeClock()
    const b = new TokenBucket({ ratePerSec: 10, burst: 5, clock })
    for (let i = 0; i < 5; i++) expect(b.tryTake()).toBe(true)
    expect(b.tryTake()).toBe(false)
    clock.advance(100) // one token
    expect(b.tryTake()).toBe(true)
    expect(b.tryTake()).toBe(false)
    clock.advance(60_000)
    expect(b.tokens).toBe(5)
    expect(b.full).toBe(true)
    expect(b.tryTake(6)).toBe(false)
    expect(b.tokens).toBe(5)
  })

  it('reserve goes into debt and says how long to wait', () => {
    const clock = fakeClock()
    const b = new TokenBucket({ ratePerSec: 100, burst: 2, clock })
    expect(b.reserve()).toBe(0)
    expect(b.reserve()).toBe(0)
    expect(b.reserve()).toBe(10)
    expect(b.reserve()).toBe(20)
    clock.advance(20)
    expect(b.tokens).toBeCloseTo(0)
    expect(b.tryTake()).toBe(false)
  })

  it('refuses nonsense settings', () => {
    expect(() => new TokenBucket({ ratePerSec: 0, burst: 1 })).toThrow(RangeError)
    expect(() => new TokenBucket({ ratePerSec: 1, burst: 0 })).toThrow(RangeError)
    expect(() => new TokenBucket({ ratePerSec: Number.NaN, burst: 1 })).toThrow(RangeError)
  })
})

describe('PeerRateLimiter', () => {
  it('penalises a peer at its first request over the rate, for penaltyMs, and only that peer', () => {
    const clock = fakeClock()
    const l = new PeerRateLimiter({ ratePerSec: 10, burst: 3, penaltyMs: 5_000, clock })
    expect([l.take('a'), l.take('a'), l.take('a')]).toEqual(['ok', 'ok', 'ok'])
    expect(l.take('a')).toBe('limited')
    expect(l.isPenalised('a')).toBe(true)
    expect(l.take('b')).toBe('ok')
    clock.advance(1_000) // bucket refilled, still penalised
    expect(l.take('a')).toBe('penalised')
    clock.advance(4_000)
    expect(l.isPenalised('a')).toBe(false)
    expect(l.take('a')).toBe('ok')
    const s = l.stats()
    expect(s).toMatchObject({ limited: 1, refusedPenalised: 1, penalties: 1, penalisedNow: 0, peersTracked: 2 })
  })

  it('explicit penalties extend, and count once per penalty', () => {
    const clock = fakeClock()
    const l = new PeerRateLimiter({ ratePerSec: 10, burst: 3, penaltyMs: 1_000, clock })
    l.penalise('x')
    clock.advance(500)
    l.penalise('x')
    clock.advance(900)
    expect(l.isPenalised('x')).toBe(true)
    clock.advance(200)
    expect(l.isPenalised('x')).toBe(false)
    expect(l.stats().penalties).toBe(1)
  })

  it('tracks at most peersMax peers: idle ones are forgotten first, penalised ones kept while others can go', () => {
    const clock = fakeClock()
    const l = new PeerRateLimiter({ ratePerSec: 1, burst: 2, penaltyMs: 60_000, peersMax: 100, clock })
    l.take('bad'); l.take('bad'); l.take('bad')
    expect(l.isPenalised('bad')).toBe(true)
    for (let i = 0; i < 100_000; i++) l.take(`peer-${i}`)
    expect(l.stats().peersTracked).toBeLessThanOrEqual(100)
    // with room to spare, idle peers go before a penalised one
    const l2 = new PeerRateLimiter({ ratePerSec: 1, burst: 2, penaltyMs: 60_000, peersMax: 3, clock })
    l2.take('bad'); l2.take('bad'); l2.take('bad')
    clock.advance(10_000) // others idle with full buckets
    l2.take('p1'); clock.advance(10_000); l2.take('p2'); clock.advance(10_000)
    l2.take('p3') // evicts the idle p1 and p2 (full again), keeps 'bad'
    expect(l2.isPenalised('bad')).toBe(true)
    expect(l2.stats().peersTracked).toBe(2)
  })

  it('reserve paces a sender without ever penalising it', () => {
    const clock = fakeClock()
    const l = new PeerRateLimiter({ ratePerSec: 1000, burst: 1, penaltyMs: 1_000, clock })
    const waits = Array.from({ length: 5 }, () => l.reserve('p'))
    expect(waits).toEqual([0, 1, 2, 3, 4])
    expect(l.isPenalised('p')).toBe(false)
  })
})

describe('PeerSlots', () => {
  it('caps each peer and the total, hands freed slots to waiters in order', async () => {
    const s = new PeerSlots({ perPeerMax: 2, totalMax: 3 })
    expect(s.tryAcquire('a')).toBe(true)
    expect(s.tryAcquire('a')).toBe(true)
    expect(s.tryAcquire('a')).toBe(false)
    expect(s.tryAcquire('b')).toBe(true)
    expect(s.tryAcquire('c')).toBe(false) // total
    const order: string[] = []
    const wa = s.acquire('a').then(() => { order.push('a') })
    const wc = s.acquire('c').then(() => { order.push('c') })
    expect(s.waiting).toBe(2)
    s.release('b') // total frees one: 'a' is still at its cap, so 'c' gets it
    await wc
    expect(order).toEqual(['c'])
    s.release('a')
    await wa
    expect(order).toEqual(['c', 'a'])
    expect(s.active('a')).toBe(2)
    expect(s.active()).toBe(3)
    expect(() => { s.release('zzz') }).toThrow()
  })

  it('an aborted wait holds no slot', async () => {
    const s = new PeerSlots({ perPeerMax: 1 })
    s.tryAcquire('a')
    const ac = new AbortController()
    const waiting = s.acquire('a', ac.signal)
    ac.abort(new Error('gone'))
    await expect(waiting).rejects.toThrow('gone')
    expect(s.waiting).toBe(0)
    s.release('a')
    expect(s.active()).toBe(0)
    expect(s.tryAcquire('a')).toBe(true)
  })
})

describe('ThrottledLog', () => {
  it('writes at most linesPerMinute lines per peer and then says how many it suppressed', () => {
    const lines: string[] = []
    configureLogging({ sink: { write: (l) => { lines.push(l) } }, format: 'json', level: 'info' })
    const clock = fakeClock()
    const log = new ThrottledLog(createLogger('t'), { linesPerMinute: 3, clock })
    let written = 0
    for (let i = 0; i < 10_000; i++) if (log.warn('flooder', 'bad message')) written++
    expect(log.warn('someone-else', 'bad message')).toBe(true)
    expect(written).toBe(3)
    clock.advance(20_000) // one line's worth
    expect(log.warn('flooder', 'bad message')).toBe(true)
    const last = JSON.parse(lines.filter((l) => l.includes('"flooder"')).at(-1) as string)
    expect(last.suppressed).toBe(9_997)
    expect(last.peer).toBe('flooder')
  })
})
