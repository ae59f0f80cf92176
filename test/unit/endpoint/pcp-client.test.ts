// The endpoint PCP client (src/endpoint/pcp-client.ts) against a scripted server: request
// bytes (RFC 6887 §11.1 / §12.1), §8.1.1 retransmission timers, §11.2.1 renewal schedule,
// §8.5 epoch handling, §15 delete, and key escrow over PCP (key-escrow.md §4): WRITE_KEYS
// opened with the gateway side's openWriteKeys, KEY_DECLINE after consent = false, and
// forged WRITE_KEYS_REQUESTs answered with nothing.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { ManualClock } from '../../../src/util/clock.js';
import {
  EpochTracker,
  MAX_WRITE_KEYS_PER_REQUEST,
  PcpClient,
  parsePcpServer,
  type PcpClientAuth,
  type PcpConsentRequest,
  type PcpEscrowAssociation,
} from '../../../src/endpoint/pcp-client.js';
import { GatewayTrust } from '../../../src/endpoint/trust.js';
import { OptionCode, Opcode, Result, decodeFilter, decodePcpRequest, encodePcpResponse, type PcpRequest } from '../../../src/wire/pcp.js';
import {
  PCP_OPT_KEY_DECLINE,
  PCP_OPT_WRITE_KEYS,
  PCP_OPT_WRITE_KEYS_REQUEST,
  KR_FLAG_DATA,
  KR_FLAG_REQUIRED,
  decodeKeyDecline,
  encodeKeyRequest,
  openWriteKeys,
  pcpWriteKeysKey,
} from '../../../src/wire/escrow.js';
import { decodeKeySet, encodeKeySet, type KeySet } from '../../../src/wire/keyset.js';
import { makeGateway, type TestGateway } from './helpers.js';

const SERVER = '10.0.1.1';
const CLIENT = '10.0.1.20';
const FROM = { address: SERVER, port: 5351 };

interface Rig {
  clock: ManualClock;
  sent: Buffer[];
  client: PcpClient;
  last(): PcpRequest;
  reqs(): PcpRequest[];
}

function rig(o: Partial<ConstructorParameters<typeof PcpClient>[0]> = {}): Rig {
  const clock = new ManualClock();
  const sent: Buffer[] = [];
  const client = new PcpClient({
    server: SERVER,
    clientAddress: CLIENT,
    clock,
    random: () => 0.5, // RAND = 0 (§8.1.1), jitter at mid-range (§11.2.1)
    transport: { send: (d) => sent.push(Buffer.from(d)), close: () => undefined },
    ...o,
  });
  const dec = (b: Buffer): PcpRequest => {
    const d = decodePcpRequest(b, { knownOptions: [PCP_OPT_WRITE_KEYS, PCP_OPT_KEY_DECLINE] });
    if (!d.ok) throw new Error(d.error.reason);
    return d.value;
  };
  return { clock, sent, client, last: () => dec(sent[sent.length - 1]!), reqs: () => sent.map(dec) };
}

function answer(
  req: PcpRequest,
  o: { result?: number; lifetime?: number; epoch?: number; externalPort?: number; options?: { code: number; data: Buffer }[] } = {},
): Buffer {
  const body = req.map ?? req.peer!;
  const ext = { ...body, externalPort: o.externalPort ?? (body.externalPort || 61000), externalAddress: '192.0.2.7' };
  return encodePcpResponse({
    opcode: req.opcode,
    result: o.result ?? Result.SUCCESS,
    lifetime: o.lifetime ?? req.lifetime,
    epoch: o.epoch ?? 1000,
    ...(req.opcode === Opcode.MAP
      ? { map: ext }
      : { peer: { ...ext, remotePort: req.peer!.remotePort, remoteAddress: req.peer!.remoteAddress } }),
    options: o.options ?? [],
  });
}

const flush = async (): Promise<void> => {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
};

