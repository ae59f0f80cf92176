/**
 * What this gateway tells the cluster about itself (src/cluster/registry.ts NodeInfo):
 * its TURN listeners and admin URL as others reach them, and the flow summaries it
 * publishes; plus the registry's and policy distribution's figures for /metrics.
 */
import type { GatehouseConfig } from '../config/config.js';
import type { FlowRecord, FlowRegistry, NodeInfo } from './registry.js';
import type { PolicySync } from './policy-sync.js';

const WILDCARD = new Set(['0.0.0.0', '::', '::ffff:0.0.0.0']);

/** A wildcard listen address is replaced by turn.public_address, else turn.relay_address. */
function reachable(cfg: GatehouseConfig, address: string): string {
  if (cfg.turn.public_address) return cfg.turn.public_address;
  return WILDCARD.has(address) ? cfg.turn.relay_address : address;
}

/** The TURN listeners (bound addresses and ports) as ALTERNATE-SERVER would name them. */
export function advertisedTurn(
  cfg: GatehouseConfig,
  bound: { proto: 'udp' | 'tcp' | 'tls'; address: string; port: number }[],
): NodeInfo['turn'] {
  return bound.map((l) => ({ proto: l.proto, address: reachable(cfg, l.address), port: l.port }));
}

/** The admin base URL with a wildcard host replaced as for TURN. */
export function advertisedAdmin(cfg: GatehouseConfig, url: string): string {
  try {
    const u = new URL(url);
    const host = u.hostname.replace(/^\[|\]$/g, '');
    if (WILDCARD.has(host)) {
      const a = reachable(cfg, host);
      u.hostname = a.includes(':') ? `[${a}]` : a;
    }
    return u.origin;
  } catch {
    return url;
  }
}

/**
 * A flow as the registry publishes it: the /v1/flows summary without its byte and packet
 * counters (they change every packet: a node would rewrite every flow every heartbeat).
 */
export function publishedFlow(summary: Record<string, unknown>): FlowRecord {
  const { bytes: _b, packets: _p, ...rest } = summary;
  return rest as FlowRecord;
}

/** The registry's and policy distribution's numbers, for MetricsSources.cluster gauges/counters. */
export function clusterFigures(
  registry: FlowRegistry,
  sync: PolicySync,
): { gauges: Record<string, number>; counters: Record<string, number> } {
  return {
    gauges: { nodes: registry.stats.nodes, flows_unpublished: registry.stats.unpublishedFlows, policy_version: sync.stats.version },
    counters: {
      heartbeat_failures: registry.stats.heartbeatFailures,
      policy_published: sync.stats.published,
      policy_applied: sync.stats.applied,
      policy_rejected: sync.stats.rejected,
    },
  };
}
