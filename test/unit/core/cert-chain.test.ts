// Chain building of certificate login (core.md §5, RFC 5280 §6.1) on certificates made
// in-process with @peculiar/x509: the edge cases openssl's CA tooling makes awkward
// (pathLenConstraint, an unknown critical extension, not yet valid, keyUsage and EKU
// variants, extra certificates after the root, order, length) and CRL edge cases (a CRL
// signed by another key, an issuer without cRLSign, an unreadable file at start). Also
// the mechanism's user mapping with a directory (a stub Directory: the seam LDAP fills).
import 'reflect-metadata';
import t from 'tap';
import { webcrypto, X509Certificate as NodeCert, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { ChainError, parseCert, validateChain, type ParsedCert } from '../../../src/core/x509-chain.js';
import { CrlStore } from '../../../src/core/x509-crl.js';
import { certMechanism, verifyCertSignature } from '../../../src/core/cert-login.js';
import { formatCertAuthorization } from '../../../src/core/cert-header.js';
import { signChallenge } from '../../../src/cli/login.js';
import { ChallengeStore } from '../../../src/core/challenges.js';
import { ManualClock } from '../../../src/util/clock.js';
import { CoreError } from '../../../src/core/errors.js';
import type { CoreContext, Directory } from '../../../src/core/director.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);
const subtle = webcrypto.subtle;
const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIG = { name: 'ECDSA', hash: 'SHA-256' } as const;
const NOW = Date.UTC(2026, 11, 1, 12, 0, 0);
const DAY = 86_400_000;

interface Made {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
  p: ParsedCert;
}
let serial = 1;
async function make(
  cn: string,
  issuer: Made | null,
  o: {
    ca?: boolean;
    pathLen?: number;
    ku?: number;
    eku?: string[];
    extra?: x509.Extension[];
    from?: number;
    to?: number;
    noBc?: boolean;
  } = {},
): Promise<Made> {
  const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const extensions: x509.Extension[] = [];
  if (!o.noBc) extensions.push(new x509.BasicConstraintsExtension(!!o.ca, o.pathLen, true));
  if (o.ku !== undefined) extensions.push(new x509.KeyUsagesExtension(o.ku, true));
  if (o.eku) extensions.push(new x509.ExtendedKeyUsageExtension(o.eku, false));
  extensions.push(...(o.extra ?? []));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: (serial++).toString(16).padStart(2, '0'),
    subject: `CN=${cn}`,
    issuer: issuer ? issuer.cert.subject : `CN=${cn}`,
    notBefore: new Date(o.from ?? NOW - DAY),
    notAfter: new Date(o.to ?? NOW + 30 * DAY),
    signingAlgorithm: SIG,
    publicKey: keys.publicKey,
    signingKey: issuer ? issuer.keys.privateKey : keys.privateKey,
    extensions,
  });
  return { cert, keys, p: parseCert(Buffer.from(cert.rawData))! };
}
const CA_KU = x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign;
const LEAF_KU = x509.KeyUsageFlags.digitalSignature;
const CLIENT = '1.3.6.1.5.5.7.3.2';

async function reason(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    if (err instanceof ChainError) return err.reason;
    throw err;
  }
}

