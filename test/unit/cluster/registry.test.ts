// The flow registry against a real redis-server: nodes and their flows published and
// listed from any node, flows updated by difference, a node that stops heartbeating drops
// out within its TTL, a graceful stop leaves at once, the ALTERNATE-SERVER choice.
import t from 'tap';
import { ClusterLink } from '../../../src/cluster/link.js';
import { FlowRegistry, pickAlternate, type FlowRecord, type NodeInfo } from '../../../src/cluster/registry.js';
import { peerSkip } from '../../e2e/helpers/require-peer.js';
import { startTestRedis, until } from '../../e2e/helpers/redis.js';

const skip = peerSkip(t, 'redis-server');

function node(id: string, allocations: number, capacity: number, turn: NodeInfo['turn']): NodeInfo {
  return { id, turn, admin: `http://${id}`, allocations, capacity, flows: 0, started: '', heartbeat: 0 };
}

t.test('pickAlternate: the least loaded node with room and a listener of the transport and family (RFC 8489 §10)', async (t) => {
  const udp4 = (a: string, p = 3478) => ({ proto: 'udp' as const, address: a, port: p });
  const nodes = [
    node('gw1', 5, 10, [udp4('10.0.0.1')]), // self
    node('gw2', 9, 10, [udp4('10.0.0.2')]),
    node('gw3', 3, 10, [
      udp4('10.0.0.3'),
      { proto: 'udp', address: '2001:db8::3', port: 3478 },
      { proto: 'tcp', address: '10.0.0.3', port: 3479 },
    ]),
    node('gw4', 0, 0, [udp4('10.0.0.4')]), // draining: capacity 0
    node('gw5', 10, 10, [udp4('10.0.0.5')]), // full
    node('gw6', 1, 100, [{ proto: 'udp', address: '2001:db8::6', port: 3478 }]), // v6 only, least loaded
  ];
  t.same(pickAlternate(nodes, 'gw1', 'udp', 4), [
    { address: '10.0.0.3', port: 3478 },
    { address: '2001:db8::3', port: 3478 },
  ]);
  t.same(pickAlternate(nodes, 'gw1', 'udp', 6), [{ address: '2001:db8::6', port: 3478 }]);
  t.same(pickAlternate(nodes, 'gw1', 'tcp', 4), [{ address: '10.0.0.3', port: 3479 }]);
  t.same(pickAlternate(nodes, 'gw1', 'tls', 4), [], 'no TLS listener anywhere');
  t.same(pickAlternate(nodes, 'gw3', 'tcp', 4), [], 'never itself');
  // Ties: fewer allocations first, then the id.
  const tie = [node('b', 2, 20, [udp4('10.0.0.2')]), node('a', 1, 10, [udp4('10.0.0.1')]), node('c', 1, 10, [udp4('10.0.0.9')])];
  t.same(pickAlternate(tie, 'x', 'udp', 4), [{ address: '10.0.0.1', port: 3478 }]);
});

