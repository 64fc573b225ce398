/**
 * `npm start`: a real local mesh on loopback — 1 ingest, 3 processors, 1 backup, each a separate `filemesh run`
 * process in a temp dir — fed ~40 files of 1–20 MiB through the ingest node's inbox the way rsync writes
 * them. It waits until every file is processed and archived and the ingest copies are deleted, checks the
 * archive and the processing records against the sources, prints a summary, and cleans up (also on Ctrl-C).
 * Exit 0 only if every check passed.
 *
 *   npm start -- [--files 40] [--min-mib 1] [--max-mib 20] [--processors 3] [--seed 1] [--keep] [--timeout-s 300]
 */
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { LocalMesh, waitFor } from './local-mesh.ts'
import { checkOutcome, checkPassed, dropLikeRsync, listVisible, payload, prng, recordingCommand, sha256Hex } from './workload.ts'
import type { LedgerEntry } from './workload.ts'

const { values: opts } = parseArgs({
  options: {
    files: { type: 'string', default: '40' },
    'min-mib': { type: 'string', default: '1' },
    'max-mib': { type: 'string', default: '20' },
    processors: { type: 'string', default: '3' },
    seed: { type: 'string', default: '1' },
    'timeout-s': { type: 'string', default: '300' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})

if (opts.help) {
  process.stdout.write('usage: npm start -- [--files N] [--min-mib N] [--max-mib N] [--processors N] [--seed N] [--timeout-s N] [--keep]\n')
  process.exit(0)
}

const fileCount = Number(opts.files)
const minBytes = Math.round(Number(opts['min-mib']) * 1048576)
const maxBytes = Math.round(Number(opts['max-mib']) * 1048576)
const processorCount = Number(opts.processors)
const seed = Number(opts.seed)
const timeoutMs = Number(opts['timeout-s']) * 1000
const tty = process.stderr.isTTY === true
const say = (s: string): void => { process.stderr.write(s + '\n') }
/** How long the owners may take, after the last file is processed, to learn the archive holds it and drop their copies. */
const LEFTOVER_WAIT_MS = 30_000

const root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-demo-'))
const mesh = new LocalMesh(root)
let cleaning = false
async function cleanup (): Promise<void> {
  if (cleaning) return
  cleaning = true
  await mesh.stopAll()
  if (!opts.keep) await fs.rm(root, { recursive: true, force: true })
  else say(`kept ${root}`)
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    say(`\n${sig}: stopping the mesh and cleaning up`)
    cleanup().finally(() => process.exit(130))
  })
}

