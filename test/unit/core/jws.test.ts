// ES256 compact JWS (src/core/jws.ts, RFC 7515 §7.1, RFC 7518 §3.4): round trip, the
// signature is 64 octets R||S (a DER signature is refused), alg exactly ES256 (none and
// HS256 refused, also HS256 keyed with the PEM of the public key), only alg/typ in the
// header, strict base64url and JSON (no duplicates, valid UTF-8). OpenSSL's CLI checks
// our signatures and makes one we verify (an independent ECDSA).
import t from 'tap';
import { createHmac, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJws, JwsError, headerProblem, signEs256, verifyEs256 } from '../../../src/core/jws.js';
import { strictBase64url } from '../../../src/util/base64.js';
import { parseStrictObject } from '../../../src/util/strict-json.js';

const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const b64u = (x: string | Buffer) => Buffer.from(x).toString('base64url');
const payload = { typ: 'gatehouse-transfer', sub: 'alice', n: 1 };

const verifies = (jws: string, key: KeyObject = publicKey) => {
  const d = decodeJws(jws);
  return headerProblem(d.header) === null && verifyEs256(d, key);
};

/** DER ECDSA-Sig-Value (RFC 3279 §2.2.3) of R||S, and back: what OpenSSL speaks. */
function derOf(rs: Buffer): Buffer {
  const int = (b: Buffer) => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i++;
    let v = b.subarray(i);
    if (v[0]! & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
    return Buffer.concat([Buffer.from([0x02, v.length]), v]);
  };
  const body = Buffer.concat([int(rs.subarray(0, 32)), int(rs.subarray(32))]);
  return Buffer.concat([Buffer.from([0x30, body.length]), body]);
}
function rsOf(der: Buffer): Buffer {
  let o = 2;
  const part = () => {
    const len = der[o + 1]!;
    const v = der.subarray(o + 2, o + 2 + len);
    o += 2 + len;
    const s = v.length > 32 ? v.subarray(v.length - 32) : v;
    return Buffer.concat([Buffer.alloc(32 - s.length), s]);
  };
  return Buffer.concat([part(), part()]);
}

t.test('round trip; header is exactly {alg: ES256, typ: JWT}; signature 64 octets', async (t) => {
  const jws = signEs256(payload, privateKey);
  const [h, p, s] = jws.split('.');
  t.same(JSON.parse(Buffer.from(h!, 'base64url').toString()), { alg: 'ES256', typ: 'JWT' });
  t.same(JSON.parse(Buffer.from(p!, 'base64url').toString()), payload);
  t.equal(Buffer.from(s!, 'base64url').length, 64, 'R||S, RFC 7518 §3.4');
  t.notMatch(jws, /[=+/]/, 'base64url without padding');
  t.ok(verifies(jws));
  t.notOk(verifies(jws, other.publicKey), 'another key');
  t.same(decodeJws(jws).payload, payload);
  t.throws(() => signEs256(payload, generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey), /P-256/);
});

t.test('OpenSSL verifies our signature and signs one we verify', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jws-'));
  const pub = join(dir, 'pub.pem');
  const key = join(dir, 'key.pem');
  writeFileSync(pub, publicKey.export({ type: 'spki', format: 'pem' }));
  writeFileSync(key, privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const jws = signEs256(payload, privateKey);
  const input = jws.slice(0, jws.lastIndexOf('.'));
  writeFileSync(join(dir, 'input'), input);
  writeFileSync(join(dir, 'sig.der'), derOf(Buffer.from(jws.split('.')[2]!, 'base64url')));
  const out = execFileSync('openssl', [
    'dgst',
    '-sha256',
    '-verify',
    pub,
    '-signature',
    join(dir, 'sig.der'),
    join(dir, 'input'),
  ]).toString();
  t.match(out, /Verified OK/);
  // OpenSSL signs (DER); as R||S it verifies here; as DER it is refused.
  const h = b64u(JSON.stringify({ alg: 'ES256' }));
  const p = b64u(JSON.stringify({ from: 'openssl' }));
  writeFileSync(join(dir, 'input2'), `${h}.${p}`);
  execFileSync('openssl', ['dgst', '-sha256', '-sign', key, '-out', join(dir, 'sig2.der'), join(dir, 'input2')]);
  const der = readFileSync(join(dir, 'sig2.der'));
  t.ok(verifies(`${h}.${p}.${b64u(rsOf(der))}`), 'OpenSSL signature, R||S');
  t.notOk(verifies(`${h}.${p}.${b64u(der)}`), 'the DER form is not an ES256 signature');
});