t.test('MAP and PEER request bytes (RFC 6887 §11.1, §12.1, §13.3)', async (t) => {
  const r = rig();
  const m = r.client.map({
    protocol: 17,
    internalPort: 50000,
    lifetime: 600,
    suggestedExternalPort: 50001,
    filters: [{ prefixLength: 128, port: 3478, address: '198.51.100.9' }],
  });
  t.equal(r.sent.length, 1, 'sent at once');
  const q = r.last();
  t.equal(q.opcode, Opcode.MAP);
  t.equal(q.lifetime, 600);
  t.equal(q.clientAddress, CLIENT, 'PCP client IP address in the header (§7.1)');
  t.equal(q.map!.nonce.length, 12);
  t.ok(q.map!.nonce.equals(m.nonce));
  t.equal(q.map!.protocol, 17);
  t.equal(q.map!.internalPort, 50000);
  t.equal(q.map!.externalPort, 50001, 'suggested external port');
  t.equal(q.map!.externalAddress, '0.0.0.0', 'no suggested address: all zeros (IPv4-mapped)');
  const f = q.options.find((o) => o.code === OptionCode.FILTER);
  t.ok(f, 'FILTER option');
  const fd = decodeFilter(f!);
  t.ok(fd.ok && fd.value.address === '198.51.100.9' && fd.value.port === 3478);

  const p = r.client.peer({ protocol: 17, internalPort: 50000, lifetime: 120, remoteAddress: '203.0.113.5', remotePort: 9000 });
  const pq = r.last();
  t.equal(pq.opcode, Opcode.PEER);
  t.equal(pq.peer!.remoteAddress, '203.0.113.5');
  t.equal(pq.peer!.remotePort, 9000);
  t.ok(pq.peer!.nonce.equals(p.nonce));
  t.notOk(p.nonce.equals(m.nonce), 'a fresh nonce per mapping (§11.1)');
  t.notOk(
    pq.options.some((o) => o.code === OptionCode.FILTER),
    'no FILTER in PEER',
  );

  r.client.receive(answer(pq), FROM);
  const info = await p.ready;
  t.same(info, { externalAddress: '192.0.2.7', externalPort: 61000, lifetime: 120, epoch: 1000 });
});

t.test('retransmission: IRT 3 s, doubling, MRT 1024 s (RFC 6887 §8.1.1); a response stops it', async (t) => {
  const r = rig();
  const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  const times: number[] = [];
  const start = r.clock.now();
  let n = r.sent.length;
  for (let i = 0; i < 4_000; i++) {
    r.clock.advance(1000);
    if (r.sent.length !== n) {
      times.push(r.clock.now() - start);
      n = r.sent.length;
    }
  }
  t.same(times.slice(0, 6), [3000, 9000, 21000, 45000, 93000, 189000], 'RT = 3, 6, 12, 24, 48, 96 s');
  const gaps = times.slice(1).map((x, i) => x - times[i]!);
  t.equal(Math.max(...gaps), 1_024_000, 'capped at MRT');
  t.ok(
    r.reqs().every((q) => q.map!.nonce.equals(m.nonce)),
    'same nonce in every retransmission',
  );
  r.client.receive(answer(r.last()), FROM);
  await m.ready;
  const after = r.sent.length;
  r.clock.advance(200_000);
  t.equal(r.sent.length, after, 'no more retransmissions once answered (renewal is at 300 s)');

  // RAND: (1 + RAND) × IRT with RAND in [-0.1, +0.1].
  const lo = rig({ random: () => 0 });
  lo.client.map({ protocol: 6, internalPort: 1, lifetime: 60 });
  lo.clock.advance(2699);
  t.equal(lo.sent.length, 1);
  lo.clock.advance(1);
  t.equal(lo.sent.length, 2, 'RAND = -0.1: first retransmission at 2.7 s');
});

t.test('responses from elsewhere, unmatched or failing AUTH are dropped (§8.3, RFC 7652 §5.4)', async (t) => {
  let verifyOk = false;
  const auth: PcpClientAuth = { tag: (b) => b, verify: () => verifyOk, transportKey: randomBytes(32) };
  const r = rig({ auth });
  const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  const good = answer(r.last());
  r.client.receive(good, { address: SERVER, port: 5350 });
  r.client.receive(good, { address: '10.0.1.2', port: 5351 });
  r.client.receive(good, FROM); // auth fails
  const other = r.last();
  other.map!.nonce = randomBytes(12);
  verifyOk = true;
  r.client.receive(answer(other), FROM);
  await flush();
  t.equal(m.state, 'pending');
  t.same(Object.fromEntries(r.client.dropped), { source: 2, auth: 1, unmatched: 1 });
  r.client.receive(good, FROM);
  await m.ready;
  t.equal(m.state, 'active');
});

