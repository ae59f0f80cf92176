// Cluster users through a real redis-server (issue 14): putUser on one side is looked up on
// every ClusterUsers at once; the configuration's users come first; while Redis is away the
// copy in memory keeps authenticating; after it returns (empty) the copy is read again.
// Redis holds the keys, never the password; another realm's or a clear-password entry is refused.
import t from 'tap';
import { StaticUserDirectory } from '../../../src/store/users.js';
import { ClusterLink } from '../../../src/cluster/link.js';
import { ClusterUsers, deleteUser, listUsers, putUser } from '../../../src/cluster/users.js';
import { createLogger } from '../../../src/util/log.js';
import { longTermKey } from '../../../src/wire/stun.js';

const REALM = 'gatehouse.local';
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
  const logged: string[] = [];
  const log = createLogger({ level: 'warn' }, { write: (s: string) => void logged.push(s) });
  const dirs = links.map((l) => new ClusterUsers(l, local, REALM, log));
  t.teardown(async () => {
    for (const d of dirs) d.close();
    for (const l of links) await l.close();
  });
  for (const l of links) t.ok(await l.ready(5000));
  await new Promise((r) => setTimeout(r, 100));
  const admin = redis.client();
  await putUser(admin, 'utest:', { name: 'dave', password: 'dave-pw', groups: ['staff'], realm: REALM });
  await putUser(admin, 'utest:', { name: 'alice', password: 'from-redis', groups: [], realm: REALM });
  const daveKey = longTermKey('dave', REALM, 'dave-pw', 'md5');
  t.ok(await until(() => dirs.every((d) => d.lookup('dave')?.keys?.md5.equals(daveKey)), 3000), 'dave on both, by his key');
  t.equal(dirs[0]!.lookup('dave')!.password, undefined, 'no password in memory');
  t.same(dirs[0]!.lookup('dave')!.keys!.sha256, longTermKey('dave', REALM, 'dave-pw', 'sha256'));
  const raw = JSON.stringify(await admin.hgetall('utest:users'));
  t.notOk(raw.includes('dave-pw'), 'Redis holds no password (HGETALL)');
  t.notOk(raw.includes('from-redis'), 'Redis holds no password (HGETALL)');
  t.same(dirs[0]!.lookup('dave')!.groups, ['staff']);
  t.equal(dirs[1]!.lookup('alice')!.password, 'from-config', 'the configuration wins');
  t.same(await listUsers(admin, 'utest:', REALM), [
    { name: 'alice', groups: [], realm: REALM },
    { name: 'dave', groups: ['staff'], realm: REALM },
  ]);
  // Keys made for another realm, and the first format (password in clear): refused, loudly.
  await putUser(admin, 'utest:', { name: 'frank', password: 'frank-pw', groups: [], realm: 'elsewhere.example' });
  await admin.hset('utest:users', 'gina', JSON.stringify({ password: 'gina-pw', groups: [] }));
  await admin.publish('utest:users', 'gina');
  t.ok(await until(() => logged.some((l) => l.includes('another realm')) && logged.some((l) => l.includes('old form')), 3000), 'warned');
  t.equal(dirs[0]!.lookup('frank'), undefined, 'another realm: refused');
  t.equal(dirs[0]!.lookup('gina'), undefined, 'a clear password: refused');
  t.notOk(logged.join('').includes('gina-pw'), 'the warning does not quote the password');
  t.match(await listUsers(admin, 'utest:', REALM), [
    { name: 'alice' },
    { name: 'dave' },
    { name: 'frank', refused: 'other_realm' },
    { name: 'gina', refused: 'clear_password' },
  ]);
  await dirs[1]!.load();
  t.equal(dirs[1]!.stats.refused, 2, 'a full read counts both');
  t.ok(
    logged.some((l) => l.includes('REFUSED') && l.includes('frank') && l.includes('elsewhere.example')),
    'the full read names them',
  );
  await deleteUser(admin, 'utest:', 'frank');
  await deleteUser(admin, 'utest:', 'gina');
  await admin.hset('utest:users', 'broken', 'not json');
  await admin.publish('utest:users', 'broken');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(dirs[0]!.lookup('broken'), undefined, 'a malformed entry is ignored');

  await redis.stop();
  t.ok(await until(() => links.every((l) => !l.up), 5000));
  t.ok(dirs[0]!.lookup('dave')?.keys?.md5.equals(daveKey), 'Redis away: the copy still authenticates');
  await redis.start();
  t.ok(await until(() => links.every((l) => l.up), 10000));
  const admin2 = redis.client();
  await putUser(admin2, 'utest:', { name: 'erin', password: 'erin-pw', groups: [], realm: REALM });
  t.ok(await until(() => dirs.every((d) => d.lookup('erin') !== undefined), 3000), 'a user added after the return');
  t.ok(await until(() => dirs.every((d) => d.lookup('dave') === undefined), 3000), 'the copy follows the (empty) Redis');
  await putUser(admin2, 'utest:', { name: 'dave', password: 'dave-pw', groups: [], realm: REALM });
  t.ok(await until(() => dirs.every((d) => d.lookup('dave') !== undefined), 3000));
  t.equal(await deleteUser(admin2, 'utest:', 'dave'), true);
  t.ok(await until(() => dirs.every((d) => d.lookup('dave') === undefined), 3000), 'removed everywhere');

  // A full read pages through the hash (HSCAN), and a removal during it is not undone.
  const many = redis.client();
  const entry = (await many.hget('utest:users', 'erin'))!;
  const fields: string[] = [];
  for (let i = 0; i < 2500; i++) fields.push(`bulk${i}`, entry);
  await many.hset('utest:users', ...fields);
  const loading = dirs[0]!.load();
  await deleteUser(many, 'utest:', 'bulk7');
  await loading;
  t.ok(await until(() => dirs[0]!.lookup('bulk2499') !== undefined && dirs[0]!.lookup('bulk7') === undefined, 3000));
  t.equal(dirs[0]!.stats.users, 2500, 'every page of the hash read (2 499 bulk users and erin)');
  t.equal(dirs[0]!.lookup('bulk7'), undefined, 'removed during the read: stays removed');
});
