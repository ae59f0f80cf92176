import { createReadStream, existsSync, readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FailureLimiter } from '../core/ratelimit.js';
import { systemClock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { EveEvent } from '../events/eve.js';
import { filterEvents } from './event-filter.js';
import { parseRange } from './range.js';
import { RecordingsViews } from './recordings-view.js';
import { SessionStore, sessionCookie, SESSION_COOKIE } from './session.js';
import { secretDigest, secretMatches } from './token.js';

/**
 * The dashboard (issue 14) on the admin listener: `GET /` is a login form without a
 * session, the dashboard page with one. Login posts the admin token (form or JSON) to
 * /login and gets an HttpOnly SameSite=Strict session cookie (Secure on https). The page
 * reads JSON under /ui/ (401 without a session) and an event stream (SSE, WHATWG HTML
 * §9.2); every state-changing request carries the session's CSRF token in X-CSRF-Token
 * (403 otherwise). Nothing under /ui ever carries a secret: see redact().
 */

/** Bounds (README limits table). */
export const DASHBOARD_LIMITS = {
  sessions: 64,
  sessionTtlMs: 8 * 3600_000,
  sseClients: 16,
  /** Bytes an event-stream client may have unsent before it is dropped (a stalled reader). */
  sseBufferBytes: 1 << 20,
  heartbeatMs: 15_000,
  loginFailuresPerSource: 10,
  loginFailuresTotal: 100,
  loginWindowMs: 60_000,
  loginBodyBytes: 4096,
};

/** W3C Content Security Policy Level 3 (a W3C spec, no RFC): no inline script or style, only this origin. */
export const DASHBOARD_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; media-src 'self'; img-src 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const STATIC: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'login.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8', // RFC 9239 §6
  'app.css': 'text/css; charset=utf-8',
};

function uiDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  // src/admin/ui (tsx), or from dist/admin/ back to the sources the package ships.
  for (const d of [join(here, 'ui'), join(here, '../../src/admin/ui')]) if (existsSync(join(d, 'index.html'))) return d;
  throw new Error('the dashboard files (src/admin/ui) are missing');
}

let files: Map<string, Buffer> | undefined;
function uiFile(name: string): Buffer {
  if (!files) {
    const dir = uiDir();
    files = new Map(Object.keys(STATIC).map((n) => [n, readFileSync(join(dir, n))]));
  }
  return files.get(name)!;
}

/** Event types the live stream carries: alerts, blocks, quota crossings, key outcomes. */
export const LIVE_EVENT_TYPES = ['alert', 'flow_blocked', 'quota', 'flow_uninspected', 'keys_invalid', 'keys_verified'];

/** Property names never sent to the page, at any depth (belt and braces: no source should carry them). */
const SECRET_NAME = /secret|passw|token|private|master|keylog|credential|srtp_key|key_material|^key$|^keys_?set/i;

