import t from 'tap';
import { PeerFilter } from '../../../src/turn/peerfilter.js';

t.test('default special-purpose ranges are refused', async (t) => {
  const f = new PeerFilter({ allow: [], deny: [], selfAddresses: ['198.51.100.10'] });
  const refused = [
    '127.0.0.1',
    '10.1.2.3',
    '172.16.0.1',
    '172.31.255.255',
    '192.168.0.1',
    '169.254.169.254',
    '169.254.1.1',
    '100.64.0.1',
    '100.127.255.254',
    '224.0.0.251',
    '239.1.1.1',
    '0.0.0.0',
    '0.1.2.3',
    '255.255.255.255',
    '240.0.0.1',
    '::1',
    '::',
    'fc00::1',
    'fd12:3456::1',
    'fe80::1',
    'ff02::1',
    'ff0e::1',
    '::ffff:127.0.0.1',
    '::ffff:10.0.0.1',
    '::ffff:a9fe:a9fe',
    '64:ff9b::a00:1',
    '2002:0a00:0001::1',
    '::127.0.0.1',
    '198.51.100.10', // the server's own address
  ];
  for (const ip of refused) t.notOk(f.permits(ip), `refuses ${ip}`);
  const permitted = [
    '8.8.8.8',
    '198.51.100.7',
    '172.32.0.1',
    '100.128.0.1',
    '2001:db8::1',
    '2606:4700::1111',
    '::ffff:8.8.8.8',
    '2002:0808:0808::1',
  ];
  for (const ip of permitted) t.ok(f.permits(ip), `permits ${ip}`);
  t.notOk(f.permits('not-an-ip'));
});

t.test('allow overrides the defaults, deny overrides allow', async (t) => {
  const f = new PeerFilter({
    allow: ['127.0.0.0/8', '10.0.0.0/8', 'fd00::/8'],
    deny: ['10.9.0.0/16', '8.8.4.4', '2001:db8::/32'],
    selfAddresses: ['127.0.0.1'],
  });
  t.ok(f.permits('127.0.0.1'), 'own address allowed explicitly (client-to-client on one host)');
  t.ok(f.permits('::ffff:127.0.0.1'), 'mapped form judged as IPv4');
  t.ok(f.permits('10.1.1.1'));
  t.notOk(f.permits('10.9.1.1'), 'deny wins');
  t.notOk(f.permits('8.8.4.4'));
  t.ok(f.permits('8.8.8.8'));
  t.ok(f.permits('fd00::5'));
  t.notOk(f.permits('2001:db8::5'));
  t.notOk(f.permits('192.168.1.1'), 'other defaults still apply');
});
