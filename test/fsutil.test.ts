/** Durable filesystem steps and the fsync-failure policy. */

import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import {
  ExistsError, FSYNC_FATAL_EXIT_CODE, FsyncFailedError, ensureDir, fatalOnFsyncError, freeBytes, fsyncDir,
  linkNoClobber, renameDurable, setFatalHandler, syncHandle, writeFileDurable
} from '../node/fsutil.ts'

let dir: string
const fatal: FsyncFailedError[] = []

beforeAll(() => {
  setFatalHandler((err) => { fatal.push(err) })
})

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-fsutil-'))
  fatal.length = 0
})

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true })
})

function ioError (code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: simulated`), { code })
}

describe('writeFileDurable', () => {
  it('writes, replaces, and leaves no temp files', async () => {
    const file = path.join(dir, 'state.json')
    await writeFileDurable(file, 'one')
    expect(await fs.readFile(file, 'utf8')).toBe('one')
    await writeFileDurable(file, new Uint8Array([0x74, 0x77, 0x6f]))
    expect(await fs.readFile(file, 'utf8')).toBe('two')
    expect(await fs.readdir(dir)).toEqual(['state.json'])
  })

  it('applies the mode', async () => {
    const file = path.join(dir, 'key')
    await writeFileDurable(file, 'secret', { mode: 0o600 })
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600)
  })

  it('rejects in a missing directory and replaces a symlink instead of writing through it', async () => {
    await expect(writeFileDurable(path.join(dir, 'nope', 'f'), 'x')).rejects.toMatchObject({ code: 'ENOENT' })
    const victim = path.join(dir, 'victim')
    await fs.writeFile(victim, 'keep')
    await fs.symlink(victim, path.join(dir, 'link'))
    await writeFileDurable(path.join(dir, 'link'), 'new')
    expect(await fs.readFile(victim, 'utf8')).toBe('keep')
    expect((await fs.lstat(path.join(dir, 'link'))).isFile()).toBe(true)
  })
})

describe('renameDurable', () => {
  it('moves across directories', async () => {
    await fs.mkdir(path.join(dir, 'a'))
    await fs.mkdir(path.join(dir, 'b'))
    await fs.writeFile(path.join(dir, 'a', 'f'), 'x')
    await renameDurable(path.join(dir, 'a', 'f'), path.join(dir, 'b', 'g'))
    expect(await fs.readdir(path.join(dir, 'a'))).toEqual([])
    expect(await fs.readFile(path.join(dir, 'b', 'g'), 'utf8')).toBe('x')
  })
})

describe('linkNoClobber', () => {
  it('links a free name', async () => {
    await fs.writeFile(path.join(dir, 'src'), 'data')
    await linkNoClobber(path.join(dir, 'src'), path.join(dir, 'dst'))
    expect((await fs.stat(path.join(dir, 'dst'))).ino).toBe((await fs.stat(path.join(dir, 'src'))).ino)
  })

  it('never replaces an existing file, directory, or symlink (live or dangling)', async () => {
    await fs.writeFile(path.join(dir, 'src'), 'new')
    await fs.writeFile(path.join(dir, 'file'), 'old')
    await fs.mkdir(path.join(dir, 'sub'))
    const victim = path.join(dir, 'victim')
    await fs.writeFile(victim, 'victim')
    await fs.symlink(victim, path.join(dir, 'live'))
    await fs.symlink(path.join(dir, 'missing'), path.join(dir, 'dangling'))
    for (const name of ['file', 'sub', 'live', 'dangling']) {
      const err = await linkNoClobber(path.join(dir, 'src'), path.join(dir, name)).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(ExistsError)
      expect((err as ExistsError).name).toBe('ExistsError')
    }
    expect(await fs.readFile(path.join(dir, 'file'), 'utf8')).toBe('old')
    expect(await fs.readFile(victim, 'utf8')).toBe('victim')
    await expect(fs.access(path.join(dir, 'missing'))).rejects.toMatchObject({ code: 'ENOENT' })
  })

  it('passes other errors through', async () => {
    await expect(linkNoClobber(path.join(dir, 'absent'), path.join(dir, 'x'))).rejects.toMatchObject({ code: 'ENOENT' })
  })
})

describe('ensureDir', () => {
  it('creates nested directories, accepts existing ones, refuses a file', async () => {
    const deep = path.join(dir, 'a', 'b', 'c')
    await ensureDir(deep)
    expect((await fs.stat(deep)).isDirectory()).toBe(true)
    await ensureDir(deep)
    await fs.writeFile(path.join(dir, 'file'), '')
    await expect(ensureDir(path.join(dir, 'file'))).rejects.toThrow()
  })
})

describe('freeBytes and fsyncDir', () => {
  it('reports free space and syncs a directory', async () => {
    const free = await freeBytes(dir)
    expect(Number.isSafeInteger(free)).toBe(true)
    expect(free).toBeGreaterThan(0)
    await fsyncDir(dir)
    expect(fatal).toEqual([])
  })
})

describe('fsync failure policy', () => {
  it('the fatal handler can be set only once', () => {
    expect(() => { setFatalHandler(() => {}) }).toThrow(/already set/)
  })

  it('a failed fsync calls the fatal handler and throws, it is never retried', async () => {
    let calls = 0
    const fh = { sync: async () => { calls++; throw ioError('EIO') } }
    const err = await syncHandle(fh, '/data/block').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(FsyncFailedError)
    expect(err).toMatchObject({ name: 'FsyncFailedError', code: 'EIO', path: '/data/block' })
    expect(calls).toBe(1)
    expect(fatal).toHaveLength(1)
    expect(fatal[0]).toBe(err)
  })

  it.each(['EIO', 'ENOSPC', 'EROFS'])('%s is fatal', (code) => {
    expect(() => fatalOnFsyncError(ioError(code), '/x')).toThrow(FsyncFailedError)
    expect(fatal.map((e) => e.code)).toEqual([code])
  })

  it('by default logs and exits the process with status 70', () => {
    const url = pathToFileURL(path.resolve('node/fsutil.ts')).href
    const script = `import { fatalOnFsyncError } from ${JSON.stringify(url)}
fatalOnFsyncError(Object.assign(new Error('disk'), { code: 'EIO' }), '/data/x')
console.log('still running')`
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8', timeout: 20_000, env: { ...process.env, FILEMESH_LOG_FORMAT: 'json' }
    })
    expect(r.status, r.stderr).toBe(FSYNC_FATAL_EXIT_CODE)
    expect(r.stdout).toContain('fsync failed')
    expect(r.stdout).toContain('EIO')
    expect(r.stdout).not.toContain('still running')
  })
})
