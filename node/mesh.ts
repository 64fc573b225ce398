/**
 * The libp2p adapter: builds the node every filemesh daemon runs (TCP, noise, yamux, identify, ping,
 * gossipsub with StrictSign, bootstrap) and keeps its identity on disk. Settings that matter:
 *  - yamux window 16 MiB with a 20 MiB read buffer (notes/libp2p-v3.md pitfalls 3 and 5);
 *  - gossipsub IP-colocation penalty off, so a mesh on one machine (tests, the demo) is not ignored;
 *  - inbound connection rate raised: every member may dial every other one at start;
 *  - optional swarm key (`@libp2p/pnet`) and connection gater (the allowlist, node/security.ts);
 *  - a node with no connection redials its bootstrap list every few seconds, so a node that was refused
 *    (not yet on the allowlist) or started before its bootstrap peer joins once it can.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { bootstrap } from '@libp2p/bootstrap'
import { gossipsub } from '@libp2p/gossipsub'
import { preSharedKey } from '@libp2p/pnet'
import { multiaddr } from '@multiformats/multiaddr'
import type { GossipSub } from '@libp2p/gossipsub'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { ConnectionGater, PrivateKey } from '@libp2p/interface'
import { GOSSIP_MESSAGE_BYTES_MAX, MiB } from '../protocols/limits.ts'
import { writeFileDurable } from './fsutil.ts'

export type MeshNode = Libp2p<{ pubsub: GossipSub, identify: unknown, ping: unknown }>

export interface MeshNodeInit {
  privateKey: PrivateKey
  /** Multiaddrs to listen on; default one random TCP port on 127.0.0.1. */
  listen?: string[]
  /** Full multiaddrs (with /p2p/) of peers to join through. */
  bootstrap?: string[]
  maxConnections?: number
  /** Canonical swarm key text (`SwarmKey.psk` from node/security.ts): only nodes with the same key can connect. */
  swarmKey?: Uint8Array
  /** Decides which peers we dial and accept (node/security.ts `PeerGate`); default allow all. */
  connectionGater?: ConnectionGater
  /** While the node has no connection, it redials its bootstrap list this often. */
  rejoinIntervalMs?: number
}

export const DEFAULT_LISTEN = ['/ip4/127.0.0.1/tcp/0']
export const DEFAULT_MAX_CONNECTIONS = 300
export const DEFAULT_REJOIN_INTERVAL_MS = 5_000
const IDENTITY_FILE = 'peer.key'

export async function createMeshNode (init: MeshNodeInit): Promise<MeshNode> {
  const peerDiscovery = (init.bootstrap ?? []).length > 0 ? [bootstrap({ list: init.bootstrap ?? [], timeout: 100 })] : []
  const node = await createLibp2p({
    privateKey: init.privateKey,
    addresses: { listen: init.listen ?? DEFAULT_LISTEN },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    // maxEarlyStreams: a peer that opens control and block streams right after connecting must not get the whole
    // connection reset before our handlers are attached (default 10).
    streamMuxers: [yamux({ maxEarlyStreams: 64, streamOptions: { maxStreamWindowSize: 16 * MiB, maxReadBufferLength: 20 * MiB } } as any)],
    connectionManager: { maxConnections: init.maxConnections ?? DEFAULT_MAX_CONNECTIONS, inboundConnectionThreshold: 100 },
    ...(init.swarmKey != null ? { connectionProtector: preSharedKey({ psk: init.swarmKey }) } : {}),
    ...(init.connectionGater != null ? { connectionGater: init.connectionGater } : {}),
    peerDiscovery,
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        globalSignaturePolicy: 'StrictSign',
        allowPublishToZeroTopicPeers: true,
        ignoreDuplicatePublishError: true,
        emitSelf: false,
        maxInboundDataLength: GOSSIP_MESSAGE_BYTES_MAX + 4096,
        scoreParams: { IPColocationFactorWeight: 0 }
      })
    }
  })
  keepJoining(node as unknown as MeshNode, init.bootstrap ?? [], init.rejoinIntervalMs ?? DEFAULT_REJOIN_INTERVAL_MS)
  return node as unknown as MeshNode
}

/** Redials the bootstrap list whenever the node has no connection at all; stops with the node. */
function keepJoining (node: MeshNode, list: string[], intervalMs: number): void {
  if (list.length === 0) return
  const timer = setInterval(() => {
    if (node.status !== 'started' || node.getConnections().length > 0) return
    for (const addr of list) {
      node.dial(multiaddr(addr), { signal: AbortSignal.timeout(intervalMs) }).catch(() => {})
    }
  }, intervalMs)
  timer.unref()
  node.addEventListener('stop', () => { clearInterval(timer) }, { once: true })
}

/** Loads the node's private key from `dataDir`, creating it (mode 0600, durably) on first start. */
export async function loadOrCreateIdentity (dataDir: string): Promise<PrivateKey> {
  const file = path.join(dataDir, IDENTITY_FILE)
  try {
    return privateKeyFromProtobuf(await fs.readFile(file))
  } catch (err: any) {
    if (err.code !== 'ENOENT') throw new Error(`cannot read the peer identity ${file}: ${err.message} (delete it only if this node may get a new peer ID)`)
  }
  const key = await generateKeyPair('Ed25519')
  await writeFileDurable(file, privateKeyToProtobuf(key), { mode: 0o600 })
  return key
}
