// The dashboard on the admin listener (src/admin/dashboard.ts) over real HTTP on loopback:
// login form, session cookie, 401 without it, CSRF 403/200, CSP and nosniff, SSE with a
// bounded number of clients, media with Range (RFC 9110 §14), no path traversal, login
// rate limit, and no secret in any response.
import t, { type Test } from 'tap';
import { request, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { AdminServer } from '../../../src/admin/server.js';
import { DASHBOARD_CSP, DASHBOARD_LIMITS, redact } from '../../../src/admin/dashboard.js';
import { parseRange } from '../../../src/admin/range.js';
import { RecordingsView, RecordingsViews } from '../../../src/admin/recordings-view.js';
import { MemoryEventSink, type EveEvent } from '../../../src/events/eve.js';
import { silentLogger } from '../../../src/util/log.js';
import { ManualClock } from '../../../src/util/clock.js';
import { QuotaTracker } from '../../../src/policy/quota.js';
import { makeCert } from '../../../scripts/fixtures/openssl-dtls.js';

const TOKEN = 'D'.repeat(20) + 'dashboard-admin-token-xyz';

interface Reply {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
  text: string;
}

function call(base: string, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const u = new URL(path, base);
    const req = request({ method, host: u.hostname, port: u.port, path: u.pathname + u.search, headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => {
        const b = Buffer.concat(parts);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: b, text: b.toString('utf8') });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function setup(t: Test) {
  const dir = mkdtempSync(join(tmpdir(), 'gh-dash-'));
  const recs = join(dir, 'recordings');
  const rec = join(recs, '20261203T070000Z-7-p1-abcd');
  mkdirSync(rec, { recursive: true });
  const audio = Buffer.alloc(1000);
  for (let i = 0; i < audio.length; i++) audio[i] = i & 0xff;
  writeFileSync(join(rec, 'audio-1234.opus'), audio);
  writeFileSync(join(rec, 'video-5.webm'), Buffer.from('webm-bytes'));
  writeFileSync(join(rec, 'rtp-1234.pcap'), Buffer.from('pcap'));
  writeFileSync(join(dir, 'admin-token'), TOKEN);
  writeFileSync(join(dir, 'outside.opus'), Buffer.from('outside the recordings dir'));
  symlinkSync(join(dir, 'outside.opus'), join(rec, 'link.opus'));
  const memory = new MemoryEventSink(100, 64);
  let reloads = 0;
  const admin = new AdminServer(
    {
      registry: new Registry(),
      token: TOKEN,
      recentEvents: () => memory.events,
      flows: () => [
        { flow_id: 1, user: 'alice', key_status: 'waiting', key_deadline: new Date().toISOString(), password: 'must-not-show' },
      ],
      subscribe: (fn) => memory.subscribe(fn),
      recordingsDir: recs,
      quotas: () => [{ quota: 'q', subject: 'user:alice', window: '2026-12-03', period: 'day', used: 5, limit: 10, ends: 0 }],
      policy: () => ({ rules: [{ id: 'r1', action: 'alert' }] }),
      reloadPolicy: async () => {
        reloads++;
        return { ok: false, message: 'rules/bad.yaml:3: rules[0].action: must be one of block, alert, record, drop (previous rules kept)' };
      },
    },
    silentLogger,
  );
  const addr = await admin.listen('127.0.0.1', 0);
  t.teardown(async () => {
    await admin.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const base = `http://127.0.0.1:${addr.port}`;
  return { admin, base, memory, reloads: () => reloads };
}

async function login(base: string): Promise<{ cookie: string; csrf: string }> {
  const r = await call(base, 'POST', '/login', { 'content-type': 'application/json' }, JSON.stringify({ token: TOKEN }));
  const set = String(r.headers['set-cookie']?.[0] ?? '');
  return { cookie: set.split(';')[0]!, csrf: (JSON.parse(r.text) as { csrf: string }).csrf };
}

t.test('parseRange (RFC 9110 §14.1.2)', async (t) => {
  t.same(parseRange('bytes=0-9', 100), { start: 0, end: 9 });
  t.same(parseRange('bytes=90-', 100), { start: 90, end: 99 });
  t.same(parseRange('bytes=-10', 100), { start: 90, end: 99 }, 'suffix range');
  t.same(parseRange('bytes=-1000', 100), { start: 0, end: 99 });
  t.same(parseRange('bytes=50-1000', 100), { start: 50, end: 99 }, 'end clamped');
  t.equal(parseRange('bytes=100-', 100), 'unsatisfiable');
  t.equal(parseRange('bytes=-0', 100), 'unsatisfiable');
  t.equal(parseRange('bytes=9-3', 100), null, 'invalid: ignored');
  t.equal(parseRange('bytes=0-1,5-6', 100), null, 'several ranges: the whole file');
  t.equal(parseRange('items=0-1', 100), null);
  t.equal(parseRange(undefined, 100), null);
  t.same(parseRange('BYTES=1-2', 100), { start: 1, end: 2 }, 'unit is case-insensitive');
  t.equal(parseRange('bytes=0-9', 100, '"v1"'), null, 'If-Range: no validator of ours matches, the whole file (§13.1.5)');
  t.equal(parseRange('bytes=0-9', 100, 'Thu, 03 Dec 2026 08:00:00 GMT'), null, 'If-Range with a date too');
  t.same(parseRange('bytes=10-99999999999999999999', 100), { start: 10, end: 99 }, 'a last-pos of any length is clamped');
  t.equal(parseRange('bytes=99999999999999999999-', 100), 'unsatisfiable', 'a first-pos of any length past the end: 416');
  t.equal(parseRange('bytes=0-', 0), 'unsatisfiable', 'an empty file satisfies no range');
});

t.test('login form, session cookie, 401 without it, CSP and nosniff', async (t) => {
  const { base } = await setup(t);
  const page = await call(base, 'GET', '/');
  t.equal(page.status, 200);
  t.match(page.text, /<form method="post" action="\/login"/, 'no session: the login form');
  t.equal(page.headers['content-security-policy'], DASHBOARD_CSP, 'strict CSP');
  t.match(DASHBOARD_CSP, /default-src 'none'/);
  t.match(DASHBOARD_CSP, /frame-ancestors 'none'/);
  t.equal(page.headers['x-content-type-options'], 'nosniff');
  t.notMatch(page.text, /<script>|<style>|style="/, 'no inline script or style');
  for (const p of ['/ui/flows', '/ui/events', '/ui/recordings', '/ui/quotas', '/ui/policy', '/ui/session', '/ui/events/stream']) {
    const r = await call(base, 'GET', p);
    t.equal(r.status, 401, `${p} without a session: 401`);
  }
  t.equal((await call(base, 'GET', '/ui/flows', { cookie: 'gh_session=forged' })).status, 401, 'a forged session id: 401');
  for (const p of ['/ui/constructor', '/ui/__proto__', '/ui/toString', '/ui/hasOwnProperty'])
    t.equal((await call(base, 'GET', p)).status, 401, `${p}: not a page file (an Object.prototype name), 401 without a session`);
  const css = await call(base, 'GET', '/ui/app.css');
  t.equal(css.status, 200, 'the style sheet is public (the login form uses it)');
  t.match(css.headers['content-type'], /^text\/css/);
  const js = await call(base, 'GET', '/ui/app.js');
  t.match(js.headers['content-type'], /^text\/javascript/);

  const bad = await call(base, 'POST', '/login', { 'content-type': 'application/x-www-form-urlencoded' }, 'token=wrong');
  t.equal(bad.status, 401, 'a wrong token: 401');
  t.match(bad.text, /Wrong admin token/);
  t.equal(bad.headers['set-cookie'], undefined, 'and no cookie');
  const good = await call(
    base,
    'POST',
    '/login',
    { 'content-type': 'application/x-www-form-urlencoded' },
    `token=${encodeURIComponent(TOKEN)}`,
  );
  t.equal(good.status, 303, 'form login: 303 See Other');
  t.equal(good.headers.location, '/');
  const set = String(good.headers['set-cookie']?.[0]);
  t.match(set, /^gh_session=[A-Za-z0-9_-]{43}; /);
  t.match(set, /HttpOnly/);
  t.match(set, /SameSite=Strict/);
  t.notMatch(set, /Secure/, 'plain http: no Secure');
  const cookie = set.split(';')[0]!;
  const dash = await call(base, 'GET', '/', { cookie });
  const csrf = /<meta name="csrf-token" content="([A-Za-z0-9_-]{43})"/.exec(dash.text)?.[1];
  t.ok(csrf, 'the page carries the session CSRF token');
  t.match(dash.text, /<script src="\/ui\/app.js" defer><\/script>/);
  const session = await call(base, 'GET', '/ui/session', { cookie });
  t.equal((JSON.parse(session.text) as { csrf: string }).csrf, csrf, '/ui/session agrees');
  const flows = await call(base, 'GET', '/ui/flows', { cookie });
  t.equal(flows.status, 200);
  t.equal(flows.headers['content-security-policy'], DASHBOARD_CSP);
  t.same((JSON.parse(flows.text) as { user: string }[])[0]!.user, 'alice');
  t.notMatch(flows.text, /must-not-show|password/, 'a secret-named field is never sent');
  t.equal((await call(base, 'GET', '/v1/flows', { cookie })).status, 401, 'the cookie does not open the bearer API');
  t.equal((await call(base, 'GET', '/v1/flows', { authorization: `Bearer ${TOKEN}` })).status, 200, '/v1 with the token as before');
});

t.test('CSRF: missing or wrong token 403, right token 200/422; cross-origin refused; logout', async (t) => {
  const { base, reloads } = await setup(t);
  const { cookie, csrf } = await login(base);
  t.equal((await call(base, 'POST', '/ui/policy/reload')).status, 401, 'no cookie: 401');
  t.equal((await call(base, 'POST', '/ui/policy/reload', { cookie })).status, 403, 'no CSRF token: 403');
  t.equal((await call(base, 'POST', '/ui/policy/reload', { cookie, 'x-csrf-token': 'x'.repeat(43) })).status, 403, 'wrong: 403');
  t.equal((await call(base, 'POST', '/ui/policy/reload', { cookie, 'x-csrf-token': csrf.slice(1) })).status, 403, 'prefix: 403');
  const other = await login(base);
  t.equal(
    (await call(base, 'POST', '/ui/policy/reload', { cookie, 'x-csrf-token': other.csrf })).status,
    403,
    "another session's token: 403",
  );
  t.equal(reloads(), 0, 'none of them reloaded');
  const cross = await call(base, 'POST', '/ui/policy/reload', { cookie, 'x-csrf-token': csrf, origin: 'http://evil.example' });
  t.equal(cross.status, 403, 'right token from another origin: 403');
  const r = await call(base, 'POST', '/ui/policy/reload', { cookie, 'x-csrf-token': csrf, origin: base });
  t.equal(r.status, 422, 'right token: the reload runs (a broken file: 422)');
  t.match(JSON.parse(r.text), { ok: false, message: /rules\/bad\.yaml:3: rules\[0\]\.action/ }, 'the message names file, line and key');
  t.equal(reloads(), 1);
  t.equal((await call(base, 'POST', '/logout', { cookie })).status, 403, 'logout needs the CSRF token too');
  const out = await call(base, 'POST', '/logout', { cookie, 'x-csrf-token': csrf });
  t.equal(out.status, 200);
  t.match(String(out.headers['set-cookie']), /Max-Age=0/);
  t.equal((await call(base, 'GET', '/ui/flows', { cookie })).status, 401, 'the session is gone');
});

t.test('recordings: content types, Range, traversal refused', async (t) => {
  const { base } = await setup(t);
  const { cookie } = await login(base);
  const p = '/ui/recordings/20261203T070000Z-7-p1-abcd/audio-1234.opus';
  t.equal((await call(base, 'GET', p)).status, 401, 'media needs the session');
  const whole = await call(base, 'GET', p, { cookie });
  t.equal(whole.status, 200);
  t.equal(whole.headers['content-type'], 'audio/ogg');
  t.equal(whole.headers['accept-ranges'], 'bytes');
  t.equal(whole.body.length, 1000);
  const part = await call(base, 'GET', p, { cookie, range: 'bytes=10-19' });
  t.equal(part.status, 206, 'Range: 206 Partial Content');
  t.equal(part.headers['content-range'], 'bytes 10-19/1000');
  t.equal(part.headers['content-length'], '10');
  t.same([...part.body], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 'the right bytes');
  const tail = await call(base, 'GET', p, { cookie, range: 'bytes=990-' });
  t.equal(tail.headers['content-range'], 'bytes 990-999/1000');
  t.equal(tail.body.length, 10);
  const guarded = await call(base, 'GET', p, { cookie, range: 'bytes=10-19', 'if-range': '"stale"' });
  t.equal(guarded.status, 200, 'Range under an If-Range that cannot match: 200 with the whole file');
  t.equal(guarded.headers['content-length'], '1000');
  const past = await call(base, 'GET', p, { cookie, range: 'bytes=5000-' });
  t.equal(past.status, 416, 'past the end: 416');
  t.equal(past.headers['content-range'], 'bytes */1000');
  const webm = await call(base, 'GET', '/ui/recordings/20261203T070000Z-7-p1-abcd/video-5.webm', { cookie });
  t.equal(webm.headers['content-type'], 'video/webm');
  for (const bad of [
    '/ui/recordings/..%2F..%2Fadmin-token/x.opus',
    '/ui/recordings/20261203T070000Z-7-p1-abcd/..%2F..%2Fadmin-token',
    '/ui/recordings/..%2F/outside.opus',
    '/ui/recordings/%2E%2E/outside.opus',
    '/ui/recordings/20261203T070000Z-7-p1-abcd/link.opus',
    '/ui/recordings/20261203T070000Z-7-p1-abcd/rtp-1234.pcap',
    '/ui/recordings/20261203T070000Z-7-p1-abcd/.hidden.opus',
    '/ui/recordings/20261203T070000Z-7-p1-abcd/missing.opus',
  ]) {
    const r = await call(base, 'GET', bad, { cookie });
    t.equal(r.status, 404, `${bad}: refused`);
    t.notMatch(r.text, /outside the recordings|DDDD/, 'nothing of the file');
  }
  const list = await call(base, 'GET', '/ui/recordings', { cookie });
  t.equal(list.status, 200);
  const l = JSON.parse(list.text) as { unsealed: string[] };
  t.same(l.unsealed, ['20261203T070000Z-7-p1-abcd'], 'an unsealed recording is listed as such');
});

t.test('event stream: live events, heartbeat format, bounded clients', async (t) => {
  const { base, memory, admin } = await setup(t);
  const { cookie } = await login(base);
  const u = new URL('/ui/events/stream', base);
  const got: string[] = [];
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path: u.pathname, headers: { cookie } }, resolve);
    req.on('error', reject);
    req.end();
  });
  t.equal(res.statusCode, 200);
  t.match(res.headers['content-type'], /^text\/event-stream/);
  res.setEncoding('utf8');
  res.on('data', (d: string) => got.push(d));
  await new Promise((r) => setTimeout(r, 50));
  const alert: EveEvent = {
    timestamp: '2026-12-03T07:00:00.000000+0000',
    event_type: 'alert',
    flow_id: 3,
    alert: { action: 'allowed', signature_id: 'r1', signature: 'rule one', severity: 2 },
    gatehouse: { user: 'alice', password: 'nope' },
  };
  memory.emit(alert);
  memory.emit({ timestamp: alert.timestamp, event_type: 'stats' }); // not a live type
  await new Promise((r) => setTimeout(r, 100));
  const text = got.join('');
  t.match(text, /^retry: 3000\n: gatehouse events\n\n/, 'opens with retry and a comment');
  t.match(text, /event: alert\ndata: \{.*"signature_id":"r1".*\}\n\n/, 'the alert arrives as an SSE event');
  t.notMatch(text, /stats/, 'other event types are not streamed');
  t.notMatch(text, /nope/, 'secret-named fields redacted');
  t.equal(admin.dashboard.streams, 1);
  // The cap: DASHBOARD_LIMITS.sseClients in all.
  const extra: IncomingMessage[] = [];
  for (let i = 1; i < DASHBOARD_LIMITS.sseClients; i++) {
    extra.push(
      await new Promise<IncomingMessage>((resolve) => {
        const req = request({ host: u.hostname, port: u.port, path: u.pathname, headers: { cookie } }, resolve);
        req.end();
      }),
    );
  }
  t.equal(admin.dashboard.streams, DASHBOARD_LIMITS.sseClients);
  const over = await call(base, 'GET', '/ui/events/stream', { cookie });
  t.equal(over.status, 503, 'one more stream: 503');
  res.destroy();
  for (const e of extra) e.destroy();
  await new Promise((r) => setTimeout(r, 100));
  t.equal(admin.dashboard.streams, 0, 'closed streams are forgotten');
});

t.test('login attempts are rate limited per source', async (t) => {
  const { base } = await setup(t);
  for (let i = 0; i < DASHBOARD_LIMITS.loginFailuresPerSource; i++) {
    const r = await call(base, 'POST', '/login', { 'content-type': 'application/json' }, JSON.stringify({ token: `wrong${i}` }));
    t.equal(r.status, 401);
  }
  const r = await call(base, 'POST', '/login', { 'content-type': 'application/json' }, JSON.stringify({ token: TOKEN }));
  t.equal(r.status, 429, 'over the limit: 429 even with the right token');
  t.ok(Number(r.headers['retry-after']) > 0, 'with Retry-After');
  const big = await call(base, 'POST', '/login', { 'content-type': 'application/json' }, 'x'.repeat(100_000)).catch(() => null);
  t.not(big?.status, 200, 'an oversized body never logs in');
});

t.test('no secret in any /ui response or the page', async (t) => {
  const { base, memory } = await setup(t);
  memory.emit({ timestamp: '2026-12-03T07:00:00.000000+0000', event_type: 'alert', gatehouse: { user: 'a', token: TOKEN } });
  const { cookie } = await login(base);
  for (const p of ['/', '/ui/flows', '/ui/events', '/ui/recordings', '/ui/quotas', '/ui/policy', '/ui/session', '/ui/app.js']) {
    const r = await call(base, 'GET', p, { cookie });
    t.equal(r.status, 200, p);
    t.notOk(r.text.includes(TOKEN), `${p} never carries the admin token`);
  }
  t.same(redact({ a: 1, srtp_key: 'k', nested: [{ client_secret: 's', ok: 2 }], keys: 'keys_missing' }), {
    a: 1,
    nested: [{ ok: 2 }],
    keys: 'keys_missing',
  });
});

t.test('logout ends that session’s event stream', async (t) => {
  const { base, admin } = await setup(t);
  const { cookie, csrf } = await login(base);
  const u = new URL('/ui/events/stream', base);
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path: u.pathname, headers: { cookie } }, resolve);
    req.on('error', reject);
    req.end();
  });
  res.resume();
  const closed = new Promise<void>((r) => res.on('close', () => r()));
  t.equal(admin.dashboard.streams, 1);
  t.equal((await call(base, 'POST', '/logout', { cookie, 'x-csrf-token': csrf })).status, 200);
  await closed;
  t.equal(admin.dashboard.streams, 0, 'the stream closed with the session');
});