t.test('error responses reject the mapping with the result code', async (t) => {
  const r = rig();
  const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  r.client.receive(answer(r.last(), { result: Result.NOT_AUTHORIZED, lifetime: 30 }), FROM);
  const err = await m.ready.then(
    () => null,
    (e: { result?: number }) => e,
  );
  t.equal(err?.result, Result.NOT_AUTHORIZED, 'rejected with NOT_AUTHORIZED');
  t.equal(m.state, 'failed');
  t.equal(r.client.mappings.size, 0);
  const n = r.sent.length;
  r.clock.advance(60_000);
  t.equal(r.sent.length, n, 'no retransmission after an error');
});

t.test('renewal schedule (RFC 6887 §11.2.1): 1/2..5/8, then 3/4.., 7/8.., ≥ 4 s apart, then expiry', async (t) => {
  const r = rig({ random: () => 0 });
  const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 100 });
  const t0 = r.clock.now();
  r.client.receive(answer(r.last(), { lifetime: 100 }), FROM);
  await m.ready;
  const at: number[] = [];
  let n = r.sent.length;
  let expired = false;
  m.on('expired', () => (expired = true));
  for (let i = 0; i < 2000 && !expired; i++) {
    r.clock.advance(100);
    if (r.sent.length !== n) {
      at.push(r.clock.now() - t0);
      n = r.sent.length;
    }
  }
  t.same(at, [50_000, 75_000, 87_500, 93_800, 97_800], 'renewals at 1/2, 3/4, 7/8, then 4 s apart');
  t.ok(
    r
      .reqs()
      .slice(1)
      .every((q) => q.map!.nonce.equals(m.nonce) && q.map!.externalPort === 61000),
    'renewals suggest the assigned port, same nonce',
  );
  t.ok(expired, 'expired at the end of the lifetime');
  t.equal(m.state, 'failed');

  // Upper end of the jitter and a SUCCESS that restarts the schedule.
  const h = rig({ random: () => 0.999999 });
  const hm = h.client.map({ protocol: 17, internalPort: 50000, lifetime: 80 });
  h.client.receive(answer(h.last(), { lifetime: 80 }), FROM);
  await hm.ready;
  h.clock.advance(49_999);
  t.equal(h.sent.length, 1, 'not before 5/8 × 80 s');
  h.clock.advance(1);
  t.equal(h.sent.length, 2, 'renewal at 5/8 of the lifetime');
  let refreshed = 0;
  hm.on('refreshed', () => refreshed++);
  h.client.receive(answer(h.last(), { lifetime: 80, epoch: 1050 }), FROM);
  t.equal(refreshed, 1);
  h.clock.advance(49_999);
  t.equal(h.sent.length, 2);
  h.clock.advance(1);
  t.equal(h.sent.length, 3, 'the next renewal counts from the new grant');
});

t.test('Epoch Time (RFC 6887 §8.5): validation rules', async (t) => {
  const e = new EpochTracker();
  const s = 1_000_000_000;
  t.ok(e.check(500, s), 'first response valid');
  t.ok(e.check(510, s + 10_000), 'in step');
  t.ok(e.check(509, s + 10_000), 'back by one second: valid (reordering)');
  t.notOk(e.check(507, s + 10_000), 'back by more than one second: lost state');
  const f = new EpochTracker();
  f.check(100, s);
  t.notOk(f.check(110, s + 100_000), 'server advanced 10 s while the client advanced 100 s');
  const g = new EpochTracker();
  g.check(100, s);
  t.ok(g.check(200, s + 96_000), 'within 1/16 + 2 s');
  t.notOk(g.check(400, s + 96_000 + 20_000), 'server ran ahead');
});

