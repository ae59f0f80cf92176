/**
 * TLS over memory for EAP-TLS (RFC 5216 §3, RFC 9190): node:tls runs over an in-memory
 * Duplex whose output is collected and handed to the EAP layer as one flight, and whose
 * input is the reassembled EAP-TLS data of the peer.
 */
import { Duplex } from 'node:stream';

export class MemoryDuplex extends Duplex {
  private out: Buffer[] = [];
  private outBytes = 0;

  override _read(): void {
    /* data is pushed by inject() */
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.out.push(Buffer.from(chunk));
    this.outBytes += chunk.length;
    cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    cb();
  }

  inject(data: Buffer): void {
    if (data.length) this.push(data);
  }

  get pending(): number {
    return this.outBytes;
  }

  takeOutput(): Buffer {
    const b = Buffer.concat(this.out);
    this.out = [];
    this.outBytes = 0;
    return b;
  }
}

/**
 * Waits until the TLS engine has written its flight: output that stops growing for two
 * polls, or `stop()` true with nothing pending, or maxMs.
 */
export async function settle(d: MemoryDuplex, stop: () => boolean, maxMs = 3000): Promise<void> {
  const start = Date.now();
  let last = -1;
  let still = 0;
  for (;;) {
    await new Promise((r) => setTimeout(r, 4));
    const n = d.pending;
    if (n === last && (n > 0 || stop())) {
      if (++still >= 2) return;
    } else still = 0;
    last = n;
    if (Date.now() - start > maxMs) return;
  }
}
