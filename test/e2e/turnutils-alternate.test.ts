/**
 * Load shedding against coturn's client (issue 14): a TURN server at turn.max_allocations
 * answers Allocate with 300 Try Alternate + ALTERNATE-SERVER (RFC 8489 §10), and
 * turnutils_uclient follows it: its probe Allocate is redirected, its real allocations and
 * all its traffic go to the alternate server. Two in-process servers on loopback, the
 * echoing turnutils_peer.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { defaultConfig, type GatehouseConfig } from '../../src/config/config.js';
import { TurnServer } from '../../src/turn/server.js';
import { MemoryEventSink } from '../../src/events/eve.js';
import { requirePeer } from './helpers/require-peer.js';
import { children, freeUdpPort, run } from './helpers/run.js';

function config(ports: [number, number], mut?: (c: GatehouseConfig) => void): GatehouseConfig {
  const c = defaultConfig();
  c.turn.listen = ['udp://127.0.0.1:0', 'tcp://127.0.0.1:0'];
  c.turn.relay_address = '127.0.0.1';
  c.turn.relay_ports = ports;
  c.turn.peers.allow = ['127.0.0.0/8'];
  c.turn.max_allocations_per_user = 100;
  c.turn.channel_numbers = 'rfc5766'; // turnutils_uclient's channel numbers
  mut?.(c);
  return c;
}

async function main(): Promise<void> {
  const users = { lookup: (n: string) => (n === 'alice' ? { name: 'alice', password: 'wonderland', groups: [] } : undefined) };
  const eventsB = new MemoryEventSink();
  const b = new TurnServer({ config: config([46000, 46999]), users, events: eventsB });
  await b.start();
  const bUdp = b.addresses().find((x) => x.proto === 'udp')!.port;
  const bTcp = b.addresses().find((x) => x.proto === 'tcp')!.port;
  const asked: string[] = [];
  // A is full (0 drains it); its alternate is B, as the cluster registry would name it.
  const a = new TurnServer({
    config: config([47000, 47999], (c) => (c.turn.max_allocations = 0)),
    users,
    alternate: (proto, family) => {
      asked.push(`${proto}/${family}`);
      return [{ address: '127.0.0.1', port: proto === 'udp' ? bUdp : bTcp }];
    },
  });
  await a.start();
  const aUdp = a.addresses().find((x) => x.proto === 'udp')!.port;
  const aTcp = a.addresses().find((x) => x.proto === 'tcp')!.port;
  const peerPort = await freeUdpPort();
  const peer = spawn('turnutils_peer', ['-p', String(peerPort), '-L', '127.0.0.1'], { stdio: 'ignore' });
  children.add(peer);
  t.teardown(async () => {
    for (const c of children) c.kill('SIGKILL');
    await a.stop();
    await b.stop();
  });
  await new Promise((r) => setTimeout(r, 300));
  const base = ['-u', 'alice', '-w', 'wonderland', '-e', '127.0.0.1', '-r', String(peerPort), '-n', '20', '-l', '120', '-z', '5'];

  for (const c of [
    { name: 'UDP', args: ['-p', String(aUdp)], proto: 'udp' },
    { name: 'TCP (-t)', args: ['-t', '-p', String(aTcp)], proto: 'tcp' },
  ]) {
    await t.test(`turnutils_uclient ${c.name} follows 300 ALTERNATE-SERVER to the other server`, async (t) => {
      const before = b.stats.packets.clientToPeer;
      const refusedBefore = a.stats.refused.capacity_alternate ?? 0;
      const r = await run('turnutils_uclient', [...c.args, ...base, '127.0.0.1']);
      const sr = [...r.out.matchAll(/tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$/gm)].pop();
      t.ok(sr, 'uclient printed its totals');
      if (!sr) {
        t.comment(r.out.slice(-3000));
        return;
      }
      t.match(r.out, /error 300/, 'uclient saw the 300 on its probe');
      t.ok(Number(sr[1]) > 0, `sent ${sr[1]}`);
      t.equal(Number(sr[2]), Number(sr[1]), 'every message came back, through the alternate');
      t.ok((a.stats.refused.capacity_alternate ?? 0) > refusedBefore, 'A redirected');
      t.equal(a.stats.packets.clientToPeer, 0, 'nothing relayed by the full server');
      t.ok(b.stats.packets.clientToPeer > before, 'B relayed the traffic');
      t.ok(asked.includes(`${c.proto}/4`), `A asked for a ${c.proto} alternate of the client's family`);
    });
  }
  t.equal(a.stats.authFailures['bad_integrity'] ?? 0, 0, "uclient's requests authenticated");
  t.ok(
    eventsB.events.some((e) => e.event_type === 'allocation'),
    'allocations made on B',
  );
}

if (requirePeer(t, 'turnutils_uclient', 'turnutils_peer')) await main();