async function main (): Promise<boolean> {
  say(`filemesh demo: 1 ingest, ${processorCount} processors, 1 backup on loopback, in ${root}`)
  const ingest = await mesh.start('ingest', { roles: ['ingest'], args: ['--quiet-ms', '30000'] })
  const logs: Array<{ node: string, file: string }> = []
  await Promise.all([
    ...Array.from({ length: processorCount }, async (_, i) => {
      const name = `proc${i + 1}`
      const file = path.join(root, `${name}-processed.log`)
      logs.push({ node: name, file })
      await mesh.start(name, { roles: ['process'], args: ['--exec', recordingCommand(file)] })
    }),
    mesh.start('backup', { roles: ['backup'] })
  ])
  const archiveDir = mesh.get('backup').info.archive as string
  const inbox = ingest.info.inbox as string
  await waitFor('every member to be seen by the ingest node', async () => (await mesh.status('ingest')).members.length === processorCount + 2, 30_000)
  say(`mesh up: ${processorCount + 2} daemons, ingest ${ingest.info.peerId.slice(-8)}; dropping ${fileCount} files of ${opts['min-mib']}–${opts['max-mib']} MiB into ${inbox}`)

  const rand = prng(seed)
  const ledger: LedgerEntry[] = []
  let totalBytes = 0
  const started = performance.now()
  for (let i = 0; i < fileCount; i++) {
    const size = minBytes + Math.floor(rand() * (maxBytes - minBytes + 1))
    const name = `sample-${String(i + 1).padStart(3, '0')}.bin`
    const bytes = payload(seed, i, size)
    ledger.push({ name, size, sha256: sha256Hex(bytes) })
    totalBytes += size
    await dropLikeRsync(inbox, name, bytes)
  }
  const dropMs = performance.now() - started
  say(`dropped ${fileCount} files, ${(totalBytes / 1048576).toFixed(1)} MiB in ${(dropMs / 1000).toFixed(1)} s; waiting for processing and archiving`)

  let lastLine = 0
  const final = await waitFor('every file processed, archived and deleted from the ingest node', async () => {
    const s = await mesh.status('ingest')
    const f = s.files
    const now = performance.now()
    if (tty || now - lastLine > 2000) {
      lastLine = now
      const line = `  accepted ${f.total}/${fileCount}  on owner ${f.storedOnOwner}  on backup ${f.storedOnBackup}  processed ${f.processed}  ingest copy deleted ${f.deletedFromIngest}  failed ${f.failed}  ${((now - started) / 1000).toFixed(1)} s`
      process.stderr.write(tty ? `\r${line}\x1b[K` : `${line}\n`)
    }
    return f.total === fileCount && f.processed === fileCount && f.deletedFromIngest === fileCount && f.storedOnBackup === fileCount ? s : undefined
  }, timeoutMs, 250)
  const elapsedMs = performance.now() - started
  if (tty) process.stderr.write('\n')

  const report = await checkOutcome(ledger, archiveDir, logs)
  const listLeftovers = async (): Promise<string[]> => {
    const found = [
      ...(await listVisible(inbox)).map((n) => `inbox/${n}`),
      ...(await listVisible(path.join(mesh.dataDir('ingest'), 'spool'))).map((n) => `spool/${n}`)
    ]
    for (let i = 1; i <= processorCount; i++) found.push(...(await listVisible(path.join(mesh.dataDir(`proc${i}`), 'work'))).map((n) => `proc${i}/work/${n}`))
    return found
  }
  // An owner keeps its working copy until the coordinator confirms the archive holds the file, which can come
  // a moment after the last file counts as processed: give that a bounded time before calling a copy left over.
  let leftovers = await listLeftovers()
  if (leftovers.length > 0) {
    say(`waiting for ${leftovers.length} working copies to be released (an owner keeps its copy until the archive is confirmed)`)
    leftovers = await waitFor('working copies released', async () => {
      const left = await listLeftovers()
      return left.length === 0 ? left : undefined
    }, LEFTOVER_WAIT_MS, 250).catch(async () => await listLeftovers())
  }
  const ok = checkPassed(report) && leftovers.length === 0 && final.files.failed === 0

  const mib = totalBytes / 1048576
  const rows: Array<[string, string]> = [
    ['files', `${fileCount} (${report.processedOnce} processed exactly once, ${report.archivedOk} archived byte-identical)`],
    ['data', `${mib.toFixed(1)} MiB`],
    ...Object.entries(report.perProcessor).sort().map(([node, n]): [string, string] => [`  ${node}`, `${n} files`]),
    ['elapsed', `${(elapsedMs / 1000).toFixed(1)} s from first drop to last file processed and deleted from ingest`],
    ['throughput', `${(totalBytes / 1e6 / (elapsedMs / 1000)).toFixed(1)} MB/s end to end (${(fileCount / (elapsedMs / 1000)).toFixed(1)} files/s)`],
    ['leftovers', leftovers.length === 0 ? 'none (inbox, spool and work dirs empty)' : leftovers.join(', ')],
    ['result', ok ? 'PASS' : 'FAIL']
  ]
  process.stdout.write('\nfilemesh demo summary\n' + rows.map(([k, v]) => `  ${k.padEnd(12)} ${v}`).join('\n') + '\n')
  if (!ok) {
    process.stdout.write(`problems: ${JSON.stringify({ ...report, perProcessor: undefined, leftovers, failed: final.failed }, null, 2)}\n`)
    process.stdout.write(`daemon logs are in ${root} (kept)\n`)
    opts.keep = true
  }
  return ok
}

let ok = false
try {
  ok = await main()
} catch (err: any) {
  say(`\ndemo failed: ${err?.message ?? err}`)
  say(`daemon logs are in ${root} (kept)`)
  opts.keep = true
} finally {
  await cleanup()
}
process.exit(ok ? 0 : 1)
