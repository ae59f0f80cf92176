import * as nodeFs from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from '../util/log.js';
import type { Supervisor } from '../util/supervise.js';

/**
 * EVE-shaped events (contract.md "Events"): one JSON object per line, the shape of
 * Suricata's eve.json so SIEM pipelines read it unchanged.
 */
export interface EveEvent {
  timestamp: string;
  event_type: string;
  flow_id?: number;
  src_ip?: string;
  src_port?: number;
  dest_ip?: string;
  dest_port?: number;
  proto?: 'UDP' | 'TCP';
  alert?: { action: string; signature_id: string; signature: string; severity: number };
  /** The gateway that produced it, as Suricata EVE's top-level `host` (sensor name): store.node_id in a cluster. */
  host?: string;
  gatehouse?: Record<string, unknown>;
  [k: string]: unknown;
}

/** The ISO prefix of the last second formatted ("2026-11-22T10:00:00."): events come in bursts. */
let tsSecond = NaN;
let tsPrefix = '';
const MS3 = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, '0'));

/** Suricata's timestamp form: 2026-11-22T10:00:00.000000+0000. */
export function eveTimestamp(ms: number): string {
  const t = Math.trunc(ms); // Date truncates a fractional time (TimeClip)
  const sec = Math.floor(t / 1000);
  if (sec !== tsSecond || !Number.isFinite(sec)) {
    const iso = new Date(t).toISOString(); // 2026-11-22T10:00:00.000Z (throws on an invalid time, as before)
    tsSecond = sec;
    tsPrefix = iso.slice(0, 20);
  }
  return `${tsPrefix}${MS3[t - sec * 1000]}000+0000`;
}

/** A sink never throws out of emit() or close(): events are best effort, the relay is not. */
export interface EventSink {
  emit(e: EveEvent): void;
  /**
   * The same event with its JSON text (JSON.stringify(e)), when the fan-out has it already:
   * sinks that serialise implement it so that an event is stringified once for all of them.
   */
  emitJson?(e: EveEvent, json: string): void;
  close(): void;
}

/** Bound of the events.jsonl write queue, in bytes of serialized lines (README limits table). */
export const EVENT_QUEUE_MAX_BYTES = 4 * 1024 * 1024;
/** Bound of the events.jsonl write queue, in events. */
export const EVENT_QUEUE_MAX_EVENTS = 16384;
/** Largest single write(2): whole lines up to this many bytes. */
const WRITE_CHUNK = 256 * 1024;

/** The file operations the sink uses (injected by tests to simulate ENOSPC, EIO, ...). */
export interface SinkFs {
  write(fd: number, buf: Buffer, off: number, len: number, pos: null, cb: (err: NodeJS.ErrnoException | null, n: number) => void): void;
  writeSync(fd: number, buf: Buffer, off: number, len: number): number;
  ftruncateSync(fd: number, len: number): void;
  openSync(path: string, flags: string, mode: number): number;
  closeSync(fd: number): void;
  fstatSync(fd: number): { size: number };
  renameSync(from: string, to: string): void;
  rmSync(path: string, opts: { force: boolean }): void;
  mkdirSync(path: string, opts: { recursive: boolean }): void;
}

const realFs: SinkFs = {
  write: (fd, buf, off, len, pos, cb) => nodeFs.write(fd, buf, off, len, pos, cb),
  writeSync: (fd, buf, off, len) => nodeFs.writeSync(fd, buf, off, len),
  ftruncateSync: (fd, len) => nodeFs.ftruncateSync(fd, len),
  openSync: (p, f, m) => nodeFs.openSync(p, f, m),
  closeSync: (fd) => nodeFs.closeSync(fd),
  fstatSync: (fd) => nodeFs.fstatSync(fd),
  renameSync: (a, b) => nodeFs.renameSync(a, b),
  rmSync: (p, o) => nodeFs.rmSync(p, o),
  mkdirSync: (p, o) => void nodeFs.mkdirSync(p, o),
};