t.test('chain building (RFC 5280 §6.1)', async (t) => {
  const root = await make('Root', null, { ca: true, ku: CA_KU });
  const i1 = await make('I1', root, { ca: true, ku: CA_KU, pathLen: 0 });
  const i2 = await make('I2', root, { ca: true, ku: CA_KU, pathLen: 1 });
  const i2b = await make('I2b', i2, { ca: true, ku: CA_KU });
  const leaf1 = await make('alice', i1, { ku: LEAF_KU, eku: [CLIENT] });
  const roots = [root.p];
  const v = (chain: Made[], at = NOW) =>
    reason(
      validateChain(
        chain.map((c) => c.p),
        roots,
        at,
      ),
    );

  t.equal(await v([leaf1, i1]), 'ok', 'leaf → intermediate (pathLen 0) → root');
  t.equal(await v([leaf1, i1, root]), 'ok', 'the root may end the chain');
  t.equal(await v([leaf1, i1, root, root]), 'extra_after_root', 'nothing after the root');
  const reissued = await x509.X509CertificateGenerator.create({
    serialNumber: 'ff01',
    subject: root.cert.subject,
    issuer: root.cert.subject,
    notBefore: new Date(NOW - 2 * DAY),
    notAfter: new Date(NOW + 300 * DAY),
    signingAlgorithm: SIG,
    publicKey: root.keys.publicKey,
    signingKey: root.keys.privateKey,
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
  });
  t.equal(
    await v([leaf1, i1, { p: parseCert(Buffer.from(reissued.rawData))! } as Made]),
    'ok',
    'another certificate of the same root (subject and key) may end the chain',
  );
  t.equal(await v([leaf1, i1, i2]), 'extra_after_root', 'an unrelated certificate after the anchor');
  t.equal(await v([leaf1]), 'no_root', 'the intermediate missing');
  t.equal(await v([i1, leaf1]), 'key_usage', 'out of order: the CA first is a leaf without digitalSignature');
  t.equal(await v([root]), 'root_as_leaf', 'a trust root as the leaf');
  t.equal(await v([]), 'malformed', 'empty');
  t.equal(await v(Array.from({ length: 9 }, () => leaf1)), 'too_long', 'more than 8');

  // pathLenConstraint: I2 (pathLen 1) → I2b → I3 → leaf: I2 has 2 intermediates below.
  const i3 = await make('I3', i2b, { ca: true, ku: CA_KU });
  const deep = await make('deep', i3, { ku: LEAF_KU });
  t.equal(await v([deep, i3, i2b, i2]), 'path_len', 'pathLenConstraint 1 with two intermediates below');
  const ok2 = await make('ok2', i2b, { ku: LEAF_KU });
  t.equal(await v([ok2, i2b, i2]), 'ok', 'pathLenConstraint 1 with one intermediate below');
  const i1sub = await make('I1sub', i1, { ca: true, ku: CA_KU });
  const l3 = await make('l3', i1sub, { ku: LEAF_KU });
  t.equal(await v([l3, i1sub, i1]), 'path_len', 'pathLenConstraint 0 with an intermediate below');
  const rootPl0 = await make('RootPL0', null, { ca: true, ku: CA_KU, pathLen: 0 });
  const ia = await make('IA', rootPl0, { ca: true, ku: CA_KU });
  const la = await make('la', ia, { ku: LEAF_KU });
  t.equal(await reason(validateChain([la.p, ia.p], [rootPl0.p], NOW)), 'path_len', "the root's own pathLenConstraint");

  // basicConstraints and keyUsage of issuers.
  const notCa = await make('NotCA', root, { ca: false, ku: CA_KU });
  t.equal(await v([await make('x', notCa, { ku: LEAF_KU }), notCa]), 'not_ca', 'cA=FALSE in the middle');
  const noBc = await make('NoBC', root, { noBc: true, ku: CA_KU });
  t.equal(await v([await make('x', noBc, { ku: LEAF_KU }), noBc]), 'not_ca', 'no basicConstraints in the middle');
  const noSign = await make('NoSign', root, { ca: true, ku: x509.KeyUsageFlags.cRLSign });
  t.equal(await v([await make('x', noSign, { ku: LEAF_KU }), noSign]), 'key_usage', 'keyUsage without keyCertSign');
  const noKu = await make('NoKU', root, { ca: true });
  t.equal(
    await v([await make('x', noKu, { ku: LEAF_KU }), noKu]),
    'ok',
    'a CA without keyUsage (RFC 5280 §6.1.4 (n): only checked when present)',
  );

  // The leaf's usages.
  t.equal(await v([await make('x', i1, { ku: x509.KeyUsageFlags.keyEncipherment }), i1]), 'key_usage', 'keyUsage without digitalSignature');
  t.equal(await v([await make('x', i1, { eku: ['1.3.6.1.5.5.7.3.1'] }), i1]), 'ext_key_usage', 'EKU serverAuth only');
  t.equal(await v([await make('x', i1, { eku: ['2.5.29.37.0'] }), i1]), 'ext_key_usage', 'anyExtendedKeyUsage alone');
  t.equal(await v([await make('x', i1, {}), i1]), 'ok', 'no keyUsage and no EKU');

  // Critical extensions this code does not process.
  const weird = await make('x', i1, { extra: [new x509.Extension('1.3.6.1.4.1.99999.1', true, new Uint8Array([5, 0]))] });
  t.equal(await v([weird, i1]), 'unknown_critical', 'an unknown critical extension');
  const fine = await make('x', i1, { extra: [new x509.Extension('1.3.6.1.4.1.99999.1', false, new Uint8Array([5, 0]))] });
  t.equal(await v([fine, i1]), 'ok', 'the same, not critical');

  // Validity periods (RFC 5280 §4.1.2.5: inclusive).
  const soon = await make('x', i1, { from: NOW + DAY });
  t.equal(await v([soon, i1]), 'not_yet_valid', 'notBefore in the future');
  t.equal(await v([leaf1, i1], NOW + 31 * DAY), 'expired', 'past notAfter');
  t.equal(await v([leaf1, i1], leaf1.cert.notAfter.getTime()), 'ok', 'at notAfter exactly');
  const oldInt = await make('OldI', root, { ca: true, ku: CA_KU, to: NOW - 1 });
  t.equal(await v([await make('x', oldInt, { ku: LEAF_KU }), oldInt]), 'expired', 'an expired intermediate');
  const oldRoot = await make('OldRoot', null, { ca: true, ku: CA_KU, to: NOW - 1 });
  const ol = await make('ol', oldRoot, {});
  t.equal(await reason(validateChain([ol.p], [oldRoot.p], NOW)), 'expired', 'an expired root');

  // Names and signatures.
  const other = await make('Root', null, { ca: true, ku: CA_KU }); // same name, another key
  const forged = await make('mallory', other, {});
  t.equal(await v([forged]), 'no_root', 'issuer name of a root but another key');
  t.equal(await v([forged, other]), 'no_root', 'the look-alike root sent along: its key is not trusted');
  const fakeI1 = await make('I1', root, { ca: true, ku: CA_KU }); // I1's name, another key
  t.equal(await v([await make('x', fakeI1, {}), i1]), 'bad_signature', "issued in I1's name by another key, sent with the real I1");
  t.equal(await v([leaf1, await make('I9', root, { ca: true, ku: CA_KU })]), 'issuer_mismatch', 'the next certificate is not the issuer');
});

