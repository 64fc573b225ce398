/**
 * A real network partition (sim/netns.ts): four daemons, each in its own network namespace on one bridge.
 * proc2 is cut off from ingest, backup and proc1 while it runs a file it owns (its processing command is
 * held). The ingest's side must keep going: the coordinator stops seeing proc2, reassigns its files to proc1
 * after the grace period, and files dropped during the cut are processed and archived there. After the heal
 * every file is processed on the right bytes and archived byte-identical; a file run twice is one proc2 held
 * across the cut. Skipped, with the reason printed, where network namespaces cannot be made (not root, no
 * iproute2, FILEMESH_NETNS=off).
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { NetnsLab, netnsUnavailableReason } from '../sim/netns.ts'
import { checkOutcome, dropLikeRsync, payload, readProcessingLog, recordingCommand, sha256Hex } from '../sim/workload.ts'
import type { LedgerEntry } from '../sim/workload.ts'

/** Why namespaces cannot be used here (checked by making one), or undefined. */
async function probe (): Promise<string | undefined> {
  const reason = await netnsUnavailableReason()
  if (reason != null) return reason
  try {
    await (await NetnsLab.create(['probe'])).destroy()
    return undefined
  } catch (err: any) {
    return err?.message ?? String(err)
  }
}
const UNAVAILABLE = await probe()
if (UNAVAILABLE != null) process.stdout.write(`test/netns.test.ts skipped: ${UNAVAILABLE}\n`)

const NAMES = ['ingest', 'backup', 'proc1', 'proc2']
const P2P_PORT = 4201
const API_PORT = 5201
const FAST = ['--heartbeat-ms', '500', '--quiet-ms', '1000']

describe.skipIf(UNAVAILABLE != null)('network partition (namespaces)', () => {
  let root: string
  let lab: NetnsLab | undefined
  let mesh: LocalMesh
  const hold = (): string => path.join(root, 'hold-proc2')
  const records = (n: string): string => path.join(root, `${n}.records`)

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-netns-'))
    lab = await NetnsLab.create(NAMES)
    const token = randomBytes(24).toString('hex')
    await fs.writeFile(path.join(root, 'api-token'), token + '\n', { mode: 0o600 })
    mesh = new LocalMesh(root, { apiToken: token })
    await fs.writeFile(hold(), '')
    const l = lab
    const args = (name: string): string[] => ['--listen', `/ip4/${l.ip(name)}/tcp/${P2P_PORT}`, '--api', `${l.ip(name)}:${API_PORT}`, '--api-public', '--api-token-file', path.join(root, 'api-token'), ...FAST]
    const ingest = await mesh.start('ingest', { roles: ['ingest'], args: [...args('ingest'), '--reassign-grace-ms', '3000'], wrap: l.wrap('ingest') })
    const bootstrap = [ingest.info.addrs.find((a) => a.includes(l.ip('ingest'))) as string]
    await Promise.all([
      mesh.start('backup', { roles: ['backup'], args: args('backup'), bootstrap, wrap: l.wrap('backup') }),
      mesh.start('proc1', { roles: ['process'], args: [...args('proc1'), '--exec', recordingCommand(records('proc1'))], bootstrap, wrap: l.wrap('proc1') }),
      // proc2 runs nothing to the end while the hold file exists: a run in progress when the cut comes.
      mesh.start('proc2', { roles: ['process'], args: [...args('proc2'), '--exec', `while [ -e '${hold()}' ]; do sleep 0.1; done; ${recordingCommand(records('proc2'))}`], bootstrap, wrap: l.wrap('proc2') })
    ])
    await waitFor('the ingest to see all 4 members', async () => (await mesh.status('ingest')).members.length === 4, 20_000)
  }, 60_000)

  afterAll(async () => {
    await fs.rm(hold(), { force: true }).catch(() => {})
    await mesh?.stopAll()
    await lab?.destroy()
    if (root != null && process.env.FILEMESH_KEEP == null) await fs.rm(root, { recursive: true, force: true })
  })

  it('the ingest side keeps processing and archiving through a cut; after the heal every file is done', async () => {
    const l = lab as NetnsLab
    const inbox = mesh.get('ingest').info.inbox as string
    const ledger: LedgerEntry[] = []
    const drop = async (name: string): Promise<void> => {
      const bytes = payload(21, ledger.length, 200_000 + ledger.length * 1000)
      ledger.push({ name, size: bytes.length, sha256: sha256Hex(bytes) })
      await dropLikeRsync(inbox, name, bytes)
    }
    // Files until proc2 is running one (rendezvous decides which files it owns; it gets about half).
    for (let i = 0; i < 16; i++) {
      await drop(`before-${i}.bin`)
      const busy = await waitFor(`before-${i}.bin to be placed`, async () => {
        const s = await mesh.status('ingest')
        if (s.files.total < ledger.length) return undefined
        const p = await mesh.status('proc2')
        return { processing: p.owner.processing }
      }, 15_000, 100)
      if (busy.processing > 0) break
    }
    await waitFor('proc2 to run a file', async () => (await mesh.status('proc2')).owner.processing > 0, 10_000, 100)

    await l.cut([['ingest', 'backup', 'proc1'], ['proc2']])
    // The cut is real: the ingest stops hearing proc2, proc2 stops hearing everyone.
    await waitFor('the ingest to lose proc2', async () => (await mesh.status('ingest')).members.length === 3, 15_000)
    await waitFor('proc2 to lose the others', async () => (await mesh.status('proc2')).members.length === 1, 15_000)
    for (let i = 0; i < 5; i++) await drop(`during-${i}.bin`)
    const during = await waitFor('every file processed on the ingest side during the cut', async () => {
      const s = await mesh.status('ingest')
      return s.files.total === ledger.length && s.files.processed === ledger.length && s.files.deletedFromIngest === ledger.length ? s : undefined
    }, 30_000, 250)
    expect(during.counters.ownerReassignments).toBeGreaterThanOrEqual(1)
    expect((await mesh.status('ingest')).members.length).toBe(3)
    expect(l.sides).toEqual([['ingest', 'backup', 'proc1'], ['proc2']])

    // proc2 finishes what it held, then the cut heals.
    await fs.rm(hold())
    await l.heal()
    await waitFor('proc2 back in the ingest\'s view', async () => (await mesh.status('ingest')).members.length === 4, 15_000)
    await waitFor('proc2 idle', async () => {
      const p = await mesh.status('proc2')
      return p.owner.fetching + p.owner.stored + p.owner.processing === 0
    }, 20_000, 250)

    const report = await checkOutcome(ledger, mesh.get('backup').info.archive as string, [{ node: 'proc1', file: records('proc1') }, { node: 'proc2', file: records('proc2') }])
    expect(report.archivedOk).toBe(ledger.length)
    expect(report.archiveMissing).toEqual([])
    expect(report.notProcessed).toEqual([])
    expect(report.processedWrongBytes).toEqual([])
    // A duplicate can only be a file proc2 held across the cut, run again by proc1 under a later epoch.
    const proc2Runs = new Set((await readProcessingLog(records('proc2'), 'proc2')).map((r) => r.name))
    for (const name of report.processedTwiceOrMore) expect(proc2Runs.has(name)).toBe(true)
    for (const r of await readProcessingLog(records('proc2'), 'proc2')) expect(r.name).toMatch(/^before-/)
  }, 120_000)
})
