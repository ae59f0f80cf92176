import t from 'tap';
import { createHash, generateKeyPairSync, hkdfSync, createDecipheriv } from 'node:crypto';
import {
  decodeKeyDecline,
  decodeKeyRequest,
  decodeKeyStatus,
  encodeKeyDecline,
  encodeKeyRequest,
  encodeKeyStatus,
  keyRequestSignedBytes,
  KR_FLAG_DATA,
  KR_FLAG_MEDIA,
  KR_FLAG_REQUIRED,
  openWriteKeys,
  pcpWriteKeysKey,
  sealWriteKeys,
  turnWriteKeysAad,
  turnWriteKeysKey,
  verifyKeyRequest,
} from '../../../src/wire/escrow.js';

const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const fp = createHash('sha256').update('certificate DER').digest();
const txid = Buffer.from('0102030405060708090a0b0c', 'hex');

t.test('KEY-REQUEST layout (§2.1): deadline, flags, fingerprint, 64-byte r||s', async (t) => {
  const v = encodeKeyRequest(
    'turn',
    txid,
    { deadline: 10, flags: KR_FLAG_MEDIA | KR_FLAG_DATA | KR_FLAG_REQUIRED | 0x8000, fingerprint: fp },
    privateKey,
  );
  t.equal(v.length, 100);
  t.equal(v.readUInt16BE(0), 10);
  t.equal(v.readUInt16BE(2), 0x0007, 'unknown flag bits sent as zero');
  t.same(v.subarray(4, 36), fp);
  const kr = decodeKeyRequest(v)!;
  t.ok(verifyKeyRequest('turn', txid, kr, publicKey), 'verifies');
  t.notOk(verifyKeyRequest('pcp', txid, kr, publicKey), 'the PCP label does not verify a TURN signature');
  t.notOk(verifyKeyRequest('turn', Buffer.alloc(12), kr, publicKey), 'bound to the transaction ID');
  t.notOk(verifyKeyRequest('turn', txid, kr, other.publicKey), 'bound to the gateway key');
  const tampered = Buffer.from(v);
  tampered[1] ^= 1;
  t.notOk(verifyKeyRequest('turn', txid, decodeKeyRequest(tampered)!, publicKey), 'deadline covered');
  t.equal(decodeKeyRequest(v.subarray(0, 99)), null);
});

t.test('signature input is label || id || deadline || flags || fingerprint (§2.1, §4)', async (t) => {
  const b = keyRequestSignedBytes('turn', txid, 3, 2, fp);
  t.equal(b.subarray(0, 24).toString('ascii'), 'gatehouse key-request v1');
  t.same(b.subarray(24, 36), txid);
  t.equal(b.readUInt16BE(36), 3);
  t.equal(b.readUInt16BE(38), 2);
  t.same(b.subarray(40), fp);
  const p = keyRequestSignedBytes('pcp', txid, 3, 2, fp);
  t.equal(p.subarray(0, 28).toString('ascii'), 'gatehouse pcp key-request v1');
});

t.test('WRITE-KEYS: HKDF key, AAD = bytes 4..19, ver 1, GCM (§2.2)', async (t) => {
  const ltk = createHash('md5').update('alice:example.org:secret').digest();
  const nonce = Buffer.from('obMatJos2AAAAnonce-value');
  const key = turnWriteKeysKey(ltk, nonce);
  t.same(key, Buffer.from(hkdfSync('sha256', ltk, nonce, Buffer.from('gatehouse write-keys v1'), 32)));
  const stunHeader = Buffer.concat([Buffer.from([0x00, 0x09, 0x00, 0x00]), Buffer.from('2112a442', 'hex'), txid]);
  const aad = turnWriteKeysAad(stunHeader);
  t.equal(aad.length, 16);
  const plain = Buffer.from('0100200000000000000000000000000000000000000000000000000000000000000000', 'hex');
  const iv = Buffer.alloc(12, 7);
  const v = sealWriteKeys(key, aad, plain, iv);
  t.equal(v[0], 1);
  t.equal(v[1], 0);
  t.same(v.subarray(2, 14), iv);
  t.equal(v.length, 14 + plain.length + 16);
  // Independent decryption with node's API straight from the spec's layout.
  const d = createDecipheriv('aes-256-gcm', key, v.subarray(2, 14));
  d.setAAD(aad);
  d.setAuthTag(v.subarray(v.length - 16));
  t.same(Buffer.concat([d.update(v.subarray(14, v.length - 16)), d.final()]), plain);
  const ok = openWriteKeys(key, aad, v);
  t.ok(ok.ok && ok.keySet.equals(plain));
  const badAad = Buffer.from(aad);
  badAad[15] ^= 1;
  t.same(openWriteKeys(key, badAad, v), { ok: false, reason: 'decrypt' });
  const badVer = Buffer.from(v);
  badVer[0] = 2;
  t.same(openWriteKeys(key, aad, badVer), { ok: false, reason: 'version' });
  const badZero = Buffer.from(v);
  badZero[1] = 1;
  t.same(openWriteKeys(key, aad, badZero), { ok: false, reason: 'version' });
  t.same(openWriteKeys(key, aad, v.subarray(0, 20)), { ok: false, reason: 'length' });
  const a = sealWriteKeys(key, aad, plain);
  const b = sealWriteKeys(key, aad, plain);
  t.not(a.subarray(2, 14).toString('hex'), b.subarray(2, 14).toString('hex'), 'fresh IV each time');
});

t.test('PCP WRITE_KEYS key uses its own info string (§4)', async (t) => {
  const tk = Buffer.alloc(32, 1);
  const nonce = Buffer.alloc(12, 2);
  t.same(pcpWriteKeysKey(tk, nonce), Buffer.from(hkdfSync('sha256', tk, nonce, Buffer.from('gatehouse pcp write-keys v1'), 32)));
  t.notSame(pcpWriteKeysKey(tk, nonce), turnWriteKeysKey(tk, nonce));
});

t.test('KEY-DECLINE (§2.3) and KEY-STATUS (§2.4)', async (t) => {
  t.equal(decodeKeyDecline(encodeKeyDecline('user said no')), 'user said no');
  t.equal(decodeKeyDecline(Buffer.alloc(0)), '');
  t.equal(decodeKeyDecline(Buffer.alloc(129, 0x61)), null, 'over 128 bytes');
  t.equal(decodeKeyDecline(Buffer.from([0xff, 0xfe])), null, 'not UTF-8');
  t.throws(() => encodeKeyDecline('x'.repeat(129)));
  t.same(encodeKeyStatus(1), Buffer.from([1, 0, 0, 0]));
  t.equal(decodeKeyStatus(Buffer.from([2, 0, 0, 0])), 2);
  t.equal(decodeKeyStatus(Buffer.from([2, 0, 1, 0])), null);
});