t.test('CRL edge cases (RFC 5280 §6.3)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-crl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const root = await make('Root', null, { ca: true, ku: CA_KU });
  const leaf = await make('alice', root, {});
  const imposter = await make('Root', null, { ca: true, ku: CA_KU });
  const crl = async (signer: Made, o: { next?: number; revoke?: string } = {}) =>
    x509.X509CrlGenerator.create({
      issuer: root.cert.subject,
      thisUpdate: new Date(NOW - DAY),
      nextUpdate: new Date(o.next ?? NOW + DAY),
      entries: o.revoke ? [{ serialNumber: o.revoke, revocationDate: new Date(NOW - DAY) }] : [],
      signingAlgorithm: SIG,
      signingKey: signer.keys.privateKey,
    });
  const file = (name: string, c: x509.X509Crl) => {
    const p = join(dir, name);
    writeFileSync(p, c.toString('pem'));
    return p;
  };
  const check = (f: string) => reason(validateChain([leaf.p], [root.p], NOW, new CrlStore([f], () => NOW)));
  t.equal(await check(file('ok.crl', await crl(root))), 'ok', 'a current CRL without the leaf');
  t.equal(await check(file('rev.crl', await crl(root, { revoke: leaf.cert.serialNumber }))), 'revoked', 'the leaf listed');
  t.equal(
    await check(file('forged.crl', await crl(imposter, { revoke: '77' }))),
    'crl_unusable',
    "a CRL in the issuer's name signed by another key",
  );
  t.equal(await check(file('stale.crl', await crl(root, { next: NOW - 1 }))), 'crl_unusable', 'past nextUpdate');
  // The issuer's name in another case (RFC 5280 §7.1 folds it) is the same issuer: applied.
  const shouted = await x509.X509CrlGenerator.create({
    issuer: root.cert.subject.toUpperCase(),
    thisUpdate: new Date(NOW - DAY),
    nextUpdate: new Date(NOW + DAY),
    entries: [{ serialNumber: leaf.cert.serialNumber, revocationDate: new Date(NOW - DAY) }],
    signingAlgorithm: SIG,
    signingKey: root.keys.privateKey,
  });
  t.not(shouted.issuer, root.cert.subject, 'the CRL names the issuer in another case');
  t.equal(await check(file('shouted.crl', shouted)), 'revoked', 'a CRL naming the issuer in another case still revokes');
  // A CRL under another name whose authorityKeyIdentifier is the issuer's key (§5.2.1).
  const keyed = await make('KeyedRoot', null, { ca: true, ku: CA_KU });
  const skiRoot = await x509.X509CertificateGenerator.create({
    serialNumber: (serial++).toString(16).padStart(2, '0'),
    subject: 'CN=SkiRoot',
    issuer: 'CN=SkiRoot',
    notBefore: new Date(NOW - DAY),
    notAfter: new Date(NOW + 30 * DAY),
    signingAlgorithm: SIG,
    publicKey: keyed.keys.publicKey,
    signingKey: keyed.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(CA_KU, true),
      await x509.SubjectKeyIdentifierExtension.create(keyed.keys.publicKey),
    ],
  });
  const skiRootP = parseCert(Buffer.from(skiRoot.rawData))!;
  const skiLeaf = await x509.X509CertificateGenerator.create({
    serialNumber: (serial++).toString(16).padStart(2, '0'),
    subject: 'CN=bob',
    issuer: 'CN=SkiRoot',
    notBefore: new Date(NOW - DAY),
    notAfter: new Date(NOW + 30 * DAY),
    signingAlgorithm: SIG,
    publicKey: leaf.keys.publicKey,
    signingKey: keyed.keys.privateKey,
    extensions: [new x509.BasicConstraintsExtension(false, undefined, true)],
  });
  const byKey = await x509.X509CrlGenerator.create({
    issuer: 'CN=SkiRoot (renamed)',
    thisUpdate: new Date(NOW - DAY),
    nextUpdate: new Date(NOW + DAY),
    entries: [{ serialNumber: skiLeaf.serialNumber, revocationDate: new Date(NOW - DAY) }],
    signingAlgorithm: SIG,
    signingKey: keyed.keys.privateKey,
    extensions: [await x509.AuthorityKeyIdentifierExtension.create(keyed.keys.publicKey)],
  });
  t.equal(
    await reason(
      validateChain([parseCert(Buffer.from(skiLeaf.rawData))!], [skiRootP], NOW, new CrlStore([file('bykey.crl', byKey)], () => NOW)),
    ),
    'revoked',
    "a CRL whose authorityKeyIdentifier is the issuer's subjectKeyIdentifier applies under another name",
  );
  const scoped = await x509.X509CrlGenerator.create({
    issuer: root.cert.subject,
    thisUpdate: new Date(NOW - DAY),
    nextUpdate: new Date(NOW + DAY),
    signingAlgorithm: SIG,
    signingKey: root.keys.privateKey,
    // issuingDistributionPoint (RFC 5280 §5.2.5), critical: a partitioned CRL, not processed here.
    extensions: [new x509.Extension('2.5.29.28', true, new Uint8Array([0x30, 0x03, 0x81, 0x01, 0xff]))],
  });
  t.equal(await check(file('scoped.crl', scoped)), 'crl_unusable', 'a critical issuingDistributionPoint (partitioned CRL)');
  const delta = await x509.X509CrlGenerator.create({
    issuer: root.cert.subject,
    thisUpdate: new Date(NOW - DAY),
    nextUpdate: new Date(NOW + DAY),
    signingAlgorithm: SIG,
    signingKey: root.keys.privateKey,
    extensions: [new x509.Extension('2.5.29.27', true, new Uint8Array([0x02, 0x01, 0x01]))],
  });
  t.equal(await check(file('delta.crl', delta)), 'crl_unusable', 'a delta CRL');
  const noCrlSign = await make('NoCrl', null, { ca: true, ku: x509.KeyUsageFlags.keyCertSign });
  const l2 = await make('l2', noCrlSign, {});
  const c2 = await x509.X509CrlGenerator.create({
    issuer: noCrlSign.cert.subject,
    thisUpdate: new Date(NOW - DAY),
    nextUpdate: new Date(NOW + DAY),
    signingAlgorithm: SIG,
    signingKey: noCrlSign.keys.privateKey,
  });
  t.equal(
    await reason(validateChain([l2.p], [noCrlSign.p], NOW, new CrlStore([file('c2.crl', c2)], () => NOW))),
    'crl_unusable',
    'an issuer without cRLSign',
  );
  const bad = join(dir, 'bad.crl');
  writeFileSync(bad, 'nonsense');
  t.throws(() => new CrlStore([bad], () => NOW), /core\.trust\.crls\[0\]/, 'a bad file at start names its key');
  t.throws(() => new CrlStore([join(dir, 'none')], () => NOW), /core\.trust\.crls\[0\]/, 'a missing file too');
});

