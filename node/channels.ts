/**
 * Broadcast channels: replicate a versioned file (a deploy) to every node that follows the channel.
 *
 *  - Publish (`filemesh publish --channel NAME FILE`, only on a node run with `--publisher`): the file the
 *    CLI staged in CHANNELS/.incoming is hashed into the same blocks as every other file, becomes version
 *    N+1 (N = the highest version this node knows of the channel, so versions only move forward; the
 *    counter is in the channel's record, written {sync} with the version), is kept as this node's
 *    CHANNELS/NAME/NAME.vN (its leaves in the store's index, served like any block), and announced on
 *    CHANNELS_TOPIC, signed by the publisher's own key (node/channel-announce.ts).
 *  - Follow (`run --follow NAME` or `--follow-all`, with `--channel-publishers FILE`): an announcement from a
 *    listed publisher, checked against the channel's record (node/channel-record.ts: only a version above
 *    every known one is taken; the first CID seen for a version stays), is recorded {sync} and fetched from
 *    the swarm (node/channel-follower.ts, node/channel-fetch.ts), then NAME.current is switched atomically.
 *  - Catching up: instead of the publisher repeating itself, every follower says what it holds (a
 *    channel-have message: its newest version, or version 0) on start, whenever a member joins, and every
 *    `syncIntervalMs`; any node that knows a newer version answers by re-publishing that version's signed
 *    announcement (after a random delay, skipped if another node answered first). So a node that was down
 *    catches up from whoever is there, the publisher included or not, and followers that are up to date cost
 *    one small message per `syncIntervalMs`. A have for a version someone is fetching is answered by every
 *    node holding it complete ("take it from me"), at most once a second per version.
 */
import type { Message } from '@libp2p/gossipsub'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import type { PrivateKey } from '@libp2p/interface'
import { CHANNELS_TOPIC } from '../protocols/ids.ts'
import { CHANNELS_TRACKED_MAX, GOSSIP_MESSAGE_BYTES_MAX } from '../protocols/limits.ts'
import { MessageError, decodeChannelMessage, encodeMessage, isChannelName } from '../protocols/messages.ts'
import type { ChannelAnnounceMessage, ChannelHaveMessage, ChannelMessage } from '../protocols/messages.ts'
import { sanitizeName } from '../protocols/names.ts'
import { signAnnouncement, verifyAnnouncement } from './channel-announce.ts'
import { DEFAULT_CHANNEL_BATCH_BLOCKS } from './channel-fetch.ts'
import { ChannelFollower } from './channel-follower.ts'
import { channelSessions } from './channel-session.ts'
import type { ChannelFollowerComponents, ChannelFollowerInit } from './channel-follower.ts'
import { ChannelInstaller } from './channel-install.ts'
import { currentVersion, judgeAnnouncement } from './channel-record.ts'
import type { AnnouncementVerdict } from './channel-record.ts'
import { ChannelPathError, ChannelStore } from './channel-store.ts'
import { channelStatus } from './channel-status.ts'
import type { ChannelsStatus } from './channel-status.ts'
import { hashFile } from './hasher.ts'
import { KeyedThrottle } from './keyed-throttle.ts'
import type { Logger } from './log.ts'
import type { MeshNode } from './mesh.ts'
import { ThrottledLog } from './rate-limit.ts'
import type { Store } from './store.ts'

export const DEFAULT_CHANNEL_SYNC_INTERVAL_MS = 10_000
export const DEFAULT_CHANNEL_REANNOUNCE_MIN_MS = 1_000
export const DEFAULT_CHANNEL_REANNOUNCE_JITTER_MS = 300
export const DEFAULT_CHANNEL_COMPLETE_REPLY_MIN_MS = 1_000
/** After a member joins, how long to wait (more may join) before telling the mesh what this node holds. */
export const DEFAULT_CHANNEL_JOIN_SYNC_DELAY_MS = 300

/** A publish request this node refuses: `code` 'not-publisher' (403) or 'bad-request' (400). */
export class ChannelPublishError extends Error {
  override name = 'ChannelPublishError'
  readonly code: 'not-publisher' | 'bad-request'
  constructor (code: 'not-publisher' | 'bad-request', message: string) {
    super(message)
    this.code = code
  }
}

export interface ChannelServiceComponents {
  store: Store
  node: MeshNode
  client: ChannelFollowerComponents['client']
  local: ChannelFollowerComponents['local']
  privateKey: PrivateKey
  /** Told when a member joins (MembershipService.onChange). */
  members: { onChange: (fn: () => void) => void }
  log: Logger
}

export interface ChannelServiceInit extends ChannelFollowerInit {
  /** The channels root (default DATA/channels). */
  dir: string
  follow?: string[]
  followAll?: boolean
  /** This node may publish (`run --publisher`). */
  publisher?: boolean
  /** Peer IDs whose announcements are followed (`--channel-publishers FILE`); none = follow nothing. */
  publishers?: Set<string>
  /** Versions kept per channel (`--channel-keep`). */
  keep?: number
  syncIntervalMs?: number
  reannounceJitterMs?: number
}

