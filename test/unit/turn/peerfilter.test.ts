import t from 'tap';
import type { NetworkInterfaceInfo } from 'node:os';
import { DEFAULT_DENIED_V4, DEFAULT_DENIED_V6, PeerFilter, embeddedV4 } from '../../../src/turn/peerfilter.js';
import { parseIP } from '../../../src/wire/stun.js';

/** No interface addresses, so results do not depend on the machine running the test. */
const noInterfaces = () => ({});

function filter(allow: string[] = [], deny: string[] = [], selfAddresses: string[] = []) {
  return new PeerFilter({ allow, deny, selfAddresses, interfaces: noInterfaces });
}

/** Teredo address (RFC 4380 §4) for a server and a client IPv4: the client's bits inverted. */
function teredo(server: string, client: string): string {
  const s = parseIP(server)!;
  const c = parseIP(client)!.map((x) => ~x & 0xff);
  const h = (b: Uint8Array | Buffer, i: number) => ((b[i]! << 8) | b[i + 1]!).toString(16);
  return `2001:0:${h(s, 0)}:${h(s, 2)}:8000:63bf:${h(c, 0)}:${h(c, 2)}`;
}

t.test('every default range is refused, first and last address', async (t) => {
  const f = filter();
  for (const [a, n] of DEFAULT_DENIED_V4) {
    const b = parseIP(a)!;
    const last = (b.readUInt32BE(0) | (n === 0 ? 0xffffffff : 2 ** (32 - n) - 1)) >>> 0;
    const lastS = `${last >>> 24}.${(last >>> 16) & 255}.${(last >>> 8) & 255}.${last & 255}`;
    t.notOk(f.permits(a), `refuses ${a} (${a}/${n})`);
    t.notOk(f.permits(lastS), `refuses ${lastS} (${a}/${n})`);
  }
  for (const [a, n] of DEFAULT_DENIED_V6) t.notOk(f.permits(a), `refuses ${a} (${a}/${n})`);
});

t.test('special-purpose addresses are refused, public ones permitted', async (t) => {
  const f = filter([], [], ['93.184.216.34']);
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
    '192.0.0.9',
    // documentation (RFC 5737, RFC 3849, RFC 9637) and benchmarking (RFC 2544, RFC 5180)
    '192.0.2.1',
    '198.51.100.7',
    '203.0.113.200',
    '2001:db8::1',
    '2001:db8:ffff::1',
    '3fff::1',
    '3fff:fff:ffff::1',
    '198.18.0.1',
    '198.19.255.254',
    '2001:2::1',
    '2001:2:0:ffff::1',
    '192.88.99.1', // deprecated 6to4 relay anycast (RFC 7526)
    '::1',
    '::',
    'fc00::1',
    'fd12:3456::1',
    'fe80::1',
    'fe80::1%eth0',
    'fec0::1',
    'ff02::1',
    'ff0e::1',
    '100::1',
    '2001:10::1',
    '5f00::1',
    '64:ff9b:1::1', // RFC 8215 local use
    '64:ff9b:1:ffff::808:808',
    '93.184.216.34', // the server's own address
  ];
  for (const ip of refused) t.notOk(f.permits(ip), `refuses ${ip}`);
  const permitted = [
    '8.8.8.8',
    '1.1.1.1',
    '198.51.99.255',
    '198.51.101.0',
    '198.17.255.255',
    '198.20.0.0',
    '172.32.0.1',
    '100.128.0.1',
    '192.31.196.1', // AS112, globally reachable
    '192.0.1.255',
    '192.0.3.0',
    '2606:4700::1111',
    '2001:4860:4860::8888',
    '2001:1::2', // TURN anycast (RFC 8155): 2001::/23 but not Teredo's /32
    '2001:db9::1',
    '2001:3::1',
    '3fff:1000::1',
    '::ffff:8.8.8.8',
    '64:ff9b::808:808', // NAT64 of 8.8.8.8
    '64:ff9b::8.8.8.8',
  ];
  for (const ip of permitted) t.ok(f.permits(ip), `permits ${ip}`);
  t.notOk(f.permits('not-an-ip'));
  t.notOk(f.permits(''));
});

