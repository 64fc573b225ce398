/**
 * File names from the network, made safe to create as one path component (reliability notes §3,
 * row 9 "path traversal"). A name arrives from any peer, so it may carry `..`, `/abs`, `\`, NUL,
 * control characters, bidi overrides that disguise an extension, or 10 KB of combining marks.
 * `sanitizeName` keeps as much of the original as is safe, so the archive stays browsable by a
 * person, and is idempotent. Pure: no I/O.
 */

import { FILE_NAME_BYTES_MAX, SANITIZED_NAME_BYTES_MAX } from './limits.ts'

/** What an empty, `.` or `..` name becomes. */
export const UNNAMED = 'unnamed'
/** An extension (from the last dot, dot included) longer than this is not kept apart when truncating. */
export const EXTENSION_BYTES_MAX = 32
/** Characters of the CID in a collision name. */
export const COLLISION_TAG_CHARS = 10

/**
 * Dropped from names: C0 controls, DEL, C1 controls, and the bidi formatting characters (marks,
 * embeddings, overrides, isolates) that can make `evil\u202Etxt.exe` display as `evilexe.txt`.
 */
// eslint-disable-next-line no-control-regex
const DROPPED_CHARS = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g
const SEPARATORS_AT_END = /[/\\]+$/
const FIXPOINT_ROUNDS_MAX = 4

const encoder = new TextEncoder()
const graphemes = new Intl.Segmenter('und', { granularity: 'grapheme' })

/** UTF-8 length of a well-formed string. */
export function utf8Bytes (s: string): number {
  return encoder.encode(s).length
}

/**
 * A single path component, safe to create, that keeps what it can of `raw`: NFC; the last component
 * on `/` or `\`; no control or bidi formatting characters; never empty, `.` or `..` (→ `unnamed`);
 * no leading dot (prefixed with `_`, so archived files are visible); at most SANITIZED_NAME_BYTES_MAX
 * (200) UTF-8 bytes, cut between grapheme clusters, keeping the extension, which leaves room for a
 * collision suffix within FILE_NAME_BYTES_MAX (255). `sanitizeName(sanitizeName(x)) === sanitizeName(x)`.
 */
export function sanitizeName (raw: string): string {
  let s = sanitizeStep(raw)
  for (let i = 0; i < FIXPOINT_ROUNDS_MAX; i++) {
    const next = sanitizeStep(s)
    if (next === s) return s
    s = next
  }
  // Not reached for any input we know of; `unnamed` is a fixed point, so idempotency still holds.
  return UNNAMED
}

/** True if `name` is already in the form sanitizeName produces. */
export function isSanitizedName (name: string): boolean {
  return sanitizeName(name) === name
}

function sanitizeStep (raw: string): string {
  let s = raw.toWellFormed().replace(DROPPED_CHARS, '').normalize('NFC')
  s = s.replace(SEPARATORS_AT_END, '')
  s = s.slice(Math.max(s.lastIndexOf('/'), s.lastIndexOf('\\')) + 1)
  if (s === '' || s === '.' || s === '..') return UNNAMED
  if (s.startsWith('.')) s = `_${s}`
  return truncateName(s, SANITIZED_NAME_BYTES_MAX)
}

/** `name` split into stem and extension (from the last dot, not a leading one; short extensions only). */
function splitExtension (name: string): { stem: string, ext: string } {
  const dot = name.lastIndexOf('.')
  if (dot > 0) {
    const ext = name.slice(dot)
    if (utf8Bytes(ext) <= EXTENSION_BYTES_MAX) return { stem: name.slice(0, dot), ext }
  }
  return { stem: name, ext: '' }
}

function truncateName (name: string, bytesMax: number): string {
  if (utf8Bytes(name) <= bytesMax) return name
  const { stem, ext } = splitExtension(name)
  return truncateUtf8(stem, bytesMax - utf8Bytes(ext)) + ext
}

/**
 * The longest prefix of `s` within `bytesMax` UTF-8 bytes, cut between grapheme clusters (so a letter
 * keeps its accents and the prefix of an NFC string stays NFC); if not even the first cluster fits
 * (one letter with thousands of combining marks), cut between code points.
 */
export function truncateUtf8 (s: string, bytesMax: number): string {
  if (utf8Bytes(s) <= bytesMax) return s
  let out = ''
  let bytes = 0
  for (const { segment } of graphemes.segment(s)) {
    const n = utf8Bytes(segment)
    if (bytes + n > bytesMax) break
    out += segment
    bytes += n
  }
  if (out !== '') return out
  for (const cp of s) {
    const n = utf8Bytes(cp)
    if (bytes + n > bytesMax) break
    out += cp
    bytes += n
  }
  return out
}

/**
 * The name to use when `name` is taken by other content: `stem~TAG.ext` for n = 0, `stem~TAG-n.ext`
 * for n ≥ 1, where TAG is the last 10 characters of the CID. (The first characters after the
 * multibase prefix are the CID header, e.g. `afybei` for every dag-pb sha2-256 CID, so the tail is
 * what tells two files apart.) The stem is shortened if needed so the result fits FILE_NAME_BYTES_MAX.
 * `name` should already be sanitised.
 */
export function collisionName (name: string, cid: string, n: number): string {
  const tag = cid.replace(/[^A-Za-z0-9]/g, '').slice(-COLLISION_TAG_CHARS)
  if (tag === '') throw new TypeError(`collisionName: CID ${JSON.stringify(cid)} has no usable characters`)
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`collisionName: n must be a non-negative integer, got ${n}`)
  const suffix = n === 0 ? `~${tag}` : `~${tag}-${n}`
  const { stem, ext } = splitExtension(name)
  return truncateUtf8(stem, FILE_NAME_BYTES_MAX - utf8Bytes(suffix) - utf8Bytes(ext)) + suffix + ext
}
