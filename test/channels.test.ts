/**
 * Broadcast channels with real daemons on loopback: 1 publisher + 3 followers (`filemesh run --follow deploy`),
 * versions published with `filemesh publish`, plus a bare libp2p node of the test's own that listens to the
 * channels topic and injects hostile announcements. Checks: every follower ends with the newest version
 * current and byte-identical; a replayed older announcement, one from an unlisted publisher and one with a
 * forged signature move nothing; a reader looping over NAME.current during updates only ever reads a whole
 * published version; a follower killed during a publication catches up after its restart; old versions are
 * pruned to --channel-keep.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { CHANNELS_TOPIC } from '../protocols/ids.ts'
import { GOSSIP_MESSAGE_BYTES_MAX } from '../protocols/limits.ts'
import { decodeChannelMessage, encodeMessage } from '../protocols/messages.ts'
import type { ChannelAnnounceMessage } from '../protocols/messages.ts'
import { signAnnouncement } from '../node/channel-announce.ts'
import { createMeshNode } from '../node/mesh.ts'
import type { MeshNode } from '../node/mesh.ts'
import type { ChannelStatus } from '../node/channel-status.ts'
import { CLI_PATH, LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { payload, sha256File, sha256Hex } from '../sim/workload.ts'

const run = promisify(execFile)
const MiB = 1048576
const FOLLOWERS = ['f1', 'f2', 'f3']
const CHANNEL = 'deploy'

describe('broadcast channels', () => {
  let root: string
  let mesh: LocalMesh
  let spy: MeshNode
  let spyKey: Awaited<ReturnType<typeof generateKeyPair>>
  const heard: ChannelAnnounceMessage[] = []
  /** sha256 of every version published so far, by version. */
  const published = new Map<number, string>()

  const currentPath = (node: string): string => path.join(mesh.dataDir(node), 'channels', CHANNEL, `${CHANNEL}.current`)
  const channel = async (node: string): Promise<ChannelStatus | undefined> => (await mesh.status(node)).channels?.channels.find((c) => c.channel === CHANNEL)
  const counters = async (node: string): Promise<Record<string, number>> => (await mesh.status(node)).channels?.counters ?? {}

  async function publish (version: number, size: number): Promise<string> {
    const file = path.join(root, `release-${version}.tar`)
    const bytes = payload(40, version, size)
    await fs.writeFile(file, bytes)
    const { stdout } = await run(process.execPath, [CLI_PATH, 'publish', '--data', mesh.dataDir('pub'), '--channel', CHANNEL, file])
    expect(stdout).toMatch(new RegExp(`^${CHANNEL}\\.v${version} baf`))
    published.set(version, sha256Hex(bytes))
    return stdout.trim().split(' ')[1] as string
  }

  async function waitCurrent (nodes: string[], version: number, timeoutMs = 30_000): Promise<void> {
    for (const node of nodes) {
      await waitFor(`${node} to show ${CHANNEL}.v${version}`, async () => (await channel(node))?.current?.version === version, timeoutMs, 100)
      expect(await fs.readlink(currentPath(node))).toBe(`${CHANNEL}.v${version}`)
      expect(await sha256File(currentPath(node))).toBe(published.get(version))
    }
  }

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-channels-'))
    mesh = new LocalMesh(root)
    const pub = await mesh.start('pub', { roles: ['ingest'], args: ['--publisher'] })
    const publishers = path.join(root, 'publishers.txt')
    await fs.writeFile(publishers, `# the release node\n${pub.info.peerId}\n`)
    await Promise.all(FOLLOWERS.map(async (name) => await mesh.start(name, {
      roles: ['process'], args: ['--follow', CHANNEL, '--channel-publishers', publishers, '--channel-sync-ms', '1000', '--channel-keep', '3']
    })))
    // The test's own node: hears every channel message, and injects hostile ones straight to each follower.
    spyKey = await generateKeyPair('Ed25519')
    spy = await createMeshNode({ privateKey: spyKey, bootstrap: [pub.info.addrs[0] as string] })
    spy.services.pubsub.subscribe(CHANNELS_TOPIC)
    spy.services.pubsub.addEventListener('message', (evt) => {
      if (evt.detail.topic !== CHANNELS_TOPIC) return
      const m = decodeChannelMessage(evt.detail.data)
      if (m.type === 'channel-announce') heard.push(m)
    })
    for (const name of FOLLOWERS) await spy.dial(multiaddr(mesh.get(name).info.addrs[0] as string))
    for (const name of ['pub', ...FOLLOWERS]) await waitFor(`${name} to see every member`, async () => (await mesh.status(name)).members.length === 4, 30_000)
  }, 90_000)

  afterAll(async () => {
    await spy?.stop()
    await mesh?.stopAll()
    if (root != null) await fs.rm(root, { recursive: true, force: true })
  })

  it('publishes v1 then v2 to every follower, byte-identical, and reports it in status', async () => {
    await publish(1, 3 * MiB + 17)
    await waitCurrent(FOLLOWERS, 1)
    const cid2 = await publish(2, 4 * MiB + 5)
    await waitCurrent(FOLLOWERS, 2)
    const { stdout } = await run(process.execPath, [CLI_PATH, 'status', '--data', mesh.dataDir('f1'), '--json'])
    const s = JSON.parse(stdout).channels.channels.find((c: ChannelStatus) => c.channel === CHANNEL) as ChannelStatus
    expect(s).toMatchObject({ following: true, current: { version: 2, cid: cid2, size: 4 * MiB + 5 }, versions: [1, 2], fetching: null })
    const p = await channel('pub')
    expect(p).toMatchObject({ published: 2, current: { version: 2, cid: cid2 } })
    // The version files are plain read-only files; no partial file is left behind.
    const names = (await fs.readdir(path.join(mesh.dataDir('f2'), 'channels', CHANNEL))).sort()
    expect(names).toEqual([`${CHANNEL}.current`, `${CHANNEL}.v1`, `${CHANNEL}.v2`])
    expect((await fs.stat(path.join(mesh.dataDir('f2'), 'channels', CHANNEL, `${CHANNEL}.v2`))).mode & 0o222).toBe(0)
  }, 60_000)

  it('ignores a replayed older announcement, an unlisted publisher and a forged signature', async () => {
    const v1 = heard.find((a) => a.version === 1)
    expect(v1, 'the test node heard the v1 announcement').toBeDefined()
    const before = await Promise.all(FOLLOWERS.map(counters))
    const send = async (msg: ChannelAnnounceMessage): Promise<void> => {
      await spy.services.pubsub.publish(CHANNELS_TOPIC, encodeMessage(msg, GOSSIP_MESSAGE_BYTES_MAX))
    }
    // 1. the publisher's own (validly signed) v1, replayed after v2: stale
    await send(v1 as ChannelAnnounceMessage)
    // 2. version 99 signed by a key that is not on --channel-publishers
    const outsider = await signAnnouncement(spyKey, { channel: CHANNEL, version: 99, cid: (v1 as ChannelAnnounceMessage).cid, size: (v1 as ChannelAnnounceMessage).size, name: 'evil', publisher: spy.peerId.toString() })
    await send(outsider)
    // 3. version 100 claiming to be from the real publisher, signed by someone else
    await send({ ...outsider, version: 100, publisher: (v1 as ChannelAnnounceMessage).publisher })
    for (const [i, name] of FOLLOWERS.entries()) {
      const b = before[i] as Record<string, number>
      await waitFor(`${name} to have judged the three announcements`, async () => {
        const c = await counters(name)
        // v1 is still kept here (--channel-keep 3), so its replay counts as a repeat; once pruned, as stale
        const old = (c.stale ?? 0) + (c.repeated ?? 0) > (b.stale ?? 0) + (b.repeated ?? 0)
        return old && (c.unauthorized ?? 0) > (b.unauthorized ?? 0) && (c.invalid ?? 0) > (b.invalid ?? 0) ? c : undefined
      }, 15_000, 100)
      const s = await channel(name)
      expect(s?.current?.version).toBe(2)
      expect(s?.newest?.version).toBe(2)
      expect(s?.fetching).toBeNull()
    }
    await waitCurrent(FOLLOWERS, 2)
  }, 30_000)

  it('a reader of NAME.current only ever sees a whole published version', async () => {
    let stop = false
    const seen = new Map<string, number>()
    const problems: string[] = []
    const reader = (async () => {
      const valid = (): Set<string> => new Set(published.values())
      while (!stop) {
        let fh
        try {
          fh = await fs.open(currentPath('f1'), 'r')
        } catch (err: any) {
          problems.push(`open failed: ${err.code}`)
          continue
        }
        try {
          const hash = sha256Hex(await fh.readFile())
          if (!valid().has(hash)) problems.push(`read bytes of no published version (${hash})`)
          seen.set(hash, (seen.get(hash) ?? 0) + 1)
        } finally {
          await fh.close()
        }
      }
    })()
    try {
      await publish(3, 6 * MiB + 1)
      await waitCurrent(['f1'], 3)
      await publish(4, 5 * MiB + 3)
      await waitCurrent(FOLLOWERS, 4)
    } finally {
      stop = true
      await reader
    }
    expect(problems).toEqual([])
    // the reader saw more than one version over the run (it raced the switches)
    expect(seen.size).toBeGreaterThanOrEqual(2)
    // --channel-keep 3: v1 is gone from every follower, with its block index
    for (const name of FOLLOWERS) {
      expect((await channel(name))?.versions).toEqual([2, 3, 4])
      await expect(fs.stat(path.join(mesh.dataDir(name), 'channels', CHANNEL, `${CHANNEL}.v1`))).rejects.toMatchObject({ code: 'ENOENT' })
    }
  }, 60_000)

  it('a follower killed during a publication catches up after its restart', async () => {
    const publishing = publish(5, 10 * MiB + 9)
    // Kill f3 once it has started on v5 (or at worst right after the publish): it must not end up with a torn version.
    await waitFor('f3 to start on v5', async () => {
      const s = await channel('f3')
      return s?.fetching?.version === 5 || s?.current?.version === 5
    }, 30_000, 20)
    await mesh.stop('f3', 'SIGKILL')
    await publishing
    await waitCurrent(['f1', 'f2'], 5)
    await mesh.restart('f3')
    await waitCurrent(['f3'], 5, 60_000)
    const names = (await fs.readdir(path.join(mesh.dataDir('f3'), 'channels', CHANNEL))).sort()
    expect(names).toEqual([`${CHANNEL}.current`, `${CHANNEL}.v3`, `${CHANNEL}.v4`, `${CHANNEL}.v5`])
  }, 90_000)

  it('an empty file and a one-byte file are versions too', async () => {
    await publish(6, 0)
    await waitCurrent(FOLLOWERS, 6)
    await publish(7, 1)
    await waitCurrent(FOLLOWERS, 7)
    expect((await channel('f1'))?.versions).toEqual([5, 6, 7])
  }, 60_000)
})
