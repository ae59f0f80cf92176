/**
 * What worker 0 shows of every relay worker (src/cli/worker-views.ts), against a stand-in
 * supervisor: gathers answered or not (then its own, metrics marked), flows tagged with
 * their worker, quota rows merged by (quota, subject, window) at the highest use, and a
 * worker's events batched for worker 0 and shown there.
 */
import t from 'tap';
import { Registry } from 'prom-client';
import { workerViews } from '../../../src/cli/worker-views.js';
import type { RunningGateway } from '../../../src/gateway/gateway.js';
import type { WorkerReply } from '../../../src/turn/workers.js';
import { silentLogger } from '../../../src/util/log.js';

function gateway(over: Partial<RunningGateway> = {}): RunningGateway {
  const registry = new Registry();
  return {
    registry,
    flows: () => [{ flow_id: 1, user: 'alice' }],
    quotas: () => [{ quota: 'q', subject: 'user:alice', window: 'w', used: 5 }],
    showEvent: () => {},
    ...over,
  } as unknown as RunningGateway;
}

t.test('worker 0: gathers answered by the supervisor, or its own after the wait', async (t) => {
  const sent: WorkerReply[] = [];
  const gw = gateway();
  const v = workerViews({ index: 0, reply: (m) => void sent.push(m), gateway: () => gw, log: silentLogger });
  const flows = v.flows();
  const req = sent.pop() as { type: string; id: number; kind: string };
  t.match(req, { type: 'gather-request', kind: 'flows' });
  v.onCommand({
    type: 'gather-response',
    id: req.id,
    result: [
      { flow_id: 1, worker: 0 },
      { flow_id: 1, worker: 1 },
    ],
  });
  t.same(
    await flows,
    [
      { flow_id: 1, worker: 0 },
      { flow_id: 1, worker: 1 },
    ],
    "every worker's flows",
  );

  const quotas = v.quotas();
  const q = sent.pop() as { id: number; kind: string };
  t.equal(q.kind, 'quotas');
  v.onCommand({
    type: 'gather-response',
    id: q.id,
    result: [
      { quota: 'q', subject: 'user:alice', window: 'w', used: 5 },
      { quota: 'q', subject: 'user:alice', window: 'w', used: 9 },
      { quota: 'q', subject: 'user:bob', window: 'w', used: 1 },
    ],
  });
  t.same(
    await quotas,
    [
      { quota: 'q', subject: 'user:alice', window: 'w', used: 9 },
      { quota: 'q', subject: 'user:bob', window: 'w', used: 1 },
    ],
    'one row per (quota, subject, window), at the highest use',
  );

  const metrics = v.metrics();
  const m = sent.pop() as { id: number; kind: string };
  t.equal(m.kind, 'metrics');
  v.onCommand({ type: 'gather-response', id: m.id, result: null }); // the supervisor could not aggregate
  t.match(await metrics, /^# gatehouse: this worker's metrics only \(the supervisor did not aggregate the workers\)/, 'its own, marked');
  const late = v.flows();
  v.onCommand({ type: 'gather-response', id: 9999, result: [] }); // an id nobody asked
  const lateReq = sent.pop() as { id: number };
  v.onCommand({ type: 'gather-response', id: lateReq.id, result: 'not a list' });
  t.same(await late, [{ flow_id: 1, user: 'alice', worker: 0 }], 'a malformed answer: its own flows, tagged');
});

t.test('every worker answers a collect with its part', async (t) => {
  const sent: WorkerReply[] = [];
  const v = workerViews({ index: 1, reply: (m) => void sent.push(m), gateway: () => gateway(), log: silentLogger });
  v.onCommand({ type: 'gather-collect', id: 7, kind: 'flows' });
  t.same(sent.pop(), { type: 'gather-part', id: 7, part: [{ flow_id: 1, user: 'alice', worker: 1 }] });
  v.onCommand({ type: 'gather-collect', id: 8, kind: 'quotas' });
  t.match(sent.pop(), { type: 'gather-part', id: 8, part: [{ subject: 'user:alice' }] });
  v.onCommand({ type: 'gather-collect', id: 9, kind: 'metrics' });
  await new Promise((r) => setTimeout(r, 20));
  t.match(sent.pop(), { type: 'gather-part', id: 9, part: [] }, "the registry's JSON (empty here)");
  const none = workerViews({ index: 1, reply: (m) => void sent.push(m), gateway: () => undefined, log: silentLogger });
  none.onCommand({ type: 'gather-collect', id: 10, kind: 'flows' });
  t.equal(sent.length, 0, 'not serving yet: no part (the supervisor does not wait for it)');
});

t.test('a worker\u2019s events go to worker 0 in batches; worker 0 shows well-formed ones', async (t) => {
  const sent: WorkerReply[] = [];
  const v = workerViews({ index: 1, reply: (m) => void sent.push(m), gateway: () => gateway(), log: silentLogger });
  for (let i = 0; i < 3; i++) v.eventTap.emit({ timestamp: 't', event_type: 'alert', n: i } as never);
  t.equal(sent.length, 0, 'batched, not one message per event');
  await new Promise((r) => setTimeout(r, 400));
  t.match(sent, [{ type: 'events', events: [{ n: 0 }, { n: 1 }, { n: 2 }] }], 'one batch');
  const shown: unknown[] = [];
  const zero = workerViews({
    index: 0,
    reply: () => {},
    gateway: () => gateway({ showEvent: (e) => void shown.push(e) }),
    log: silentLogger,
  });
  zero.onCommand({ type: 'sibling-events', events: [{ event_type: 'alert', host: 'gw.w1' }, 'junk', null, { no: 'type' }] });
  t.same(shown, [{ event_type: 'alert', host: 'gw.w1' }], 'only events with an event_type are shown');
});
