/**
 * The `channels` part of `filemesh status --json`: per channel, the version readers see (NAME.current),
 * the versions kept, the newest one announced, what this node published, and the fetch in progress.
 * Part of the API's JSON contract.
 */
import type { ActiveFetchStatus } from './channel-follower.ts'
import { currentVersion } from './channel-record.ts'
import type { ChannelRecord } from './channel-record.ts'

export interface ChannelStatus {
  channel: string
  following: boolean
  /** The version NAME.current points at (the newest complete one here). */
  current: { version: number, cid: string, size: number, name: string, path: string } | null
  /** Versions kept here, ascending. */
  versions: number[]
  /** The newest version announced (it may still be fetching). */
  newest: { version: number, cid: string, size: number, publisher: string } | null
  /** Highest version this node published. */
  published: number | null
  fetching: ActiveFetchStatus | null
  conflicts: number
}

export interface ChannelsStatus {
  dir: string
  /** Where `filemesh publish` stages files for this node. */
  incoming: string
  publisher: boolean
  followAll: boolean
  follow: string[]
  /** Peer IDs on --channel-publishers. */
  publishers: number
  channels: ChannelStatus[]
  /** Announcements by outcome since start. */
  counters: Record<string, number>
}

export interface ChannelStatusInput {
  dir: string
  incoming: string
  publisher: boolean
  followAll: boolean
  follow: string[]
  publishers: number
  records: ChannelRecord[]
  following: (channel: string) => boolean
  fetching: (channel: string) => ActiveFetchStatus | undefined
  path: (channel: string, version: number) => string
  counters: Record<string, number>
}

export function channelStatus (input: ChannelStatusInput): ChannelsStatus {
  return {
    dir: input.dir,
    incoming: input.incoming,
    publisher: input.publisher,
    followAll: input.followAll,
    follow: input.follow,
    publishers: input.publishers,
    channels: input.records.map((rec) => {
      const cur = currentVersion(rec)
      return {
        channel: rec.channel,
        following: input.following(rec.channel),
        current: cur == null ? null : { version: cur.version, cid: cur.cid, size: cur.size, name: cur.name, path: input.path(rec.channel, cur.version) },
        versions: rec.versions.map((v) => v.version),
        newest: rec.newest == null ? null : { version: rec.newest.version, cid: rec.newest.cid, size: rec.newest.size, publisher: rec.newest.publisher },
        published: rec.published ?? null,
        fetching: input.fetching(rec.channel) ?? null,
        conflicts: rec.conflicts
      }
    }),
    counters: { ...input.counters }
  }
}
