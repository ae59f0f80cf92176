import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { Redis } from 'ioredis';
import type { Logger } from '../util/log.js';
import { redactRedisUrl } from '../events/redis.js';

/**
 * ClusterLink: this gateway's connection to the cluster's Redis (`store.redis`), shared by
 * every cluster module (quotas, block lists, users, flow registry, policy distribution).
 *
 * Stable API (other modules build on it; extend, don't change):
 *
 *   const link = new ClusterLink({ url, nodeId, prefix?, log? });
 *   link.nodeId                 this node's id (store.node_id, or hostname:turn-port)
 *   link.up                     true while both connections are ready
 *   link.on('up', () => ...)    each transition down -> up (and the first connect): resync here
 *   link.on('down', () => ...)  each transition up -> down, and once at start when Redis
 *                               cannot be reached (never emitted twice in a row); a listener
 *                               that throws is logged, the others still run
 *   link.redis                  the command connection (ioredis; no offline queue: a command
 *                               while down rejects at once, so callers keep local state)
 *   link.key('quota', id, ...)  prefixed key: `${prefix}quota:id:...` (prefix default 'gatehouse:')
 *   link.subscribe(ch, fn)      pub/sub on the prefixed channel `ch`; fn(message) is called
 *                               inside try/catch (a throwing handler is logged, never fatal);
 *                               returns an unsubscribe function; survives reconnects
 *   link.publish(ch, msg)       resolves false (never rejects) when Redis is down
 *   link.ready(ms)              resolves true once up, false after ms
 *   link.stats                  { up, outages, transitions } for metrics
 *   link.close()                disconnects both connections; no 'down' is emitted after
 *
 * One log line per transition, with the URL's password replaced (redactRedisUrl). While
 * Redis is away each consumer serves from its local state and resynchronises on 'up'.
 */
export interface ClusterLinkOptions {
  url: string;
  /** This node's id; null/undefined: hostname. */
  nodeId?: string | null;
  /** Prefix of every key and channel; default 'gatehouse:'. */
  prefix?: string;
  log?: Logger;
}

export interface ClusterLinkStats {
  up: boolean;
  /** Transitions up -> down since start. */
  outages: number;
  /** Every up/down transition since start. */
  transitions: number;
}

/** The default node id: host name and the first TURN port, unique per gateway process on a host. */
export function defaultNodeId(port?: number): string {
  return port === undefined ? hostname() : `${hostname()}:${port}`;
}

export class ClusterLink extends EventEmitter {
  readonly nodeId: string;
  readonly prefix: string;
  readonly redis: Redis;
  /** The subscriber connection (ioredis resubscribes its channels after a reconnect). */
  readonly sub: Redis;
  readonly stats: ClusterLinkStats = { up: false, outages: 0, transitions: 0 };
  private cmdReady = false;
  private subReady = false;
  private closed = false;
  private startWarned = false;
  private readonly handlers = new Map<string, Set<(msg: string) => void>>();
  private readonly log: Logger | undefined;
  private readonly safeUrl: string;

  constructor(opts: ClusterLinkOptions) {
    super();
    this.nodeId = opts.nodeId || defaultNodeId();
    this.prefix = opts.prefix ?? 'gatehouse:';
    this.log = opts.log;
    this.safeUrl = redactRedisUrl(opts.url);
    const common = {
      lazyConnect: false,
      // No queueing inside ioredis while offline: callers keep local state and retry.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: 2000,
      retryStrategy: (times: number) => Math.min(times * 200, 1000),
    };
    this.redis = new Redis(opts.url, { ...common, connectionName: `gatehouse:${this.nodeId}` });
    // The subscriber keeps an offline queue so SUBSCRIBE issued before the first connect goes out.
    this.sub = new Redis(opts.url, { ...common, enableOfflineQueue: true, connectionName: `gatehouse-sub:${this.nodeId}` });
    // An 'error' listener is required (ioredis re-emits connection errors); state follows ready/close.
    this.redis.on('error', () => this.set('cmd', false));
    this.redis.on('close', () => this.set('cmd', false));
    this.redis.on('ready', () => this.set('cmd', true));
    this.sub.on('error', () => this.set('sub', false));
    this.sub.on('close', () => this.set('sub', false));
    this.sub.on('ready', () => this.set('sub', true));
    this.sub.on('message', (channel: string, message: string) => {
      const fns = this.handlers.get(channel);
      if (!fns) return;
      for (const fn of fns) {
        try {
          fn(message);
        } catch (err) {
          this.log?.warn({ channel, err: (err as Error).message }, 'cluster: a message handler failed');
        }
      }
    });
  }

