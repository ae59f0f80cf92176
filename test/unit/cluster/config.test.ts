// store.* (issue 14): defaults, validation with file:line:column and key, no password echoed.
import t from 'tap';
import { defaultConfig, parseConfig } from '../../../src/config/config.js';

t.test('store defaults: no cluster', async (t) => {
  const c = defaultConfig();
  t.same(c.store, { redis: null, node_id: null, key_prefix: 'gatehouse:', sync_interval_ms: 250 });
});

t.test('store.redis and node_id accepted', async (t) => {
  const c = parseConfig('store:\n  redis: redis://:pw@10.0.0.5:6379/2\n  node_id: gw-1.dc:3478\n  sync_interval_ms: 100\n', 'f.yaml');
  t.equal(c.store.redis, 'redis://:pw@10.0.0.5:6379/2');
  t.equal(c.store.node_id, 'gw-1.dc:3478');
  t.equal(c.store.sync_interval_ms, 100);
  t.equal(c.events.redis.url, null, 'events.redis.url stays unset (the gateway defaults it to store.redis)');
});

t.test('bad values name file, line, column and key', async (t) => {
  t.throws(() => parseConfig('store:\n  redis: http://x:6379\n', 'f.yaml'), /^f\.yaml:2:\d+: store\.redis: .*redis:\/\//);
  t.throws(() => parseConfig('store:\n  redis: redis://h/abc\n', 'f.yaml'), /^f\.yaml:2:\d+: store\.redis: .*database number/);
  t.throws(() => parseConfig('store:\n  node_id: "two words"\n', 'f.yaml'), /^f\.yaml:2:\d+: store\.node_id/);
  t.throws(() => parseConfig('store:\n  sync_interval_ms: 5\n', 'f.yaml'), /^f\.yaml:2:\d+: store\.sync_interval_ms/);
  t.throws(() => parseConfig('store:\n  redis_url: redis://h\n', 'f.yaml'), /store\.redis_url/, 'unknown key');
  try {
    parseConfig('store:\n  redis: rediss://user:hunter2secret@/0\n', 'f.yaml');
    t.fail('a URL without a host is refused');
  } catch (err) {
    t.notMatch((err as Error).message, /hunter2secret/, 'the password is not echoed');
  }
});
