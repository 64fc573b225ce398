/**
 * The channel pieces that need no daemon: the ordering rules of node/channel-record.ts, and the swarm
 * fetcher (node/channel-fetch.ts) driven in one process: several followers fetch one version at once from a
 * simulated publisher and from each other (have-maps passed straight to the others after a delay), into
 * real files. Checks that every copy ends byte-identical, that the publisher serves each block about once,
 * and that a follower dying midway stalls nobody.
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import { rawLeafCid } from '../protocols/cid-policy.ts'
import type { ChannelAnnounceMessage } from '../protocols/messages.ts'
import type { Leaf } from '../protocols/unixfs.ts'
import { ChannelFetch } from '../node/channel-fetch.ts'
import type { ChannelFetchClient } from '../node/channel-fetch.ts'
import { emptyChannel, judgeAnnouncement, nextPublishVersion, pruned, withInstalled } from '../node/channel-record.ts'
import type { ChannelVersion } from '../node/channel-record.ts'
import { KeyedThrottle } from '../node/keyed-throttle.ts'
import { createLogger } from '../node/log.ts'
import { pseudoRandomBytes, prng } from '../sim/workload.ts'

const log = createLogger('test')

describe('channel record ordering', () => {
  const ann = (version: number, cid: string): ChannelAnnounceMessage => ({ type: 'channel-announce', v: 1, channel: 'c', version, cid, size: 1, name: 'f', publisher: 'p', sig: '' })
  const ver = (version: number, cid: string): ChannelVersion => ({ version, cid, size: 1, name: 'f', file: `c.v${version}`, installedAt: '' })

  it('takes only versions above everything known; the first CID of a version stays', () => {
    let rec = emptyChannel('c')
    expect(judgeAnnouncement(rec, ann(1, 'a'))).toBe('newer')
    rec = { ...rec, newest: ann(5, 'e') }
    expect(judgeAnnouncement(rec, ann(5, 'e'))).toBe('repeat')
    expect(judgeAnnouncement(rec, ann(5, 'X'))).toBe('conflict')
    expect(judgeAnnouncement(rec, ann(4, 'd'))).toBe('stale')
    expect(judgeAnnouncement(rec, ann(6, 'f'))).toBe('newer')
    rec = withInstalled(rec, ver(3, 'c'))
    expect(judgeAnnouncement(rec, ann(3, 'c'))).toBe('repeat')
    expect(judgeAnnouncement(rec, ann(3, 'Y'))).toBe('conflict')
    // a version this node published itself also counts
    expect(nextPublishVersion({ ...emptyChannel('c'), published: 9 })).toBe(10)
    expect(nextPublishVersion(rec)).toBe(6)
  })

  it('keeps the newest K versions, sorted', () => {
    let rec = emptyChannel('c')
    for (const v of [2, 1, 4, 3]) rec = withInstalled(rec, ver(v, String(v)))
    expect(rec.versions.map((v) => v.version)).toEqual([1, 2, 3, 4])
    const { rec: kept, dropped } = pruned(rec, 3)
    expect(kept.versions.map((v) => v.version)).toEqual([2, 3, 4])
    expect(dropped.map((v) => v.version)).toEqual([1])
    expect(() => pruned(rec, 0)).toThrow(RangeError)
  })
})

describe('keyed throttle', () => {
  it('runs at most once per interval per key and never drops the last request', async () => {
    let now = 0
    const t = new KeyedThrottle({ intervalMs: 100, nowMs: () => now })
    const runs: string[] = []
    t.schedule('k', () => runs.push('a'))
    t.schedule('k', () => runs.push('b'))
    t.schedule('k', () => runs.push('c'))
    expect(runs).toEqual(['a'])
    now = 100
    await new Promise((resolve) => setTimeout(resolve, 150))
    expect(runs).toEqual(['a', 'c'])
    t.suppress('k')
    t.schedule('k', () => runs.push('d'))
    t.suppress('k') // someone else did it: the pending run is dropped
    await new Promise((resolve) => setTimeout(resolve, 150))
    expect(runs).toEqual(['a', 'c'])
    t.stop()
  })
})

interface SimNode { id: PeerId, name: string, fetch?: ChannelFetch, fh?: fs.FileHandle, file: string, dead: boolean, abort: AbortController }

describe('swarm fetch of one version by several followers', () => {
  let dir: string
  beforeEach(async () => { dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-chfetch-')) })
  afterEach(async () => { await fs.rm(dir, { recursive: true, force: true }) })

  async function simulate (opts: { followers: number, blocks: number, killAfterBlocks?: number }): Promise<{ fromPublisher: number, nodes: SimNode[], leaves: Leaf[], content: Uint8Array }> {
    const blockBytes = 4096
    const content = pseudoRandomBytes(opts.blocks * blockBytes - 100, 11)
    const leaves: Leaf[] = []
    const bytesByCid = new Map<string, Uint8Array>()
    for (let off = 0; off < content.length; off += blockBytes) {
      const bytes = content.subarray(off, Math.min(content.length, off + blockBytes))
      const cid = rawLeafCid(bytes)
      bytesByCid.set(cid.toString(), bytes)
      leaves.push({ cid, offset: off, length: bytes.length })
    }
    const publisher = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
    const nodes: SimNode[] = []
    for (let i = 0; i < opts.followers; i++) nodes.push({ id: peerIdFromPrivateKey(await generateKeyPair('Ed25519')), name: `f${i}`, file: path.join(dir, `f${i}`), dead: false, abort: new AbortController() })
    const byId = new Map(nodes.map((n) => [n.id.toString(), n]))
    let fromPublisher = 0
    const rand = prng(5)
    const haveOf = (n: SimNode): Uint8Array => Uint8Array.from(n.fetch?.bitmap ?? [])
    const broadcastHave = (from: SimNode): void => {
      const bitmap = haveOf(from)
      setTimeout(() => {
        for (const other of nodes) if (other !== from && !other.dead) other.fetch?.observe(from.id.toString(), { complete: false, bitmap })
      }, 3 + Math.floor(rand() * 5))
    }
    const client = (me: SimNode): ChannelFetchClient => ({
      open: async (peer: PeerId) => {
        const src = byId.get(peer.toString())
        if (src?.dead === true) throw Object.assign(new Error('gone'), { name: 'BlockPeerGoneError' })
        const pending: CID[] = []
        return {
          request: async (cid: CID) => { pending.push(cid) },
          next: async () => {
            const cid = pending.shift() as CID
            await new Promise((resolve) => setTimeout(resolve, 1))
            if (me.dead) throw Object.assign(new Error('stopped'), { name: 'AbortError' })
            const bytes = bytesByCid.get(cid.toString()) as Uint8Array
            if (src == null) {
              fromPublisher++
              return { cid, response: { status: 'ok' as const, bytes } }
            }
            if (src.dead) throw Object.assign(new Error('gone'), { name: 'BlockPeerGoneError' })
            const i = src.fetch?.items.findIndex((it) => it.cid.equals(cid)) ?? -1
            const has = i >= 0 && ((src.fetch?.bitmap[i >> 3] ?? 0) & (1 << (i & 7))) !== 0
            return { cid, response: has ? { status: 'ok' as const, bytes } : { status: 'not-found' as const } }
          },
          close: async () => {},
          abort: () => {}
        }
      }
    })
    for (const n of nodes) {
      n.fh = await fs.open(n.file, 'w+')
      let written = 0
      n.fetch = new ChannelFetch({
        leaves, fh: n.fh, client: client(n), selfId: n.id.toString(), publisher: publisher.toString(), signal: n.abort.signal, log,
        discoveryMs: 30, staleMs: 500, endgameWaitMs: 1000, retryMs: 50,
        onWritten: () => {
          broadcastHave(n)
          if (opts.killAfterBlocks != null && n.name === 'f0' && ++written === opts.killAfterBlocks) {
            n.dead = true
            n.abort.abort(new Error('killed'))
          }
        }
      })
    }
    for (const n of nodes) broadcastHave(n) // everyone says it starts
    const results = await Promise.allSettled(nodes.map(async (n) => { await n.fetch?.run() }))
    for (const [i, r] of results.entries()) {
      if (r.status === 'rejected' && !(nodes[i] as SimNode).dead) throw r.reason
    }
    for (const n of nodes) await n.fh?.close()
    return { fromPublisher, nodes, leaves, content }
  }

  it('every follower ends byte-identical; the publisher serves each block about once', async () => {
    const { fromPublisher, nodes, leaves, content } = await simulate({ followers: 5, blocks: 120 })
    for (const n of nodes) expect(Buffer.compare(await fs.readFile(n.file), content)).toBe(0)
    console.log(`publisher served ${fromPublisher} block requests for ${leaves.length} blocks to ${nodes.length} followers`)
    expect(fromPublisher).toBeGreaterThanOrEqual(leaves.length)
    expect(fromPublisher).toBeLessThanOrEqual(Math.ceil(leaves.length * 1.3))
  }, 30_000)

  it('a follower that dies midway stalls nobody', async () => {
    const { nodes, content } = await simulate({ followers: 4, blocks: 80, killAfterBlocks: 10 })
    for (const n of nodes.filter((x) => !x.dead)) expect(Buffer.compare(await fs.readFile(n.file), content)).toBe(0)
  }, 30_000)
})
