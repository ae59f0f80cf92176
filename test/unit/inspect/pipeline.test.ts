import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { FlowPipeline, FlowTable, StaticKeyProvider, type FlowRecord } from '../../../src/inspect/pipeline.js';
import type { InspectEvent } from '../../../src/inspect/events.js';
import { toEve } from '../../../src/inspect/eve-format.js';
import { syntheticSession, SctpBuilder } from './pipeline-helpers.js';
import { assertNoSecrets, Secrets } from '../../e2e/helpers/secrets.js';

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const T0 = Date.UTC(2026, 10, 22, 10, 0, 0);

function run(clientIsA: boolean, keyed = true) {
  const s = syntheticSession();
  const events: InspectEvent[] = [];
  const p = new FlowPipeline({ keys: new StaticKeyProvider(keyed ? [s.keySet] : []) });
  p.on((e) => events.push(e));
  const dirOf = (fromClient: boolean) => (fromClient === clientIsA ? 'c2s' : 's2c');
  let time = T0;
  const feed = (fromClient: boolean, data: Buffer) => p.feed(data, dirOf(fromClient), (time += 10));
  for (const h of s.hello) feed(h.fromClient, h.data);
  return { s, p, events, feed };
}

t.test('DTLS 1.2 with key set: SCTP data channel, plain app data, SRTP both ways', async (t) => {
  for (const clientIsA of [true, false]) {
    const { s, p, events, feed } = run(clientIsA);
    const sctp = new SctpBuilder();
    const msg = Buffer.from('PROJECT-NIGHTINGALE: the eagle lands at noon');
    const bulk = randomBytes(150_000);
    feed(true, s.appData(true, sctp.init()));
    feed(true, s.appData(true, sctp.open(0, 'chat')));
    feed(true, s.appData(true, sctp.message(0, msg)));
    for (const frag of sctp.fragmented(0, bulk, 1100)) feed(true, s.appData(true, frag));
    const plain = Buffer.from('not sctp at all, just bytes');
    feed(false, s.appData(false, plain));
    for (let i = 0; i < 5; i++) {
      feed(true, s.srtp(true, 100 + i, Buffer.alloc(80, i)));
      feed(false, s.srtp(false, 7 + i, Buffer.alloc(60, i)));
    }
    const bad = s.srtp(true, 200, Buffer.alloc(80));
    bad[bad.length - 1]! ^= 1;
    feed(true, bad);
    feed(true, Buffer.from([0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, ...randomBytes(12)])); // STUN
    feed(true, Buffer.from([0xff, 1, 2, 3])); // RFC 7983: drop
    feed(true, Buffer.from([0x10, 1, 2, 3])); // ZRTP

    const types = events.map((e) => e.type);
    t.equal(p.dtlsClientIsA, clientIsA, 'client side from the ClientHello');
    t.equal(p.association, s.association);
    t.ok(types.includes('dtls.handshake'));
    const hs = events.find((e) => e.type === 'dtls.handshake');
    t.equal(hs?.type === 'dtls.handshake' && hs.srtpProfile, 1);
    const open = events.find((e) => e.type === 'datachannel.open');
    t.equal(open?.type === 'datachannel.open' && open.label, 'chat');
    const msgs = events.filter((e) => e.type === 'datachannel.message');
    t.same(
      msgs.map((e) => e.type === 'datachannel.message' && e.sha256),
      [sha(msg), sha(bulk)],
      'both messages, byte-exact',
    );
    t.ok(msgs.every((e) => e.dir === 'c2s' && e.association === s.association));
    const app = events.filter((e) => e.type === 'appdata');
    t.equal(app.length, 1);
    t.equal(app[0]!.type === 'appdata' && app[0]!.sha256, sha(plain));
    t.equal(app[0]!.dir, 's2c');
    const rtp = events.filter((e) => e.type === 'rtp.packet');
    t.equal(rtp.length, 10, 'every SRTP packet authenticated');
    t.same(new Set(rtp.map((e) => e.dir)), new Set(['c2s', 's2c']));
    t.equal(events.filter((e) => e.type === 'keys.verified' && e.what === 'srtp').length, 2);
    t.equal(p.counters.undecryptableSrtp, 1, 'tampered packet');
    t.equal(p.counters.stun, 1);
    t.equal(p.counters.dropped, 1);
    t.equal(p.counters.zrtp, 1);
    t.equal(p.counters.internalErrors, 0);
    t.equal(p.counters.appdata, 1);
    t.ok(p.counters.sctp >= 3);
  }
});

t.test('without keys: handshake seen, everything else reported undecryptable', async (t) => {
  const { s, p, events, feed } = run(true, false);
  feed(true, s.appData(true, Buffer.from('secret')));
  for (let i = 0; i < 3; i++) feed(true, s.srtp(true, i, Buffer.alloc(10)));
  p.close();
  t.ok(events.some((e) => e.type === 'dtls.handshake'));
  t.notOk(events.some((e) => e.type === 'appdata'));
  t.equal(p.counters.undecryptableSrtp, 3);
  t.ok(p.counters.undecryptableDtls >= 1);
  const u = events.filter((e) => e.type === 'undecryptable');
  t.equal(
    u.filter((e) => e.type === 'undecryptable' && e.what === 'srtp').reduce((n, e) => n + (e.type === 'undecryptable' ? e.count : 0), 0),
    3,
    'counts add up after close',
  );
});

