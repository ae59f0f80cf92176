import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
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

/** Appends to DATA_DIR/events.jsonl; each event is one write(2), so a kill -9 loses none written. */
export class FileEventSink implements EventSink {
  private fd: number;
  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.fd = openSync(path, 'a', 0o640);
  }
  emit(e: EveEvent): void {
    writeSync(this.fd, JSON.stringify(e) + '\n');
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
