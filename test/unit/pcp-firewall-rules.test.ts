// Rule text of the nftables backend (pure functions: mapping -> nft / iptables commands).
// The same rules on a real kernel: test/e2e/pcp-firewall-nfqueue.test.ts.
import t from 'tap';
import {
  baseTableScript,
  deleteScript,
  filterPrefix,
  handlesOf,
  installScript,
  iptablesRules,
  mappingRules,
  NftablesBackend,
} from '../../src/pcp/firewall/nftables.js';
import { UnavailableBackend, createFirewallBackend } from '../../src/pcp/firewall/index.js';
import type { PcpMapping } from '../../src/pcp/hooks.js';

function m(o: Partial<PcpMapping> = {}): PcpMapping {
  return {
    id: 'pcp-1',
    opcode: 'map',
    client: { address: '10.0.1.2', port: 5350 },
    internal: { address: '10.0.1.2', port: 5000 },
    protocol: 17,
    external: { address: '192.0.2.1', port: 40000 },
    remote: null,
    filters: [],
    nonce: Buffer.alloc(12),
    user: null,
    groups: [],
    createdAt: 0,
    expiresAt: 0,
    ...o,
  };
}

t.test('MAP NAT44: DNAT, SNAT, forward in and out, each with its comment', async (t) => {
  const r = mappingRules(m());
  t.same(
    r.map((x) => `${x.chain}: ${x.rule}`),
    [
      'prerouting: ip daddr 192.0.2.1 udp dport 40000 dnat ip to 10.0.1.2:5000 comment "gatehouse pcp-1 dnat"',
      'postrouting: ip saddr 10.0.1.2 udp sport 5000 snat ip to 192.0.2.1:40000 comment "gatehouse pcp-1 snat"',
      'forward: ip daddr 10.0.1.2 udp dport 5000 accept comment "gatehouse pcp-1 in"',
      'forward: ip saddr 10.0.1.2 udp sport 5000 accept comment "gatehouse pcp-1 out"',
    ],
  );
  t.equal(
    installScript(m()).split('\n')[0],
    'add rule inet gatehouse prerouting ip daddr 192.0.2.1 udp dport 40000 dnat ip to 10.0.1.2:5000 comment "gatehouse pcp-1 dnat"',
  );
  t.equal(installScript(m()).trim().split('\n').length, 4);
});

t.test('TCP uses tcp matches', async (t) => {
  t.match(mappingRules(m({ protocol: 6 }))[0]!.rule, /^ip daddr 192\.0\.2\.1 tcp dport 40000 dnat ip to 10\.0\.1\.2:5000 /);
});

t.test('FILTER: one inbound rule per listed peer, only they pass (RFC 6887 §13.3)', async (t) => {
  const r = mappingRules(
    m({
      filters: [
        { prefix: '198.51.100.0', prefixLength: 120, port: 0 }, // IPv4-mapped length (96 + 24)
        { prefix: '203.0.113.9', prefixLength: 32, port: 3478 },
      ],
    }),
  ).filter((x) => x.chain === 'forward');
  t.same(
    r.map((x) => x.rule),
    [
      'ip saddr 198.51.100.0/24 ip daddr 10.0.1.2 udp dport 5000 accept comment "gatehouse pcp-1 in0"',
      'ip saddr 203.0.113.9 udp sport 3478 ip daddr 10.0.1.2 udp dport 5000 accept comment "gatehouse pcp-1 in1"',
      'ip saddr 10.0.1.2 udp sport 5000 accept comment "gatehouse pcp-1 out"',
    ],
  );
  t.notOk(
    r.some((x) => /^ip daddr 10\.0\.1\.2 udp dport 5000 accept/.test(x.rule)),
    'no unfiltered inbound rule',
  );
  t.equal(filterPrefix({ prefix: '2001:db8::', prefixLength: 32, port: 0 }), '2001:db8::/32');
  t.throws(() => filterPrefix({ prefix: '10.0.0.0', prefixLength: 140, port: 0 }));
});

