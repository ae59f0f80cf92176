// Quota counters shared through a real redis-server (issue 14): two gateways' trackers
// (QuotaTracker + ClusterQuotas on their own ClusterLink) count one subject; the crossing is
// reported by exactly one of them and both cut non-vital traffic (vital passes); with Redis
// away each counts locally and, once Redis is back (its data lost: no persistence), the
// pushed deltas reconcile the total and the crossing is reported once.
import t from 'tap';
import { systemClock } from '../../../src/util/clock.js';
import { QuotaTracker, type QuotaCrossing } from '../../../src/policy/quota.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { ClusterLink } from '../../../src/cluster/link.js';
import { ClusterQuotas } from '../../../src/cluster/quotas.js';
import { peerSkip } from '../../e2e/helpers/require-peer.js';
import { startTestRedis, until } from '../../e2e/helpers/redis.js';

const skip = peerSkip(t, 'redis-server');

const quotas = parseRuleFile(
  `quotas:
  - id: daily
    users: [alice, bob, carol, dave]
    limit: 1000B
    period: day
    vital: [10.20.0.0/16]
`,
  'q.yaml',
).quotas;

interface Node {
  link: ClusterLink;
  share: ClusterQuotas;
  tracker: QuotaTracker;
  crossings: QuotaCrossing[];
}

function node(url: string, id: string): Node {
  const link = new ClusterLink({ url, nodeId: id, prefix: 'qtest:' });
  const crossings: QuotaCrossing[] = [];
  const report = (c: QuotaCrossing) => crossings.push(c);
  const share = new ClusterQuotas(link, { report, intervalMs: 50 });
  const tracker = new QuotaTracker(quotas, systemClock, 'UTC', null, report, undefined, share);
  share.attach(tracker);
  return { link, share, tracker, crossings };
}

const total = (...ns: Node[]) => ns.reduce((s, n) => s + n.crossings.length, 0);

