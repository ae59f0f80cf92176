/** A WebSocket test client for /v1/signal (core.md §8): queued messages and the close. */
import WebSocket from 'ws';

export interface SigMsg {
  type: string;
  [k: string]: unknown;
}

export class SigClient {
  readonly ws: WebSocket;
  private readonly queue: SigMsg[] = [];
  private waiters: (() => void)[] = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<{ code: number; reason: string }>;
  closeInfo: { code: number; reason: string } | null = null;

  constructor(url: string, opts: WebSocket.ClientOptions = {}) {
    this.ws = new WebSocket(url, opts);
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
    });
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        this.wake();
      });
    });
    this.ws.on('error', () => {});
    this.ws.on('message', (d, binary) => {
      if (binary) return;
      this.queue.push(JSON.parse(d.toString()) as SigMsg);
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  send(m: unknown): void {
    this.ws.send(typeof m === 'string' ? m : JSON.stringify(m));
  }

  /** The next message (of this type, skipping others when `skip`), or an error after ms. */
  async next(type?: string, ms = 3000, skip = false): Promise<SigMsg> {
    const deadline = Date.now() + ms;
    for (;;) {
      while (this.queue.length) {
        const m = this.queue.shift()!;
        if (!type || m.type === type) return m;
        if (!skip) throw new Error(`expected ${type}, got ${JSON.stringify(m)}`);
      }
      if (this.closeInfo)
        throw new Error(`closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for ${type ?? 'a message'}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${type ?? 'message'} within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Messages received and not yet taken. */
  pending(): SigMsg[] {
    return [...this.queue];
  }

  /** Waits ms and returns (and takes) what arrived. */
  async drain(ms = 150): Promise<SigMsg[]> {
    await new Promise((r) => setTimeout(r, ms));
    return this.queue.splice(0);
  }

  close(): void {
    this.ws.close();
  }
}
