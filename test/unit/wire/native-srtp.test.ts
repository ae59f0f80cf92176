/**
 * The optional OpenSSL addon (src/wire/native.ts, native/srtp_openssl.c) against the pure-JS
 * SRTP path: identical protect output and identical unprotect results (incl. auth failures)
 * for random packets of every profile. Native-only checks are skipped when the addon is
 * not built (`node-gyp rebuild -C native --nodedir=/usr`); the fallback test always runs.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { createCipheriv, createHmac, randomBytes, randomInt } from 'node:crypto';
import { loadNative } from '../../../src/wire/native.js';
import {
  SrtpContext,
  srtpProfileParams,
  SRTP_AES128_CM_HMAC_SHA1_80,
  SRTP_AES128_CM_HMAC_SHA1_32,
  SRTP_AEAD_AES_128_GCM,
  SRTP_AEAD_AES_256_GCM,
} from '../../../src/wire/srtp.js';

const nat = loadNative();
const skip = nat ? false : 'native addon not built';
// .ci/run builds the addon: in CI a missing one is a failure (its tests would pass vacuously).
if (!nat && process.env.CI) t.fail('CI: native addon not built (npm run build:native)');
const PROFILES = [SRTP_AES128_CM_HMAC_SHA1_80, SRTP_AES128_CM_HMAC_SHA1_32, SRTP_AEAD_AES_128_GCM, SRTP_AEAD_AES_256_GCM];

/** Random RTP packet: CSRCs, optional header extension (RFC 3550 §5.1, §5.3.1), 0..1400 payload. */
function randomRtp(seq: number, ssrc: number): Buffer {
  const cc = randomInt(0, 4);
  const ext = randomInt(0, 3) === 0;
  const extWords = ext ? randomInt(0, 4) : 0;
  const payload = randomInt(0, 5) === 0 ? randomInt(0, 17) : randomInt(0, 1401);
  const hl = 12 + 4 * cc + (ext ? 4 + 4 * extWords : 0);
  const b = randomBytes(hl + payload);
  b[0] = 0x80 | (ext ? 0x10 : 0) | cc;
  b.writeUInt16BE(seq, 2);
  b.writeUInt32BE(ssrc >>> 0, 8);
  if (ext) b.writeUInt16BE(extWords, 12 + 4 * cc + 2);
  return b;
}

function randomRtcp(ssrc: number): Buffer {
  const b = randomBytes(8 + randomInt(0, 300));
  b[0] = 0x80 | 1;
  b[1] = 200;
  b.writeUInt32BE(ssrc >>> 0, 4);
  return b;
}

function corrupt(b: Buffer): Buffer {
  const c = Buffer.from(b);
  c[randomInt(0, c.length)] ^= 1 << randomInt(0, 8);
  return c;
}

t.test('loadNative returns null or a working addon on node’s own OpenSSL', async (t) => {
  if (!nat) {
    t.equal(nat, null);
    return;
  }
  t.type(nat.SrtpCrypto, 'function');
  t.match(nat.openssl, /^OpenSSL 3\./);
  t.ok(nat.openssl.includes(process.versions.openssl), 'same OpenSSL as node');
  t.equal(loadNative(), nat, 'cached');
});

