/**
 * Requests that wait for an answer by id over a message channel (the relay workers' IPC,
 * src/cli/relay-worker.ts): each waits at most `timeoutMs` and at most `max` wait at once;
 * a late or unknown answer is refused so its caller can release what came with it.
 */
export class PendingReplies<T> {
  private readonly waiting = new Map<number, (answer: T | null) => void>();
  private nextId = 0;

  constructor(
    private readonly max: number,
    private readonly timeoutMs: number,
  ) {}

  get size(): number {
    return this.waiting.size;
  }

  /** Sends a request under a new id; its answer, or null after the timeout (or at once when `max` already wait). */
  ask(send: (id: number) => void): Promise<T | null> {
    if (this.waiting.size >= this.max) return Promise.resolve(null);
    const id = ++this.nextId;
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(null), this.timeoutMs);
      const done = (answer: T | null): void => {
        clearTimeout(timer);
        this.waiting.delete(id);
        resolve(answer);
      };
      this.waiting.set(id, done);
      send(id);
    });
  }

  /** Delivers the answer to request `id`; false when nothing waits for it (late, or never asked). */
  answer(id: number, answer: T | null): boolean {
    const done = this.waiting.get(id);
    if (!done) return false;
    done(answer);
    return true;
  }
}
