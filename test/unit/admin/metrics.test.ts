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
  t.match(m, /gatehouse_recordings_open 0/, 'open read as 0 when the source has no such field');
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

t.test('a label set reported at 0 is exported at 0 before its first increment', async (t) => {
  let gw = { flows: 0, blocked: { keys_missing: 0, policy: 0 } as Record<string, number> };
  const reg = createMetrics(() => relay(), { gateway: () => gw });
  let m = await reg.metrics();
  t.match(m, /gatehouse_gateway_blocked_total\{reason="keys_missing"\} 0/);
  t.match(m, /gatehouse_gateway_blocked_total\{reason="policy"\} 0/);
  gw = { flows: 1, blocked: { keys_missing: 2, policy: 0 } };
  m = await reg.metrics();
  t.match(m, /gatehouse_gateway_blocked_total\{reason="keys_missing"\} 2/);
  t.match(m, /gatehouse_gateway_blocked_total\{reason="policy"\} 0/);
});

t.test('event counts: events by type, alerts by action, quota crossings by quota; bounded labels', async (t) => {
  const { EventCounter, MAX_LABEL_VALUES } = await import('../../../src/admin/event-counts.js');
  const c = new EventCounter();
  c.knowQuotas(['contractors-daily']);
  const reg = createMetrics(() => relay(), { eventCounts: () => c.counts });
  let m = await reg.metrics();
  t.match(m, /gatehouse_events_total\{event_type="flow_blocked"\} 0/, 'contract event types at 0 from the start');
  t.match(m, /gatehouse_alerts_total\{action="blocked"\} 0/);
  t.match(m, /gatehouse_alerts_total\{action="allowed"\} 0/);
  t.match(m, /gatehouse_quota_crossings_total\{quota="contractors-daily"\} 0/, 'a quota in force shows at 0');
  const ts = '2026-11-22T10:00:00.000000+0000';
  c.emit({ timestamp: ts, event_type: 'alert', alert: { action: 'blocked', signature_id: 'r', signature: 'r', severity: 1 } });
  c.emit({ timestamp: ts, event_type: 'alert', alert: { action: 'blocked', signature_id: 'r', signature: 'r', severity: 1 } });
  c.emit({ timestamp: ts, event_type: 'quota', quota: { id: 'contractors-daily', subject: 'bob' } });
  c.emit({ timestamp: ts, event_type: 'flow_blocked', gatehouse: { reason: 'keys_missing' } });
  m = await reg.metrics();
  t.match(m, /gatehouse_events_total\{event_type="alert"\} 2/);
  t.match(m, /gatehouse_events_total\{event_type="quota"\} 1/);
  t.match(m, /gatehouse_events_total\{event_type="flow_blocked"\} 1/);
  t.match(m, /gatehouse_alerts_total\{action="blocked"\} 2/);
  t.match(m, /gatehouse_quota_crossings_total\{quota="contractors-daily"\} 1/);
  t.notMatch(m, /bob/, 'the subject is never a label');
  for (let i = 0; i < 2 * MAX_LABEL_VALUES; i++) c.emit({ timestamp: ts, event_type: `made_up_${i}` });
  t.ok(Object.keys(c.counts.byType).length <= MAX_LABEL_VALUES + 1, 'event types beyond the bound count as other');
  t.ok((c.counts.byType.other ?? 0) > 0);
});

t.test('event counts: a quota id that is an Object.prototype name counts like any other', async (t) => {
  const { EventCounter } = await import('../../../src/admin/event-counts.js');
  const c = new EventCounter();
  c.knowQuotas(['constructor', 'toString']);
  const ts = '2026-11-22T10:00:00.000000+0000';
  for (const id of ['constructor', 'constructor', '__proto__', 'hasOwnProperty'])
    c.emit({ timestamp: ts, event_type: 'quota', quota: { id, subject: 'bob' } });
  const reg = createMetrics(() => relay(), { eventCounts: () => c.counts });
  const m = await reg.metrics();
  t.match(m, /gatehouse_quota_crossings_total\{quota="constructor"\} 2/);
  t.match(m, /gatehouse_quota_crossings_total\{quota="toString"\} 0/, 'known at 0');
  t.match(m, /gatehouse_quota_crossings_total\{quota="__proto__"\} 1/);
  t.match(m, /gatehouse_quota_crossings_total\{quota="hasOwnProperty"\} 1/);
  t.notMatch(m, /native code|NaN/, 'no inherited function turned into a count');
});

t.test('Redis event output and worker restarts: unlabelled, so exported (at 0) even while off', async (t) => {
  let r: { queued: number; sent: number; dropped: number } | undefined;
  const reg = createMetrics(() => relay(), { redisEvents: () => r });
  let m = await reg.metrics();
  t.match(m, /gatehouse_events_redis_dropped_total 0/);
  t.match(m, /gatehouse_events_redis_sent_total 0/);
  t.match(m, /gatehouse_events_redis_queue_events 0/);
  t.match(m, /gatehouse_worker_restarts_total 0/);
  t.match(m, /# HELP gatehouse_worker_restarts_total .*0 with one process/, 'the HELP line says why it is 0 here');
  r = { queued: 3, sent: 10, dropped: 4 };
  m = await reg.metrics();
  t.match(m, /gatehouse_events_redis_dropped_total 4/);
  t.match(m, /gatehouse_events_redis_sent_total 10/);
  t.match(m, /gatehouse_events_redis_queue_events 3/);
});
