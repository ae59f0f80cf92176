// The PCP server core (src/pcp/server.ts) driven through handle() with a ManualClock and
// a fake FirewallBackend that records install/update/remove: result codes of RFC 6887
// §7.4, options (§13), epoch (§8.5), nonce rules (§11.2), lifetimes, retransmissions,
// limits, the auth hook (RFC 7652) and the request extension; unsolicited messages
// (§14) over real loopback UDP.
import t from 'tap';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { ManualClock } from '../../src/util/clock.js';
import { MemoryEventSink } from '../../src/events/eve.js';
import { PcpServer, pcpOptionsFromConfig, type PcpServerOptions } from '../../src/pcp/server.js';
import { defaultConfig } from '../../src/config/config.js';
import type { FirewallBackend, PcpAddress, PcpAuthHook, PcpMapping, PcpRequestExtension } from '../../src/pcp/hooks.js';
import {
  Opcode,
  OptionCode,
  Result,
  decodeFilter,
  decodePcpResponse,
  decodeThirdParty,
  encodePcpRequest,
  filterOption,
  preferFailureOption,
  thirdPartyOption,
  type PcpOption,
  type PcpResponse,
} from '../../src/wire/pcp.js';

class FakeBackend implements FirewallBackend {
  readonly name = 'fake';
  available = true;
  reason?: string;
  installs: PcpMapping[] = [];
  updates: PcpMapping[] = [];
  removes: PcpMapping[] = [];
  failInstall = false;
  failUpdate = false;
  delay: Promise<void> | null = null;
  async install(m: PcpMapping): Promise<void> {
    if (this.delay) await this.delay;
    if (this.failInstall) throw new Error('boom');
    this.installs.push(m);
  }
  async update(m: PcpMapping): Promise<void> {
    if (this.failUpdate) throw new Error('boom');
    this.updates.push(m);
  }
  async remove(m: PcpMapping): Promise<void> {
    this.removes.push(m);
  }
  async close(): Promise<void> {}
}

const EXT = '203.0.113.1';
const C1: PcpAddress = { address: '192.168.1.10', port: 40000 };
const C2: PcpAddress = { address: '192.168.1.11', port: 40001 };
const N1 = Buffer.alloc(12, 1);
const N2 = Buffer.alloc(12, 2);

function setup(o: Partial<PcpServerOptions> = {}) {
  const clock = new ManualClock();
  const fw = new FakeBackend();
  const events = new MemoryEventSink();
  const server = new PcpServer({ externalAddress: EXT, firewall: fw, clock, events, listen: [], ...o });
  return { clock, fw, events, server };
}

interface MapReq {
  client?: PcpAddress;
  clientAddress?: string;
  nonce?: Buffer;
  protocol?: number;
  internalPort?: number;
  externalPort?: number;
  externalAddress?: string;
  lifetime?: number;
  options?: PcpOption[];
}

function mapReq(r: MapReq = {}): Buffer {
  return encodePcpRequest({
    opcode: Opcode.MAP,
    lifetime: r.lifetime ?? 3600,
    clientAddress: r.clientAddress ?? (r.client ?? C1).address,
    map: {
      nonce: r.nonce ?? N1,
      protocol: r.protocol ?? 17,
      internalPort: r.internalPort ?? 5000,
      externalPort: r.externalPort ?? 0,
      externalAddress: r.externalAddress ?? '0.0.0.0',
    },
    options: r.options ?? [],
  });
}

function peerReq(r: MapReq & { remotePort?: number; remoteAddress?: string } = {}): Buffer {
  return encodePcpRequest({
    opcode: Opcode.PEER,
    lifetime: r.lifetime ?? 600,
    clientAddress: (r.client ?? C1).address,
    peer: {
      nonce: r.nonce ?? N1,
      protocol: r.protocol ?? 17,
      internalPort: r.internalPort ?? 5000,
      externalPort: r.externalPort ?? 0,
      externalAddress: r.externalAddress ?? '0.0.0.0',
      remotePort: r.remotePort ?? 3478,
      remoteAddress: r.remoteAddress ?? '198.51.100.7',
    },
    options: r.options ?? [],
  });
}

async function ask(server: PcpServer, msg: Buffer, from: PcpAddress = C1): Promise<PcpResponse> {
  const out = await server.handle(msg, from);
  if (out.length !== 1) throw new Error(`expected one answer, got ${out.length}`);
  const d = decodePcpResponse(out[0]!);
  if (!d.ok) throw new Error(`answer does not decode: ${d.error.reason}`);
  return d.value;
}

