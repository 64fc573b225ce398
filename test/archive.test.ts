/** The archive: no overwrite ever, idempotent re-commit, names stay inside the root, index by CID. */

import * as fs from 'node:fs/promises'
import * as os from 'node:os'
import * as path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { Archive, ArchiveRootError, INCOMING_DIR_NAME, INDEX_FILE_NAME, PartFileError } from '../node/archive.ts'
import type { Logger } from '../node/log.ts'
import { hashBytes } from '../node/hasher.ts'
import { COLLISION_TAG_CHARS } from '../protocols/names.ts'

const CID_A = 'bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy'
const CID_B = 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'
const CID_C = 'bafkreidon73zkcrwdb5iafqtijxildoonbwnpv7dyd6ef3qdgads2jc4su'
const tag = (cid: string): string => cid.slice(-COLLISION_TAG_CHARS)

const quiet: Logger = { debug () {}, info () {}, warn () {}, error () {}, child: () => quiet }

let tmp: string
let root: string

beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'filemesh-archive-'))
  root = path.join(tmp, 'archive')
})

afterEach(async () => {
  await fs.rm(tmp, { recursive: true, force: true })
})

async function newArchive (dir = root): Promise<Archive> {
  const archive = new Archive({ dir, log: quiet, now: () => new Date('2025-01-02T03:04:05.000Z') })
  await archive.init()
  return archive
}

/** Writes `content` to the archive's part path for `cid`, as a fetcher would. */
async function part (archive: Archive, cid: string, content: string): Promise<string> {
  const p = archive.incomingPath(cid)
  await fs.writeFile(p, content)
  return p
}

async function listRoot (): Promise<string[]> {
  return (await fs.readdir(root)).filter((n) => n !== INCOMING_DIR_NAME && n !== INDEX_FILE_NAME).sort()
}

describe('Archive.init', () => {
  it('creates the directory and .incoming/', async () => {
    await newArchive()
    expect((await fs.lstat(path.join(root, INCOMING_DIR_NAME))).isDirectory()).toBe(true)
  })

  it('refuses a symlinked root, a file root, and a symlinked .incoming', async () => {
    const real = path.join(tmp, 'real')
    await fs.mkdir(real)
    await fs.symlink(real, root)
    await expect(newArchive()).rejects.toBeInstanceOf(ArchiveRootError)
    await fs.writeFile(path.join(tmp, 'file'), '')
    await expect(newArchive(path.join(tmp, 'file'))).rejects.toBeInstanceOf(ArchiveRootError)
    const other = path.join(tmp, 'other')
    await fs.mkdir(other)
    await fs.symlink(real, path.join(other, INCOMING_DIR_NAME))
    await expect(newArchive(other)).rejects.toThrow(/symlink/)
  })

  it('commit refuses a root that became a symlink', async () => {
    const archive = await newArchive()
    const p = await part(archive, CID_A, 'a')
    const moved = path.join(tmp, 'moved')
    await fs.rename(root, moved)
    await fs.mkdir(path.join(tmp, 'elsewhere'))
    await fs.symlink(path.join(tmp, 'elsewhere'), root)
    await expect(archive.commit(p.replace(root, moved), 'a.txt', CID_A)).rejects.toBeInstanceOf(ArchiveRootError)
    expect(await fs.readdir(path.join(tmp, 'elsewhere'))).toEqual([])
  })
})

