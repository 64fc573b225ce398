/**
 * Structured logging: one line per event on stdout, JSON off a TTY and logfmt on one
 * (FILEMESH_LOG_FORMAT=json|logfmt overrides). One logger per component; fields carry
 * the file's `cid`, the `peer`, `bytes`, `ms`, `err` so lines can be grepped and joined.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error'

export interface Logger {
  debug: (msg: string, fields?: LogFields) => void
  info: (msg: string, fields?: LogFields) => void
  warn: (msg: string, fields?: LogFields) => void
  error: (msg: string, fields?: LogFields) => void
  /** A logger for a sub-component that adds `fields` to every line. */
  child: (component: string, fields?: LogFields) => Logger
}

export type LogFields = Record<string, unknown>

const LEVEL_RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 }

export interface LogSink {
  write: (line: string) => void
}

let globalLevel: LogLevel = parseLevel(process.env.FILEMESH_LOG_LEVEL) ?? 'info'
let globalFormat: 'json' | 'logfmt' = process.env.FILEMESH_LOG_FORMAT === 'logfmt' || (process.env.FILEMESH_LOG_FORMAT !== 'json' && process.stdout.isTTY === true) ? 'logfmt' : 'json'
let sink: LogSink = { write: (line) => { process.stdout.write(line) } }
const baseFields: LogFields = {}

function parseLevel (s: string | undefined): LogLevel | undefined {
  return s === 'debug' || s === 'info' || s === 'warn' || s === 'error' ? s : undefined
}

/** Sets process-wide logging options (level, format, fields on every line such as the node name). */
export function configureLogging (opts: { level?: LogLevel, format?: 'json' | 'logfmt', sink?: LogSink, fields?: LogFields }): void {
  if (opts.level != null) globalLevel = opts.level
  if (opts.format != null) globalFormat = opts.format
  if (opts.sink != null) sink = opts.sink
  if (opts.fields != null) Object.assign(baseFields, opts.fields)
}

export function isLogLevel (s: string): s is LogLevel {
  return parseLevel(s) != null
}

function errorFields (err: unknown): unknown {
  if (err instanceof Error) return `${err.name}: ${err.message}`
  return String(err)
}

function logfmtValue (v: unknown): string {
  const s = typeof v === 'string' ? v : (v instanceof Error ? errorFields(v) as string : JSON.stringify(v) ?? 'undefined')
  return /^[\w.:/@+-]+$/.test(s) ? s : JSON.stringify(s)
}

function emit (level: LogLevel, component: string, fields: LogFields, msg: string, extra?: LogFields): void {
  if (LEVEL_RANK[level] < LEVEL_RANK[globalLevel]) return
  const all: LogFields = { ...baseFields, ...fields, ...extra }
  if ('err' in all) all.err = errorFields(all.err)
  let line: string
  if (globalFormat === 'json') {
    line = JSON.stringify({ time: new Date().toISOString(), level, component, msg, ...all }, (_k, v) => typeof v === 'bigint' ? v.toString() : v)
  } else {
    const parts = [new Date().toISOString(), level.toUpperCase().padEnd(5), `[${component}]`, msg]
    for (const [k, v] of Object.entries(all)) {
      if (v !== undefined) parts.push(`${k}=${logfmtValue(v)}`)
    }
    line = parts.join(' ')
  }
  sink.write(line + '\n')
}

export function createLogger (component: string, fields: LogFields = {}): Logger {
  return {
    debug: (msg, extra) => { emit('debug', component, fields, msg, extra) },
    info: (msg, extra) => { emit('info', component, fields, msg, extra) },
    warn: (msg, extra) => { emit('warn', component, fields, msg, extra) },
    error: (msg, extra) => { emit('error', component, fields, msg, extra) },
    child: (sub, more) => createLogger(`${component}:${sub}`, { ...fields, ...more })
  }
}