t.test('MAP creates a NAT44 mapping: suggested port honoured, lifetime, installed before SUCCESS, EVE event', async (t) => {
  const { server, fw, events, clock } = setup();
  const r = await ask(server, mapReq({ externalPort: 6000 }));
  t.equal(r.result, Result.SUCCESS);
  t.equal(r.opcode, Opcode.MAP);
  t.equal(r.lifetime, 3600);
  t.equal(r.epoch, 0, 'epoch starts at 0 (§8.5)');
  t.same(r.map, { nonce: N1, protocol: 17, internalPort: 5000, externalPort: 6000, externalAddress: EXT });
  t.same(r.options, [], 'no options asked, none given');
  t.equal(fw.installs.length, 1);
  const m = fw.installs[0]!;
  t.same(m.internal, { address: C1.address, port: 5000 });
  t.same(m.external, { address: EXT, port: 6000 });
  t.equal(m.opcode, 'map');
  t.equal(server.mappings().length, 1);
  const e = events.events[0]!;
  t.equal(e.event_type, 'pcp_mapping');
  t.equal(e.src_ip, C1.address);
  t.equal(e.src_port, 5000);
  t.equal(e.dest_ip, EXT);
  t.equal(e.dest_port, 6000);
  t.equal(e.proto, 'UDP');
  t.match(e.gatehouse, { mapping: m.id, action: 'created', opcode: 'map', external: `${EXT}:6000`, lifetime: 3600, user: null });
  t.notOk(JSON.stringify(events.events).includes(N1.toString('hex')), 'never the nonce');
  t.notOk(JSON.stringify(events.events).includes(N1.toString('base64')), 'never the nonce (base64)');
  clock.advance(10_500);
  const r2 = await ask(server, mapReq({ externalPort: 6000 }));
  t.equal(r2.epoch, 10, 'epoch counts seconds since start');
  t.equal(server.stats.results.get('MAP/SUCCESS'), 2);
  t.equal(server.stats.requests.get('MAP'), 2);
});

t.test('options from config pcp.*', async (t) => {
  const cfg = defaultConfig();
  const o = pcpOptionsFromConfig({ ...cfg.pcp, min_lifetime: 200, third_party: ['10.0.0.0/8'] });
  t.equal(o.minLifetime, 200);
  t.equal(o.maxLifetime, cfg.pcp.max_lifetime);
  t.same(o.thirdPartyClients, ['10.0.0.0/8']);
  t.same(o.listen, ['udp://0.0.0.0:5351']);
  const s = new PcpServer({ ...o, listen: [], externalAddress: EXT, firewall: new FakeBackend(), clock: new ManualClock() });
  t.equal((await ask(s, mapReq({ lifetime: 1 }))).lifetime, 200);
});

t.test('lifetime clamped to [min, max] (§15)', async (t) => {
  const { server } = setup({ minLifetime: 120, maxLifetime: 7200 });
  t.equal((await ask(server, mapReq({ lifetime: 5 }))).lifetime, 120);
  t.equal((await ask(server, mapReq({ lifetime: 0xffffffff }))).lifetime, 7200);
});

t.test('retransmissions are idempotent: same mapping, same answer', async (t) => {
  const { server, fw } = setup();
  const req = mapReq();
  const a = await server.handle(req, C1);
  const b = await server.handle(req, C1);
  t.same(a, b, 'byte-identical answers');
  t.equal(server.mappings().length, 1);
  t.equal(fw.installs.length, 1);
  // concurrent duplicates while the backend is slow
  const s2 = setup();
  let release!: () => void;
  s2.fw.delay = new Promise((r) => (release = r));
  const p1 = s2.server.handle(req, C1);
  const p2 = s2.server.handle(req, C1);
  await new Promise((r) => setImmediate(r));
  release();
  const [x, y] = await Promise.all([p1, p2]);
  const dx = decodePcpResponse(x[0]!);
  const dy = decodePcpResponse(y[0]!);
  t.ok(dx.ok && dy.ok && dx.value.result === 0 && dy.value.result === 0);
  if (dx.ok && dy.ok) t.equal(dx.value.map!.externalPort, dy.value.map!.externalPort);
  t.equal(s2.fw.installs.length, 1, 'one install for two concurrent copies');
  t.equal(s2.server.mappings().length, 1);
  // a delete retransmitted: SUCCESS both times
  const del = mapReq({ lifetime: 0 });
  t.equal((await ask(server, del)).result, Result.SUCCESS);
  t.equal((await ask(server, del)).result, Result.SUCCESS);
  t.equal(fw.removes.length, 1);
});

