/**
 * Placement by weighted rendezvous (highest-random-weight) hashing.
 *
 * Thaler & Ravishankar, "Using Name-Based Mappings to Increase Hit Rates", IEEE/ACM ToN 6(1), 1998; the
 * weighted form -w/ln(u) is from Schindelhauer & Schomaker, "Weighted Distributed Hash Tables", SPAA 2005
 * (also used by Ceph's straw2 and Uber Kraken's lib/hrw).
 *
 * For a file key K and member M: h = the top 53 bits of sha256(M ‖ 0x00 ‖ K), u = (h + 1) / 2^53 ∈ (0, 1],
 * score = -weight / ln(u). The member with the highest score wins; ties (never seen in practice) go to the
 * lexicographically smaller ID. Every node computes the same ranking from the same live view, with no
 * coordination; when a member joins or leaves only the keys it wins or won move (about 1/N), and a member of
 * weight 2 wins about twice as many keys as one of weight 1.
 *
 * Pure: no I/O, no clock. The owner is the top `process` member; the backup is the top `backup` member that is
 * not the owner, unless the owner is the only backup member there is.
 */
import { createHash } from 'node:crypto'

export interface Candidate {
  /** Peer ID (base58 or any stable string). */
  id: string
  /** Relative capacity, > 0. Two members of weight 1 and 2 win about 1/3 and 2/3 of the keys. */
  weight: number
}

export interface Placement {
  /** The processing owner, or undefined when no processor is live. */
  owner?: string
  /** The backup (archive) holder, or undefined when no backup node is live. */
  backup?: string
}

const TWO_POW_53 = 2 ** 53

/** The weighted rendezvous score of `id` for `key`. Higher wins. */
export function score (id: string, key: string, weight: number): number {
  if (!(weight > 0) || !Number.isFinite(weight)) throw new RangeError(`weight must be a positive finite number, got ${weight}`)
  const digest = createHash('sha256').update(id).update('\0').update(key).digest()
  const top53 = Number(digest.readBigUInt64BE(0) >> 11n)
  const u = (top53 + 1) / TWO_POW_53
  const ln = Math.log(u)
  return ln === 0 ? Number.POSITIVE_INFINITY : -weight / ln
}

/** All candidates ordered best first for `key`: the rendezvous order (owner, then the next to take over, ...). */
export function rank<C extends Candidate> (candidates: readonly C[], key: string): C[] {
  return candidates
    .map((c) => ({ c, s: score(c.id, key, c.weight) }))
    .sort((a, b) => (b.s - a.s) || (a.c.id < b.c.id ? -1 : a.c.id > b.c.id ? 1 : 0))
    .map((x) => x.c)
}

/**
 * Picks the owner among `processors` and the backup among `backups` for `key` (the file's root CID).
 * The backup is on a different machine than the owner whenever another backup member exists.
 */
export function place (key: string, processors: readonly Candidate[], backups: readonly Candidate[]): Placement {
  const owner = rank(processors, key)[0]?.id
  const ranked = rank(backups, key)
  const backup = (ranked.find((c) => c.id !== owner) ?? ranked[0])?.id
  return { owner, backup }
}
