import type { Logger } from '../util/log.js';
import type { ClusterLink } from './link.js';

/**
 * What the cluster needs of the gateway's FlowBlockList (src/gateway/block-list.ts), by
 * shape: gateway imports this floor, so this floor does not import gateway (design.md:
 * arrows point down; test/unit/floors.test.ts).
 */
export interface SharedBlockList {
  /** Set by attach(): told of each block made locally. */
  onBlock: ((user: string, peerIp: string, forMs: number) => void) | null;
  /** A block made elsewhere in the cluster, for forMs. */
  apply(user: string, peerIp: string, forMs: number): void;
}

/**
 * Block lists shared by the gateways of a cluster (store.redis; README "Cluster").
 *
 * What identifies a blocked flow across gateways: the user and the peer IP. key-escrow.md
 * §5.4 refuses "the same peer address, from any allocation or mapping of that user" for
 * keys.block_for, and the gateway's FlowBlockList is keyed by user × peer IP already. An
 * allocation id or a 5-tuple is local to one gateway (a client that reconnects to another
 * gateway has a new allocation, a new relayed port and often a new source port), so they
 * could not make "a flow blocked on gateway 1 stays refused on gateway 2" true; the user
 * (authenticated by every gateway against the same credentials) and the peer IP can.
 *
 * A block made here: `SET <prefix>block:<user>:<ip> <node> PX <block_for>` (Redis expires it
 * with the block) and PUBLISH on `<prefix>blocks`, so every gateway adds it to its own list
 * at once; CreatePermission/ChannelBind keep checking the local list only (no Redis round
 * trip on the request path). After each (re)connection a gateway SCANs the block keys and
 * adds what it missed, with the TTL Redis has left. A block made while Redis is away holds
 * locally and is written when Redis is back (with what is left of its time), bounded.
 */
export interface ClusterBlocksOptions {
  log?: Logger;
  /** Blocks kept for Redis while it is away (README limits); beyond, the oldest goes. */
  maxPending?: number;
  now?: () => number;
}

export interface ClusterBlockStats {
  shared: number;
  received: number;
  pending: number;
  failures: number;
}

export class ClusterBlocks {
  private list: SharedBlockList | null = null;
  /** user|ip -> [user, ip, until] while Redis is away. */
  private readonly pending = new Map<string, [string, string, number]>();
  private readonly maxPending: number;
  private readonly now: () => number;
  private readonly unsubscribe: () => void;
  private readonly counts = { shared: 0, received: 0, failures: 0 };

  constructor(
    private readonly link: ClusterLink,
    private readonly opts: ClusterBlocksOptions = {},
  ) {
    this.maxPending = opts.maxPending ?? 10_000;
    this.now = opts.now ?? Date.now;
    this.unsubscribe = link.subscribe('blocks', (m) => this.onMessage(m));
    link.on('up', this.onUp);
  }

  attach(list: SharedBlockList): void {
    this.list = list;
    list.onBlock = (user, ip, forMs) => this.share(user, ip, forMs);
    if (this.link.up) void this.resync();
  }

  get stats(): ClusterBlockStats {
    return { ...this.counts, pending: this.pending.size };
  }

  private keyOf(user: string, ip: string): string {
    return this.link.key('block', encodeURIComponent(user), encodeURIComponent(ip));
  }

  private share(user: string, ip: string, forMs: number): void {
    if (forMs <= 0) return;
    if (!this.link.up) {
      this.hold(user, ip, this.now() + forMs);
      return;
    }
    void this.write(user, ip, forMs);
  }

  private hold(user: string, ip: string, until: number): void {
    const k = `${user}|${ip}`;
    this.pending.delete(k);
    if (this.pending.size >= this.maxPending) {
      const first = this.pending.keys().next();
      if (!first.done) this.pending.delete(first.value);
    }
    this.pending.set(k, [user, ip, until]);
  }

  private async write(user: string, ip: string, forMs: number): Promise<void> {
    const ms = Math.max(1, Math.round(forMs));
    try {
      await this.link.redis.set(this.keyOf(user, ip), this.link.nodeId, 'PX', ms);
      this.counts.shared++;
      await this.link.redis.publish(this.link.key('blocks'), JSON.stringify({ user, ip, ms, node: this.link.nodeId }));
    } catch {
      // Redis went away meanwhile: kept, written when it is back.
      this.counts.failures++;
      this.hold(user, ip, this.now() + ms);
    }
  }

  private onMessage(msg: string): void {
    let m: { user?: unknown; ip?: unknown; ms?: unknown; node?: unknown } | null;
    try {
      m = JSON.parse(msg) as typeof m;
    } catch {
      return;
    }
    if (typeof m !== 'object' || m === null) return; // `null`, a number: not ours, ignored
    if (m.node === this.link.nodeId) return;
    if (typeof m.user !== 'string' || typeof m.ip !== 'string' || typeof m.ms !== 'number' || !(m.ms > 0)) return;
    this.counts.received++;
    this.list?.apply(m.user, m.ip, m.ms);
  }

  private onUp = (): void => {
    void this.resync();
  };

  /** Writes the blocks held during the outage, then reads every block of the cluster. */
  async resync(): Promise<void> {
    const now = this.now();
    for (const [k, [user, ip, until]] of [...this.pending]) {
      this.pending.delete(k);
      if (until > now) await this.write(user, ip, until - now);
    }
    if (!this.list || !this.link.up) return;
    try {
      let cursor = '0';
      const prefix = this.link.key('block', '');
      do {
        const [next, keys] = await this.link.redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
        cursor = next;
        if (!keys.length) continue;
        const p = this.link.redis.pipeline();
        for (const k of keys) p.pttl(k);
        const ttls = (await p.exec()) ?? [];
        keys.forEach((k, i) => {
          const ttl = Number(ttls[i]?.[1]);
          const parts = k.slice(prefix.length).split(':');
          if (!(ttl > 0) || parts.length !== 2) return;
          this.list!.apply(decodeURIComponent(parts[0]!), decodeURIComponent(parts[1]!), ttl);
        });
      } while (cursor !== '0');
    } catch (err) {
      this.counts.failures++;
      this.opts.log?.warn({ err: (err as Error).message }, 'cluster: reading the shared block list failed');
    }
  }

  close(): void {
    this.link.off('up', this.onUp);
    this.unsubscribe();
    if (this.list) this.list.onBlock = null;
  }
}