t.test('nonce (§11.2): refresh and delete with another nonce are NOT_AUTHORIZED', async (t) => {
  const { server, fw, events } = setup();
  const created = await ask(server, mapReq());
  const other = await ask(server, mapReq({ nonce: N2 }));
  t.equal(other.result, Result.NOT_AUTHORIZED);
  t.equal(other.lifetime, 1800, 'long lifetime error (§7.4)');
  t.ok(other.map!.nonce.equals(N2), 'error copies the request');
  const del = await ask(server, mapReq({ nonce: N2, lifetime: 0 }));
  t.equal(del.result, Result.NOT_AUTHORIZED);
  t.equal(server.mappings().length, 1, 'still there');
  t.equal(fw.removes.length, 0);
  const ok = await ask(server, mapReq({ lifetime: 0 }));
  t.equal(ok.result, Result.SUCCESS);
  t.equal(ok.lifetime, 0);
  t.equal(ok.map!.externalPort, created.map!.externalPort);
  t.equal(server.mappings().length, 0);
  t.equal(fw.removes.length, 1);
  t.equal(events.events.at(-1)!.gatehouse!.action, 'deleted');
  t.equal(server.stats.mappings.deleted, 1);
});

t.test('refresh: the same external port, update() awaited, expiry moves', async (t) => {
  const { server, fw, clock, events } = setup();
  const a = await ask(server, mapReq({ lifetime: 200 }));
  clock.advance(150_000);
  const b = await ask(server, mapReq({ lifetime: 200, externalPort: 7777 }));
  t.equal(b.map!.externalPort, a.map!.externalPort, 'a refresh keeps the assigned port');
  t.equal(fw.updates.length, 1);
  t.equal(events.events.at(-1)!.gatehouse!.action, 'refreshed');
  clock.advance(150_000);
  t.equal(server.mappings().length, 1, 'not expired: refreshed 150 s ago with 200 s');
  clock.advance(60_000);
  await new Promise((r) => setImmediate(r));
  t.equal(server.mappings().length, 0, 'expired');
  t.equal(fw.removes.length, 1);
  t.equal(events.events.at(-1)!.gatehouse!.action, 'expired');
  t.equal(server.stats.mappings.expired, 1);
  // a refresh the backend cannot apply: NO_RESOURCES, the old state stays
  const s = setup();
  await ask(s.server, mapReq({ lifetime: 300 }));
  const before = s.server.mappings()[0]!.expiresAt;
  s.fw.failUpdate = true;
  s.clock.advance(1000);
  const r = await ask(s.server, mapReq({ lifetime: 3000 }));
  t.equal(r.result, Result.NO_RESOURCES);
  t.equal(r.lifetime, 30, 'short lifetime error');
  t.equal(s.server.mappings()[0]!.expiresAt, before);
});

t.test('PREFER_FAILURE (§13.2) and port selection', async (t) => {
  const { server } = setup();
  await ask(server, mapReq({ externalPort: 6000 }));
  const taken = await ask(server, mapReq({ client: C2, externalPort: 6000, options: [preferFailureOption()] }), C2);
  t.equal(taken.result, Result.CANNOT_PROVIDE_EXTERNAL);
  const other = await ask(server, mapReq({ client: C2, externalPort: 6000 }), C2);
  t.equal(other.result, Result.SUCCESS);
  t.not(other.map!.externalPort, 6000, 'another port without PREFER_FAILURE');
  const pf = await ask(server, mapReq({ client: C2, internalPort: 5001, externalPort: 6001, options: [preferFailureOption()] }), C2);
  t.equal(pf.result, Result.SUCCESS);
  t.equal(pf.map!.externalPort, 6001);
  t.same(pf.options, [], 'PREFER_FAILURE is not echoed in a success response');
  const wrongAddr = await ask(
    server,
    mapReq({ client: C2, internalPort: 5002, externalAddress: '198.51.100.1', options: [preferFailureOption()] }),
    C2,
  );
  t.equal(wrongAddr.result, Result.CANNOT_PROVIDE_EXTERNAL, 'suggested address not ours');
  const low = await ask(server, mapReq({ client: C2, internalPort: 5003, externalPort: 80, options: [preferFailureOption()] }), C2);
  t.equal(low.result, Result.CANNOT_PROVIDE_EXTERNAL, 'a port outside the range');
  // SCTP implies PREFER_FAILURE
  await ask(server, mapReq({ protocol: 132, internalPort: 9000, externalPort: 9000 }));
  const sctp = await ask(server, mapReq({ client: C2, protocol: 132, internalPort: 9000, externalPort: 9000 }), C2);
  t.equal(sctp.result, Result.CANNOT_PROVIDE_EXTERNAL);
  const noPref = await ask(server, mapReq({ client: C2, internalPort: 5004 }), C2);
  t.equal(noPref.map!.externalPort, 5004, 'no suggestion: the internal port when free');
  // PREFER_FAILURE on PEER is not valid: UNSUPP_OPTION
  const pp = await ask(server, peerReq({ options: [preferFailureOption()] }));
  t.equal(pp.result, Result.UNSUPP_OPTION);
});

