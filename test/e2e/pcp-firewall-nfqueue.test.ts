// The PCP firewall data plane on a REAL kernel: lan | gw | wan network namespaces; the
// nftables backend programs gw (nft and iptables through `ip netns exec`); the NFQUEUE reader
// runs as a node child INSIDE gw (a netlink socket belongs to its opener's namespace) and
// gives verdicts by payload text (helpers/nfq-child.ts). UDP sockets in lan and wan are node
// children too (helpers/netns.ts udpAgent).
import t from 'tap';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { NftablesBackend } from '../../src/pcp/firewall/nftables.js';
import { loadNfqueue } from '../../src/pcp/firewall/nfqueue.js';
import type { PcpMapping } from '../../src/pcp/hooks.js';
import { NetnsLab, THREE_NS as A, threeNamespaces } from './helpers/netns.js';
import { findProgram, inCi, requirePeer } from './helpers/require-peer.js';

const CHILD = fileURLToPath(new URL('./helpers/nfq-child.ts', import.meta.url));
const QUEUE = 7;
const QUIET_MS = 400; // a datagram that has not arrived by then was dropped (veth RTT is ~0.1 ms)

function mapping(id: string, internalPort: number, externalPort: number, o: Partial<PcpMapping> = {}): PcpMapping {
  return {
    id,
    opcode: 'map',
    client: { address: A.lanHost, port: 5350 },
    internal: { address: A.lanHost, port: internalPort },
    protocol: 17,
    external: { address: A.gwWan, port: externalPort },
    remote: null,
    filters: [],
    nonce: Buffer.alloc(12, 1),
    user: null,
    groups: [],
    createdAt: Date.now(),
    expiresAt: Date.now() + 120_000,
    ...o,
  };
}

interface Seen {
  id: number;
  hook: string;
  src: string;
  sport: number;
  dst: string;
  dport: number;
  data: string;
  verdict: string;
  at: number;
}

/** The reader child in gw; its packets as they come. */
async function startReader(lab: NetnsLab, gw: string, failOpen: boolean) {
  const p = lab.spawn(gw, process.execPath, ['--import', 'tsx', CHILD, String(QUEUE), failOpen ? '1' : '0', '200']);
  const seen: Seen[] = [];
  let ready!: (v: string | null) => void;
  const isReady = new Promise<string | null>((r) => (ready = r));
  let closed!: () => void;
  const isClosed = new Promise<void>((r) => (closed = r));
  let stderr = '';
  p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  p.on('exit', (c) => ready(`reader exited ${c}: ${stderr}`));
  createInterface({ input: p.stdout! }).on('line', (l) => {
    const m = JSON.parse(l) as { ready?: boolean; error?: string; closed?: boolean } & Seen;
    if (m.ready) ready(null);
    else if (m.error) ready(m.error);
    else if (m.closed) closed();
    else seen.push(m);
  });
  const err = await isReady;
  return {
    err,
    seen,
    find: (data: string) => seen.filter((s) => s.data === data),
    close: async () => {
      p.stdin!.write('close\n');
      await isClosed;
    },
  };
}

const missing = ['nft', 'iptables', 'ip'].filter((b) => !findProgram(b));
if (!loadNfqueue().binding) missing.push('native nfqueue binding (npm run build:native, libnetfilter-queue-dev)');
if (process.getuid?.() !== 0) missing.push('root');