describe('Archive.commit', () => {
  it('places the file under its name, removes the part, records the index', async () => {
    const archive = await newArchive()
    const p = await part(archive, CID_A, 'hello')
    const r = await archive.commit(p, 'hello.txt', CID_A)
    expect(r).toEqual({ path: path.join(root, 'hello.txt'), relPath: 'hello.txt', existed: false })
    expect(await fs.readFile(r.path, 'utf8')).toBe('hello')
    await expect(fs.access(p)).rejects.toMatchObject({ code: 'ENOENT' })
    expect(await fs.readFile(path.join(root, INDEX_FILE_NAME), 'utf8')).toBe(`${CID_A}\t5\thello.txt\t2025-01-02T03:04:05.000Z\n`)
    expect(await archive.lookup(CID_A)).toEqual({ cid: CID_A, size: 5, relPath: 'hello.txt', time: '2025-01-02T03:04:05.000Z' })
    expect(await archive.lookup(CID_B)).toBeUndefined()
  })

  it('never overwrites: a taken name gets the CID tag, then a counter', async () => {
    const archive = await newArchive()
    await fs.writeFile(path.join(root, 'a.txt'), 'by a person')
    const rB = await archive.commit(await part(archive, CID_B, 'bbb'), 'a.txt', CID_B)
    expect(rB.relPath).toBe(`a~${tag(CID_B)}.txt`)
    const rC = await archive.commit(await part(archive, CID_C, 'ccc'), 'a.txt', CID_C)
    expect(rC.relPath).toBe(`a~${tag(CID_C)}.txt`)
    // A foreign file squatting on B's collision name pushes B's next copy to -1.
    await fs.writeFile(path.join(root, `x~${tag(CID_B)}.txt`), 'squatter')
    await fs.writeFile(path.join(root, 'x.txt'), 'first')
    const rB2 = await archive.commit(await part(archive, CID_B, 'bbb'), 'x.txt', CID_B)
    expect(rB2.relPath).toBe(`x~${tag(CID_B)}-1.txt`)
    expect(await fs.readFile(path.join(root, 'a.txt'), 'utf8')).toBe('by a person')
    expect(await fs.readFile(path.join(root, 'x.txt'), 'utf8')).toBe('first')
    expect(await fs.readFile(path.join(root, `x~${tag(CID_B)}.txt`), 'utf8')).toBe('squatter')
    expect(await fs.readFile(rB.path, 'utf8')).toBe('bbb')
    expect(await fs.readFile(rC.path, 'utf8')).toBe('ccc')
  })

  it('re-committing the same CID under the same name is idempotent', async () => {
    const archive = await newArchive()
    const first = await archive.commit(await part(archive, CID_A, 'same'), 'doc.pdf', CID_A)
    const again = await archive.commit(await part(archive, CID_A, 'same'), 'doc.pdf', CID_A)
    expect(again).toEqual({ ...first, existed: true })
    expect(await listRoot()).toEqual(['doc.pdf'])
    expect(await fs.readdir(path.join(root, INCOMING_DIR_NAME))).toEqual([])
    const index = await fs.readFile(path.join(root, INDEX_FILE_NAME), 'utf8')
    expect(index.trim().split('\n')).toHaveLength(1)
    // After a restart too.
    const restarted = await newArchive()
    const third = await restarted.commit(await part(restarted, CID_A, 'same'), 'doc.pdf', CID_A)
    expect(third.existed).toBe(true)
    expect(await listRoot()).toEqual(['doc.pdf'])
  })

  it('finishes a commit that crashed between link and index line', async () => {
    const archive = await newArchive()
    const p = await part(archive, CID_A, 'crash')
    await fs.link(p, path.join(root, 'c.bin')) // the crashed attempt got this far
    const restarted = await newArchive()
    const r = await restarted.commit(p, 'c.bin', CID_A)
    expect(r).toEqual({ path: path.join(root, 'c.bin'), relPath: 'c.bin', existed: false })
    expect(await listRoot()).toEqual(['c.bin'])
    expect((await restarted.lookup(CID_A))?.relPath).toBe('c.bin')
    await expect(fs.access(p)).rejects.toMatchObject({ code: 'ENOENT' })
  })

  it('adopts a copy a crash left unindexed after its part file was removed and fetched again', async () => {
    const content = 'refetched after a crash'
    const cid = (await hashBytes(new TextEncoder().encode(content))).root.toString()
    const archive = await newArchive()
    const first = await part(archive, cid, content)
    await fs.link(first, path.join(root, 'd.bin')) // crashed after the link, before the index line
    await fs.rm(first) // the restarted fetcher starts from a fresh part file
    const restarted = await newArchive()
    const again = await part(restarted, cid, content)
    const r = await restarted.commit(again, 'd.bin', cid)
    expect(r.relPath).toBe('d.bin')
    expect(await listRoot()).toEqual(['d.bin'])
    expect((await restarted.lookup(cid))?.relPath).toBe('d.bin')
  })

  it('does not adopt an unindexed file of the same name with other bytes', async () => {
    const content = 'the real one'
    const cid = (await hashBytes(new TextEncoder().encode(content))).root.toString()
    const archive = await newArchive()
    await fs.writeFile(path.join(root, 'e.bin'), 'the old one!')
    const r = await archive.commit(await part(archive, cid, content), 'e.bin', cid)
    expect(r.relPath).not.toBe('e.bin')
    expect(await fs.readFile(path.join(root, 'e.bin'), 'utf8')).toBe('the old one!')
  })

  it('puts hostile names inside the root and nowhere else', async () => {
    const archive = await newArchive()
    const hostile = ['../../etc/passwd', '/abs', '..', '.', '', 'a\0b', '..\\..\\x', '.hidden', `${INCOMING_DIR_NAME}`,
      INDEX_FILE_NAME, 'dir/', 'x'.repeat(10_000), 'evil\u202etxt.exe', '\u0000\u0001']
    const before = (await fs.readdir(tmp)).sort()
    const seen = new Set<string>()
    for (const [i, name] of hostile.entries()) {
      const cid = `bafkreia${String(i).padStart(4, '0')}${'q'.repeat(40)}`
      const r = await archive.commit(await part(archive, cid, `content ${i}`), name, cid)
      expect(path.dirname(r.path)).toBe(root)
      expect(r.relPath.startsWith('.')).toBe(false)
      expect(seen.has(r.relPath)).toBe(false)
      seen.add(r.relPath)
      expect(await fs.readFile(r.path, 'utf8')).toBe(`content ${i}`)
    }
    expect((await fs.readdir(tmp)).sort()).toEqual(before)
    expect((await listRoot()).length).toBe(hostile.length)
    expect((await fs.lstat(path.join(root, INCOMING_DIR_NAME))).isDirectory()).toBe(true)
  })

  it('does not follow a symlink planted at the target name', async () => {
    const archive = await newArchive()
    const victim = path.join(tmp, 'victim')
    await fs.writeFile(victim, 'do not touch')
    await fs.symlink(victim, path.join(root, 'a.txt'))
    await fs.symlink(path.join(tmp, 'nowhere'), path.join(root, 'b.txt'))
    const rA = await archive.commit(await part(archive, CID_A, 'AAA'), 'a.txt', CID_A)
    const rB = await archive.commit(await part(archive, CID_B, 'BBB'), 'b.txt', CID_B)
    expect(rA.relPath).toBe(`a~${tag(CID_A)}.txt`)
    expect(rB.relPath).toBe(`b~${tag(CID_B)}.txt`)
    expect(await fs.readFile(victim, 'utf8')).toBe('do not touch')
    expect(await fs.readlink(path.join(root, 'a.txt'))).toBe(victim)
    await expect(fs.access(path.join(tmp, 'nowhere'))).rejects.toMatchObject({ code: 'ENOENT' })
    expect((await fs.lstat(rA.path)).isFile()).toBe(true)
  })

  it('a symlink replacing an archived file is not taken for it', async () => {
    const archive = await newArchive()
    const r = await archive.commit(await part(archive, CID_A, 'orig'), 'f.txt', CID_A)
    await fs.rm(r.path)
    await fs.writeFile(path.join(tmp, 'fake'), 'orig')
    await fs.symlink(path.join(tmp, 'fake'), r.path)
    const again = await archive.commit(await part(archive, CID_A, 'orig'), 'f.txt', CID_A)
    expect(again.existed).toBe(false)
    expect(again.relPath).toBe(`f~${tag(CID_A)}.txt`)
  })

  it('refuses a part that is a symlink or missing', async () => {
    const archive = await newArchive()
    await fs.writeFile(path.join(tmp, 'secret'), 'secret')
    const p = archive.incomingPath(CID_A)
    await fs.symlink(path.join(tmp, 'secret'), p)
    await expect(archive.commit(p, 'x', CID_A)).rejects.toBeInstanceOf(PartFileError)
    await expect(archive.commit(archive.incomingPath(CID_B), 'x', CID_B)).rejects.toBeInstanceOf(PartFileError)
    expect(await listRoot()).toEqual([])
  })

  it('rejects strings that are not CIDs', async () => {
    const archive = await newArchive()
    expect(() => archive.incomingPath('../x')).toThrow(TypeError)
    expect(() => archive.incomingPath('')).toThrow(TypeError)
  })

  it('concurrent commits of one name never clobber each other', async () => {
    const archive = await newArchive()
    const cids = Array.from({ length: 12 }, (_, i) => `bafkreib${String(i).padStart(3, '0')}${'z'.repeat(45)}`)
    const parts = await Promise.all(cids.map(async (cid, i) => part(archive, cid, `v${i}`)))
    const results = await Promise.all(cids.map(async (cid, i) => archive.commit(parts[i] as string, 'same.txt', cid)))
    expect(new Set(results.map((r) => r.relPath)).size).toBe(cids.length)
    for (const [i, r] of results.entries()) expect(await fs.readFile(r.path, 'utf8')).toBe(`v${i}`)
  })
})

