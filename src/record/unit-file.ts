import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';

/**
 * An append-only file written in whole units (an Ogg page, an IVF frame, a pcap record,
 * a JSON line). Units are queued in memory and written by flush() with one write(2)
 * of whole units, so a process killed at any moment leaves a file that ends on a unit
 * boundary as of its last flush (a torn write can only happen on power loss, and then
 * only in the last unit). `fsync` makes each flush durable across power loss too.
 */
export class UnitFile {
  private fd: number;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes handed to the file so far (flushed or pending). */
  size = 0;

  constructor(
    readonly path: string,
    private readonly opts: { fsync?: boolean; maxPending?: number } = {},
  ) {
    this.fd = openSync(path, 'w', 0o640);
  }

  append(unit: Buffer): void {
    if (this.fd < 0) return;
    this.pending.push(unit);
    this.pendingBytes += unit.length;
    this.size += unit.length;
    if (this.pendingBytes >= (this.opts.maxPending ?? 1 << 20)) this.flush();
  }

  /** Overwrites bytes already flushed (for a header field patched on close). */
  patch(offset: number, data: Buffer): void {
    if (this.fd < 0) return;
    this.flush();
    writeSync(this.fd, data, 0, data.length, offset);
  }

  flush(): void {
    if (this.fd < 0 || this.pending.length === 0) return;
    const buf = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    let off = 0;
    while (off < buf.length) off += writeSync(this.fd, buf, off, buf.length - off);
    if (this.opts.fsync) fsyncSync(this.fd);
  }

  close(): void {
    if (this.fd < 0) return;
    this.flush();
    if (this.opts.fsync) fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = -1;
  }
}