t.test('a wrong key set is reported invalid, not used', async (t) => {
  const s = syntheticSession();
  const other = syntheticSession();
  const wrong = { ...other.keySet, clientRandom: s.keySet.clientRandom, serverRandom: s.keySet.serverRandom };
  const events: InspectEvent[] = [];
  const p = new FlowPipeline({ keys: new StaticKeyProvider([wrong]) }).on((e) => events.push(e));
  for (const h of s.hello) p.feed(h.data, h.fromClient ? 'c2s' : 's2c', T0);
  p.feed(s.appData(true, Buffer.from('x')), 'c2s', T0 + 1);
  t.ok(events.some((e) => e.type === 'keys.invalid'));
  t.notOk(events.some((e) => e.type === 'appdata'));
});

t.test('rtpPackets: false keeps streams, drops per-packet events', async (t) => {
  const s = syntheticSession();
  const events: InspectEvent[] = [];
  const p = new FlowPipeline({ keys: new StaticKeyProvider([s.keySet]), rtpPackets: false }).on((e) => events.push(e));
  for (const h of s.hello) p.feed(h.data, h.fromClient ? 'c2s' : 's2c', T0);
  for (let i = 0; i < 40; i++) p.feed(s.srtp(true, i, Buffer.from([0xfc, ...randomBytes(40)])), 'c2s', T0 + 20 * i);
  t.equal(events.filter((e) => e.type === 'rtp.packet').length, 0);
  t.equal(p.counters.rtp, 40);
  t.equal(p.counters.undecryptableSrtp, 0);
});

t.test('media and junk on a flow without DTLS are not reported', async (t) => {
  const events: InspectEvent[] = [];
  const p = new FlowPipeline({ keys: new StaticKeyProvider() }).on((e) => events.push(e));
  p.feed(Buffer.from([0x9a, 0x01, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]), 'c2s', T0); // DNS-like, RTP range
  p.feed(Buffer.from([0x17, 0x01, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]), 'c2s', T0); // DNS-like, DTLS range
  t.same(events, []);
  t.equal(p.counters.mediaWithoutDtls, 1);
  t.equal(p.counters.dropped, 1);
});

t.test('DNS queries whose id falls in the unified-header range are not DTLS, nor what follows', async (t) => {
  // Firefox's A/AAAA queries seen in a real capture (ids 0x3781, 0x9bbe; 0x2706, 0x3f03):
  // id, flags 0x0100, qdcount 1, then the question.
  const q = (id: number) =>
    Buffer.concat([
      Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]),
      Buffer.from('\x08incoming\x09telemetry\x07mozilla\x03org\x00\x00\x01\x00\x01', 'latin1'),
    ]);
  const events: InspectEvent[] = [];
  const p = new FlowPipeline({ keys: new StaticKeyProvider() }).on((e) => events.push(e));
  p.feed(q(0x3781), 'c2s', T0); // 001 1 0 1 11: C bit, a CID of unknown length
  p.feed(q(0x2706), 'c2s', T0); // 001 0 0 1 11: length 0x0100, past the datagram
  p.feed(q(0x2f03), 'c2s', T0); // 001 0 1 1 11: length 0, no record-number sample (RFC 9147 §4.2.3)
  p.feed(q(0x9bbe), 'c2s', T0); // RTP range, on a flow that never showed DTLS
  t.same(events, [], 'nothing reported');
  t.equal(p.counters.dtls, 0);
  t.equal(p.counters.dropped, 3);
  t.equal(p.counters.mediaWithoutDtls, 1);
  t.equal(p.counters.undecryptableSrtp, 0);
});

t.test('a unified-header record that cannot be delimited on a flow that has shown DTLS is still reported', async (t) => {
  const { p, events, feed } = run(true);
  feed(true, Buffer.concat([Buffer.from([0x3f, 0x12, 0x34]), randomBytes(40)])); // C bit
  const u = events.filter((e) => e.type === 'undecryptable');
  t.equal(u.length, 1);
  t.equal(u[0]!.type === 'undecryptable' && u[0]!.reason, 'connection_id');
  t.equal(p.counters.dropped, 0);
});

t.test('a well-formed unified-header record on a flow without a handshake is reported (no keys)', async (t) => {
  // A capture that starts mid-call: DTLS 1.3 records are undecryptable, and said so.
  const events: InspectEvent[] = [];
  const p = new FlowPipeline({ keys: new StaticKeyProvider() }).on((e) => events.push(e));
  p.feed(Buffer.concat([Buffer.from([0x2f, 0x12, 0x34, 0x00, 0x20]), randomBytes(32)]), 'c2s', T0);
  t.equal(p.counters.dtls, 1);
  t.equal(p.counters.undecryptableDtls, 1);
  t.ok(events.some((e) => e.type === 'undecryptable' && e.what === 'dtls' && e.reason === 'no_keys'));
});

