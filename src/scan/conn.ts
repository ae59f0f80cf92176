/**
 * One scanner connection: connect to tcp host:port or a unix socket, write, and read
 * lines, delimited tokens or counted bytes, all under an AbortSignal (the deadline).
 */
import { connect, type Socket } from 'node:net';

export type Endpoint = { path: string } | { host: string; port: number };

/** Thrown by reads and connects; `kind` becomes the scan error's kind. */
export class ConnError extends Error {
  constructor(
    readonly kind: 'timeout' | 'unreachable' | 'protocol',
    message: string,
  ) {
    super(message);
  }
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOENT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EACCES', 'ETIMEDOUT']);

export class Conn {
  private buf: Buffer = Buffer.alloc(0);
  private ended = false;
  private failure: ConnError | null = null;
  private wake: (() => void) | null = null;
  /** Total bytes buffered before a read takes them; a bound against a flooding server. */
  constructor(
    readonly socket: Socket,
    private readonly maxBuffered: number,
  ) {
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      if (this.buf.length > this.maxBuffered) {
        this.fail(new ConnError('protocol', `answer larger than ${this.maxBuffered} bytes`));
        socket.destroy();
      }
      this.poke();
    });
    socket.on('end', () => {
      this.ended = true;
      this.poke();
    });
    socket.on('close', () => {
      this.ended = true;
      this.poke();
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      // A reset after the answer began is a protocol failure; before any byte the peer is gone.
      this.fail(new ConnError('protocol', `connection error: ${e.code ?? e.message}`));
    });
  }

  static open(ep: Endpoint, signal: AbortSignal, maxBuffered = 1 << 20): Promise<Conn> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(new ConnError('timeout', 'timed out before connecting'));
      const socket = 'path' in ep ? connect({ path: ep.path }) : connect({ host: ep.host, port: ep.port });
      const onAbort = () => {
        socket.destroy();
        reject(new ConnError('timeout', 'timed out connecting'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      socket.once('error', (e: NodeJS.ErrnoException) => {
        signal.removeEventListener('abort', onAbort);
        const kind = e.code && UNREACHABLE.has(e.code) ? 'unreachable' : 'protocol';
        reject(new ConnError(kind, `cannot connect: ${e.code ?? e.message}`));
      });
      socket.once('connect', () => {
        signal.removeEventListener('abort', onAbort);
        socket.removeAllListeners('error');
        socket.setNoDelay(true);
        const c = new Conn(socket, maxBuffered);
        signal.addEventListener(
          'abort',
          () => {
            c.fail(new ConnError('timeout', 'timed out'));
            socket.destroy();
          },
          { once: true },
        );
        resolve(c);
      });
    });
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private fail(e: ConnError): void {
    if (!this.failure) this.failure = e;
    this.poke();
  }

  /**
   * Writes, waiting for the socket to drain (backpressure); fails like reads. With
   * `untilAnswer`, the wait also ends when the server's answer begins (a server that
   * answers early and stops reading never drains us): the caller sees `answered` and stops
   * sending (RFC 2616 §8.2.2; ICAP's status codes are HTTP's, RFC 3507 §4.3.3).
   */
  async write(data: Buffer | string, untilAnswer = false): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.socket.destroyed || this.socket.writableEnded) throw new ConnError('protocol', 'connection closed while sending');
    const ok = this.socket.write(data);
    if (ok || (untilAnswer && this.answered)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        this.socket.off('end', done);
        if (untilAnswer) this.socket.off('data', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
      this.socket.on('end', done);
      // Registered after the constructor's listener: `buf` already holds the bytes.
      if (untilAnswer) this.socket.on('data', done);
    });
    if (this.failure && !(untilAnswer && this.buf.length)) throw this.failure;
  }

  /** Bytes received and not yet read (the caller may look without waiting). */
  get pending(): number {
    return this.buf.length;
  }

  private async more(what: string): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.ended) throw new ConnError('protocol', `connection closed before ${what}`);
    await new Promise<void>((r) => (this.wake = r));
    if (this.failure && !this.buf.length) throw this.failure;
  }

  /** Bytes up to (not including) `delim`, which is consumed; at most `max` bytes. */
  async readUntil(delim: Buffer | string, max: number, what: string): Promise<Buffer> {
    const d = typeof delim === 'string' ? Buffer.from(delim, 'latin1') : delim;
    for (;;) {
      const i = this.buf.indexOf(d);
      if (i >= 0) {
        if (i > max) throw new ConnError('protocol', `${what} longer than ${max} bytes`);
        const out = this.buf.subarray(0, i);
        this.buf = this.buf.subarray(i + d.length);
        return out;
      }
      if (this.buf.length > max + d.length) throw new ConnError('protocol', `${what} longer than ${max} bytes`);
      await this.more(what);
    }
  }

  /** Exactly n bytes. */
  async readBytes(n: number, what: string): Promise<Buffer> {
    while (this.buf.length < n) await this.more(what);
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Between 1 and `max` bytes, as soon as any are there. */
  async readUpTo(max: number, what: string): Promise<Buffer> {
    while (!this.buf.length) await this.more(what);
    const n = Math.min(max, this.buf.length);
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Whether an answer has begun (or the connection ended) without waiting. */
  get answered(): boolean {
    return this.buf.length > 0 || this.ended || !!this.failure;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A promise that settles when the next byte arrives or the connection ends (for "answer early"). */
export function whenReadable(c: Conn): Promise<void> {
  return new Promise((resolve) => {
    if (c.answered) return resolve();
    const done = () => {
      c.socket.off('data', done);
      c.socket.off('close', done);
      resolve();
    };
    c.socket.on('data', done);
    c.socket.on('close', done);
  });
}
