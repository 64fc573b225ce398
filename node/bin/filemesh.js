#!/usr/bin/env node
// Launcher: plain JavaScript so that any Node can read it. filemesh needs Node 24 (libp2p 3 needs 22+, and
// the sources are TypeScript run by Node 24's type stripping). On an older Node, re-run on the project's own
// Node 24 (the `node` devDependency) when it is installed, else say what to do.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const major = Number(process.versions.node.split('.')[0])
if (major >= 24) {
  await import('../cli.ts')
} else {
  const projectNode = join(here, '..', '..', 'node_modules', 'node', 'bin', 'node')
  if (existsSync(projectNode) && process.env.FILEMESH_REEXEC !== '1') {
    const r = spawnSync(projectNode, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit', env: { ...process.env, FILEMESH_REEXEC: '1' } })
    process.exit(r.status ?? (r.signal != null ? 128 + 15 : 1))
  }
  process.stderr.write(`filemesh needs Node.js 24 or newer; this is ${process.version}.\n` +
    'Run `npm ci` in the filemesh directory (it installs Node 24 as a devDependency) and use `npx filemesh`,\n' +
    'or install Node 24 (https://nodejs.org) and run it again.\n')
  process.exit(1)
}
