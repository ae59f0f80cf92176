import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';

/**
 * Prometheus metrics. The packet path keeps plain counters (no label lookups per
 * packet); this module reads them when /metrics is scraped.
 */
export interface RelayStatsSource {
  allocations: number;
  permissions: number;
  channels: number;
  packets: { clientToPeer: number; peerToClient: number };
  bytes: { clientToPeer: number; peerToClient: number };
  authFailures: Record<string, number>;
}

export function createMetrics(stats: () => RelayStatsSource | undefined): Registry {
  const registry = new Registry();
  // Standard process_* and nodejs_* names; the event-loop monitor samples every 100 ms
  // (prom-client's 10 ms default costs ~10 ms of CPU per second on an idle gateway).
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 100 });
  const gauge = (name: string, help: string, read: (s: RelayStatsSource) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        const s = stats();
        if (s) this.set(read(s));
      },
    });
  gauge('gatehouse_turn_allocations', 'Active TURN allocations', (s) => s.allocations);
  gauge('gatehouse_turn_permissions', 'Active TURN permissions', (s) => s.permissions);
  gauge('gatehouse_turn_channels', 'Active TURN channel bindings', (s) => s.channels);
  // Monotonic totals read from the relay's plain counters: exposed as counters by
  // setting the difference since the last scrape.
  const counterFrom = (name: string, help: string, read: (s: RelayStatsSource) => Record<string, number>, label: string) => {
    const last = new Map<string, number>();
    return new Counter({
      name,
      help,
      labelNames: [label],
      registers: [registry],
      collect() {
        const s = stats();
        if (!s) return;
        for (const [k, v] of Object.entries(read(s))) {
          const d = v - (last.get(k) ?? 0);
          if (d > 0) this.inc({ [label]: k }, d);
          last.set(k, v);
        }
      },
    });
  };
  counterFrom(
    'gatehouse_relayed_packets_total',
    'Packets relayed, by direction',
    (s) => ({ client_to_peer: s.packets.clientToPeer, peer_to_client: s.packets.peerToClient }),
    'direction',
  );
  counterFrom(
    'gatehouse_relayed_bytes_total',
    'Payload bytes relayed, by direction',
    (s) => ({ client_to_peer: s.bytes.clientToPeer, peer_to_client: s.bytes.peerToClient }),
    'direction',
  );
  counterFrom('gatehouse_auth_failures_total', 'TURN authentication failures, by reason', (s) => s.authFailures, 'reason');
  return registry;
}
