/** src/turn/workers.ts: the relay port shares and a worker's view of the configuration. */
import t from 'tap';
import { relayPortShare, workerConfig, workerNodeId } from '../../../src/turn/workers.js';
import { parseConfig } from '../../../src/config/config.js';

t.test('shares: contiguous, disjoint, covering, sizes within one', async (t) => {
  for (const [lo, hi] of [
    [49152, 65535],
    [50000, 50002],
    [1024, 1024 + 63],
    [54000, 55999],
  ] as const) {
    for (const n of [1, 2, 3, 7, 64]) {
      if (hi - lo + 1 < n) {
        t.throws(() => relayPortShare([lo, hi], n, 0), RangeError, `${n} shares of ${hi - lo + 1} ports refused`);
        continue;
      }
      const shares = Array.from({ length: n }, (_, i) => relayPortShare([lo, hi], n, i));
      t.equal(shares[0]![0], lo);
      t.equal(shares[n - 1]![1], hi);
      for (let i = 1; i < n; i++) t.equal(shares[i]![0], shares[i - 1]![1] + 1, 'no gap, no overlap');
      const sizes = shares.map(([a, b]) => b - a + 1);
      t.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `[${lo}, ${hi}] / ${n}: sizes ${Math.min(...sizes)}-${Math.max(...sizes)}`);
    }
  }
  t.throws(() => relayPortShare([1, 10], 2, 2), RangeError);
});

t.test('worker config: its share, its state directory, its node id, shared identity and users', async (t) => {
  const cfg = parseConfig(
    'data_dir: /var/lib/gh\nturn:\n  workers: 2\n  relay_ports: [50000, 50099]\nstore:\n  redis: redis://127.0.0.1:6379/0\n',
    'f.yaml',
  );
  const shared = { rest_secret: 'r', users: [{ name: 'a', password: 'p', groups: [] }], identity: { cert: '/c', key: '/k' } };
  const w0 = workerConfig(cfg, 0, { listen: ['udp://0.0.0.0:3478'], nodeBase: 'host:3478', shared });
  const w1 = workerConfig(cfg, 1, { listen: ['udp://0.0.0.0:3478'], nodeBase: 'host:3478', shared });
  t.same(w0.turn.relay_ports, [50000, 50049]);
  t.same(w1.turn.relay_ports, [50050, 50099]);
  t.equal(w0.data_dir, '/var/lib/gh');
  t.equal(w1.data_dir, '/var/lib/gh/workers/1');
  t.equal(w0.store.node_id, 'host:3478.w0');
  t.equal(w1.store.node_id, 'host:3478.w1');
  t.same(w1.identity, shared.identity);
  t.equal(w1.turn.rest_secret, 'r');
  t.equal(cfg.turn.relay_ports[1], 50099, 'the configuration itself is not changed');
  t.equal(workerNodeId('x'.repeat(64), 12).length, 64, 'node ids stay within store.node_id bound');
});
