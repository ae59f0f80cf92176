/**
 * The web client's static files (src/core/web/), served by the director with a strict
 * Content-Security-Policy (W3C CSP Level 3): scripts only from this origin and never
 * inline, no plugins, no framing, no <base>. The files are read once, at load, into a
 * fixed map: nothing else on disk is reachable through these routes.
 *
 * Registration: `webModule` in MODULES of src/core/index.ts (GET /, GET /join/:id and
 * GET /web/:file);
 * other routes that show the client (core.md §7: GET of a personal URL serves the web
 * client and spends nothing) answer with `serveIndex(ctx.res, ctx.req.method)`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CoreError } from './errors.js';
import type { CoreModule } from './director.js';

/** The policy every page and file of the client is served with. */
export const WEB_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; " +
  "media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

export interface WebFile {
  readonly type: string;
  readonly body: Buffer;
}

const TYPES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8', // RFC 9239 §6
  'lib.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};

function webDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  // src/core/web (tsx), or from dist/core/ back to the sources the package ships.
  for (const d of [join(here, 'web'), join(here, '../../src/core/web')]) if (existsSync(join(d, 'index.html'))) return d;
  throw new Error('the web client files (src/core/web) are missing');
}

function load(): ReadonlyMap<string, WebFile> {
  const dir = webDir();
  const m = new Map<string, WebFile>();
  for (const [name, type] of Object.entries(TYPES)) m.set(name, { type, body: readFileSync(join(dir, name)) });
  return m;
}

/** name → file; the only files served. */
export const WEB_FILES: ReadonlyMap<string, WebFile> = load();

/** Headers of a client file. */
export function webHeaders(file: WebFile, name: string): Record<string, string> {
  return {
    'Content-Type': file.type,
    'Content-Length': String(file.body.length),
    'Content-Security-Policy': WEB_CSP,
    'X-Content-Type-Options': 'nosniff',
    // Personal URLs carry their secret in the path: never in a Referer (RFC 9110 §10.1.3).
    'Referrer-Policy': 'no-referrer',
    'Cross-Origin-Opener-Policy': 'same-origin',
    'Permissions-Policy': 'camera=(self), microphone=(self), display-capture=()',
    // The page may be a personal invitation: not kept by caches (RFC 9111 §5.2.2.5).
    'Cache-Control': name === 'index.html' ? 'no-store' : 'no-cache',
  };
}

/** Answers with one client file (GET, or HEAD without the body, RFC 9110 §9.3.2); false if unknown. */
export function serveWebFile(res: ServerResponse, name: string, method = 'GET'): boolean {
  const f = WEB_FILES.get(name);
  if (!f) return false;
  res.writeHead(200, webHeaders(f, name));
  res.end(method.toUpperCase() === 'HEAD' ? undefined : f.body);
  return true;
}

/** The client's page. */
export function serveIndex(res: ServerResponse, method = 'GET'): void {
  serveWebFile(res, 'index.html', method);
}

/** The shape of the director's routes (src/core/http.ts Route), structurally. */
export interface WebRoute {
  method: string;
  path: string;
  handler: (ctx: { req: IncomingMessage; res: ServerResponse; params: Record<string, string> }) => void;
}

/** GET /, GET /join/:id (the page) and GET /web/:file (anything else of the folder: 404 not_found, core.md §2). */
export function webRoutes(): WebRoute[] {
  return [
    { method: 'GET', path: '/', handler: (ctx) => serveIndex(ctx.res, ctx.req.method) },
    // The join_url of a conference (src/core/conferences.ts: /join/{id}) opens the client,
    // which reads the id from the path (and the key from the fragment, never sent here).
    { method: 'GET', path: '/join/:id', handler: (ctx) => serveIndex(ctx.res, ctx.req.method) },
    {
      method: 'GET',
      path: '/web/:file',
      handler: (ctx) => {
        const name = ctx.params.file ?? '';
        if (name === 'index.html' || !serveWebFile(ctx.res, name, ctx.req.method)) throw new CoreError('not_found', 'no such file');
      },
    },
  ];
}

/** The web client as a core module (src/core/index.ts MODULES). */
export const webModule: CoreModule = (core) => core.http.addRoutes(webRoutes());
