import { closeSync, fsyncSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { basename } from 'node:path';

/** Called once when a recording file cannot be written (ENOSPC, EIO, ...). */
export type UnitFileError = (err: NodeJS.ErrnoException, file: string) => void;

export interface UnitFileOptions {
  fsync?: boolean;
  /** Pending bytes that force a flush (default 1 MiB). */
  maxPending?: number;
  onError?: UnitFileError;
}

/**
 * An append-only file written in whole units (an Ogg page, an IVF frame, a pcap record,
 * a JSON line). Units are queued in memory and written by flush() with one write(2)
 * of whole units, so a process killed at any moment leaves a file that ends on a unit
 * boundary as of its last flush (a torn write can only happen on power loss, and then
 * only in the last unit). `fsync` makes each flush durable across power loss too.
 *
 * A write that fails (a full disk, EIO) never throws: the file is cut back to the last
 * flushed unit boundary, closed, and stops taking units; onError is told once. The file
 * stays readable up to that boundary.
 */
export class UnitFile {
  private fd = -1;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes on disk as of the last successful flush. */
  private flushed = 0;
  /** Bytes handed to the file so far (flushed or pending). */
  size = 0;
  /** Why the file stopped taking units, or null. */
  error: NodeJS.ErrnoException | null = null;

  constructor(
    readonly path: string,
    private readonly opts: UnitFileOptions = {},
  ) {
    try {
      this.fd = openSync(path, 'w', 0o640);
    } catch (err) {
      this.fail(err);
    }
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
    if (this.fd < 0) return;
    try {
      writeSync(this.fd, data, 0, data.length, offset);
    } catch (err) {
      this.fail(err);
    }
  }

  flush(): void {
    if (this.fd < 0 || this.pending.length === 0) return;
    const buf = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    try {
      let off = 0;
      while (off < buf.length) off += writeSync(this.fd, buf, off, buf.length - off);
      if (this.opts.fsync) fsyncSync(this.fd);
      this.flushed += buf.length;
    } catch (err) {
      this.fail(err);
    }
  }

  private fail(err: unknown): void {
    if (this.fd >= 0) {
      try {
        ftruncateSync(this.fd, this.flushed); // whole units only: drop a torn tail
      } catch {
        /* the tail stays; readers stop at the torn unit */
      }
      try {
        closeSync(this.fd);
      } catch {
        /* already gone */
      }
    }
    this.fd = -1;
    this.pending = [];
    this.pendingBytes = 0;
    this.size = this.flushed;
    if (this.error) return;
    this.error = err as NodeJS.ErrnoException;
    try {
      this.opts.onError?.(this.error, basename(this.path));
    } catch {
      /* the callback's own problem */
    }
  }

  close(): void {
    if (this.fd < 0) return;
    this.flush();
    if (this.fd < 0) return;
    try {
      if (this.opts.fsync) fsyncSync(this.fd);
    } catch (err) {
      return this.fail(err);
    }
    try {
      closeSync(this.fd);
    } catch {
      /* Linux closes the descriptor even when close(2) reports an error */
    }
    this.fd = -1;
  }
}