t.test('https listener: the session cookie is Secure', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-dash-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { cert, key } = makeCert(dir, 'ec', '/CN=localhost');
  const admin = new AdminServer({ registry: new Registry(), token: TOKEN, recentEvents: () => [] }, silentLogger);
  const addr = await admin.listenConfigured({ listen: 'https://127.0.0.1:0', token: TOKEN, tls: { cert, key }, insecure: false });
  t.teardown(() => admin.close());
  const r = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = httpsRequest(
      {
        method: 'POST',
        host: '127.0.0.1',
        port: addr.port,
        path: '/login',
        ca: readFileSync(cert),
        servername: 'localhost',
        headers: { 'content-type': 'application/json' },
      },
      resolve,
    );
    req.on('error', reject);
    req.end(JSON.stringify({ token: TOKEN }));
  });
  r.resume();
  t.equal(r.statusCode, 200);
  t.match(String(r.headers['set-cookie']?.[0]), /HttpOnly; SameSite=Strict; Max-Age=\d+; Secure$/);
});

t.test('MemoryEventSink.subscribe is bounded; a throwing listener is dropped', async (t) => {
  const m = new MemoryEventSink(10, 2);
  const got: string[] = [];
  const off = m.subscribe((e) => got.push(e.event_type));
  t.ok(
    m.subscribe(() => {
      throw new Error('listener bug');
    }),
  );
  t.equal(
    m.subscribe(() => {}),
    null,
    'a third listener is refused',
  );
  m.emit({ timestamp: 't', event_type: 'alert' });
  t.same(got, ['alert']);
  t.ok(
    m.subscribe(() => {}),
    'the throwing one was dropped, so there is room again',
  );
  off!();
  m.emit({ timestamp: 't', event_type: 'quota' });
  t.same(got, ['alert'], 'unsubscribed');
  t.equal(m.events.length, 2, 'the ring still keeps every event');
});