t.test('EVE output: directions map to endpoints, no secrets, no raw bytes', async (t) => {
  const s = syntheticSession();
  const lines: string[] = [];
  const table = new FlowTable({
    makePipeline: () => new FlowPipeline({ keys: new StaticKeyProvider([s.keySet]) }),
    onEvent: (e, f: FlowRecord) => lines.push(JSON.stringify(toEve(e, f.meta))),
  });
  const C = ['10.0.0.1', 40000] as const;
  const S = ['10.0.0.2', 50000] as const;
  // The server speaks first (side A = server), the client then sends its ClientHello.
  table.feed('UDP', S[0], S[1], C[0], C[1], Buffer.from([0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, ...randomBytes(12)]), T0);
  for (const h of s.hello) {
    const [a, b] = h.fromClient ? [C, S] : [S, C];
    table.feed('UDP', a[0], a[1], b[0], b[1], h.data, T0 + 1);
  }
  const secret = Buffer.from('PROJECT-NIGHTINGALE');
  const sctp = new SctpBuilder();
  for (const pkt of [sctp.init(), sctp.open(1, 'files'), sctp.message(1, secret)])
    table.feed('UDP', C[0], C[1], S[0], S[1], s.appData(true, pkt), T0 + 2);
  table.feed('UDP', C[0], C[1], S[0], S[1], s.srtp(true, 1, Buffer.alloc(20, 7)), T0 + 3);
  t.equal(table.size, 1, 'both directions are one flow');
  const evs = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const m = evs.find((e) => e.event_type === 'datachannel.message')!;
  t.ok(m, 'message event');
  t.equal(m.src_ip, C[0], 'c2s message goes from the DTLS client');
  t.equal(m.src_port, C[1]);
  t.equal(m.dest_port, S[1]);
  t.equal(m.proto, 'UDP');
  t.equal(m.flow_id, 1);
  t.match(m.timestamp, /^2026-11-22T10:00:00\.\d{6}\+0000$/);
  t.same((m.datachannel as Record<string, unknown>).sha256, sha(secret));
  t.equal((m.gatehouse as Record<string, unknown>).association, s.association);
  const all = lines.join('\n');
  assertNoSecrets(t, new Secrets().keySet(s.keySet), { texts: { 'EVE output': all } }, 'no key material in output');
  t.notOk(all.includes(secret.toString('hex')), 'no raw bytes (hex)');
  t.notOk(all.includes(secret.toString('base64')), 'no raw bytes (base64)');
  t.notOk(all.includes('PROJECT-NIGHTINGALE'), 'no raw text');
  t.ok(evs.some((e) => e.event_type === 'rtp.packet'));
  t.notOk(all.includes('"payload"') || all.includes('"data"'));
});

t.test('FlowTable: cap, LRU eviction, idle expiry by packet time', async (t) => {
  const ended: string[] = [];
  const table = new FlowTable({
    makePipeline: () => new FlowPipeline({ keys: new StaticKeyProvider() }),
    onEvent: () => {},
    onFlowEnd: (f, why) => ended.push(`${f.meta.a.port}:${why}`),
    maxFlows: 3,
    idleMs: 60_000,
  });
  const stun = Buffer.from([0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, ...randomBytes(12)]);
  for (let i = 0; i < 3; i++) table.feed('UDP', '10.0.0.1', 1000 + i, '10.0.0.2', 2000, stun, T0);
  table.feed('UDP', '10.0.0.2', 2000, '10.0.0.1', 1000, stun, T0 + 1); // refresh flow 1000 (reverse direction)
  table.feed('UDP', '10.0.0.1', 1003, '10.0.0.2', 2000, stun, T0 + 2); // evicts the least recent: 1001
  t.equal(table.size, 3);
  t.same(ended, ['1001:evicted']);
  t.equal(table.stats.evicted, 1);
  table.feed('UDP', '10.0.0.1', 1003, '10.0.0.2', 2000, stun, T0 + 120_000);
  t.equal(table.size, 1, 'idle flows expired; the active one starts anew');
  t.equal(table.stats.expired, 3);
  t.equal(table.stats.created, 5);
  table.closeAll();
  t.equal(table.size, 0);
  t.ok(ended.includes('1003:closed'));
});

t.test('keys added after the fact (escrow): backlog decrypted once they verify', async (t) => {
  const s = syntheticSession();
  const events: InspectEvent[] = [];
  const p = new FlowPipeline({ keys: new StaticKeyProvider() }).on((e) => events.push(e));
  for (const h of s.hello) p.feed(h.data, h.fromClient ? 'c2s' : 's2c', T0);
  p.feed(s.appData(true, Buffer.from('held until keys')), 'c2s', T0 + 1);
  t.notOk(events.some((e) => e.type === 'appdata'));
  const st = p.addKeySet(s.keySet, T0 + 2);
  t.equal(st, 'verified');
  const app = events.find((e) => e.type === 'appdata');
  t.equal(app?.type === 'appdata' && app.sha256, sha('held until keys'));
});
