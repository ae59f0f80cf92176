import t from 'tap';
import { randomBytes } from 'node:crypto';
import {
  CIPHER_SUITES,
  KeySetError,
  decodeKeySet,
  encodeKeySet,
  keySetFromJson,
  keySetToJson,
  keySetsFromJson,
  validateKeySet,
  wipeKeySet,
  type KeySet,
} from '../../../src/wire/keyset.js';
import { KeyLog, keySetFromKeyLog } from '../../../src/inspect/keylog.js';
import { assertNoSecrets, Secrets } from '../../e2e/helpers/secrets.js';

function sample(suite: number, srtp = true): KeySet {
  const s = CIPHER_SUITES.get(suite)!;
  const ks: KeySet = { clientRandom: randomBytes(32), serverRandom: randomBytes(32), cipherSuite: suite, epoch: s.tls13 ? 3 : 1 };
  if (s.tls13) {
    const l = s.prfHash === 'sha384' ? 48 : 32;
    ks.clientAppTrafficSecret = randomBytes(l);
    ks.serverAppTrafficSecret = randomBytes(l);
    ks.clientHsTrafficSecret = randomBytes(l);
  } else {
    ks.clientWriteKey = randomBytes(s.keyLen);
    ks.serverWriteKey = randomBytes(s.keyLen);
    if (s.kind === 'cbc') {
      ks.clientMacKey = randomBytes(s.macLen);
      ks.serverMacKey = randomBytes(s.macLen);
      ks.encryptThenMac = true;
    } else {
      ks.clientWriteIv = randomBytes(s.ivLen);
      ks.serverWriteIv = randomBytes(s.ivLen);
    }
  }
  if (srtp) {
    ks.srtpProfile = 7;
    ks.srtpClientMasterKey = randomBytes(16);
    ks.srtpServerMasterKey = randomBytes(16);
    ks.srtpClientMasterSalt = randomBytes(12);
    ks.srtpServerMasterSalt = randomBytes(12);
  }
  return ks;
}

const tlv = (type: number, value: Buffer): Buffer => Buffer.concat([Buffer.from([type, value.length >> 8, value.length & 255]), value]);

/** Splits an encoding into TLVs so tests can drop / duplicate / change one. */
function tlvs(b: Buffer): { type: number; value: Buffer }[] {
  const out = [];
  for (let o = 0; o < b.length;) {
    const l = b.readUInt16BE(o + 1);
    out.push({ type: b[o]!, value: b.subarray(o + 3, o + 3 + l) });
    o += 3 + l;
  }
  return out;
}
const join = (xs: { type: number; value: Buffer }[]): Buffer => Buffer.concat(xs.map((x) => tlv(x.type, x.value)));

function reason(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof KeySetError) return e.reason;
    throw e;
  }
  return 'no error';
}

t.test('TLV round trip for every suite, with and without SRTP', async (t) => {
  for (const id of CIPHER_SUITES.keys()) {
    for (const srtp of [true, false]) {
      const ks = sample(id, srtp);
      const enc = encodeKeySet(ks);
      const back = decodeKeySet(enc);
      t.same(back, ks, `0x${id.toString(16)} srtp=${srtp}`);
    }
  }
  // Byte layout of the first TLVs (key-escrow.md §3).
  const ks = sample(0xc02b);
  const enc = encodeKeySet(ks);
  t.same([...enc.subarray(0, 3)], [0x01, 0, 32]);
  const types = tlvs(enc).map((x) => x.type);
  t.same(types, [1, 2, 3, 4, 5, 6, 7, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f]);
  t.same([...tlvs(enc).find((x) => x.type === 3)!.value], [0xc0, 0x2b]);
  // EtM is one byte.
  const cbc = tlvs(encodeKeySet(sample(0xc013, false))).find((x) => x.type === 0x10)!;
  t.same([...cbc.value], [1]);
});

t.test('unknown TLV types are skipped', async (t) => {
  const ks = sample(0xcca8);
  const parts = tlvs(encodeKeySet(ks));
  parts.splice(2, 0, { type: 0x7f, value: Buffer.from('future') }, { type: 0xff, value: Buffer.alloc(0) });
  t.same(decodeKeySet(join(parts)), ks);
});

