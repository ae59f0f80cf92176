import t from 'tap';
import { randomBytes } from 'node:crypto';
import { DtlsSession } from '../../../src/inspect/dtls-session.js';
import { KeyLog, keySetFromKeyLog } from '../../../src/inspect/keylog.js';
import type { KeySet } from '../../../src/wire/keyset.js';
import { parseClientHello, parseServerHello, parseRecords, readHandshakeHeader, CT_HANDSHAKE } from '../../../src/wire/dtls.js';
import { DtlsRecordEncryptor } from '../../../src/wire/dtls-crypto.js';
import { splitSrtpKeyingMaterial } from '../../../src/wire/tls-prf.js';
import type { InspectEvent } from '../../../src/inspect/events.js';
import { datagrams, harness, loadFixture } from './dtls-session-helpers.js';
import { assertNoSecrets, Secrets } from '../../e2e/helpers/secrets.js';

const SUITES: Record<string, number> = {
  'gcm128-srtp-reneg.json': 0xc02b,
  'cbc-sha-etm.json': 0xc013,
  'psk-cbc-sha256-mte.json': 0x00ae,
  'chacha20.json': 0xcca9,
};

const ofType = <T extends InspectEvent['type']>(evs: InspectEvent[], type: T): Extract<InspectEvent, { type: T }>[] =>
  evs.filter((e) => e.type === type) as Extract<InspectEvent, { type: T }>[];

/** Key set of the first association of a fixture, derived from its key log and hellos. */
function firstKeySet(name: string): KeySet {
  const fx = loadFixture(name);
  const dg = datagrams(fx);
  let ch, sh;
  for (const d of dg) {
    for (const r of parseRecords(d.data)) {
      if (r.type !== CT_HANDSHAKE || r.epoch !== 0) continue;
      const h = { msgType: 0, length: 0, messageSeq: 0, fragmentOffset: 0, fragmentLength: 0 };
      const body = readHandshakeHeader(r.fragment, 0, h);
      if (body < 0 || h.fragmentLength !== h.length) continue;
      if (h.msgType === 1) ch = parseClientHello(r.fragment.subarray(body, body + h.length));
      if (h.msgType === 2 && !sh) sh = parseServerHello(r.fragment.subarray(body, body + h.length));
    }
  }
  if (!ch || !sh) throw new Error('fixture hellos');
  const kl = KeyLog.parse(fx.keylog);
  const ks = keySetFromKeyLog(kl.get(ch.random.toString('hex'))!, {
    version: 'DTLS1.2',
    clientRandom: ch.random,
    serverRandom: sh.random,
    cipherSuite: sh.cipherSuite,
    encryptThenMac: ch.encryptThenMac && sh.encryptThenMac,
    srtpProfile: sh.srtpProfiles[0],
  });
  if (!ks) throw new Error('key set');
  return ks;
}

for (const name of Object.keys(SUITES)) {
  t.test(`replay ${name} with the key log: exact plaintext both ways`, async (t) => {
    const fx = loadFixture(name);
    const h = harness({ keyLog: KeyLog.parse(fx.keylog) });
    let time = 1000;
    for (const d of datagrams(fx)) h.session.feed(d.data, d.dir, time++);
    const want = (dir: 'c2s' | 's2c'): string => fx[dir].join('') + (fx.renegotiated ? fx.renegotiated[dir].join('') : '');
    t.equal(h.text('c2s'), want('c2s'));
    t.equal(h.text('s2c'), want('s2c'));
    const hs = ofType(h.events, 'dtls.handshake');
    t.ok(hs.length >= 1);
    t.equal(hs[0]!.cipherSuite, SUITES[name]);
    t.equal(hs[0]!.version, 'DTLS1.2');
    const cbc = name.includes('cbc');
    t.equal(hs[0]!.encryptThenMac, cbc && !fx.noEtm, 'EtM only for CBC with it negotiated');
    t.ok(ofType(h.events, 'keys.verified').length >= 1);
    t.equal(ofType(h.events, 'keys.invalid').length, 0);
    t.equal(ofType(h.events, 'undecryptable').length, 0);
    for (const a of h.session.associations()) t.equal(a.keyStatus, 'verified');
    // Events never carry secrets: the key log's master secrets nor the key set derived from them.
    const kl = KeyLog.parse(fx.keylog);
    t.ok(kl.size >= 1);
    assertNoSecrets(
      t,
      new Secrets().keyLog(fx.keylog).keySet(firstKeySet(name)),
      { texts: { events: JSON.stringify(h.events) } },
      'no secrets in events',
    );
  });
}

