/**
 * The `filemesh` command line: `run` (the daemon), `add` (hand files to an ingest node), `status` (members
 * and files by state), `keygen` (a new swarm key for a private mesh). stdout carries data (CIDs, tables,
 * JSON, keys); logs and messages go to stderr, except the daemon's structured log lines, which go to stdout
 * as a service's log does. SIGHUP makes `run` re-read its peer allowlist.
 * `get` fetches a file by its root CID through any node (get.ts). `publish` makes a file the next version of
 * a broadcast channel through a node run with --publisher (publish.ts, channels.ts).
 * Exit codes: 0 ok, 1 failure, 2 usage, 69 daemon unreachable, 75 try again later, 78 bad configuration.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander'
import { parseRoles } from '../protocols/roles.ts'
import { parseHostPort } from './api.ts'
import { Daemon, NODE_INFO_FILE } from './daemon.ts'
import type { NodeInfo } from './daemon.ts'
import { addFiles } from './add.ts'
import { configureLogging, isLogLevel } from './log.ts'
import type { NodeStatus } from './status.ts'
import type { DrainReport } from './drain.ts'
import type { ScrubReport } from './scrub.ts'
import { formatStatus } from './status-format.ts'
import { GetError, getFile } from './get.ts'
import type { GetFailure } from './get.ts'
import { parseCid } from '../protocols/cid-policy.ts'
import { SecurityConfigError, generateSwarmKey, loadApiToken, parseApiToken, writeSwarmKeyFile } from './security.ts'
import { PublishError, publishFile } from './publish.ts'
import type { PublishFailure } from './publish.ts'

export const EXIT_USAGE = 2
export const EXIT_UNAVAILABLE = 69
export const EXIT_TEMPFAIL = 75
export const EXIT_CONFIG = 78

const collect = (value: string, previous: string[] = []): string[] => [...previous, value]
const positiveInt = (what: string) => (value: string): number => {
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError(`${what} must be a positive integer`)
  return n
}

function program (): Command {
  const cmd = new Command('filemesh')
    .description('Peer-to-peer file distribution mesh: every file landing on an ingest node is processed by exactly one processing node and archived on a backup node, moved as content-addressed blocks over libp2p.')
    .version(process.env.npm_package_version ?? '0.1.0', '-V, --version')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => { process.stderr.write(s) } })

  cmd.command('run')
    .description('Run the daemon. Writes DIR/node.json (peer ID, addresses, API address) once it serves.')
    .requiredOption('--data <dir>', 'state directory: peer identity, database, spool (created if missing)')
    .requiredOption('--roles <list>', 'comma-separated roles: ingest, process, backup', (v) => {
      try { return parseRoles(v) } catch (err: any) { throw new InvalidArgumentError(err.message) }
    })
    .option('--listen <multiaddr>', 'address to listen on, repeatable (default /ip4/127.0.0.1/tcp/0)', collect)
    .option('--bootstrap <multiaddr>', 'full multiaddr (with /p2p/ID) of a member to join through, repeatable', collect)
    .option('--inbox <dir>', 'directory watched for new files (ingest role; default DIR/inbox)')
    .option('--exec <cmd>', 'processing command, run by /bin/sh -c with the file as $1 (process role)')
    .option('--exec-concurrency <n>', 'processing commands run at once', positiveInt('--exec-concurrency'), 2)
    .option('--exec-attempts <n>', 'attempts before a file is marked failed', positiveInt('--exec-attempts'), 3)
    .option('--exec-timeout-ms <ms>', 'time limit of one processing run', positiveInt('--exec-timeout-ms'), 3_600_000)
    .option('--archive <dir>', 'archive directory (backup role; default DIR/archive)')
    .option('--api <host:port>', 'local control API address', '127.0.0.1:0')
    .option('--api-public', 'allow a non-loopback --api address (also needs --api-token-file)')
    .option('--api-token-file <file>', 'file with the API bearer token; every API request must then send it')
    .option('--swarm-key <file>', 'swarm key (from `filemesh keygen`): only nodes with the same key can connect')
    .option('--allow-peers <file>', 'allowlist: one peer ID per line (# comments); others are refused both ways; re-read on SIGHUP')
    .option('--weight <n>', 'relative capacity for placement', (v) => { const n = Number(v); if (!(n > 0)) throw new InvalidArgumentError('--weight must be > 0'); return n }, 1)
    .option('--quiet-ms <ms>', 'an in-place file unchanged this long, and open by no writer, counts as complete', positiveInt('--quiet-ms'), 30_000)
    .option('--heartbeat-ms <ms>', 'membership heartbeat interval', positiveInt('--heartbeat-ms'), 1_000)
    .option('--stop-timeout-ms <ms>', 'on SIGTERM/SIGINT, how long running fetches and processing may take to finish (interrupted work resumes after a restart)', positiveInt('--stop-timeout-ms'), 30_000)
    .option('--undrain', 'put back in service a node whose drain (`filemesh drain`) was recorded before this start: a drained node otherwise stays out of service across restarts')
    .option('--reassign-grace-ms <ms>', 'an owner or backup gone this long is replaced by the next in rendezvous order (ingest role; backup role after a takeover)', positiveInt('--reassign-grace-ms'), 15_000)
    .option('--takeover-grace-ms <ms>', 'a file\'s ingest node gone this long: its backup takes over coordinating the file if it is released and not processed (backup role; default 2 x --reassign-grace-ms)', positiveInt('--takeover-grace-ms'))
    .option('--min-free-bytes <n>', 'refuse new files when free space in the work or archive directory would fall below this', positiveInt('--min-free-bytes'), 1024 * 1024 * 1024)
    .option('--follow <channel>', 'follow a broadcast channel (repeatable): each new version is fetched from the swarm into CHANNELS/NAME/NAME.vN and NAME.current switched to it atomically', collect)
    .option('--follow-all', 'follow every channel a listed publisher announces')
    .option('--channel-publishers <file>', 'peer IDs allowed to publish channel versions, one per line (# comments); needed to follow')
    .option('--publisher', 'allow `filemesh publish` through this node (followers must list its peer ID)')
    .option('--channels-dir <dir>', 'broadcast channels directory (default DIR/channels)')
    .option('--channel-keep <n>', 'versions of each channel kept on disk', positiveInt('--channel-keep'), 3)
    .option('--channel-sync-ms <ms>', 'how often a follower tells the mesh which version it holds (a node knowing a newer one re-announces it)', positiveInt('--channel-sync-ms'), 10_000)
    .addOption(new Option('--log-level <level>', 'log level').choices(['debug', 'info', 'warn', 'error']).default(process.env.FILEMESH_LOG_LEVEL ?? 'info'))
    .action(async (opts) => { await runDaemon(opts) })

  cmd.command('add')
    .description('Hand files to an ingest node: hash each locally, copy it atomically into the node\'s inbox, and print its CID (one per line). Works while the daemon is down when --data is given.')
    .argument('<file...>', 'files to add')
    .option('--data <dir>', 'the ingest node\'s state directory')
    .option('--api <host:port>', 'the ingest node\'s control API')
    .option('--link', 'hard-link instead of copying (only if nothing will modify the file afterwards)')
    .option('--api-token-file <file>', 'the API token, if the node\'s API needs one (or set FILEMESH_API_TOKEN)')
    .action(async (files: string[], opts) => {
      const inbox = await findInbox(opts)
      for await (const added of addFiles(files, { inbox, link: opts.link === true })) process.stdout.write(`${added.cid}\n`)
    })

  cmd.command('publish')
    .description('Publish FILE as the next version of a broadcast channel, through a node run with --publisher: the node keeps a copy and announces it; every node following the channel fetches it from the swarm and switches CHANNELS/NAME/NAME.current to it. Prints CHANNEL.vVERSION and the CID.')
    .argument('<file>', 'the file to publish')
    .requiredOption('--channel <name>', 'channel name (1-64 of A-Z a-z 0-9 . _ -)')
    .option('--data <dir>', 'the publishing node\'s state directory')
    .option('--api <host:port>', 'the publishing node\'s control API')
    .option('--api-token-file <file>', 'the API token, if the node\'s API needs one (or set FILEMESH_API_TOKEN)')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExit codes: 0 published; 1 refused (not a publisher node) or failed; 2 usage (bad channel name, no such file); 69 the daemon is unreachable; 78 bad token file.\n')
    .action(async (file: string, opts) => {
      const api = await apiAddress(opts)
      const token = await clientToken(opts)
      try {
        const r = await publishFile({ api, token, channel: opts.channel, file })
        process.stdout.write(opts.json === true ? JSON.stringify(r) + '\n' : `${r.channel}.v${r.version} ${r.cid}\n`)
      } catch (err) {
        if (err instanceof PublishError) throw new CliError(err.message, PUBLISH_EXIT[err.reason])
        throw err
      }
    })

  cmd.command('status')
    .description('Show live members and this node\'s files by state')
    .option('--data <dir>', 'the node\'s state directory (reads DIR/node.json for the API address)')
    .option('--api <host:port>', 'the node\'s control API')
    .option('--json', 'print the status document as JSON')
    .option('--api-token-file <file>', 'the API token, if the node\'s API needs one (or set FILEMESH_API_TOKEN)')
    .action(async (opts) => {
      const status = await fetchStatus(await apiAddress(opts), await clientToken(opts))
      process.stdout.write(opts.json === true ? JSON.stringify(status, null, 2) + '\n' : formatStatus(status))
    })

  cmd.command('drain')
    .description('Take a node out of service: it stops taking new files, hands files it has not started to other members, and finishes the rest. Waits and prints "safe to remove" (exit 0), or what still blocks it (exit 75 after --timeout-s).')
    .option('--data <dir>', 'the node\'s state directory')
    .option('--api <host:port>', 'the node\'s control API')
    .option('--api-token-file <file>', 'the API token, if the node\'s API needs one (or set FILEMESH_API_TOKEN)')
    .option('--timeout-s <s>', 'how long to wait for the node to become safe to remove', positiveInt('--timeout-s'), 600)
    .option('--no-wait', 'start draining and report once, without waiting')
    .action(async (opts) => {
      const api = await apiAddress(opts)
      const token = await clientToken(opts)
      let report = await apiRequest<DrainReport>(api, token, '/api/drain', 'POST')
      const deadline = Date.now() + opts.timeoutS * 1000
      let last = ''
      while (!report.safe && opts.wait !== false && Date.now() < deadline) {
        const now = report.blockers.join('; ')
        if (now !== last) process.stderr.write(`waiting: ${now}\n`)
        last = now
        await new Promise((resolve) => setTimeout(resolve, 1000))
        report = await apiRequest<DrainReport>(api, token, '/api/drain', 'GET')
      }
      if (report.safe) {
        process.stdout.write('safe to remove\n')
        return
      }
      process.stdout.write(`not safe to remove yet:\n${report.blockers.map((b) => `  - ${b}`).join('\n')}\n`)
      process.exitCode = EXIT_TEMPFAIL
    })

  cmd.command('scrub')
    .description('Re-hash every file the node stores against its CID now, repair corrupt copies from other members, and print the report (exit 1 if a corrupt copy could not be repaired).')
    .option('--data <dir>', 'the node\'s state directory')
    .option('--api <host:port>', 'the node\'s control API')
    .option('--api-token-file <file>', 'the API token, if the node\'s API needs one (or set FILEMESH_API_TOKEN)')
    .option('--json', 'print the report as JSON')
    .action(async (opts) => {
      const report = await apiRequest<ScrubReport>(await apiAddress(opts), await clientToken(opts), '/api/scrub', 'POST')
      process.stdout.write(opts.json === true
        ? JSON.stringify(report) + '\n'
        : `checked ${report.checked} file(s), ${(report.bytes / 1048576).toFixed(1)} MiB in ${(report.ms / 1000).toFixed(1)} s: ${report.corrupt} corrupt, ${report.repaired} repaired${report.unrecoverable.length > 0 ? `, UNRECOVERABLE: ${report.unrecoverable.join(' ')}` : ''}\n`)
      if (report.unrecoverable.length > 0) process.exitCode = 1
    })

  cmd.command('get')
    .description('Fetch the file whose root CID is CID from whichever live members hold it, through a node that need not hold any of it: pulled from several holders at once, every block verified, the whole file re-hashed to CID. Writes PATH atomically (PATH.part, fsync, rename: never a partial PATH) or stdout; shows a progress bar on stderr when it is a terminal.')
    .argument('<cid>', 'root CID of the file (CIDv1, raw or dag-pb, sha2-256), as `filemesh add` prints it')
    .option('-o, --output <path>', 'write to PATH instead of stdout')
    .option('--force', 'replace PATH if it already exists')
    .option('--data <dir>', 'the state directory of the node to fetch through')
    .option('--api <host:port>', 'the control API of the node to fetch through')
    .option('--api-token-file <file>', 'the API token, if the node\'s API needs one (or set FILEMESH_API_TOKEN)')
    .option('--timeout-s <s>', 'give up after this many seconds (exit 75); default: no limit', positiveInt('--timeout-s'))
    .addHelpText('after', '\nExit codes: 0 written and verified; 1 no live member holds CID, or the transfer or the verification failed (nothing is left at PATH); 2 invalid CID or usage; 69 the daemon is unreachable; 75 timed out, or the node serves too many gets (try again); 78 bad token file; 130 interrupted.\n')
    .action(async (cid: string, opts) => { await runGet(cid, opts) })

  cmd.command('keygen')
    .description('Print a new swarm key (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits). Give the same file to every member with `run --swarm-key FILE`; keep it secret.')
    .option('-o, --output <file>', 'write the key to FILE (mode 0600; never overwrites) instead of stdout')
    .action(async (opts) => {
      const key = generateSwarmKey()
      if (opts.output == null) { process.stdout.write(key); return }
      try {
        await writeSwarmKeyFile(opts.output, key)
      } catch (err) {
        throw new CliError(err instanceof Error ? err.message : String(err), 1)
      }
    })
  return cmd
}

class CliError extends Error {
  override name = 'CliError'
  readonly exitCode: number
  constructor (message: string, exitCode: number) {
    super(message)
    this.exitCode = exitCode
  }
}

async function readNodeInfo (dataDir: string): Promise<NodeInfo | undefined> {
  try {
    return JSON.parse(await fs.readFile(path.join(dataDir, NODE_INFO_FILE), 'utf8')) as NodeInfo
  } catch (err: any) {
    if (err.code === 'ENOENT') return undefined
    throw new CliError(`cannot read ${path.join(dataDir, NODE_INFO_FILE)}: ${err.message}`, 1)
  }
}

async function apiAddress (opts: { data?: string, api?: string }): Promise<string> {
  if (opts.api != null) return opts.api
  if (opts.data == null) throw new CliError('say which node: --data DIR or --api HOST:PORT', EXIT_USAGE)
  const info = await readNodeInfo(opts.data)
  if (info == null) throw new CliError(`no daemon is serving from ${opts.data} (no ${NODE_INFO_FILE}); start it with \`filemesh run --data ${opts.data} ...\``, EXIT_UNAVAILABLE)
  return info.api
}

/** The API token a client sends: from --api-token-file, else FILEMESH_API_TOKEN, else none. */
async function clientToken (opts: { apiTokenFile?: string }): Promise<string | undefined> {
  try {
    if (opts.apiTokenFile != null) return await loadApiToken(opts.apiTokenFile)
    const env = process.env.FILEMESH_API_TOKEN
    return env != null && env.trim() !== '' ? parseApiToken(env, 'FILEMESH_API_TOKEN') : undefined
  } catch (err) {
    throw new CliError(err instanceof Error ? err.message : String(err), err instanceof SecurityConfigError ? EXIT_CONFIG : 1)
  }
}

