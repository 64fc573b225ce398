/**
 * Who may publish on a channel, and the publisher's own signature on each announcement.
 *
 * Authorisation is an allowlist of peer IDs (`run --channel-publishers FILE`, one per line, `#` comments),
 * checked by every follower against the key that signed the announcement itself (not the gossipsub envelope,
 * which is whoever relayed it). A list rather than a role in the heartbeat: a heartbeat role is claimed by
 * the member itself, so any node holding the swarm key could make itself a publisher and push a "deploy" to
 * every node; the list is written by the operator on each follower. The publishing node must also run with
 * `--publisher` (its API refuses `filemesh publish` otherwise), so a node's key being listed is not enough
 * to publish from it by accident.
 */
import fs from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { CHANNEL_PUBLISHERS_MAX } from '../protocols/limits.ts'
import { channelAnnounceSigningBytes } from '../protocols/messages.ts'
import type { ChannelAnnounceMessage } from '../protocols/messages.ts'

export class ChannelConfigError extends RangeError {
  override name = 'ChannelConfigError'
}

/** Signs an announcement with this node's identity key (the publisher field must be this node's peer ID). */
export async function signAnnouncement (key: PrivateKey, body: Omit<ChannelAnnounceMessage, 'sig' | 'type' | 'v'>): Promise<ChannelAnnounceMessage> {
  const unsigned = { type: 'channel-announce' as const, v: 1 as const, ...body }
  const sig = await key.sign(channelAnnounceSigningBytes(unsigned))
  return { ...unsigned, sig: Buffer.from(sig).toString('base64') }
}

/** True if `msg.sig` is `msg.publisher`'s signature over the announcement. Never throws. */
export async function verifyAnnouncement (msg: ChannelAnnounceMessage): Promise<boolean> {
  try {
    const key = peerIdFromString(msg.publisher).publicKey
    if (key == null) return false
    return await key.verify(channelAnnounceSigningBytes(msg), Buffer.from(msg.sig, 'base64'))
  } catch {
    return false
  }
}

/** Reads a publisher allowlist: one peer ID per line, blank lines and `#` comments ignored. */
export async function loadPublishers (file: string): Promise<Set<string>> {
  let text: string
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err: any) {
    throw new ChannelConfigError(`cannot read the channel publishers file ${file}: ${err.code ?? err.message}`)
  }
  const out = new Set<string>()
  for (const [n, raw] of text.split('\n').entries()) {
    const line = raw.replace(/#.*/, '').trim()
    if (line === '') continue
    try {
      peerIdFromString(line)
    } catch {
      throw new ChannelConfigError(`${file}:${n + 1}: not a peer ID: ${JSON.stringify(line.slice(0, 80))}`)
    }
    out.add(line)
    if (out.size > CHANNEL_PUBLISHERS_MAX) throw new ChannelConfigError(`${file}: more than ${CHANNEL_PUBLISHERS_MAX} publishers`)
  }
  return out
}