t.test('QuotaTracker.snapshot: current windows, fullest first, bounded', async (t) => {
  const clock = new ManualClock(Date.parse('2026-12-03T12:00:00Z'));
  const q = new QuotaTracker(
    [
      { id: 'daily', scope: 'user', users: ['alice', 'bob'], groups: [], limit: 1000, period: 'day', vital: [] },
      { id: 'weekly', scope: 'user', users: ['alice'], groups: [], limit: 10_000, period: 'week', vital: [] },
    ],
    clock,
    'UTC',
    null,
  );
  q.account('alice', [], '192.0.2.1', 900);
  q.account('bob', [], '192.0.2.1', 100);
  const s = q.snapshot();
  t.same(
    s.map((r) => [r.quota, r.subject, r.used, r.limit, r.period]),
    [
      ['daily', 'user:alice', 900, 1000, 'day'],
      ['daily', 'user:bob', 100, 1000, 'day'],
      ['weekly', 'user:alice', 900, 10_000, 'week'],
    ],
  );
  t.equal(s[0]!.ends, Date.parse('2026-12-04T00:00:00Z'), 'the window end');
  t.equal(q.snapshot(1).length, 1, 'bounded');
  clock.advance(86_400_000);
  t.same(
    q.snapshot().map((r) => r.quota),
    ['weekly'],
    'a past day window is not shown',
  );
});