export interface PublishResult {
  channel: string
  version: number
  cid: string
  size: number
  name: string
  /** Peers the announcement was sent to directly (others get it relayed, or catch up). */
  recipients: number
}

export class ChannelService {
  readonly disk: ChannelStore
  readonly #c: ChannelServiceComponents
  readonly #init: ChannelServiceInit
  readonly #installer: ChannelInstaller
  readonly #follower: ChannelFollower
  readonly #follow: Set<string>
  readonly #tracked = new Set<string>()
  readonly #reannounce: KeyedThrottle
  readonly #completeReplies: KeyedThrottle
  readonly #throttled: ThrottledLog
  /** Announcements by outcome; channel messages sent and received (gossip traffic this feature costs). */
  readonly counters = { accepted: 0, repeated: 0, stale: 0, conflicts: 0, unauthorized: 0, invalid: 0, messagesSent: 0, messagesReceived: 0 }
  #timer: NodeJS.Timeout | undefined
  #joinTimer: NodeJS.Timeout | undefined
  #started = false

  constructor (components: ChannelServiceComponents, init: ChannelServiceInit) {
    this.#c = components
    this.#init = init
    this.#follow = new Set(init.follow ?? [])
    for (const name of this.#follow) if (!isChannelName(name)) throw new RangeError(`--follow ${JSON.stringify(name)}: not a channel name (1-64 of A-Z a-z 0-9 . _ -, not starting with . _ -)`)
    this.disk = new ChannelStore(init.dir)
    this.#installer = new ChannelInstaller({ store: components.store, disk: this.disk, log: components.log }, { keep: init.keep })
    this.#follower = new ChannelFollower({
      installer: this.#installer, disk: this.disk, client: components.client, local: components.local,
      sessions: channelSessions(components.node, { window: DEFAULT_CHANNEL_BATCH_BLOCKS }),
      selfId: components.node.peerId.toString(), send: (msg) => { this.#send(msg) }, log: components.log
    }, init)
    this.#reannounce = new KeyedThrottle({ intervalMs: DEFAULT_CHANNEL_REANNOUNCE_MIN_MS, jitterMs: init.reannounceJitterMs ?? DEFAULT_CHANNEL_REANNOUNCE_JITTER_MS })
    this.#completeReplies = new KeyedThrottle({ intervalMs: DEFAULT_CHANNEL_COMPLETE_REPLY_MIN_MS })
    this.#throttled = new ThrottledLog(components.log)
  }