t.test('renegotiation inside the encrypted handshake is followed to a new association', async (t) => {
  const fx = loadFixture('gcm128-srtp-reneg.json');
  const srtp: string[] = [];
  const h = harness({ keyLog: KeyLog.parse(fx.keylog), onSrtpKeys: (a) => srtp.push(a) });
  for (const d of datagrams(fx)) h.session.feed(d.data, d.dir, 1);
  const ren = ofType(h.events, 'dtls.renegotiation');
  t.equal(ren.length, 1);
  t.equal(ren[0]!.how, 'encrypted_handshake');
  const assocs = h.session.associations();
  t.equal(assocs.length, 2);
  t.equal(assocs[1]!.epoch, 2, 'renegotiated keys protect epoch 2');
  t.equal(ren[0]!.association, assocs[1]!.id);
  const after = h.app.filter((a) => a.association === assocs[1]!.id).map((a) => a.data.toString());
  t.same(after, [...fx.renegotiated!.c2s, ...fx.renegotiated!.s2c]);
  t.same(srtp, [assocs[0]!.id, assocs[1]!.id]);
  // SRTP keys of the first association = what s_client exported (RFC 5764 §4.2 split).
  const m = splitSrtpKeyingMaterial(1, Buffer.from(fx.exportedKeyingMaterial!, 'hex'))!;
  const k = h.session.srtpKeys(assocs[0]!.id)!;
  t.equal(k.profile, 1);
  t.ok(k.clientMasterKey.equals(m.clientMasterKey));
  t.ok(k.serverMasterKey.equals(m.serverMasterKey));
  t.ok(k.clientMasterSalt.equals(m.clientMasterSalt));
  t.ok(k.serverMasterSalt.equals(m.serverMasterSalt));
});

t.test('HelloVerifyRequest: the second ClientHello is the same handshake', async (t) => {
  const fx = loadFixture('cbc-sha-etm.json');
  const h = harness({ keyLog: KeyLog.parse(fx.keylog) });
  for (const d of datagrams(fx)) h.session.feed(d.data, d.dir, 1);
  // The fixture has ClientHello, HelloVerifyRequest, ClientHello (with cookie).
  const chs = datagrams(fx).filter((d) => d.data[0] === 22 && d.data[13] === 1);
  t.ok(chs.length >= 2, 'two ClientHellos in the capture');
  t.equal(h.session.associations().length, 1);
  t.equal(ofType(h.events, 'dtls.renegotiation').length, 0);
});

t.test('roles come from the ClientHello, not from the first sender label', async (t) => {
  const fx = loadFixture('chacha20.json');
  const h = harness({ keyLog: KeyLog.parse(fx.keylog) });
  for (const d of datagrams(fx)) h.session.feed(d.data, d.dir === 'c2s' ? 's2c' : 'c2s', 1);
  t.equal(h.text('c2s'), fx.c2s.join(''));
  t.equal(h.text('s2c'), fx.s2c.join(''));
});

t.test('late keys: records are held, counted, then delivered in order once keys verify', async (t) => {
  const fx = loadFixture('psk-cbc-sha256-mte.json');
  const h = harness();
  for (const d of datagrams(fx)) h.session.feed(d.data, d.dir, 5);
  t.equal(h.app.length, 0, 'nothing without keys');
  t.equal(h.session.stats.firstProtectedAt, 5, 'deadline start recorded');
  t.ok((h.session.stats.undecryptable.no_keys ?? 0) > 0);
  const und = ofType(h.events, 'undecryptable');
  t.equal(und[0]!.reason, 'no_keys');
  t.equal(und.length, 1, 'rate limited: one event within the interval');
  const assoc = h.session.associations()[0]!;
  t.equal(h.session.keyStatus(assoc.id), undefined);
  const status = h.session.addKeySet(firstKeySet('psk-cbc-sha256-mte.json'), 6);
  t.equal(status, 'verified', 'KEY-STATUS 1: verified against traffic already seen');
  t.equal(h.text('c2s'), fx.c2s.join(''));
  t.equal(h.text('s2c'), fx.s2c.join(''));
  t.ok(h.app.every((a) => a.association === assoc.id));
  h.session.flush(10);
  const total = ofType(h.events, 'undecryptable').reduce((n, e) => n + e.count, 0);
  t.equal(total, h.session.stats.undecryptable.no_keys, 'flush reports every counted record');
});

