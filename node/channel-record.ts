/**
 * A node's durable record of one broadcast channel, and the pure rules over it: which announcement wins,
 * which versions are kept, which version a publisher makes next. Kept apart from the service so the
 * ordering rules (versions only move forward; one content per version) can be read and tested on their own.
 *
 * Ordering: an announcement is 'newer' only if its version is above every version this node knows of the
 * channel (announced, installed or published here). The same version with the same CID is a 'repeat'; the
 * same version with another CID is a 'conflict' (two publishers raced to the same number): the first one
 * this node accepted stays, the other is ignored and counted, so no node ever shows two contents under one
 * version. A lower version is 'stale' (a replay, or a node that was away) and never moves anything back.
 */
import type { ChannelAnnounceMessage } from '../protocols/messages.ts'

/** One complete, verified version held here: the file `file` in the channel's directory. */
export interface ChannelVersion {
  version: number
  cid: string
  size: number
  /** The publisher's file name (metadata). */
  name: string
  /** File name in the channel directory: NAME.vVERSION. */
  file: string
  installedAt: string
}

export interface ChannelRecord {
  channel: string
  /** Complete versions held here, ascending; the last is the one NAME.current points at. */
  versions: ChannelVersion[]
  /** The newest valid announcement known here (installed, being fetched, or published by this node). */
  newest?: ChannelAnnounceMessage
  /** Highest version this node published itself. */
  published?: number
  /** Announcements ignored because their version was already known here with another CID. */
  conflicts: number
}

export type AnnouncementVerdict = 'newer' | 'repeat' | 'conflict' | 'stale'

export function emptyChannel (channel: string): ChannelRecord {
  return { channel, versions: [], conflicts: 0 }
}

/** The highest version this node knows of, in any form (0 if none). */
export function newestKnownVersion (rec: ChannelRecord): number {
  return Math.max(rec.newest?.version ?? 0, rec.published ?? 0, rec.versions.at(-1)?.version ?? 0)
}

/** The version NAME.current shows (the newest installed), if any. */
export function currentVersion (rec: ChannelRecord): ChannelVersion | undefined {
  return rec.versions.at(-1)
}

export function judgeAnnouncement (rec: ChannelRecord, ann: Pick<ChannelAnnounceMessage, 'version' | 'cid'>): AnnouncementVerdict {
  const known = knownCid(rec, ann.version)
  if (known != null) return known === ann.cid ? 'repeat' : 'conflict'
  return ann.version > newestKnownVersion(rec) ? 'newer' : 'stale'
}

/** The CID this node associates with `version`, if it knows that version. */
function knownCid (rec: ChannelRecord, version: number): string | undefined {
  if (rec.newest?.version === version) return rec.newest.cid
  return rec.versions.find((v) => v.version === version)?.cid
}

/** The version number a publish on this node takes: above everything known, so it can never go back. */
export function nextPublishVersion (rec: ChannelRecord): number {
  return newestKnownVersion(rec) + 1
}

/** `rec` with `v` installed (kept sorted by version; a version is installed at most once). */
export function withInstalled (rec: ChannelRecord, v: ChannelVersion): ChannelRecord {
  const versions = [...rec.versions.filter((x) => x.version !== v.version), v].sort((a, b) => a.version - b.version)
  return { ...rec, versions }
}

/** Splits the installed versions into the newest `keep` and the older ones to delete. */
export function pruned (rec: ChannelRecord, keep: number): { rec: ChannelRecord, dropped: ChannelVersion[] } {
  if (!Number.isSafeInteger(keep) || keep < 1) throw new RangeError(`keep must be a positive integer, got ${keep}`)
  const cut = Math.max(0, rec.versions.length - keep)
  return { rec: { ...rec, versions: rec.versions.slice(cut) }, dropped: rec.versions.slice(0, cut) }
}

/** The channel's file name for `version`. */
export function versionFileName (channel: string, version: number): string {
  return `${channel}.v${version}`
}