t.test('alg none, HS256 (also keyed with the public key PEM), other algs, extra header members: refused', async (t) => {
  const p = b64u(JSON.stringify(payload));
  const none = `${b64u('{"alg":"none"}')}.${p}.`;
  t.match(headerProblem(decodeJws(none).header), /not ES256/);
  t.notOk(verifies(none));
  const pem = publicKey.export({ type: 'spki', format: 'pem' }) as string;
  for (const secret of [pem, 'secret']) {
    const h = b64u('{"alg":"HS256","typ":"JWT"}');
    const mac = createHmac('sha256', secret).update(`${h}.${p}`).digest();
    t.notOk(verifies(`${h}.${p}.${b64u(mac)}`), 'HS256');
    t.notOk(verifyEs256(decodeJws(`${h}.${p}.${b64u(mac)}`), publicKey), 'verifyEs256 itself refuses the header');
  }
  const good = signEs256(payload, privateKey);
  const sig = good.split('.')[2];
  for (const hdr of [
    '{"alg":"ES384"}',
    '{"alg":"es256"}',
    '{"alg":"ES256","crit":["x"],"x":1}',
    '{"alg":"ES256","kid":"a"}',
    '{"alg":"ES256","jwk":{}}',
    '{"alg":"ES256","typ":"JOSE+JSON"}',
    '{"typ":"JWT"}',
  ]) {
    t.ok(headerProblem(decodeJws(`${b64u(hdr)}.${p}.${sig}`).header), hdr);
    t.notOk(verifies(`${b64u(hdr)}.${p}.${sig}`), hdr);
  }
  t.equal(headerProblem({ alg: 'ES256' }), null, 'typ may be absent');
});

t.test('tampering: payload, header, signature', async (t) => {
  const jws = signEs256(payload, privateKey);
  const [h, , s] = jws.split('.');
  t.notOk(verifies(`${h}.${b64u(JSON.stringify({ ...payload, sub: 'mallory' }))}.${s}`));
  const sb = Buffer.from(s!, 'base64url');
  sb[10] ^= 1;
  t.notOk(verifies(`${h}.${jws.split('.')[1]}.${b64u(sb)}`));
  t.notOk(verifies(`${h}.${jws.split('.')[1]}.${b64u(sb.subarray(0, 63))}`), '63 octets');
  t.notOk(verifies(`${h}.${jws.split('.')[1]}.${b64u(Buffer.concat([sb, Buffer.from([0])]))}`), '65 octets');
});

t.test('strict parsing', async (t) => {
  const jws = signEs256(payload, privateKey);
  const [h, p, s] = jws.split('.') as [string, string, string];
  const bad = [
    '',
    `${h}.${p}`,
    `${h}.${p}.${s}.x`,
    `${h}.${p}.${s}.x.y`,
    `${h}=.${p}.${s}`,
    `${h}.${p}.${s.replace(/-/g, '+').replace(/_/g, '/')}+`,
    ` ${h}.${p}.${s}`,
    `${b64u('[1]')}.${p}.${s}`,
    `${b64u('{"alg":"ES256","alg":"none"}')}.${p}.${s}`,
    `${h}.${b64u('{"sub":"a","sub":"b"}')}.${s}`,
    `${h}.${b64u(Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]))}.${s}`,
    `${h}.${b64u('')}.${s}`,
    'x'.repeat(5000),
  ];
  for (const b of bad) {
    let err: unknown = null;
    try {
      decodeJws(b);
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof JwsError && err.reason === 'malformed', JSON.stringify(b.slice(0, 40)));
  }
  t.same(strictBase64url('QQ'), Buffer.from('A'));
  t.equal(strictBase64url('QR'), null, 'stray low bits are not canonical');
  t.equal(strictBase64url('Q'), null);
  t.same(
    parseStrictObject(Buffer.from('{"a":{"a":1,"b":2},"b":"a"}')),
    { a: { a: 1, b: 2 }, b: 'a' },
    'nested names may repeat outer ones',
  );
  t.same(parseStrictObject(Buffer.from('{"a":"x\\"y,\\"a\\":1"}')), { a: 'x"y,"a":1' }, 'escaped quotes inside strings');
  t.equal(parseStrictObject(Buffer.from('{"a":1, "a" :2}')), null, 'duplicate with whitespace');
  t.equal(parseStrictObject(Buffer.from('{"\\u0061":1,"a":2}')), null, 'duplicate through an escape');
  t.equal(parseStrictObject(Buffer.from('null')), null);
});
