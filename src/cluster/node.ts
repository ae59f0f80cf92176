import type { GatehouseConfig } from '../config/config.js';
import { parseListen } from '../config/config.js';
import type { Logger } from '../util/log.js';
import type { QuotaCrossing } from '../policy/quota.js';
import { ClusterLink, defaultNodeId } from './link.js';
import { ClusterQuotas } from './quotas.js';
import { ClusterBlocks } from './blocks.js';
import { ClusterUsers } from './users.js';
import type { StaticUserDirectory } from '../store/users.js';

/**
 * This gateway's part of a cluster (store.redis; README "Cluster"): the link to Redis and
 * the shared state built on it. null when store.redis is not set (nothing changes then).
 * The gateway wires each piece into what it already has: quotas into QuotaTracker (a
 * QuotaShare), blocks into the inspector's FlowBlockList, metrics, /healthz.
 */
export interface ClusterNode {
  link: ClusterLink;
  quotas: ClusterQuotas;
  blocks: ClusterBlocks;
  /** The configuration's users, then the cluster's (`gatehouse user add`). */
  users: ClusterUsers;
  /** The /metrics source (MetricsSources.cluster). */
  metrics(): { up: boolean; outages: number; gauges: Record<string, number>; counters: Record<string, number> };
  /** Redis is away: /healthz lists `cluster` as degraded. */
  degraded(): boolean;
  close(): Promise<void>;
}

/** This gateway's node id in the cluster: store.node_id, else host name and first TURN port. */
export function clusterNodeId(cfg: GatehouseConfig): string {
  let port: number | undefined;
  try {
    port = cfg.turn.listen.length ? parseListen(cfg.turn.listen[0]!).port : undefined;
  } catch {
    port = undefined;
  }
  return cfg.store.node_id ?? defaultNodeId(port);
}

export function startClusterNode(
  cfg: GatehouseConfig,
  o: { log: Logger; reportQuota: (c: QuotaCrossing) => void; configUsers: StaticUserDirectory },
): ClusterNode | null {
  if (!cfg.store.redis) return null;
  const link = new ClusterLink({
    url: cfg.store.redis,
    nodeId: clusterNodeId(cfg),
    prefix: cfg.store.key_prefix,
    log: o.log,
  });
  const quotas = new ClusterQuotas(link, { report: o.reportQuota, intervalMs: cfg.store.sync_interval_ms, log: o.log });
  const blocks = new ClusterBlocks(link, { log: o.log });
  const users = new ClusterUsers(link, o.configUsers, cfg.realm, o.log);
  o.log.info({ node: link.nodeId }, 'cluster: sharing users, quotas, blocks and events through store.redis');
  return {
    link,
    quotas,
    blocks,
    users,
    metrics() {
      const q = quotas.stats;
      const b = blocks.stats;
      return {
        up: link.up,
        outages: link.stats.outages,
        gauges: {
          quota_counters: q.counters,
          quota_pending_bytes: q.pendingBytes,
          blocks_pending: b.pending,
          users: users.stats.users,
          users_refused: users.stats.refused,
        },
        counters: {
          quota_pushes: q.pushes,
          quota_push_failures: q.pushFailures,
          quota_crossings_reported: q.crossingsReported,
          blocks_shared: b.shared,
          blocks_received: b.received,
        },
      };
    },
    degraded: () => !link.up,
    async close() {
      blocks.close();
      users.close();
      await quotas.close(); // a last push of the deltas
      await link.close();
    },
  };
}
