/**
 * Every limit of the wire protocols in one place. Units are in the names. A peer that exceeds one is
 * answered with an error or cut off; nothing it sends may grow our memory past these bounds.
 */

export const KiB = 1024
export const MiB = 1024 * KiB

/** Size of a raw leaf block (the UnixFS chunk size): 1 MiB, profile unixfs-v1-2025. */
export const BLOCK_BYTES = MiB
/** Links per dag-pb node (profile unixfs-v1-2025). */
export const DAG_MAX_LINKS = 1024
/** Largest block we accept or serve: a 1 MiB leaf, or a dag-pb node of 1024 links (~45 KiB). */
export const BLOCK_BYTES_MAX = BLOCK_BYTES
/** Largest frame on the block protocol: a block plus its small header. */
export const BLOCK_FRAME_BYTES_MAX = BLOCK_BYTES_MAX + 256
/** Largest control-protocol message (assign, receipt, progress). */
export const CONTROL_MESSAGE_BYTES_MAX = 64 * KiB
/** Past owners and excluded peers carried by one `coordinate` message (each list). */
export const COORDINATE_PEERS_MAX = 64
/** Largest gossipsub message we publish or accept (heartbeats, announcements). */
export const GOSSIP_MESSAGE_BYTES_MAX = 16 * KiB
/** Largest file we accept: 1 TiB. */
export const FILE_BYTES_MAX = 1024 * 1024 * MiB
/** Longest file name (bytes, UTF-8) kept as metadata. */
export const FILE_NAME_BYTES_MAX = 255
/** Block requests one fetcher keeps outstanding per source peer. */
export const BLOCK_REQUESTS_IN_FLIGHT_MAX = 8
/** Inbound block streams per connection. */
export const BLOCK_STREAMS_INBOUND_MAX = 32
/** Inbound control streams per connection. */
export const CONTROL_STREAMS_INBOUND_MAX = 32
/** How long one block request may take before the source is considered slow. */
export const BLOCK_REQUEST_TIMEOUT_MS = 30_000
/** How long a control request may take. */
export const CONTROL_REQUEST_TIMEOUT_MS = 10_000
/** Roles advertised in one heartbeat, addresses per heartbeat. */
export const HEARTBEAT_ADDRS_MAX = 16
/** Longest name (bytes, UTF-8) that sanitizeName keeps, so a collision suffix `~TAG-N` still fits in 255. */
export const SANITIZED_NAME_BYTES_MAX = 200
/** Levels of dag-pb nodes above the leaves that a file DAG may have (a 1 TiB file at 1024 links needs 2). */
export const DAG_DEPTH_MAX = 8
/** Leaves a file DAG may have: FILE_BYTES_MAX in full BLOCK_BYTES leaves (2^20). */
export const FILE_LEAVES_MAX = Math.ceil(FILE_BYTES_MAX / BLOCK_BYTES)
/** Largest block request frame: one binary CID (a CIDv1 sha2-256 is 36 bytes). */
export const BLOCK_REQUEST_BYTES_MAX = 128
/** Unread request bytes a block server buffers per stream before it resets the stream (a client keeps ≤ 8 outstanding). */
export const BLOCK_REQUEST_BUFFER_BYTES_MAX = 64 * KiB
/** Block requests (frames) one peer may send per second, summed over its streams; over it the peer is penalised. */
export const BLOCK_REQUESTS_PER_PEER_PER_SEC = 5_000
/** Block requests one peer may send at once above its rate (a fetcher starting many small files). */
export const BLOCK_REQUESTS_PER_PEER_BURST = 10_000
/** Block requests of one peer being answered at once (blocks held in memory for it), over all its streams. */
export const BLOCK_REQUESTS_OUTSTANDING_PER_PEER_MAX = 64
/** Block requests being answered at once, all peers together (~1 MiB of memory each). */
export const BLOCK_REQUESTS_OUTSTANDING_MAX = 256
/** Open inbound block streams per peer, over all its connections. */
export const BLOCK_STREAMS_PER_PEER_MAX = 64
/** Control requests (one per stream) one peer may send per second; senders pace themselves to 90% of it. */
export const CONTROL_REQUESTS_PER_PEER_PER_SEC = 500
/** Control requests one peer may send at once above its rate. */
export const CONTROL_REQUESTS_PER_PEER_BURST = 1_000
/** Open inbound control streams per peer, over all its connections. */
export const CONTROL_STREAMS_PER_PEER_MAX = 32
/**
 * Control requests this node keeps in flight to one peer (a restart re-sends many at once). Small: a peer
 * whose muxer sees more than 10 streams before its side of a new connection is set up aborts the whole
 * connection (libp2p MaxEarlyStreamsError), and identify, ping and gossipsub open streams too.
 */
export const CONTROL_REQUESTS_OUTBOUND_PER_PEER_MAX = 4
/** How long a peer that went over a limit has every new block or control stream refused. */
export const PEER_PENALTY_MS = 10_000
/** Peers tracked by each rate limiter (bounded memory; idle peers are forgotten first). */
export const RATE_LIMITED_PEERS_MAX = 10_000
/** Longest broadcast channel name (ASCII: [A-Za-z0-9._-]); it becomes a directory and file name prefix. */
export const CHANNEL_NAME_BYTES_MAX = 64
/** Largest block bitmap a channel-have message carries (64 Ki leaves = a 64 GiB file; larger: complete-only haves). */
export const CHANNEL_HAVE_BITMAP_BLOCKS_MAX = 65_536
/** Channels one node keeps state for (followed, published, or seen with --follow-all). */
export const CHANNELS_TRACKED_MAX = 1_024
/** Peers whose have-maps one channel fetch remembers. */
export const CHANNEL_PEERS_TRACKED_MAX = 1_024
/** Block requests one channel fetch keeps outstanding over all its sources (~1 MiB of memory each). */
export const CHANNEL_BLOCKS_IN_FLIGHT_MAX = 16
/** Peer IDs in a --channel-publishers allowlist file. */
export const CHANNEL_PUBLISHERS_MAX = 1_024
/** Largest body of an API publish request (a JSON object naming the channel and the staged file). */
export const CHANNEL_PUBLISH_REQUEST_BYTES_MAX = 4 * KiB
/**
 * Longest a block server holds a request for a block it does not have yet but a fetch of its own is about
 * to write (swarm transfer: a holder asks its partner for the partner's share as it arrives); then NOT_FOUND.
 */
export const BLOCK_INFLIGHT_WAIT_MS = 3_000
/** Block requests waiting for such a block at once, all peers together; more are answered at once. */
export const BLOCK_REQUESTS_WAITING_MAX = 128
/** Gets by CID (`filemesh get`, GET /api/cid/CID) one node serves at once; more are answered 503. */
export const GET_REQUESTS_MAX = 4
/** Holders one get pulls from at once; the search for holders stops once this many said yes. */
export const GET_SOURCES_MAX = 4
/** Block sources named in one assign or replicate message. */
export const CONTROL_SOURCES_MAX = 16
/** "Who has this root CID?" control requests one get keeps in flight. */
export const GET_HOLDER_QUERIES_IN_FLIGHT_MAX = 16
