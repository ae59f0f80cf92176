/**
 * Interop with coturn's test programs (Debian package "coturn"): turnutils_peer as the
 * echoing peer, turnutils_uclient as the TURN client (UDP, TCP, client-to-client,
 * Send indications), turnutils_stunclient for Binding. The server runs in-process on
 * free ports with peers.allow 127.0.0.0/8.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { delimiter, join } from 'node:path';
import { defaultConfig } from '../../src/config/config.js';
import { TurnServer } from '../../src/turn/server.js';
import { MemoryEventSink } from '../../src/events/eve.js';
import { pino } from 'pino';
import { requirePeer } from './helpers/require-peer.js';
import { loadDontFragment } from '../../src/turn/dont-fragment.js';
import { children, freeUdpPort, run } from './helpers/run.js';

/** The final totals of a turnutils_uclient run. */
function totals(out: string): { sent: number; received: number; lost: number } | null {
  const sr = [...out.matchAll(/tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$/gm)].pop();
  const lost = /Total lost packets (\d+)/.exec(out);
  if (!sr || !lost) return null;
  return { sent: Number(sr[1]), received: Number(sr[2]), lost: Number(lost[1]) };
}

const canDontFragment = loadDontFragment() !== null;

async function main(): Promise<void> {
  const cfg = defaultConfig();
  cfg.turn.listen = ['udp://127.0.0.1:0', 'tcp://127.0.0.1:0'];
  cfg.turn.relay_address = '127.0.0.1';
  cfg.turn.relay_ports = [45000, 47999];
  cfg.turn.peers.allow = ['127.0.0.0/8'];
  cfg.turn.max_allocations_per_user = 100;
  // turnutils_uclient picks channel numbers from the RFC 5766 range 0x4000-0x7FFF.
  cfg.turn.channel_numbers = 'rfc5766';
  const events = new MemoryEventSink();
  const server = new TurnServer({
    config: cfg,
    users: { lookup: (n) => (n === 'alice' ? { name: 'alice', password: 'wonderland', groups: [] } : undefined) },
    events,
  });
  await server.start();
  const udpPort = server.addresses().find((a) => a.proto === 'udp')!.port;
  const tcpPort = server.addresses().find((a) => a.proto === 'tcp')!.port;

  const peerPort = await freeUdpPort();
  const peer = spawn('turnutils_peer', ['-p', String(peerPort), '-L', '127.0.0.1'], { stdio: 'ignore' });
  children.add(peer);
  t.teardown(async () => {
    for (const c of children) c.kill('SIGKILL');
    await server.stop();
  });
  // Give the peer a moment to bind; uclient retransmits anyway.
  await new Promise((r) => setTimeout(r, 300));

  const base = ['-u', 'alice', '-w', 'wonderland', '-e', '127.0.0.1', '-r', String(peerPort), '-n', '30', '-l', '160', '-z', '5'];
  const cases: Array<{ name: string; args: string[]; df?: boolean }> = [
    { name: 'UDP, channels', args: ['-p', String(udpPort), ...base] },
    { name: 'UDP, Send/Data indications (-s)', args: ['-s', '-p', String(udpPort), ...base] },
    // -g: DONT-FRAGMENT in the Allocate and in every Send (RFC 8656 §7.2 step 4, §11.2): the
    // native addon sets DF for those datagrams (test/unit/turn/dont-fragment.test.ts shows it
    // with strace); without the addon the Allocate would get 420.
    { name: 'UDP, Send indications with DONT-FRAGMENT (-s -g)', args: ['-s', '-g', '-p', String(udpPort), ...base], df: true },
    { name: 'TCP (-t)', args: ['-t', '-p', String(tcpPort), ...base] },
    { name: 'UDP client-to-client (-y)', args: ['-y', '-p', String(udpPort), ...base] },
    { name: 'TCP client-to-client (-t -y)', args: ['-t', '-y', '-p', String(tcpPort), ...base] },
    { name: 'UDP, 3 clients (-m 3)', args: ['-m', '3', '-p', String(udpPort), ...base] },
  ];
  for (const c of cases) {
    const dfSkip = c.df && !canDontFragment ? (process.env.CI ? false : 'the native addon is not built (npm run build:native)') : false;
    await t.test(`turnutils_uclient ${c.name}`, { skip: dfSkip }, async (t) => {
      const before = server.stats.packets.clientToPeer;
      const r = await run('turnutils_uclient', [...c.args, '127.0.0.1']);
      const tot = totals(r.out);
      t.ok(tot, 'uclient printed its totals');
      if (!tot) {
        t.comment(r.out.slice(-2000));
        return;
      }
      t.ok(tot.sent > 0, `sent ${tot.sent}`);
      t.equal(tot.received, tot.sent, 'every message came back');
      t.equal(tot.lost, 0, '0 lost packets');
      if (c.df) t.ok(server.stats.packets.clientToPeer - before >= tot.sent, 'relayed by the server (the Sends carried DONT-FRAGMENT)');
    });
  }

  await t.test('turnutils_stunclient gets its mapped address', async (t) => {
    const r = await run('turnutils_stunclient', ['-p', String(udpPort), '127.0.0.1'], 30_000);
    const m = /UDP reflexive addr: ([\d.]+):(\d+)/.exec(r.out);
    t.ok(m, 'reflexive address printed');
    if (!m) return;
    t.equal(m[1], '127.0.0.1');
    const port = Number(m[2]);
    t.ok(port > 0 && port < 65536 && port !== udpPort, 'a client port');
  });

  t.equal(server.stats.authFailures['bad_integrity'] ?? 0, 0, 'no integrity failures with the right password');
  t.ok(server.stats.packets.clientToPeer > 0 && server.stats.packets.peerToClient > 0, 'packets counted');
  t.ok(
    events.events.some((e) => e.event_type === 'allocation'),
    'allocation events',
  );
  t.ok(
    events.events.some((e) => e.event_type === 'permission'),
    'permission events',
  );

  await t.test('default channel_numbers (rfc8656): legacy numbers get the explanatory 400 and one warning', async (t) => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
    const strictCfg = defaultConfig();
    strictCfg.turn.listen = ['udp://127.0.0.1:0'];
    strictCfg.turn.relay_address = '127.0.0.1';
    strictCfg.turn.relay_ports = [48000, 48999];
    strictCfg.turn.peers.allow = ['127.0.0.0/8'];
    strictCfg.turn.max_allocations_per_user = 100;
    const strict = new TurnServer({
      config: strictCfg,
      users: { lookup: (n) => (n === 'alice' ? { name: 'alice', password: 'wonderland', groups: [] } : undefined) },
      logger,
    });
    await strict.start();
    t.teardown(() => strict.stop());
    const port = strict.addresses()[0]!.port;
    // 10 clients: each picks its channel number at random in 0x4000-0x7FFF, so some pick
    // the legacy range (all ten in 0x4000-0x4FFF: probability 4^-10).
    await run(
      'turnutils_uclient',
      [
        '-m',
        '10',
        '-p',
        String(port),
        '-u',
        'alice',
        '-w',
        'wonderland',
        '-e',
        '127.0.0.1',
        '-r',
        String(peerPort),
        '-n',
        '3',
        '-l',
        '160',
        '127.0.0.1',
      ],
      60_000,
    );
    const refused = strict.stats.refused.legacy_channel ?? 0;
    t.ok(refused > 0, `legacy ChannelBinds refused: ${refused}`);
    const warns = lines.filter((l) => String(l.msg).includes('legacy RFC 5766 channel number'));
    t.equal(warns.length, 1, 'one warning for the one client address');
    t.match(String(warns[0]?.msg), /turn\.channel_numbers: rfc5766/);
    t.notMatch(JSON.stringify(lines), /wonderland/, 'no password in the log');
  });

  await t.test('wrong password is refused', async (t) => {
    const r = await run(
      'turnutils_uclient',
      ['-p', String(udpPort), '-u', 'alice', '-w', 'wrong', '-e', '127.0.0.1', '-r', String(peerPort), '-n', '2', '127.0.0.1'],
      60_000,
    );
    const tot = totals(r.out);
    t.ok(!tot || tot.received === 0, 'nothing relayed');
    t.ok((server.stats.authFailures['bad_integrity'] ?? 0) > 0, 'counted as bad_integrity');
  });
}

// Missing coturn programs: a failure in CI, a skip with the reason elsewhere.
if (requirePeer(t, 'turnutils_uclient', 'turnutils_peer', 'turnutils_stunclient')) await main();