t.test('THIRD_PARTY (§13.1)', async (t) => {
  const none = setup();
  const u = await ask(none.server, mapReq({ options: [thirdPartyOption('192.168.1.50')] }));
  t.equal(u.result, Result.UNSUPP_OPTION, 'not configured: not supported');
  const { server, fw } = setup({ thirdPartyClients: ['192.168.1.10/32'] });
  const na = await ask(server, mapReq({ client: C2, options: [thirdPartyOption('192.168.1.50')] }), C2);
  t.equal(na.result, Result.NOT_AUTHORIZED, 'configured, but not for this client');
  const ok = await ask(server, mapReq({ options: [thirdPartyOption('192.168.1.50')] }));
  t.equal(ok.result, Result.SUCCESS);
  t.equal(ok.options.length, 1);
  t.equal(decodeThirdParty(ok.options[0]!), '192.168.1.50', 'THIRD_PARTY echoed');
  t.same(fw.installs[0]!.internal, { address: '192.168.1.50', port: 5000 });
  t.same(fw.installs[0]!.client, C1);
  const own = await ask(server, mapReq({ options: [thirdPartyOption(C1.address)] }));
  t.equal(own.result, Result.MALFORMED_REQUEST, 'THIRD_PARTY naming the source address itself');
  const twice = await ask(server, mapReq({ options: [thirdPartyOption('192.168.1.50'), thirdPartyOption('192.168.1.51')] }));
  t.equal(twice.result, Result.MALFORMED_OPTION);
  const del = await ask(server, mapReq({ lifetime: 0, options: [thirdPartyOption('192.168.1.50')] }));
  t.equal(del.result, Result.SUCCESS);
  t.equal(decodeThirdParty(del.options[0]!), '192.168.1.50');
  t.equal(server.mappings().length, 0);
});

t.test('FILTER (§13.3): stored for the backend, echoed on success, bounded', async (t) => {
  const { server, fw } = setup({ maxFiltersPerMapping: 2 });
  const f1 = filterOption({ prefixLength: 120, port: 0, address: '198.51.100.77' });
  const f2 = filterOption({ prefixLength: 128, port: 443, address: '198.51.100.9' });
  const r = await ask(server, mapReq({ options: [f1, f2] }));
  t.equal(r.result, Result.SUCCESS);
  t.equal(r.options.length, 2);
  t.ok(r.options.every((o) => o.code === OptionCode.FILTER));
  t.same(
    r.options.map((o) => decodeFilter(o)),
    [decodeFilter(f1), decodeFilter(f2)],
  );
  t.same(fw.installs[0]!.filters, [
    { prefix: '198.51.100.0', prefixLength: 24, port: 0 },
    { prefix: '198.51.100.9', prefixLength: 32, port: 443 },
  ]);
  const f3 = filterOption({ prefixLength: 128, port: 0, address: '198.51.100.10' });
  const over = await ask(server, mapReq({ options: [f3] }));
  t.equal(over.result, Result.EXCESSIVE_REMOTE_PEERS);
  t.equal(server.mappings()[0]!.filters.length, 2, 'unchanged after the refusal');
  const clear = filterOption({ prefixLength: 0, port: 0, address: '0.0.0.0' });
  const c = await ask(server, mapReq({ options: [clear, f3] }));
  t.equal(c.result, Result.SUCCESS);
  t.same(fw.updates.at(-1)!.filters, [{ prefix: '198.51.100.10', prefixLength: 32, port: 0 }], 'prefix length 0 removed the old ones');
  const fam = await ask(server, mapReq({ options: [filterOption({ prefixLength: 128, port: 0, address: '2001:db8::1' })] }));
  t.equal(fam.result, Result.MALFORMED_OPTION, 'FILTER of another family');
  const onPeer = await ask(server, peerReq({ options: [f1] }));
  t.equal(onPeer.result, Result.UNSUPP_OPTION, 'FILTER is MAP only');
});