t.test('keys before traffic: pending, then verified by the first protected record', async (t) => {
  const fx = loadFixture('cbc-sha-etm.json');
  const h = harness();
  t.equal(h.session.addKeySet(firstKeySet('cbc-sha-etm.json')), 'pending');
  for (const d of datagrams(fx)) h.session.feed(d.data, d.dir, 1);
  t.equal(ofType(h.events, 'keys.verified').length, 1);
  t.equal(h.text('c2s'), fx.c2s.join(''));
});

t.test('wrong keys are reported invalid and never produce plaintext', async (t) => {
  const fx = loadFixture('chacha20.json');
  const ks = firstKeySet('chacha20.json');
  ks.clientWriteKey = randomBytes(32);
  ks.serverWriteKey = randomBytes(32);
  const h = harness();
  for (const d of datagrams(fx)) h.session.feed(d.data, d.dir, 1);
  t.equal(h.session.addKeySet(ks), 'invalid', 'KEY-STATUS 2');
  t.equal(ofType(h.events, 'keys.invalid').length, 1);
  t.equal(h.app.length, 0);
  // Later, correct keys still decrypt what was held.
  t.equal(h.session.addKeySet(firstKeySet('chacha20.json')), 'verified');
  t.equal(h.text('s2c'), fx.s2c.join(''));
});

t.test('wrong keys seen live: keys.invalid on the first protected record', async (t) => {
  const fx = loadFixture('gcm128-srtp-reneg.json');
  const ks = firstKeySet('gcm128-srtp-reneg.json');
  ks.clientWriteIv = randomBytes(4);
  ks.serverWriteIv = randomBytes(4);
  const h = harness();
  h.session.addKeySet(ks);
  for (const d of datagrams(fx)) h.session.feed(d.data, d.dir, 1);
  const inv = ofType(h.events, 'keys.invalid');
  t.equal(inv.length, 1);
  assertNoSecrets(t, new Secrets().keySet(ks), { texts: { 'keys.invalid event': JSON.stringify(inv) } }, 'no key bytes in the event');
  t.equal(h.app.length, 0);
});

for (const name of ['gcm128-srtp-reneg.json', 'cbc-sha-etm.json', 'psk-cbc-sha256-mte.json', 'chacha20.json']) {
  t.test(`${name}: a tampered application record is never returned`, async (t) => {
    const fx = loadFixture(name);
    const h = harness({ keyLog: KeyLog.parse(fx.keylog) });
    let tampered = 0;
    for (const d of datagrams(fx)) {
      const data = Buffer.from(d.data);
      if (data[0] === 23 && tampered === 0) {
        data[data.length - 1 - (tampered % 7)]! ^= 0x40; // flip a bit of the tag / MAC
        tampered++;
      }
      h.session.feed(data, d.dir, 1);
    }
    t.equal(tampered, 1);
    // The first c2s payload is lost, everything else arrives.
    t.equal(h.text('c2s'), fx.c2s.slice(1).join('') + (fx.renegotiated ? fx.renegotiated.c2s.join('') : ''));
    t.equal(h.session.stats.undecryptable.auth_failed, 1);
    t.equal(ofType(h.events, 'keys.invalid').length, 0, 'verified keys stay verified');
  });
}

t.test('tampered Finished with escrowed keys: keys.invalid', async (t) => {
  const fx = loadFixture('cbc-sha-etm.json');
  const h = harness();
  h.session.addKeySet(firstKeySet('cbc-sha-etm.json'));
  let done = false;
  for (const d of datagrams(fx)) {
    const data = Buffer.from(d.data);
    // Flip a ciphertext bit in the first protected record (the client Finished).
    for (const r of parseRecords(data)) {
      if (!done && r.epoch === 1 && r.type === 22) {
        data[r.start + 13 + 20]! ^= 1;
        done = true;
      }
    }
    h.session.feed(data, d.dir, 1);
  }
  t.ok(done);
  t.equal(ofType(h.events, 'keys.invalid').length, 1);
  t.equal(h.app.length, 0, 'invalid keys are treated as absent');
});

