/**
 * `filemesh add`: hands files to an ingest node through its inbox, so it works whether or not the daemon is
 * up and needs no upload channel of its own. For each file: hash it here (the CID is printed), write a
 * `NAME.size` sidecar, copy (or hard-link) the bytes to a hidden temp name in the inbox, fsync, then link it
 * to its final name without ever replacing a waiting file of the same name, and fsync the directory. The
 * sidecar makes the file ready the moment it appears; the ingest node removes it with the file.
 */
import fs from 'node:fs/promises'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { sanitizeName } from '../protocols/names.ts'
import { ExistsError, fsyncDir, linkNoClobber, writeFileDurable } from './fsutil.ts'
import { hashFile } from './hasher.ts'

export interface AddedFile {
  file: string
  name: string
  cid: string
  size: number
}

export class AddError extends Error {
  override name = 'AddError'
}

export async function * addFiles (files: string[], opts: { inbox: string, link?: boolean }): AsyncGenerator<AddedFile> {
  await fs.mkdir(opts.inbox, { recursive: true })
  for (const file of files) {
    const st = await fs.stat(file).catch((err) => { throw new AddError(`cannot add ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`) })
    if (!st.isFile()) throw new AddError(`cannot add ${file}: not a regular file`)
    const name = sanitizeName(path.basename(file))
    const finalPath = path.join(opts.inbox, name)
    const tempPath = path.join(opts.inbox, `.${name.slice(0, 200)}.add-${randomBytes(4).toString('hex')}.tmp`)
    if (opts.link === true) {
      await fs.link(file, tempPath).catch(async (err) => {
        if (err.code !== 'EXDEV') throw err
        await fs.copyFile(file, tempPath, fs.constants.COPYFILE_EXCL)
      })
    } else {
      await fs.copyFile(file, tempPath, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE)
    }
    try {
      const fh = await fs.open(tempPath, 'r')
      try { await fh.sync() } finally { await fh.close() }
      // Hash the copy we hand over: its CID is the one the ingest node will compute.
      const manifest = await hashFile(tempPath)
      await writeFileDurable(`${finalPath}.size`, `${manifest.size}\n`)
      try {
        await linkNoClobber(tempPath, finalPath)
      } catch (err) {
        await fs.rm(`${finalPath}.size`, { force: true })
        if (err instanceof ExistsError) throw new AddError(`cannot add ${file}: a file named "${name}" is already waiting in ${opts.inbox}`)
        throw err
      }
      await fsyncDir(opts.inbox)
      yield { file, name, cid: manifest.root.toString(), size: manifest.size }
    } finally {
      await fs.rm(tempPath, { force: true })
    }
  }
}