t.test('header validation through the server: every §7.4/§8.3 code that applies', async (t) => {
  const { server } = setup();
  const mism = await ask(server, mapReq({ clientAddress: '10.9.9.9' }));
  t.equal(mism.result, Result.ADDRESS_MISMATCH);
  t.equal(mism.lifetime, 1800);
  const bad = Buffer.from(mapReq());
  bad[1] = 9;
  const op = await ask(server, bad);
  t.equal(op.result, Result.UNSUPP_OPCODE);
  t.equal(op.opcode, 9);
  const short = await ask(server, mapReq().subarray(0, 40));
  t.equal(short.result, Result.MALFORMED_REQUEST);
  const v = Buffer.from(mapReq());
  v[0] = 3;
  const ver = (await server.handle(v, C1))[0]!;
  t.equal(ver[0], 2, 'UNSUPP_VERSION names version 2 (§9)');
  t.equal(ver[3], Result.UNSUPP_VERSION);
  const opt = await ask(server, mapReq({ options: [{ code: 77, data: Buffer.alloc(0) }] }));
  t.equal(opt.result, Result.UNSUPP_OPTION);
  const optional = await ask(server, mapReq({ options: [{ code: 177, data: Buffer.alloc(3) }] }));
  t.equal(optional.result, Result.SUCCESS, 'an unknown optional option is ignored');
  t.same(optional.options, [], 'and not echoed');
  const mo = Buffer.concat([mapReq(), Buffer.from('01000010', 'hex'), Buffer.alloc(8)]);
  t.equal((await ask(server, mo)).result, Result.MALFORMED_OPTION, 'option longer than the message');
  const proto = await ask(server, mapReq({ protocol: 47 }));
  t.equal(proto.result, Result.UNSUPP_PROTOCOL);
  const allPorts = await ask(server, mapReq({ internalPort: 0 }));
  t.equal(allPorts.result, Result.NOT_AUTHORIZED, 'all ports: disabled by default');
  const allProto = await ask(server, mapReq({ protocol: 0, internalPort: 0 }));
  t.equal(allProto.result, Result.NOT_AUTHORIZED);
  t.same(await server.handle(Buffer.from([2]), C1), [], 'shorter than 2 bytes: silent');
  const resp = Buffer.from(mapReq());
  resp[1] |= 0x80;
  t.same(await server.handle(resp, C1), [], 'R bit: silent');
  // NAT-PMP public address request → NAT-PMP Unsupported Version
  const np = (await server.handle(Buffer.from([0, 0]), C1))[0]!;
  t.equal(np.toString('hex'), '00800001' + '00000000' + '00000000');
  t.equal(server.stats.results.get('NATPMP/UNSUPP_VERSION'), 1);
  const ann = await ask(server, encodePcpRequest({ opcode: Opcode.ANNOUNCE, lifetime: 0, clientAddress: C1.address }));
  t.equal(ann.result, Result.SUCCESS);
  t.equal(ann.lifetime, 0);
  t.equal(ann.opcode, Opcode.ANNOUNCE);
  const auth = await ask(
    server,
    encodePcpRequest({ opcode: Opcode.AUTHENTICATION, lifetime: 0, clientAddress: C1.address, opcodeData: Buffer.alloc(8) }),
  );
  t.equal(auth.result, Result.UNSUPP_OPCODE, 'AUTHENTICATION without RFC 7652 configured');
  const noExt = setup({ externalAddress: null });
  t.equal((await ask(noExt.server, mapReq())).result, Result.NETWORK_FAILURE, 'no external address yet');
});

t.test('IPv6 firewall pinholes: external == internal; all ports when allowed', async (t) => {
  const c6: PcpAddress = { address: '2001:db8::5', port: 40000 };
  const { server, fw } = setup({ allowAllPorts: true });
  const r = await ask(server, mapReq({ client: c6, internalPort: 8443, externalPort: 9999 }), c6);
  t.equal(r.result, Result.SUCCESS);
  t.equal(r.map!.externalAddress, '2001:db8::5');
  t.equal(r.map!.externalPort, 8443);
  const pf = await ask(server, mapReq({ client: c6, internalPort: 8444, externalPort: 9999, options: [preferFailureOption()] }), c6);
  t.equal(pf.result, Result.CANNOT_PROVIDE_EXTERNAL);
  const all = await ask(server, mapReq({ client: c6, protocol: 0, internalPort: 0 }), c6);
  t.equal(all.result, Result.SUCCESS);
  t.equal(all.map!.externalPort, 0);
  t.equal(fw.installs.at(-1)!.protocol, 0);
  const v4all = await ask(server, mapReq({ protocol: 0, internalPort: 0 }));
  t.equal(v4all.result, Result.NO_RESOURCES, 'not on the shared NAT44 address');
  // wildcard delete: protocol 0, port 0, lifetime 0 deletes this host's MAPs with the nonce
  const del = await ask(server, mapReq({ client: c6, protocol: 0, internalPort: 0, lifetime: 0 }), c6);
  t.equal(del.result, Result.SUCCESS);
  t.equal(server.mappings().length, 0);
});

t.test('limits: per-client quota, table size, rate', async (t) => {
  const { server } = setup({ maxMappingsPerClient: 2, maxMappings: 3 });
  t.equal((await ask(server, mapReq({ internalPort: 1 }))).result, 0);
  t.equal((await ask(server, mapReq({ internalPort: 2 }))).result, 0);
  const q = await ask(server, mapReq({ internalPort: 3 }));
  t.equal(q.result, Result.USER_EX_QUOTA);
  t.equal(q.lifetime, 30, 'short lifetime');
  t.equal((await ask(server, mapReq({ client: C2, internalPort: 1 }), C2)).result, 0);
  t.equal((await ask(server, mapReq({ client: C2, internalPort: 2 }), C2)).result, Result.NO_RESOURCES, 'table full');
  t.equal((await ask(server, mapReq({ internalPort: 1 }))).result, 0, 'refreshing is not a new mapping');
  const r = setup({ requestRatePerClient: 3 });
  const ann = encodePcpRequest({ opcode: Opcode.ANNOUNCE, lifetime: 0, clientAddress: C1.address });
  for (let i = 0; i < 3; i++) t.equal((await r.server.handle(ann, C1)).length, 1);
  t.same(await r.server.handle(ann, C1), [], 'over the rate: dropped');
  t.equal(r.server.stats.dropped.rate, 1);
  t.equal((await r.server.handle(ann, C2)).length, 1, 'another client is not affected');
  r.clock.advance(1000);
  t.equal((await r.server.handle(ann, C1)).length, 1, 'refilled');
  const many = setup({ maxClients: 5 });
  for (let i = 0; i < 50; i++) await many.server.handle(ann, { address: `10.0.0.${i}`, port: 1 });
  t.ok((many.server as unknown as { rate: { size: number } }).rate.size <= 5, 'rate table bounded');
});

