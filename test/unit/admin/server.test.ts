// The admin API over real HTTP(S) on loopback: the bearer token guards /v1, an empty
// token never passes, and https:// serves with admin.tls.
import t from 'tap';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { AdminServer, readAdminTls, tokenMatches } from '../../../src/admin/server.js';
import { silentLogger } from '../../../src/util/log.js';
import { makeCert } from '../../../scripts/fixtures/openssl-dtls.js';
import { createHash } from 'node:crypto';

const TOKEN = 'T'.repeat(20) + 'correct-horse-battery';

function sources(token = TOKEN) {
  return { registry: new Registry(), token, recentEvents: () => [], flows: () => [{ flow_id: 1 }] };
}

interface Reply {
  status: number;
  headers: IncomingMessage['headers'];
  body: string;
}

function get(url: string, headers: Record<string, string> = {}, ca?: Buffer): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const opts = { method: 'GET', host: u.hostname, port: u.port, path: u.pathname, headers };
    const done = (res: IncomingMessage) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    };
    const req = u.protocol === 'https:' ? httpsRequest({ ...opts, ca, servername: 'localhost' }, done) : httpRequest(opts, done);
    req.on('error', reject);
    req.end();
  });
}

t.test('tokenMatches: only "Bearer <the token>"', async (t) => {
  const d = createHash('sha256').update(TOKEN).digest();
  t.ok(tokenMatches(`Bearer ${TOKEN}`, d));
  t.ok(tokenMatches(`bearer ${TOKEN}`, d), 'the scheme is case-insensitive (RFC 9110 §11.1)');
  t.notOk(tokenMatches(undefined, d));
  t.notOk(tokenMatches('', d));
  t.notOk(tokenMatches('Bearer ', d));
  t.notOk(tokenMatches('Bearer', d));
  t.notOk(tokenMatches('Bearer    ', d));
  t.notOk(tokenMatches(`Basic ${TOKEN}`, d));
  t.notOk(tokenMatches(`Bearer ${TOKEN}x`, d));
  t.notOk(tokenMatches(`Bearer ${TOKEN.slice(1)}`, d));
  t.notOk(tokenMatches(`Bearer ${TOKEN} extra`, d));
  // Even a digest of the empty string never matches an empty header token.
  t.notOk(tokenMatches('Bearer ', createHash('sha256').update('').digest()));
});

t.test('an empty or short token is refused when the server is made', async (t) => {
  t.throws(() => new AdminServer(sources(''), silentLogger), /admin token is empty/);
  t.throws(() => new AdminServer(sources('short'), silentLogger), /shorter than 32/);
});

t.test('/v1 over HTTP: 401 without the right token, 200 with it', async (t) => {
  const admin = new AdminServer(sources(), silentLogger);
  const addr = await admin.listen('127.0.0.1', 0);
  t.teardown(() => admin.close());
  const base = `http://127.0.0.1:${addr.port}`;
  t.equal(admin.url, base);
  for (const [what, headers] of [
    ['no Authorization header', {}],
    ['an empty bearer token', { authorization: 'Bearer ' }],
    ['a blank bearer token', { authorization: 'Bearer     ' }],
    ['the bare scheme', { authorization: 'Bearer' }],
    ['a wrong token', { authorization: `Bearer ${'x'.repeat(TOKEN.length)}` }],
    ['a prefix of the token', { authorization: `Bearer ${TOKEN.slice(0, -1)}` }],
    ['the token as Basic', { authorization: `Basic ${TOKEN}` }],
  ] as const) {
    const r = await get(`${base}/v1/flows`, headers);
    t.equal(r.status, 401, `${what}: 401`);
    t.equal(r.headers['www-authenticate'], 'Bearer');
    t.notMatch(r.body, TOKEN, 'the token is not echoed');
  }
  const ok = await get(`${base}/v1/flows`, { authorization: `Bearer ${TOKEN}` });
  t.equal(ok.status, 200);
  t.same(JSON.parse(ok.body), [{ flow_id: 1 }]);
  t.equal((await get(`${base}/v1/events`, { authorization: `Bearer ${TOKEN}` })).status, 200);
  t.equal((await get(`${base}/healthz`)).status, 200, '/healthz stays open');
  t.equal((await get(`${base}/metrics`)).status, 200, '/metrics stays open');
});

t.test('https:// admin with a self-signed certificate', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-admin-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { cert, key } = makeCert(dir, 'ec', '/CN=localhost');
  const admin = new AdminServer(sources(), silentLogger);
  const addr = await admin.listenConfigured({
    listen: 'https://127.0.0.1:0',
    token: TOKEN,
    tls: { cert, key },
    insecure: false,
  });
  t.teardown(() => admin.close());
  const base = `https://127.0.0.1:${addr.port}`;
  t.equal(admin.url, base);
  const ca = readFileSync(cert);
  t.equal((await get(`${base}/v1/flows`, {}, ca)).status, 401, 'no token: 401 over TLS too');
  t.equal((await get(`${base}/v1/flows`, { authorization: 'Bearer ' }, ca)).status, 401);
  const ok = await get(`${base}/v1/flows`, { authorization: `Bearer ${TOKEN}` }, ca);
  t.equal(ok.status, 200);
  await t.rejects(get(`${base}/healthz`), /self[- ]signed|unable to verify|certificate/i, 'an unpinned client refuses the certificate');
  // Plain HTTP on the TLS port gets no answer from the API.
  await t.rejects(get(`http://127.0.0.1:${addr.port}/v1/flows`, { authorization: `Bearer ${TOKEN}` }));
});

t.test('admin.tls files that cannot be read name the key and file', async (t) => {
  t.throws(
    () => readAdminTls({ cert: '/nonexistent/admin.crt', key: '/nonexistent/admin.key' }),
    /^admin\.tls\.cert: cannot read \/nonexistent\/admin\.crt: ENOENT/,
  );
  t.equal(readAdminTls({ cert: null, key: null }), undefined);
});
