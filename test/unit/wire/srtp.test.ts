import t from 'tap';
import fc from 'fast-check';
import { createHmac, randomBytes } from 'node:crypto';
import {
  SrtpContext,
  deriveSrtpSessionKeys,
  srtpProfileParams,
  SRTP_AES128_CM_HMAC_SHA1_80,
  SRTP_AES128_CM_HMAC_SHA1_32,
  SRTP_AEAD_AES_128_GCM,
  SRTP_AEAD_AES_256_GCM,
  HMAC_JS_MAX,
} from '../../../src/wire/srtp.js';
import { serializeRtp } from '../../../src/wire/rtp.js';
import { assertNoSecrets, Secrets } from '../../e2e/helpers/secrets.js';

const PROFILES = [SRTP_AES128_CM_HMAC_SHA1_80, SRTP_AES128_CM_HMAC_SHA1_32, SRTP_AEAD_AES_128_GCM, SRTP_AEAD_AES_256_GCM];

function keysFor(profile: number): { key: Buffer; salt: Buffer } {
  const p = srtpProfileParams(profile)!;
  return { key: randomBytes(p.keyLength), salt: randomBytes(p.saltLength) };
}
const rtp = (seq: number, len = 20, ssrc = 0x01020304): Buffer =>
  serializeRtp({ payloadType: 111, sequenceNumber: seq, timestamp: seq * 960, ssrc, payload: Buffer.alloc(len, seq & 0xff) });

t.test('HMAC-SHA1 tags match node createHmac at every tail length (JS and native paths)', async (t) => {
  const { key, salt } = keysFor(SRTP_AES128_CM_HMAC_SHA1_80);
  const sk = deriveSrtpSessionKeys(SRTP_AES128_CM_HMAC_SHA1_80, key, salt);
  const tx = new SrtpContext(SRTP_AES128_CM_HMAC_SHA1_80, key, salt);
  let bad = 0;
  for (let len = 0; len <= HMAC_JS_MAX + 200; len += 7) {
    const prot = tx.protectRtp(rtp(1000, len), 3);
    const roc = Buffer.alloc(4);
    roc.writeUInt32BE(3);
    const want = createHmac('sha1', sk.rtpAuthKey)
      .update(prot.subarray(0, prot.length - 10))
      .update(roc)
      .digest()
      .subarray(0, 10);
    if (!want.equals(prot.subarray(prot.length - 10))) bad++;
  }
  t.equal(bad, 0);
});

for (const profile of PROFILES) {
  const name = srtpProfileParams(profile)!.name;
  t.test(`${name}: ROC estimation across wrap and reordering (RFC 3711 §3.3.1)`, async (t) => {
    const { key, salt } = keysFor(profile);
    const tx = new SrtpContext(profile, key, salt);
    const seqs = [65533, 65534, 65535, 0, 1, 2];
    const prot = seqs.map((s) => tx.protectRtp(rtp(s)));
    const rx = new SrtpContext(profile, key, salt);
    // Deliver: 65533, 0 (ROC+1), 65534 (late: ROC-1 guess), 1, 65535, 2.
    const order = [0, 3, 1, 4, 2, 5];
    const want = [65533, 65536, 65534, 65537, 65535, 65538];
    const got = order.map((i) => (rx.unprotectRtp(prot[i]) ? rx.lastRtpIndex : -1));
    t.same(got, want);
    // Big forward jump within 2^15 is still the same ROC.
    const far = tx.protectRtp(rtp(30000));
    t.ok(rx.unprotectRtp(far));
    t.equal(rx.lastRtpIndex, 65536 + 30000);
  });

  t.test(`${name}: replay window and failures never yield plaintext`, async (t) => {
    const { key, salt } = keysFor(profile);
    const tx = new SrtpContext(profile, key, salt);
    const rx = new SrtpContext(profile, key, salt, { replayWindow: 64 });
    const pkts = Array.from({ length: 100 }, (_, i) => tx.protectRtp(rtp(i)));
    for (const p of pkts) t.ok(rx.unprotectRtp(p));
    t.equal(rx.unprotectRtp(pkts[99]), null);
    t.equal(rx.lastFailure, 'replay');
    t.equal(rx.unprotectRtp(pkts[10]), null, 'older than the window');
    t.equal(rx.lastFailure, 'replay');
    const noReplay = new SrtpContext(profile, key, salt);
    t.ok(noReplay.unprotectRtp(pkts[5]) && noReplay.unprotectRtp(pkts[5]), 'replay check off by default');
    const cut = pkts[3].subarray(0, 12 + srtpProfileParams(profile)!.rtpTagLength - 1);
    t.equal(rx.unprotectRtp(cut), null);
    t.equal(rx.lastFailure, 'malformed');
    const r1 = tx.protectRtcp(Buffer.from('80c90001cafebabe', 'hex'));
    t.equal(rx.unprotectRtcp(r1)?.toString('hex'), '80c90001cafebabe');
    t.equal(rx.unprotectRtcp(r1), null, 'SRTCP replay');
    const flipped = Buffer.from(r1);
    flipped[flipped.length - 5] ^= 1;
    t.equal(new SrtpContext(profile, key, salt).unprotectRtcp(flipped), null);
  });

  t.test(`${name}: hostile input never throws`, async (t) => {
    const { key, salt } = keysFor(profile);
    const rx = new SrtpContext(profile, key, salt, { replayWindow: 128, maxStreams: 4 });
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (arr) => {
        const b = Buffer.from(arr);
        if (b.length) b[0] = (b[0] & 0x3f) | 0x80;
        return rx.unprotectRtp(b) === null && rx.unprotectRtcp(b) === null;
      }),
      { numRuns: 1500 },
    );
    t.ok(rx.streamCount <= 4);
  });
}

t.test('SSRC state is bounded', async (t) => {
  const { key, salt } = keysFor(SRTP_AEAD_AES_128_GCM);
  const tx = new SrtpContext(SRTP_AEAD_AES_128_GCM, key, salt);
  const rx = new SrtpContext(SRTP_AEAD_AES_128_GCM, key, salt, { maxStreams: 8 });
  for (let s = 0; s < 50; s++) t.ok(rx.unprotectRtp(tx.protectRtp(rtp(1, 10, s + 1))));
  t.equal(rx.streamCount, 8);
});

t.test('bad keys are refused without echoing them', async (t) => {
  const key = Buffer.alloc(16, 0xab);
  t.throws(() => new SrtpContext(SRTP_AES128_CM_HMAC_SHA1_80, key, Buffer.alloc(12)), RangeError);
  t.throws(() => new SrtpContext(0x0003, key, Buffer.alloc(14)), RangeError);
  try {
    new SrtpContext(SRTP_AEAD_AES_256_GCM, key, Buffer.alloc(12));
    t.fail('should throw');
  } catch (e) {
    assertNoSecrets(t, new Secrets().add('srtp_master_key', 'test', key), { texts: { message: (e as Error).message } }, 'key not echoed');
  }
});
