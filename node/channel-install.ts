/**
 * The durable steps of a channel version on this node, each under the channel's lock:
 *
 *   install: complete file fsynced (by the caller) -> rename to NAME.vN, fsync dir -> record + leaf index
 *            {sync} (older versions beyond `keep` dropped from record and index in the same batch)
 *            -> NAME.current switched (temp symlink, rename, fsync dir) -> old version files unlinked, fsync dir
 *   reconcile (at start): versions whose file is gone or has the wrong size leave the record; parts, temp
 *            links and unlisted version files are removed; NAME.current is pointed at the newest version.
 *
 * A crash between any two steps leaves either the old state or one that reconcile completes: a renamed
 * but unrecorded version file is removed (its fetch or publish starts again), a recorded version whose link
 * was not switched yet gets it switched. The record says what should be; the disk is made to match it.
 */
import path from 'node:path'
import type { ChannelAnnounceMessage } from '../protocols/messages.ts'
import type { DagNode, Leaf } from '../protocols/unixfs.ts'
import { currentVersion, emptyChannel, nextPublishVersion, pruned, withInstalled } from './channel-record.ts'
import type { ChannelRecord, ChannelVersion } from './channel-record.ts'
import type { ChannelStore } from './channel-store.ts'
import { KeyedLock } from './keyed-lock.ts'
import type { Logger } from './log.ts'
import { channelCopy } from './store.ts'
import type { Store, StoreOp } from './store.ts'

export const DEFAULT_CHANNEL_KEEP = 3

export interface ChannelInstallerComponents {
  store: Store
  disk: ChannelStore
  log: Logger
}

export interface InstallInit {
  /** The complete, fsynced file (a `.part` or a staged publish file) that becomes the version. */
  from: string
  leaves: readonly Leaf[]
  nodes: readonly DagNode[]
  /** Further changes to the record in the same batch (e.g. the publisher's counter). */
  amend?: (rec: ChannelRecord) => ChannelRecord
}

export class ChannelInstaller {
  readonly #store: Store
  readonly #disk: ChannelStore
  readonly #log: Logger
  readonly #keep: number
  readonly #locks = new KeyedLock()
  /** Every record read or written through this installer (the only writer of channel records): have messages are frequent. */
  readonly #cache = new Map<string, ChannelRecord>()

  constructor (components: ChannelInstallerComponents, init: { keep?: number } = {}) {
    this.#store = components.store
    this.#disk = components.disk
    this.#log = components.log
    this.#keep = init.keep ?? DEFAULT_CHANNEL_KEEP
    if (!Number.isSafeInteger(this.#keep) || this.#keep < 1) throw new RangeError(`--channel-keep must be a positive integer, got ${this.#keep}`)
  }

  async get (channel: string): Promise<ChannelRecord> {
    const cached = this.#cache.get(channel)
    if (cached != null) return cached
    const rec = await this.#store.getChannel(channel) ?? emptyChannel(channel)
    this.#cache.set(channel, rec)
    return rec
  }

  async #commit (rec: ChannelRecord, more: StoreOp[] = []): Promise<void> {
    await this.#store.commit([this.#store.putChannel(rec), ...more])
    this.#cache.set(rec.channel, rec)
  }

  /** Runs `fn` under the channel's lock on its current record; a returned record is committed ({sync}). */
  async update<T> (channel: string, fn: (rec: ChannelRecord) => Promise<{ rec?: ChannelRecord, result: T }> | { rec?: ChannelRecord, result: T }): Promise<T> {
    return await this.#locks.run(channel, async () => {
      const { rec, result } = await fn(await this.get(channel))
      if (rec != null) await this.#commit(rec)
      return result
    })
  }

  /** Makes `init.from` version `ann.version` of the channel (see the header for the steps). */
  async install (ann: ChannelAnnounceMessage, init: InstallInit): Promise<ChannelVersion> {
    return await this.#locks.run(ann.channel, async () => await this.#installLocked(ann, init))
  }

  /**
   * Publishes `init.from` as the channel's next version: under the lock, the number (above every version
   * known here, nextPublishVersion) is chosen, `sign` makes the announcement, and it is installed with the
   * publisher's counter in the same batch. Returns the announcement to send.
   */
  async installNext (channel: string, sign: (version: number) => Promise<ChannelAnnounceMessage>, init: InstallInit): Promise<ChannelAnnounceMessage> {
    return await this.#locks.run(channel, async () => {
      const ann = await sign(nextPublishVersion(await this.get(channel)))
      if (ann.channel !== channel) throw new Error('signed an announcement for another channel')
      const amend = init.amend
      await this.#installLocked(ann, { ...init, amend: (rec) => ({ ...(amend?.(rec) ?? rec), published: ann.version }) })
      return ann
    })
  }

  async #installLocked (ann: ChannelAnnounceMessage, init: InstallInit): Promise<ChannelVersion> {
    const channel = ann.channel
    const file = await this.#disk.commitVersion(init.from, channel, ann.version)
    const version: ChannelVersion = { version: ann.version, cid: ann.cid, size: ann.size, name: ann.name, file: path.basename(file), installedAt: new Date().toISOString() }
    let rec = withInstalled(await this.get(channel), version)
    if (rec.newest == null || rec.newest.version < ann.version) rec = { ...rec, newest: ann }
    if (init.amend != null) rec = init.amend(rec)
    const { rec: kept, dropped } = pruned(rec, this.#keep)
    const ops: StoreOp[] = [...this.#store.blockIndexOps(ann.cid, channelCopy(channel, ann.version), file, init.leaves, init.nodes)]
    for (const old of dropped) ops.push(...await this.#store.dropBlockIndexOps(old.cid, channelCopy(channel, old.version)))
    await this.#commit(kept, ops)
    const current = currentVersion(kept)
    if (current != null) await this.#disk.switchCurrent(channel, current.version)
    await this.#disk.removeVersions(channel, dropped.map((v) => v.version))
    if (dropped.length > 0) this.#log.info('old channel versions removed', { channel, versions: dropped.map((v) => v.version).join(',') })
    return version
  }

  /** Makes the disk match the record after a start (see the header); returns the record. */
  async reconcile (channel: string): Promise<ChannelRecord> {
    return await this.#locks.run(channel, async () => {
      let rec = await this.get(channel)
      const intact: ChannelVersion[] = []
      const ops: StoreOp[] = []
      for (const v of rec.versions) {
        if (await this.#disk.versionSize(channel, v.version) === v.size) {
          intact.push(v)
          continue
        }
        this.#log.error('a channel version file is missing or has the wrong size: dropped', { channel, version: v.version, cid: v.cid, file: v.file })
        ops.push(...await this.#store.dropBlockIndexOps(v.cid, channelCopy(channel, v.version)))
      }
      if (intact.length !== rec.versions.length) {
        rec = { ...rec, versions: intact }
        await this.#commit(rec, ops)
      }
      const removed = await this.#disk.sweep(channel, new Set(intact.map((v) => v.version)))
      if (removed.length > 0) this.#log.info('removed leftovers of interrupted channel work', { channel, files: removed.join(' ') })
      const current = currentVersion(rec)
      if (current != null && await this.#disk.current(channel) !== current.version) await this.#disk.switchCurrent(channel, current.version)
      return rec
    })
  }
}