t.test('IPv4-mapped addresses are normalised to IPv4 for every check', async (t) => {
  const f = filter(['::ffff:10.0.0.0/104'], ['::ffff:8.8.4.4', '9.9.9.0/24']);
  t.notOk(f.permits('::ffff:127.0.0.1'));
  t.notOk(f.permits('::ffff:7f00:1'), 'hex form');
  t.notOk(f.permits('0:0:0:0:0:ffff:a9fe:a9fe'), 'long form of 169.254.169.254');
  t.notOk(f.permits('::FFFF:192.168.1.1'), 'upper case');
  t.ok(f.permits('10.1.2.3'), 'an allow written mapped applies to the IPv4 form');
  t.ok(f.permits('::ffff:10.1.2.3'));
  t.notOk(f.permits('8.8.4.4'), 'a deny written mapped applies to the IPv4 form');
  t.notOk(f.permits('::ffff:8.8.4.4'));
  t.notOk(f.permits('::ffff:9.9.9.9'), 'an IPv4 deny applies to the mapped form');
  t.ok(f.permits('::ffff:8.8.8.8'));
});

t.test('IPv4-compatible and SIIT forms: refused, and judged by their IPv4 address', async (t) => {
  let f = filter();
  for (const ip of ['::8.8.8.8', '::127.0.0.1', '::a00:1', '::ffff:0:8.8.8.8', '::ffff:0:127.0.0.1'])
    t.notOk(f.permits(ip), `refuses ${ip}`);
  f = filter(['::/96', '::ffff:0:0:0/96']);
  t.ok(f.permits('::8.8.8.8'), 'allowed explicitly');
  t.ok(f.permits('::ffff:0:8.8.8.8'), 'allowed explicitly');
  t.notOk(f.permits('::10.0.0.1'), 'still judged by the IPv4 address it carries');
  t.notOk(f.permits('::ffff:0:169.254.169.254'));
  t.notOk(f.permits('::1'), 'loopback carries 0.0.0.1');
});

t.test('NAT64 well-known prefix: judged by the IPv4 address in the last 32 bits', async (t) => {
  const f = filter(['10.0.0.0/8'], ['10.9.0.0/16', '8.8.4.4']);
  t.notOk(f.permits('64:ff9b::127.0.0.1'));
  t.notOk(f.permits('64:ff9b::a9fe:a9fe'));
  t.notOk(f.permits('64:ff9b::c0a8:101'));
  t.notOk(f.permits('64:ff9b::192.0.2.1'), 'documentation IPv4');
  t.ok(f.permits('64:ff9b::10.1.0.1'), 'the embedded IPv4 is allowed');
  t.notOk(f.permits('64:ff9b::10.9.0.1'), 'deny beats allow on the embedded IPv4');
  t.notOk(f.permits('64:ff9b::8.8.4.4'), 'a denied IPv4 is denied through NAT64');
  t.ok(f.permits('64:ff9b::8.8.8.8'));
  t.same(embeddedV4(parseIP('64:ff9b::1:808:808')!), [], 'beyond the /96 nothing is embedded');
});

t.test('6to4: refused outright, and judged by bits 16-47 when allowed', async (t) => {
  let f = filter();
  t.notOk(f.permits('2002:0808:0808::1'), '6to4 is refused by default (RFC 7526)');
  t.notOk(f.permits('2002:0a00:0001::1'));
  f = filter(['2002::/16'], ['1.2.3.0/24']);
  t.ok(f.permits('2002:0808:0808::1'), 'allowed: 8.8.8.8 inside');
  t.ok(f.permits('2002:808:808:1:2:3:4:5'));
  t.notOk(f.permits('2002:0a00:0001::1'), '10.0.0.1 inside');
  t.notOk(f.permits('2002:7f00:1::1'), '127.0.0.1 inside');
  t.notOk(f.permits('2002:a9fe:a9fe::1'), '169.254.169.254 inside');
  t.notOk(f.permits('2002:0102:0304::1'), 'a denied IPv4 inside');
  f = filter(['2000::/3']);
  t.ok(f.permits('2002:0808:0808::1'), 'a broad IPv6 allow admits 6to4 ...');
  t.notOk(f.permits('2002:c0a8:0101::1'), '... but never the private IPv4 inside');
  f = filter(['2002::/16'], ['2002:808:808::/48']);
  t.notOk(f.permits('2002:808:808::1'), 'deny on the IPv6 form beats allow');
});