export interface FileEventSinkOptions {
  /** Queue bound in bytes (default EVENT_QUEUE_MAX_BYTES). */
  maxQueueBytes?: number;
  /** Queue bound in events (default EVENT_QUEUE_MAX_EVENTS). */
  maxQueueEvents?: number;
  /** After a failed write, the next attempt comes this much later (default 1000 ms). */
  retryMs?: number;
  /** One line per state change (degraded, recovered). */
  log?: Logger;
  /** Counts an exception that escaped the sink's own handling (a bug), instead of throwing. */
  supervisor?: Supervisor;
  fs?: Partial<SinkFs>;
}

/** What /metrics reads of a FileEventSink. */
export interface EventSinkStats {
  /** Events dropped, by reason: queue_full, unserializable, closed, or the errno code of a failed write (enospc, eio, ...). */
  dropped: Record<string, number>;
  /** Events written to the file. */
  written: number;
  queueEvents: number;
  queueBytes: number;
  /** Writes are failing (or the queue overflowed) since the last successful write. */
  degraded: boolean;
}

function reasonOf(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' && /^[A-Z0-9_]{1,32}$/.test(code) ? code.toLowerCase() : 'write_error';
}

/**
 * Appends to DATA_DIR/events.jsonl through a bounded in-memory queue (maxQueueEvents
 * lines, maxQueueBytes bytes), written asynchronously (fs.write on the thread pool) in
 * whole lines, at most 256 KiB per write(2), off the packet path: a kill -9 loses what is
 * queued or being written (normally the events of the last event-loop turn).
 *
 * A full disk (or EIO, EACCES, ...) never reaches the caller or the process: the lines of
 * the failed write are dropped (the file is truncated back to the last whole line),
 * counted under the errno code, one warning is logged, and the next write is tried
 * retryMs later while new events queue up to the bound (beyond it: dropped as
 * queue_full). The first write that succeeds again logs one line with what was lost.
 *
 * When the file passes maxBytes it is rotated: events.jsonl → events.jsonl.1 → ... →
 * events.jsonl.KEEP (the oldest is deleted), as logrotate would. A failed rotation is
 * logged and the current file grows until the next rotation succeeds.
 */
export class FileEventSink implements EventSink {
  private fd = -1;
  private size = 0;
  private queue: string[] = [];
  private queueBytes = 0;
  private scheduled = false;
  private writing = false;
  private closing = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private degradedBy: string | null = null;
  private droppedWhileDegraded = 0;
  private waiters: (() => void)[] = [];
  private readonly fs: SinkFs;
  private readonly maxQueueBytes: number;
  private readonly maxQueueEvents: number;
  private readonly retryMs: number;
  readonly dropped: Record<string, number> = {};
  written = 0;

  constructor(
    readonly path: string,
    private readonly maxBytes = 100 * 1024 * 1024,
    private readonly keep = 5,
    private readonly opts: FileEventSinkOptions = {},
  ) {
    this.fs = { ...realFs, ...opts.fs };
    this.maxQueueBytes = opts.maxQueueBytes ?? EVENT_QUEUE_MAX_BYTES;
    this.maxQueueEvents = opts.maxQueueEvents ?? EVENT_QUEUE_MAX_EVENTS;
    this.retryMs = opts.retryMs ?? 1000;
    // Opening at start-up may throw (a data dir that cannot be written stops the start).
    this.fs.mkdirSync(dirname(path), { recursive: true });
    this.fd = this.fs.openSync(path, 'a', 0o640);
    this.size = this.fs.fstatSync(this.fd).size;
  }

  get stats(): EventSinkStats {
    return {
      dropped: { ...this.dropped },
      written: this.written,
      queueEvents: this.queue.length,
      queueBytes: this.queueBytes,
      degraded: this.degradedBy !== null,
    };
  }

  emit(e: EveEvent): void {
    let json: string;
    try {
      json = JSON.stringify(e);
    } catch {
      try {
        this.drop(this.closing ? 'closed' : 'unserializable', 1); // a BigInt or a cycle: a bug upstream, not a crash
      } catch (err) {
        this.opts.supervisor?.caught('events.file.emit', err);
      }
      return;
    }
    this.emitJson(e, json);
  }

  emitJson(_e: EveEvent, json: string): void {
    try {
      if (this.closing) return this.drop('closed', 1);
      const line = json + '\n';
      const n = Buffer.byteLength(line);
      if (this.queue.length >= this.maxQueueEvents || this.queueBytes + n > this.maxQueueBytes) {
        this.drop('queue_full', 1);
        this.degrade('queue_full', null);
        return;
      }
      this.queue.push(line);
      this.queueBytes += n;
      this.schedule();
    } catch (err) {
      this.opts.supervisor?.caught('events.file.emit', err);
    }
  }

