import * as nodeFs from 'node:fs';
import { basename } from 'node:path';

/** Called once when a recording file cannot be written (ENOSPC, EIO, queue_full, ...). */
export type UnitFileError = (err: NodeJS.ErrnoException, file: string) => void;

/** Bytes a file queues (pending plus the write in flight) before it drops units (README "Recording"). */
export const UNIT_FILE_MAX_QUEUED_BYTES = 4 * 1024 * 1024;
/** Pending bytes that schedule a write before the flush timer does. */
export const UNIT_FILE_FLUSH_AT_BYTES = 1024 * 1024;

/**
 * A byte budget shared by several files (RecordingStore: every recording file of the
 * process), so many slow files cannot together hold more than `max` bytes in memory.
 */
export class QueueBudget {
  bytes = 0;
  constructor(readonly max: number) {}
}

/** The file operations a UnitFile uses (injected by tests to count calls or hold writes). */
export interface UnitFs {
  openSync(path: string, flags: string, mode: number): number;
  write(
    fd: number,
    buf: Buffer,
    off: number,
    len: number,
    pos: number | null,
    cb: (err: NodeJS.ErrnoException | null, n: number) => void,
  ): void;
  fsync(fd: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
  close(fd: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
  writeSync(fd: number, buf: Buffer, off: number, len: number, pos: number | null): number;
  fsyncSync(fd: number): void;
  closeSync(fd: number): void;
  ftruncateSync(fd: number, len: number): void;
}

const realFs: UnitFs = {
  openSync: (p, f, m) => nodeFs.openSync(p, f, m),
  write: (fd, buf, off, len, pos, cb) => nodeFs.write(fd, buf, off, len, pos, cb),
  fsync: (fd, cb) => nodeFs.fsync(fd, cb),
  close: (fd, cb) => nodeFs.close(fd, cb),
  writeSync: (fd, buf, off, len, pos) => nodeFs.writeSync(fd, buf, off, len, pos),
  fsyncSync: (fd) => nodeFs.fsyncSync(fd),
  closeSync: (fd) => nodeFs.closeSync(fd),
  ftruncateSync: (fd, len) => nodeFs.ftruncateSync(fd, len),
};

export interface UnitFileOptions {
  fsync?: boolean;
  /** Pending bytes that schedule a write (default UNIT_FILE_FLUSH_AT_BYTES). */
  maxPending?: number;
  /** Queued bytes (pending + in flight) beyond which units are dropped (default UNIT_FILE_MAX_QUEUED_BYTES). */
  maxQueued?: number;
  /** A bound shared with other files; units that do not fit are dropped. */
  budget?: QueueBudget;
  onError?: UnitFileError;
  fs?: Partial<UnitFs>;
}

function shortWrite(): NodeJS.ErrnoException {
  return Object.assign(new Error('short write'), { code: 'EIO' });
}

/**
 * An append-only file written in whole units (an Ogg page, an IVF frame, a pcap record,
 * a JSON line). append() only queues in memory: it never does I/O (past maxPending bytes
 * it schedules a write with setImmediate). Writes are asynchronous (fs.write on the
 * thread pool), one in flight per file, in order, each of whole units, so a process
 * killed at any moment leaves a file that ends on a unit boundary as of its last
 * completed write (a torn write can only happen on power loss, and then only in the last
 * unit). `fsync` makes each write durable across power loss too (an async fsync after it).
 *
 * Bounded: a file holds at most maxQueued bytes queued (pending + in flight), and all
 * files sharing a budget at most budget.max. A unit that does not fit (a disk too slow or
 * stuck) is dropped and so is every later one: the file stops taking units, error is set
 * to a QUEUE_FULL error and onError is told once; what was queued is still written, so
 * the file is a whole-unit prefix of the stream. (A unit larger than the bound is taken
 * when nothing is queued.)
 *
 * A write that fails (a full disk, EIO) never throws: the file is cut back to the last
 * written unit boundary, closed, and stops taking units; onError is told once. The file
 * stays readable up to that boundary.
 *
 * close(done) orders after the write in flight: with none in flight it finishes at once
 * (what is pending, patches, fsync, close(2): synchronously, as FileEventSink.close does)
 * and calls done before returning; otherwise it finishes asynchronously after that write
 * and calls done then. done is called exactly once, also when the file failed.
 */
export class UnitFile {
  private fd = -1;
  private readonly fs: UnitFs;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes of the write in flight (0: none). */
  private inflight = 0;
  private writing = false;
  private flushWanted = false;
  private scheduled = false;
  private closing = false;
  private dropping = false;
  private closeCbs: (() => void)[] = [];
  private patches: { offset: number; data: Buffer }[] = [];
  private readonly flushAt: number;
  private readonly maxQueued: number;
  /** Bytes on disk as of the last completed write. */
  private flushed = 0;
  /** Bytes handed to the file so far (written, in flight or pending). */
  size = 0;
  /** Units dropped because the queue was full. */
  dropped = 0;
  /** Why the file stopped taking units, or null. */
  error: NodeJS.ErrnoException | null = null;

  constructor(
    readonly path: string,
    private readonly opts: UnitFileOptions = {},
  ) {
    this.fs = { ...realFs, ...opts.fs };
    this.flushAt = opts.maxPending ?? UNIT_FILE_FLUSH_AT_BYTES;
    this.maxQueued = opts.maxQueued ?? UNIT_FILE_MAX_QUEUED_BYTES;
    try {
      this.fd = this.fs.openSync(path, 'w', 0o640);
    } catch (err) {
      this.fail(err);
    }
  }

  /** Bytes held in memory: pending plus the write in flight. */
  get queued(): number {
    return this.pendingBytes + this.inflight;
  }

  /** True once the file is closed (or failed) and nothing of it is in flight. */
  get done(): boolean {
    return this.fd < 0 && !this.writing;
  }

  /** Queues one unit; never does I/O and never throws. */
  append(unit: Buffer): void {
    if (this.fd < 0 || this.closing) return;
    if (this.dropping) {
      this.dropped++;
      return;
    }
    const n = unit.length;
    const q = this.queued;
    const b = this.opts.budget;
    if ((q > 0 && q + n > this.maxQueued) || (b && b.bytes > 0 && b.bytes + n > b.max)) {
      this.dropped++;
      this.dropping = true;
      this.report(Object.assign(new Error('recording write queue full (the disk is too slow or stuck)'), { code: 'QUEUE_FULL' }));
      return;
    }
    this.pending.push(unit);
    this.pendingBytes += n;
    this.size += n;
    if (b) b.bytes += n;
    if (this.pendingBytes >= this.flushAt) this.flushSoon();
  }

  /** Overwrites bytes already appended (a header field patched on close): applied at close, after every unit is written. */
  patch(offset: number, data: Buffer): void {
    if (this.fd < 0 || this.closing) return;
    this.patches.push({ offset, data: Buffer.from(data) });
  }

  /** Schedules flush() for the next turn of the event loop (once). */
  flushSoon(): void {
    if (this.scheduled || this.fd < 0 || this.closing) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  /** Starts a write of the pending whole units, or (one in flight) has one start when it completes. */
  flush(): void {
    if (this.fd < 0 || this.closing || this.pending.length === 0) return;
    if (this.writing) {
      this.flushWanted = true;
      return;
    }
    this.startWrite();
  }

  private takePending(): Buffer {
    const buf = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    return buf;
  }

  private startWrite(): void {
    this.flushWanted = false;
    const buf = this.takePending();
    this.writing = true;
    this.inflight = buf.length;
    this.writeFrom(buf, 0);
  }

  private writeFrom(buf: Buffer, off: number): void {
    try {
      this.fs.write(this.fd, buf, off, buf.length - off, null, (err, n) =>
        this.guarded(() => {
          if (!err && n > 0 && off + n < buf.length) return this.writeFrom(buf, off + n); // a short write: the rest
          if (err || n <= 0) return this.written(err ?? shortWrite());
          if (!this.opts.fsync) return this.written(null);
          this.fs.fsync(this.fd, (e) => this.guarded(() => this.written(e)));
        }),
      );
    } catch (err) {
      this.written(err as NodeJS.ErrnoException);
    }
  }

  /** Runs an I/O callback: an exception in it is a write failure, never an uncaught exception. */
  private guarded(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.writing = false;
      this.release(this.inflight);
      this.inflight = 0;
      this.fail(err);
    }
  }

  private release(n: number): void {
    const b = this.opts.budget;
    if (b) b.bytes = Math.max(0, b.bytes - n);
  }

  /** The write in flight completed (err null) or failed. */
  private written(err: NodeJS.ErrnoException | null): void {
    const n = this.inflight;
    this.writing = false;
    this.inflight = 0;
    this.release(n);
    if (err) return this.fail(err);
    this.flushed += n;
    if (this.closing) {
      if (this.pending.length) this.startWrite();
      else this.finishAsync();
    } else if (this.pending.length && (this.flushWanted || this.pendingBytes >= this.flushAt)) this.startWrite();
  }

  /** Close, after the last write: patches, fsync, close(2), asynchronously. */
  private finishAsync(): void {
    const p = this.patches.shift();
    if (p) {
      this.writing = true;
      this.fs.write(this.fd, p.data, 0, p.data.length, p.offset, (err, n) =>
        this.guarded(() => {
          this.writing = false;
          if (err || n !== p.data.length) return this.fail(err ?? shortWrite());
          this.finishAsync();
        }),
      );
      return;
    }
    this.writing = true;
    const closeFd = () =>
      this.fs.close(this.fd, () =>
        this.guarded(() => {
          // Linux closes the descriptor even when close(2) reports an error.
          this.writing = false;
          this.fd = -1;
          this.closed();
        }),
      );
    if (!this.opts.fsync) return closeFd();
    this.fs.fsync(this.fd, (err) =>
      this.guarded(() => {
        if (err) {
          this.writing = false;
          return this.fail(err);
        }
        closeFd();
      }),
    );
  }

  /** Close with nothing in flight: the rest is written synchronously (close runs off the packet path). */
  private finishSync(): void {
    try {
      if (this.pending.length) {
        const buf = this.takePending();
        this.release(buf.length);
        let off = 0;
        while (off < buf.length) {
          const n = this.fs.writeSync(this.fd, buf, off, buf.length - off, null);
          if (n <= 0) throw shortWrite();
          off += n;
        }
        this.flushed += buf.length;
      }
      for (const p of this.patches) {
        if (this.fs.writeSync(this.fd, p.data, 0, p.data.length, p.offset) !== p.data.length) throw shortWrite();
      }
      this.patches = [];
      if (this.opts.fsync) this.fs.fsyncSync(this.fd);
    } catch (err) {
      return this.fail(err);
    }
    try {
      this.fs.closeSync(this.fd);
    } catch {
      /* Linux closes the descriptor even when close(2) reports an error */
    }
    this.fd = -1;
    this.closed();
  }

  private fail(err: unknown): void {
    if (this.fd >= 0) {
      try {
        this.fs.ftruncateSync(this.fd, this.flushed); // whole units only: drop a torn tail
      } catch {
        /* the tail stays; readers stop at the torn unit */
      }
      try {
        this.fs.closeSync(this.fd);
      } catch {
        /* already gone */
      }
    }
    this.fd = -1;
    this.release(this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    this.patches = [];
    this.size = this.flushed;
    this.report(err as NodeJS.ErrnoException);
    this.closed();
  }

  private report(err: NodeJS.ErrnoException): void {
    if (this.error) return;
    this.error = err;
    try {
      this.opts.onError?.(this.error, basename(this.path));
    } catch {
      /* the callback's own problem */
    }
  }

  private closed(): void {
    const cbs = this.closeCbs;
    this.closeCbs = [];
    for (const cb of cbs) {
      try {
        cb();
      } catch {
        /* the callback's own problem */
      }
    }
  }

  /**
   * Writes what is queued, applies patches, fsyncs (with `fsync`) and closes; done is
   * called once that is over (before close returns when nothing was in flight). Never
   * throws. Returns true when the file is already done.
   */
  close(done?: () => void): boolean {
    if (done) this.closeCbs.push(done);
    if (this.fd < 0 && !this.writing) {
      this.closed();
      return true;
    }
    if (this.closing) return false;
    this.closing = true;
    if (!this.writing) this.finishSync(); // else the write in flight finishes the rest
    return this.done;
  }

  /** close() as a Promise. */
  closeAsync(): Promise<void> {
    return new Promise((resolve) => void this.close(resolve));
  }
}