for (const profile of PROFILES) {
  const name = srtpProfileParams(profile)!.name;
  t.test(`${name}: native and JS paths agree on random packets, incl. auth failures`, { skip }, async (t) => {
    const p = srtpProfileParams(profile)!;
    const key = randomBytes(p.keyLength);
    const salt = randomBytes(p.saltLength);
    const txN = new SrtpContext(profile, key, salt);
    const txJ = new SrtpContext(profile, key, salt, { native: false });
    const rxN = new SrtpContext(profile, key, salt);
    const rxJ = new SrtpContext(profile, key, salt, { native: false });
    let protectDiff = 0;
    let openDiff = 0;
    let badAccepted = 0;
    let okCount = 0;
    for (let i = 0; i < 300; i++) {
      const ssrc = randomInt(0, 2 ** 32);
      const roc = randomInt(0, 4) === 0 ? randomInt(0, 2 ** 32) : randomInt(0, 3);
      const pkt = randomRtp(randomInt(0, 65536), ssrc);
      const a = txN.protectRtp(pkt, roc);
      const b = txJ.protectRtp(pkt, roc);
      if (!a.equals(b)) protectDiff++;
      // Fresh receivers per packet would hide ROC tracking; here each SSRC is new, so the
      // receivers guess ROC 0: packets with roc 0 must open, the others must fail auth.
      const bad = corrupt(a);
      for (const [input, mustOpen] of [
        [a, roc === 0],
        [bad, false],
      ] as const) {
        const rn = rxN.unprotectRtp(input);
        const rj = rxJ.unprotectRtp(input);
        if ((rn === null) !== (rj === null) || (rn && rj && !rn.equals(rj)) || rxN.lastFailure !== rxJ.lastFailure) openDiff++;
        if (mustOpen && rn) {
          okCount++;
          if (!rn.equals(pkt)) openDiff++;
        }
        if (!mustOpen && rn) badAccepted++;
        if (mustOpen && !rn) openDiff++;
      }
      rxN.reset();
      rxJ.reset();
    }
    t.equal(protectDiff, 0, 'protectRtp output identical');
    t.equal(openDiff, 0, 'unprotectRtp results identical and correct');
    t.equal(badAccepted, 0, 'no corrupted or wrong-ROC packet accepted');
    t.ok(okCount > 30, `valid packets opened (${okCount})`);
  });

  t.test(`${name}: SRTCP native and JS paths agree (E=1 and E=0)`, { skip }, async (t) => {
    const p = srtpProfileParams(profile)!;
    const key = randomBytes(p.keyLength);
    const salt = randomBytes(p.saltLength);
    const txN = new SrtpContext(profile, key, salt);
    const txJ = new SrtpContext(profile, key, salt, { native: false });
    const rxN = new SrtpContext(profile, key, salt);
    const rxJ = new SrtpContext(profile, key, salt, { native: false });
    let diff = 0;
    let badAccepted = 0;
    for (let i = 0; i < 200; i++) {
      const pkt = randomRtcp(randomInt(0, 2 ** 32));
      const index = randomInt(0, 2 ** 31);
      const encrypt = randomInt(0, 3) !== 0;
      const a = txN.protectRtcp(pkt, index, encrypt);
      if (!a.equals(txJ.protectRtcp(pkt, index, encrypt))) diff++;
      const on = rxN.unprotectRtcp(a);
      const oj = rxJ.unprotectRtcp(a);
      if (!on || !oj || !on.equals(pkt) || !oj.equals(pkt) || rxN.lastRtcpIndex !== index) diff++;
      const bad = corrupt(a);
      const bn = rxN.unprotectRtcp(bad);
      const bj = rxJ.unprotectRtcp(bad);
      if ((bn === null) !== (bj === null) || rxN.lastFailure !== rxJ.lastFailure) diff++;
      if (bn) badAccepted++;
    }
    t.equal(diff, 0, 'identical SRTCP output and results');
    t.equal(badAccepted, 0, 'no corrupted SRTCP packet accepted');
  });
}

t.test('native primitives match node:crypto references', { skip }, async (t) => {
  const N = nat!;
  // AES-128-GCM (SP 800-38D) against node's createCipheriv.
  const key = randomBytes(16);
  const iv = Buffer.alloc(16);
  const g = new N.SrtpCrypto(true, key, null, iv);
  for (const len of [0, 1, 15, 16, 17, 160, 1200]) {
    randomBytes(12).copy(iv);
    const aad = randomBytes(12);
    const pt = randomBytes(len);
    const c = createCipheriv('aes-128-gcm', key, iv.subarray(0, 12));
    c.setAAD(Buffer.concat([aad, Buffer.from([1, 2, 3, 4])]));
    const ref = Buffer.concat([aad, c.update(pt), c.final(), c.getAuthTag()]);
    const out = Buffer.alloc(12 + len + 16);
    g.gcmSeal(Buffer.concat([aad, pt]), 12, len, 0x01020304, out);
    t.same(out, ref, `gcmSeal ${len}`);
    const back = Buffer.alloc(12 + len);
    t.equal(g.gcmOpen(ref, 12, len, 12 + len, 0x01020304, back), true);
    t.same(back, Buffer.concat([aad, pt]));
    t.equal(g.gcmOpen(ref, 12, len, 12 + len, 0x01020305, back), false, 'wrong extra AAD word fails');
    t.ok(
      back.subarray(12).every((x) => x === 0),
      'plaintext wiped on failure',
    );
  }
  // AES-CTR (RFC 3711 §4.1.1) + HMAC-SHA1 (RFC 2104) against node.
  const ak = randomBytes(20);
  const cm = new N.SrtpCrypto(false, key, ak, iv);
  for (const len of [0, 5, 64, 1200]) {
    randomBytes(14).copy(iv);
    iv.writeUInt16BE(0, 14);
    const hdr = randomBytes(12);
    const pt = randomBytes(len);
    const out = Buffer.alloc(12 + len + 10);
    cm.cmSeal(Buffer.concat([hdr, pt]), out, 12, len, true, 12 + len, 0xdeadbeef, 12 + len, 10);
    const ctr = createCipheriv('aes-128-ctr', key, iv);
    const body = Buffer.concat([hdr, ctr.update(pt), ctr.final()]);
    const tag = createHmac('sha1', ak)
      .update(body)
      .update(Buffer.from([0xde, 0xad, 0xbe, 0xef]))
      .digest()
      .subarray(0, 10);
    t.same(out, Buffer.concat([body, tag]), `cmSeal ${len}`);
    const back = Buffer.alloc(12 + len);
    t.equal(cm.cmOpen(out, 12 + len, 0xdeadbeef, 12 + len, 10, 12, len, true, back), true);
    t.same(back, Buffer.concat([hdr, pt]));
    t.equal(cm.cmOpen(out, 12 + len, 0xdeadbeee, 12 + len, 10, 12, len, true, back), false, 'wrong ROC fails');
  }
});