async function fetchStatus (api: string, token?: string): Promise<NodeStatus> {
  return await apiRequest<NodeStatus>(api, token, '/api/status', 'GET')
}

async function apiRequest<T> (api: string, token: string | undefined, urlPath: string, method: 'GET' | 'POST', timeoutMs = 600_000): Promise<T> {
  const { host, port } = parseHostPort(api)
  let res: Response
  try {
    res = await fetch(`http://${host.includes(':') ? `[${host}]` : host}:${port}${urlPath}`, { method, signal: AbortSignal.timeout(timeoutMs), headers: token != null ? { authorization: `Bearer ${token}` } : {} })
  } catch (err: any) {
    throw new CliError(`cannot reach the daemon's API at ${api}: ${err.cause?.code ?? err.message}. Is it running?`, EXIT_UNAVAILABLE)
  }
  if (res.status === 401) throw new CliError(`the daemon at ${api} refused the request (401): ${token == null ? 'its API needs a token; pass --api-token-file FILE or set FILEMESH_API_TOKEN' : 'wrong API token'}`, 1)
  if (!res.ok) throw new CliError(`the daemon at ${api} answered ${res.status}`, 1)
  return await res.json() as T
}

async function findInbox (opts: { data?: string, api?: string, apiTokenFile?: string }): Promise<string> {
  if (opts.api != null) {
    const status = await fetchStatus(opts.api, await clientToken(opts))
    if (status.inbox == null) throw new CliError(`the node at ${opts.api} has no ingest role`, 1)
    return status.inbox
  }
  if (opts.data == null) throw new CliError('say which ingest node: --data DIR or --api HOST:PORT', EXIT_USAGE)
  const info = await readNodeInfo(opts.data)
  if (info != null && info.inbox == null) throw new CliError(`the node serving from ${opts.data} has no ingest role`, 1)
  return info?.inbox ?? path.join(opts.data, 'inbox')
}

