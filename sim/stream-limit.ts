/**
 * The raw limit of one libp2p stream on the daemon's stack (TCP + noise + yamux with the daemon's window
 * settings, as test/blocks.test.ts builds nodes): two nodes on 127.0.0.1, one stream, fixed-size sends,
 * nothing else (no framing, no hashing, no disk). This is the ceiling any one block transfer can reach.
 *
 * The receiving node runs either on the caller's thread (both nodes share one event loop and one core) or
 * in a worker thread of the same process (each node has its own event loop, as two daemons would). Node
 * runs this file as the worker's entry too: that code path only starts when `workerData` says so.
 */
import { randomBytes } from 'node:crypto'
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import type { Stream } from '@libp2p/interface'
import { tcp } from '@libp2p/tcp'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { multiaddr } from '@multiformats/multiaddr'
import { MiB } from '../protocols/limits.ts'

export const STREAM_LIMIT_PROTOCOL = '/filemesh-bench/stream/1.0.0'
export const DEFAULT_STREAM_LIMIT_BYTES = 512 * MiB
export const DEFAULT_STREAM_SEND_BYTES = MiB
const WORKER_FLAG = 'filemesh-bench-stream-receiver'

export interface StreamLimitInit {
  totalBytes?: number
  sendBytes?: number
  /** Run the receiving node in a worker thread (its own event loop and core). Default true. */
  receiverInWorker?: boolean
}

export interface StreamLimitResult {
  bytes: number
  ms: number
  MBps: number
}

/** A node configured like the daemon's transport stack (node/mesh.ts), without the mesh services. */
export async function createBenchNode (): Promise<Libp2p> {
  return await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: 16 * MiB, maxReadBufferLength: 20 * MiB } } as any)],
    connectionManager: { inboundConnectionThreshold: 100 },
    services: { identify: identify() }
  })
}

/** Registers a handler that counts every byte of each inbound stream and reports the total when it ends. */
async function receive (node: Libp2p, onDone: (bytes: number) => void): Promise<void> {
  await node.handle(STREAM_LIMIT_PROTOCOL, async (stream) => {
    let bytes = 0
    for await (const chunk of stream) bytes += chunk.byteLength
    await stream.close().catch(() => {})
    onDone(bytes)
  })
}

/** Waits for the stream's send buffer to empty (never `onDrain()`: its promise is cached, notes/libp2p-v3.md). */
async function drained (stream: Stream): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const onDrain = (): void => { cleanup(); resolve() }
    const onClose = (): void => { cleanup(); reject(new Error('stream closed while waiting for drain')) }
    const cleanup = (): void => {
      stream.removeEventListener('drain', onDrain)
      stream.removeEventListener('close', onClose)
    }
    stream.addEventListener('drain', onDrain)
    stream.addEventListener('close', onClose)
  })
}

export async function measureStreamLimit (init: StreamLimitInit = {}): Promise<StreamLimitResult> {
  const totalBytes = init.totalBytes ?? DEFAULT_STREAM_LIMIT_BYTES
  const sendBytes = init.sendBytes ?? DEFAULT_STREAM_SEND_BYTES
  const receiver = init.receiverInWorker ?? true ? await startWorkerReceiver() : await startLocalReceiver()
  const sender = await createBenchNode()
  try {
    const stream = await sender.dialProtocol(multiaddr(receiver.addr), STREAM_LIMIT_PROTOCOL)
    const buf = randomBytes(sendBytes)
    const started = performance.now()
    let sent = 0
    while (sent < totalBytes) {
      const n = Math.min(sendBytes, totalBytes - sent)
      // Never mutated after sending, so the same buffer can be queued again (send() keeps a reference).
      if (!stream.send(n === buf.byteLength ? buf : buf.subarray(0, n))) await drained(stream)
      sent += n
    }
    await stream.close()
    const bytes = await receiver.done
    const ms = performance.now() - started
    if (bytes !== totalBytes) throw new Error(`stream limit: receiver counted ${bytes} of ${totalBytes} bytes`)
    return { bytes, ms, MBps: bytes / 1e6 / (ms / 1000) }
  } finally {
    await sender.stop()
    await receiver.stop()
  }
}

interface Receiver {
  addr: string
  done: Promise<number>
  stop: () => Promise<void>
}

async function startLocalReceiver (): Promise<Receiver> {
  const node = await createBenchNode()
  const done = Promise.withResolvers<number>()
  await receive(node, done.resolve)
  const addr = node.getMultiaddrs()[0]
  if (addr == null) throw new Error('receiver has no listen address')
  return { addr: addr.toString(), done: done.promise, stop: async () => { await node.stop() } }
}

async function startWorkerReceiver (): Promise<Receiver> {
  const worker = new Worker(new URL(import.meta.url), { workerData: { [WORKER_FLAG]: true } })
  const listening = Promise.withResolvers<string>()
  const done = Promise.withResolvers<number>()
  const stopped = Promise.withResolvers<void>()
  worker.on('message', (m: { type: string, addr?: string, bytes?: number }) => {
    if (m.type === 'listening' && m.addr != null) listening.resolve(m.addr)
    else if (m.type === 'done' && m.bytes != null) done.resolve(m.bytes)
  })
  const onError = (err: unknown): void => { listening.reject(err); done.reject(err) }
  worker.on('error', onError)
  worker.on('exit', (code) => {
    onError(new Error(`stream receiver worker exited (${code})`))
    stopped.resolve()
  })
  done.promise.catch(() => {})
  try {
    const addr = await listening.promise
    return {
      addr,
      done: done.promise,
      stop: async () => {
        worker.postMessage({ type: 'stop' })
        const timer = setTimeout(() => { worker.terminate().catch(() => {}) }, 5_000)
        await stopped.promise
        clearTimeout(timer)
      }
    }
  } catch (err) {
    await worker.terminate()
    throw err
  }
}

async function runWorkerReceiver (): Promise<void> {
  const port = parentPort
  if (port == null) return
  const node = await createBenchNode()
  await receive(node, (bytes) => { port.postMessage({ type: 'done', bytes }) })
  port.on('message', (m: { type: string }) => {
    if (m.type === 'stop') Promise.resolve(node.stop()).finally(() => { port.close() })
  })
  port.postMessage({ type: 'listening', addr: node.getMultiaddrs()[0]?.toString() })
}

if (!isMainThread && (workerData as Record<string, unknown> | null)?.[WORKER_FLAG] === true) await runWorkerReceiver()
