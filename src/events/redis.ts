import { Redis } from 'ioredis';
import type { Logger } from '../util/log.js';
import type { EventSink, EveEvent } from './eve.js';

/**
 * The EVE stream to Redis, as Suricata's eve-log `filetype: redis` does it: every event's
 * JSON line goes to one key, as a list (RPUSH, Suricata's `mode: list`/`rpush`, so a consumer
 * reads oldest first with LPOP/BLPOP), a stream (XADD key MAXLEN ~ N * event <json>), or a
 * pub/sub channel (PUBLISH). The events.jsonl file stays the record; Redis is a copy.
 *
 * emit() never waits on Redis: lines go into a bounded queue (README limits table) and a
 * pipeline flushes them; while Redis is down the queue holds what it can and counts what it
 * drops, and a reconnect flushes it. One log line per outage; the URL is logged without its
 * password.
 */
export type RedisEventMode = 'list' | 'stream' | 'channel';

export interface RedisEventSinkOptions {
  url: string;
  mode: RedisEventMode;
  key: string;
  /** Queue bound in events while Redis is slow or away. */
  maxQueue: number;
  /** Stream mode: MAXLEN ~ this many entries (Redis trims approximately). */
  streamMaxLen?: number;
  log?: Logger;
}

export interface RedisEventSinkStats {
  connected: boolean;
  queued: number;
  sent: number;
  /** Events dropped because the queue was full. */
  dropped: number;
}

/** Events per pipeline. */
const BATCH = 512;

/** redis://user:password@host/db with the password replaced, for log lines. */
export function redactRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable redis URL)';
  }
}

export class RedisEventSink implements EventSink {
  private readonly redis: Redis;
  private readonly queue: string[] = [];
  private head = 0;
  private flushing = false;
  private closed = false;
  private outage = false;
  /** After a command error, no new pipeline before this time (ms). */
  private retryAt = 0;
  readonly stats: RedisEventSinkStats = { connected: false, queued: 0, sent: 0, dropped: 0 };

  constructor(private readonly opts: RedisEventSinkOptions) {
    this.redis = new Redis(opts.url, {
      lazyConnect: false,
      // Commands are not queued inside ioredis while offline: our own bounded queue holds them.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      retryStrategy: (times) => Math.min(times * 200, 2000),
    });
    this.redis.on('ready', () => {
      this.stats.connected = true;
      if (this.outage) opts.log?.info({ redis: redactRedisUrl(opts.url) }, 'events: redis is back, flushing the queue');
      this.outage = false;
      this.flush();
    });
    this.redis.on('error', () => this.down());
    this.redis.on('close', () => this.down());
  }

  private down(): void {
    this.stats.connected = false;
    if (!this.outage && !this.closed) {
      this.outage = true;
      this.opts.log?.warn(
        { redis: redactRedisUrl(this.opts.url) },
        'events: redis unavailable; queueing events (bounded) until it is back',
      );
    }
  }

  emit(e: EveEvent): void {
    if (this.closed) return;
    if (this.queue.length - this.head >= this.opts.maxQueue) {
      this.stats.dropped++;
      return;
    }
    this.queue.push(JSON.stringify(e));
    this.stats.queued = this.queue.length - this.head;
    if (this.stats.connected) this.flush();
  }

  private flush(): void {
    if (this.flushing || !this.stats.connected) return;
    this.flushing = true;
    // After the current tick, so a burst of emits goes in one pipeline; after a command
    // error, not before retryAt (emits meanwhile see `flushing` and wait too).
    const wait = this.retryAt - Date.now();
    if (wait > 0) setTimeout(() => void this.drain(), wait).unref();
    else setImmediate(() => void this.drain());
  }

  private async drain(): Promise<void> {
    try {
      while (this.head < this.queue.length && this.stats.connected) {
        const end = Math.min(this.queue.length, this.head + BATCH);
        const batch = this.queue.slice(this.head, end);
        const p = this.redis.pipeline();
        const { key, mode } = this.opts;
        if (mode === 'list') p.rpush(key, ...batch);
        else if (mode === 'stream')
          for (const line of batch) p.xadd(key, 'MAXLEN', '~', String(this.opts.streamMaxLen ?? 100000), '*', 'event', line);
        else for (const line of batch) p.publish(key, line);
        const res = await p.exec();
        if (!res || res.some(([err]) => err)) {
          // A command error (e.g. the key holds another type): kept in the queue and retried
          // after a pause, not in a tight loop against Redis.
          this.retryAt = Date.now() + 1000;
          break;
        }
        this.head = end;
        this.stats.sent += batch.length;
        if (this.head > 4096 && this.head * 2 > this.queue.length) {
          this.queue.splice(0, this.head);
          this.head = 0;
        }
      }
    } catch {
      // Connection lost mid-pipeline: what was not acknowledged stays queued (a consumer may
      // see a line twice after an outage, never miss one the queue held).
    } finally {
      this.stats.queued = this.queue.length - this.head;
      this.flushing = false;
      if (this.head < this.queue.length && this.stats.connected && !this.closed) this.flush();
    }
  }

  /** Resolves when the queue is empty (tests, shutdown). */
  async drained(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.head < this.queue.length || this.flushing) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    // Give what is queued a moment to go out, then disconnect.
    void this.drained(1000).finally(() => this.redis.disconnect());
  }
}
