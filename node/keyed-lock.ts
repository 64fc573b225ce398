/**
 * Serialises async critical sections per key (one file's record): every read-modify-write of a record runs
 * under its key, so two handlers (a receipt acknowledgement and the end of processing, say) can never both
 * read the old record and have one overwrite the other's change. Keys with no waiters are forgotten.
 */
export class KeyedLock {
  readonly #tails = new Map<string, Promise<void>>()

  async run<T> (key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve()
    let release!: () => void
    const mine = new Promise<void>((resolve) => { release = resolve })
    const tail = prev.then(() => mine)
    this.#tails.set(key, tail)
    await prev
    try {
      return await fn()
    } finally {
      release()
      if (this.#tails.get(key) === tail) this.#tails.delete(key)
    }
  }

  get size (): number {
    return this.#tails.size
  }
}
