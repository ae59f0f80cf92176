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
 * Appends to DATA_DIR/events.jsonl; each event is one write(2), so a kill -9 loses none
 * written. When the file passes maxBytes it is rotated: events.jsonl → events.jsonl.1 →
 * ... → events.jsonl.KEEP (the oldest is deleted), as logrotate would.
 */
export class FileEventSink implements EventSink {
  private fd: number;
  private size: number;
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
    const line = Buffer.from(JSON.stringify(e) + '\n');
    if (this.size > 0 && this.size + line.length > this.maxBytes) this.rotate();
    writeSync(this.fd, line);
    this.size += line.length;
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
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** Keeps events in memory (tests, and the admin API's recent-events view). */
export class MemoryEventSink implements EventSink {
  readonly events: EveEvent[] = [];
  constructor(private readonly max = 10000) {}
  emit(e: EveEvent): void {
    this.events.push(e);
    if (this.events.length > this.max) this.events.splice(0, this.events.length - this.max);
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