t.test('PEER: every rule names the one remote (RFC 6887 §12)', async (t) => {
  const r = mappingRules(m({ opcode: 'peer', remote: { address: '198.51.100.7', port: 9000 } }));
  t.equal(r.length, 4);
  for (const x of r) t.match(x.rule, /198\.51\.100\.7/, `${x.comment} names the remote`);
  t.match(r[0]!.rule, 'ip saddr 198.51.100.7 udp sport 9000 ip daddr 192.0.2.1 udp dport 40000 dnat ip to 10.0.1.2:5000');
  t.match(r[3]!.rule, 'ip saddr 10.0.1.2 udp sport 5000 ip daddr 198.51.100.7 udp dport 9000 accept');
});

t.test('IPv6 pinhole: no NAT when external == internal (RFC 6887 §11 firewall)', async (t) => {
  const a = { address: '2001:db8:1::2', port: 5000 };
  const r = mappingRules(m({ internal: a, external: a }));
  t.same(
    r.map((x) => x.chain),
    ['forward', 'forward'],
  );
  t.equal(r[0]!.rule, 'ip6 daddr 2001:db8:1::2 udp dport 5000 accept comment "gatehouse pcp-1 in"');
  const n = mappingRules(m({ internal: a, external: { address: '2001:db8:2::1', port: 40000 } }));
  t.match(n[0]!.rule, 'dnat ip6 to [2001:db8:1::2]:5000');
});

t.test('protocol 0: all protocols, address-only NAT; other protocols by number', async (t) => {
  const r = mappingRules(m({ protocol: 0, internal: { address: '10.0.1.2', port: 0 }, external: { address: '192.0.2.1', port: 0 } }));
  t.equal(r[0]!.rule, 'ip daddr 192.0.2.1 dnat ip to 10.0.1.2 comment "gatehouse pcp-1 dnat"');
  t.equal(r[2]!.rule, 'ip daddr 10.0.1.2 accept comment "gatehouse pcp-1 in"');
  t.throws(() => mappingRules(m({ protocol: 0 })), /port 0/);
  const sctp = mappingRules(m({ protocol: 132 }));
  t.equal(sctp[0]!.rule, 'meta l4proto 132 ip daddr 192.0.2.1 th dport 40000 dnat ip to 10.0.1.2:5000 comment "gatehouse pcp-1 dnat"');
  const gre = mappingRules(m({ protocol: 47, internal: { address: '10.0.1.2', port: 0 }, external: { address: '192.0.2.1', port: 0 } }));
  t.equal(gre[2]!.rule, 'meta l4proto 47 ip daddr 10.0.1.2 accept comment "gatehouse pcp-1 in"');
});

t.test('refused shapes: NAT64, mixed families, bad ids, bad ports', async (t) => {
  t.throws(() => mappingRules(m({ external: { address: '2001:db8::1', port: 1 } })), /NAT64/);
  t.throws(() => mappingRules(m({ remote: { address: '2001:db8::1', port: 1 } })), /family/);
  t.throws(() => mappingRules(m({ filters: [{ prefix: '2001:db8::', prefixLength: 32, port: 0 }] })), /family/);
  t.throws(() => mappingRules(m({ id: 'x" accept; drop "' })), /bad mapping id/);
  t.throws(() => mappingRules(m({ internal: { address: '10.0.1.2', port: 70000 } })), /bad port/);
  t.throws(() => mappingRules(m({ internal: { address: 'not-an-ip', port: 1 } })), /not an IP/);
});

