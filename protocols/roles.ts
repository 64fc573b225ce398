/** Node roles. A node has one or more. */
export type Role = 'ingest' | 'process' | 'backup'
export const ROLES: readonly Role[] = ['ingest', 'process', 'backup']

export function isRole (s: unknown): s is Role {
  return s === 'ingest' || s === 'process' || s === 'backup'
}

/** Parses a comma-separated role list ("ingest,process"); throws RangeError naming the bad entry. */
export function parseRoles (s: string): Role[] {
  const out: Role[] = []
  for (const part of s.split(',').map((p) => p.trim()).filter((p) => p !== '')) {
    if (!isRole(part)) throw new RangeError(`unknown role "${part}": expected one of ${ROLES.join(', ')}`)
    if (!out.includes(part)) out.push(part)
  }
  if (out.length === 0) throw new RangeError(`no roles given: expected one or more of ${ROLES.join(', ')}`)
  return out
}