t.test('an epoch jump re-creates every mapping (RFC 6887 §8.5)', async (t) => {
  const r = rig();
  const a = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  r.client.receive(answer(r.last(), { epoch: 5000 }), FROM);
  const b = r.client.map({ protocol: 17, internalPort: 50002, lifetime: 600 });
  r.clock.advance(1000);
  r.client.receive(answer(r.last(), { epoch: 5001 }), FROM);
  await Promise.all([a.ready, b.ready]);
  let resets = 0;
  r.client.on('epochReset', () => resets++);
  const n = r.sent.length;
  r.clock.advance(1000);
  // An unsolicited ANNOUNCE (§14.1) from a restarted server: epoch 3.
  r.client.receive(encodePcpResponse({ opcode: Opcode.ANNOUNCE, result: Result.SUCCESS, lifetime: 0, epoch: 3 }), FROM);
  t.equal(resets, 1, 'lost state detected');
  const again = r.reqs().slice(n);
  t.equal(again.length, 2, 'one new MAP per mapping');
  t.same(again.map((q) => q.map!.internalPort).sort(), [50000, 50002]);
  t.ok(again.find((q) => q.map!.internalPort === 50000)!.map!.nonce.equals(a.nonce), 'same nonce');
  t.equal(again[0]!.map!.externalPort, 61000, 'suggests the previous external port');
  // The re-created mapping moved: 'changed'.
  let changed = 0;
  a.on('changed', () => changed++);
  r.client.receive(
    answer(
      again.find((q) => q.map!.internalPort === 50000)!,
      { epoch: 4, externalPort: 62000 },
    ),
    FROM,
  );
  t.equal(changed, 1);
  t.equal(a.info!.externalPort, 62000);
  const m = r.sent.length;
  r.clock.advance(22_000);
  t.equal(r.sent.length, m + 3, 'b is still being re-created (retransmitted at 3, 9, 21 s after the jump), a is not');
});

t.test('delete: lifetime 0 with the same nonce (RFC 6887 §15)', async (t) => {
  const r = rig();
  const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  r.client.receive(answer(r.last()), FROM);
  await m.ready;
  const p = m.delete();
  const q = r.last();
  t.equal(q.lifetime, 0);
  t.ok(q.map!.nonce.equals(m.nonce));
  t.equal(q.map!.externalPort, 61000);
  r.client.receive(answer(q, { lifetime: 0 }), FROM);
  await p;
  t.equal(m.state, 'deleted');
  t.equal(m.deleteResult, Result.SUCCESS);
  t.equal(r.client.mappings.size, 0);
  const n = r.sent.length;
  r.clock.advance(1_000_000);
  t.equal(r.sent.length, n, 'no renewals after delete');

  // An unanswered delete gives up after deleteTimeoutMs.
  const s = rig({ deleteTimeoutMs: 10_000 });
  const sm = s.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  s.client.receive(answer(s.last()), FROM);
  await sm.ready;
  const sp = sm.delete();
  s.clock.advance(10_000);
  await sp;
  t.equal(sm.deleteResult, null, 'given up without an answer');
  t.equal(s.sent.length, 4, 'MAP, delete, retransmissions at 3 s and 9 s');
});

t.test('bounds', async (t) => {
  const r = rig({ maxMappings: 2 });
  r.client.map({ protocol: 17, internalPort: 1, lifetime: 60 });
  r.client.map({ protocol: 17, internalPort: 2, lifetime: 60 });
  t.throws(() => r.client.map({ protocol: 17, internalPort: 3, lifetime: 60 }), /too many/);
  t.same(parsePcpServer('10.0.1.1'), { server: '10.0.1.1', port: 5351 });
  t.same(parsePcpServer('10.0.1.1:15351'), { server: '10.0.1.1', port: 15351 });
  t.same(parsePcpServer('[fd00::1]:5351'), { server: 'fd00::1', port: 5351 });
  t.same(parsePcpServer('fd00::1'), { server: 'fd00::1', port: 5351 });
  t.throws(() => parsePcpServer('10.0.1.1:99999'));
});

// ---------------------------------------------------------------- escrow

