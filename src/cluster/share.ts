/**
 * The flow registry and policy distribution of one gateway in a cluster (issue 14), put
 * together for gateway.ts: the registry publishes this node (its TURN listeners, admin
 * URL, load, rule set) and its flows; a full TURN server asks it for an ALTERNATE-SERVER;
 * a policy reload goes through PolicySync so it is published.
 */
import type { GatehouseConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import type { PolicyHolder } from '../policy/loader.js';
import type { TurnServer } from '../turn/server.js';
import type { ClusterLink } from './link.js';
import { FlowRegistry } from './registry.js';
import { PolicySync } from './policy-sync.js';
import { advertisedAdmin, advertisedTurn, clusterFigures, publishedFlow } from './advertise.js';

export interface ClusterShare {
  registry: FlowRegistry;
  policy: PolicySync;
  /** AdminSources.cluster: GET /v1/cluster and /v1/flows?scope=cluster. */
  admin: { view: () => Promise<unknown>; flows: () => Promise<{ flows: unknown[]; redis: 'up' | 'down' }> };
  /** Starts heartbeating and listening for policies (after the admin listener is up). */
  start(): void;
  /** Adds the registry's and policy distribution's figures to the cluster metrics source. */
  metrics<T extends { gauges?: Record<string, number>; counters?: Record<string, number> }>(base: T): T;
  close(): Promise<void>;
}

export function startClusterShare(o: {
  cfg: GatehouseConfig;
  link: ClusterLink;
  turn: TurnServer;
  policy: PolicyHolder;
  /** The admin listener's URL (read at each heartbeat). */
  adminUrl: () => string;
  /** This node's /v1/flows summaries now. */
  flows: () => Record<string, unknown>[];
  log: Logger;
}): ClusterShare {
  const policy = new PolicySync({ link: o.link, holder: o.policy, dataDir: o.cfg.data_dir, log: o.log });
  const registry = new FlowRegistry({
    link: o.link,
    log: o.log,
    self: () => {
      const p = policy.info();
      return {
        turn: advertisedTurn(o.cfg, o.turn.addresses()),
        admin: advertisedAdmin(o.cfg, o.adminUrl()),
        ...o.turn.load(),
        flows: 0,
        policy: { version: p.version, hash: p.hash, origin: p.origin },
      };
    },
    flows: () => o.flows().map(publishedFlow),
  });
  // src/turn/shedding.ts: at turn.max_allocations, the least loaded live node with room.
  o.turn.setAlternateLookup((proto, family) => registry.alternate(proto, family));
  return {
    registry,
    policy,
    admin: {
      view: () => registry.view(),
      flows: async () => {
        const c = await registry.clusterFlows();
        return { flows: c.flows, redis: c.redis };
      },
    },
    start() {
      policy.start();
      registry.start();
    },
    metrics(base) {
      const f = clusterFigures(registry, policy);
      return { ...base, gauges: { ...base.gauges, ...f.gauges }, counters: { ...base.counters, ...f.counters } };
    },
    async close() {
      o.turn.setAlternateLookup(null);
      policy.close();
      await registry.close();
    },
  };
}
