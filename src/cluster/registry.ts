/**
 * The flow registry (issue 14, README "Cluster"): every gateway publishes itself and its
 * flows to the cluster's Redis, so the admin API of any node can list the nodes with
 * their load (`GET /v1/cluster`) and the flows of all of them (`GET /v1/flows?scope=cluster`),
 * and a full node can name a less loaded one in ALTERNATE-SERVER (src/turn/shedding.ts).
 *
 * Keys (prefix `store.key_prefix`, default `gatehouse:`):
 *   node:<id>    JSON NodeInfo, SET with PX = ttl, rewritten every heartbeat; a node that
 *                stops (SIGKILL, a partition) drops out when it expires.
 *   nodes        a sorted set of node ids (score: last heartbeat, ms), the index read by
 *                list(); ids whose node:<id> has expired are removed by the readers.
 *   flows:<id>   a hash flow_id -> JSON flow summary, PEXPIREd with the node key (a dead
 *                node's flows go with it), updated by difference every heartbeat.
 * A graceful stop deletes the node's keys at once.
 */
import type { ClusterLink } from './link.js';
import type { Logger } from '../util/log.js';
import type { AlternateServer } from '../turn/shedding.js';
import { isIP } from 'node:net';

/** How often a node rewrites its entry, and how long the entry lives without one. */
export const HEARTBEAT_MS = 1000;
export const NODE_TTL_MS = 3000;
/** Flows one node publishes at most (the rest are counted, not listed). */
export const MAX_PUBLISHED_FLOWS = 50_000;
/** Nodes one listing reads at most. */
export const MAX_NODES = 1024;

export type TurnProto = 'udp' | 'tcp' | 'tls';

export interface NodeInfo {
  id: string;
  /** TURN listeners as clients reach them (IP literals: ALTERNATE-SERVER carries no name). */
  turn: { proto: TurnProto; address: string; port: number }[];
  /** Base URL of this node's admin API. */
  admin: string;
  allocations: number;
  capacity: number;
  flows: number;
  started: string;
  /** This node's clock at its last heartbeat (ms since the epoch). */
  heartbeat: number;
  /** The rule set in force (src/cluster/policy-sync.ts): its cluster version and hash. */
  policy?: { version: number; hash: string | null; origin: string | null };
}

/** A flow summary as /v1/flows gives it (flow_id at least). */
export type FlowRecord = { flow_id: number | string } & Record<string, unknown>;

export interface RegistryOptions {
  link: ClusterLink;
  /** This node's entry but for id and heartbeat (called every heartbeat). */
  self: () => Omit<NodeInfo, 'id' | 'heartbeat' | 'started'>;
  /** This node's flows now (called every heartbeat). */
  flows: () => FlowRecord[];
  log?: Logger;
  heartbeatMs?: number;
  ttlMs?: number;
  maxFlows?: number;
  now?: () => number;
}

export interface RegistryStats {
  /** Live nodes in the last listing (this one included). */
  nodes: number;
  heartbeats: number;
  heartbeatFailures: number;
  /** Flows not published because of MAX_PUBLISHED_FLOWS, at the last heartbeat. */
  unpublishedFlows: number;
}

/** The load of a node as a fraction of its capacity; a node with no capacity is full. */
export function loadOf(n: Pick<NodeInfo, 'allocations' | 'capacity'>): number {
  return n.capacity > 0 ? n.allocations / n.capacity : Infinity;
}

/**
 * The least loaded node other than `selfId` with room (allocations < capacity) and a
 * listener for `proto` in `family`; its addresses for that transport, `family` first
 * and at most one of the other family (RFC 8489 §10). Ties: fewer allocations, then id.
 */