function keySet(n: number): KeySet {
  return {
    clientRandom: Buffer.alloc(32, n),
    serverRandom: Buffer.alloc(32, n + 100),
    cipherSuite: 0xc02b,
    epoch: 1,
    clientWriteKey: Buffer.alloc(16, 0x11 + n),
    serverWriteKey: Buffer.alloc(16, 0x22 + n),
    clientWriteIv: Buffer.alloc(4, 0x33),
    serverWriteIv: Buffer.alloc(4, 0x44),
  };
}

interface EscrowRig extends Rig {
  gw: TestGateway;
  transportKey: Buffer;
  consents: PcpConsentRequest[];
  assocs: PcpEscrowAssociation[];
  untrusted: string[];
}

async function escrowRig(consent: boolean, withAuth = true): Promise<EscrowRig> {
  const gw = await makeGateway();
  const trust = new GatewayTrust({ pinnedFingerprints: [gw.fingerprint.toString('hex')] });
  const transportKey = randomBytes(32);
  const consents: PcpConsentRequest[] = [];
  const assocs: PcpEscrowAssociation[] = [];
  const r = rig({
    ...(withAuth ? { auth: { tag: (b: Buffer) => b, verify: () => true, transportKey } } : {}),
    escrow: {
      gateway: async () => trust.evaluate(gw.certPem),
      consent: async (c) => {
        consents.push(c);
        return consent;
      },
      associations: () => assocs,
      declineReason: 'not on this call',
    },
  });
  const untrusted: string[] = [];
  r.client.on('untrusted', (u: { reason: string }) => untrusted.push(u.reason));
  return { ...r, gw, transportKey, consents, assocs, untrusted };
}

function assoc(n: number): PcpEscrowAssociation {
  return { id: `a${n}`, keySet: () => encodeKeySet(keySet(n)) };
}

t.test('WRITE_KEYS_REQUEST → consent → WRITE_KEYS sealed under HKDF(transport key, nonce), AAD nonce (key-escrow.md §4)', async (t) => {
  const r = await escrowRig(true);
  r.assocs.push(assoc(1));
  const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  const nonce = r.last().map!.nonce;
  const kr = encodeKeyRequest(
    'pcp',
    nonce,
    { deadline: 5, flags: KR_FLAG_DATA | KR_FLAG_REQUIRED, fingerprint: r.gw.fingerprint },
    r.gw.privateKey,
  );
  r.client.receive(answer(r.last(), { options: [{ code: PCP_OPT_WRITE_KEYS_REQUEST, data: kr }] }), FROM);
  await m.ready;
  await flush();
  t.equal(r.consents.length, 1, 'consent asked');
  t.same(r.consents[0]!.wants, { media: false, data: true, required: true });
  t.equal(r.consents[0]!.mapping.external, '192.0.2.7:61000');
  t.equal(r.consents[0]!.gateway.fingerprint, r.gw.fingerprint.toString('hex'));
  const q = r.last();
  t.equal(r.sent.length, 2, 'a renewal carrying the keys');
  t.ok(q.map!.nonce.equals(nonce), 'on the same mapping');
  t.equal(q.lifetime, 600);
  const wk = q.options.filter((o) => o.code === PCP_OPT_WRITE_KEYS);
  t.equal(wk.length, 1);
  // The gateway side: src/wire/escrow.ts openWriteKeys, as src/gateway/pcp-escrow.ts does.
  const opened = openWriteKeys(pcpWriteKeysKey(r.transportKey, nonce), nonce, wk[0]!.data);
  t.ok(opened.ok, 'opens under HKDF(transport key, nonce) with AAD = nonce');
  if (opened.ok) t.same(decodeKeySet(opened.keySet), keySet(1), 'the association key set');
  const wrongAad = openWriteKeys(pcpWriteKeysKey(r.transportKey, nonce), randomBytes(12), wk[0]!.data);
  t.notOk(wrongAad.ok, 'AAD is the nonce');
  t.notOk(openWriteKeys(pcpWriteKeysKey(randomBytes(32), nonce), nonce, wk[0]!.data).ok, 'needs the transport key');

  // The gateway answers (with a WRITE_KEYS_REQUEST again); the same association is not resent.
  r.client.receive(answer(q, { options: [{ code: PCP_OPT_WRITE_KEYS_REQUEST, data: kr }] }), FROM);
  await flush();
  t.equal(r.sent.length, 2, 'nothing new to send');
  t.equal(r.client.records.at(-1)!.result, Result.SUCCESS);
  t.equal(r.consents.length, 1, 'consent asked once per gateway and mapping');

  // New associations (a new handshake): only they are sent, at most 3 per request.
  for (const n of [2, 3, 4, 5]) r.assocs.push(assoc(n));
  r.client.associationsChanged();
  const q2 = r.last();
  t.equal(r.sent.length, 3);
  const wk2 = q2.options.filter((o) => o.code === PCP_OPT_WRITE_KEYS);
  t.equal(wk2.length, MAX_WRITE_KEYS_PER_REQUEST);
  const key = pcpWriteKeysKey(r.transportKey, nonce);
  const rands = wk2.map((o) => {
    const x = openWriteKeys(key, nonce, o.data);
    return x.ok ? decodeKeySet(x.keySet).clientRandom[0] : -1;
  });
  t.same(rands, [2, 3, 4]);
  r.client.receive(answer(q2), FROM);
  await flush();
  t.equal(r.sent.length, 4, 'the rest follows the answer');
  const wk3 = r.last().options.filter((o) => o.code === PCP_OPT_WRITE_KEYS);
  t.equal(wk3.length, 1);
  const x = openWriteKeys(key, nonce, wk3[0]!.data);
  t.ok(x.ok && decodeKeySet(x.keySet).clientRandom[0] === 5);
});

