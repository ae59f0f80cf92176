// Block lists shared through a real redis-server (issue 14): user × peer IP blocked on one
// gateway is refused on the others at once (pub/sub), by a gateway that connects later
// (SCAN of the block keys, with their TTL), and after an outage (held, written when back);
// the TTL ends the block everywhere.
import t from 'tap';
import { systemClock } from '../../../src/util/clock.js';
import { FlowBlockList } from '../../../src/gateway/block-list.js';
import { ClusterLink } from '../../../src/cluster/link.js';
import { ClusterBlocks } from '../../../src/cluster/blocks.js';
import { peerSkip } from '../../e2e/helpers/require-peer.js';
import { startTestRedis, until } from '../../e2e/helpers/redis.js';

const skip = peerSkip(t, 'redis-server');

function node(url: string, id: string) {
  const link = new ClusterLink({ url, nodeId: id, prefix: 'btest:' });
  const list = new FlowBlockList(systemClock);
  const blocks = new ClusterBlocks(link);
  blocks.attach(list);
  return {
    link,
    list,
    blocks,
    async close() {
      blocks.close();
      await link.close();
    },
  };
}

t.test('shared block lists', { skip }, async (t) => {
  const redis = await startTestRedis();
  t.teardown(() => redis.close());
  const a = node(redis.url, 'gwA');
  const b = node(redis.url, 'gwB');
  t.teardown(() => a.close());
  t.teardown(() => b.close());
  t.ok(await a.link.ready(5000));
  t.ok(await b.link.ready(5000));
  await new Promise((r) => setTimeout(r, 100)); // subscriptions in place

  a.list.block('mallory', '127.0.0.7', 60_000);
  a.list.block('eve:x', '::1', 60_000); // ':' in the user and the IPv6 address survive the key
  t.ok(await until(() => b.list.isBlocked('mallory', '127.0.0.7') && b.list.isBlocked('eve:x', '::1'), 3000), 'refused on B');
  t.notOk(b.list.isBlocked('mallory', '127.0.0.8'), 'another peer IP is not');
  t.notOk(b.list.isBlocked('alice', '127.0.0.7'), 'another user is not');
  const c = redis.client();
  const ttl = await c.pttl('btest:block:mallory:127.0.0.7');
  t.ok(ttl > 55_000 && ttl <= 60_000, `Redis expires the block with it: ${ttl}`);

  // Messages that are not blocks (bad JSON, JSON null, a number, wrong fields) are ignored
  // quietly: nothing applied, no handler failure logged, the next real block still arrives.
  const warned: string[] = [];
  const logged = new ClusterLink({
    url: redis.url,
    nodeId: 'gwL',
    prefix: 'btest:',
    log: { warn: (_o: unknown, m: string) => void warned.push(m), info: () => {}, debug: () => {} } as never,
  });
  const lList = new FlowBlockList(systemClock);
  const lBlocks = new ClusterBlocks(logged);
  lBlocks.attach(lList);
  t.teardown(async () => {
    lBlocks.close();
    await logged.close();
  });
  t.ok(await logged.ready(5000));
  await new Promise((r) => setTimeout(r, 100));
  const received = lBlocks.stats.received;
  for (const junk of ['not json', 'null', '42', '"text"', '{"user":1,"ip":"x","ms":5}', '{"user":"u","ip":"127.0.0.1","ms":-1}'])
    await c.publish('btest:blocks', junk);
  await c.publish('btest:blocks', JSON.stringify({ user: 'trudy', ip: '127.0.0.11', ms: 60_000, node: 'gwX' }));
  t.ok(await until(() => lList.isBlocked('trudy', '127.0.0.11'), 3000), 'the real block after the junk arrives');
  t.equal(lBlocks.stats.received, received + 1, 'only the real block was applied');
  t.same(
    warned.filter((w) => /handler failed/.test(w)),
    [],
    'no message handler failed',
  );

  // A gateway that connects later reads the blocks in force.
  const late = node(redis.url, 'gwC');
  t.teardown(() => late.close());
  t.ok(
    await until(() => late.list.isBlocked('mallory', '127.0.0.7') && late.list.isBlocked('eve:x', '::1'), 5000),
    'a late gateway has it',
  );

  // TTL: a short block ends everywhere.
  b.list.block('bob', '127.0.0.9', 400);
  t.ok(await until(() => a.list.isBlocked('bob', '127.0.0.9'), 2000));
  await new Promise((r) => setTimeout(r, 600));
  t.notOk(a.list.isBlocked('bob', '127.0.0.9'), 'expired on A');
  t.equal(await c.exists('btest:block:bob:127.0.0.9'), 0, 'and in Redis');

  // Outage: a block made meanwhile holds locally and reaches the others once Redis is back.
  await redis.stop();
  t.ok(await until(() => !a.link.up && !b.link.up, 5000));
  a.list.block('carol', '127.0.0.10', 60_000);
  t.ok(a.list.isBlocked('carol', '127.0.0.10'), 'local block while Redis is away');
  t.equal(a.blocks.stats.pending, 1);
  t.notOk(b.list.isBlocked('carol', '127.0.0.10'));
  await redis.start(); // no persistence: Redis comes back empty
  t.ok(await until(() => b.list.isBlocked('carol', '127.0.0.10'), 10000), 'B refuses it after the outage');
  t.equal(a.blocks.stats.pending, 0);
  const c2 = redis.client();
  t.ok((await c2.pttl('btest:block:carol:127.0.0.10')) > 50_000, 'written with what is left of its time');
});