t.test('Teredo: refused outright; server (bits 32-63) and inverted client (96-127) judged', async (t) => {
  t.equal(teredo('65.54.227.120', '192.0.2.45'), '2001:0:4136:e378:8000:63bf:3fff:fdd2', 'RFC 4380 §4 example shape');
  t.same(embeddedV4(parseIP('2001:0:4136:e378:8000:63bf:3fff:fdd2')!), ['65.54.227.120', '192.0.2.45']);
  let f = filter();
  t.notOk(f.permits(teredo('65.54.227.120', '8.8.8.8')), 'Teredo is refused by default');
  f = filter(['2001::/32'], ['9.9.9.9']);
  t.ok(f.permits(teredo('65.54.227.120', '8.8.8.8')), 'allowed, both IPv4 public');
  t.notOk(f.permits(teredo('65.54.227.120', '10.0.0.1')), 'private client');
  t.notOk(f.permits(teredo('65.54.227.120', '127.0.0.1')), 'loopback client');
  t.notOk(f.permits(teredo('65.54.227.120', '192.0.2.45')), 'documentation client');
  t.notOk(f.permits(teredo('10.0.0.1', '8.8.8.8')), 'private server');
  t.notOk(f.permits(teredo('65.54.227.120', '9.9.9.9')), 'denied client');
  t.notOk(f.permits(teredo('9.9.9.9', '8.8.8.8')), 'denied server');
  t.ok(f.permits('2001:0:4136:e378:8000:63bf:f7f7:f7f7'), 'the client not inverted would be 8.8.8.8 itself');
  t.notOk(f.permits('2001:0:4136:e378:8000:63bf:f5ff:fffe'), '~f5fffffe = 10.0.0.1');
});

t.test('ISATAP interface identifiers: judged by the IPv4 address', async (t) => {
  const f = filter();
  t.notOk(f.permits('2001:4860:1::5efe:10.0.0.1'));
  t.notOk(f.permits('2001:4860:1::200:5efe:c0a8:101'));
  t.ok(f.permits('2001:4860:1::200:5efe:8.8.8.8'));
});

t.test('allow overrides the defaults, deny overrides allow', async (t) => {
  const f = new PeerFilter({
    allow: ['127.0.0.0/8', '10.0.0.0/8', 'fd00::/8', '192.0.2.0/24', '2001:db8::/32', '64:ff9b:1::/48', '198.18.0.0/15'],
    deny: ['10.9.0.0/16', '8.8.4.4', '2001:db8:bad::/48', '192.0.2.66'],
    selfAddresses: ['127.0.0.1'],
    interfaces: noInterfaces,
  });
  t.ok(f.permits('127.0.0.1'), 'own address allowed explicitly (client-to-client on one host)');
  t.ok(f.permits('::ffff:127.0.0.1'), 'mapped form judged as IPv4');
  t.ok(f.permits('10.1.1.1'));
  t.notOk(f.permits('10.9.1.1'), 'deny wins');
  t.notOk(f.permits('::ffff:10.9.1.1'), 'deny wins on the mapped form');
  t.notOk(f.permits('8.8.4.4'));
  t.ok(f.permits('8.8.8.8'));
  t.ok(f.permits('fd00::5'));
  t.ok(f.permits('192.0.2.1'), 'documentation range allowed (lab set-ups)');
  t.notOk(f.permits('192.0.2.66'));
  t.ok(f.permits('2001:db8::5'));
  t.notOk(f.permits('2001:db8:bad::5'));
  t.ok(f.permits('64:ff9b:1::a'), 'local-use NAT64 allowed');
  t.ok(f.permits('198.19.0.1'));
  t.notOk(f.permits('192.168.1.1'), 'other defaults still apply');
  t.notOk(f.permits('203.0.113.1'));
  t.notOk(f.permits('3fff::1'));
});