t.test('backend: unavailable or failing → NO_RESOURCES, never SUCCESS', async (t) => {
  const { server, fw } = setup();
  fw.available = false;
  fw.reason = 'no nftables';
  const r = await ask(server, mapReq());
  t.equal(r.result, Result.NO_RESOURCES);
  t.equal(server.mappings().length, 0);
  fw.available = true;
  fw.failInstall = true;
  t.equal((await ask(server, mapReq())).result, Result.NO_RESOURCES);
  t.equal((await ask(server, peerReq())).result, Result.NO_RESOURCES);
  t.equal(server.mappings().length, 0, 'nothing left behind');
  fw.failInstall = false;
  const ok = await ask(server, mapReq({ externalPort: 6000, options: [preferFailureOption()] }));
  t.equal(ok.result, Result.SUCCESS, 'the port was released by the failed attempts');
});

t.test('PEER (§12.3): implicit mapping sharing the MAP external port; validation; delete', async (t) => {
  const { server, fw, events } = setup();
  const m = await ask(server, mapReq({ internalPort: 5000 }));
  const p = await ask(server, peerReq({ internalPort: 5000 }));
  t.equal(p.result, Result.SUCCESS);
  t.equal(p.peer!.externalPort, m.map!.externalPort, 'same external port as the MAP');
  t.equal(p.peer!.remoteAddress, '198.51.100.7');
  t.equal(p.peer!.remotePort, 3478);
  t.equal(p.lifetime, 600);
  const peer = fw.installs.at(-1)!;
  t.equal(peer.opcode, 'peer');
  t.same(peer.remote, { address: '198.51.100.7', port: 3478 });
  t.equal(events.events.at(-1)!.dest_ip, '198.51.100.7', 'EVE dest is the remote peer');
  t.equal((await ask(server, peerReq({ nonce: N2 }))).result, Result.NOT_AUTHORIZED);
  t.equal((await ask(server, peerReq({ remotePort: 0 }))).result, Result.MALFORMED_REQUEST);
  t.equal((await ask(server, peerReq({ protocol: 0 }))).result, Result.MALFORMED_REQUEST);
  t.equal((await ask(server, peerReq({ remoteAddress: '2001:db8::1' }))).result, Result.MALFORMED_REQUEST);
  const alone = await ask(server, peerReq({ internalPort: 6001, remotePort: 1 }));
  t.equal(alone.result, Result.SUCCESS);
  const d = await ask(server, peerReq({ lifetime: 0 }));
  t.equal(d.result, Result.SUCCESS);
  t.equal(d.lifetime, 0);
  t.equal(server.mappings().length, 2);
});

t.test('RFC 7652 auth hook: AUTHENTICATION routed, verify, required, sign', async (t) => {
  const seen: string[] = [];
  let sa: { sessionId: number; identity: string; groups: string[]; transportKey: Buffer; expiresAt: number } | null = null;
  let verdict: 'ok' | 'silent' | 'bad' = 'ok';
  const auth: PcpAuthHook = {
    async onAuthentication(client, raw) {
      seen.push(`auth ${client.address} ${raw.length}`);
      return [Buffer.from('reply')];
    },
    verify(_c, _raw, options) {
      seen.push(`verify ${options.map((o) => o.code).join(',')}`);
      if (verdict === 'silent') return { ok: false, result: Result.AUTHENTICATION_FAILED, silent: true };
      if (verdict === 'bad') return { ok: false, result: Result.AUTHENTICATION_FAILED, silent: false };
      return { ok: true, sa };
    },
    sign(_c, response) {
      return Buffer.concat([response, Buffer.from('05000000', 'hex')]);
    },
    required: () => true,
  };
  const { server, fw } = setup({ auth });
  const a = await server.handle(
    encodePcpRequest({ opcode: Opcode.AUTHENTICATION, lifetime: 0, clientAddress: C1.address, opcodeData: Buffer.alloc(8) }),
    C1,
  );
  t.same(a, [Buffer.from('reply')]);
  const req = await ask(server, mapReq({ options: [{ code: 5, data: Buffer.alloc(8) }] }));
  t.equal(req.result, Result.AUTHENTICATION_REQUIRED, 'no SA while required: AUTHENTICATION_REQUIRED (15)');
  t.equal(req.options.at(-1)!.code, 5, 'signed (the hook appended its tag)');
  t.ok(seen.includes('verify 5'), 'AUTHENTICATION_TAG (5) is passed to verify, not UNSUPP_OPTION');
  sa = { sessionId: 1, identity: 'alice', groups: ['staff'], transportKey: Buffer.alloc(32, 7), expiresAt: Infinity };
  const ok = await ask(server, mapReq({ options: [{ code: 5, data: Buffer.alloc(8) }] }));
  t.equal(ok.result, Result.SUCCESS);
  t.equal(fw.installs[0]!.user, 'alice');
  t.same(fw.installs[0]!.groups, ['staff']);
  verdict = 'silent';
  t.same(await server.handle(mapReq(), C1), [], 'a bad tag: discarded silently');
  verdict = 'bad';
  t.equal((await ask(server, mapReq())).result, Result.AUTHENTICATION_FAILED);
});

