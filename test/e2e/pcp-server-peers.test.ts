// Gatehouse's PCP server (src/pcp/server.ts) against REAL third-party clients, in two
// network namespaces this test creates (and removes):
//
//   lan: eth0 10.77.0.2/24, default via 10.77.0.1  <--veth-->  gw: lan0 10.77.0.1/24, the PCP
//                                                                server on udp 10.77.0.1:5351
//
//  - libtorrent (Debian python3-libtorrent; its natpmp.cpp speaks PCP version 2 to the
//    default route's gateway) creates MAP mappings for its listen port (TCP and UDP 6881),
//    refreshes them (the server clamps lifetimes to 6 s, so it must) and deletes them when
//    the session ends: asserted on what the server's backend was asked (install / update /
//    remove) and on its pcp_mapping events;
//  - natpmpc (NAT-PMP, RFC 6886 version 0) gets the version-negotiation answer of RFC 6887
//    §9 and says so;
//  - tshark decodes every packet the server sent (captured in gw on lan0) as PCP v2 or
//    NAT-PMP, with no malformed packet and no expert info.
// Missing peers (python3-libtorrent, natpmpc, tshark, ip, root) FAIL the test.
import t from 'tap';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { NetnsLab } from './helpers/netns.js';
import { findProgram, requirePeer } from './helpers/require-peer.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const CHILD = join(HERE, 'helpers', 'pcp-server-child.ts');
const PY = '/usr/bin/python3';
const CLIENT = '10.77.0.2';
const GW = '10.77.0.1';
const EXT = '198.18.0.1';

interface Line {
  kind: string;
  mapping?: {
    id: string;
    opcode: string;
    client: { address: string; port: number };
    internal: { address: string; port: number };
    protocol: number;
    external: { address: string; port: number };
  };
  event?: {
    event_type: string;
    src_ip: string;
    src_port: number;
    dest_ip: string;
    dest_port: number;
    proto?: string;
    gatehouse: Record<string, unknown>;
  };
  supervised?: Record<string, number>;
  stats?: { results: Record<string, number>; requests: Record<string, number> };
  addresses?: unknown;
}