  /** Resolves once everything queued so far has been written or dropped. */
  drained(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((r) => this.waiters.push(r));
  }

  private isIdle(): boolean {
    return !this.writing && (this.queue.length === 0 || this.fd < 0);
  }

  private notifyIdle(): void {
    if (!this.isIdle() || this.waiters.length === 0) return;
    const w = this.waiters;
    this.waiters = [];
    for (const r of w) r();
  }

  private drop(reason: string, n: number): void {
    this.dropped[reason] = (this.dropped[reason] ?? 0) + n;
    if (this.degradedBy !== null || reason === 'queue_full') this.droppedWhileDegraded += n;
  }

  private degrade(reason: string, err: unknown): void {
    if (this.degradedBy !== null) return;
    this.degradedBy = reason;
    this.opts.log?.warn(
      { path: this.path, reason, err: err ? (err as Error).message : undefined },
      'events.jsonl: cannot write, events are dropped (counted in gatehouse_events_dropped_total) until writes succeed again',
    );
  }

  private recovered(): void {
    if (this.degradedBy === null) return;
    this.opts.log?.info({ path: this.path, reason: this.degradedBy, dropped: this.droppedWhileDegraded }, 'events.jsonl: writing again');
    this.degradedBy = null;
    this.droppedWhileDegraded = 0;
  }

  private schedule(): void {
    if (this.scheduled || this.writing || this.retryTimer || this.closing) return;
    this.scheduled = true;
    setImmediate(() => this.guarded('events.file.pump', () => this.pump()));
  }