t.test('nodes and flows through redis-server', { skip }, async (t) => {
  const redis = await startTestRedis();
  t.teardown(() => redis.close());
  const links: ClusterLink[] = [];
  const regs: FlowRegistry[] = [];
  t.teardown(async () => {
    for (const r of regs) await r.close();
    for (const l of links) await l.close();
  });
  const flows: Record<string, FlowRecord[]> = {
    gw3: [],
    gw1: [{ flow_id: 1, user: 'alice', peer: '192.0.2.1' }],
    gw2: [
      { flow_id: 7, user: 'bob', allocation: 'a7', peer: '192.0.2.7' },
      { flow_id: 8, user: 'bob', allocation: 'a7', peer: '192.0.2.8' },
    ],
  };
  const load: Record<string, number> = { gw1: 4, gw2: 1, gw3: 0 };
  const make = (id: string) => {
    const link = new ClusterLink({ url: redis.url, nodeId: id });
    links.push(link);
    const reg = new FlowRegistry({
      link,
      self: () => ({
        turn: [{ proto: 'udp', address: '127.0.0.1', port: id === 'gw1' ? 3478 : 3479 }],
        admin: `http://127.0.0.1:${id === 'gw1' ? 8080 : 8081}`,
        allocations: load[id]!,
        capacity: 4,
        flows: 0,
      }),
      flows: () => flows[id]!,
      heartbeatMs: 100,
      ttlMs: 600,
    });
    regs.push(reg);
    return { link, reg };
  };
  const g1 = make('gw1');
  const g2 = make('gw2');
  t.ok(await g1.link.ready(5000));
  t.ok(await g2.link.ready(5000));
  g1.reg.start();
  g2.reg.start();

  t.ok(await until(async () => (await g1.reg.view()).nodes.length === 2, 3000), 'gw1 sees both nodes');
  const v = await g1.reg.view();
  t.equal(v.redis, 'up');
  t.same(
    v.nodes.map((n) => [n.id, n.allocations, n.capacity, n.load, n.self, n.flows]),
    [
      ['gw1', 4, 4, 1, true, 1],
      ['gw2', 1, 4, 0.25, false, 2],
    ],
  );
  t.equal(v.nodes[1]!.admin, 'http://127.0.0.1:8081');

  // gw1 is full (4/4): its alternate is gw2's UDP listener.
  t.ok(await until(() => g1.reg.alternate('udp', 4).length === 1, 3000));
  t.same(g1.reg.alternate('udp', 4), [{ address: '127.0.0.1', port: 3479 }]);
  t.same(g1.reg.alternate('tcp', 4), [], 'gw2 has no TCP listener');

  // The flows of all nodes, each with its node.
  const cf = await g1.reg.clusterFlows();
  t.same(cf.flows.map((f) => `${f.node}/${f.flow_id}/${f.peer}`).sort(), ['gw1/1/192.0.2.1', 'gw2/7/192.0.2.7', 'gw2/8/192.0.2.8']);
  t.same(cf.nodes, ['gw1', 'gw2']);

  // By difference: one flow closes, one opens, one changes.
  flows.gw2 = [
    { flow_id: 8, user: 'bob', allocation: 'a7', peer: '192.0.2.8', verdict: 'blocked' },
    { flow_id: 9, user: 'bob', allocation: 'a9', peer: '192.0.2.9' },
  ];
  const r = redis.client();
  t.ok(
    await until(async () => {
      const h = await r.hgetall('gatehouse:flows:gw2');
      return Object.keys(h).sort().join() === '8,9' && JSON.parse(h['8']!).verdict === 'blocked';
    }, 3000),
    'flows:gw2 follows the node',
  );

  // SIGKILL-like: gw2's connection goes without a goodbye; its entry and flows expire.
  const t0 = Date.now();
  regs.splice(regs.indexOf(g2.reg), 1);
  links.splice(links.indexOf(g2.link), 1);
  await g2.link.close();
  t.ok(await until(async () => (await g1.reg.view()).nodes.length === 1, 3000), 'gw2 drops out');
  const gone = Date.now() - t0;
  t.ok(gone <= 2500, `within its TTL (600 ms), a heartbeat and some slack: ${gone} ms`);
  t.equal(await r.exists('gatehouse:flows:gw2'), 0, "the dead node's flows expired with it");
  t.same(g1.reg.alternate('udp', 4), [], 'no alternate left: a full gw1 answers 508');
  t.same(await r.zrange('gatehouse:nodes', '0', '-1'), ['gw1'], 'the index forgets it');

  // A graceful stop leaves at once.
  const g3 = make('gw3');
  t.ok(await g3.link.ready(5000));
  g3.reg.start();
  t.ok(await until(async () => (await g1.reg.view()).nodes.length === 2, 3000));
  await g3.reg.close();
  t.equal((await g1.reg.view()).nodes.length, 1, 'gone without waiting for the TTL');

  // Redis down: this node alone, from memory; no alternate.
  await redis.stop();
  t.ok(await until(() => !g1.link.up, 5000));
  const down = await g1.reg.view();
  t.equal(down.redis, 'down');
  t.same(
    down.nodes.map((n) => n.id),
    ['gw1'],
  );
  t.same(
    (await g1.reg.clusterFlows()).flows.map((f) => f.flow_id),
    [1],
  );
  // Back: the entry is rewritten whole (Redis lost everything: no persistence here).
  await redis.start();
  t.ok(await until(async () => (await r.hlen('gatehouse:flows:gw1').catch(() => -1)) === 1, 10000), 'flows rewritten after the outage');
  t.ok(g1.reg.stats.heartbeatFailures >= 0 && g1.reg.stats.heartbeats > 3);
});

t.test('a node publishes at most maxFlows flows', { skip }, async (t) => {
  const redis = await startTestRedis();
  t.teardown(() => redis.close());
  const link = new ClusterLink({ url: redis.url, nodeId: 'big' });
  const reg = new FlowRegistry({
    link,
    self: () => ({ turn: [], admin: '', allocations: 0, capacity: 1, flows: 0 }),
    flows: () => Array.from({ length: 5 }, (_, i) => ({ flow_id: i })),
    maxFlows: 3,
  });
  t.teardown(async () => {
    await reg.close();
    await link.close();
  });
  t.ok(await link.ready(5000));
  await reg.beat();
  t.equal(await redis.client().hlen('gatehouse:flows:big'), 3);
  t.equal(reg.stats.unpublishedFlows, 2);
  t.equal(JSON.parse((await redis.client().get('gatehouse:node:big'))!).flows, 5, 'the count is the whole');
});
