import { describe, expect, it } from 'vitest'
import { KeyedLock } from '../node/keyed-lock.ts'

describe('KeyedLock', () => {
  it('runs read-modify-write sections on one key one at a time, so no update is lost', async () => {
    const lock = new KeyedLock()
    let value = 0
    const bump = async (): Promise<void> => {
      await lock.run('k', async () => {
        const read = value
        await new Promise((resolve) => setTimeout(resolve, Math.random() * 3))
        value = read + 1
      })
    }
    await Promise.all(Array.from({ length: 50 }, bump))
    expect(value).toBe(50)
    expect(lock.size).toBe(0)
  })

  it('lets different keys run at the same time and survives a throwing section', async () => {
    const lock = new KeyedLock()
    const order: string[] = []
    let releaseA!: () => void
    const a = lock.run('a', async () => { order.push('a-start'); await new Promise<void>((resolve) => { releaseA = resolve }); order.push('a-end') })
    await lock.run('b', async () => { order.push('b') })
    releaseA()
    await a
    expect(order).toEqual(['a-start', 'b', 'a-end'])
    await expect(lock.run('a', async () => { throw new Error('boom') })).rejects.toThrow('boom')
    expect(await lock.run('a', async () => 7)).toBe(7)
  })
})
