/** Property-style tests of name sanitising (reliability notes §3 row 9) over seeded random unicode. */

import * as path from 'node:path'
import { describe, expect, it } from 'vitest'
import { FILE_NAME_BYTES_MAX, SANITIZED_NAME_BYTES_MAX } from '../protocols/limits.ts'
import { prng } from '../sim/workload.ts'
import { COLLISION_TAG_CHARS, collisionName, isSanitizedName, sanitizeName, truncateUtf8, UNNAMED, utf8Bytes } from '../protocols/names.ts'

const HOSTILE_PIECES = [
  '/', '\\', '.', '..', '../', '..\\', '\0', '\n', '\r', '\t', '\x1b[31m', '\x7f', '\x85', '\x9b',
  '\u200e', '\u200f', '\u202e', '\u2066', '\u061c', '\u0301', '\u0308', '\u0323', '\u200d', '\ufeff',
  '\ud800', '\udfff', '👨‍👩‍👧', '🏳️‍🌈', 'é', 'e\u0301', '한', '\u1100\u1161\u11a8', 'Å', '\u212b', '日本',
  'C:\\', '~', '-', ' ', '%2e%2e%2f', '\u2215', '\uff0f', 'a', 'file', '.txt', '.tar.gz', '.'.repeat(40)
]

function randomCodePoint (rand: () => number): string {
  const r = rand()
  if (r < 0.5) return String.fromCodePoint(0x20 + Math.floor(rand() * 0x5f))
  if (r < 0.6) return String.fromCodePoint(Math.floor(rand() * 0xa0))
  if (r < 0.9) return String.fromCharCode(Math.floor(rand() * 0x10000)) // may be a lone surrogate
  return String.fromCodePoint(0x10000 + Math.floor(rand() * 0x100000))
}

function randomName (rand: () => number): string {
  const long = rand() < 0.05
  const parts = long ? 200 + Math.floor(rand() * 3000) : Math.floor(rand() * 24)
  let s = ''
  for (let i = 0; i < parts; i++) {
    s += rand() < 0.4 ? HOSTILE_PIECES[Math.floor(rand() * HOSTILE_PIECES.length)] : randomCodePoint(rand)
  }
  return s
}

// eslint-disable-next-line no-control-regex
const FORBIDDEN = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]/

function checkSafe (raw: string, out: string): void {
  const ctx = JSON.stringify(raw).slice(0, 200)
  expect(out, ctx).not.toBe('')
  expect(out, ctx).not.toBe('.')
  expect(out, ctx).not.toBe('..')
  expect(out.startsWith('.'), ctx).toBe(false)
  expect(FORBIDDEN.test(out), ctx).toBe(false)
  expect(out.isWellFormed(), ctx).toBe(true)
  expect(out.normalize('NFC'), ctx).toBe(out)
  expect(utf8Bytes(out), ctx).toBeLessThanOrEqual(SANITIZED_NAME_BYTES_MAX)
  expect(sanitizeName(out), ctx).toBe(out)
  const root = '/srv/archive'
  expect(path.relative(root, path.join(root, out)), ctx).toBe(out)
  expect(path.dirname(path.join(root, out)), ctx).toBe(root)
}