t.test('native calls with bad offsets or kinds throw instead of touching memory', { skip }, async (t) => {
  const N = nat!;
  const iv = Buffer.alloc(16);
  const g = new N.SrtpCrypto(true, randomBytes(16), null, iv);
  const cm = new N.SrtpCrypto(false, randomBytes(16), randomBytes(20), iv);
  const b = Buffer.alloc(64);
  t.throws(() => g.gcmOpen(b, 40, 20, 60, -1, Buffer.alloc(64)), RangeError, 'tag past the end');
  t.throws(() => g.gcmOpen(b, 12, 20, 20, -1, Buffer.alloc(10)), RangeError, 'out too small');
  t.throws(() => g.gcmSeal(b, 12, 40, -1, Buffer.alloc(64)), RangeError, 'no room for the tag');
  t.throws(() => g.gcmOpen(b, -1, 0, 0, -1, b), RangeError, 'negative');
  t.throws(() => g.gcmOpen(b, 1.5, 0, 0, -1, b), RangeError, 'fraction');
  t.throws(() => g.gcmOpen(b, 0, 0, 0, 2 ** 32, b), RangeError, 'word out of range');
  t.throws(() => cm.cmOpen(b, 65, -1, 0, 10, 0, 0, true, b), RangeError, 'auth past the end');
  t.throws(() => cm.cmOpen(b, 10, -1, 0, 21, 0, 0, true, b), RangeError, 'tag too long');
  t.throws(() => cm.cmSeal(b, Buffer.alloc(8), 0, 16, true, 0, -1, 0, 4), RangeError, 'out too small');
  t.throws(() => g.cmOpen(b, 10, -1, 0, 10, 0, 0, true, b), TypeError, 'AES-CM call on a GCM context');
  t.throws(() => cm.gcmSeal(b, 0, 0, -1, b), TypeError, 'GCM call on an AES-CM context');
  t.throws(() => new N.SrtpCrypto(true, Buffer.alloc(24), null, iv), RangeError, 'AES-192 key refused');
  t.throws(() => new N.SrtpCrypto(false, Buffer.alloc(16), null, iv), RangeError, 'AES-CM needs an auth key');
  t.throws(() => new N.SrtpCrypto(true, Buffer.alloc(16), null, Buffer.alloc(8)), RangeError, 'short IV scratch');
  t.throws(() => g.gcmOpen('x' as unknown as Buffer, 0, 0, 0, -1, b), RangeError, 'non-buffer');
});

t.test('disableNative() forces the pure-JS fallback, which still round-trips', async (t) => {
  const code = [
    "const { loadNative, disableNative } = await import('./src/wire/native.ts');",
    'disableNative();',
    "const s = await import('./src/wire/srtp.ts');",
    "const { randomBytes } = await import('node:crypto');",
    'const k = randomBytes(16), salt = randomBytes(12);',
    'const tx = new s.SrtpContext(7, k, salt), rx = new s.SrtpContext(7, k, salt);',
    'const pkt = Buffer.concat([Buffer.from([0x80, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4]), randomBytes(100)]);',
    'const back = rx.unprotectRtp(tx.protectRtp(pkt));',
    "process.stdout.write(JSON.stringify({ native: loadNative() === null ? 'none' : 'loaded', ok: !!back && back.equals(pkt) }));",
  ].join('\n');
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: new URL('../../../', import.meta.url).pathname,
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.same(JSON.parse(out), { native: 'none', ok: true });
});