export function pickAlternate(nodes: readonly NodeInfo[], selfId: string, proto: TurnProto, family: 4 | 6): AlternateServer[] {
  const fam = (a: string): number => isIP(a);
  let best: NodeInfo | null = null;
  for (const n of nodes) {
    if (n.id === selfId || n.allocations >= n.capacity) continue;
    if (!n.turn.some((l) => l.proto === proto && fam(l.address) === family)) continue;
    if (
      best === null ||
      loadOf(n) < loadOf(best) ||
      (loadOf(n) === loadOf(best) && (n.allocations < best.allocations || (n.allocations === best.allocations && n.id < best.id)))
    )
      best = n;
  }
  if (!best) return [];
  const same = best.turn.find((l) => l.proto === proto && fam(l.address) === family)!;
  const other = best.turn.find((l) => l.proto === proto && fam(l.address) !== family && fam(l.address) !== 0);
  return [{ address: same.address, port: same.port }, ...(other ? [{ address: other.address, port: other.port }] : [])];
}

function parseNode(raw: string | null): NodeInfo | null {
  if (raw === null) return null;
  try {
    const n = JSON.parse(raw) as NodeInfo;
    if (typeof n.id !== 'string' || !Array.isArray(n.turn) || typeof n.allocations !== 'number' || typeof n.capacity !== 'number')
      return null;
    return n;
  } catch {
    return null;
  }
}

export class FlowRegistry {
  readonly stats: RegistryStats = { nodes: 0, heartbeats: 0, heartbeatFailures: 0, unpublishedFlows: 0 };
  private readonly link: ClusterLink;
  private readonly heartbeatMs: number;
  private readonly ttlMs: number;
  private readonly maxFlows: number;
  private readonly now: () => number;
  private readonly started: string;
  private timer: NodeJS.Timeout | null = null;
  /** What flows:<self> holds (flow_id -> JSON) after the last successful heartbeat; null: unknown, rewrite all. */
  private published: Map<string, string> | null = null;
  private beating = false;
  private closed = false;
  /** The live nodes of the last listing (ALTERNATE-SERVER is chosen from it, synchronously). */
  private snapshot: NodeInfo[] = [];

  constructor(private readonly opts: RegistryOptions) {
    this.link = opts.link;
    this.heartbeatMs = opts.heartbeatMs ?? HEARTBEAT_MS;
    this.ttlMs = opts.ttlMs ?? NODE_TTL_MS;
    this.maxFlows = opts.maxFlows ?? MAX_PUBLISHED_FLOWS;
    this.now = opts.now ?? Date.now;
    this.started = new Date(this.now()).toISOString();
    // After an outage Redis may have lost (or expired) our keys: rewrite everything.
    this.link.on('up', () => {
      this.published = null;
      void this.beat();
    });
  }

  get nodeId(): string {
    return this.link.nodeId;
  }

