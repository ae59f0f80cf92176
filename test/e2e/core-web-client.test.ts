// The web client in a real Chromium, on its own (no director needed): the page loads
// under its strict CSP with no violation and no error, every control is reachable by its
// label, and the browser-side protocol code (src/core/web/lib.js, WebCrypto) agrees with
// Node's crypto: the RFC 7616 Digest SHA-256 answer, the RSA-OAEP SHA-256 conference key
// (decrypted here with the private key), the conference key's size and alphabet, and the
// WWW-Authenticate parser on several challenges in one header.
import t from 'tap';
import { createHash, generateKeyPairSync, privateDecrypt, constants } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { serveIndex, webRoutes } from '../../src/core/web.js';
import { launchChromium, type TestBrowser } from './helpers/browser.js';
import { peerSkip } from './helpers/require-peer.js';

const skip = peerSkip(t, 'chromium');
const h = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');
export const ARTIFACTS = join(import.meta.dirname, '../../.tap/artifacts/core-web');

t.test('the web client under its CSP; lib.js against Node crypto', { skip, timeout: 120_000 }, async (t) => {
  const routes = webRoutes();
  const srv: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const m = /^\/web\/([^/]+)$/.exec(url.pathname);
    if (url.pathname === '/') return routes[0]!.handler({ req, res, params: {} });
    if (m) {
      try {
        return routes[2]!.handler({ req, res, params: { file: m[1]! } });
      } catch {
        return void res.writeHead(404).end();
      }
    }
    if (url.pathname.startsWith('/i/') || url.pathname.startsWith('/join/')) return serveIndex(res, req.method);
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  let tb: TestBrowser | null = null;
  t.teardown(async () => {
    await tb?.close();
    await new Promise<void>((r) => srv.close(() => r()));
  });
  const base = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  tb = await launchChromium({ fakeMedia: false });
  const page = await tb.newPage('client');
  const violations: string[] = [];
  await page.exposeFunction('__cspViolation', (s: string) => violations.push(s));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      (window as unknown as { __cspViolation(s: string): void }).__cspViolation(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  await page.goto(`${base}/`);
  await page.getByRole('heading', { name: 'Gatehouse conferencing' }).waitFor();
  await page.waitForFunction(() => 'gatehouse' in window, undefined, { timeout: 10_000 });
  // An inline script is refused (the CSP is in force, not just sent).
  await page.evaluate(() => {
    const s = document.createElement('script');
    s.textContent = 'window.__inlineRan = true';
    document.body.append(s);
  });
  await page.waitForTimeout(200);
  t.equal(
    await page.evaluate(() => (window as unknown as { __inlineRan?: boolean }).__inlineRan ?? false),
    false,
    'inline script does not run',
  );
  t.ok(
    violations.some((v) => v.startsWith('script-src')),
    `the refusal is a script-src violation (${violations.join('; ')})`,
  );
  const beforeOwn = violations.length;

  for (const label of [
    'User name',
    'Password',
    'Conference title',
    'Room title',
    'Conference (join URL or ID)',
    'Your name',
    'Conference key',
  ]) {
    t.equal(await page.getByLabel(label, { exact: true }).count(), 1, `control labelled “${label}”`);
  }
  t.ok(await page.getByRole('button', { name: 'Create conference' }).isDisabled(), 'creating needs a login first');
  // Keyboard: Tab from the start reaches the user name field first.
  await page.keyboard.press('Tab');
  t.equal(await page.evaluate(() => document.activeElement?.id), 'login-user', 'Tab reaches the login form');

  // RFC 7616 §3.4.1 with fixed inputs, computed in the browser and here.
  const ch = 'Negotiate, Digest realm="conference:c1", qop="auth", algorithm=SHA-256, nonce="nOnCe", opaque="OPQ", Gatehouse-Cert';
  const got = await page.evaluate(async (ch) => {
    const lib = await import('/web/lib.js' as string);
    const all = lib.parseChallenges(ch);
    const challenge = all.find((c: { scheme: string }) => c.scheme === 'Digest');
    const plain = await lib.digestAuthorization({
      challenge,
      method: 'POST',
      uri: '/v1/conferences/c1/join',
      username: 'Ann',
      password: 'K',
      cnonce: 'cn',
      nc: 1,
    });
    const utf = await lib.digestAuthorization({
      challenge,
      method: 'POST',
      uri: '/x',
      username: 'Zoë "Z"',
      password: 'K',
      cnonce: 'cn',
      nc: 2,
    });
    return { schemes: all.map((c: { scheme: string }) => c.scheme), params: challenge.params, plain, utf };
  }, ch);
  t.same(got.schemes, ['Negotiate', 'Digest', 'Gatehouse-Cert'], 'three challenges read from one header');
  t.same(got.params, { realm: 'conference:c1', qop: 'auth', algorithm: 'SHA-256', nonce: 'nOnCe', opaque: 'OPQ' });
  const resp = h(`${h('Ann:conference:c1:K')}:nOnCe:00000001:cn:auth:${h('POST:/v1/conferences/c1/join')}`);
  t.equal(
    got.plain,
    `Digest username="Ann", realm="conference:c1", uri="/v1/conferences/c1/join", algorithm=SHA-256, nonce="nOnCe", nc=00000001, cnonce="cn", qop=auth, response="${resp}", opaque="OPQ"`,
    'the Digest answer matches Node’s SHA-256',
  );
  const resp2 = h(`${h('Zoë "Z":conference:c1:K')}:nOnCe:00000002:cn:auth:${h('POST:/x')}`);
  t.match(got.utf, `username*=UTF-8''Zo%C3%AB%20%22Z%22,`, 'a non-ASCII identity goes in username* (RFC 8187)');
  t.match(got.utf, `response="${resp2}"`);

  // core.md §4.2: K has ≥128 random bits in base64url; RSA-OAEP SHA-256, MGF1-SHA-256, empty label.
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const enc = await page.evaluate(async (pem) => {
    const lib = await import('/web/lib.js' as string);
    const k1 = lib.makeConferenceKey();
    const k2 = lib.makeConferenceKey();
    return { k1, k2, ct: await lib.encryptConferenceKey(pem, k1) };
  }, pem);
  t.match(enc.k1, /^[A-Za-z0-9_-]{43}$/, 'K: 43 base64url characters (256 bits)');
  t.not(enc.k1, enc.k2, 'two keys differ');
  const clear = privateDecrypt(
    { key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' },
    Buffer.from(enc.ct, 'base64'),
  );
  t.equal(clear.toString('utf8'), enc.k1, 'Node decrypts the browser’s RSA-OAEP SHA-256 ciphertext to K');

  // A join link fills the join form; the key in the fragment leaves the address bar.
  await page.goto(`${base}/join/abc123#key=secretK`);
  await page.waitForFunction(() => 'gatehouse' in window);
  t.equal(await page.getByLabel('Conference (join URL or ID)').inputValue(), `${base}/join/abc123`);
  t.equal(await page.getByLabel('Conference key', { exact: true }).inputValue(), 'secretK', 'the key from the fragment');
  t.equal(await page.evaluate(() => location.hash), '', 'the fragment is removed from the address bar');
  // Any other path is a personal invitation (core.md §7: the GET spends nothing).
  await page.goto(`${base}/i/tok123`);
  await page.waitForFunction(() => 'gatehouse' in window);
  t.ok(await page.getByRole('heading', { name: 'Personal invitation' }).isVisible(), 'the invitation section shows');
  t.equal(await page.getByLabel('Invitation URL').inputValue(), `${base}/i/tok123`);
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, 'invite-page.png'), fullPage: true });

  t.equal(violations.length, beforeOwn, `no CSP violation by the client itself (${violations.slice(beforeOwn).join('; ')})`);
  const errors = tb.logs().filter((l) => /pageerror|error:/.test(l) && !/inline script/i.test(l));
  t.same(errors, [], 'no page errors');
});
