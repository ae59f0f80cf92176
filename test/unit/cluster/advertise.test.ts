import t from 'tap';
import { defaultConfig } from '../../../src/config/config.js';
import { advertisedAdmin, advertisedTurn, publishedFlow } from '../../../src/cluster/advertise.js';

t.test('wildcard listeners are advertised at turn.public_address, else turn.relay_address', async (t) => {
  const c = defaultConfig();
  c.turn.relay_address = '192.0.2.10';
  const bound = [
    { proto: 'udp' as const, address: '0.0.0.0', port: 3478 },
    { proto: 'tcp' as const, address: '198.51.100.1', port: 3478 },
  ];
  t.same(advertisedTurn(c, bound), [
    { proto: 'udp', address: '192.0.2.10', port: 3478 },
    { proto: 'tcp', address: '198.51.100.1', port: 3478 },
  ]);
  t.equal(advertisedAdmin(c, 'http://0.0.0.0:8080'), 'http://192.0.2.10:8080');
  t.equal(advertisedAdmin(c, 'https://127.0.0.1:8443'), 'https://127.0.0.1:8443');
  c.turn.public_address = '2001:db8::1';
  t.same(
    advertisedTurn(c, bound).map((l) => l.address),
    ['2001:db8::1', '2001:db8::1'],
  );
  t.equal(advertisedAdmin(c, 'http://[::]:8080'), 'http://[2001:db8::1]:8080');
});

t.test('published flows carry no per-packet counters', async (t) => {
  t.same(publishedFlow({ flow_id: 3, user: 'alice', bytes: 10, packets: 2, verdict: 'pass' }), {
    flow_id: 3,
    user: 'alice',
    verdict: 'pass',
  });
});