function lines(p: ChildProcess, into: Line[], onLine?: () => void): void {
  createInterface({ input: p.stdout! }).on('line', (l) => {
    try {
      into.push(JSON.parse(l) as Line);
    } catch {
      into.push({ kind: 'text', event: undefined, addresses: l });
    }
    onLine?.();
  });
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const LT_SCRIPT = `
import libtorrent as lt, time, sys, json
s = lt.session({'listen_interfaces': '${CLIENT}:6881', 'enable_natpmp': True, 'enable_upnp': False,
  'enable_lsd': False, 'enable_dht': False,
  'alert_mask': lt.alert.category_t.port_mapping_notification | lt.alert.category_t.error_notification | lt.alert.category_t.status_notification})
end = time.time() + float(sys.argv[1])
while time.time() < end:
    s.wait_for_alert(250)
    for a in s.pop_alerts():
        print(json.dumps({'type': type(a).__name__, 'msg': a.message()}), flush=True)
print(json.dumps({'type': 'closing'}), flush=True)
del s
print(json.dumps({'type': 'closed'}), flush=True)
`;

t.test('PCP server with libtorrent, natpmpc and tshark', async (t) => {
  if (!requirePeer(t, 'ip', 'tshark', 'dumpcap', 'capture')) return;
  const missing: string[] = [];
  if (!findProgram('natpmpc')) missing.push('natpmpc (Debian natpmpc)');
  if (!existsSync(PY) || spawnSync(PY, ['-c', 'import libtorrent'], { stdio: 'ignore' }).status !== 0)
    missing.push('python3 libtorrent (Debian python3-libtorrent)');
  if (process.getuid?.() !== 0) missing.push('root (ip netns)');
  if (missing.length) {
    t.fail(`missing: ${missing.join(', ')}`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'gh-pcp-peers-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'lt.py'), LT_SCRIPT);

  const lab = new NetnsLab(t, 'ghps');
  const lan = lab.ns('lan');
  const gw = lab.ns('gw');
  lab.link(lan, 'eth0', `${CLIENT}/24`, gw, 'lan0', `${GW}/24`);
  lab.route(lan, 'default', GW);

  // Capture in gw before anything is sent.
  const pcap = join(dir, 'pcp.pcapng');
  const cap = lab.spawn(gw, 'tshark', ['-q', '-i', 'lan0', '-f', 'udp port 5351', '-w', pcap]);
  let capErr = '';
  cap.stderr!.on('data', (d: Buffer) => (capErr += d.toString()));
  await until(() => capErr.includes('Capturing on'), 15_000, `tshark to capture (${capErr})`);

  const server = lab.spawn(gw, process.execPath, [
    '--import',
    'tsx',
    CHILD,
    JSON.stringify({ listen: [`udp://${GW}:5351`], externalAddress: EXT, minLifetime: 1, maxLifetime: 6 }),
  ]);
  let serverErr = '';
  server.stderr!.on('data', (d: Buffer) => (serverErr += d.toString()));
  const seen: Line[] = [];
  lines(server, seen);
  await until(() => seen.some((l) => l.kind === 'listening'), 20_000, `the PCP server to listen (${serverErr})`);

  await t.test('libtorrent creates, refreshes and deletes MAP mappings', async (t) => {
    const lt = lab.spawn(lan, PY, [join(dir, 'lt.py'), '11']);
    const alerts: { type: string; msg: string }[] = [];
    createInterface({ input: lt.stdout! }).on('line', (l) => alerts.push(JSON.parse(l) as { type: string; msg: string }));
    let ltErr = '';
    lt.stderr!.on('data', (d: Buffer) => (ltErr += d.toString()));
    const code = await new Promise<number | null>((r) => lt.on('exit', r));
    t.equal(code, 0, `libtorrent exited cleanly ${ltErr}`);
    const mapped = alerts.filter((a) => a.type === 'portmap_alert').map((a) => a.msg);
    t.ok(
      mapped.some((m) => m.includes('TCP/6881')),
      `libtorrent reports the TCP mapping (${mapped.join(' | ')})`,
    );
    t.ok(
      mapped.some((m) => m.includes('UDP/6881')),
      'and the UDP one',
    );
    t.notOk(
      alerts.some((a) => a.type === 'portmap_error_alert'),
      `no port-mapping error (${alerts.filter((a) => a.type === 'portmap_error_alert').map((a) => a.msg)})`,
    );
    // Deletes arrive as the session closes.
    await until(() => seen.filter((l) => l.kind === 'remove').length >= 2, 5_000, 'the deletes');
    const installs = seen.filter((l) => l.kind === 'install');
    t.equal(installs.length, 2, 'two mappings created (TCP and UDP), no duplicates from retransmissions or refreshes');
    for (const proto of [6, 17]) {
      const i = installs.find((l) => l.mapping!.protocol === proto);
      t.ok(i, `mapping for protocol ${proto}`);
      if (!i) continue;
      const m = i.mapping!;
      t.same(m.internal, { address: CLIENT, port: 6881 }, 'the internal address and listen port');
      t.same(m.external, { address: EXT, port: 6881 }, 'the suggested external port honoured on the external address');
      t.equal(m.client.address, CLIENT);
      t.equal(m.opcode, 'map');
      const ups = seen.filter((l) => l.kind === 'update' && l.mapping!.id === m.id);
      t.ok(ups.length >= 1, `refreshed (${ups.length} refreshes within 11 s at a 6 s lifetime)`);
      const ev = seen.filter((l) => l.kind === 'event' && l.event!.gatehouse.mapping === m.id).map((l) => l.event!.gatehouse.action);
      t.equal(ev[0], 'created');
      t.ok(ev.includes('refreshed'));
      t.equal(ev.at(-1), 'deleted', 'deleted by the client (not expired) when the session closed');
      t.notOk(ev.includes('expired'), 'never expired: libtorrent refreshed in time');
    }
    const created = seen.find((l) => l.kind === 'event')!.event!;
    t.match(created, { event_type: 'pcp_mapping', src_ip: CLIENT, src_port: 6881, dest_ip: EXT, dest_port: 6881 });
  });

  await t.test('natpmpc (NAT-PMP, version 0) gets the version negotiation answer (§9)', async (t) => {
    const r = lab.try(lan, 'natpmpc', ['-g', GW]);
    t.equal(r.status, 1, 'natpmpc fails: the server does not speak NAT-PMP');
    t.match(r.stdout, /using gateway : 10\.77\.0\.1/);
    t.match(r.stdout, /readnatpmpresponseorretry returned -14/, 'NATPMP_ERR_UNSUPPORTEDVERSION (-14)');
    t.match(r.stderr, /unsupported nat-pmp version error from server/);
    const add = lab.try(lan, 'natpmpc', ['-g', GW, '-a', '1234', '1234', 'udp', '60']);
    t.equal(add.status, 1);
    t.match(add.stderr, /unsupported nat-pmp version error from server/, 'also for a mapping request');
  });

  // Stop the capture (after dumpcap has written the last packets) and the server.
  await new Promise((r) => setTimeout(r, 1500));
  cap.kill('SIGINT');
  await new Promise((r) => (cap.exitCode !== null ? r(null) : cap.on('exit', r)));
  server.kill('SIGTERM');
  await until(() => seen.some((l) => l.kind === 'closed'), 10_000, 'the server to close');
  const closed = seen.find((l) => l.kind === 'closed')!;
  t.same(closed.supervised, {}, 'no exception in the server');
  t.ok((closed.stats!.results['NATPMP/UNSUPP_VERSION'] ?? 0) >= 2, 'the server counted the NAT-PMP answers');
  t.ok((closed.stats!.results['MAP/SUCCESS'] ?? 0) >= 6, 'and the MAP successes');

  await t.test('tshark decodes the server packets without malformed or expert warnings', async (t) => {
    const json = spawnSync('tshark', ['-r', pcap, '-T', 'json'], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
    t.equal(json.status, 0, 'tshark -r -T json ran');
    const pkts = JSON.parse(json.stdout) as { _source: { layers: Record<string, Record<string, unknown>> } }[];
    const fromServer = pkts.filter((p) => p._source.layers.ip?.['ip.src'] === GW);
    t.ok(fromServer.length >= 8, `server packets captured (${fromServer.length})`);
    const pcp = fromServer.filter((p) => p._source.layers.portcontrol);
    const natpmp = fromServer.filter((p) => p._source.layers['nat-pmp']);
    t.equal(pcp.length + natpmp.length, fromServer.length, 'every server packet is PCP or NAT-PMP');
    t.ok(pcp.length >= 6, `PCP responses (${pcp.length}): creates, refreshes, deletes`);
    for (const p of pcp) {
      const l = p._source.layers.portcontrol!;
      t.equal(l['portcontrol.version'], '2');
      t.equal(l['portcontrol.r'], '1', 'a response');
      t.equal(l['portcontrol.result_code'], '0', 'SUCCESS');
    }
    t.ok(
      pcp.some((p) => p._source.layers.portcontrol!['portcontrol.lifetime_rsp'] === '0'),
      'delete responses (lifetime 0) among them',
    );
    t.ok(natpmp.length >= 2, 'NAT-PMP answers to natpmpc');
    for (const p of natpmp) t.equal(p._source.layers['nat-pmp']!['nat-pmp.result_code'], '1', 'Unsupported Version');
    const verbose = spawnSync('tshark', ['-r', pcap, '-V'], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
    t.notMatch(verbose.stdout, /Malformed|Expert Info/i, 'no malformed packet, no expert info');
    const expert = spawnSync('tshark', ['-r', pcap, '-q', '-z', 'expert'], { encoding: 'utf8' });
    t.notMatch(expert.stdout, /Errors|Warnings|Malformed/, `tshark -z expert reports nothing (${expert.stdout.trim()})`);
  });
});
