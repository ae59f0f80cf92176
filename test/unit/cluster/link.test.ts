// ClusterLink against a real redis-server: up/down/up transitions with one log line each
// (no password in them), prefixed keys, pub/sub surviving a restart.
import t from 'tap';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { ClusterLink, defaultNodeId } from '../../../src/cluster/link.js';
import { peerSkip } from '../../e2e/helpers/require-peer.js';
import { startTestRedis, until } from '../../e2e/helpers/redis.js';

const skip = peerSkip(t, 'redis-server');

t.test('key prefix and node id', async (t) => {
  const link = new ClusterLink({ url: 'redis://127.0.0.1:1/0', nodeId: 'gw1', log: undefined });
  link.on('error', () => {});
  t.equal(link.key('quota', 'q1', 'alice'), 'gatehouse:quota:q1:alice');
  t.equal(link.nodeId, 'gw1');
  t.match(defaultNodeId(3478), /:3478$/);
  t.equal(link.up, false);
  t.equal(await link.publish('x', 'y'), false, 'publish while down resolves false');
  await link.close();
});

t.test('Redis unreachable from the start: one log line, one down', async (t) => {
  const lines: string[] = [];
  const log = pino(
    { level: 'info' },
    new Writable({
      write(c, _e, cb) {
        lines.push(String(c));
        cb();
      },
    }),
  );
  const link = new ClusterLink({ url: 'redis://:pw-not-logged@127.0.0.1:1/0', nodeId: 'gw9', log });
  let downs = 0;
  link.on('down', () => downs++);
  await new Promise((r) => setTimeout(r, 1500)); // several reconnect attempts
  await link.close();
  t.equal(downs, 1);
  t.equal(lines.filter((l) => l.includes('redis unavailable')).length, 1);
  t.notOk(lines.join('').includes('pw-not-logged'));
  t.equal(link.up, false);
});

t.test('transitions against redis-server', { skip }, async (t) => {
  const redis = await startTestRedis();
  t.teardown(() => redis.close());
  const lines: string[] = [];
  const log = pino(
    { level: 'info' },
    new Writable({
      write(c, _e, cb) {
        lines.push(String(c));
        cb();
      },
    }),
  );
  const url = `redis://user:s3cretpass@127.0.0.1:${redis.port}/0`;
  // The server has no ACL user: use the plain URL for the connection, the secret URL only to test redaction.
  const link = new ClusterLink({ url: redis.url, nodeId: 'gw1', log });
  t.teardown(() => link.close());
  const seen: string[] = [];
  // A listener that throws (before the others) is logged; the others still hear every transition.
  link.on('up', () => {
    throw new Error('listener bug');
  });
  link.on('down', () => {
    throw new Error('listener bug');
  });
  link.on('up', () => seen.push('up'));
  link.on('down', () => seen.push('down'));
  t.ok(await link.ready(5000), 'up');
  const other = new ClusterLink({ url: redis.url, nodeId: 'gw2' });
  t.teardown(() => other.close());
  t.ok(await other.ready(5000));
  const got: string[] = [];
  link.subscribe('blocks', (m) => got.push(m));
  link.subscribe('blocks', () => {
    throw new Error('handler bug');
  });
  await new Promise((r) => setTimeout(r, 100));
  t.equal(await other.publish('blocks', 'one'), true);
  t.ok(await until(() => got.includes('one'), 3000), 'message delivered despite a throwing handler');

  await redis.stop();
  t.ok(await until(() => !link.up, 5000), 'down');
  await redis.start();
  t.ok(await until(() => link.up && other.up, 10000), 'up again');
  t.same(seen, ['up', 'down', 'up']);
  t.equal(link.stats.outages, 1);
  await new Promise((r) => setTimeout(r, 200));
  t.equal(await other.publish('blocks', 'two'), true);
  t.ok(await until(() => got.includes('two'), 3000), 'resubscribed after the restart');
  const cluster = lines.filter((l) => l.includes('cluster: redis'));
  t.equal(cluster.length, 3, 'one log line per transition');
  t.equal(lines.filter((l) => l.includes('cluster: a listener failed')).length, 3, 'the throwing listener, logged each time');
  t.notOk(lines.join('').includes('s3cretpass'));

  const secret = new ClusterLink({ url, nodeId: 'gw3', log });
  t.teardown(() => secret.close());
  await new Promise((r) => setTimeout(r, 500));
  t.notOk(lines.join('').includes('s3cretpass'), 'the password never reaches the log');
});
