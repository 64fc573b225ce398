/**
 * The swarm rule: how the holders of a file (owner, backups) share the work of pulling it, so that the
 * landing node (the file's coordinator, which has the spool copy) uploads each block about once however
 * many holders there are. Pure: the coordinator builds the sources with `swarmSources`, each holder derives
 * its share from them with `swarmShare`, and the block client asks `preferredSource` per leaf.
 *
 * While no holder has the file yet, the coordinator assigns it with
 *   AssignMessage.sources = [coordinator, ...holders]
 * where `holders` lists every holder of the file in share order (owner first, then the backups), the
 * receiving holder included. Holder k of n pulls the distinct leaves whose ordinal (position among the
 * file's distinct leaves in first-appearance order) is ≡ k (mod n) from the coordinator first, and every
 * other leaf first from the holder whose share it is: that holder has it moments later, and its block
 * server waits for a block an active local fetch expects (BLOCK_INFLIGHT_WAIT_MS). A leaf that its
 * preferred source cannot give (not found after the wait, timeout, refused, source dropped) comes from any
 * other source. A partner that answers NOT_FOUND may not have started yet: it is asked again for a while
 * (DEFAULT_PREFERRED_SOURCE_PATIENCE_MS in node/block-work-list.ts) before the landing node is asked.
 * Holders start a file at different times (their fetch queues differ): before pulling its own share from the
 * landing node, a holder asks its next partner (`probePartner`) for the first leaf of that share; if the
 * partner has it, the partner is ahead and the whole share is asked from it first. So whichever holder
 * is first pulls from the landing node and the later one pulls from it: about once either way.
 * Sources that do not name the receiving holder after the coordinator (a holder already has
 * the file, the coordinator is one of the holders, a coordinator from before this rule) mean no shares:
 * every source pulls from one common list.
 */

/** One holder's part in a swarm transfer. */
export interface SwarmShare {
  /** The node every holder takes its own share from (the coordinator, which has the spool copy). */
  landing: string
  /** The file's holders in share order, this holder included. */
  holders: string[]
  /** This holder's position in `holders`. */
  index: number
}

/**
 * AssignMessage.sources for a file none of whose holders has it yet: [coordinator, ...holders], or just
 * [coordinator] when the holders cannot share (one holder, duplicates, or the coordinator is a holder and
 * reads its own copy).
 */
export function swarmSources (coordinator: string, holders: readonly string[]): string[] {
  if (holders.length < 2 || new Set(holders).size !== holders.length || holders.includes(coordinator)) return [coordinator]
  return [coordinator, ...holders]
}

/**
 * This holder's share from the sources of its assignment by `coordinator`, or undefined: no shares (the
 * sources do not start with the coordinator followed by the holders, this one among them).
 */
export function swarmShare (sources: readonly string[], self: string, coordinator: string): SwarmShare | undefined {
  const landing = sources[0]
  if (landing == null || landing !== coordinator || landing === self) return undefined
  const holders = sources.slice(1)
  const index = holders.indexOf(self)
  if (index < 0 || holders.length < 2 || new Set(holders).size !== holders.length || holders.includes(landing)) return undefined
  return { landing, holders, index }
}

/** The source a holder asks first for the distinct leaf at `ordinal`: the landing node for its own share, else the holder whose share it is. */
export function preferredSource (share: SwarmShare, ordinal: number): string {
  const k = ordinal % share.holders.length
  return k === share.index ? share.landing : share.holders[k] as string
}

/**
 * The leaves a holder pulls from the landing node itself: the distinct leaves (by CID, first appearance)
 * whose ordinal is in its share. Its block server waits for these (and only these) while they arrive.
 */
export function ownShare<T extends { cid: { toString(): string } }> (share: SwarmShare, leaves: readonly T[]): T[] {
  const seen = new Set<string>()
  const own: T[] = []
  for (const leaf of leaves) {
    const key = leaf.cid.toString()
    if (seen.has(key)) continue
    if (seen.size % share.holders.length === share.index) own.push(leaf)
    seen.add(key)
  }
  return own
}

/** The partner a holder first asks for one leaf of its own share, to learn whether that partner is ahead. */
export function probePartner (share: SwarmShare): string {
  return share.holders[(share.index + 1) % share.holders.length] as string
}