/** A copy of v without properties whose name looks like a secret. */
export function redact(v: unknown, depth = 0): unknown {
  if (depth > 12 || v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map((x) => redact(x, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) if (!SECRET_NAME.test(k)) out[k] = redact(x, depth + 1);
  return out;
}

export interface DashboardSources {
  token: string;
  recentEvents: () => readonly EveEvent[];
  flows?: () => unknown[] | Promise<unknown[]>;
  /** Live events (MemoryEventSink.subscribe): null when too many listen already. */
  subscribe?: (fn: (e: EveEvent) => void) => (() => void) | null;
  recordingsDir?: string;
  /** Relay workers (issue 13): worker 0 shows every worker's recordings directory, in worker order. */
  recordingsDirs?: string[];
  quotas?: () => unknown[] | Promise<unknown[]>;
  policy?: () => unknown;
  reloadPolicy?: () => Promise<{ ok: boolean; message: string }>;
}

interface Sse {
  res: ServerResponse;
  unsubscribe: () => void;
  /** The session it belongs to: a logout or an expiry ends the stream too. */
  session: string;
}

export class Dashboard {
  readonly sessions = new SessionStore(DASHBOARD_LIMITS.sessions, DASHBOARD_LIMITS.sessionTtlMs);
  private readonly limiter = new FailureLimiter(systemClock, {
    max: DASHBOARD_LIMITS.loginFailuresPerSource,
    windowMs: DASHBOARD_LIMITS.loginWindowMs,
    maxSources: 1024,
  });
  private readonly totalLimiter = new FailureLimiter(systemClock, {
    max: DASHBOARD_LIMITS.loginFailuresTotal,
    windowMs: DASHBOARD_LIMITS.loginWindowMs,
    maxSources: 1,
  });
  private readonly tokenDigest: Buffer;
  private readonly sse = new Set<Sse>();
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly recordings: RecordingsViews | undefined;

  constructor(
    private readonly src: DashboardSources,
    private readonly secure: () => boolean,
    private readonly log: Logger,
  ) {
    this.tokenDigest = secretDigest(src.token);
    const dirs = src.recordingsDirs ?? (src.recordingsDir ? [src.recordingsDir] : []);
    this.recordings = dirs.length ? new RecordingsViews(dirs) : undefined;
  }

  /** Number of live event-stream clients. */
  get streams(): number {
    return this.sse.size;
  }

  close(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    for (const c of [...this.sse]) this.dropStream(c);
  }

  /** Handles the dashboard's paths; false when the path is not one of them. */
  async handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
    const path = url.pathname;
    const m = req.method ?? 'GET';
    if (path === '/' && (m === 'GET' || m === 'HEAD')) return (this.page(req, res), true);
    if (path === '/login' && m === 'POST') return (await this.login(req, res), true);
    if (path === '/favicon.ico' && m === 'GET') return (this.send(res, 204, 'image/x-icon', ''), true); // no icon, no 404 in the console
    // Object.hasOwn: /ui/constructor or /ui/__proto__ is no page file (STATIC's prototype is not looked at).
    if (path.startsWith('/ui/') && m === 'GET' && Object.hasOwn(STATIC, path.slice(4)) && path.slice(4) !== 'index.html') {
      // The page's scripts and style: public (the login form uses them), no secret in them.
      const name = path.slice(4);
      this.send(res, 200, STATIC[name]!, uiFile(name), { 'cache-control': 'no-cache' });
      return true;
    }
    if (path === '/logout' || path.startsWith('/ui/')) {
      const session = this.sessions.lookup(req.headers.cookie);
      if (!session) return (this.json(res, 401, { error: 'login required' }), true);
      if (m !== 'GET' && m !== 'HEAD') {
        // State-changing: the session's CSRF token in X-CSRF-Token (OWASP synchronizer token),
        // and, when the browser says where the request comes from, this origin (RFC 6454 §7).
        const sent = req.headers['x-csrf-token'];
        if (!this.sessions.csrfMatches(session, typeof sent === 'string' ? sent : undefined) || !this.sameOrigin(req))
          return (this.json(res, 403, { error: 'CSRF token missing or wrong' }), true);
      }
      await this.route(req, res, url, session, m);
      return true;
    }
    return false;
  }

  private async route(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    session: { id: string; csrf: string },
    m: string,
  ): Promise<void> {
    const path = url.pathname;
    if (m === 'POST' && path === '/logout') {
      this.sessions.destroy(session.id);
      for (const c of [...this.sse]) if (c.session === session.id) this.dropStream(c);
      res.setHeader('set-cookie', `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0${this.secure() ? '; Secure' : ''}`);
      return this.json(res, 200, { ok: true });
    }
    if (m === 'GET' && path === '/ui/session') return this.json(res, 200, { csrf: session.csrf });
    if (m === 'GET' && path === '/ui/flows') return this.json(res, 200, (await this.src.flows?.()) ?? []);
    if (m === 'GET' && path === '/ui/events') {
      const q = new URLSearchParams(url.searchParams);
      if (!q.has('event_type')) q.set('event_type', LIVE_EVENT_TYPES.join(','));
      if (!q.has('limit')) q.set('limit', '200');
      return this.json(res, 200, filterEvents(this.src.recentEvents(), q));
    }
    if (m === 'GET' && path === '/ui/events/stream') return this.stream(req, res, session.id);
    if (m === 'GET' && path === '/ui/quotas') return this.json(res, 200, (await this.src.quotas?.()) ?? []);
    if (m === 'GET' && path === '/ui/policy') return this.json(res, 200, this.src.policy?.() ?? null);
    if (m === 'POST' && path === '/ui/policy/reload') {
      if (!this.src.reloadPolicy) return this.json(res, 501, { error: 'the policy engine is not part of this build' });
      const r = await this.src.reloadPolicy();
      return this.json(res, r.ok ? 200 : 422, { ok: r.ok, message: r.message });
    }
    if (m === 'GET' && path === '/ui/recordings') {
      if (!this.recordings) return this.json(res, 200, { recordings: [], unsealed: [], problems: [], ok: true });
      return this.json(res, 200, this.recordings.list());
    }
    const rec = /^\/ui\/recordings\/([^/]+)\/([^/]+)$/.exec(path);
    if ((m === 'GET' || m === 'HEAD') && rec) return this.media(req, res, rec[1]!, rec[2]!);
    this.json(res, 404, { error: 'not found' });
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return {
      'content-security-policy': DASHBOARD_CSP,
      'x-content-type-options': 'nosniff',
      // same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on form posts.
      'referrer-policy': 'same-origin',
      'x-frame-options': 'DENY',
      'cache-control': 'no-store',
      ...extra,
    };
  }

  private send(res: ServerResponse, status: number, type: string, body: Buffer | string, extra: Record<string, string> = {}): void {
    const b = typeof body === 'string' ? Buffer.from(body) : body;
    res.writeHead(status, this.headers({ 'content-type': type, 'content-length': String(b.length), ...extra }));
    res.end(res.req?.method === 'HEAD' ? undefined : b);
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    this.send(res, status, 'application/json', JSON.stringify(redact(body)));
  }

  private sameOrigin(req: IncomingMessage): boolean {
    const origin = req.headers.origin;
    if (origin === undefined) return true; // not a browser, or an old one: the CSRF token decides
    return origin === `${this.secure() ? 'https' : 'http'}://${req.headers.host ?? ''}`;
  }

  private page(req: IncomingMessage, res: ServerResponse): void {
    const session = this.sessions.lookup(req.headers.cookie);
    if (!session) return this.send(res, 200, STATIC['login.html']!, uiFile('login.html'));
    // The CSRF token goes into the page (a meta tag): base64url, nothing to escape.
    const html = uiFile('index.html').toString('utf8').replace('{{csrf}}', session.csrf);
    this.send(res, 200, STATIC['index.html']!, html);
  }

  private async login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const source = req.socket.remoteAddress ?? '?';
    const wait = Math.max(this.limiter.retryAfter(source), this.totalLimiter.retryAfter('*'));
    const wantsJson = /json/i.test(req.headers['content-type'] ?? '') || /json/i.test(req.headers.accept ?? '');
    if (wait > 0) {
      req.resume();
      // RFC 6585 §4 with Retry-After (RFC 9110 §10.2.3).
      return this.send(res, 429, 'application/json', JSON.stringify({ error: `too many failed logins; retry in ${wait} s` }), {
        'retry-after': String(wait),
      });
    }
    if (!this.sameOrigin(req)) {
      req.resume();
      return this.json(res, 403, { error: 'cross-origin login refused' });
    }
    let token: string | undefined;
    try {
      const body = await readBody(req, DASHBOARD_LIMITS.loginBodyBytes);
      if (/json/i.test(req.headers['content-type'] ?? '')) {
        const v = JSON.parse(body) as { token?: unknown };
        token = typeof v.token === 'string' ? v.token : undefined;
      } else token = new URLSearchParams(body).get('token') ?? undefined;
    } catch {
      return this.json(res, 400, { error: 'unreadable login request' });
    }
    if (!secretMatches(token, this.tokenDigest)) {
      this.limiter.fail(source);
      this.totalLimiter.fail('*');
      this.log.warn({ source }, 'dashboard login failed');
      if (wantsJson) return this.json(res, 401, { error: 'wrong admin token' });
      const html = uiFile('login.html').toString('utf8').replace('<p id="error" hidden></p>', '<p id="error">Wrong admin token.</p>');
      return this.send(res, 401, STATIC['login.html']!, html);
    }
    const s = this.sessions.create();
    this.log.info({ source }, 'dashboard login');
    const cookie = sessionCookie(s.id, this.secure(), Math.floor(DASHBOARD_LIMITS.sessionTtlMs / 1000));
    if (wantsJson) {
      res.setHeader('set-cookie', cookie);
      return this.json(res, 200, { ok: true, csrf: s.csrf });
    }
    // RFC 9110 §15.4.4: 303 See Other turns the POST into a GET of the dashboard.
    res.writeHead(303, this.headers({ 'set-cookie': cookie, location: '/', 'content-length': '0' }));
    res.end();
  }

  /** GET /ui/events/stream: text/event-stream (WHATWG HTML §9.2), bounded clients, heartbeats. */
  private stream(req: IncomingMessage, res: ServerResponse, session: string): void {
    if (this.sse.size >= DASHBOARD_LIMITS.sseClients || !this.src.subscribe)
      return this.send(res, 503, 'application/json', JSON.stringify({ error: 'too many event streams' }), { 'retry-after': '10' });
    let client: Sse | undefined;
    const unsubscribe = this.src.subscribe((e) => {
      if (!client || !LIVE_EVENT_TYPES.includes(e.event_type)) return;
      // A reader that does not keep up is dropped rather than buffered without bound.
      if (res.writableLength > DASHBOARD_LIMITS.sseBufferBytes) return this.dropStream(client);
      try {
        res.write(`event: ${e.event_type}\ndata: ${JSON.stringify(redact(e))}\n\n`);
      } catch {
        this.dropStream(client); // one client's failure ends that stream, never the sink or the process
      }
    });
    if (!unsubscribe)
      return this.send(res, 503, 'application/json', JSON.stringify({ error: 'too many event listeners' }), { 'retry-after': '10' });
    client = { res, unsubscribe, session };
    this.sse.add(client);
    res.writeHead(200, this.headers({ 'content-type': 'text/event-stream; charset=utf-8', 'x-accel-buffering': 'no' }));
    // `retry:` sets the reconnection time (ms); a comment line opens the stream at once.
    res.write('retry: 3000\n: gatehouse events\n\n');
    const c = client;
    req.on('close', () => this.dropStream(c));
    res.on('error', () => this.dropStream(c));
    if (!this.heartbeat) {
      this.heartbeat = setInterval(() => {
        for (const s of [...this.sse]) {
          // A session that expired (or was pushed out of the store) ends its stream.
          if (!this.sessions.lookup(`${SESSION_COOKIE}=${s.session}`)) this.dropStream(s);
          else if (s.res.writableLength <= DASHBOARD_LIMITS.sseBufferBytes) s.res.write(': heartbeat\n\n');
        }
      }, DASHBOARD_LIMITS.heartbeatMs);
      this.heartbeat.unref();
    }
  }

  private dropStream(c: Sse): void {
    if (!this.sse.delete(c)) return;
    c.unsubscribe();
    c.res.destroy();
    if (this.sse.size === 0 && this.heartbeat) {
      clearInterval(this.heartbeat);
      this.heartbeat = undefined;
    }
  }

  /** A recording's media file, with Range support (RFC 9110 §14) so media elements can seek. */
  private media(req: IncomingMessage, res: ServerResponse, id: string, file: string): void {
    let dId: string;
    let dFile: string;
    try {
      dId = decodeURIComponent(id);
      dFile = decodeURIComponent(file);
    } catch {
      return this.json(res, 404, { error: 'no such recording file' });
    }
    const f = this.recordings?.mediaPath(dId, dFile);
    if (!f) return this.json(res, 404, { error: 'no such recording file' });
    const ifRange = req.headers['if-range'];
    const r = parseRange(req.headers.range, f.size, ifRange === undefined ? undefined : String(ifRange));
    const base = { 'content-type': f.type, 'accept-ranges': 'bytes', 'cache-control': 'private, no-cache' };
    if (r === 'unsatisfiable') {
      res.writeHead(416, this.headers({ ...base, 'content-range': `bytes */${f.size}`, 'content-length': '0' }));
      return void res.end();
    }
    const start = r ? r.start : 0;
    const end = r ? r.end : f.size - 1;
    const len = f.size === 0 ? 0 : end - start + 1;
    res.writeHead(
      r ? 206 : 200,
      this.headers({ ...base, 'content-length': String(len), ...(r ? { 'content-range': `bytes ${start}-${end}/${f.size}` } : {}) }),
    );
    if (req.method === 'HEAD' || len === 0) return void res.end();
    // pipeline(): a client that goes away closes the file too.
    pipeline(createReadStream(f.path, { start, end }), res, () => {});
  }
}

/** The request body as text, at most max bytes (else an error). */
function readBody(req: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let n = 0;
    req.on('data', (d: Buffer) => {
      n += d.length;
      if (n > max) {
        reject(new Error('too large'));
        req.destroy();
        return;
      }
      parts.push(d);
    });
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}
