// Gatehouse-Cert credentials (core.md §5) parsed strictly: RFC 9110 §11.2 auth-params,
// §5.6.4 quoted-string, §5.6.1 lists; canonical base64; bounds.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import {
  CERT_SCHEME,
  MAX_CHAIN,
  MAX_CERT_BYTES,
  certSignedBytes,
  formatCertAuthorization,
  parseCertAuthorization,
} from '../../../src/core/cert-header.js';
import { strictBase64 } from '../../../src/util/base64.js';
import { parseAuthParams } from '../../../src/core/auth-params.js';

const ch = randomBytes(24).toString('base64');
const sig = randomBytes(71);
const c1 = randomBytes(300);
const c2 = randomBytes(400);
const good = formatCertAuthorization(ch, sig, [c1, c2]);
const b1 = c1.toString('base64');

t.test('the client form parses back', async (t) => {
  const r = parseCertAuthorization(good);
  t.ok(r.ok);
  if (!r.ok) return;
  t.equal(r.creds.challenge, ch);
  t.same(r.creds.signature, sig);
  t.same(r.creds.chain, [c1, c2]);
  t.match(good, /^Gatehouse-Cert challenge="[^"]+", signature="[^"]+", chain="[^"]+,[^"]+"$/);
});

t.test('RFC 9110 §11: scheme and names case-insensitive, BWS around "=", OWS and empty list elements, token values', async (t) => {
  const s = `gatehouse-cert   CHALLENGE = "${ch}" ,, Signature="${sig.toString('base64')}",chain="${c1.toString('base64')}" ,`;
  const r = parseCertAuthorization(s);
  t.ok(r.ok, 'accepted');
  // A token value (base64 without "=" padding and no "/" fits a token only sometimes): the quoted form is what clients send.
  const p = parseAuthParams('a=b, c="d\\"e"');
  t.same(p && [...p], [
    ['a', 'b'],
    ['c', 'd"e'],
  ]);
});

t.test('refused: each rule, with a problem that names it and never the value', async (t) => {
  const cases: [string, string | undefined, RegExp][] = [
    ['no header', undefined, /no Authorization/],
    ['another scheme', `Digest username="a"`, /not Gatehouse-Cert/],
    ['scheme without params', CERT_SCHEME, /not Gatehouse-Cert/],
    ['missing chain', `${CERT_SCHEME} challenge="${ch}", signature="${sig.toString('base64')}"`, /required/],
    ['duplicate parameter', `${good}, chain="${c1.toString('base64')}"`, /auth-param syntax/],
    ['unknown parameter', `${good}, extra="1"`, /unknown parameter extra/],
    ['no comma between params', good.replace('", signature', '" signature'), /auth-param syntax/],
    ['unterminated quote', good.slice(0, -1), /auth-param syntax/],
    ['control character in a quoted string', good.replace('chain="', 'chain="\u0001'), /auth-param syntax/],
    ['token68 instead of params', `${CERT_SCHEME} ${ch}`, /auth-param syntax/],
    ['challenge of 16 bytes', formatCertAuthorization(randomBytes(16).toString('base64'), sig, [c1]), /24 bytes/],
    ['challenge with a space', good.replace(`challenge="${ch}"`, `challenge="${ch.slice(0, 4)} ${ch.slice(4)}"`), /24 bytes/],
    ['whitespace inside the chain', good.replace(`${b1},`, `${b1}, `), /chain element/],
    ['empty chain element', good.replace(`${b1},`, `${b1},,`), /chain element/],
    ['a certificate too large', formatCertAuthorization(ch, sig, [randomBytes(MAX_CERT_BYTES + 1)]), /at most/],
    [
      'too many certificates',
      formatCertAuthorization(
        ch,
        sig,
        Array.from({ length: MAX_CHAIN + 1 }, () => c1),
      ),
      /more than/,
    ],
    ['signature not base64', good.replace(/signature="[^"]+"/, 'signature="!!!!"'), /signature/],
    ['too long', `${CERT_SCHEME} challenge="${'A'.repeat(70_000)}"`, /too long/],
  ];
  for (const [what, h, re] of cases) {
    const r = parseCertAuthorization(h);
    t.notOk(r.ok, `${what}: refused`);
    if (!r.ok) {
      t.match(r.problem, re, `${what}: ${r.problem}`);
      t.notMatch(r.problem, ch, `${what}: the value is not repeated`);
    }
  }
});

t.test('strictBase64: padded, canonical, bounded', async (t) => {
  t.same(strictBase64('AAE=', 10), Buffer.from([0, 1]));
  t.equal(strictBase64('AAE', 10), null, 'unpadded');
  t.equal(strictBase64('AAF=', 10), null, 'non-canonical final bits');
  t.equal(strictBase64('AA E=', 10), null, 'whitespace');
  t.equal(strictBase64('AAAAAAAA', 3), null, 'over the bound');
  t.equal(strictBase64('', 3), null, 'empty');
});

t.test('the signed bytes: ASCII context then the 24 challenge bytes (core.md §5)', async (t) => {
  const b = randomBytes(24);
  const s = certSignedBytes(b);
  t.equal(s.subarray(0, 27).toString('ascii'), 'gatehouse-core cert-auth v1');
  t.same(s.subarray(27), b);
  t.equal(s.length, 51);
});