t.test('request extension: refusal, options appended, commit after, created/ended', async (t) => {
  const log: string[] = [];
  let refuse: number | undefined;
  const ext: PcpRequestExtension = {
    onRequest(ctx) {
      log.push(`request ${ctx.isNew} ${ctx.options.map((o) => o.code).join(',')}`);
      if (refuse !== undefined) return { result: refuse };
      return { options: [{ code: 200, data: Buffer.from('wkr') }], commit: (m) => log.push(`commit ${m.id}`) };
    },
    onMappingCreated: (m) => log.push(`created ${m.id}`),
    onMappingEnded: (m, why) => log.push(`ended ${m.id} ${why}`),
  };
  const { server, fw } = setup({ extension: ext });
  refuse = Result.NOT_AUTHORIZED;
  t.equal((await ask(server, mapReq())).result, Result.NOT_AUTHORIZED);
  t.equal(fw.installs.length, 0, 'refused before install');
  refuse = undefined;
  const r = await ask(server, mapReq({ options: [{ code: 201, data: Buffer.from('x') }] }));
  t.equal(r.result, Result.SUCCESS);
  t.same(r.options, [{ code: 200, data: Buffer.from('wkr') }], 'extension options appended; the unknown optional one not echoed');
  const id = server.mappings()[0]!.id;
  t.same(log.slice(1), ['request true 201', `created ${id}`, `commit ${id}`]);
  await server.deleteMapping(server.mappings()[0]!, 'blocked');
  t.equal(log.at(-1), `ended ${id} blocked`);
  t.equal(server.stats.mappings.blocked, 1);
  t.equal(server.mappings().length, 0);
  const bad: PcpRequestExtension = {
    onRequest() {
      throw new Error('bug');
    },
  };
  const s2 = setup({ extension: bad });
  t.equal((await ask(s2.server, mapReq())).result, Result.NO_RESOURCES, 'a throwing extension refuses, no crash');
  t.equal(s2.server.supervisor.total, 1);
});

t.test('over UDP: unsolicited MAP (§14.2), deleteMapping, ANNOUNCE, external address change, close', async (t) => {
  const fw = new FakeBackend();
  const server = new PcpServer({ externalAddress: EXT, firewall: fw, listen: ['udp://127.0.0.1:0'] });
  await server.start();
  const port = server.addresses()[0]!.port;
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  t.teardown(() => sock.close());
  const inbox: Buffer[] = [];
  const waiters: (() => void)[] = [];
  sock.on('message', (m) => {
    inbox.push(m);
    waiters.shift()?.();
  });
  const next = async (): Promise<PcpResponse> => {
    if (!inbox.length) await new Promise<void>((r) => waiters.push(r));
    const d = decodePcpResponse(inbox.shift()!);
    if (!d.ok) throw new Error(d.error.reason);
    return d.value;
  };
  sock.send(mapReq({ clientAddress: '127.0.0.1' }), port, '127.0.0.1');
  const created = await next();
  t.equal(created.result, Result.SUCCESS);
  const m = server.mappings()[0]!;
  t.equal(m.client.address, '127.0.0.1');
  server.sendUnsolicited(m, [{ code: 200, data: Buffer.from('keyreq') }]);
  const u = await next();
  t.equal(u.opcode, Opcode.MAP);
  t.ok(u.map!.nonce.equals(N1), 'the mapping nonce: the client matches it to its mapping');
  t.ok(u.lifetime > 3500 && u.lifetime <= 3600);
  t.same(u.options, [{ code: 200, data: Buffer.from('keyreq') }]);
  await server.setExternalAddress('203.0.113.99');
  const moved = await next();
  t.equal(moved.map!.externalAddress, '203.0.113.99');
  t.equal(moved.epoch, 0, 'epoch reset');
  t.equal(fw.updates.length, 1);
  const ann = await next();
  t.equal(ann.opcode, Opcode.ANNOUNCE);
  server.announce();
  t.equal((await next()).opcode, Opcode.ANNOUNCE);
  await server.deleteMapping(m, 'blocked');
  const gone = await next();
  t.equal(gone.lifetime, 0, 'told: lifetime 0');
  t.equal(fw.removes.length, 1);
  sock.send(mapReq({ clientAddress: '127.0.0.1', internalPort: 7000 }), port, '127.0.0.1');
  await next();
  await server.close();
  t.equal(fw.removes.length, 2, 'close removes the remaining mappings');
  t.equal(server.mappings().length, 0);
});

