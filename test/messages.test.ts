import { describe, expect, it } from 'vitest'
import { MessageError, decodeControlReply, decodeControlRequest, decodeGossip, encodeMessage } from '../protocols/messages.ts'
import type { ControlRequest, GossipMessage } from '../protocols/messages.ts'
import { CONTROL_MESSAGE_BYTES_MAX, GOSSIP_MESSAGE_BYTES_MAX } from '../protocols/limits.ts'
import { MembershipView } from '../node/core/membership.ts'

const enc = (o: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(o))

describe('wire messages', () => {
  it('round-trips every message type', () => {
    const gossip: GossipMessage[] = [
      { type: 'heartbeat', v: 1, roles: ['ingest', 'backup'], weight: 1, draining: false, addrs: ['/ip4/127.0.0.1/tcp/1'], seq: 5 },
      { type: 'announce', v: 1, cid: 'bafyx', name: 'a b.bin', size: 3, owner: 'o', backup: 'b', epoch: 1 }
    ]
    for (const m of gossip) expect(decodeGossip(encodeMessage(m, GOSSIP_MESSAGE_BYTES_MAX))).toEqual(m)
    const control: ControlRequest[] = [
      { type: 'assign', v: 1, cid: 'bafyx', name: 'n', size: 0, role: 'owner', epoch: 1, sources: ['p'] },
      { type: 'receipt', v: 1, cid: 'bafyx', role: 'backup', epoch: 2 },
      { type: 'progress', v: 1, cid: 'bafyx', epoch: 1, state: 'failed', attempt: 3, error: 'exit 1' },
      { type: 'assign', v: 1, cid: 'bafyx', name: 'n', size: 1, role: 'owner', epoch: 2, sources: ['b'], backup: 'b' },
      { type: 'coordinate', v: 1, cid: 'bafyx', epoch: 2, owner: 'o2', pastOwners: ['o1'], excluded: ['o1', 'x'] },
      { type: 'coordinate', v: 1, cid: 'bafyx', epoch: 1, owner: 'o1', pastOwners: [], excluded: [] }
    ]
    for (const m of control) expect(decodeControlRequest(encodeMessage(m, CONTROL_MESSAGE_BYTES_MAX))).toEqual(m)
    expect(decodeControlReply(enc({ type: 'reply', v: 1, ok: false, code: 'x' }))).toEqual({ type: 'reply', v: 1, ok: false, code: 'x' })
  })

  it('rejects malformed and hostile input with MessageError only', () => {
    const bad: unknown[] = [
      null, [], 'str', 42, { v: 2, type: 'receipt' }, { v: 1, type: 'nope', cid: 'x', epoch: 1 },
      { v: 1, type: 'receipt', cid: 'x', epoch: 0, role: 'owner' }, { v: 1, type: 'receipt', cid: 'x', epoch: 1, role: 'admin' },
      { v: 1, type: 'assign', cid: 'x', epoch: 1, name: 'n', size: -1, role: 'owner', sources: [] },
      { v: 1, type: 'assign', cid: 'x', epoch: 1, name: 'n', size: 2 ** 60, role: 'owner', sources: [] },
      { v: 1, type: 'assign', cid: 'x', epoch: 1, name: 'n', size: 1, role: 'owner', sources: [1] },
      { v: 1, type: 'assign', cid: 'x'.repeat(500), epoch: 1, name: 'n', size: 1, role: 'owner', sources: [] },
      { v: 1, type: 'progress', cid: 'x', epoch: 1, state: 'done', attempt: 1 },
      { v: 1, type: 'assign', cid: 'x', epoch: 2, name: 'n', size: 1, role: 'owner', sources: [], backup: '' },
      { v: 1, type: 'assign', cid: 'x', epoch: 2, name: 'n', size: 1, role: 'owner', sources: [], backup: 'b'.repeat(129) },
      { v: 1, type: 'coordinate', cid: 'x', epoch: 1, pastOwners: [], excluded: [] },
      { v: 1, type: 'coordinate', cid: 'x', epoch: 1, owner: 'o', excluded: [] },
      { v: 1, type: 'coordinate', cid: 'x', epoch: 1, owner: 'o', pastOwners: [''], excluded: [] },
      { v: 1, type: 'coordinate', cid: 'x', epoch: 1, owner: 'o', pastOwners: [], excluded: Array(65).fill('p') },
      { v: 1, type: 'coordinate', cid: 'x', epoch: 1, owner: 'o', pastOwners: ['p'.repeat(129)], excluded: [] },
      { v: 1, type: 'coordinate', cid: 'x', epoch: 0, owner: 'o', pastOwners: [], excluded: [] }
    ]
    for (const b of bad) expect(() => decodeControlRequest(enc(b))).toThrow(MessageError)
    expect(() => decodeControlRequest(new Uint8Array([0xff, 0xfe]))).toThrow(MessageError)
    expect(() => decodeControlRequest(new Uint8Array(CONTROL_MESSAGE_BYTES_MAX + 1))).toThrow(MessageError)
    expect(() => decodeGossip(enc({ v: 1, type: 'heartbeat', roles: ['root'], weight: 1, draining: false, addrs: [], seq: 1 }))).toThrow(MessageError)
    expect(() => decodeGossip(enc({ v: 1, type: 'heartbeat', roles: ['ingest'], weight: 0, draining: false, addrs: [], seq: 1 }))).toThrow(MessageError)
    expect(() => decodeGossip(enc({ v: 1, type: 'heartbeat', roles: ['ingest'], weight: 1, draining: false, addrs: Array(100).fill('/x'), seq: 1 }))).toThrow(MessageError)
  })
})

describe('membership view', () => {
  const hb = (seq: number, roles: Array<'ingest' | 'process' | 'backup'> = ['process'], draining = false) => ({ type: 'heartbeat' as const, v: 1 as const, roles, weight: 1, draining, addrs: [], seq })

  it('tracks liveness with a TTL on an injected clock and ignores replays', () => {
    let now = 0
    const view = new MembershipView({ selfId: 'me', clock: { nowMs: () => now }, ttlMs: 5000 })
    expect(view.observe('a', hb(10))).toBe('joined')
    expect(view.observe('a', hb(10))).toBe('replay')
    expect(view.observe('a', hb(9))).toBe('replay')
    expect(view.observe('a', hb(11))).toBe('unchanged')
    expect(view.candidates('process').map((c) => c.id)).toEqual(['a'])
    now = 5001
    expect(view.isLive('a')).toBe(false)
    expect(view.candidates('process')).toEqual([])
    expect(view.observe('a', hb(12))).toBe('joined')
    expect(view.observe('a', hb(13, ['process'], true))).toBe('updated')
    expect(view.candidates('process')).toEqual([])
  })
})