t.test('new ClientHello after a completed handshake is a renegotiation (client_hello)', async (t) => {
  const fx = loadFixture('chacha20.json');
  const h = harness({ keyLog: KeyLog.parse(fx.keylog) });
  const dg = datagrams(fx);
  for (const d of dg) h.session.feed(d.data, d.dir, 1);
  t.equal(ofType(h.events, 'dtls.renegotiation').length, 0);
  // Replay the first ClientHello with another random (bytes 25.. of the record: header 13 + hs 12 + version 2).
  const ch = Buffer.from(dg[0]!.data);
  randomBytes(32).copy(ch, 13 + 12 + 2);
  h.session.feed(ch, 'c2s', 2);
  const ren = ofType(h.events, 'dtls.renegotiation');
  t.equal(ren.length, 1);
  t.equal(ren[0]!.how, 'client_hello');
  t.equal(h.session.associations().length, 2);
});

t.test('encrypted handshake after completion without keys: renegotiation by heuristic', async (t) => {
  const fx = loadFixture('gcm128-srtp-reneg.json');
  const h = harness();
  for (const d of datagrams(fx)) h.session.feed(d.data, d.dir, 1);
  const ren = ofType(h.events, 'dtls.renegotiation');
  t.equal(ren.length, 1);
  t.equal(ren[0]!.how, 'encrypted_handshake');
  t.equal(h.app.length, 0, 'records without keys are never guessed');
});

t.test('DTLS 1.3 unified-header records with DTLS 1.3 disabled are counted', async (t) => {
  const h = harness({ dtls13: null });
  const rec = Buffer.concat([Buffer.from([0x2f, 0x12, 0x34, 0x00, 0x20]), randomBytes(32)]); // 001 0 1 1 11
  h.session.feed(rec, 'c2s', 1);
  t.equal(h.session.stats.undecryptable.dtls13_unsupported, 1);
  const cid = Buffer.concat([Buffer.from([25, 0xfe, 0xfd]), randomBytes(20)]);
  h.session.feed(cid, 'c2s', 2);
  t.equal(h.session.stats.undecryptable.connection_id, 1);
});

t.test('DTLS 1.3 records go to the opener of a 1.3 key set', async (t) => {
  const seen: number[] = [];
  const h = harness({
    dtls13: () => ({
      open: (_dg, r, dir) => {
        seen.push(r.seq);
        return r.seq === 0x1234 && dir === 'c2s' ? { type: 23, plaintext: Buffer.from('hi') } : null;
      },
    }),
  });
  h.session.addKeySet({
    clientRandom: randomBytes(32),
    serverRandom: randomBytes(32),
    cipherSuite: 0x1301,
    epoch: 3,
    clientAppTrafficSecret: randomBytes(32),
    serverAppTrafficSecret: randomBytes(32),
  });
  // Labelled from the other side: no handshake seen, so both directions are tried.
  h.session.feed(Buffer.concat([Buffer.from([0x2f, 0x12, 0x34, 0x00, 0x04]), randomBytes(4)]), 's2c', 1);
  t.same(seen, [0x1234, 0x1234], 'no handshake seen: both directions tried');
  t.equal(h.text('c2s'), 'hi');
  t.equal(ofType(h.events, 'keys.verified').length, 1);
});

/** Plaintext epoch-0 handshake record with one whole message. */
function hsRecord(type: number, body: Buffer, seq: number): Buffer {
  const hh = Buffer.alloc(12);
  hh[0] = type;
  hh.writeUIntBE(body.length, 1, 3);
  hh.writeUIntBE(body.length, 9, 3);
  const hdr = Buffer.alloc(13);
  hdr[0] = 22;
  hdr.writeUInt16BE(0xfefd, 1);
  hdr.writeUIntBE(seq, 5, 6);
  hdr.writeUInt16BE(12 + body.length, 11);
  return Buffer.concat([hdr, hh, body]);
}
const withExt = (head: Buffer, exts: Buffer): Buffer => Buffer.concat([head, Buffer.from([exts.length >> 8, exts.length & 255]), exts]);

