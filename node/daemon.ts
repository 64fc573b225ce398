/**
 * The filemesh daemon: one process per machine, every role in the same program. It opens the store,
 * loads the peer identity, starts libp2p, the membership heartbeats, the block and control protocols, the
 * ingest and holder services for its roles, and the local API; re-drives everything that was in flight;
 * then writes `DATA/node.json` atomically to say it serves. `stop()` undoes it in reverse order.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import type { Message } from '@libp2p/gossipsub'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import { FILES_TOPIC } from '../protocols/ids.ts'
import { MessageError, decodeGossip } from '../protocols/messages.ts'
import type { ControlReply, ControlRequest } from '../protocols/messages.ts'
import type { Role } from '../protocols/roles.ts'
import { ApiServer, isLoopbackHost, parseHostPort } from './api.ts'
import { Archive } from './archive.ts'
import { BlockClient } from './block-client.ts'
import { BlockServer } from './block-server.ts'
import { LocalBlocks } from './block-store.ts'
import { ControlChannel, refuse } from './control.ts'
import { ensureDir, writeFileDurable } from './fsutil.ts'
import { HolderService } from './holder.ts'
import { InboxWatcher, isIgnoredName, isSidecarName } from './inbox.ts'
import { IngestService } from './ingest.ts'
import { createLogger } from './log.ts'
import { createMeshNode, loadOrCreateIdentity } from './mesh.ts'
import { PeerGate, SecurityConfigError, applyAllowlist, loadApiToken, loadPeerList, loadSwarmKey } from './security.ts'
import type { SwarmKey } from './security.ts'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { MeshNode } from './mesh.ts'
import { MembershipService } from './membership-service.ts'
import { ThrottledLog } from './rate-limit.ts'
import { collectFileStatus, memberStatus } from './status.ts'
import type { NodeStatus } from './status.ts'
import { Store } from './store.ts'
import { drainReport } from './drain.ts'
import { Scrubber } from './scrub.ts'
import { ArchiveHandoff } from './replicate.ts'
import { BackupCoordinator } from './takeover.ts'
import { FetchByCid } from './fetch-by-cid.ts'
import { swarmSources } from './swarm.ts'
import type { DrainReport } from './drain.ts'
import { ChannelService } from './channels.ts'
import type { PublishResult } from './channels.ts'
import { ChannelConfigError, loadPublishers } from './channel-announce.ts'

export interface DaemonConfig {
  dataDir: string
  roles: Role[]
  listen?: string[]
  bootstrap?: string[]
  inboxDir?: string
  archiveDir?: string
  exec?: string
  execConcurrency?: number
  execAttemptsMax?: number
  execTimeoutMs?: number
  /** host:port of the local API; default 127.0.0.1:0 (any free port). */
  api?: string
  /** Allow a non-loopback API address (also needs `apiTokenFile`). */
  apiPublic?: boolean
  /** File holding the API bearer token; when set, every API request must carry it. */
  apiTokenFile?: string
  /** Swarm key file (`filemesh keygen`): only nodes with the same key can connect. */
  swarmKeyFile?: string
  /** Peer allowlist file (one peer ID per line), enforced in both directions; re-read by `reload()`. */
  allowPeersFile?: string
  weight?: number
  heartbeatIntervalMs?: number
  /** Quiet period after which an in-place file without other evidence counts as complete. */
  inboxQuietMs?: number
  inboxRescanMs?: number
  /** An owner or backup absent this long is replaced (ingest role; backup role after a takeover). */
  reassignGraceMs?: number
  /** The ingest node absent this long: a backup takes over coordinating its released, unprocessed files (default 2 x reassignGraceMs). */
  takeoverGraceMs?: number
  /** Clear a drain recorded before this start (the node takes new work again). */
  undrain?: boolean
  /** Holders refuse new files when free space would fall below this (bytes). */
  minFreeBytes?: number
  /** Re-hash every stored copy this often (0 = only on `filemesh scrub`). */
  scrubIntervalMs?: number
  /** Broadcast channels to follow (node/channels.ts); needs `channelPublishersFile`. */
  follow?: string[]
  /** Follow every channel a listed publisher announces. */
  followAll?: boolean
  /** This node may publish channel versions (`filemesh publish`). */
  publisher?: boolean
  /** Peer IDs allowed to publish (one per line): announcements from others are ignored. */
  channelPublishersFile?: string
  /** Channels root (default DATA/channels). */
  channelsDir?: string
  /** Versions kept per channel. */
  channelKeep?: number
  /** How often a follower tells the mesh which version it holds (others answer with newer announcements). */
  channelSyncMs?: number
}