t.test('PCP mappings as kernel rules, their packets through the NFQUEUE reader', async (t) => {
  if (!requirePeer(t, 'ip')) return;
  if (missing.length) {
    if (inCi()) t.fail(`CI: missing ${missing.join(', ')}`);
    else (t as unknown as { skip(m: string): void }).skip(`missing ${missing.join(', ')}; skipped outside CI only`);
    return;
  }
  const { lab, lan, gw, wan } = threeNamespaces(t, 'ghfw');
  const fw = await NftablesBackend.create({ queue: { num: QUEUE, failOpen: false }, netns: gw });
  t.teardown(() => fw.close());
  t.ok(fw.available, `backend available (${fw.reason ?? 'ok'})`);
  if (!fw.available) return;

  const reader = await startReader(lab, gw, false);
  t.equal(reader.err, null, 'NFQUEUE reader bound inside gw');
  if (reader.err) return;

  const host = await lab.udpAgent(lan, A.lanHost, 5000);
  const peerA = await lab.udpAgent(wan, A.wanPeer, 9000); // listed in the FILTER
  const peerB = await lab.udpAgent(wan, A.wanPeer2, 9000); // not listed: only outbound from lan
  const peerC = await lab.udpAgent(wan, A.wanPeer2, 9001); // not listed, never contacted

  // Before any mapping nothing reaches the internal host.
  peerA.send(A.gwWan, 40000, 'pre');
  t.equal(await host.waitFor('pre', QUIET_MS), null, 'no mapping: an inbound datagram does not pass');

  const m1 = mapping('pcp-1', 5000, 40000, { filters: [{ prefix: A.wanPeer, prefixLength: 128, port: 0 }] });
  await fw.install(m1);
  t.ok(fw.conntrackFlush, 'conntrack entries are flushed (native ctnetlink)');
  t.ok(fw.conntrackDeleted >= 1, `install deleted the stale conntrack entry the early datagram left (${fw.conntrackDeleted})`);
  const ruleset = lab.sh(gw, 'nft', ['list', 'ruleset']);
  t.match(ruleset, /table inet gatehouse/, 'the gatehouse table is in the ruleset');
  t.match(ruleset, `ip daddr ${A.gwWan} udp dport 40000 dnat ip to ${A.lanHost}:5000 comment "gatehouse pcp-1 dnat"`, 'DNAT rule');
  t.match(ruleset, `ip saddr ${A.lanHost} udp sport 5000 snat ip to ${A.gwWan}:40000 comment "gatehouse pcp-1 snat"`, 'SNAT rule');
  t.match(ruleset, `ip saddr ${A.wanPeer} ip daddr ${A.lanHost} udp dport 5000 accept comment "gatehouse pcp-1 in0"`, 'FILTER rule');
  t.match(ruleset, /policy drop;/, 'forward chain drops by default');
  const ipt = lab.sh(gw, 'iptables', ['-w', '-t', 'mangle', '-S', 'GATEHOUSE']);
  t.match(ipt, `-d ${A.lanHost}/32 -p udp -m udp --dport 5000 -m comment --comment "gatehouse pcp-1 q-in" -j NFQUEUE --queue-num ${QUEUE}`);
  t.notMatch(ipt, /queue-bypass/, 'fail closed: no --queue-bypass');

  // Inbound through DNAT, seen by the reader with the internal destination.
  peerA.send(A.gwWan, 40000, 'in-1');
  const in1 = await host.waitFor('in-1', 3000);
  t.ok(in1, 'wan -> external:40000 arrives at lan 10.61.1.2:5000');
  t.same(in1 && { from: in1.from, port: in1.port }, { from: A.wanPeer, port: 9000 }, 'from the wan peer, unchanged');
  t.match(
    reader.find('in-1'),
    [{ hook: 'forward', src: A.wanPeer, sport: 9000, dst: A.lanHost, dport: 5000, verdict: 'accept' }],
    'the reader saw it after DNAT',
  );

  // Outbound, a new flow: SNAT to the external address and port.
  host.send(A.wanPeer2, 9000, 'out-1');
  const out1 = await peerB.waitFor('out-1', 3000);
  t.same(out1 && { from: out1.from, port: out1.port }, { from: A.gwWan, port: 40000 }, 'lan -> wan leaves as external:40000 (SNAT)');
  t.match(
    reader.find('out-1'),
    [{ hook: 'forward', src: A.lanHost, sport: 5000, dst: A.wanPeer2, dport: 9000, verdict: 'accept' }],
    'the reader saw it before SNAT',
  );

  // A drop verdict stops a packet; a held one arrives late.
  peerA.send(A.gwWan, 40000, 'DROP-1');
  t.equal(await host.waitFor('DROP-1', QUIET_MS), null, 'a drop verdict stops the datagram');
  t.match(reader.find('DROP-1'), [{ verdict: 'drop' }], 'the reader dropped it');
  // An admin's ACCEPT at the top of filter FORWARD cannot skip the queue (it sits in mangle, before).
  lab.sh(gw, 'iptables', ['-w', '-I', 'FORWARD', '1', '-j', 'ACCEPT']);
  peerA.send(A.gwWan, 40000, 'DROP-2');
  t.equal(await host.waitFor('DROP-2', QUIET_MS), null, 'with an ACCEPT first in filter FORWARD the verdict still rules');
  t.match(reader.find('DROP-2'), [{ verdict: 'drop' }], 'the reader saw it');
  lab.sh(gw, 'iptables', ['-w', '-D', 'FORWARD', '-j', 'ACCEPT']);
  const sentAt = Date.now();
  peerA.send(A.gwWan, 40000, 'HOLD-1');
  const held = await host.waitFor('HOLD-1', 3000);
  t.ok(held, 'a held datagram is delivered');
  t.ok(held && held.at - sentAt >= 190, `... after the 200 ms hold (${held ? held.at - sentAt : '-'} ms)`);

  // FILTER: a remote peer not listed cannot pass (dropped before the queue).
  peerC.send(A.gwWan, 40000, 'in-C');
  t.equal(await host.waitFor('in-C', QUIET_MS), null, 'a peer outside the FILTER does not pass');
  t.equal(reader.find('in-C').length, 0, 'and never reaches the queue');

  // PEER mapping: only the one remote.
  const p2 = mapping('pcp-2', 5000, 40001, { opcode: 'peer', remote: { address: A.wanPeer, port: 9000 } });
  await fw.install(p2);
  peerC.send(A.gwWan, 40001, 'peer-C');
  peerA.send(A.gwWan, 40001, 'peer-A');
  t.ok(await host.waitFor('peer-A', 3000), 'PEER: the remote passes');
  t.equal(await host.waitFor('peer-C', QUIET_MS), null, 'PEER: another remote does not');
  await fw.remove(p2);

  // remove(): rules gone, packets stop (also on the flow conntrack still remembers).
  await fw.remove(m1);
  const after = lab.sh(gw, 'nft', ['list', 'ruleset']);
  t.notMatch(after, /pcp-1|pcp-2/, 'no rule of the removed mappings is left');
  t.notMatch(lab.sh(gw, 'iptables', ['-w', '-t', 'mangle', '-S', 'GATEHOUSE']), /NFQUEUE/, 'no queue rule left');
  peerA.send(A.gwWan, 40000, 'after-remove');
  t.equal(await host.waitFor('after-remove', QUIET_MS), null, 'after remove() the flow no longer passes');

  // Fail closed: the reader stops reading (queue unbound) -> mapped packets are dropped.
  const peerA2 = await lab.udpAgent(wan, A.wanPeer, 9002);
  const m3 = mapping('pcp-3', 5000, 40002);
  await fw.install(m3);
  peerA2.send(A.gwWan, 40002, 'alive-3');
  t.ok(await host.waitFor('alive-3', 3000), 'a new mapping passes while the reader runs');
  await reader.close();
  peerA2.send(A.gwWan, 40002, 'closed-3');
  t.equal(await host.waitFor('closed-3', QUIET_MS), null, 'fail closed: with no reader the mapped flow does not pass');
  await fw.close();
  t.notMatch(lab.sh(gw, 'nft', ['list', 'ruleset']), /gatehouse/, 'close() removes the table');

  // Fail open (the contrast): --queue-bypass lets the packets through with no reader.
  // (conntrack: false here, so the removal below shows the forward chain alone stops a flow
  // conntrack still remembers: its original direction needs a live mapping rule.)
  const open = await NftablesBackend.create({ queue: { num: QUEUE, failOpen: true }, netns: gw, conntrack: false });
  t.teardown(() => open.close());
  const peerA3 = await lab.udpAgent(wan, A.wanPeer, 9003);
  await open.install(mapping('pcp-4', 5000, 40003));
  t.match(lab.sh(gw, 'iptables', ['-w', '-t', 'mangle', '-S', 'GATEHOUSE']), /--queue-bypass/, 'fail open: --queue-bypass');
  peerA3.send(A.gwWan, 40003, 'open-4');
  t.ok(await host.waitFor('open-4', 3000), 'fail open: with no reader the mapped flow passes');
  await open.remove(mapping('pcp-4', 5000, 40003));
  t.equal(open.conntrackDeleted, 0, 'no conntrack flush in this backend');
  peerA3.send(A.gwWan, 40003, 'open-4-after');
  t.equal(await host.waitFor('open-4-after', QUIET_MS), null, 'removed (conntrack entry kept): the flow no longer passes');
  await open.close();
});

