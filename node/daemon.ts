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
import { InboxWatcher } from './inbox.ts'
import { IngestService } from './ingest.ts'
import { createLogger } from './log.ts'
import { createMeshNode, loadOrCreateIdentity } from './mesh.ts'
import type { MeshNode } from './mesh.ts'
import { MembershipService } from './membership-service.ts'
import { collectFileStatus, memberStatus } from './status.ts'
import type { NodeStatus } from './status.ts'
import { Store } from './store.ts'

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
  /** Allow a non-loopback API address. */
  apiPublic?: boolean
  weight?: number
  heartbeatIntervalMs?: number
  /** Quiet period after which an in-place file without other evidence counts as complete. */
  inboxQuietMs?: number
  inboxRescanMs?: number
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
  #ready = false

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
    await ensureDir(cfg.dataDir)
    for (const dir of ['spool', 'work']) await ensureDir(path.join(cfg.dataDir, dir))
    this.#store = new Store(path.join(cfg.dataDir, 'db'))
    await this.#store.open()
    const store = this.#store
    const privateKey = await loadOrCreateIdentity(cfg.dataDir)
    this.#node = await createMeshNode({ privateKey, listen: cfg.listen, bootstrap: cfg.bootstrap })
    const node = this.#node
    const selfId = node.peerId.toString()
    const log = this.#log
    log.info('libp2p started', { peer: selfId, addrs: node.getMultiaddrs().map(String).join(' '), roles: cfg.roles.join(',') })

    this.#members = new MembershipService(node, { nowMs: () => performance.now() }, log.child('members'), { roles: cfg.roles, weight: cfg.weight, heartbeatIntervalMs: cfg.heartbeatIntervalMs })
    this.#control = new ControlChannel(node, log.child('control'))
    const local = new LocalBlocks(store, log.child('blocks'))
    this.#blockServer = new BlockServer({ node }, { source: local })
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
      this.#holder = new HolderService({ store, control: this.#control, client, local, log: log.child('holder'), selfId }, {
        roles: cfg.roles, workDir: path.join(cfg.dataDir, 'work'), archive, exec: cfg.exec, execConcurrency: cfg.execConcurrency, execAttemptsMax: cfg.execAttemptsMax, execTimeoutMs: cfg.execTimeoutMs
      })
      await this.#holder.start()
    }
    if (cfg.roles.includes('ingest')) {
      this.#ingest = new IngestService({ store, node, members: this.#members, control: this.#control, log: log.child('ingest') }, { spoolDir: path.join(cfg.dataDir, 'spool') })
    }
    await this.#control.start(async (from, msg) => await this.#dispatch(from, msg))
    this.#subscribeFiles()
    this.#members.start()

    this.#api = new ApiServer({ status: async () => await this.status(), ready: () => this.#ready }, log.child('api'))
    this.#apiAddr = await this.#api.listen(apiHostPort)

    await this.#holder?.reconcile()
    await this.#ingest?.reconcile()
    if (this.#ingest != null && this.inboxDir != null) {
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
    switch (msg.type) {
      case 'assign': return this.#holder != null ? await this.#holder.onAssign(from, msg) : refuse('wrong-role', 'this node holds no files')
      case 'receipt': return this.#ingest != null ? await this.#ingest.onReceipt(from, msg) : refuse('wrong-role', 'this node coordinates no files')
      case 'progress': return this.#ingest != null ? await this.#ingest.onProgress(from, msg) : refuse('wrong-role', 'this node coordinates no files')
    }
  }

  /** Announcements: accepted only from members with the ingest role; a holder named in one treats it as an assignment. */
  #subscribeFiles (): void {
    const node = this.#node as MeshNode
    const pubsub = node.services.pubsub
    const log = this.#log.child('files')
    pubsub.topicValidators.set(FILES_TOPIC, (_from, msg: Message) => {
      if (msg.type !== 'signed') return TopicValidatorResult.Reject
      try {
        if (decodeGossip(msg.data).type !== 'announce') return TopicValidatorResult.Reject
      } catch (err) {
        log.warn('rejected an announcement', { peer: msg.from.toString(), err: err instanceof MessageError ? err.message : err })
        return TopicValidatorResult.Reject
      }
      const sender = this.#members?.view.get(msg.from.toString())
      if (sender != null && !sender.roles.includes('ingest')) {
        log.warn('rejected an announcement from a non-ingest member', { peer: msg.from.toString() })
        return TopicValidatorResult.Reject
      }
      return TopicValidatorResult.Accept
    })
    pubsub.addEventListener('message', (evt) => {
      const msg = evt.detail
      if (msg.topic !== FILES_TOPIC || msg.type !== 'signed') return
      const from = msg.from.toString()
      if (this.#members?.view.get(from)?.roles.includes('ingest') !== true) return
      let ann
      try { ann = decodeGossip(msg.data) } catch { return }
      if (ann.type !== 'announce' || this.#holder == null) return
      const self = node.peerId.toString()
      for (const role of ['owner', 'backup'] as const) {
        if ((role === 'owner' ? ann.owner : ann.backup) !== self) continue
        this.#holder.onAssign(from, { type: 'assign', v: 1, cid: ann.cid, name: ann.name, size: ann.size, role, epoch: ann.epoch, sources: [from] })
          .catch((err) => { log.warn('announcement not taken', { cid: ann.cid, err }) })
      }
    })
    pubsub.subscribe(FILES_TOPIC)
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
      members: (this.#members?.view.live() ?? []).map((m) => memberStatus(m, now)),
      ...fileStatus,
      transfer: { served: this.#blockServer?.stats(), fetched: this.#blockClient?.stats() },
      counters: {
        ...(this.#ingest?.counters ?? {}),
        rejectedHeartbeats: this.#members?.rejectedMessages ?? 0,
        fetchQueue: this.#holder?.queued.fetching ?? 0,
        processQueue: this.#holder?.queued.processing ?? 0
      }
    }
  }

  async stop (): Promise<void> {
    this.#ready = false
    await this.#inbox?.stop()
    this.#ingest?.stop()
    await this.#holder?.stop()
    this.#members?.stop()
    await this.#api?.close()
    await this.#blockServer?.stop()
    await this.#node?.stop()
    await this.#store?.close()
    await fs.rm(path.join(this.config.dataDir, NODE_INFO_FILE), { force: true })
    this.#log.info('stopped')
  }
}
