import t from 'tap';
import { createCipheriv, createHmac, randomBytes } from 'node:crypto';
import { CIPHER_SUITES, DtlsCryptoError, DtlsRecordDecryptor, DtlsRecordEncryptor } from '../../../src/wire/dtls-crypto.js';

const V = 0xfefd;

function keysFor(id: number, etm = false) {
  const s = CIPHER_SUITES.get(id)!;
  return { key: randomBytes(s.keyLen), iv: randomBytes(s.ivLen), macKey: randomBytes(s.macLen), encryptThenMac: etm };
}

t.test('suite table covers key-escrow.md §3', async (t) => {
  for (const id of [
    0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca8, 0xcca9, 0xc009, 0xc013, 0xc00a, 0xc014, 0x008c, 0x008d, 0x00ae, 0x1301, 0x1302, 0x1303,
  ])
    t.ok(CIPHER_SUITES.has(id), `0x${id.toString(16)}`);
  t.equal(CIPHER_SUITES.get(0xc030)!.prfHash, 'sha384');
  t.equal(CIPHER_SUITES.get(0x00ae)!.macLen, 32);
  t.equal(CIPHER_SUITES.get(0xcca8)!.ivLen, 12);
});

t.test('every DTLS 1.2 suite: round trip, and any change fails authentication', async (t) => {
  for (const [id, s] of CIPHER_SUITES) {
    if (s.tls13) continue;
    for (const etm of s.kind === 'cbc' ? [false, true] : [false]) {
      const k = keysFor(id, etm);
      const enc = new DtlsRecordEncryptor(id, k);
      const dec = new DtlsRecordDecryptor(id, k);
      for (const n of [0, 1, 15, 16, 31, 200, 1400]) {
        const pt = randomBytes(n);
        const f = enc.encrypt(23, V, 1, 1000 + n, pt);
        const out = dec.decrypt(23, V, 1, 1000 + n, f);
        t.ok(out && out.equals(pt), `${s.name} etm=${etm} n=${n}`);
        // Header fields are authenticated (RFC 5246 §6.2.3.3 / §6.2.3.1 seq_num, type, version).
        t.equal(dec.decrypt(23, V, 1, 1001 + n, f), null, 'other seq');
        t.equal(dec.decrypt(23, V, 2, 1000 + n, f), null, 'other epoch');
        t.equal(dec.decrypt(22, V, 1, 1000 + n, f), null, 'other type');
        for (const pos of [0, Math.floor(f.length / 2), f.length - 1]) {
          const bad = Buffer.from(f);
          bad[pos]! ^= 0x01;
          t.equal(dec.decrypt(23, V, 1, 1000 + n, bad), null, `bit flip at ${pos}`);
        }
        t.equal(dec.decrypt(23, V, 1, 1000 + n, f.subarray(0, f.length - 1)), null, 'truncated');
      }
      t.equal(dec.decrypt(23, V, 1, 0, Buffer.alloc(0)), null, 'empty');
    }
  }
});

t.test('CBC MAC-then-encrypt: bad padding with a valid MAC is rejected', async (t) => {
  const id = 0xc013;
  const k = keysFor(id);
  const dec = new DtlsRecordDecryptor(id, k);
  const content = Buffer.from('hello');
  const hdr = Buffer.alloc(13);
  hdr.writeUInt16BE(1, 0);
  hdr.writeUIntBE(7, 2, 6);
  hdr[8] = 23;
  hdr.writeUInt16BE(V, 9);
  hdr.writeUInt16BE(content.length, 11);
  const mac = createHmac('sha1', k.macKey).update(hdr).update(content).digest();
  // 5 + 20 = 25 bytes; pad to 32 with 7 bytes: 6 padding bytes of value 6 + length 6. Corrupt one.
  const pad = Buffer.alloc(7, 6);
  const iv = randomBytes(16);
  const encrypt = (p: Buffer): Buffer => {
    const c = createCipheriv('aes-128-cbc', k.key, iv).setAutoPadding(false);
    return Buffer.concat([iv, c.update(Buffer.concat([content, mac, p])), c.final()]);
  };
  t.equal(dec.decrypt(23, V, 1, 7, encrypt(pad))!.toString(), 'hello', 'control: good padding');
  const badPad = Buffer.from(pad);
  badPad[2] = 5;
  t.equal(dec.decrypt(23, V, 1, 7, encrypt(badPad)), null);
});

t.test('constructors reject wrong key lengths and TLS 1.3 suites', async (t) => {
  t.throws(() => new DtlsRecordDecryptor(0xc02b, { key: randomBytes(32), iv: randomBytes(4) }), DtlsCryptoError);
  t.throws(() => new DtlsRecordDecryptor(0xc02b, { key: randomBytes(16), iv: randomBytes(12) }), DtlsCryptoError);
  t.throws(() => new DtlsRecordDecryptor(0xc013, { key: randomBytes(16), macKey: randomBytes(32) }), DtlsCryptoError);
  t.throws(() => new DtlsRecordDecryptor(0x1301, { key: randomBytes(16), iv: randomBytes(12) }), DtlsCryptoError);
  t.throws(() => new DtlsRecordDecryptor(0x0005, { key: randomBytes(16) }), DtlsCryptoError);
});

t.test('recordAad: the RFC 5246 §6.2.3.3 bytes, 48-bit sequence numbers included', async (t) => {
  const { recordAad } = await import('../../../src/wire/dtls-crypto.js');
  const cases: [number, number, number, number, number][] = [
    [23, 0xfefd, 0, 0, 0],
    [23, 0xfefd, 1, 1, 1001],
    [22, 0xfeff, 0xffff, 2 ** 48 - 1, 0xffff],
    [23, 0xfefd, 0x1234, 0x0102_0304_0506, 16384],
    [21, 0xfefd, 7, 2 ** 32, 2],
    [23, 0xfefd, 7, 2 ** 32 - 1, 2],
  ];
  for (const [type, version, epoch, seq, length] of cases) {
    const want = Buffer.alloc(13);
    want.writeUInt16BE(epoch, 0);
    want.writeUIntBE(seq, 2, 6);
    want[8] = type;
    want.writeUInt16BE(version, 9);
    want.writeUInt16BE(length, 11);
    t.same(recordAad(Buffer.alloc(13), type, version, epoch, seq, length), want, `epoch ${epoch} seq ${seq}`);
  }
});