  start(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => void this.beat(), this.heartbeatMs);
    this.timer.unref();
    void this.beat();
  }

  private key(...p: string[]): string {
    return this.link.key(...p);
  }

  /** One heartbeat: the node entry, the index, the flows by difference; then a fresh listing. */
  async beat(): Promise<void> {
    if (this.beating || this.closed || !this.link.up) return;
    this.beating = true;
    try {
      const id = this.link.nodeId;
      const flows = this.opts.flows();
      const info: NodeInfo = { ...this.opts.self(), id, started: this.started, heartbeat: this.now(), flows: flows.length };
      const next = new Map<string, string>();
      for (const f of flows) {
        if (next.size >= this.maxFlows) break;
        next.set(String(f.flow_id), JSON.stringify(f));
      }
      this.stats.unpublishedFlows = flows.length - next.size;
      const flowsKey = this.key('flows', id);
      const m = this.link.redis.multi();
      m.set(this.key('node', id), JSON.stringify(info), 'PX', this.ttlMs);
      m.zadd(this.key('nodes'), info.heartbeat, id);
      const prev = this.published;
      if (prev === null) m.del(flowsKey);
      const set: string[] = [];
      for (const [k, v] of next) if (prev?.get(k) !== v) set.push(k, v);
      const gone = prev ? [...prev.keys()].filter((k) => !next.has(k)) : [];
      if (set.length) m.hset(flowsKey, ...set);
      if (gone.length) m.hdel(flowsKey, ...gone);
      m.pexpire(flowsKey, this.ttlMs);
      const res = await m.exec();
      if (!res || res.some(([err]) => err)) throw new Error('heartbeat transaction failed');
      this.published = next;
      this.stats.heartbeats++;
      await this.list();
    } catch (err) {
      this.published = null;
      this.stats.heartbeatFailures++;
      this.opts.log?.debug({ err: (err as Error).message }, 'cluster: heartbeat failed');
    } finally {
      this.beating = false;
    }
  }

  /** The live nodes (their node:<id> key exists), this one included; throws when Redis is down. */
  async list(): Promise<NodeInfo[]> {
    const r = this.link.redis;
    const ids = await r.zrange(this.key('nodes'), '0', String(MAX_NODES - 1));
    if (!ids.length) return (this.snapshot = []);
    const raw = await r.mget(...ids.map((i) => this.key('node', i)));
    const out: NodeInfo[] = [];
    const dead: string[] = [];
    ids.forEach((id, i) => {
      const n = parseNode(raw[i] ?? null);
      if (n) out.push(n);
      else dead.push(id);
    });
    if (dead.length) await r.zrem(this.key('nodes'), ...dead);
    this.stats.nodes = out.length;
    out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    this.snapshot = out;
    return out;
  }

  /** The flows of every live node, each with its `node`; this node's from memory (fresh even while Redis is down). */
  async clusterFlows(): Promise<{ flows: (FlowRecord & { node: string })[]; nodes: string[]; redis: 'up' | 'down' }> {
    const self = this.link.nodeId;
    const own = this.opts.flows().map((f) => ({ ...f, node: self }));
    if (!this.link.up) return { flows: own, nodes: [self], redis: 'down' };
    try {
      const nodes = (await this.list()).filter((n) => n.id !== self);
      const p = this.link.redis.pipeline();
      for (const n of nodes) p.hgetall(this.key('flows', n.id));
      const res = (await p.exec()) ?? [];
      const out: (FlowRecord & { node: string })[] = [...own];
      res.forEach(([err, h], i) => {
        if (err || !h) return;
        for (const v of Object.values(h as Record<string, string>)) {
          try {
            out.push({ ...(JSON.parse(v) as FlowRecord), node: nodes[i]!.id });
          } catch {
            /* a malformed entry is skipped */
          }
        }
      });
      return { flows: out, nodes: [self, ...nodes.map((n) => n.id)], redis: 'up' };
    } catch {
      return { flows: own, nodes: [self], redis: 'down' };
    }
  }

  /** GET /v1/cluster: the nodes with their load; this node alone (from memory) while Redis is down. */
  async view(): Promise<{ node: string; redis: 'up' | 'down'; nodes: (NodeInfo & { load: number; self: boolean })[] }> {
    const self = this.link.nodeId;
    const mine: NodeInfo = { ...this.opts.self(), id: self, started: this.started, heartbeat: this.now(), flows: this.opts.flows().length };
    let nodes: NodeInfo[] = [mine];
    let redis: 'up' | 'down' = 'down';
    if (this.link.up) {
      try {
        nodes = (await this.list()).filter((n) => n.id !== self);
        nodes.unshift(mine);
        redis = 'up';
      } catch {
        /* down after all */
      }
    }
    const load = (n: NodeInfo) => (n.capacity > 0 ? Math.round((n.allocations / n.capacity) * 10000) / 10000 : 1);
    return { node: self, redis, nodes: nodes.map((n) => ({ ...n, load: load(n), self: n.id === self })) };
  }

  /**
   * Where a full node sends an Allocate (src/turn/shedding.ts AlternateLookup): from the
   * last listing, at most one heartbeat old; [] while Redis is down (508 then).
   */
  alternate(proto: TurnProto, family: 4 | 6): AlternateServer[] {
    if (!this.link.up) return [];
    return pickAlternate(this.snapshot, this.link.nodeId, proto, family);
  }

  /** Stops heartbeating and removes this node's keys (a graceful stop leaves at once). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (!this.link.up) return;
    const id = this.link.nodeId;
    try {
      await this.link.redis.multi().del(this.key('node', id), this.key('flows', id)).zrem(this.key('nodes'), id).exec();
    } catch {
      /* it expires by itself */
    }
  }
}