export interface NodeInfo {
  peerId: string
  addrs: string[]
  api: string
  roles: Role[]
  inbox?: string
  archive?: string
  pid: number
}

export const NODE_INFO_FILE = 'node.json'
export const DEFAULT_API = '127.0.0.1:0'
export const DEFAULT_SCRUB_INTERVAL_MS = 6 * 3_600_000

export class Daemon {
  readonly config: DaemonConfig
  readonly #log = createLogger('daemon')
  readonly #startedMs = performance.now()
  #store: Store | undefined
  #node: MeshNode | undefined
  #members: MembershipService | undefined
  #control: ControlChannel | undefined
  #blockServer: BlockServer | undefined
  #blockClient: BlockClient | undefined
  #ingest: IngestService | undefined
  #holder: HolderService | undefined
  #inbox: InboxWatcher | undefined
  #api: ApiServer | undefined
  #apiAddr = ''
  #gate: PeerGate | undefined
  #ready = false
  #draining = false
  #scrubber: Scrubber | undefined
  #channels: ChannelService | undefined
  #handoff: ArchiveHandoff | undefined
  #standby: BackupCoordinator | undefined
  #fetchByCid: FetchByCid | undefined
  #scrubTimer: NodeJS.Timeout | undefined
  readonly #announcements = { rejected: 0, ignored: 0 }

  constructor (config: DaemonConfig) {
    this.config = config
  }