t.test('IPv6 pinhole (no NAT) through ip6tables NFQUEUE; other rule shapes the kernel accepts', async (t) => {
  if (missing.length) {
    if (inCi()) t.fail(`CI: missing ${missing.join(', ')}`);
    else (t as unknown as { skip(m: string): void }).skip(`missing ${missing.join(', ')}; skipped outside CI only`);
    return;
  }
  const { lab, lan, gw, wan } = threeNamespaces(t, 'ghf6');
  const fw = await NftablesBackend.create({ queue: { num: QUEUE, failOpen: false }, netns: gw });
  t.teardown(() => fw.close());
  t.ok(fw.available, `backend available (${fw.reason ?? 'ok'})`);
  const reader = await startReader(lab, gw, false);
  t.equal(reader.err, null, 'reader bound');
  if (!fw.available || reader.err) return;
  const host = await lab.udpAgent(lan, A.lanHost6, 6000);
  const peer = await lab.udpAgent(wan, A.wanPeer6, 9000);

  peer.send(A.lanHost6, 6000, 'v6-pre');
  t.equal(await host.waitFor('v6-pre', QUIET_MS), null, 'no pinhole: routed IPv6 is dropped by the forward policy');

  const pin = { address: A.lanHost6, port: 6000 };
  const m6 = mapping('pcp-6', 6000, 6000, {
    internal: pin,
    external: pin,
    client: { address: A.lanHost6, port: 5350 },
    filters: [{ prefix: A.wanPeer6, prefixLength: 128, port: 0 }],
  });
  await fw.install(m6);
  const rs = lab.sh(gw, 'nft', ['list', 'ruleset']);
  t.match(rs, `ip6 saddr ${A.wanPeer6} ip6 daddr ${A.lanHost6} udp dport 6000 accept comment "gatehouse pcp-6 in0"`, 'pinhole rule');
  t.notMatch(rs, /pcp-6 dnat/, 'no NAT for a pinhole');
  t.match(
    lab.sh(gw, 'ip6tables', ['-w', '-t', 'mangle', '-S', 'GATEHOUSE']),
    /--dport 6000 .*-j NFQUEUE --queue-num 7/,
    'ip6tables queue rule',
  );
  peer.send(A.lanHost6, 6000, 'v6-in');
  const got = await host.waitFor('v6-in', 3000);
  t.same(got && { from: got.from, port: got.port }, { from: A.wanPeer6, port: 9000 }, 'the pinhole passes, addresses unchanged');
  t.match(reader.find('v6-in'), [{ src: A.wanPeer6, dst: A.lanHost6, dport: 6000, verdict: 'accept' }], 'the reader saw the IPv6 packet');
  host.send(A.wanPeer6, 9000, 'v6-out');
  t.ok(await peer.waitFor('v6-out', 3000), 'outbound through the pinhole');

  // Shapes: TCP, protocol 0 (all), SCTP by number, a PEER with the port of the remote.
  const shapes = [
    mapping('pcp-t', 7000, 47000, { protocol: 6 }),
    mapping('pcp-all', 0, 0, {
      protocol: 0,
      internal: { address: '10.61.1.9', port: 0 },
      external: { address: A.gwWan, port: 0 },
    }),
    mapping('pcp-sctp', 7001, 47001, { protocol: 132 }),
    mapping('pcp-peer', 7002, 47002, { opcode: 'peer', remote: { address: A.wanPeer, port: 9100 } }),
  ];
  for (const s of shapes) {
    await fw.install(s);
    t.match(lab.sh(gw, 'nft', ['list', 'ruleset']), `comment "gatehouse ${s.id} in"`, `${s.id} installed`);
  }
  await fw.update({ ...shapes[0]!, external: { address: A.gwWan, port: 47010 } });
  const upd = lab.sh(gw, 'nft', ['list', 'ruleset']);
  t.match(upd, `tcp dport 47010 dnat ip to ${A.lanHost}:7000 comment "gatehouse pcp-t dnat"`, 'update: the new external port');
  t.notMatch(upd, /tcp dport 47000/, 'update: the old rule is gone (one transaction)');
  for (const s of [...shapes, m6]) await fw.remove(s);
  t.notMatch(lab.sh(gw, 'nft', ['list', 'ruleset']), /gatehouse pcp-/, 'every mapping rule removed');
  t.notMatch(
    lab.sh(gw, 'iptables', ['-w', '-t', 'mangle', '-S', 'GATEHOUSE']) + lab.sh(gw, 'ip6tables', ['-w', '-t', 'mangle', '-S', 'GATEHOUSE']),
    /NFQUEUE/,
    'every queue rule removed',
  );
  peer.send(A.lanHost6, 6000, 'v6-after');
  t.equal(await host.waitFor('v6-after', QUIET_MS), null, 'pinhole closed after remove()');
});

t.test('without iptables the backend is unavailable, says why, and leaves no table behind', async (t) => {
  if (missing.length) {
    if (inCi()) t.fail(`CI: missing ${missing.join(', ')}`);
    else (t as unknown as { skip(m: string): void }).skip(`missing ${missing.join(', ')}; skipped outside CI only`);
    return;
  }
  const lab = new NetnsLab(t, 'ghfx');
  const gw = lab.ns('gw');
  const b = await NftablesBackend.create({
    queue: { num: QUEUE, failOpen: false },
    netns: gw,
    commands: { iptables: 'gatehouse-no-such-iptables' },
  });
  t.equal(b.available, false);
  t.match(b.reason, /iptables .*unusable/, `reason: ${b.reason}`);
  t.notMatch(lab.sh(gw, 'nft', ['list', 'ruleset']), /gatehouse/, 'no half-made table');
  await t.rejects(b.install(mapping('pcp-x', 1, 1)), /unavailable/, 'install refused');
  const ok = await NftablesBackend.create({ queue: null, netns: gw });
  t.ok(ok.available, 'queue: null needs no iptables');
  await ok.close();
});
