/**
 * Follows an NSS key log file (SSLKEYLOGFILE) as the browser appends to it, and hands
 * over complete new lines. Rotation (the path names another inode: the file was
 * replaced or recreated) and truncation (the file shrank below what was read) restart
 * from the beginning of the current file, after the old file's last lines (those written
 * just before the rename or removal) are read from the descriptor still open on it. A file
 * that does not exist yet is waited for.
 *
 * Change detection: fs.watch on the file's directory (inotify on Linux: a line is seen
 * within milliseconds of its write), and a poll every `pollMs` as the fallback for file
 * systems without notifications. Lines are never written anywhere: they carry secrets.
 *
 * Public API:
 *   class KeyLogTail(path, onLines, opts?) .start() .stop() .check()
 */
import { closeSync, existsSync, fstatSync, openSync, readSync, statSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';

export interface KeyLogTailOptions {
  /** Fallback poll period (default 250 ms). */
  pollMs?: number;
  /** Start at the end of an existing file (default false: read it from the start). */
  fromEnd?: boolean;
  /** Bytes of an unterminated line kept at most (default 4096; longer is dropped). */
  maxLine?: number;
}

/** An NSS key log line is at most ~ 40 + 64 + 96 characters; 4 KiB is generous. */
const MAX_LINE = 4096;
const CHUNK = 64 * 1024;

export class KeyLogTail {
  private fd: number | null = null;
  private ino = -1;
  private dev = -1;
  private offset = 0;
  private partial = '';
  private watcher: FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private first = true;
  /** Counters (no content). */
  readonly stats = { lines: 0, rotations: 0, truncations: 0 };

  constructor(
    private readonly path: string,
    private readonly onLines: (lines: string[]) => void,
    private readonly opts: KeyLogTailOptions = {},
  ) {}

  start(): void {
    // fromEnd skips only what a file that exists now already holds; one created later is new.
    if (!existsSync(this.path)) this.first = false;
    try {
      this.watcher = watch(dirname(this.path), { persistent: false }, (_ev, name) => {
        if (!name || name === basename(this.path)) this.check();
      });
      this.watcher.on('error', () => {
        this.watcher?.close();
        this.watcher = null; // the poll goes on
      });
    } catch {
      this.watcher = null; // no directory yet, or no notifications: poll only
    }
    this.timer = setInterval(() => this.check(), this.opts.pollMs ?? 250);
    this.timer.unref();
    this.check();
  }

  stop(): void {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.closeFd();
    this.partial = '';
  }

  /** Reads what was appended since the last call (also called on every notification). */
  check(): void {
    if (this.stopped) return;
    let st: { ino: number; dev: number; size: number };
    try {
      st = statSync(this.path);
    } catch {
      // Gone (rotated away, not recreated yet): what the old file got since the last read
      // first (the writes that came just before the rename), then wait.
      this.drainOld();
      return;
    }
    if (this.fd === null || st.ino !== this.ino || st.dev !== this.dev) {
      if (this.fd !== null) {
        this.stats.rotations++;
        this.drainOld(); // the old file's last lines (written before the rename) come first
        if (this.stopped) return; // onLines may stop the tail
      }
      try {
        this.fd = openSync(this.path, 'r');
      } catch {
        return;
      }
      const now = fstatSync(this.fd);
      this.ino = now.ino;
      this.dev = now.dev;
      this.offset = this.first && this.opts.fromEnd ? now.size : 0;
      this.partial = '';
    }
    this.first = false;
    const size = fstatSync(this.fd).size;
    if (size < this.offset) {
      // Truncated (e.g. `: > keylog`): what follows is new content from the start.
      this.stats.truncations++;
      this.offset = 0;
      this.partial = '';
    }
    this.readTo(this.fd, size);
  }

  /** Reads what the open (rotated or removed) file got since the last read, then closes it. */
  private drainOld(): void {
    if (this.fd !== null) {
      try {
        const size = fstatSync(this.fd).size;
        if (size >= this.offset) this.readTo(this.fd, size);
      } catch {
        /* unreadable: let it go */
      }
    }
    this.closeFd();
    this.partial = ''; // a line the old file never finished is not continued by the new one
  }

  /** Complete lines from offset to size, to onLines. */
  private readTo(fd: number, size: number): void {
    const lines: string[] = [];
    const buf = Buffer.allocUnsafe(CHUNK);
    try {
      while (this.offset < size) {
        const n = readSync(fd, buf, 0, Math.min(CHUNK, size - this.offset), this.offset);
        if (n <= 0) break;
        this.offset += n;
        const text = this.partial + buf.toString('latin1', 0, n);
        const parts = text.split('\n');
        this.partial = parts.pop() ?? '';
        if (this.partial.length > (this.opts.maxLine ?? MAX_LINE)) this.partial = '';
        for (const l of parts) if (l) lines.push(l);
      }
    } finally {
      buf.fill(0); // the chunk held secrets
    }
    if (lines.length) {
      this.stats.lines += lines.length;
      this.onLines(lines);
    }
  }

  private closeFd(): void {
    if (this.fd !== null) {
      try {
        closeSync(this.fd);
      } catch {
        /* already closed */
      }
    }
    this.fd = null;
    this.ino = -1;
    this.dev = -1;
  }
}
