/**
 * Spool files for data-channel transfers (issue 9): a transfer whose content a recorder or
 * a scanner needs is written here beyond its first SPOOL_MEMORY_BYTES
 * (src/inspect/transfer.ts), so a large file costs a file descriptor while it arrives,
 * not its size in memory. One file per transfer under DATA_DIR/spool/, named by 16 random
 * bytes, created 0600 with O_EXCL; removed when the transfer's tracker and every consumer
 * (scan, recorder) have released it; whatever a crash left there is removed at start
 * (sweep).
 *
 * Bounded: at most `maxFiles` spool files at once and `maxBytes` written in all of them;
 * beyond, create() or write() throws (the tracker then drops the content and judges the
 * transfer on what it saw: hash, size, head), as does a full disk. Both are counted.
 *
 * Structurally the SpoolFactory / SpoolFile / SpooledContent of src/inspect/transfer.ts
 * (this floor may not import it).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants, mkdirSync, openSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/** Spool files open at once (a transfer each). */
export const SPOOL_MAX_FILES = 1024;
/** Bytes in all spool files at once. */
export const SPOOL_MAX_BYTES = 4 * 1024 * 1024 * 1024;

export interface DiskSpoolOptions {
  maxFiles?: number;
  maxBytes?: number;
}

export interface SpoolCounters {
  /** Spool files made. */
  created: number;
  /** Spool files removed. */
  removed: number;
  /** Files alive now, and their bytes. */
  live: number;
  bytes: number;
  /** Refusals and failures by reason (files: maxFiles; bytes: maxBytes; or the errno code: ENOSPC, EIO, ...). */
  failures: Record<string, number>;
}

export class DiskSpool {
  readonly stats: SpoolCounters = { created: 0, removed: 0, live: 0, bytes: 0, failures: {} };
  private readonly maxFiles: number;
  private readonly maxBytes: number;

  /** `dir`: DATA_DIR/spool (made 0700 if missing). */
  constructor(
    readonly dir: string,
    o: DiskSpoolOptions = {},
  ) {
    this.maxFiles = o.maxFiles ?? SPOOL_MAX_FILES;
    this.maxBytes = o.maxBytes ?? SPOOL_MAX_BYTES;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  /** Removes every file left in the spool directory (call at start, before any transfer). */
  sweep(): number {
    let n = 0;
    for (const name of readdirSync(this.dir)) {
      rmSync(join(this.dir, name), { force: true, recursive: true });
      n++;
    }
    return n;
  }

  /** Spool files alive now (the test's and /metrics' view). */
  get live(): number {
    return this.stats.live;
  }

  create(): DiskSpoolFile {
    if (this.stats.live >= this.maxFiles) throw this.refuse('files', `more than ${this.maxFiles} spool files`);
    const path = join(this.dir, randomBytes(16).toString('hex'));
    let fd: number;
    try {
      fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    } catch (e) {
      throw this.refuse((e as NodeJS.ErrnoException).code ?? 'error', 'cannot create a spool file');
    }
    this.stats.created++;
    this.stats.live++;
    return new DiskSpoolFile(this, path, fd);
  }

  /** @internal */
  reserve(n: number): void {
    if (this.stats.bytes + n > this.maxBytes) throw this.refuse('bytes', `spool files over ${this.maxBytes} bytes`);
    this.stats.bytes += n;
  }

  /** @internal */
  unreserve(n: number): void {
    this.stats.bytes -= n;
  }

  /** @internal */
  removed(): void {
    this.stats.live--;
    this.stats.removed++;
  }

  /** @internal Counts a failure; the error names no path or content. */
  refuse(reason: string, message: string): Error {
    this.stats.failures[reason] = (this.stats.failures[reason] ?? 0) + 1;
    const e = new Error(`${message} (${reason})`) as NodeJS.ErrnoException;
    e.code = reason;
    return e;
  }
}

export class DiskSpoolFile {
  private fd: number | null;
  private bytes = 0;
  private refs = 1;
  private own = true;
  private gone = false;
  readonly content: { readonly path: string; readonly size: number; hold(): () => void };

  constructor(
    private readonly spool: DiskSpool,
    readonly path: string,
    fd: number,
  ) {
    this.fd = fd;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    this.content = {
      path,
      get size() {
        return self.bytes;
      },
      hold: () => this.hold(),
    };
  }

  write(b: Buffer): void {
    if (this.fd === null) throw new Error('spool file finished');
    this.spool.reserve(b.length);
    let off = 0;
    try {
      while (off < b.length) off += writeSync(this.fd, b, off, b.length - off);
    } catch (e) {
      this.spool.unreserve(b.length - off);
      this.bytes += off;
      throw this.spool.refuse((e as NodeJS.ErrnoException).code ?? 'error', 'spool write failed');
    }
    this.bytes += b.length;
  }

  finish(): void {
    if (this.fd === null) return;
    const fd = this.fd;
    this.fd = null;
    closeSync(fd);
  }

  release(): void {
    if (!this.own) return;
    this.own = false;
    this.unref();
  }

  private hold(): () => void {
    if (this.gone) throw new Error('spool file already removed');
    this.refs++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.unref();
    };
  }

  private unref(): void {
    if (--this.refs > 0 || this.gone) return;
    this.gone = true;
    try {
      this.finish();
    } catch {
      /* closing failed: the descriptor is gone either way */
    }
    rmSync(this.path, { force: true });
    this.spool.unreserve(this.bytes);
    this.spool.removed();
  }
}