t.test('shared quota counters', { skip }, async (t) => {
  const redis = await startTestRedis();
  t.teardown(() => redis.close());
  const a = node(redis.url, 'gwA');
  const b = node(redis.url, 'gwB');
  t.teardown(async () => {
    await a.share.close();
    await b.share.close();
    await a.link.close();
    await b.link.close();
  });
  t.ok(await a.link.ready(5000));
  t.ok(await b.link.ready(5000));
  const peer = '203.0.113.9';

  await t.test('a crossing made by two gateways: one report, both cut', async (t) => {
    t.equal(a.tracker.account('alice', [], peer, 600), 'pass');
    t.equal(b.tracker.account('alice', [], peer, 600), 'pass', 'locally B is under the limit');
    t.ok(
      await until(() => a.tracker.account('alice', [], peer, 0) === 'drop' && b.tracker.account('alice', [], peer, 0) === 'drop', 3000),
      'both cut',
    );
    await new Promise((r) => setTimeout(r, 300));
    t.equal(total(a, b), 1, 'exactly one gateway reported the crossing');
    t.match([...a.crossings, ...b.crossings][0], { quota: 'daily', subject: 'user:alice', limit: 1000, used: 1200 });
    t.equal(a.tracker.account('alice', [], '10.20.1.1', 10), 'pass', 'vital traffic still passes');
    const c = redis.client();
    const keys = await c.keys('qtest:quota:*');
    t.equal(keys.length, 2, 'a counter and its crossed flag');
    const ttl = await c.pttl(keys.find((k) => !k.endsWith(':crossed'))!);
    t.ok(ttl > 3_600_000 && ttl <= 86_400_000 + 3_600_000, `expires after the window (+1 h): ${ttl}`);
  });

  await t.test('a crossing on one gateway cuts the other one (pub/sub), one report', async (t) => {
    const before = total(a, b);
    t.equal(b.tracker.account('bob', [], peer, 10), 'pass');
    t.equal(a.tracker.account('bob', [], peer, 1500), 'pass');
    t.ok(await until(() => b.tracker.account('bob', [], peer, 0) === 'drop', 3000), 'B cuts bob');
    await new Promise((r) => setTimeout(r, 300));
    t.equal(total(a, b) - before, 1);
    t.equal(a.crossings.at(-1)?.subject, 'user:bob', 'the gateway whose push crossed reported it');
  });

  await t.test('Redis away: local counting; back (data lost): reconciled, reported once', async (t) => {
    const before = total(a, b);
    t.equal(a.tracker.account('carol', [], peer, 100), 'pass');
    t.ok(await until(() => a.share.total('daily', 'user:carol', a.tracker.snapshot()[0]!.window) !== undefined, 1000));
    await new Promise((r) => setTimeout(r, 200)); // pushed
    await redis.stop();
    t.ok(await until(() => !a.link.up && !b.link.up, 5000), 'both see the outage');
    t.equal(a.tracker.account('carol', [], peer, 400), 'pass');
    t.equal(b.tracker.account('carol', [], peer, 600), 'pass', 'each under the limit locally');
    // dave crosses locally on A during the outage: A reports it itself.
    t.equal(a.tracker.account('dave', [], peer, 1200), 'pass');
    t.equal(a.tracker.account('dave', [], peer, 1), 'drop', 'cut locally');
    t.equal(total(a, b) - before, 1, 'the local crossing is reported during the outage');
    t.ok(a.share.stats.pendingBytes >= 1600, 'deltas held');
    await redis.start();
    t.ok(await until(() => a.link.up && b.link.up, 10000), 'back');
    t.ok(
      await until(() => a.tracker.account('carol', [], peer, 0) === 'drop' && b.tracker.account('carol', [], peer, 0) === 'drop', 5000),
      'the summed deltas cross: both cut carol',
    );
    t.ok(await until(() => b.tracker.account('dave', [], peer, 0) === 'drop', 5000), 'B learns of dave');
    await new Promise((r) => setTimeout(r, 300));
    const all = [...a.crossings, ...b.crossings];
    t.equal(all.filter((c) => c.subject === 'user:carol').length, 1, 'carol reported once, after the outage');
    t.equal(all.filter((c) => c.subject === 'user:dave').length, 1, 'dave not reported again');
    const c = redis.client();
    const carol = (await c.keys('qtest:quota:*carol*')).find((k) => !k.endsWith(':crossed'))!;
    // Redis lost its data: each gateway's push starts from at least the total it had read
    // (A: 100), then adds its outage delta; B pushing first loses A's old 100 (1000), A first keeps it (1100).
    const reconciled = Number(await c.get(carol));
    t.ok(reconciled >= 1000 && reconciled <= 1100, `the total is reconciled from the deltas: ${reconciled}`);
    t.equal(a.share.stats.pendingBytes, 0);
  });
});

t.test('bounded: at most maxEntries counters followed; Redis away, nothing is pushed', async (t) => {
  const link = new ClusterLink({ url: 'redis://127.0.0.1:1/0', nodeId: 'gwZ' });
  const crossings: QuotaCrossing[] = [];
  const share = new ClusterQuotas(link, { report: (c) => crossings.push(c), intervalMs: 20, maxEntries: 3 });
  const tracker = new QuotaTracker(quotas, systemClock, 'UTC', null, (c) => crossings.push(c), undefined, share);
  share.attach(tracker);
  t.teardown(async () => {
    await share.close();
    await link.close();
  });
  for (const u of ['alice', 'bob', 'carol', 'dave']) tracker.account(u, [], '203.0.113.9', 10);
  t.equal(share.stats.counters, 3, 'the bound holds');
  t.equal(share.stats.pushes, 0);
  t.equal(tracker.account('alice', [], '203.0.113.9', 2000), 'pass');
  t.equal(tracker.account('alice', [], '203.0.113.9', 1), 'drop', 'Redis away: cut on the local view');
  t.equal(crossings.length, 1, 'and reported here');
});