t.test('the mechanism: signatures, the challenge, and the user from the directory', async (t) => {
  const root = await make('Root', null, { ca: true, ku: CA_KU });
  const leaf = await make('alice', root, { ku: LEAF_KU, eku: [CLIENT] });
  const ghost = await make('ghost', root, {});
  const clock = new ManualClock(NOW);
  const challenges = new ChallengeStore(clock);
  const pkcs8 = Buffer.from(await subtle.exportKey('pkcs8', leaf.keys.privateKey));
  const { createPrivateKey } = await import('node:crypto');
  const key = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
  const ghostKey = createPrivateKey({
    key: Buffer.from(await subtle.exportKey('pkcs8', ghost.keys.privateKey)),
    format: 'der',
    type: 'pkcs8',
  });
  let dirDown = false;
  const directory: Directory = {
    async user(name) {
      if (dirDown) throw new CoreError('unavailable', 'the directory cannot be reached');
      return name === 'alice' ? { name: 'alice', groups: ['trading'], org: 'example' } : null;
    },
    async authenticate() {
      return null;
    },
  };
  const core = {
    cfg: { realm: 'REALM' },
    challenges,
    clock,
    directory,
    users: { lookup: () => undefined },
  } as unknown as CoreContext;
  const m = certMechanism(core, [root.p], null);
  t.equal(m.challenge({} as never), 'Gatehouse-Cert realm="REALM"');
  const ctx = (authorization: string, source = '192.0.2.1') => ({ req: { headers: { authorization } }, source }) as never;
  const answer = (who: Made, k = key) => {
    const c = challenges.issue('192.0.2.1');
    const sig = signChallenge(k, Buffer.from(c.challenge, 'base64'));
    t.ok(
      verifyCertSignature(new NodeCert(who.p.der).publicKey, Buffer.from(c.challenge, 'base64'), sig) ===
        (k === key ? who === leaf : who === ghost),
    );
    return formatCertAuthorization(c.challenge, sig, [who.p.der]);
  };
  t.same(await m.verify(ctx(answer(leaf))), { user: 'alice', groups: ['trading'], org: 'example' }, "the directory's groups and org");
  await t.rejects(
    m.verify(ctx(answer(ghost, ghostKey))),
    { code: 'unauthenticated', message: /no user in the directory/ },
    'a CN the directory does not know',
  );
  dirDown = true;
  await t.rejects(m.verify(ctx(answer(leaf))), { code: 'unavailable' }, 'a directory outage: 503, never an admit');
  await t.rejects(m.verify(ctx(answer(leaf), '192.0.2.2')), { code: 'replayed' }, 'another source');
  await t.rejects(m.verify(ctx(answer(leaf, ghostKey))), { code: 'untrusted', message: /signature/ }, 'another key');
  await t.rejects(m.verify(ctx('Gatehouse-Cert nonsense')), { code: 'unauthenticated' }, 'malformed');
  const bad = formatCertAuthorization(challenges.issue('192.0.2.1').challenge, randomBytes(64), [randomBytes(100)]);
  await t.rejects(m.verify(ctx(bad)), { code: 'untrusted', message: /not a DER X.509 certificate/ }, 'garbage as a certificate');
});
