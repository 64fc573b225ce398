/**
 * `filemesh drain` against real daemons: an idle processor becomes safe to remove at once and takes no new
 * files afterwards, and stays out of service across a restart until `run --undrain`; a backup holding the only
 * archive copies is never called safe (exit 75, with the reason).
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CLI_PATH, LocalMesh, waitFor } from '../sim/local-mesh.ts'
import { dropLikeRsync, payload, readProcessingLog, recordingCommand } from '../sim/workload.ts'

const run = promisify(execFile)
const FAST = ['--heartbeat-ms', '500']

describe('filemesh drain', () => {
  let root: string
  let mesh: LocalMesh

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-drain-'))
    mesh = new LocalMesh(root)
    await mesh.start('ingest', { roles: ['ingest'], args: FAST })
    for (const name of ['proc1', 'proc2']) await mesh.start(name, { roles: ['process'], args: [...FAST, '--exec', recordingCommand(path.join(root, `${name}.records`))] })
    await mesh.start('backup', { roles: ['backup'], args: FAST })
    await waitFor('all members seen by ingest', async () => (await mesh.status('ingest')).members.length === 4, 30_000)
  }, 60_000)

  afterAll(async () => {
    await mesh?.stopAll()
    if (root != null) await fs.rm(root, { recursive: true, force: true })
  })

  it('drains an idle processor, which then takes no new files', async () => {
    const { stdout } = await run(process.execPath, [CLI_PATH, 'drain', '--data', mesh.dataDir('proc2'), '--timeout-s', '20'])
    expect(stdout.trim()).toBe('safe to remove')
    await waitFor('the ingest node to see proc2 draining', async () => (await mesh.status('ingest')).members.find((m) => m.peerId === mesh.get('proc2').info.peerId)?.draining === true, 10_000)
    const inbox = mesh.get('ingest').info.inbox as string
    for (let i = 0; i < 8; i++) await dropLikeRsync(inbox, `after-drain-${i}.bin`, payload(41, i, 50_000 + i))
    await waitFor('all 8 processed', async () => (await mesh.status('ingest')).files.processed === 8, 60_000)
    expect(await readProcessingLog(path.join(root, 'proc2.records'), 'proc2')).toEqual([])
    expect(await readProcessingLog(path.join(root, 'proc1.records'), 'proc1')).toHaveLength(8)
  }, 90_000)

  it('a drained node stays drained across a SIGKILL and restart; `run --undrain` puts it back in service', async () => {
    const drainState = async (): Promise<boolean> => {
      const res = await fetch(`http://${mesh.get('proc2').info.api}/api/drain`)
      return ((await res.json()) as { draining: boolean }).draining
    }
    const seenDraining = async (): Promise<boolean | undefined> => (await mesh.status('ingest')).members.find((m) => m.peerId === mesh.get('proc2').info.peerId)?.draining
    expect(await drainState()).toBe(true) // drained by the test above
    await mesh.stop('proc2', 'SIGKILL')
    await mesh.restart('proc2')
    expect(await drainState()).toBe(true)
    expect(await fs.readFile(mesh.get('proc2').logPath, 'utf8')).toMatch(/stays out of service/)
    await mesh.stop('proc2')
    await mesh.start('proc2', { roles: ['process'], args: [...FAST, '--exec', recordingCommand(path.join(root, 'proc2.records')), '--undrain'] })
    expect(await drainState()).toBe(false)
    await waitFor('the ingest node to see proc2 in service again', async () => await seenDraining() === false, 10_000)
    // And it stays in service after a further restart: --undrain cleared the record.
    await mesh.stop('proc2', 'SIGKILL')
    await mesh.restart('proc2')
    expect(await drainState()).toBe(false)
  }, 60_000)

  it('never calls a backup with the only archive copies safe to remove', async () => {
    const err = await run(process.execPath, [CLI_PATH, 'drain', '--data', mesh.dataDir('backup'), '--timeout-s', '2']).catch((e) => e)
    expect(err.code).toBe(75)
    expect(err.stdout).toMatch(/not safe to remove yet/)
    expect(err.stdout).toMatch(/only in this node's archive/)
  }, 30_000)
})