  get #selfId (): string {
    return this.#c.node.peerId.toString()
  }

  /** Reconciles every channel's disk with its record, subscribes, and resumes fetches of announced versions. */
  async start (): Promise<void> {
    await this.disk.init()
    await this.disk.sweepIncoming()
    for await (const rec of this.#c.store.channelRecords()) this.#tracked.add(rec.channel)
    for (const name of this.#follow) this.#tracked.add(name)
    const resume: ChannelAnnounceMessage[] = []
    for (const channel of this.#tracked) {
      const rec = await this.#installer.reconcile(channel)
      if (rec.newest != null && this.#following(channel) && rec.newest.version > (currentVersion(rec)?.version ?? 0)) resume.push(rec.newest)
    }
    const pubsub = this.#c.node.services.pubsub
    pubsub.topicValidators.set(CHANNELS_TOPIC, this.#validate)
    pubsub.addEventListener('message', this.#onMessage)
    pubsub.subscribe(CHANNELS_TOPIC)
    this.#c.members.onChange(() => { this.#syncSoon() })
    this.#timer = setInterval(() => { this.#sync().catch((err) => { this.#c.log.warn('channel sync failed', { err }) }) }, this.#init.syncIntervalMs ?? DEFAULT_CHANNEL_SYNC_INTERVAL_MS)
    this.#started = true
    for (const ann of resume) {
      this.#c.log.info('resuming the fetch of an announced channel version', { channel: ann.channel, version: ann.version, cid: ann.cid })
      this.#follower.fetch(ann)
    }
  }

  async stop (): Promise<void> {
    if (!this.#started) return
    this.#started = false
    clearInterval(this.#timer)
    clearTimeout(this.#joinTimer)
    this.#reannounce.stop()
    this.#completeReplies.stop()
    const pubsub = this.#c.node.services.pubsub
    pubsub.removeEventListener('message', this.#onMessage)
    pubsub.topicValidators.delete(CHANNELS_TOPIC)
    await this.#follower.stop()
  }

  /**
   * Publishes the staged file `staged` (a name in CHANNELS/.incoming) as the next version of `channel`.
   * Throws ChannelPublishError for a request this node refuses.
   */
  async publish (channel: string, staged: string, name?: string): Promise<PublishResult> {
    if (this.#init.publisher !== true) throw new ChannelPublishError('not-publisher', 'this node does not publish channels: start it with `filemesh run --publisher`')
    if (!isChannelName(channel)) throw new ChannelPublishError('bad-request', `not a channel name: ${JSON.stringify(channel)} (1-64 of A-Z a-z 0-9 . _ -, not starting with . _ -)`)
    if (!this.#tracked.has(channel) && this.#tracked.size >= CHANNELS_TRACKED_MAX) throw new ChannelPublishError('bad-request', `this node already keeps ${CHANNELS_TRACKED_MAX} channels`)
    let file: string
    try {
      file = await this.disk.staged(staged)
    } catch (err) {
      if (err instanceof ChannelPathError) throw new ChannelPublishError('bad-request', err.message)
      throw err
    }
    const started = performance.now()
    const manifest = await hashFile(file)
    await this.disk.syncStaged(file)
    const fileName = sanitizeName(name ?? channel)
    const ann = await this.#installer.installNext(channel, async (version) => await signAnnouncement(this.#c.privateKey, {
      channel, version, cid: manifest.root.toString(), size: manifest.size, name: fileName, publisher: this.#selfId
    }), { from: file, leaves: manifest.leaves, nodes: manifest.nodes })
    this.#tracked.add(channel)
    this.#follower.cancelBelow(channel, ann.version)
    const recipients = await this.#send(ann)
    this.#c.log.info('channel version published', { channel, version: ann.version, cid: ann.cid, bytes: ann.size, recipients, ms: Math.round(performance.now() - started) })
    return { channel, version: ann.version, cid: ann.cid, size: ann.size, name: fileName, recipients }
  }

  async status (): Promise<ChannelsStatus> {
    const records = []
    for (const channel of [...this.#tracked].sort()) records.push(await this.#installer.get(channel))
    return channelStatus({
      dir: this.disk.root,
      incoming: this.disk.incomingDir,
      publisher: this.#init.publisher === true,
      followAll: this.#init.followAll === true,
      follow: [...this.#follow].sort(),
      publishers: this.#init.publishers?.size ?? 0,
      records,
      following: (c) => this.#following(c),
      fetching: (c) => this.#follower.status(c),
      path: (c, v) => this.disk.versionPath(c, v),
      counters: this.counters
    })
  }

  #following (channel: string): boolean {
    return this.#follow.has(channel) || (this.#init.followAll === true && this.#tracked.has(channel))
  }

  /** Whether this node keeps state for `channel` (followed, published here, or new under --follow-all, within bounds). */
  #tracks (channel: string): boolean {
    if (this.#tracked.has(channel)) return true
    if (this.#init.followAll !== true) return false
    if (this.#tracked.size >= CHANNELS_TRACKED_MAX) {
      this.#throttled.warn('channels', `already following ${CHANNELS_TRACKED_MAX} channels: ignoring new ones`, { channel })
      return false
    }
    this.#tracked.add(channel)
    return true
  }

  /** Signed, well-formed, and (if this node has a publisher list) from a listed publisher; relayed only then. */
  readonly #validate = async (_from: unknown, msg: Message): Promise<TopicValidatorResult> => {
    if (msg.type !== 'signed') return TopicValidatorResult.Reject
    let m: ChannelMessage
    try {
      m = decodeChannelMessage(msg.data)
    } catch (err) {
      this.counters.invalid++
      this.#throttled.warn(msg.from.toString(), 'rejected a channel message', { err: err instanceof MessageError ? err.message : err })
      return TopicValidatorResult.Reject
    }
    if (m.type !== 'channel-announce') return TopicValidatorResult.Accept
    if (!await verifyAnnouncement(m)) {
      this.counters.invalid++
      this.#throttled.warn(msg.from.toString(), 'rejected a channel announcement with a bad signature', { channel: m.channel, version: m.version, publisher: m.publisher })
      return TopicValidatorResult.Reject
    }
    const publishers = this.#init.publishers
    if (publishers != null && !publishers.has(m.publisher)) {
      this.counters.unauthorized++
      this.#throttled.warn(m.publisher, 'ignored a channel announcement from a publisher not on --channel-publishers', { channel: m.channel, version: m.version })
      return TopicValidatorResult.Ignore
    }
    return TopicValidatorResult.Accept
  }

  readonly #onMessage = (evt: CustomEvent<Message>): void => {
    const msg = evt.detail
    if (msg.topic !== CHANNELS_TOPIC || msg.type !== 'signed') return
    let m: ChannelMessage
    try { m = decodeChannelMessage(msg.data) } catch { return }
    const from = msg.from.toString()
    this.counters.messagesReceived++
    const handled = m.type === 'channel-announce' ? this.#onAnnounce(m) : this.#onHave(from, m)
    handled.catch((err) => { this.#c.log.error('channel message handling failed', { peer: from, channel: m.channel, type: m.type, err }) })
  }

  async #onAnnounce (ann: ChannelAnnounceMessage): Promise<void> {
    if (this.#init.publishers?.has(ann.publisher) !== true) return // no list: this node follows nothing
    if (!this.#tracks(ann.channel)) return
    const { verdict, current } = await this.#installer.update<{ verdict: AnnouncementVerdict, current: number }>(ann.channel, (rec) => {
      const verdict = judgeAnnouncement(rec, ann)
      const current = currentVersion(rec)?.version ?? 0
      if (verdict === 'newer') return { rec: { ...rec, newest: ann }, result: { verdict, current } }
      if (verdict === 'conflict') return { rec: { ...rec, conflicts: rec.conflicts + 1 }, result: { verdict, current } }
      if (verdict === 'repeat' && rec.newest?.version === ann.version) this.#reannounce.suppress(ann.channel) // someone answered already
      return { result: { verdict, current } }
    })
    switch (verdict) {
      case 'newer':
        this.counters.accepted++
        this.#reannounce.suppress(ann.channel)
        this.#c.log.info('new channel version announced', { channel: ann.channel, version: ann.version, cid: ann.cid, bytes: ann.size, publisher: ann.publisher })
        if (this.#following(ann.channel)) this.#follower.fetch(ann)
        return
      case 'repeat':
        this.counters.repeated++
        if (this.#following(ann.channel) && current < ann.version) this.#follower.fetch(ann) // no-op if already fetching
        return
      case 'stale':
        this.counters.stale++
        this.#scheduleReannounce(ann.channel) // a replay, or a node behind: tell the mesh the newest
        return
      case 'conflict':
        this.counters.conflicts++
        this.#c.log.error('ignored an announcement of a channel version already known with another CID (two publishers raced): the first one stays; the next version resolves it', { channel: ann.channel, version: ann.version, cid: ann.cid, publisher: ann.publisher })
    }
  }

  async #onHave (from: string, msg: ChannelHaveMessage): Promise<void> {
    this.#follower.observe(from, msg)
    if (!this.#tracked.has(msg.channel)) return
    const rec = await this.#installer.get(msg.channel)
    if (rec.newest != null && msg.version < rec.newest.version) this.#scheduleReannounce(msg.channel)
    if (msg.complete || msg.version === 0) return
    if (rec.versions.some((v) => v.version === msg.version && v.cid === msg.cid)) {
      this.#completeReplies.schedule(`${msg.channel}/${msg.version}`, () => {
        this.#send({ type: 'channel-have', v: 1, channel: msg.channel, version: msg.version, cid: msg.cid, complete: true })
      })
    }
  }

  #scheduleReannounce (channel: string): void {
    this.#reannounce.schedule(channel, () => {
      this.#installer.get(channel).then(async (rec) => {
        if (rec.newest != null) await this.#send(rec.newest)
      }).catch((err) => { this.#c.log.warn('re-announcing a channel version failed', { channel, err }) })
    })
  }

  #syncSoon (): void {
    if (!this.#started || this.#joinTimer != null) return
    this.#joinTimer = setTimeout(() => {
      this.#joinTimer = undefined
      this.#sync().catch((err) => { this.#c.log.warn('channel sync failed', { err }) })
    }, DEFAULT_CHANNEL_JOIN_SYNC_DELAY_MS)
  }

  /** Tells the mesh what this node holds of each channel it follows (see the header). */
  async #sync (): Promise<void> {
    for (const channel of this.#tracked) {
      if (!this.#started) return
      if (!this.#following(channel) || this.#follower.isFetching(channel)) continue
      const rec = await this.#installer.get(channel)
      const cur = currentVersion(rec)
      if (rec.newest != null && rec.newest.version > (cur?.version ?? 0)) this.#follower.fetch(rec.newest)
      this.#send(cur != null
        ? { type: 'channel-have', v: 1, channel, version: cur.version, cid: cur.cid, complete: true }
        : { type: 'channel-have', v: 1, channel, version: 0, complete: false })
    }
  }

  /** Publishes on CHANNELS_TOPIC; resolves to the number of direct recipients (0 if it could not). */
  async #send (msg: ChannelMessage): Promise<number> {
    if (!this.#started) return 0
    try {
      this.counters.messagesSent++
      const { recipients } = await this.#c.node.services.pubsub.publish(CHANNELS_TOPIC, encodeMessage(msg, GOSSIP_MESSAGE_BYTES_MAX))
      return recipients.length
    } catch (err) {
      this.#c.log.debug('channel message not sent', { type: msg.type, channel: msg.channel, err })
      return 0
    }
  }
}
