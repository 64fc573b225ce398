/**
 * Keeps the membership view live over gossipsub: publishes this node's signed heartbeat every
 * `heartbeatIntervalMs`, validates and records everyone else's, teaches the peer store their addresses and
 * dials members we are not connected to (up to a bound), so a node that joined through one bootstrap peer
 * ends up connected to the mesh and can pull blocks from anyone. Listeners are told when a member joins or
 * changes, which is when unplaced files may now be placed.
 */
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import type { Message } from '@libp2p/gossipsub'
import type { PeerId } from '@libp2p/interface'
import { MEMBERS_TOPIC } from '../protocols/ids.ts'
import { GOSSIP_MESSAGE_BYTES_MAX, HEARTBEAT_ADDRS_MAX } from '../protocols/limits.ts'
import { MessageError, decodeGossip, encodeMessage } from '../protocols/messages.ts'
import type { HeartbeatMessage } from '../protocols/messages.ts'
import type { Role } from '../protocols/roles.ts'
import { MembershipView } from './core/membership.ts'
import type { Clock } from './core/membership.ts'
import type { Logger } from './log.ts'
import type { MeshNode } from './mesh.ts'

export interface MembershipServiceInit {
  roles: Role[]
  weight?: number
  heartbeatIntervalMs?: number
  memberTtlMs?: number
  /** Connections we open to members on our own (the mesh also forwards gossip through others). */
  dialMembersMax?: number
  /**
   * The peer allowlist, if any: a heartbeat from a peer not on it is rejected even when another member relays
   * it, so an outsider never enters the membership view (and is never chosen for a file).
   */
  isAllowed?: (peerId: string) => boolean
}

export const DEFAULT_HEARTBEAT_INTERVAL_MS = 1_000
export const DEFAULT_DIAL_MEMBERS_MAX = 64

export class MembershipService {
  readonly view: MembershipView
  readonly #node: MeshNode
  readonly #log: Logger
  readonly #roles: Role[]
  readonly #weight: number
  readonly #intervalMs: number
  readonly #dialMax: number
  readonly #isAllowed: (peerId: string) => boolean
  readonly #listeners = new Set<() => void>()
  readonly #dialing = new Set<string>()
  #draining = false
  #seq = 0
  #timer: NodeJS.Timeout | undefined
  #rejected = 0

  constructor (node: MeshNode, clock: Clock, log: Logger, init: MembershipServiceInit) {
    this.#node = node
    this.#log = log
    this.#roles = init.roles
    this.#weight = init.weight ?? 1
    this.#intervalMs = init.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS
    this.#dialMax = init.dialMembersMax ?? DEFAULT_DIAL_MEMBERS_MAX
    this.#isAllowed = init.isAllowed ?? (() => true)
    this.view = new MembershipView({ selfId: node.peerId.toString(), clock, ttlMs: init.memberTtlMs ?? this.#intervalMs * 5 })
  }

  get rejectedMessages (): number {
    return this.#rejected
  }

  /** Called (synchronously, must not throw) when a member joins or its roles/weight/draining change. */
  onChange (fn: () => void): void {
    this.#listeners.add(fn)
  }

  setDraining (draining: boolean): void {
    this.#draining = draining
    this.#beat()
  }

  start (): void {
    const pubsub = this.#node.services.pubsub
    pubsub.topicValidators.set(MEMBERS_TOPIC, (from, msg) => this.#validate(from, msg))
    pubsub.addEventListener('message', this.#onMessage)
    pubsub.subscribe(MEMBERS_TOPIC)
    this.#beat()
    this.#timer = setInterval(() => { this.#beat() }, this.#intervalMs)
  }

  stop (): void {
    clearInterval(this.#timer)
    const pubsub = this.#node.services.pubsub
    pubsub.removeEventListener('message', this.#onMessage)
    pubsub.topicValidators.delete(MEMBERS_TOPIC)
  }

  #heartbeat (): HeartbeatMessage {
    this.#seq = Math.max(this.#seq + 1, Date.now())
    const addrs = this.#node.getMultiaddrs().map((a) => a.decapsulateCode(421).toString()).slice(0, HEARTBEAT_ADDRS_MAX)
    return { type: 'heartbeat', v: 1, roles: this.#roles, weight: this.#weight, draining: this.#draining, addrs, seq: this.#seq }
  }

  #beat (): void {
    const hb = this.#heartbeat()
    this.#record(this.#node.peerId.toString(), hb)
    this.#node.services.pubsub.publish(MEMBERS_TOPIC, encodeMessage(hb, GOSSIP_MESSAGE_BYTES_MAX)).catch((err) => {
      this.#log.debug('heartbeat publish failed', { err })
    })
    this.view.sweep()
  }

  #validate (_from: PeerId, msg: Message): TopicValidatorResult {
    if (msg.type !== 'signed') return TopicValidatorResult.Reject
    if (!this.#isAllowed(msg.from.toString())) {
      this.#rejected++
      return TopicValidatorResult.Reject
    }
    try {
      if (decodeGossip(msg.data).type !== 'heartbeat') return TopicValidatorResult.Reject
      return TopicValidatorResult.Accept
    } catch (err) {
      this.#rejected++
      this.#log.warn('rejected a heartbeat', { peer: msg.from.toString(), err: err instanceof MessageError ? err.message : err })
      return TopicValidatorResult.Reject
    }
  }

  readonly #onMessage = (evt: CustomEvent<Message>): void => {
    const msg = evt.detail
    if (msg.topic !== MEMBERS_TOPIC || msg.type !== 'signed') return
    try {
      const hb = decodeGossip(msg.data)
      if (hb.type === 'heartbeat') this.#record(msg.from.toString(), hb)
    } catch (err) {
      this.#log.warn('heartbeat handling failed', { peer: msg.from.toString(), err })
    }
  }

  #record (id: string, hb: HeartbeatMessage): void {
    const change = this.view.observe(id, hb)
    if (change === 'joined' || change === 'updated') {
      this.#log.info(change === 'joined' ? 'member joined' : 'member changed', { peer: id, roles: hb.roles.join(','), draining: hb.draining, weight: hb.weight })
      if (id !== this.#node.peerId.toString()) this.#learn(id, hb)
      for (const fn of this.#listeners) {
        try { fn() } catch (err) { this.#log.error('membership listener failed', { err }) }
      }
    }
  }

  /** Adds the member's addresses to the peer store and dials it if we have room and no connection. */
  #learn (id: string, hb: HeartbeatMessage): void {
    let peerId: PeerId
    try {
      peerId = peerIdFromString(id)
      const addrs = hb.addrs.map((a) => multiaddr(a))
      this.#node.peerStore.merge(peerId, { multiaddrs: addrs }).catch((err) => { this.#log.debug('peer store merge failed', { peer: id, err }) })
    } catch (err) {
      this.#log.warn('heartbeat with unusable addresses', { peer: id, err })
      return
    }
    if (this.#node.getConnections(peerId).length > 0 || this.#dialing.has(id)) return
    if (new Set(this.#node.getConnections().map((c) => c.remotePeer.toString())).size >= this.#dialMax) return
    this.#dialing.add(id)
    this.#node.dial(peerId, { signal: AbortSignal.timeout(10_000) })
      .catch((err) => { this.#log.debug('dial to member failed', { peer: id, err }) })
      .finally(() => { this.#dialing.delete(id) })
  }
}