  get peerId (): string {
    if (this.#node == null) throw new Error('daemon not started')
    return this.#node.peerId.toString()
  }

  get inboxDir (): string | undefined {
    return this.config.roles.includes('ingest') ? (this.config.inboxDir ?? path.join(this.config.dataDir, 'inbox')) : undefined
  }

  get archiveDir (): string | undefined {
    return this.config.roles.includes('backup') ? (this.config.archiveDir ?? path.join(this.config.dataDir, 'archive')) : undefined
  }

  async start (): Promise<NodeInfo> {
    const cfg = this.config
    const apiHostPort = cfg.api ?? DEFAULT_API
    const apiHost = parseHostPort(apiHostPort).host
    if (!isLoopbackHost(apiHost) && cfg.apiPublic !== true) throw new RangeError(`the control API address ${apiHostPort} is not loopback; pass --api-public to expose it on purpose`)
    if (!isLoopbackHost(apiHost) && cfg.apiTokenFile == null) throw new SecurityConfigError(`the control API address ${apiHostPort} is not loopback; it needs a token too (--api-token-file FILE)`)
    const log = this.#log
    const apiToken = cfg.apiTokenFile != null ? await loadApiToken(cfg.apiTokenFile) : undefined
    const swarmKey: SwarmKey | undefined = cfg.swarmKeyFile != null ? await loadSwarmKey(cfg.swarmKeyFile, { log }) : undefined
    const allowPeers = cfg.allowPeersFile != null ? await loadPeerList(cfg.allowPeersFile) : undefined
    const channelPublishers = cfg.channelPublishersFile != null ? await loadPublishers(cfg.channelPublishersFile) : undefined
    if (((cfg.follow ?? []).length > 0 || cfg.followAll === true) && channelPublishers == null) throw new ChannelConfigError('following a channel needs the list of peers allowed to publish: --channel-publishers FILE (one peer ID per line)')
    await ensureDir(cfg.dataDir)
    for (const dir of ['spool', 'work']) await ensureDir(path.join(cfg.dataDir, dir))
    this.#store = new Store(path.join(cfg.dataDir, 'db'))
    await this.#store.open()
    const store = this.#store
    const privateKey = await loadOrCreateIdentity(cfg.dataDir)
    if (cfg.allowPeersFile != null && allowPeers != null) {
      this.#gate = new PeerGate({ selfId: peerIdFromPrivateKey(privateKey).toString(), file: cfg.allowPeersFile, peers: allowPeers, log: log.child('gater') })
    }
    this.#node = await createMeshNode({ privateKey, listen: cfg.listen, bootstrap: cfg.bootstrap, swarmKey: swarmKey?.psk, connectionGater: this.#gate?.gater() })
    const node = this.#node
    const selfId = node.peerId.toString()
    log.info('libp2p started', { peer: selfId, addrs: node.getMultiaddrs().map(String).join(' '), roles: cfg.roles.join(',') })
    if (swarmKey != null) log.info('private mesh: only nodes with this swarm key can connect', { fingerprint: swarmKey.fingerprint })
    else log.warn('NO SWARM KEY: this mesh is OPEN to anyone who can reach its addresses; create a key with `filemesh keygen -o swarm.key` and pass --swarm-key swarm.key to every member')
    if (this.#gate != null) log.info('peer allowlist enforced in both directions', { file: cfg.allowPeersFile, peers: this.#gate.size })

    this.#members = new MembershipService(node, { nowMs: () => performance.now() }, log.child('members'), { roles: cfg.roles, weight: cfg.weight, heartbeatIntervalMs: cfg.heartbeatIntervalMs, isAllowed: (id) => this.#gate?.isAllowed(id) ?? true })
    this.#control = new ControlChannel(node, log.child('control'))
    const local = new LocalBlocks(store, log.child('blocks'))
    this.#blockServer = new BlockServer({ node }, { source: local, sourceVerifies: true })
    await this.#blockServer.start()
    const client = new BlockClient({ node })
    this.#blockClient = client

    if (cfg.roles.includes('process') || cfg.roles.includes('backup')) {
      let archive: Archive | undefined
      if (this.archiveDir != null) {
        archive = new Archive({ dir: this.archiveDir })
        await archive.init()
      }
      if (cfg.roles.includes('process') && cfg.exec == null) log.warn('no --exec command: owned files are marked processed without running anything')
      const members = this.#members
      const isIngest = (peer: string): boolean => members.view.isLive(peer) && members.view.get(peer)?.roles.includes('ingest') === true
      const isBackup = (peer: string): boolean => members.view.isLive(peer) && members.view.get(peer)?.roles.includes('backup') === true
      this.#holder = new HolderService({ store, control: this.#control, client, local, log: log.child('holder'), selfId, isIngest, isBackup }, {
        roles: cfg.roles, workDir: path.join(cfg.dataDir, 'work'), archive, minFreeBytes: cfg.minFreeBytes, exec: cfg.exec, execConcurrency: cfg.execConcurrency, execAttemptsMax: cfg.execAttemptsMax, execTimeoutMs: cfg.execTimeoutMs
      })
      await this.#holder.start()
      if (archive != null) {
        const holder = this.#holder
        this.#handoff = new ArchiveHandoff({ store, control: this.#control, log: log.child('handoff'), selfId, backupCandidates: () => members.view.candidates('backup'), updateBackup: async (cid, fn) => await holder.updateRecord(cid, 'backup', fn) })
        this.#standby = new BackupCoordinator({
          store, control: this.#control, log: log.child('takeover'), selfId, isLive: (peer) => members.view.isLive(peer), processCandidates: () => members.view.candidates('process'), updateBackup: async (cid, fn) => await holder.updateRecord(cid, 'backup', fn)
        }, { reassignGraceMs: cfg.reassignGraceMs, takeoverGraceMs: cfg.takeoverGraceMs })
      }
    }
    if (cfg.roles.includes('ingest')) {
      this.#ingest = new IngestService({ store, node, members: this.#members, control: this.#control, log: log.child('ingest') }, { spoolDir: path.join(cfg.dataDir, 'spool'), reassignGraceMs: cfg.reassignGraceMs })
    }
    await this.#control.start(async (from, msg) => await this.#dispatch(from, msg))
    this.#subscribeFiles()
    this.#members.start()
    this.#channels = new ChannelService({ store, node, client, local, privateKey, members: this.#members, log: log.child('channels') }, {
      dir: cfg.channelsDir ?? path.join(cfg.dataDir, 'channels'), follow: cfg.follow, followAll: cfg.followAll, publisher: cfg.publisher, publishers: channelPublishers, keep: cfg.channelKeep, syncIntervalMs: cfg.channelSyncMs
    })
    await this.#channels.start()

    this.#scrubber = new Scrubber({ store, client, local, peers: () => (this.#members?.view.live() ?? []).filter((m) => !m.self).map((m) => m.id), log: log.child('scrub') })
    if ((cfg.scrubIntervalMs ?? DEFAULT_SCRUB_INTERVAL_MS) > 0) {
      this.#scrubTimer = setInterval(() => { this.#scrubber?.run().catch((err) => { log.error('scrub failed', { err }) }) }, cfg.scrubIntervalMs ?? DEFAULT_SCRUB_INTERVAL_MS)
      this.#scrubTimer.unref()
    }
    const members = this.#members
    this.#fetchByCid = new FetchByCid({ store, local, client, control: this.#control, members: () => members.view.live().filter((m) => !m.self), isLive: (p) => members.view.isLive(p), log: log.child('get') }, { tempDir: path.join(cfg.dataDir, 'get') })
    await this.#fetchByCid.start()
    const fetchByCid = this.#fetchByCid
    this.#api = new ApiServer({ status: async () => await this.status(), ready: () => this.#ready, drain: async () => await this.drain(), drainStatus: async () => await this.drainStatus(), scrub: async () => await (this.#scrubber as Scrubber).run(), getCid: async (cid, options) => await fetchByCid.serve(cid, options), publish: async (req) => await this.publish(req) }, log.child('api'), { token: apiToken })
    this.#apiAddr = await this.#api.listen(apiHostPort)

    await this.#holder?.reconcile()
    await this.#handoff?.start()
    await this.#standby?.reconcile()
    this.#standby?.start()
    await this.#ingest?.reconcile()
    this.#ingest?.start()
    const drainingSince = await store.getDraining()
    if (drainingSince != null && cfg.undrain === true) {
      await store.commit([store.delDraining()])
      log.warn('--undrain: the drain recorded before this start is cleared; this node takes new work again', { drainingSince: new Date(drainingSince).toISOString() })
    } else if (drainingSince != null) {
      log.warn('this node was being drained when it stopped: it stays out of service (start it with --undrain to take work again)', { drainingSince: new Date(drainingSince).toISOString() })
      await this.drain()
    }
    if (this.#ingest != null && this.inboxDir != null && !this.#draining) {
      await ensureDir(this.inboxDir)
      const ingest = this.#ingest
      this.#inbox = new InboxWatcher({
        dir: this.inboxDir,
        quietMs: cfg.inboxQuietMs,
        rescanIntervalMs: cfg.inboxRescanMs,
        onReady: async (file) => { await ingest.claim({ path: file.path, name: file.name, readiness: file.readiness, sidecarPaths: file.sidecarPaths }) }
      })
      await this.#inbox.start()
    }
    this.#ready = true
    const info: NodeInfo = { peerId: selfId, addrs: node.getMultiaddrs().map(String), api: this.#apiAddr, roles: cfg.roles, inbox: this.inboxDir, archive: this.archiveDir, pid: process.pid }
    await writeFileDurable(path.join(cfg.dataDir, NODE_INFO_FILE), JSON.stringify(info, null, 2) + '\n')
    log.info('serving', { peer: selfId, api: this.#apiAddr, inbox: this.inboxDir, archive: this.archiveDir })
    return info
  }

  async #dispatch (from: string, msg: ControlRequest): Promise<ControlReply> {
    const noFiles = (): ControlReply => refuse('wrong-role', 'this node coordinates no files')
    switch (msg.type) {
      case 'assign': return this.#holder != null ? await this.#holder.onAssign(from, msg) : refuse('wrong-role', 'this node holds no files')
      case 'coordinate': return this.#standby != null ? await this.#standby.onCoordinate(from, msg) : refuse('wrong-role', 'this node has no archive')
      case 'receipt': { const c = await this.#coordinatorOf(msg.cid); return c != null ? await c.onReceipt(from, msg) : noFiles() }
      case 'lease': { const c = await this.#coordinatorOf(msg.cid); return c != null ? await c.onLease(from, msg) : noFiles() }
      case 'decline': { const c = await this.#coordinatorOf(msg.cid); return c != null ? await c.onDecline(from, msg) : noFiles() }
      case 'has': return this.#fetchByCid != null ? await this.#fetchByCid.onHas(from, msg) : refuse('not-ready', 'node is starting')
      case 'progress': { const c = await this.#coordinatorOf(msg.cid); return c != null ? await c.onProgress(from, msg) : noFiles() }
      case 'archived': { const c = await this.#coordinatorOf(msg.cid); return c != null ? await c.onArchived(from, msg) : noFiles() }
      case 'handoff': return this.#ingest != null ? await this.#ingest.onHandoff(from, msg) : noFiles()
      case 'replicate': return this.#holder != null ? await this.#holder.onReplicate(from, msg) : refuse('wrong-role', 'this node has no archive')
    }
  }

  /**
   * Who answers reports about `cid`: the backup's coordinator for a file this node archives and stands by for
   * (or coordinates after a takeover) and did not accept itself (node/takeover.ts), else the ingest service.
   */
  async #coordinatorOf (cid: string): Promise<BackupCoordinator | IngestService | undefined> {
    if (this.#standby != null && await this.#standby.coordinates(cid) && await this.#store?.getIngest(cid) == null) return this.#standby
    return this.#ingest
  }

  /**
   * Announcements: accepted only from live members with the ingest role. A sender we have no live heartbeat
   * from is ignored (neither delivered nor forwarded, no score penalty: it may simply be new to us); a live
   * member without the ingest role is rejected (gossipsub penalises it), counted and logged. A holder named
   * in an accepted announcement treats it as an assignment, de-duplicated by its durable record.
   */
  #subscribeFiles (): void {
    const node = this.#node as MeshNode
    const pubsub = node.services.pubsub
    const log = this.#log.child('files')
    const throttled = new ThrottledLog(log)
    const role = (peer: string): 'ingest' | 'other' | 'unknown' => {
      const view = this.#members?.view
      if (view == null || !view.isLive(peer)) return 'unknown'
      return view.get(peer)?.roles.includes('ingest') === true ? 'ingest' : 'other'
    }
    pubsub.topicValidators.set(FILES_TOPIC, (_from, msg: Message) => {
      if (msg.type !== 'signed') return TopicValidatorResult.Reject
      const peer = msg.from.toString()
      try {
        if (decodeGossip(msg.data).type !== 'announce') throw new MessageError('not an announcement')
      } catch (err) {
        this.#announcements.rejected++
        throttled.warn(peer, 'rejected an announcement', { err: err instanceof MessageError ? err.message : err })
        return TopicValidatorResult.Reject
      }
      switch (role(peer)) {
        case 'ingest': return TopicValidatorResult.Accept
        case 'unknown':
          this.#announcements.ignored++
          log.debug('ignored an announcement from a peer that is not a live member', { peer })
          return TopicValidatorResult.Ignore
        case 'other':
          this.#announcements.rejected++
          throttled.warn(peer, 'rejected an announcement from a member without the ingest role')
          return TopicValidatorResult.Reject
      }
    })
    pubsub.addEventListener('message', (evt) => {
      const msg = evt.detail
      if (msg.topic !== FILES_TOPIC || msg.type !== 'signed') return
      const from = msg.from.toString()
      if (role(from) !== 'ingest') return
      let ann
      try { ann = decodeGossip(msg.data) } catch { return }
      if (ann.type !== 'announce' || this.#holder == null) return
      const self = node.peerId.toString()
      for (const role of ['owner', 'backup'] as const) {
        if ((role === 'owner' ? ann.owner : ann.backup) !== self) continue
        this.#holder.onAssign(from, { type: 'assign', v: 1, cid: ann.cid, name: ann.name, size: ann.size, role, epoch: ann.epoch, sources: swarmSources(from, [ann.owner, ann.backup]), ...(role === 'owner' ? { backup: ann.backup } : {}) })
          .catch((err) => { log.warn('announcement not taken', { cid: ann.cid, err }) })
      }
    })
    pubsub.subscribe(FILES_TOPIC)
  }

  /** Stops taking new work (heartbeat says draining, assignments refused, inbox no longer claimed). Idempotent. */
  async drain (): Promise<DrainReport> {
    if (!this.#draining) {
      // Recorded first, so a node restarted before it is removed stays out of service (`run --undrain` clears it).
      const store = this.#store as Store
      if (await store.getDraining() == null) await store.commit([store.putDraining(Date.now())])
      this.#draining = true
      this.#log.warn('draining: no new work will be taken; run `filemesh drain` to see when this node is safe to remove')
      this.#members?.setDraining(true)
      await this.quiesce()
      this.#handoff?.setDraining(true)
    }
    return await this.drainStatus()
  }

  async drainStatus (): Promise<DrainReport> {
    const store = this.#store as Store
    const ingest = []
    for await (const rec of store.ingestRecords()) ingest.push(rec)
    const holder = []
    for await (const rec of store.holderRecords()) holder.push(rec)
    let inboxFiles = 0
    if (this.inboxDir != null) inboxFiles = (await fs.readdir(this.inboxDir).catch(() => [])).filter((n) => !isIgnoredName(n) && !isSidecarName(n)).length
    return drainReport({ draining: this.#draining, roles: this.config.roles, ingest, holder, inboxFiles, handoffTargets: this.#handoff?.stats().targets, keptWorkingCopies: this.#holder?.keptWorkingCopies })
  }

  /** Before a stop: no new claims from the inbox, no new assignments; running work goes on. */
  async quiesce (): Promise<void> {
    this.#holder?.setDraining(true)
    await this.#inbox?.stop()
    this.#inbox = undefined
  }

  /** Waits until nothing is fetched or processed here, or `timeoutMs` passed. */
  async settle (timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs
    while (performance.now() < deadline) {
      if (this.#holder == null || this.#holder.idle) return true
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    return false
  }

  /** `filemesh publish` (POST /api/channels/publish): the staged file becomes the channel's next version. */
  async publish (req: { channel: string, staged: string, name?: string }): Promise<PublishResult> {
    if (this.#channels == null || !this.#ready) throw new Error('the daemon is not serving yet')
    return await this.#channels.publish(req.channel, req.staged, req.name)
  }

  async status (): Promise<NodeStatus> {
    const node = this.#node as MeshNode
    const now = performance.now()
    const fileStatus = await collectFileStatus(this.#store as Store)
    return {
      peerId: node.peerId.toString(),
      roles: this.config.roles,
      addrs: node.getMultiaddrs().map(String),
      api: this.#apiAddr,
      ...(this.inboxDir != null ? { inbox: this.inboxDir } : {}),
      ...(this.archiveDir != null ? { archive: this.archiveDir } : {}),
      uptimeMs: Math.round(now - this.#startedMs),
      memory: (({ rss, heapUsed, external, arrayBuffers }) => ({ rss, heapUsed, external, arrayBuffers }))(process.memoryUsage()),
      members: (this.#members?.view.live() ?? []).map((m) => memberStatus(m, now)),
      ...fileStatus,
      transfer: { served: this.#blockServer?.stats(), fetched: this.#blockClient?.stats() },
      ...(this.#channels != null ? { channels: await this.#channels.status() } : {}),
      counters: {
        ...(this.#ingest?.counters ?? {}),
        ...(this.#standby?.counters ?? {}),
        rejectedHeartbeats: this.#members?.rejectedMessages ?? 0,
        gaterRejections: this.#gate?.rejections ?? 0,
        ...this.#securityCounters(),
        fetchQueue: this.#holder?.queued.fetching ?? 0,
        processQueue: this.#holder?.queued.processing ?? 0,
        ...this.#fetchByCid?.counters()
      }
    }
  }

  /**
   * Messages refused for their sender's role or state or for breaking the protocol (rejectedMessages is the
   * sum), and peers cut off for going over a rate or size limit (rateLimited, penalties).
   */
  #securityCounters (): Record<string, number> {
    const control = this.#control?.stats()
    const blocks = this.#blockServer?.stats()
    const parts = {
      rejectedAssignments: this.#holder?.counters.rejectedAssignments ?? 0,
      rejectedReports: (this.#ingest?.counters.rejectedReports ?? 0) + (this.#standby?.counters.rejectedStandbyReports ?? 0),
      rejectedAnnouncements: this.#announcements.rejected,
      malformedControl: (control?.malformed ?? 0) + (control?.oversized ?? 0)
    }
    return {
      rejectedMessages: Object.values(parts).reduce((a, b) => a + b, 0),
      ...parts,
      ignoredAnnouncements: this.#announcements.ignored,
      repeatedAssignments: this.#holder?.counters.repeatedAssignments ?? 0,
      rateLimited: (control?.rate.limited ?? 0) + (blocks?.rate.limited ?? 0),
      penalties: (control?.rate.penalties ?? 0) + (blocks?.rate.penalties ?? 0),
      refusedPenalised: (control?.rate.refusedPenalised ?? 0) + (blocks?.rate.refusedPenalised ?? 0),
      refusedStreams: (control?.tooManyStreams ?? 0) + (blocks?.tooManyStreams ?? 0)
    }
  }

  /** Re-reads the peer allowlist (SIGHUP): a bad file keeps the old list; revoked peers are disconnected. */
  async reload (): Promise<void> {
    if (this.#gate == null || this.#node == null) {
      this.#log.info('reload: nothing to reload (no --allow-peers, or not started yet)')
      return
    }
    const result = await this.#gate.reload()
    if (result.ok) await applyAllowlist(this.#node, this.#gate, result.added, this.#log.child('gater'))
  }

  async stop (): Promise<void> {
    this.#ready = false
    clearInterval(this.#scrubTimer)
    await this.#inbox?.stop()
    this.#ingest?.stop()
    this.#handoff?.stop()
    this.#standby?.stop()
    await this.#holder?.stop()
    this.#members?.stop()
    await this.#api?.close()
    await this.#fetchByCid?.stop()
    await this.#channels?.stop()
    await this.#blockServer?.stop()
    await this.#node?.stop()
    await this.#store?.close()
    await fs.rm(path.join(this.config.dataDir, NODE_INFO_FILE), { force: true })
    this.#log.info('stopped')
  }
}
