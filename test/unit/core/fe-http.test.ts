import t from 'tap';
import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FrontEnd } from '../../../src/core/fe/frontend.js';
import { FeHttpServer } from '../../../src/core/fe/server.js';
import { RemoteFe } from '../../../src/core/fe/client.js';
import { guestHa1 } from '../../../src/core/fe/keys.js';
import { signRequest } from '../../../src/core/fe/sign.js';
import { silentLogger } from '../../../src/util/log.js';

const dir = mkdtempSync(join(tmpdir(), 'gh-fehttp-'));
const secret = randomBytes(24).toString('base64url');
const fe = new FrontEnd(dir, undefined, { rsaBits: 2048 });
const srv = new FeHttpServer(fe, secret, silentLogger);
t.teardown(async () => {
  await srv.close();
  fe.close();
  rmSync(dir, { recursive: true, force: true });
});

function raw(
  port: number,
  method: string,
  path: string,
  headers: Record<string, string>,
  body = '',
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const r = request({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    r.on('error', reject);
    r.end(body);
  });
}

t.test('signed calls over HTTP; unsigned, wrong-secret and replayed requests refused', async (t) => {
  const { port } = await srv.listen(0, '127.0.0.1');
  const client = new RemoteFe(`http://127.0.0.1:${port}`, secret);
  const info = await client.info();
  t.equal(info.fingerprint, fe.keys.fingerprint);
  const k = randomBytes(20).toString('base64url');
  const key = publicEncrypt(
    { key: info.public_key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' },
    Buffer.from(k),
  ).toString('base64');
  const { id } = await client.createConference({ key, owner: 'alice', title: 't' });
  t.equal((await client.conference(id))?.owner, 'alice');
  t.equal(await client.conference('missing'), null);
  t.equal(await client.ha1(id, 'bob'), guestHa1('bob', id, k));
  t.equal(await client.ha1('missing', 'bob'), null);
  const now = Math.floor(Date.now() / 1000);
  const both = await Promise.all([client.claim(id, 'bob', 'a', now + 60), client.claim(id, 'bob', 'b', now + 60)]);
  t.equal(both.filter(Boolean).length, 1, 'racing claims over HTTP: one wins');
  t.equal(await client.release(id, 'bob'), true);
  await t.rejects(client.createConference({ key: 'AAAA', owner: 'alice' }), { code: 'bad_request', status: 400 });

  t.equal((await raw(port, 'GET', '/fe/v1/info', {})).status, 401, 'unsigned');
  const wrong = await new RemoteFe(`http://127.0.0.1:${port}`, 'x'.repeat(32)).info().catch((e: Error) => e);
  t.ok(wrong instanceof Error, 'another secret is refused (and its unsigned answer is not trusted)');
  const h = signRequest(secret, 'POST', `/fe/v1/conferences/${id}/ha1`, '{"identity":"bob"}', now);
  const first = await raw(port, 'POST', `/fe/v1/conferences/${id}/ha1`, h, '{"identity":"bob"}');
  t.equal(first.status, 200);
  const again = await raw(port, 'POST', `/fe/v1/conferences/${id}/ha1`, h, '{"identity":"bob"}');
  t.equal(again.status, 401, 'the same signed request twice is replayed');
  t.match(again.text, /replayed/);
  t.notMatch(again.text, /[0-9a-f]{64}/, 'no HA1 in a refusal');
  const stale = signRequest(secret, 'GET', '/fe/v1/info', '', now - 120);
  t.equal((await raw(port, 'GET', '/fe/v1/info', stale)).status, 401, 'stale');
});

t.test('a client refuses an answer not signed by the pool', async (t) => {
  const { createServer } = await import('node:http');
  const fake = createServer((_q, s) => {
    s.writeHead(200, { 'content-type': 'application/json' });
    s.end(JSON.stringify({ ha1: 'a'.repeat(64) }));
  });
  await new Promise<void>((r) => fake.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => fake.close(() => r())));
  const port = (fake.address() as { port: number }).port;
  await t.rejects(new RemoteFe(`http://127.0.0.1:${port}`, secret).ha1('x', 'bob'), /not signed/);
});