t.test('every invalid case throws KeySetError with a reason', async (t) => {
  const ks = sample(0xc02b);
  const parts = tlvs(encodeKeySet(ks));
  const without = (type: number) => join(parts.filter((p) => p.type !== type));
  const withValue = (type: number, v: Buffer) => join(parts.map((p) => (p.type === type ? { type, value: v } : p)));
  const cases: [string, Buffer, RegExp][] = [
    ['duplicate', join([...parts, parts[0]!]), /duplicate TLV 0x01/],
    ['duplicate unknown', join([...parts, { type: 0x50, value: Buffer.alloc(1) }, { type: 0x50, value: Buffer.alloc(1) }]), /duplicate/],
    ['missing client random', without(1), /missing client_random/],
    ['missing server random', without(2), /missing server_random/],
    ['missing suite', without(3), /missing cipher_suite/],
    ['missing epoch', without(0x0a), /missing epoch/],
    ['missing client key', without(4), /missing client_write_key/],
    ['missing server iv', without(7), /missing server_write_iv/],
    ['short random', withValue(1, Buffer.alloc(31)), /client_random has length 31/],
    ['key length for suite', withValue(4, Buffer.alloc(32)), /client_write_key has length 32/],
    ['iv length for suite', withValue(6, Buffer.alloc(12)), /client_write_iv has length 12/],
    ['unsupported suite', withValue(3, Buffer.from([0x00, 0x2f])), /unsupported cipher suite 0x002f/],
    ['suite wrong size', withValue(3, Buffer.from([0xc0])), /cipher_suite has length 1/],
    ['unsupported profile', withValue(0x0b, Buffer.from([0, 3])), /unsupported SRTP profile 0x0003/],
    ['srtp key length', withValue(0x0c, Buffer.alloc(32)), /srtp_client_master_key has length 32/],
    ['srtp salt length', withValue(0x0e, Buffer.alloc(14)), /srtp_client_master_salt has length 14/],
    ['srtp keys without profile', without(0x0b), /without srtp_profile/],
    ['srtp profile without keys', without(0x0d), /missing srtp_server_master_key/],
    ['truncated tlv', encodeKeySet(ks).subarray(0, 50), /truncated/],
    ['truncated header', Buffer.concat([encodeKeySet(ks), Buffer.from([1, 0])]), /truncated TLV header/],
    ['mac key on AEAD', join([...parts, { type: 8, value: Buffer.alloc(20) }]), /client_mac_key is not used/],
    ['1.3 secret on 1.2', join([...parts, { type: 0x11, value: Buffer.alloc(32) }]), /client_application_traffic_secret is not used/],
    ['epoch 0', withValue(0x0a, Buffer.from([0, 0])), /epoch 1 or later/],
  ];
  for (const [name, buf, re] of cases)
    t.match(
      reason(() => decodeKeySet(buf)),
      re,
      name,
    );

  const cbc = tlvs(encodeKeySet(sample(0xc014, false)));
  t.match(
    reason(() => decodeKeySet(join(cbc.filter((p) => p.type !== 0x10)))),
    /missing encrypt_then_mac/,
  );
  t.match(
    reason(() => decodeKeySet(join(cbc.filter((p) => p.type !== 9)))),
    /missing server_mac_key/,
  );
  t.match(
    reason(() => decodeKeySet(join(cbc.map((p) => (p.type === 0x10 ? { type: 0x10, value: Buffer.from([2]) } : p))))),
    /encrypt_then_mac/,
  );
  t.match(
    reason(() => decodeKeySet(join(cbc.map((p) => (p.type === 8 ? { type: 8, value: Buffer.alloc(32) } : p))))),
    /client_mac_key has length 32, suite needs 20/,
  );

  const t13 = tlvs(encodeKeySet(sample(0x1302, false)));
  t.match(
    reason(() => decodeKeySet(join(t13.filter((p) => p.type !== 0x12)))),
    /missing server_application_traffic_secret/,
  );
  t.match(
    reason(() => decodeKeySet(join(t13.map((p) => (p.type === 0x11 ? { type: 0x11, value: Buffer.alloc(32) } : p))))),
    /length 32, suite needs 48/,
  );
  t.match(
    reason(() => decodeKeySet(join(t13.map((p) => (p.type === 0x0a ? { type: 0x0a, value: Buffer.from([0, 2]) } : p))))),
    /epoch 3 or later/,
  );
});

t.test('errors never contain key bytes', async (t) => {
  const ks = sample(0xc02b);
  ks.clientWriteKey = Buffer.alloc(17, 0xab);
  try {
    validateKeySet(ks);
    t.fail('should throw');
  } catch (e) {
    assertNoSecrets(t, new Secrets().keySet(ks), { texts: { message: (e as Error).message } }, 'no key bytes in the message');
    t.equal((e as KeySetError).code, 'E_KEYSET');
  }
});