const GET_EXIT: Record<GetFailure, number> = {
  usage: EXIT_USAGE, 'bad-cid': EXIT_USAGE, unreachable: EXIT_UNAVAILABLE, unauthorized: 1, 'not-found': 1, exists: 1, failed: 1, busy: EXIT_TEMPFAIL, timeout: EXIT_TEMPFAIL, interrupted: 130
}

async function runGet (cid: string, opts: Record<string, any>): Promise<void> {
  try {
    parseCid(cid)
  } catch (err) {
    throw new CliError(err instanceof Error ? err.message : String(err), EXIT_USAGE)
  }
  if (opts.output == null && process.stdout.isTTY === true) throw new CliError('refusing to write a file to the terminal: pass -o PATH or redirect stdout', EXIT_USAGE)
  const api = await apiAddress(opts)
  const token = await clientToken(opts)
  const interrupt = new AbortController()
  const onSignal = (): void => { interrupt.abort(new Error('interrupted')) }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    await getFile({ api, token, cid, output: opts.output, force: opts.force === true, timeoutMs: opts.timeoutS != null ? opts.timeoutS * 1000 : undefined, progress: process.stderr.isTTY === true ? process.stderr : undefined, signal: interrupt.signal })
  } catch (err) {
    if (err instanceof GetError) throw new CliError(err.message, GET_EXIT[err.reason])
    throw err
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

const PUBLISH_EXIT: Record<PublishFailure, number> = { usage: EXIT_USAGE, unreachable: EXIT_UNAVAILABLE, unauthorized: 1, refused: 1, failed: 1 }

async function runDaemon (opts: Record<string, any>): Promise<void> {
  if (isLogLevel(opts.logLevel)) configureLogging({ level: opts.logLevel })
  const daemon = new Daemon({
    dataDir: path.resolve(opts.data),
    roles: opts.roles,
    listen: opts.listen,
    bootstrap: opts.bootstrap,
    inboxDir: opts.inbox != null ? path.resolve(opts.inbox) : undefined,
    archiveDir: opts.archive != null ? path.resolve(opts.archive) : undefined,
    exec: opts.exec,
    execConcurrency: opts.execConcurrency,
    execAttemptsMax: opts.execAttempts,
    execTimeoutMs: opts.execTimeoutMs,
    api: opts.api,
    apiPublic: opts.apiPublic === true,
    apiTokenFile: opts.apiTokenFile != null ? path.resolve(opts.apiTokenFile) : undefined,
    swarmKeyFile: opts.swarmKey != null ? path.resolve(opts.swarmKey) : undefined,
    allowPeersFile: opts.allowPeers != null ? path.resolve(opts.allowPeers) : undefined,
    weight: opts.weight,
    inboxQuietMs: opts.quietMs,
    heartbeatIntervalMs: opts.heartbeatMs,
    reassignGraceMs: opts.reassignGraceMs,
    takeoverGraceMs: opts.takeoverGraceMs,
    undrain: opts.undrain === true,
    minFreeBytes: opts.minFreeBytes,
    follow: opts.follow,
    followAll: opts.followAll === true,
    publisher: opts.publisher === true,
    channelPublishersFile: opts.channelPublishers != null ? path.resolve(opts.channelPublishers) : undefined,
    channelsDir: opts.channelsDir != null ? path.resolve(opts.channelsDir) : undefined,
    channelKeep: opts.channelKeep,
    channelSyncMs: opts.channelSyncMs
  })
  let stopping = false
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopping) {
      process.stderr.write(`filemesh: second ${sig}, exiting now\n`)
      process.exit(sig === 'SIGINT' ? 130 : 143)
    }
    stopping = true
    process.stderr.write(`filemesh: ${sig} received: taking no new work, letting running work finish for up to ${opts.stopTimeoutMs} ms (send it again to exit at once)\n`)
    daemon.quiesce()
      .then(async () => await daemon.settle(opts.stopTimeoutMs))
      .then(async () => { await daemon.stop() })
      .then(() => process.exit(0), (err) => {
      process.stderr.write(`filemesh: error while stopping: ${err?.message ?? err}\n`)
      process.exit(1)
    })
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  process.on('SIGHUP', () => {
    if (stopping) return
    daemon.reload().catch((err) => { process.stderr.write(`filemesh: reload failed: ${err?.message ?? err}\n`) })
  })
  try {
    await daemon.start()
  } catch (err: any) {
    await daemon.stop().catch(() => {})
    throw new CliError(`cannot start: ${err?.message ?? err}`, err instanceof RangeError ? EXIT_CONFIG : 1)
  }
}

export async function main (argv: string[]): Promise<void> {
  try {
    await program().parseAsync(argv)
  } catch (err: any) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? 0 : (err.code === 'commander.executeSubCommandAsync' ? 1 : EXIT_USAGE)
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') process.exitCode = 0
      return
    }
    process.stderr.write(`filemesh: ${err?.message ?? err}\n`)
    process.exitCode = err instanceof CliError ? err.exitCode : 1
  }
}

await main(process.argv)
