import t from 'tap';
import { execFileSync } from 'node:child_process';
import { hkdfSync, randomBytes } from 'node:crypto';
import {
  deriveSrtpTls12,
  hkdfExpand,
  hkdfExpandLabel,
  hkdfExtract,
  splitSrtpKeyingMaterial,
  tls12Exporter,
  tls12KeyBlock,
  tls12Prf,
  tls12PrfJs,
  tls13Exporter,
} from '../../../src/wire/tls-prf.js';
import { loadNative } from '../../../src/wire/native.js';
import { CT_APPLICATION_DATA, parseRecords, parseServerHello, parseClientHello, readHandshakeHeader } from '../../../src/wire/dtls.js';
import { DtlsRecordDecryptor, cipherSuiteInfo } from '../../../src/wire/dtls-crypto.js';
import { KeyLog } from '../../../src/inspect/keylog.js';
import { loadFixture, datagrams } from '../inspect/dtls-session-helpers.js';

let haveOpensslKdf = true;
try {
  execFileSync('openssl', ['kdf', '-help'], { stdio: 'ignore' });
} catch {
  haveOpensslKdf = false;
}

/** OpenSSL's TLS1-PRF KDF as an independent oracle (seed = label || seed). */
function opensslPrf(hash: string, secret: Buffer, label: string, seed: Buffer, len: number): Buffer {
  const out = execFileSync(
    'openssl',
    [
      'kdf',
      '-keylen',
      String(len),
      '-kdfopt',
      `digest:${hash}`,
      '-kdfopt',
      `hexsecret:${secret.toString('hex')}`,
      '-kdfopt',
      `hexseed:${Buffer.concat([Buffer.from(label), seed]).toString('hex')}`,
      'TLS1-PRF',
    ],
    { encoding: 'utf8' },
  );
  return Buffer.from(out.trim().replace(/:/g, ''), 'hex');
}

// OpenSSL is a real peer: in CI (which installs it) its absence fails instead of skipping.
if (!haveOpensslKdf && process.env.CI) t.fail('CI: openssl kdf (TLS1-PRF) missing (.ci/run installs openssl)');
t.test('TLS 1.2 PRF matches OpenSSL TLS1-PRF (SHA-256, SHA-384)', { skip: !haveOpensslKdf && 'openssl kdf missing' }, async (t) => {
  for (const [hash, ossl] of [
    ['sha256', 'SHA256'],
    ['sha384', 'SHA384'],
  ] as const) {
    for (const len of [1, 32, 48, 104, 136]) {
      const secret = randomBytes(48);
      const seed = randomBytes(64);
      t.ok(
        tls12Prf(hash, secret, 'key expansion', seed, len).equals(opensslPrf(ossl, secret, 'key expansion', seed, len)),
        `${hash} len ${len}`,
      );
    }
  }
});

t.test('key block partition and exporter', async (t) => {
  const ms = randomBytes(48);
  const cr = randomBytes(32);
  const sr = randomBytes(32);
  const kb = tls12KeyBlock('sha256', ms, cr, sr, { macLen: 20, keyLen: 16, ivLen: 0 });
  const raw = tls12Prf('sha256', ms, 'key expansion', Buffer.concat([sr, cr]), 72);
  t.ok(kb.clientMacKey.equals(raw.subarray(0, 20)));
  t.ok(kb.serverMacKey.equals(raw.subarray(20, 40)));
  t.ok(kb.clientWriteKey.equals(raw.subarray(40, 56)));
  t.ok(kb.serverWriteKey.equals(raw.subarray(56, 72)));
  t.equal(kb.clientWriteIv.length, 0);
  const ex = tls12Exporter('sha256', ms, 'EXTRACTOR-dtls_srtp', cr, sr, 60);
  t.ok(ex.equals(tls12Prf('sha256', ms, 'EXTRACTOR-dtls_srtp', Buffer.concat([cr, sr]), 60)), 'RFC 5705: client_random first');
  const ctx = tls12Exporter('sha256', ms, 'L', cr, sr, 20, Buffer.from('ab'));
  t.ok(ctx.equals(tls12Prf('sha256', ms, 'L', Buffer.concat([cr, sr, Buffer.from([0, 2]), Buffer.from('ab')]), 20)));
  const m = splitSrtpKeyingMaterial(1, ex)!;
  t.ok(m.clientMasterKey.equals(ex.subarray(0, 16)));
  t.ok(m.serverMasterKey.equals(ex.subarray(16, 32)));
  t.ok(m.clientMasterSalt.equals(ex.subarray(32, 46)));
  t.ok(m.serverMasterSalt.equals(ex.subarray(46, 60)));
  t.equal(splitSrtpKeyingMaterial(0x99, ex), null);
  t.equal(splitSrtpKeyingMaterial(8, ex.subarray(0, 10)), null);
  const g = splitSrtpKeyingMaterial(8, randomBytes(88))!;
  t.equal(g.clientMasterKey.length, 32);
  t.equal(g.serverMasterSalt.length, 12);
});