  private guarded(where: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.writing = false;
      this.opts.supervisor?.caught(where, err);
      this.notifyIdle();
    }
  }

  /** Takes whole lines from the queue for one write, rotating first when the file is full. */
  private takeBatch(): { buf: Buffer; lines: number } | null {
    if (this.queue.length === 0 || this.fd < 0) return null;
    const first = Buffer.byteLength(this.queue[0]!);
    if (this.size > 0 && this.size + first > this.maxBytes) this.rotate();
    let bytes = 0;
    let k = 0;
    while (k < this.queue.length) {
      const n = Buffer.byteLength(this.queue[k]!);
      if (k > 0 && (bytes + n > WRITE_CHUNK || this.size + bytes + n > this.maxBytes)) break;
      bytes += n;
      k++;
    }
    const lines = this.queue.splice(0, k);
    this.queueBytes -= bytes;
    return { buf: Buffer.from(lines.join('')), lines: k };
  }

  private pump(): void {
    this.scheduled = false;
    if (this.writing || this.retryTimer || this.closing) return;
    const batch = this.takeBatch();
    if (!batch) return this.notifyIdle();
    this.writing = true;
    const start = this.size;
    const { buf } = batch;
    const step = (off: number) => {
      this.fs.write(this.fd, buf, off, buf.length - off, null, (err, n) =>
        this.guarded('events.file.write', () => {
          if (!err && off + n < buf.length && n > 0) return step(off + n); // a short write: the rest
          this.writing = false;
          if (err || n === 0) this.failed(batch.lines, start, err ?? Object.assign(new Error('short write'), { code: 'EIO' }));
          else this.succeeded(batch.lines, buf.length);
          if (this.closing) this.finishSync();
          else if (!this.retryTimer && this.queue.length) this.schedule();
          this.notifyIdle();
        }),
      );
    };
    step(0);
  }

  private succeeded(lines: number, bytes: number): void {
    this.size += bytes;
    this.written += lines;
    this.recovered();
  }

  private failed(lines: number, start: number, err: unknown): void {
    const reason = reasonOf(err);
    this.drop(reason, lines);
    this.degrade(reason, err);
    // Whole lines only: cut a partly written batch back to the last complete line.
    try {
      this.fs.ftruncateSync(this.fd, start);
      this.size = start;
    } catch {
      try {
        this.size = this.fs.fstatSync(this.fd).size;
      } catch {
        /* keep the estimate */
      }
    }
    if (!this.closing) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.guarded('events.file.pump', () => this.pump());
      }, this.retryMs);
      this.retryTimer.unref?.();
    }
  }

  private rotate(): void {
    // Renames first, with the old file still open: a failure leaves us writing somewhere.
    try {
      this.fs.rmSync(`${this.path}.${this.keep}`, { force: true });
      for (let i = this.keep - 1; i >= 1; i--) {
        try {
          this.fs.renameSync(`${this.path}.${i}`, `${this.path}.${i + 1}`);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      }
      this.fs.renameSync(this.path, `${this.path}.1`);
      const fd = this.fs.openSync(this.path, 'a', 0o640);
      const old = this.fd;
      this.fd = fd;
      this.size = 0;
      try {
        this.fs.closeSync(old);
      } catch {
        /* already gone */
      }
    } catch (err) {
      // Keep appending to the current file; the next batch tries again.
      this.degrade(`rotate_${reasonOf(err)}`, err);
    }
  }

  /** Writes what is left synchronously (on close), then closes the file. */
  private finishSync(): void {
    for (;;) {
      const batch = this.takeBatch();
      if (!batch) break;
      const start = this.size;
      try {
        let off = 0;
        while (off < batch.buf.length) {
          const n = this.fs.writeSync(this.fd, batch.buf, off, batch.buf.length - off);
          if (n <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
          off += n;
        }
        this.succeeded(batch.lines, batch.buf.length);
      } catch (err) {
        this.failed(batch.lines, start, err);
        this.drop(reasonOf(err), this.queue.length);
        this.queue = [];
        this.queueBytes = 0;
      }
    }
    if (this.fd >= 0) {
      try {
        this.fs.closeSync(this.fd);
      } catch {
        /* nothing left to lose */
      }
    }
    this.fd = -1;
  }

  close(): void {
    if (this.closing) return;
    this.closing = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    try {
      if (!this.writing) this.finishSync(); // else the write in flight finishes the rest
    } catch (err) {
      this.opts.supervisor?.caught('events.file.close', err);
    }
    this.notifyIdle();
  }
}

export interface MemoryEventSinkOptions {
  /**
   * Keep the events as their JSON text in one preallocated byte ring of this many bytes,
   * parsed again when the ring is read (the admin API: rare). A ring of 10 000 event
   * objects lives in the old generation and is re-marked by every major GC: on an inspected
   * relay carrying one event per message that cost up to a quarter of the CPU per packet
   * (README "Benchmarks"). Bytes are no objects at all, and a snapshot of each event as it
   * was emitted. 0 (the default): events are kept as they are, by reference.
   */
  bytes?: number;
}

/**
 * Keeps the newest `max` events in memory (the admin API's recent-events view): a ring of
 * the events, or with `bytes` of their JSON text (at most that many bytes: the oldest go
 * first when either bound is reached).
 */
export class MemoryEventSink implements EventSink {
  private ring: EveEvent[] = [];
  private next = 0;
  /** Live listeners (the dashboard's event stream); bounded by maxSubscribers. */
  private readonly subscribers = new Set<(e: EveEvent) => void>();
  /** The byte ring (options.bytes): entry k (oldest first) is text[starts[i]..+lens[i]) with i = (first + k) % max. */
  private readonly text: Buffer | null;
  private readonly starts: Int32Array;
  private readonly lens: Int32Array;
  private first = 0;
  private count = 0;
  private pos = 0;
  constructor(
    private readonly max = 10000,
    readonly maxSubscribers = 64,
    opts: MemoryEventSinkOptions = {},
  ) {
    const bytes = opts.bytes ?? 0;
    this.text = bytes > 0 ? Buffer.alloc(bytes) : null;
    this.starts = new Int32Array(this.text ? max : 0);
    this.lens = new Int32Array(this.text ? max : 0);
  }
  emit(e: EveEvent): void {
    if (!this.text) {
      if (this.ring.length < this.max) this.ring.push(e);
      else {
        this.ring[this.next] = e;
        this.next = (this.next + 1) % this.max;
      }
    } else {
      try {
        this.keep(JSON.stringify(e));
      } catch {
        // a BigInt or a cycle (a bug upstream, dropped by the file sink too): not kept
      }
    }
    this.notify(e);
  }
  emitJson(e: EveEvent, json: string): void {
    if (!this.text) return this.emit(e);
    this.keep(json);
    this.notify(e);
  }
  private notify(e: EveEvent): void {
    for (const fn of this.subscribers) {
      try {
        fn(e);
      } catch {
        this.subscribers.delete(fn); // a listener that throws is dropped; the others and the sinks go on
      }
    }
  }
  /** Appends one JSON text to the byte ring, dropping the oldest entries it would overwrite. */
  private keep(json: string): void {
    const text = this.text!;
    const room = Buffer.byteLength(json, 'utf8');
    if (room > text.length) return; // larger than the whole ring: not kept
    if (this.pos + room > text.length) {
      // Writing restarts at 0. What lies at or after pos is left of the lap before the last
      // one: the oldest entries, dropped now (the last lap's entries all start before pos).
      while (this.count > 0 && this.starts[this.first]! >= this.pos) this.dropOldest();
      this.pos = 0;
    }
    // The previous lap's entries lie at or after pos, in write order: the oldest is the
    // first to overlap [pos, pos + room). This lap's entries all end at or before pos.
    while (this.count > 0) {
      const s0 = this.starts[this.first]!;
      if (this.count < this.max && (s0 >= this.pos + room || s0 + this.lens[this.first]! <= this.pos)) break;
      this.dropOldest();
    }
    const at = (this.first + this.count) % this.max;
    text.write(json, this.pos, 'utf8');
    this.starts[at] = this.pos;
    this.lens[at] = room;
    this.pos += room;
    this.count++;
  }
  private dropOldest(): void {
    this.first = (this.first + 1) % this.max;
    this.count--;
  }
  /**
   * Calls fn with every event emitted from now on (synchronously: fn must only queue).
   * Returns the unsubscribe function, or null when maxSubscribers are already listening.
   */
  subscribe(fn: (e: EveEvent) => void): (() => void) | null {
    if (this.subscribers.size >= this.maxSubscribers) return null;
    this.subscribers.add(fn);
    return () => void this.subscribers.delete(fn);
  }
  /** Oldest first. */
  get events(): EveEvent[] {
    if (this.text) {
      const out: EveEvent[] = [];
      for (let k = 0; k < this.count; k++) {
        const i = (this.first + k) % this.max;
        out.push(JSON.parse(this.text.toString('utf8', this.starts[i]!, this.starts[i]! + this.lens[i]!)) as EveEvent);
      }
      return out;
    }
    return this.next === 0 ? this.ring : [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
  }
  close(): void {}
}

/**
 * Hands each event to every sink; one that throws does not stop the others. The one place
 * every event of a gateway passes: with `host` (a cluster node id, README "Cluster") each
 * event gets the top-level `host` field Suricata EVE uses for the sensor name, so one
 * shared stream says which gateway produced what. An event that already names a host
 * keeps it; no other field is touched.
 */
export class FanoutEventSink implements EventSink {
  /** Exceptions thrown by a sink, by its position (when no supervisor counts them). */
  readonly failures: number[];
  constructor(
    private readonly sinks: EventSink[],
    private readonly supervisor?: Supervisor,
    private readonly host?: string,
  ) {
    this.failures = sinks.map(() => 0);
  }
  emit(e: EveEvent): void {
    if (this.host !== undefined && e.host === undefined) e.host = this.host;
    // One JSON.stringify for every sink that serialises (emitJson); undefined: it throws
    // (a BigInt or a cycle), and each sink then meets the event through emit() as before.
    let json: string | undefined | null = null;
    for (let i = 0; i < this.sinks.length; i++) {
      const sink = this.sinks[i]!;
      try {
        if (sink.emitJson) {
          if (json === null) {
            try {
              json = JSON.stringify(e);
            } catch {
              json = undefined;
            }
          }
          if (json !== undefined) {
            sink.emitJson(e, json);
            continue;
          }
        }
        sink.emit(e);
      } catch (err) {
        this.failed(i, 'events.sink.emit', err);
      }
    }
  }
  close(): void {
    for (let i = 0; i < this.sinks.length; i++) {
      try {
        this.sinks[i]!.close();
      } catch (err) {
        this.failed(i, 'events.sink.close', err);
      }
    }
  }
  private failed(i: number, where: string, err: unknown): void {
    this.failures[i]!++;
    this.supervisor?.caught(where, err);
  }
}