t.test('consent = false → KEY_DECLINE, no keys (key-escrow.md §2.3 / §4)', async (t) => {
  const r = await escrowRig(false);
  r.assocs.push(assoc(1));
  const m = r.client.peer({ protocol: 17, internalPort: 50000, lifetime: 300, remoteAddress: '203.0.113.5', remotePort: 9000 });
  const nonce = r.last().peer!.nonce;
  const kr = encodeKeyRequest('pcp', nonce, { deadline: 5, flags: KR_FLAG_DATA, fingerprint: r.gw.fingerprint }, r.gw.privateKey);
  r.client.receive(answer(r.last(), { options: [{ code: PCP_OPT_WRITE_KEYS_REQUEST, data: kr }] }), FROM);
  await m.ready;
  await flush();
  t.equal(r.consents.length, 1);
  t.equal(r.consents[0]!.mapping.remote, '203.0.113.5:9000');
  const q = r.last();
  t.equal(q.opcode, Opcode.PEER);
  t.notOk(
    q.options.some((o) => o.code === PCP_OPT_WRITE_KEYS),
    'no WRITE_KEYS',
  );
  const d = q.options.find((o) => o.code === PCP_OPT_KEY_DECLINE);
  t.ok(d, 'KEY_DECLINE');
  t.equal(decodeKeyDecline(d!.data), 'not on this call');
  r.client.receive(answer(q, { options: [{ code: PCP_OPT_WRITE_KEYS_REQUEST, data: kr }] }), FROM);
  await flush();
  r.client.associationsChanged();
  t.equal(r.sent.length, 2, 'declined once, never keys afterwards');
});