t.test('HKDF against node:crypto hkdfSync; Expand-Label layout', async (t) => {
  for (const hash of ['sha256', 'sha384'] as const) {
    const ikm = randomBytes(40);
    const salt = randomBytes(20);
    const info = randomBytes(17);
    const want = Buffer.from(hkdfSync(hash, ikm, salt, info, 100));
    t.ok(hkdfExpand(hash, hkdfExtract(hash, salt, ikm), info, 100).equals(want), hash);
  }
  const secret = randomBytes(32);
  const ctx = randomBytes(32);
  // RFC 8446 §7.1 HkdfLabel: u16 length, u8 len + "tls13 " + label, u8 len + context.
  const info = Buffer.concat([Buffer.from([0, 16, 9]), Buffer.from('tls13 key'), Buffer.from([32]), ctx]);
  t.ok(hkdfExpandLabel('sha256', secret, 'key', ctx, 16).equals(hkdfExpand('sha256', secret, info, 16)));
  const info2 = Buffer.concat([Buffer.from([0, 12, 8]), Buffer.from('dtls13iv'), Buffer.from([0])]);
  t.ok(hkdfExpandLabel('sha256', secret, 'iv', Buffer.alloc(0), 12, 'dtls13').equals(hkdfExpand('sha256', secret, info2, 12)));
  // Exporter = Expand-Label(Derive-Secret(S, label, ""), "exporter", Hash(ctx), L)
  const e = tls13Exporter('sha256', secret, 'EXTRACTOR-dtls_srtp', Buffer.alloc(0), 60);
  t.equal(e.length, 60);
  t.notOk(e.equals(tls13Exporter('sha256', secret, 'EXTRACTOR-dtls_srtp', Buffer.alloc(0), 60, 'dtls13')), 'prefix matters');
});