t.test('JSON form (contract.md)', async (t) => {
  const ks = sample(0xc013);
  const json = keySetToJson(ks);
  t.equal(json.client_random, ks.clientRandom.toString('hex'));
  t.equal(json.cipher_suite, 0xc013);
  t.equal(json.encrypt_then_mac, 1);
  t.same(keySetFromJson(json), ks);
  t.same(keySetFromJson({ ...json, encrypt_then_mac: true, comment: 'ignored' }), ks);
  const arr = keySetsFromJson(JSON.stringify([json, keySetToJson(sample(0x1303))]));
  t.equal(arr.length, 2);
  t.match(
    reason(() => keySetFromJson({ ...json, client_write_key: 'xyz' })),
    /hex string/,
  );
  t.match(
    reason(() => keySetFromJson({ ...json, epoch: '1' })),
    /integer/,
  );
  t.match(
    reason(() => keySetFromJson({ ...json, encrypt_then_mac: 'yes' })),
    /0, 1, true or false/,
  );
  t.match(
    reason(() => keySetFromJson([])),
    /JSON object/,
  );
  t.match(
    reason(() => keySetsFromJson('[{}]')),
    /entry 0: missing client_random/,
  );
  t.match(
    reason(() => keySetsFromJson('{')),
    /not valid JSON/,
  );
});

t.test('wipeKeySet zeroes every buffer', async (t) => {
  const ks = sample(0xc02c);
  const bufs = Object.values(ks).filter(Buffer.isBuffer);
  t.ok(bufs.length > 5);
  wipeKeySet(ks);
  t.ok(bufs.every((b) => b.every((x: number) => x === 0)));
});

t.test('key log parsing and key sets from it', async (t) => {
  const cr = randomBytes(32);
  const sr = randomBytes(32);
  const ms = randomBytes(48);
  const sec = () => randomBytes(32).toString('hex');
  const text = [
    '# comment',
    `CLIENT_RANDOM ${cr.toString('hex').toUpperCase()} ${ms.toString('hex')}`,
    `CLIENT_RANDOM zz ${ms.toString('hex')}`,
    `SERVER_HANDSHAKE_TRAFFIC_SECRET ${'11'.repeat(32)} ${sec()}`,
    `CLIENT_HANDSHAKE_TRAFFIC_SECRET ${'11'.repeat(32)} ${sec()}`,
    `CLIENT_TRAFFIC_SECRET_0 ${'11'.repeat(32)} ${sec()}`,
    `SERVER_TRAFFIC_SECRET_0 ${'11'.repeat(32)} ${sec()}`,
    `EXPORTER_SECRET ${'11'.repeat(32)} ${sec()}`,
    'EARLY_EXPORTER_SECRET aa bb',
    '',
  ].join('\n');
  const kl = KeyLog.parse(text);
  t.equal(kl.size, 2);
  t.equal(kl.rejected, 1);
  t.ok(kl.get(cr.toString('hex'))!.masterSecret!.equals(ms), 'lookup is case-insensitive');
  const e13 = kl.get('11'.repeat(32))!;
  t.ok(
    e13.clientAppTrafficSecret &&
      e13.serverAppTrafficSecret &&
      e13.exporterSecret &&
      e13.clientHsTrafficSecret &&
      e13.serverHsTrafficSecret,
  );

  const k12 = keySetFromKeyLog(kl.get(cr.toString('hex'))!, {
    version: 'DTLS1.2',
    clientRandom: cr,
    serverRandom: sr,
    cipherSuite: 0xc009,
    encryptThenMac: false,
    srtpProfile: 2,
  })!;
  t.ok(k12);
  t.equal(k12.epoch, 1);
  t.equal(k12.encryptThenMac, false);
  t.equal(k12.clientMacKey!.length, 20);
  t.equal(k12.srtpProfile, 2);
  t.equal(k12.srtpClientMasterSalt!.length, 14);
  t.doesNotThrow(() => encodeKeySet(k12));

  const k13 = keySetFromKeyLog(e13, {
    version: 'DTLS1.3',
    clientRandom: Buffer.alloc(32, 0x11),
    serverRandom: sr,
    cipherSuite: 0x1301,
    encryptThenMac: false,
    srtpProfile: 1,
  })!;
  t.equal(k13.epoch, 3);
  t.ok(k13.clientAppTrafficSecret!.equals(e13.clientAppTrafficSecret!));
  t.equal(k13.srtpClientMasterKey!.length, 16);
  t.doesNotThrow(() => encodeKeySet(k13));

  t.equal(
    keySetFromKeyLog(e13, { version: 'DTLS1.2', clientRandom: cr, serverRandom: sr, cipherSuite: 0xc02b, encryptThenMac: false }),
    null,
    'no master secret',
  );
  t.equal(
    keySetFromKeyLog(kl.get(cr.toString('hex'))!, {
      version: 'DTLS1.2',
      clientRandom: cr,
      serverRandom: sr,
      cipherSuite: 0x002f,
      encryptThenMac: false,
    }),
    null,
    'unsupported suite',
  );
  kl.wipe();
  t.equal(kl.size, 0);
  t.ok(
    ms.some((b) => b !== 0),
    'the caller buffer is not the stored one',
  );
});