describe('sanitizeName', () => {
  it.each([
    ['../../etc/passwd', 'passwd'],
    ['/abs', 'abs'],
    ['/etc/', 'etc'],
    ['a\0b', 'ab'],
    ['..', UNNAMED],
    ['.', UNNAMED],
    ['', UNNAMED],
    ['/', UNNAMED],
    ['a/..', UNNAMED],
    ['..\\..\\windows\\system32\\drivers', 'drivers'],
    ['C:\\Users\\me\\report.pdf', 'report.pdf'],
    ['.bashrc', '_.bashrc'],
    ['...', '_...'],
    ['-rf', '-rf'],
    ['line\nbreak\ttab.txt', 'linebreaktab.txt'],
    ['e\u0301t\u00e9.txt', '\u00e9t\u00e9.txt'],
    ['\u212b.txt', '\u00c5.txt'],
    ['evil\u202etxt.exe', 'eviltxt.exe'],
    ['\u200fשלום.txt', 'שלום.txt'],
    ['report.final.pdf', 'report.final.pdf'],
    ['plain name with spaces (1).jpg', 'plain name with spaces (1).jpg']
  ])('%j -> %j', (raw, expected) => {
    expect(sanitizeName(raw)).toBe(expected)
    checkSafe(raw, sanitizeName(raw))
  })

  it('truncates a 10 KB name to 200 bytes and keeps the extension', () => {
    const out = sanitizeName('a'.repeat(10_000) + '.txt')
    expect(utf8Bytes(out)).toBe(SANITIZED_NAME_BYTES_MAX)
    expect(out.endsWith('.txt')).toBe(true)
    expect(out).toBe('a'.repeat(196) + '.txt')
  })

  it('never splits a code point or a grapheme cluster when truncating', () => {
    const cjk = sanitizeName('日'.repeat(100))
    expect(cjk).toBe('日'.repeat(66)) // 198 bytes; a 67th would make 201
    const emoji = sanitizeName('👨‍👩‍👧'.repeat(20) + '.png') // 18 bytes per family
    expect(emoji).toBe('👨‍👩‍👧'.repeat(10) + '.png')
    const accents = sanitizeName('e\u0301'.repeat(150)) // NFC: é = 2 bytes each
    expect(accents).toBe('\u00e9'.repeat(100))
  })

  it('cuts between code points when one grapheme is bigger than the limit', () => {
    const out = sanitizeName('a' + '\u0301\u0323'.repeat(5000))
    expect(out.startsWith('\u1ea1\u0323')).toBe(true) // NFC: a + dot below composes, marks reorder by class
    expect(utf8Bytes(out)).toBeGreaterThan(SANITIZED_NAME_BYTES_MAX - 4)
    checkSafe('zalgo', out)
  })

  it('does not keep an over-long "extension" apart', () => {
    const out = sanitizeName('x.' + 'y'.repeat(500))
    expect(out).toBe('x.' + 'y'.repeat(198))
  })

  it('holds its properties over 20,000 seeded random names', () => {
    for (let seed = 1; seed <= 20_000; seed++) {
      const raw = randomName(prng(seed))
      const out = sanitizeName(raw)
      try {
        checkSafe(raw, out)
      } catch (err) {
        throw new Error(`seed ${seed}: ${(err as Error).message}`)
      }
    }
  })

  it('keeps clean names unchanged', () => {
    const rand = prng(42)
    const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.()'
    for (let i = 0; i < 2000; i++) {
      let s = 'f'
      const n = Math.floor(rand() * 150)
      for (let j = 0; j < n; j++) s += alphabet[Math.floor(rand() * alphabet.length)]
      expect(sanitizeName(s)).toBe(s)
      expect(isSanitizedName(s)).toBe(true)
    }
    expect(isSanitizedName('../x')).toBe(false)
  })
})

describe('collisionName', () => {
  const cid = 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi'

  it('puts the CID tag and counter before the extension', () => {
    const tag = cid.slice(-COLLISION_TAG_CHARS)
    expect(collisionName('photo.jpg', cid, 0)).toBe(`photo~${tag}.jpg`)
    expect(collisionName('photo.jpg', cid, 2)).toBe(`photo~${tag}-2.jpg`)
    expect(collisionName('README', cid, 1)).toBe(`README~${tag}-1`)
    expect(collisionName('_.bashrc', cid, 0)).toBe(`_~${tag}.bashrc`)
  })

  it('stays a safe, distinct component within 255 bytes for any sanitised name', () => {
    for (let seed = 1; seed <= 3000; seed++) {
      const name = sanitizeName(randomName(prng(seed)))
      const seen = new Set<string>([name])
      for (const n of [0, 1, 7, 123456]) {
        const out = collisionName(name, cid, n)
        const ctx = `seed ${seed} n ${n} ${JSON.stringify(out)}`
        expect(utf8Bytes(out), ctx).toBeLessThanOrEqual(FILE_NAME_BYTES_MAX)
        expect(FORBIDDEN.test(out), ctx).toBe(false)
        expect(out.startsWith('.'), ctx).toBe(false)
        expect(out.isWellFormed(), ctx).toBe(true)
        expect(seen.has(out), ctx).toBe(false)
        seen.add(out)
      }
    }
  })

  it('fits a 255-byte name', () => {
    const out = collisionName('z'.repeat(255), cid, 99)
    expect(utf8Bytes(out)).toBe(FILE_NAME_BYTES_MAX)
    expect(out.endsWith(`~${cid.slice(-COLLISION_TAG_CHARS)}-99`)).toBe(true)
  })

  it('rejects bad input', () => {
    expect(() => collisionName('a', '', 0)).toThrow(TypeError)
    expect(() => collisionName('a', '/../', 0)).toThrow(TypeError)
    expect(() => collisionName('a', cid, -1)).toThrow(RangeError)
    expect(() => collisionName('a', cid, 1.5)).toThrow(RangeError)
  })
})

describe('truncateUtf8', () => {
  it('returns the longest prefix within the limit', () => {
    expect(truncateUtf8('abc', 10)).toBe('abc')
    expect(truncateUtf8('aé', 2)).toBe('a')
    expect(truncateUtf8('😀😀', 7)).toBe('😀')
    expect(truncateUtf8('😀', 3)).toBe('')
  })
})