describe('index', () => {
  it('round-trips through a restart and survives a torn last line', async () => {
    const archive = await newArchive()
    await archive.commit(await part(archive, CID_A, 'a'), 'one.txt', CID_A)
    await archive.commit(await part(archive, CID_B, 'bb'), 'two.txt', CID_B)
    await fs.appendFile(path.join(root, INDEX_FILE_NAME), `${CID_C}\t12`) // torn append
    const restarted = await newArchive()
    expect(await restarted.lookup(CID_A)).toMatchObject({ relPath: 'one.txt', size: 1 })
    expect(await restarted.lookup(CID_B)).toMatchObject({ relPath: 'two.txt', size: 2 })
    expect(await restarted.lookup(CID_C)).toBeUndefined()
    await restarted.commit(await part(restarted, CID_C, 'ccc'), 'three.txt', CID_C)
    const third = await newArchive()
    expect(await third.lookup(CID_C)).toMatchObject({ relPath: 'three.txt', size: 3 })
    expect(await third.lookup(CID_A)).toMatchObject({ relPath: 'one.txt' })
    const lines = (await fs.readFile(path.join(root, INDEX_FILE_NAME), 'utf8')).split('\n')
    expect(lines.filter((l) => l.startsWith(CID_C))).toEqual([`${CID_C}\t12`, `${CID_C}\t3\tthree.txt\t2025-01-02T03:04:05.000Z`])
  })
})