t.test("the host's own addresses follow interface changes", async (t) => {
  let now = 0;
  let reads = 0;
  let ifaces: Record<string, Array<Partial<NetworkInterfaceInfo>>> = {
    lo: [{ address: '127.0.0.1', family: 'IPv4' }],
    eth0: [{ address: '93.184.216.34', family: 'IPv4' }],
  };
  const f = new PeerFilter({
    allow: [],
    deny: [],
    selfAddresses: ['0.0.0.0', '151.101.1.69'],
    now: () => now,
    interfaces: () => {
      reads++;
      return ifaces as NodeJS.Dict<NetworkInterfaceInfo[]>;
    },
    refreshMs: 3000,
  });
  t.equal(reads, 1, 'read once at start');
  t.notOk(f.permits('93.184.216.34'), 'an interface address is refused');
  t.notOk(f.permits('151.101.1.69'), 'a configured relay address is refused');
  t.ok(f.permits('185.199.108.153'));
  const selfBefore = (f as unknown as { self: unknown }).self;
  for (let i = 0; i < 1000; i++) f.permits('8.8.8.8');
  t.equal(reads, 1, 'no interface read per check');
  now = 3000;
  f.permits('8.8.8.8');
  t.equal(reads, 2, 're-read after refreshMs');
  t.equal((f as unknown as { self: unknown }).self, selfBefore, 'unchanged interfaces: the self list is kept, not rebuilt');

  // A new address appears (DHCP, failover): refused from the next refresh on.
  ifaces = {
    ...ifaces,
    eth1: [
      { address: '185.199.108.153', family: 'IPv4' },
      { address: '2606:50c0:8000::153', family: 'IPv6' },
      { address: 'fe80::1%eth1', family: 'IPv6' },
    ],
  };
  now = 4000;
  t.ok(f.permits('185.199.108.153'), 'not yet re-read');
  now = 6000;
  t.notOk(f.permits('185.199.108.153'), 'refused once re-read');
  t.notOk(f.permits('2606:50c0:8000::153'));
  t.notOk(f.permits('::ffff:185.199.108.153'), 'mapped form too');
  // The old address goes away: permitted again; configured ones stay refused.
  ifaces = { eth1: ifaces.eth1! };
  now = 9000;
  t.ok(f.permits('93.184.216.34'));
  t.notOk(f.permits('151.101.1.69'));
  // A failing interface read keeps the last known addresses.
  const before = reads;
  const g = new PeerFilter({
    allow: [],
    deny: [],
    now: () => now,
    interfaces: () => {
      reads++;
      if (reads > before + 1) throw new Error('EPERM');
      return { eth0: [{ address: '93.184.216.34' }] } as unknown as NodeJS.Dict<NetworkInterfaceInfo[]>;
    },
  });
  now += 60_000;
  t.notOk(g.permits('93.184.216.34'), 'still refused after a failed re-read');
});

t.test('own addresses are refused unless allowed; allow wins, deny still beats it', async (t) => {
  const f = new PeerFilter({
    allow: ['93.184.216.0/24'],
    deny: ['93.184.216.99'],
    interfaces: () =>
      ({ eth0: [{ address: '93.184.216.34' }, { address: '93.184.216.99' }] }) as unknown as NodeJS.Dict<NetworkInterfaceInfo[]>,
  });
  t.ok(f.permits('93.184.216.34'));
  t.notOk(f.permits('93.184.216.99'));
});
