// Cluster users through a real redis-server (issue 14): putUser on one side is looked up on
// every ClusterUsers at once; the configuration's users come first; while Redis is away the
// copy in memory keeps authenticating; after it returns (empty) the copy is read again.
import t from 'tap';
import { StaticUserDirectory } from '../../../src/store/users.js';
import { ClusterLink } from '../../../src/cluster/link.js';
import { ClusterUsers, deleteUser, listUsers, putUser } from '../../../src/cluster/users.js';
import { peerSkip } from '../../e2e/helpers/require-peer.js';
import { startTestRedis, until } from '../../e2e/helpers/redis.js';

const skip = peerSkip(t, 'redis-server');

t.test('shared users', { skip }, async (t) => {
  const redis = await startTestRedis();
  t.teardown(() => redis.close());
  const local = new StaticUserDirectory([{ name: 'alice', password: 'from-config', groups: ['a'] }]);
  const links = [
    new ClusterLink({ url: redis.url, nodeId: 'u1', prefix: 'utest:' }),
    new ClusterLink({ url: redis.url, nodeId: 'u2', prefix: 'utest:' }),
  ];
  const dirs = links.map((l) => new ClusterUsers(l, local));
  t.teardown(async () => {
    for (const d of dirs) d.close();
    for (const l of links) await l.close();
  });
  for (const l of links) t.ok(await l.ready(5000));
  await new Promise((r) => setTimeout(r, 100));
  const admin = redis.client();
  await putUser(admin, 'utest:', { name: 'dave', password: 'dave-pw', groups: ['staff'] });
  await putUser(admin, 'utest:', { name: 'alice', password: 'from-redis', groups: [] });
  t.ok(await until(() => dirs.every((d) => d.lookup('dave')?.password === 'dave-pw'), 3000), 'dave on both');
  t.same(dirs[0]!.lookup('dave')!.groups, ['staff']);
  t.equal(dirs[1]!.lookup('alice')!.password, 'from-config', 'the configuration wins');
  t.same(await listUsers(admin, 'utest:'), [
    { name: 'alice', groups: [] },
    { name: 'dave', groups: ['staff'] },
  ]);
  await admin.hset('utest:users', 'broken', 'not json');
  await admin.publish('utest:users', 'broken');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(dirs[0]!.lookup('broken'), undefined, 'a malformed entry is ignored');

  await redis.stop();
  t.ok(await until(() => links.every((l) => !l.up), 5000));
  t.equal(dirs[0]!.lookup('dave')?.password, 'dave-pw', 'Redis away: the copy still authenticates');
  await redis.start();
  t.ok(await until(() => links.every((l) => l.up), 10000));
  const admin2 = redis.client();
  await putUser(admin2, 'utest:', { name: 'erin', password: 'erin-pw', groups: [] });
  t.ok(await until(() => dirs.every((d) => d.lookup('erin') !== undefined), 3000), 'a user added after the return');
  t.ok(await until(() => dirs.every((d) => d.lookup('dave') === undefined), 3000), 'the copy follows the (empty) Redis');
  await putUser(admin2, 'utest:', { name: 'dave', password: 'dave-pw', groups: [] });
  t.ok(await until(() => dirs.every((d) => d.lookup('dave') !== undefined), 3000));
  t.equal(await deleteUser(admin2, 'utest:', 'dave'), true);
  t.ok(await until(() => dirs.every((d) => d.lookup('dave') === undefined), 3000), 'removed everywhere');
});
