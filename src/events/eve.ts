import { closeSync, existsSync, fstatSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

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
  gatehouse?: Record<string, unknown>;
  [k: string]: unknown;
}

/** Suricata's timestamp form: 2026-11-22T10:00:00.000000+0000. */
export function eveTimestamp(ms: number): string {
  const iso = new Date(ms).toISOString(); // 2026-11-22T10:00:00.000Z
  return `${iso.slice(0, 23)}000+0000`;
}

export interface EventSink {
  emit(e: EveEvent): void;
  close(): void;
}

/**
 * Appends to DATA_DIR/events.jsonl. Events are written in whole lines, batched into one
 * write(2) per event-loop turn (or sooner past 256 KiB), off the packet path: a kill -9
 * loses at most the events of the turn it interrupts. When the file passes maxBytes it
 * is rotated: events.jsonl → events.jsonl.1 → ... → events.jsonl.KEEP (the oldest is
 * deleted), as logrotate would.
 */
export class FileEventSink implements EventSink {
  private fd: number;
  private size: number;
  private pending: string[] = [];
  private pendingBytes = 0;
  private scheduled = false;
  constructor(
    readonly path: string,
    private readonly maxBytes = 100 * 1024 * 1024,
    private readonly keep = 5,
  ) {
    mkdirSync(dirname(path), { recursive: true });
    this.fd = openSync(path, 'a', 0o640);
    this.size = fstatSync(this.fd).size;
  }
  emit(e: EveEvent): void {
    if (this.fd < 0) return;
    const line = JSON.stringify(e) + '\n';
    this.pending.push(line);
    this.pendingBytes += line.length;
    if (this.pendingBytes > 256 * 1024) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }
  /** Writes what is pending (whole lines; rotation happens between lines). */
  flush(): void {
    this.scheduled = false;
    if (this.fd < 0 || this.pending.length === 0) return;
    const lines = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    let batch: string[] = [];
    let batchBytes = 0;
    const writeBatch = () => {
      if (!batch.length) return;
      const buf = Buffer.from(batch.join(''));
      writeSync(this.fd, buf);
      this.size += buf.length;
      batch = [];
      batchBytes = 0;
    };
    for (const line of lines) {
      const n = Buffer.byteLength(line);
      if (this.size + batchBytes > 0 && this.size + batchBytes + n > this.maxBytes) {
        writeBatch();
        if (this.size > 0) this.rotate();
      }
      batch.push(line);
      batchBytes += n;
    }
    writeBatch();
  }
  private rotate(): void {
    closeSync(this.fd);
    const oldest = `${this.path}.${this.keep}`;
    if (existsSync(oldest)) rmSync(oldest);
    for (let i = this.keep - 1; i >= 1; i--) {
      if (existsSync(`${this.path}.${i}`)) renameSync(`${this.path}.${i}`, `${this.path}.${i + 1}`);
    }
    renameSync(this.path, `${this.path}.1`);
    this.fd = openSync(this.path, 'a', 0o640);
    this.size = 0;
  }
  close(): void {
    this.flush();
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** Keeps the newest `max` events in memory (the admin API's recent-events view): a ring. */
export class MemoryEventSink implements EventSink {
  private ring: EveEvent[] = [];
  private next = 0;
  constructor(private readonly max = 10000) {}
  emit(e: EveEvent): void {
    if (this.ring.length < this.max) this.ring.push(e);
    else {
      this.ring[this.next] = e;
      this.next = (this.next + 1) % this.max;
    }
  }
  /** Oldest first. */
  get events(): EveEvent[] {
    return this.next === 0 ? this.ring : [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
  }
  close(): void {}
}

export class FanoutEventSink implements EventSink {
  constructor(private readonly sinks: EventSink[]) {}
  emit(e: EveEvent): void {
    for (const s of this.sinks) s.emit(e);
  }
  close(): void {
    for (const s of this.sinks) s.close();
  }
}