t.test('IPv6 listener: udp://[::1]:0 answers an IPv6 client with a pinhole', async (t) => {
  const fw = new FakeBackend();
  const server = new PcpServer({ externalAddress: EXT, firewall: fw, listen: ['udp://127.0.0.1:0', 'udp://[::1]:0'] });
  await server.start();
  t.teardown(() => server.close());
  const [v4, v6] = server.addresses();
  t.equal(v4!.address, '127.0.0.1');
  t.equal(v6!.address, '::1');
  const sock = createSocket({ type: 'udp6', ipv6Only: true });
  await new Promise<void>((r) => sock.bind(0, '::1', r));
  t.teardown(() => sock.close());
  const got = once(sock, 'message');
  sock.send(mapReq({ clientAddress: '::1', internalPort: 8080 }), v6!.port, '::1');
  const [msg] = (await got) as [Buffer];
  const d = decodePcpResponse(msg);
  t.ok(d.ok && d.value.result === Result.SUCCESS);
  if (d.ok) t.same([d.value.map!.externalAddress, d.value.map!.externalPort], ['::1', 8080], 'external == internal (firewall, §11)');
  t.equal(fw.installs[0]!.client.address, '::1');
  t.throws(() => new PcpServer({ firewall: fw, listen: ['tcp://1.2.3.4:5'] }), /udp:\/\//, 'not udp://: refused at construction');
});

t.test('a wildcard listener is one socket per address: answers come from the address asked (RFC 6887 §8.3)', async (t) => {
  const fw = new FakeBackend();
  const server = new PcpServer({ externalAddress: EXT, firewall: fw, listen: ['udp://0.0.0.0:0'] });
  await server.start();
  t.teardown(() => server.close());
  const addrs = server.addresses();
  t.ok(addrs.length >= 1, `bound ${addrs.map((a) => `${a.address}:${a.port}`).join(', ')}`);
  t.notOk(
    addrs.some((a) => a.address === '0.0.0.0'),
    'no socket on the wildcard itself',
  );
  const lo = addrs.find((a) => a.address === '127.0.0.1');
  t.ok(lo, 'loopback is one of them');
  if (!lo) return;
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  t.teardown(() => sock.close());
  const got = new Promise<{ address: string; port: number }>((r) => sock.once('message', (_m, rinfo) => r(rinfo)));
  sock.send(mapReq({ clientAddress: '127.0.0.1' }), lo.port, '127.0.0.1');
  const from = await got;
  t.same(
    { address: from.address, port: from.port },
    { address: '127.0.0.1', port: lo.port },
    'the answer comes from the address and port the request went to',
  );
});

t.test("the host's own ports are never assigned; protocols outside `protocols` get UNSUPP_PROTOCOL", async (t) => {
  const fw = new FakeBackend();
  const server = new PcpServer({
    externalAddress: EXT,
    firewall: fw,
    listen: [],
    reservedPorts: (proto, port) => proto === 17 && (port === 3478 || port === 5351),
    protocols: [17],
  });
  const ask = async (o: Parameters<typeof mapReq>[0]) => {
    const [a] = await server.handle(mapReq(o), { address: '192.0.2.10', port: 5350 });
    const d = decodePcpResponse(a!);
    if (!d.ok) throw new Error(d.error.reason);
    return d.value;
  };
  const r1 = await ask({ clientAddress: '192.0.2.10', internalPort: 3478, externalPort: 3478 });
  t.equal(r1.result, Result.SUCCESS);
  t.not(r1.map!.externalPort, 3478, 'the TURN port is not given away (another port assigned)');
  const r2 = await ask({ clientAddress: '192.0.2.10', internalPort: 6000, externalPort: 5351, options: [preferFailureOption()] });
  t.equal(r2.result, Result.CANNOT_PROVIDE_EXTERNAL, 'with PREFER_FAILURE: CANNOT_PROVIDE_EXTERNAL (§13.2)');
  const r3 = await ask({ clientAddress: '192.0.2.10', internalPort: 7000, protocol: 6 });
  t.equal(r3.result, Result.UNSUPP_PROTOCOL, 'TCP is refused where only UDP is carried');
  await server.close();
});
