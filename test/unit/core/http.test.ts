// The director's router (src/core/http.ts) over real HTTP: params, 404/405 JSON errors
// (core.md §2), the 64 KiB JSON body bound (400 bad_request), a throwing handler is 500
// and counted (the process lives on), upgrades routed and supervised.
import t, { type Test } from 'tap';
import { connect } from 'node:net';
import { CoreHttpServer, Router } from '../../../src/core/http.js';
import { CoreError } from '../../../src/core/errors.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { silentLogger } from '../../../src/util/log.js';

async function serve(t: Test, setup: (r: Router) => void) {
  const sup = new Supervisor(silentLogger);
  const r = new Router(silentLogger, sup);
  setup(r);
  const srv = new CoreHttpServer(r);
  await srv.listen('127.0.0.1', 0);
  t.teardown(() => srv.close());
  return { base: srv.url, sup };
}

t.test('routes, params, errors as core.md §2 JSON', async (t) => {
  const { base, sup } = await serve(t, (r) => {
    r.addRoutes([
      { method: 'GET', path: '/v1/rooms/:id/invites', handler: (ctx) => ctx.send(200, { id: ctx.params.id, route: ctx.route }) },
      { method: 'POST', path: '/v1/echo', handler: async (ctx) => ctx.send(200, await ctx.body()) },
      { method: 'GET', path: '/v1/conflict', handler: () => Promise.reject(new CoreError('identity_in_use', 'taken')) },
      {
        method: 'GET',
        path: '/v1/boom',
        handler: () => {
          throw new Error('bug with a secret inside');
        },
      },
      { method: 'GET', path: '/v1/silent', handler: () => {} },
      { method: 'GET', path: '/files/*rest', handler: (ctx) => ctx.send(200, { rest: ctx.params.rest }) },
    ]);
  });
  let res = await fetch(`${base}/v1/rooms/r%2F1/invites`);
  t.same(await res.json(), { id: 'r/1', route: '/v1/rooms/:id/invites' });
  t.equal(res.headers.get('cache-control'), 'no-store');
  res = await fetch(`${base}/v1/nothing`);
  t.equal(res.status, 404);
  t.same(await res.json(), { error: { code: 'not_found', message: 'no such resource' } });
  res = await fetch(`${base}/v1/rooms/x/invites`, { method: 'DELETE' });
  t.equal(res.status, 405);
  t.equal(res.headers.get('allow'), 'GET');
  res = await fetch(`${base}/v1/conflict`);
  t.equal(res.status, 409);
  t.same(await res.json(), { error: { code: 'identity_in_use', message: 'taken' } });
  res = await fetch(`${base}/v1/boom`);
  t.equal(res.status, 500);
  const body = await res.text();
  t.same(JSON.parse(body), { error: { code: 'internal', message: 'internal error' } });
  t.notMatch(body, /secret/, 'the exception text is not sent');
  t.equal(sup.failures.get('core.http'), 1, 'counted');
  res = await fetch(`${base}/v1/silent`);
  t.equal(res.status, 500, 'a handler that answers nothing is a 500, not a hung request');
  res = await fetch(`${base}/files/a/b.js`);
  t.same(await res.json(), { rest: 'a/b.js' });
  res = await fetch(`${base}/v1/rooms/x/invites`, { method: 'HEAD' });
  t.equal(res.status, 200, 'HEAD is GET without the body');
});

t.test('JSON bodies: objects only, at most 64 KiB, else 400 bad_request', async (t) => {
  const { base } = await serve(t, (r) => r.add('POST', '/v1/echo', async (ctx) => ctx.send(200, await ctx.body())));
  const post = (body: string) => fetch(`${base}/v1/echo`, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
  let res = await post('{"a":1}');
  t.same(await res.json(), { a: 1 });
  res = await post('');
  t.same(await res.json(), {}, 'empty is {}');
  // Strict JSON (src/core/json-body.ts): a duplicate member name is refused, not "the last wins".
  for (const bad of ['{', '[1]', '"s"', 'null', '{"a":1,"a":2}']) {
    res = await post(bad);
    t.equal(res.status, 400, bad);
    t.equal(((await res.json()) as { error: { code: string } }).error.code, 'bad_request');
  }
  res = await fetch(`${base}/v1/echo`, { method: 'POST', body: Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]) });
  t.equal(res.status, 400, 'invalid UTF-8 is refused');
  res = await post(JSON.stringify({ x: 'y'.repeat(70 * 1024) }));
  t.equal(res.status, 400);
  t.match(await res.text(), /exceeds 65536 bytes/);
});

t.test('upgrades: routed by path, 404 otherwise, an exception destroys only that socket', async (t) => {
  const { base, sup } = await serve(t, (r) => {
    r.onUpgrade('/v1/signal', (_req, socket) =>
      socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n'),
    );
    r.onUpgrade('/v1/bad', () => {
      throw new Error('upgrade bug');
    });
  });
  const port = Number(new URL(base).port);
  const raw = (path: string) =>
    new Promise<string>((resolve) => {
      const s = connect(port, '127.0.0.1', () => s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n`));
      let out = '';
      s.on('data', (d) => (out += d));
      s.on('close', () => resolve(out));
      s.on('error', () => resolve(out));
    });
  t.match(await raw('/v1/signal'), /^HTTP\/1.1 101/);
  t.match(await raw('/v1/other'), /^HTTP\/1.1 404/);
  t.equal(await raw('/v1/bad'), '', 'destroyed');
  t.equal(sup.failures.get('core.upgrade'), 1);
  t.equal((await fetch(`${base}/v1/x`)).status, 404, 'the server still answers');
});
