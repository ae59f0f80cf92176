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
//  - crafted requests sent from the client namespace get every kind of answer (FILTER and
//    THIRD_PARTY echoed, PEER, ANNOUNCE, delete, and error codes of §7.4);
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
import {
  Opcode,
  OptionCode,
  Result,
  decodePcpResponse,
  encodePcpRequest,
  filterOption,
  preferFailureOption,
  resultName,
  thirdPartyOption,
  type PcpOption,
} from '../../src/wire/pcp.js';

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

  // RFC 6887 §14.1.1: the server's start is announced to 224.0.0.1:5350 (all hosts, no join needed).
  const listener = lab.spawn(lan, process.execPath, [
    '-e',
    "const s=require('dgram').createSocket({type:'udp4',reuseAddr:true});s.on('message',(m,r)=>console.log(JSON.stringify({hex:m.toString('hex'),from:r.address})));s.bind(5350,'0.0.0.0',()=>console.log('{\"ready\":true}'))",
  ]);
  const announces: { hex?: string; from?: string; ready?: boolean }[] = [];
  createInterface({ input: listener.stdout! }).on('line', (l) =>
    announces.push(JSON.parse(l) as { hex?: string; from?: string; ready?: boolean }),
  );
  await until(() => announces.some((a) => a.ready), 10_000, 'the multicast listener in lan');

  const server = lab.spawn(gw, process.execPath, [
    '--import',
    'tsx',
    CHILD,
    JSON.stringify({
      listen: [`udp://${GW}:5351`],
      externalAddress: EXT,
      minLifetime: 1,
      maxLifetime: 6,
      thirdPartyClients: [`${CLIENT}/32`],
      maxFiltersPerMapping: 2,
      nftables: true, // the mappings become real kernel rules in gw (issue 10: "the rules follow")
    }),
  ]);
  let serverErr = '';
  server.stderr!.on('data', (d: Buffer) => (serverErr += d.toString()));
  const seen: Line[] = [];
  lines(server, seen);
  await until(() => seen.some((l) => l.kind === 'listening'), 20_000, `the PCP server to listen (${serverErr})`);

  await t.test('the start is announced by multicast (RFC 6887 §14.1.1)', async (t) => {
    await until(() => announces.some((a) => a.hex), 5_000, 'the multicast ANNOUNCE');
    const a = announces.find((x) => x.hex)!;
    const d = decodePcpResponse(Buffer.from(a.hex!, 'hex'));
    t.ok(d.ok, 'a PCP response');
    if (!d.ok) return;
    t.equal(d.value.opcode, Opcode.ANNOUNCE, 'ANNOUNCE');
    t.equal(d.value.result, Result.SUCCESS);
    t.equal(d.value.lifetime, 0);
    t.ok(d.value.epoch <= 2, `epoch ${d.value.epoch}: the server just started (§8.5)`);
    t.equal(a.from, GW, 'from the listener on the internal side');
  });

  await t.test('libtorrent creates, refreshes and deletes MAP mappings', async (t) => {
    const lt = lab.spawn(lan, PY, [join(dir, 'lt.py'), '11']);
    // The kernel rules follow the mappings: DNAT to libtorrent's port while mapped, gone after.
    const ruleset = () => lab.try(gw, 'nft', ['list', 'table', 'inet', 'gatehouse']).stdout;
    const to = `dnat ip to ${CLIENT.replace(/\./g, '\\.')}:6881`;
    const dnatUdp = new RegExp(`udp dport 6881 ${to}`);
    const dnatTcp = new RegExp(`tcp dport 6881 ${to}`);
    // libtorrent maps TCP and UDP one after the other: watch until each rule was seen
    // (not only the first one to appear), while libtorrent runs.
    let sawRules = '';
    const watch = (async () => {
      let udp = false;
      let tcp = false;
      while (lt.exitCode === null && !(udp && tcp)) {
        const rs = ruleset();
        if (dnatUdp.test(rs) && !udp) ((udp = true), (sawRules += rs));
        if (dnatTcp.test(rs) && !tcp) ((tcp = true), (sawRules += rs));
        if (!(udp && tcp)) await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const alerts: { type: string; msg: string }[] = [];
    createInterface({ input: lt.stdout! }).on('line', (l) => alerts.push(JSON.parse(l) as { type: string; msg: string }));
    let ltErr = '';
    lt.stderr!.on('data', (d: Buffer) => (ltErr += d.toString()));
    const code = await new Promise<number | null>((r) => lt.on('exit', r));
    await watch;
    t.equal(code, 0, `libtorrent exited cleanly ${ltErr}`);
    t.match(sawRules, /udp dport 6881 dnat/, 'the UDP mapping is a DNAT rule in nft list ruleset while mapped');
    t.match(sawRules, /tcp dport 6881 dnat/, 'and the TCP one');
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
    // The firewall's remove line and the mapping's `deleted` event come on their own lines,
    // in either order: wait for both of each mapping (CI once read the events in between).
    const deletedEvents = () => seen.filter((l) => l.kind === 'event' && l.event!.gatehouse.action === 'deleted').length;
    await until(() => seen.filter((l) => l.kind === 'remove').length >= 2 && deletedEvents() >= 2, 5_000, 'the deletes');
    t.notMatch(ruleset(), /dport 6881/, 'the rules are gone once libtorrent deleted its mappings');
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

  await t.test('every kind of answer, to crafted requests from the client namespace', async (t) => {
    const n1 = Buffer.alloc(12, 0x11);
    const n2 = Buffer.alloc(12, 0x22);
    const map = (
      o: Partial<{
        nonce: Buffer;
        protocol: number;
        internalPort: number;
        externalPort: number;
        lifetime: number;
        options: PcpOption[];
        client: string;
      }> = {},
    ) =>
      encodePcpRequest({
        opcode: Opcode.MAP,
        lifetime: o.lifetime ?? 60,
        clientAddress: o.client ?? CLIENT,
        map: {
          nonce: o.nonce ?? n1,
          protocol: o.protocol ?? 17,
          internalPort: o.internalPort ?? 7000,
          externalPort: o.externalPort ?? 0,
          externalAddress: '0.0.0.0',
        },
        options: o.options,
      });
    const f = (a: string) => filterOption({ prefixLength: 128, port: 0, address: a });
    const cases: [string, Buffer, number][] = [
      ['MAP with FILTERs (echoed)', map({ externalPort: 7000, options: [f('198.51.100.1'), f('198.51.100.2')] }), Result.SUCCESS],
      ['one FILTER too many', map({ options: [f('198.51.100.3')] }), Result.EXCESSIVE_REMOTE_PEERS],
      ['another nonce', map({ nonce: n2 }), Result.NOT_AUTHORIZED],
      ['THIRD_PARTY (echoed)', map({ internalPort: 7001, options: [thirdPartyOption('10.77.0.9')] }), Result.SUCCESS],
      [
        'PREFER_FAILURE on a taken port',
        map({ internalPort: 7002, externalPort: 7000, options: [preferFailureOption()] }),
        Result.CANNOT_PROVIDE_EXTERNAL,
      ],
      ['unknown protocol', map({ protocol: 47 }), Result.UNSUPP_PROTOCOL],
      ['unknown mandatory option', map({ options: [{ code: 99, data: Buffer.alloc(4) }] }), Result.UNSUPP_OPTION],
      ['PCP client address is not the source', map({ client: '10.77.0.99' }), Result.ADDRESS_MISMATCH],
      ['malformed option', Buffer.concat([map(), Buffer.from('01000010', 'hex')]), Result.MALFORMED_OPTION],
      ['short MAP', map().subarray(0, 40), Result.MALFORMED_REQUEST],
      [
        'unknown opcode',
        encodePcpRequest({ opcode: 9, lifetime: 0, clientAddress: CLIENT, opcodeData: Buffer.alloc(8) }),
        Result.UNSUPP_OPCODE,
      ],
      ['ANNOUNCE', encodePcpRequest({ opcode: Opcode.ANNOUNCE, lifetime: 0, clientAddress: CLIENT }), Result.SUCCESS],
      [
        'PEER',
        encodePcpRequest({
          opcode: Opcode.PEER,
          lifetime: 60,
          clientAddress: CLIENT,
          peer: {
            nonce: n1,
            protocol: 17,
            internalPort: 7000,
            externalPort: 0,
            externalAddress: '0.0.0.0',
            remotePort: 3478,
            remoteAddress: '198.51.100.1',
          },
        }),
        Result.SUCCESS,
      ],
      ['delete', map({ lifetime: 0 }), Result.SUCCESS],
    ];
    const sender = `
import socket, sys, binascii
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('${CLIENT}', 0))
s.settimeout(3)
for h in sys.argv[1:]:
    s.sendto(binascii.unhexlify(h), ('${GW}', 5351))
    try:
        print(binascii.hexlify(s.recv(2048)).decode(), flush=True)
    except socket.timeout:
        print('timeout', flush=True)
`;
    writeFileSync(join(dir, 'send.py'), sender);
    const r = lab.try(lan, PY, [join(dir, 'send.py'), ...cases.map((c) => c[1].toString('hex'))]);
    t.equal(r.status, 0, r.stderr);
    const answers = r.stdout.trim().split('\n');
    t.equal(answers.length, cases.length);
    cases.forEach(([what, req, want], i) => {
      const a = answers[i]!;
      const d = a === 'timeout' ? null : decodePcpResponse(Buffer.from(a, 'hex'));
      t.ok(d?.ok, `${what}: answered and decodes`);
      if (!d?.ok) return;
      t.equal(d.value.result, want, `${what}: ${resultName(want)}`);
      t.equal(d.value.opcode, req[1]! & 0x7f);
      if (i === 0) t.equal(d.value.options.filter((o) => o.code === OptionCode.FILTER).length, 2, 'both FILTERs echoed');
      if (i === 3) t.equal(d.value.options.length, 1, 'THIRD_PARTY echoed');
    });
    await until(() => seen.some((l) => l.kind === 'install' && l.mapping!.internal.port === 7000), 3000, 'the server output');
    const filtered = seen.find((l) => l.kind === 'install' && l.mapping!.internal.port === 7000 && l.mapping!.opcode === 'map');
    t.same(
      (filtered?.mapping as { filters?: unknown } | undefined)?.filters,
      [
        { prefix: '198.51.100.1', prefixLength: 32, port: 0 },
        { prefix: '198.51.100.2', prefixLength: 32, port: 0 },
      ],
      'the FILTERs reached the backend',
    );
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

  await t.test('tshark decodes the server packets without malformed packets or expert warnings', async (t) => {
    const json = spawnSync('tshark', ['-r', pcap, '-T', 'json'], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
    t.equal(json.status, 0, 'tshark -r -T json ran');
    const pkts = JSON.parse(json.stdout) as { _source: { layers: Record<string, Record<string, unknown>> } }[];
    const fromServer = pkts.filter((p) => p._source.layers.ip?.['ip.src'] === GW);
    t.ok(fromServer.length >= 8, `server packets captured (${fromServer.length})`);
    const pcp = fromServer.filter((p) => p._source.layers.portcontrol);
    const natpmp = fromServer.filter((p) => p._source.layers['nat-pmp']);
    t.equal(pcp.length + natpmp.length, fromServer.length, 'every server packet is PCP or NAT-PMP');
    t.ok(pcp.length >= 6 + 14, `PCP responses (${pcp.length}): libtorrent's creates, refreshes, deletes and the crafted ones`);
    for (const p of pcp) {
      const l = p._source.layers.portcontrol!;
      t.equal(l['portcontrol.version'], '2');
      t.equal(l['portcontrol.r'], '1', 'a response');
    }
    const codes = new Set(pcp.map((p) => p._source.layers.portcontrol!['portcontrol.result_code']));
    for (const c of [0, 2, 3, 4, 5, 6, 9, 11, 12, 13]) t.ok(codes.has(String(c)), `tshark saw result code ${c}`);
    t.ok(
      pcp.some((p) => p._source.layers.portcontrol!['portcontrol.lifetime_rsp'] === '0'),
      'delete responses (lifetime 0) among them',
    );
    t.ok(natpmp.length >= 2, 'NAT-PMP answers to natpmpc');
    for (const p of natpmp) t.equal(p._source.layers['nat-pmp']!['nat-pmp.result_code'], '1', 'Unsupported Version');
    // Expert info on the server's packets: none, except what §8.3 makes inevitable: the
    // UNSUPP_OPTION and UNSUPP_OPCODE answers copy the request, so tshark meets the unknown
    // option 99 / opcode 9 there too (and says so as a warning, never as malformed).
    for (const p of fromServer) {
      const text = JSON.stringify(p._source.layers);
      const l = p._source.layers.portcontrol;
      t.notMatch(text, /_ws\.malformed|Malformed Packet/, `frame ${String(p._source.layers.frame?.['frame.number'])}: not malformed`);
      const rc = l?.['portcontrol.result_code'];
      if (rc === String(Result.UNSUPP_OPTION) || rc === String(Result.UNSUPP_OPCODE)) continue;
      t.notMatch(
        text,
        /_ws\.expert/,
        `frame ${String(p._source.layers.frame?.['frame.number'])} (result ${rc ?? 'NAT-PMP'}): no expert info`,
      );
    }
    const verbose = spawnSync('tshark', ['-r', pcap, '-V', '-Y', `ip.src==${GW}`], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
    t.equal(verbose.status, 0);
    t.notMatch(verbose.stdout, /Malformed Packet/i, 'tshark -V: no malformed server packet');
    const warnings = [...verbose.stdout.matchAll(/Expert Info \(([^)]*)\): ([^\n]*)/g)].map((m) => `${m[1]}: ${m[2]}`);
    t.ok(
      warnings.every((w) => /Unknown (option: 99|opcode: (9|137))/.test(w)),
      `only the copies of the unknown option/opcode are remarked on (${warnings.join('; ')})`,
    );
  });
});