t.test('iptables NFQUEUE specs: both directions on the internal side; --queue-bypass only when fail-open', async (t) => {
  t.same(iptablesRules(m(), { num: 3, failOpen: false }), [
    [
      '-d',
      '10.0.1.2',
      '-p',
      'udp',
      '--dport',
      '5000',
      '-m',
      'comment',
      '--comment',
      'gatehouse pcp-1 q-in',
      '-j',
      'NFQUEUE',
      '--queue-num',
      '3',
    ],
    [
      '-s',
      '10.0.1.2',
      '-p',
      'udp',
      '--sport',
      '5000',
      '-m',
      'comment',
      '--comment',
      'gatehouse pcp-1 q-out',
      '-j',
      'NFQUEUE',
      '--queue-num',
      '3',
    ],
  ]);
  t.same(iptablesRules(m(), { num: 3, failOpen: true })[0]!.slice(-1), ['--queue-bypass']);
  const peer = iptablesRules(m({ opcode: 'peer', remote: { address: '198.51.100.7', port: 9000 } }), { num: 0, failOpen: false });
  t.same(peer[0]!.slice(0, 10), ['-s', '198.51.100.7', '-d', '10.0.1.2', '-p', 'udp', '--sport', '9000', '--dport', '5000']);
  t.throws(() => iptablesRules(m(), { num: 70000, failOpen: false }));
});

t.test('base table: drop policy, replies only in reply direction, optional outbound interfaces', async (t) => {
  const s = baseTableScript();
  t.match(s, /^add table inet gatehouse\ndelete table inet gatehouse\n/, 'replaces a previous run’s table atomically');
  t.match(s, 'type nat hook prerouting priority dstnat; policy accept;');
  t.match(s, 'type nat hook postrouting priority srcnat; policy accept;');
  t.match(s, 'type filter hook forward priority mangle - 10; policy drop;');
  t.match(s, 'ct state established,related ct direction reply accept');
  t.notMatch(s, /iifname/);
  t.match(baseTableScript({ internalInterfaces: ['lan0', 'lan1'] }), 'iifname { "lan0", "lan1" } ct state new accept');
  t.throws(() => baseTableScript({ internalInterfaces: ['bad name"'] }));
});

t.test('handlesOf picks exactly the rules of one mapping from nft -j output', async (t) => {
  const json = JSON.stringify({
    nftables: [
      { metainfo: { version: '1.0.6' } },
      { table: { family: 'inet', name: 'gatehouse', handle: 1 } },
      { rule: { family: 'inet', table: 'gatehouse', chain: 'prerouting', handle: 4, comment: 'gatehouse pcp-1 dnat' } },
      { rule: { family: 'inet', table: 'gatehouse', chain: 'forward', handle: 9, comment: 'gatehouse pcp-1 in' } },
      { rule: { family: 'inet', table: 'gatehouse', chain: 'forward', handle: 10, comment: 'gatehouse pcp-10 in' } },
      { rule: { family: 'inet', table: 'gatehouse', chain: 'forward', handle: 11, comment: 'gatehouse replies' } },
      { rule: { family: 'ip', table: 'other', chain: 'forward', handle: 12, comment: 'gatehouse pcp-1 in' } },
    ],
  });
  const h = handlesOf(json, 'pcp-1');
  t.same(h, [
    { chain: 'prerouting', handle: 4 },
    { chain: 'forward', handle: 9 },
  ]);
  t.equal(deleteScript(h), 'delete rule inet gatehouse prerouting handle 4\ndelete rule inet gatehouse forward handle 9\n');
});

t.test('backend choice: none never creates a mapping', async (t) => {
  const b = await createFirewallBackend({ kind: 'none', queue: null });
  t.equal(b.available, false);
  t.match(b.reason, /none/);
  await t.rejects(b.install(m()), /no firewall backend/);
  t.ok(new UnavailableBackend('x') instanceof UnavailableBackend);
});

t.test('backend start: where nft cannot run, available is false with the reason, install refused', async (t) => {
  const b = await NftablesBackend.create({ queue: null, netns: 'gatehouse-no-such-netns' });
  t.equal(b.available, false);
  t.match(b.reason, /nftables unusable|not root/);
  await t.rejects(b.install(m()), /unavailable/);
  await b.close();
});
