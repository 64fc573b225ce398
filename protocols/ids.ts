/** Protocol IDs and gossipsub topics. Versioned: a breaking change gets a new ID, never a silent reuse. */

export const PROTOCOL_PREFIX = '/filemesh'
/** Block request/response: the client asks for CIDs, the server answers each with the verified bytes. */
export const BLOCKS_PROTOCOL = '/filemesh/blocks/1.0.0'
/** Control messages between coordinator and holders: assign, receipt, progress. One request, one reply per stream. */
export const CONTROL_PROTOCOL = '/filemesh/control/1.0.0'
/** Signed heartbeats: roles, weight, draining flag, addresses. */
export const MEMBERS_TOPIC = '/filemesh/members/1'
/** Signed file announcements from ingest nodes. */
export const FILES_TOPIC = '/filemesh/files/1'
/** Broadcast channels: publishers' signed version announcements and every follower's have-maps. */
export const CHANNELS_TOPIC = '/filemesh/channels/1'