t.test('DTLS 1.3 end to end with src/wire/dtls13.ts and a key log', async (t) => {
  const { Dtls13Writer } = await import('../../../src/wire/dtls13.js');
  const cr = randomBytes(32);
  const sr = randomBytes(32);
  // ClientHello: supported_versions [DTLS 1.3], use_srtp [7]; ServerHello selects 0xfefc.
  const ch = withExt(
    Buffer.concat([Buffer.from([0xfe, 0xfd]), cr, Buffer.from([0, 0, 0, 2, 0x13, 0x01, 1, 0])]),
    Buffer.from([0, 43, 0, 3, 2, 0xfe, 0xfc, 0, 14, 0, 5, 0, 2, 0, 7, 0]),
  );
  const sh = withExt(
    Buffer.concat([Buffer.from([0xfe, 0xfd]), sr, Buffer.from([0, 0x13, 0x01, 0])]),
    Buffer.from([0, 43, 0, 2, 0xfe, 0xfc, 0, 14, 0, 5, 0, 2, 0, 7, 0]),
  );
  const cts = randomBytes(32);
  const sts = randomBytes(32);
  const kl = KeyLog.parse(
    [
      `CLIENT_TRAFFIC_SECRET_0 ${cr.toString('hex')} ${cts.toString('hex')}`,
      `SERVER_TRAFFIC_SECRET_0 ${cr.toString('hex')} ${sts.toString('hex')}`,
      `EXPORTER_SECRET ${cr.toString('hex')} ${randomBytes(32).toString('hex')}`,
    ].join('\n'),
  );
  const srtp: string[] = [];
  const h = harness({ keyLog: kl, onSrtpKeys: (a) => srtp.push(a) });
  h.session.feed(hsRecord(1, ch, 0), 'c2s', 1);
  h.session.feed(hsRecord(2, sh, 0), 's2c', 2);
  const hs = ofType(h.events, 'dtls.handshake');
  t.equal(hs.length, 1);
  t.equal(hs[0]!.version, 'DTLS1.3');
  t.equal(hs[0]!.srtpProfile, 7);
  t.same(srtp, [cr.toString('hex')], 'SRTP keys from the TLS 1.3 exporter');
  const wc = new Dtls13Writer(0x1301, cts, 3);
  const ws = new Dtls13Writer(0x1301, sts, 3);
  h.session.feed(wc.seal(23, Buffer.from('hello 1.3 c2s')), 'c2s', 3);
  h.session.feed(ws.seal(23, Buffer.from('hello 1.3 s2c')), 's2c', 4);
  const bad = wc.seal(23, Buffer.from('tampered'));
  bad[bad.length - 1]! ^= 1;
  h.session.feed(bad, 'c2s', 5);
  t.equal(h.text('c2s'), 'hello 1.3 c2s');
  t.equal(h.text('s2c'), 'hello 1.3 s2c');
  t.equal(ofType(h.events, 'keys.verified').length, 1);
  t.equal(h.session.stats.undecryptable.auth_failed, 1);
});

