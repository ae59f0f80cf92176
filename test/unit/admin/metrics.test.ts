import t from 'tap';
import { createMetrics, type RelayStatsSource } from '../../../src/admin/metrics.js';

const relay = (extra: Partial<RelayStatsSource> = {}): RelayStatsSource => ({
  allocations: 2,
  permissions: 3,
  channels: 1,
  packets: { clientToPeer: 10, peerToClient: 20 },
  bytes: { clientToPeer: 100, peerToClient: 200 },
  authFailures: { stale_nonce: 1 },
  ...extra,
});

t.test('the one-argument form still works; refused is read when present, ignored when not', async (t) => {
  const without = await createMetrics(() => relay()).metrics();
  t.match(without, /gatehouse_turn_allocations 2/);
  t.match(without, /gatehouse_auth_failures_total\{reason="stale_nonce"\} 1/);
  t.notMatch(without, /gatehouse_turn_refused_total\{/);
  t.notMatch(without, /gatehouse_events_dropped_total/, 'no sources, no such families');
  let s = relay({ refused: { peer_denied: 4, quota: 1 } });
  const reg = createMetrics(() => s);
  t.match(await reg.metrics(), /gatehouse_turn_refused_total\{reason="peer_denied"\} 4/);
  s = relay({ refused: { peer_denied: 6, quota: 1, bogus: 'x' as unknown as number } });
  const m = await reg.metrics();
  t.match(m, /gatehouse_turn_refused_total\{reason="peer_denied"\} 6/, 'a counter follows the plain total');
  t.notMatch(m, /bogus/, 'a malformed refused map is not exposed');
});

t.test('degradation sources: supervisor, events, recordings, quota store, gateway', async (t) => {
  const failures = new Map([['turn.udp.message', 2]]);
  let ev = { dropped: { enospc: 5, queue_full: 1 }, written: 40, queueEvents: 7, queueBytes: 900, degraded: true };
  const reg = createMetrics(() => relay(), {
    supervisor: { failures },
    events: () => ev,
    recordings: () => ({ failures: { write: { enospc: 1 }, seal: {}, open: {}, head: {}, certificate: {} }, incomplete: 1, unsealed: 2 }),
    quotaFlush: () => ({ failures: { sqlite_full: 3 }, failing: false }),
    gateway: () => ({ flows: 4, heldPackets: { keys_missing: 9 } }),
  });
  let m = await reg.metrics();
  t.match(m, /gatehouse_supervised_exceptions_total\{where="turn\.udp\.message"\} 2/);
  t.match(m, /gatehouse_events_dropped_total\{reason="enospc"\} 5/);
  t.match(m, /gatehouse_events_dropped_total\{reason="queue_full"\} 1/);
  t.match(m, /gatehouse_events_written_total 40/);
  t.match(m, /gatehouse_events_queue_events 7/);
  t.match(m, /gatehouse_events_queue_bytes 900/);
  t.match(m, /gatehouse_recording_write_failures_total\{op="write",reason="enospc"\} 1/);
  t.match(m, /gatehouse_recordings_incomplete_total 1/);
  t.match(m, /gatehouse_recordings_unsealed 2/);
  t.match(m, /gatehouse_quota_flush_failures_total\{reason="sqlite_full"\} 3/);
  t.match(m, /gatehouse_degraded\{component="events"\} 1/);
  t.match(m, /gatehouse_degraded\{component="recordings"\} 1/);
  t.match(m, /gatehouse_degraded\{component="quota_store"\} 0/);
  t.match(m, /gatehouse_gateway_flows 4/);
  t.match(m, /gatehouse_gateway_held_packets_total\{reason="keys_missing"\} 9/);
  t.match(m, /# TYPE gatehouse_events_dropped_total counter/);
  failures.set('turn.udp.message', 3);
  ev = { ...ev, dropped: { enospc: 8, queue_full: 1 }, degraded: false };
  m = await reg.metrics();
  t.match(m, /gatehouse_supervised_exceptions_total\{where="turn\.udp\.message"\} 3/);
  t.match(m, /gatehouse_events_dropped_total\{reason="enospc"\} 8/);
  t.match(m, /gatehouse_degraded\{component="events"\} 0/);
});

t.test('a source that throws does not break the scrape', async (t) => {
  const reg = createMetrics(() => relay(), {
    events: () => {
      throw new Error('boom');
    },
  });
  t.match(await reg.metrics(), /gatehouse_turn_allocations 2/);
});

t.test('the relay fast path: active gauge and one counter per field; nothing but the gauge when off', async (t) => {
  let fp: Record<string, number> | null = { batches: 3, expired: 1, sendDropped: 0 };
  const reg = createMetrics(() => relay(), { fastPath: () => fp });
  let m = await reg.metrics();
  t.match(m, /gatehouse_turn_fast_path_active 1/);
  t.match(m, /gatehouse_turn_fast_path_batches_total 3/);
  t.match(m, /gatehouse_turn_fast_path_expired_total 1/);
  t.match(m, /gatehouse_turn_fast_path_send_dropped_total 0/);
  fp = { batches: 10, expired: 1, sendDropped: 2 };
  m = await reg.metrics();
  t.match(m, /gatehouse_turn_fast_path_batches_total 10/, 'counters follow the plain totals');
  t.match(m, /gatehouse_turn_fast_path_send_dropped_total 2/);
  const off = await createMetrics(() => relay(), { fastPath: () => null }).metrics();
  t.match(off, /gatehouse_turn_fast_path_active 0/);
  t.notMatch(off, /gatehouse_turn_fast_path_batches_total/, 'no counters without a fast path');
});