  get up(): boolean {
    return this.stats.up;
  }

  private set(which: 'cmd' | 'sub', ready: boolean): void {
    if (which === 'cmd') this.cmdReady = ready;
    else this.subReady = ready;
    const up = this.cmdReady && this.subReady;
    if (!ready && !this.stats.up && this.stats.transitions === 0 && !this.startWarned && !this.closed) {
      // Redis unreachable from the start: said once, as an outage would be.
      this.startWarned = true;
      this.log?.warn({ redis: this.safeUrl, node: this.nodeId }, 'cluster: redis unavailable; serving with local state until it is back');
      this.tell('down');
      return;
    }
    if (up === this.stats.up || this.closed) return;
    this.stats.up = up;
    this.stats.transitions++;
    if (up) {
      this.log?.info({ redis: this.safeUrl, node: this.nodeId }, 'cluster: redis is up; sharing state with the other gateways');
      this.tell('up');
    } else {
      this.stats.outages++;
      this.log?.warn({ redis: this.safeUrl, node: this.nodeId }, 'cluster: redis unavailable; serving with local state until it is back');
      this.tell('down');
    }
  }

  /**
   * Emits 'up'/'down' to each listener inside try/catch: set() runs in ioredis's
   * ready/close/error callbacks, where a throwing listener would be an uncaught exception
   * (the process) and would also keep the later listeners from resynchronising.
   */
  private tell(event: 'up' | 'down'): void {
    // rawListeners: a once() listener's wrapper, which removes itself when called.
    for (const fn of this.rawListeners(event) as (() => void)[]) {
      try {
        fn.call(this);
      } catch (err) {
        this.log?.warn({ event, err: (err as Error).message }, 'cluster: a listener failed');
      }
    }
  }

  /** A prefixed key: key('quota', 'q1', 'alice') -> 'gatehouse:quota:q1:alice'. */
  key(...parts: (string | number)[]): string {
    return this.prefix + parts.join(':');
  }

  subscribe(channel: string, fn: (message: string) => void): () => void {
    const ch = this.key(channel);
    let fns = this.handlers.get(ch);
    if (!fns) {
      fns = new Set();
      this.handlers.set(ch, fns);
      this.sub.subscribe(ch).catch(() => {
        /* resubscribed by ioredis on reconnect */
      });
    }
    fns.add(fn);
    return () => {
      const set = this.handlers.get(ch);
      if (!set) return;
      set.delete(fn);
      if (set.size === 0) {
        this.handlers.delete(ch);
        this.sub.unsubscribe(ch).catch(() => {});
      }
    };
  }

  async publish(channel: string, message: string): Promise<boolean> {
    if (!this.up) return false;
    try {
      await this.redis.publish(this.key(channel), message);
      return true;
    } catch {
      return false;
    }
  }

  ready(timeoutMs = 5000): Promise<boolean> {
    if (this.up) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.off('up', on);
        resolve(false);
      }, timeoutMs);
      t.unref?.();
      const on = () => {
        clearTimeout(t);
        resolve(true);
      };
      this.once('up', on);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.handlers.clear();
    this.redis.disconnect();
    this.sub.disconnect();
  }
}