t.test('known answer from a real OpenSSL session: key block from the key log authenticates real records', async (t) => {
  for (const name of ['gcm128-srtp-reneg.json', 'cbc-sha-etm.json', 'psk-cbc-sha256-mte.json', 'chacha20.json']) {
    const fx = loadFixture(name);
    const dg = datagrams(fx);
    const hh = { msgType: 0, length: 0, messageSeq: 0, fragmentOffset: 0, fragmentLength: 0 };
    let cr: Buffer | undefined;
    let sr: Buffer | undefined;
    let suite = 0;
    let etm = false;
    let chEtm = false;
    const app: { dir: string; r: ReturnType<typeof parseRecords>[number] }[] = [];
    for (const d of dg) {
      for (const r of parseRecords(d.data)) {
        if (r.epoch === 0 && r.type === 22) {
          const body = readHandshakeHeader(r.fragment, 0, hh);
          if (body < 0 || hh.fragmentLength !== hh.length) continue;
          const b = r.fragment.subarray(body, body + hh.length);
          if (hh.msgType === 1) {
            const ch = parseClientHello(b)!;
            cr = ch.random;
            chEtm = ch.encryptThenMac;
          }
          if (hh.msgType === 2 && !sr) {
            const sh = parseServerHello(b)!;
            sr = sh.random;
            suite = sh.cipherSuite;
            etm = chEtm && sh.encryptThenMac;
          }
        }
        if (r.type === CT_APPLICATION_DATA && r.epoch === 1) app.push({ dir: d.dir, r });
      }
    }
    const info = cipherSuiteInfo(suite)!;
    const ms = KeyLog.parse(fx.keylog).get(cr!.toString('hex'))!.masterSecret!;
    const kb = tls12KeyBlock(info.prfHash, ms, cr!, sr!, info);
    const mk = (c: boolean): DtlsRecordDecryptor =>
      new DtlsRecordDecryptor(suite, {
        key: c ? kb.clientWriteKey : kb.serverWriteKey,
        iv: c ? kb.clientWriteIv : kb.serverWriteIv,
        macKey: c ? kb.clientMacKey : kb.serverMacKey,
        encryptThenMac: etm,
      });
    const dc = mk(true);
    const ds = mk(false);
    const got = { c2s: '', s2c: '' } as Record<string, string>;
    for (const { dir, r } of app) {
      const pt = (dir === 'c2s' ? dc : ds).decrypt(r.type, r.version, r.epoch, r.seq, r.fragment);
      t.ok(pt, `${name}: record authenticates`);
      got[dir] += pt?.toString('latin1') ?? '';
      t.equal((dir === 'c2s' ? ds : dc).decrypt(r.type, r.version, r.epoch, r.seq, r.fragment), null, 'other direction keys fail');
    }
    t.equal(got.c2s, fx.c2s.join(''), `${name} c2s`);
    t.equal(got.s2c, fx.s2c.join(''), `${name} s2c`);
    if (fx.exportedKeyingMaterial) {
      const m = deriveSrtpTls12(info.prfHash, ms, cr!, sr!, 1)!;
      t.equal(
        Buffer.concat([m.clientMasterKey, m.serverMasterKey, m.clientMasterSalt, m.serverMasterSalt]).toString('hex'),
        fx.exportedKeyingMaterial,
        'EXTRACTOR-dtls_srtp equals s_client -keymatexport',
      );
    }
  }
});

t.test('the addon’s TLS 1.2 PRF (native/prf.c) and the JS one agree, and the JS one matches OpenSSL', async (t) => {
  for (const hash of ['sha256', 'sha384'] as const) {
    const secret = randomBytes(48);
    const seed = randomBytes(64);
    const js = tls12PrfJs(hash, secret, Buffer.concat([Buffer.from('key expansion'), seed]), Buffer.alloc(104));
    if (haveOpensslKdf)
      t.ok(js.equals(opensslPrf(hash.toUpperCase(), secret, 'key expansion', seed, 104)), `${hash}: JS PRF against OpenSSL`);
  }
  const nat = loadNative();
  // .ci/run builds the addon: in CI a missing one is a failure (this test would pass vacuously).
  if (!nat?.tls12Prf) {
    if (process.env.CI) t.fail('CI: native addon without tls12Prf (npm run build:native)');
    else t.comment('skipped: native addon not built');
    return;
  }
  const prf = nat.tls12Prf;
  let n = 0;
  for (const hash of ['sha256', 'sha384'] as const) {
    // Secrets shorter than, as long as and longer than the hash block (RFC 2104 §2 hashes those), empty too.
    for (const secretLen of [0, 1, 48, 64, 128, 129, 300]) {
      for (const outLen of [0, 1, 31, 32, 33, 48, 104, 200]) {
        const secret = randomBytes(secretLen);
        const seed = randomBytes(1 + ((secretLen * 7 + outLen) % 90));
        const a = Buffer.alloc(outLen);
        prf(hash === 'sha384', secret, seed, a);
        const b = tls12PrfJs(hash, secret, seed, Buffer.alloc(outLen));
        if (!a.equals(b)) t.fail(`${hash} secret ${secretLen} out ${outLen}`);
        n++;
      }
    }
  }
  t.equal(n, 112, 'every case compared');
  t.throws(() => prf(false, Buffer.alloc(1), 'seed' as unknown as Buffer, Buffer.alloc(1)), /tls12Prf/);
});