t.test('forged or untrusted WRITE_KEYS_REQUEST, or no SA: answered with nothing', async (t) => {
  const other = await makeGateway('mallory');
  const cases: [string, (r: EscrowRig, nonce: Buffer) => Buffer, RegExp][] = [
    [
      'signature by another key',
      (r, n) => encodeKeyRequest('pcp', n, { deadline: 5, flags: KR_FLAG_DATA, fingerprint: r.gw.fingerprint }, other.privateKey),
      /signature/,
    ],
    [
      'names an untrusted certificate',
      (_r, n) => encodeKeyRequest('pcp', n, { deadline: 5, flags: KR_FLAG_DATA, fingerprint: other.fingerprint }, other.privateKey),
      /another certificate/,
    ],
    [
      'signed over another nonce',
      (r) => encodeKeyRequest('pcp', randomBytes(12), { deadline: 5, flags: KR_FLAG_DATA, fingerprint: r.gw.fingerprint }, r.gw.privateKey),
      /signature/,
    ],
    [
      'a TURN-labelled signature',
      (r, n) => encodeKeyRequest('turn', n, { deadline: 5, flags: KR_FLAG_DATA, fingerprint: r.gw.fingerprint }, r.gw.privateKey),
      /signature/,
    ],
    ['truncated', () => Buffer.alloc(60), /malformed/],
  ];
  for (const [name, make, why] of cases) {
    const r = await escrowRig(true);
    r.assocs.push(assoc(1));
    const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
    const nonce = r.last().map!.nonce;
    r.client.receive(answer(r.last(), { options: [{ code: PCP_OPT_WRITE_KEYS_REQUEST, data: make(r, nonce) }] }), FROM);
    await m.ready;
    await flush();
    t.equal(r.sent.length, 1, `${name}: nothing sent`);
    t.equal(r.consents.length, 0, `${name}: no consent asked`);
    t.match(r.untrusted.join(), why, `${name}: reported`);
  }
  const r = await escrowRig(true, false);
  r.assocs.push(assoc(1));
  const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  const nonce = r.last().map!.nonce;
  const kr = encodeKeyRequest('pcp', nonce, { deadline: 5, flags: KR_FLAG_DATA, fingerprint: r.gw.fingerprint }, r.gw.privateKey);
  r.client.receive(answer(r.last(), { options: [{ code: PCP_OPT_WRITE_KEYS_REQUEST, data: kr }] }), FROM);
  await m.ready;
  await flush();
  t.equal(r.sent.length, 1, 'no SA: nothing escrowed (§4)');
  t.match(r.untrusted.join(), /security association/);
});

t.test('unsolicited response with WRITE_KEYS_REQUEST (RFC 6887 §14.2) is answered', async (t) => {
  const r = await escrowRig(true);
  r.assocs.push(assoc(7));
  const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  const req = r.last();
  r.client.receive(answer(req), FROM);
  await m.ready;
  r.clock.advance(10_000);
  const kr = encodeKeyRequest('pcp', m.nonce, { deadline: 5, flags: KR_FLAG_DATA, fingerprint: r.gw.fingerprint }, r.gw.privateKey);
  let solicitedFlag: boolean | null = null;
  m.on('refreshed', (_i, s: boolean) => (solicitedFlag = s));
  r.client.receive(answer(req, { lifetime: 590, epoch: 1010, options: [{ code: PCP_OPT_WRITE_KEYS_REQUEST, data: kr }] }), FROM);
  await flush();
  t.equal(solicitedFlag, false, 'taken as unsolicited');
  t.equal(r.sent.length, 2);
  const wk = r.last().options.find((o) => o.code === PCP_OPT_WRITE_KEYS);
  t.ok(wk && openWriteKeys(pcpWriteKeysKey(r.transportKey, m.nonce), m.nonce, wk.data).ok, 'WRITE_KEYS answers it');
});

t.test('a throwing consent callback is a no, and does not crash', async (t) => {
  const gw = await makeGateway();
  const trust = new GatewayTrust({ pinnedFingerprints: [gw.fingerprint.toString('hex')] });
  const r = rig({
    auth: { tag: (b) => b, verify: () => true, transportKey: randomBytes(32) },
    escrow: {
      gateway: async () => trust.evaluate(gw.certPem),
      consent: () => {
        throw new Error('boom');
      },
      associations: () => [assoc(1)],
    },
  });
  const m = r.client.map({ protocol: 17, internalPort: 50000, lifetime: 600 });
  const kr = encodeKeyRequest('pcp', m.nonce, { deadline: 5, flags: KR_FLAG_DATA, fingerprint: gw.fingerprint }, gw.privateKey);
  r.client.receive(answer(r.last(), { options: [{ code: PCP_OPT_WRITE_KEYS_REQUEST, data: kr }] }), FROM);
  await flush();
  t.ok(
    r.last().options.some((o) => o.code === PCP_OPT_KEY_DECLINE),
    'declined',
  );
});