t.test('DTLS 1.3: use_srtp from the decrypted EncryptedExtensions yields SRTP keys', async (t) => {
  const { Dtls13Writer } = await import('../../../src/wire/dtls13.js');
  const { deriveSrtpTls13 } = await import('../../../src/wire/tls-prf.js');
  const cr = randomBytes(32);
  const sr = randomBytes(32);
  const ch = withExt(
    Buffer.concat([Buffer.from([0xfe, 0xfd]), cr, Buffer.from([0, 0, 0, 2, 0x13, 0x01, 1, 0])]),
    Buffer.from([0, 43, 0, 3, 2, 0xfe, 0xfc, 0, 14, 0, 7, 0, 4, 0, 7, 0, 1, 0]),
  );
  const sh = withExt(
    Buffer.concat([Buffer.from([0xfe, 0xfd]), sr, Buffer.from([0, 0x13, 0x01, 0])]),
    Buffer.from([0, 43, 0, 2, 0xfe, 0xfc]),
  );
  const sec = () => randomBytes(32);
  const [chs, shs, cts, sts, exp] = [sec(), sec(), sec(), sec(), sec()];
  const line = (l: string, b: Buffer) => `${l} ${cr.toString('hex')} ${b.toString('hex')}`;
  const kl = KeyLog.parse(
    [
      line('CLIENT_HANDSHAKE_TRAFFIC_SECRET', chs),
      line('SERVER_HANDSHAKE_TRAFFIC_SECRET', shs),
      line('CLIENT_TRAFFIC_SECRET_0', cts),
      line('SERVER_TRAFFIC_SECRET_0', sts),
      line('EXPORTER_SECRET', exp),
    ].join('\n'),
  );
  const srtp: string[] = [];
  const h = harness({ keyLog: kl, onSrtpKeys: (a) => srtp.push(a) });
  h.session.feed(hsRecord(1, ch, 0), 'c2s', 1);
  h.session.feed(hsRecord(2, sh, 0), 's2c', 2);
  t.equal(ofType(h.events, 'dtls.handshake')[0]!.srtpProfile, undefined, 'not in the ServerHello');
  t.same(srtp, []);
  // EncryptedExtensions { use_srtp: [0x0007], mki "" } at epoch 2, DTLS handshake header.
  const eeExt = Buffer.from([0, 14, 0, 5, 0, 2, 0, 7, 0]);
  const eeBody = Buffer.concat([Buffer.from([0, eeExt.length]), eeExt]);
  const hh = Buffer.alloc(12);
  hh[0] = 8;
  hh.writeUIntBE(eeBody.length, 1, 3);
  hh.writeUInt16BE(1, 4);
  hh.writeUIntBE(eeBody.length, 9, 3);
  const hsw = new Dtls13Writer(0x1301, shs, 2);
  h.session.feed(hsw.seal(22, Buffer.concat([hh, eeBody])), 's2c', 3);
  t.same(srtp, [cr.toString('hex')]);
  const k = h.session.srtpKeys(cr.toString('hex'))!;
  const want = deriveSrtpTls13('sha256', exp, 7, 'dtls13')!;
  t.equal(k.profile, 7);
  t.ok(k.clientMasterKey.equals(want.clientMasterKey) && k.serverMasterSalt.equals(want.serverMasterSalt));
  const wc = new Dtls13Writer(0x1301, cts, 3);
  h.session.feed(wc.seal(23, Buffer.from('media soon')), 'c2s', 4);
  t.equal(h.text('c2s'), 'media soon');
});

t.test('synthetic flow: undecryptable events are rate limited by packet time', async (t) => {
  const h = harness({ undecryptableIntervalMs: 1000 });
  const enc = new DtlsRecordEncryptor(0xc02f, { key: randomBytes(16), iv: randomBytes(4) });
  const rec = (seq: number): Buffer => {
    const f = enc.encrypt(23, 0xfefd, 1, seq, Buffer.from('x'));
    const hdr = Buffer.alloc(13);
    hdr[0] = 23;
    hdr.writeUInt16BE(0xfefd, 1);
    hdr.writeUInt16BE(1, 3);
    hdr.writeUIntBE(seq, 5, 6);
    hdr.writeUInt16BE(f.length, 11);
    return Buffer.concat([hdr, f]);
  };
  for (let i = 0; i < 50; i++) h.session.feed(rec(i), 'c2s', 10_000 + i * 100); // 5 s of packets
  const und = ofType(h.events, 'undecryptable');
  t.ok(und.length >= 4 && und.length <= 6, `about one per second (${und.length})`);
  h.session.flush(20_000);
  t.equal(
    ofType(h.events, 'undecryptable').reduce((n, e) => n + e.count, 0),
    50,
  );
});

t.test('malformed input never throws', async (t) => {
  const h = harness();
  for (let i = 0; i < 2000; i++) {
    const b = randomBytes(1 + (i % 90));
    b[0] = 20 + (i % 44);
    if (i % 3 === 0 && b.length > 13) {
      b[1] = 0xfe;
      b[3] = 0;
      b[4] = i % 2;
    }
    h.session.feed(b, i % 2 ? 'c2s' : 's2c', i);
  }
  t.pass('no throw');
});

t.test('close wipes keys', async (t) => {
  const s = new DtlsSession({ listener: () => {} });
  const ks = firstKeySet('cbc-sha-etm.json');
  s.addKeySet(ks);
  s.close();
  t.equal(s.srtpKeys(ks.clientRandom.toString('hex')), undefined);
  t.ok(
    ks.clientWriteKey!.some((b) => b !== 0),
    "the caller's key set is copied, not taken",
  );
});
