// The web client's static handler (src/core/web.ts): the fixed file map, content types,
// the strict CSP on every file, no inline script in the page, HEAD without a body.
import t from 'tap';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WEB_CSP, WEB_FILES, serveIndex, webRoutes } from '../../src/core/web.js';
import { CoreError } from '../../src/core/errors.js';

t.test('the file map holds the page, its scripts and style, with their types', async (t) => {
  t.same([...WEB_FILES.keys()].sort(), ['app.js', 'index.html', 'lib.js', 'style.css']);
  t.equal(WEB_FILES.get('index.html')!.type, 'text/html; charset=utf-8');
  t.equal(WEB_FILES.get('app.js')!.type, 'text/javascript; charset=utf-8');
  t.equal(WEB_FILES.get('style.css')!.type, 'text/css; charset=utf-8');
});

t.test('the page has no inline script, style or handler (the CSP would refuse them)', async (t) => {
  const html = WEB_FILES.get('index.html')!.body.toString('utf8');
  for (const m of html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/g)) {
    t.match(m[1], /\ssrc="\/web\/[a-z]+\.js"/, 'every script has a same-origin src');
    t.equal(m[2]!.trim(), '', 'and no inline body');
  }
  t.notMatch(html, /<style\b/, 'no <style> element');
  t.notMatch(html, /\sstyle="/, 'no style attribute');
  t.notMatch(html, /\son[a-z]+="/, 'no inline event handler');
  t.notMatch(html, /javascript:/, 'no javascript: URL');
  // Every form control has a label (keyboard and screen-reader access).
  const ids = [...html.matchAll(/<input\b[^>]*\bid="([^"]+)"/g)].map((m) => m[1]);
  t.ok(ids.length > 10);
  for (const id of ids) t.match(html, new RegExp(`<label for="${id}"`), `input #${id} has a label`);
});

t.test('served over HTTP: CSP and nosniff on each file, 404 for anything else, HEAD has no body', async (t) => {
  const routes = webRoutes();
  const srv: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/i/abc') return serveIndex(res, req.method);
    const m = /^\/web\/([^/]+)$/.exec(url.pathname);
    const r = url.pathname === '/' ? routes[0]! : url.pathname.startsWith('/join/') ? routes[1]! : m ? routes[2]! : null;
    if (!r) {
      res.writeHead(404).end();
      return;
    }
    try {
      r.handler({ req, res, params: m ? { file: decodeURIComponent(m[1]!) } : {} });
    } catch (e) {
      // The director's router answers a CoreError with its status (core.md §2).
      res
        .writeHead(e instanceof CoreError ? e.status : 500, { 'Content-Type': 'application/json' })
        .end(JSON.stringify({ code: (e as CoreError).code }));
    }
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => srv.close(() => r())));
  const base = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  t.same(
    routes.map((r) => `${r.method} ${r.path}`),
    ['GET /', 'GET /join/:id', 'GET /web/:file'],
  );
  for (const [path, type] of [
    ['/', 'text/html; charset=utf-8'],
    ['/i/abc', 'text/html; charset=utf-8'],
    ['/join/c123', 'text/html; charset=utf-8'],
    ['/web/app.js', 'text/javascript; charset=utf-8'],
    ['/web/lib.js', 'text/javascript; charset=utf-8'],
    ['/web/style.css', 'text/css; charset=utf-8'],
  ] as const) {
    const res = await fetch(base + path);
    t.equal(res.status, 200, path);
    t.equal(res.headers.get('content-type'), type, `${path} type`);
    t.equal(res.headers.get('content-security-policy'), WEB_CSP, `${path} CSP`);
    t.equal(res.headers.get('x-content-type-options'), 'nosniff');
    t.equal(res.headers.get('referrer-policy'), 'no-referrer');
    const body = Buffer.from(await res.arrayBuffer());
    t.equal(body.length, Number(res.headers.get('content-length')));
  }
  t.equal((await fetch(`${base}/`)).headers.get('cache-control'), 'no-store', 'the page (maybe a personal URL) is not cached');
  for (const p of ['/web/index.html', '/web/nope.js', '/web/..%2Fweb.ts', '/web/%2e%2e%2fdigest.ts']) {
    const res = await fetch(base + p);
    t.equal(res.status, 404, `${p} is not served`);
    t.same(await res.json(), { code: 'not_found' }, 'a not_found CoreError');
  }
  const head = await fetch(`${base}/web/app.js`, { method: 'HEAD' });
  t.equal(head.status, 200);
  t.equal((await head.arrayBuffer()).byteLength, 0, 'HEAD: no body');
  t.equal(Number(head.headers.get('content-length')), WEB_FILES.get('app.js')!.body.length, 'HEAD: the length of the GET');
  t.match(WEB_CSP, /script-src 'self';/);
  t.match(WEB_CSP, /frame-ancestors 'none'/);
  t.notMatch(WEB_CSP, /unsafe-inline|unsafe-eval/);
});