t.test('RecordingsView: verify is rerun when the directory changes, the result reused otherwise', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-recview-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'rec-a'));
  let now = 0;
  const view = new RecordingsView(dir, 0, 200, () => now);
  const first = view.list();
  t.same(first.unsealed, ['rec-a']);
  t.same(first.problems, [], 'an unsealed recording is not a failed seal');
  now += 1000;
  t.equal(view.list(), first, 'nothing changed: the same result, verify not rerun');
  writeFileSync(join(dir, 'stray.txt'), 'x');
  now += 1000;
  const second = view.list();
  t.not(second, first, 'a new file: verified again');
  t.match(second.problems, [/stray\.txt: added/], "gatehouse verify's problem is shown");
  t.equal(second.ok, false);
  now += 400_000;
  t.not(view.list(), second, 'and again after maxAgeMs whatever the directory says');
});

t.test('RecordingsViews: the recordings of several directories (relay workers) as one list', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'gh-recviews-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const dirs = [join(root, 'w0'), join(root, 'w1')];
  mkdirSync(join(dirs[0]!, '20261204T010000Z-1-p1-aaaa'), { recursive: true });
  mkdirSync(join(dirs[1]!, '20261204T010001Z-1-p1-bbbb'), { recursive: true });
  writeFileSync(join(dirs[1]!, '20261204T010001Z-1-p1-bbbb', 'audio-1.opus'), Buffer.from('opus'));
  writeFileSync(join(dirs[1]!, 'stray.txt'), 'x');
  const one = new RecordingsViews([dirs[0]!]).list();
  t.same(one, new RecordingsView(dirs[0]!).list(), 'one directory: exactly its own view');
  const views = new RecordingsViews(dirs);
  const all = views.list();
  t.same(all.unsealed.sort(), ['20261204T010000Z-1-p1-aaaa', '20261204T010001Z-1-p1-bbbb'], "both workers' recordings");
  t.match(all.problems, [/^worker 1: stray\.txt: added/], 'a problem names its worker');
  t.equal(all.ok, false, 'one directory with a problem: not ok');
  t.match(views.mediaPath('20261204T010001Z-1-p1-bbbb', 'audio-1.opus'), { type: 'audio/ogg', size: 4 }, "worker 1's media file is found");
  t.equal(views.mediaPath('20261204T010001Z-1-p1-bbbb', '../stray.txt'), null, 'traversal still refused');
});
