/**
 * The director's HTTP layer: a small router over node:http (RFC 9110 semantics).
 *
 * Other modules add their routes and WebSocket upgrades through the CoreHttp they are
 * given (src/core/index.ts passes it to every core module):
 *
 *   http.addRoutes([
 *     { method: 'POST', path: '/v1/conferences', handler: async (ctx) => ctx.send(201, {...}) },
 *     { method: 'GET', path: '/v1/conferences/:id', handler: (ctx) => ctx.send(200, { id: ctx.params.id }) },
 *     { method: 'GET', path: '/static/*rest', handler: ... },   // ctx.params.rest: the tail
 *   ]);
 *   http.onUpgrade('/v1/signal', (req, socket, head) => wss.handleUpgrade(req, socket, head, ...));
 *
 * - Patterns are split on `/`; `:name` matches one non-empty segment (percent-decoded),
 *   `*name` (last) the rest of the path. A path that matches but with another method
 *   gets 405 with `Allow` (RFC 9110 §15.5.6); no match: 404 `not_found`.
 * - `await ctx.body()` parses a JSON object body of at most `maxBodyBytes` (64 KiB), strict
 *   JSON (src/core/json-body.ts: UTF-8, no duplicate member names); anything else is 400
 *   `bad_request`. An empty body is `{}`.
 * - A handler throws CoreError for an error answer (core.md §2). Any other exception
 *   (or rejection) is answered 500 `internal`, counted by the Supervisor
 *   (`core.http`), and never crashes the process. Upgrade handlers are supervised too
 *   (`core.upgrade`): the socket is destroyed.
 * - Logs name the route pattern, never the request path (personal URLs carry a secret
 *   in the path), and never headers or bodies (tokens, Digest responses).
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../util/log.js';
import type { Supervisor } from '../util/supervise.js';
import { CoreError, errorBody, sendError, sendJson } from './errors.js';
import { readJsonBody } from './json-body.js';

export const MAX_BODY_BYTES = 64 * 1024;

export interface RequestContext {
  req: IncomingMessage;
  res: ServerResponse;
  /** Path parameters of the matched pattern. */
  params: Record<string, string>;
  url: URL;
  /** The route pattern that matched (what logs and metrics may name). */
  route: string;
  /** The peer's address (IPv4-mapped IPv6 reduced to IPv4): the rate limit's key. */
  source: string;
  /** The JSON object body (bounded); 400 bad_request when it is not one. */
  body(): Promise<Record<string, unknown>>;
  /** A JSON answer. */
  send(status: number, body: unknown, headers?: Record<string, string | string[]>): void;
}

export type Handler = (ctx: RequestContext) => void | Promise<void>;
export type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

export interface Route {
  method: string;
  path: string;
  handler: Handler;
}

interface CompiledRoute extends Route {
  segments: string[];
}

/** The source address of a request, IPv4-mapped addresses as IPv4. */
export function sourceOf(req: IncomingMessage): string {
  const a = req.socket.remoteAddress ?? 'unknown';
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

export class Router {
  private readonly routes: CompiledRoute[] = [];
  private readonly upgrades = new Map<string, UpgradeHandler>();

  constructor(
    private readonly log: Logger,
    private readonly supervisor: Supervisor,
    private readonly maxBodyBytes = MAX_BODY_BYTES,
  ) {}

  add(method: string, path: string, handler: Handler): void {
    if (!path.startsWith('/')) throw new Error(`route ${path}: patterns start with /`);
    const segments = path.split('/').slice(1);
    const m = method.toUpperCase();
    if (this.routes.some((r) => r.method === m && r.path === path)) throw new Error(`route ${m} ${path} is already defined`);
    this.routes.push({ method: m, path, handler, segments });
  }

  addRoutes(routes: Route[]): void {
    for (const r of routes) this.add(r.method, r.path, r.handler);
  }

  /** A WebSocket (RFC 6455 §4.2) or other Upgrade on exactly this path. */
  onUpgrade(path: string, handler: UpgradeHandler): void {
    if (this.upgrades.has(path)) throw new Error(`upgrade ${path} is already defined`);
    this.upgrades.set(path, handler);
  }

  private match(path: string): { matches: { route: CompiledRoute; params: Record<string, string> }[] } {
    const parts = path.split('/').slice(1);
    const matches: { route: CompiledRoute; params: Record<string, string> }[] = [];
    outer: for (const route of this.routes) {
      const params: Record<string, string> = {};
      const segs = route.segments;
      for (let i = 0; i < segs.length; i++) {
        const s = segs[i]!;
        if (s.startsWith('*')) {
          params[s.slice(1)] = parts.slice(i).join('/');
          matches.push({ route, params });
          continue outer;
        }
        const p = parts[i];
        if (p === undefined) continue outer;
        if (s.startsWith(':')) {
          if (!p) continue outer;
          try {
            params[s.slice(1)] = decodeURIComponent(p);
          } catch {
            continue outer;
          }
        } else if (s !== p) continue outer;
      }
      if (parts.length !== segs.length) continue;
      matches.push({ route, params });
    }
    return { matches };
  }

  /** The request listener of the director's server. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    let route = '(none)';
    const fail = (err: unknown) => {
      if (err instanceof CoreError) return sendError(res, err);
      this.supervisor.caught('core.http', err);
      this.log.warn({ method: req.method, route }, 'handler failed: 500');
      if (!res.headersSent) sendJson(res, 500, errorBody('internal', 'internal error'));
      else res.destroy();
    };
    try {
      const url = new URL(req.url ?? '/', 'http://director');
      const { matches } = this.match(url.pathname);
      const method = (req.method ?? 'GET').toUpperCase();
      // RFC 9110 §9.3.2: HEAD is GET without the body.
      const found =
        matches.find((m) => m.route.method === method) ?? (method === 'HEAD' ? matches.find((m) => m.route.method === 'GET') : undefined);
      if (!found) {
        req.resume();
        if (matches.length) {
          const allow = [...new Set(matches.map((m) => m.route.method))].join(', ');
          return sendError(res, new CoreError('method_not_allowed', `${method} is not allowed here`, { allow }));
        }
        return sendError(res, new CoreError('not_found', 'no such resource'));
      }
      route = found.route.path;
      const ctx = this.context(req, res, url, found.route.path, found.params);
      Promise.resolve()
        .then(() => found.route.handler(ctx))
        .then(() => {
          if (!res.headersSent && !res.writableEnded) fail(new Error(`route ${route} sent no answer`));
        }, fail);
    } catch (err) {
      fail(err);
    }
  };

  /** The upgrade listener of the director's server. */
  readonly handleUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    socket.on('error', () => socket.destroy());
    const path = new URL(req.url ?? '/', 'http://director').pathname;
    const h = this.upgrades.get(path);
    if (!h) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    this.supervisor.run(
      'core.upgrade',
      () => h(req, socket, head),
      () => socket.destroy(),
    );
  };

  private context(req: IncomingMessage, res: ServerResponse, url: URL, route: string, params: Record<string, string>): RequestContext {
    let parsed: Promise<Record<string, unknown>> | null = null;
    const max = this.maxBodyBytes;
    return {
      req,
      res,
      url,
      route,
      params,
      source: sourceOf(req),
      send: (status, body, headers) => sendJson(res, status, body, headers),
      body: () => (parsed ??= readJsonBody(req, max, { emptyIsObject: true })),
    };
  }
}

/** The director's listening server (http on loopback, https with core.tls). */
export class CoreHttpServer {
  private server: Server | null = null;
  private readonly sockets = new Set<Duplex>();
  private scheme: 'http' | 'https' = 'http';

  constructor(
    private readonly router: Router,
    private readonly opts: { maxConnections?: number; requestTimeoutMs?: number } = {},
  ) {}

  async listen(host: string, port: number, tls?: { cert: string | Buffer; key: string | Buffer }): Promise<AddressInfo> {
    this.scheme = tls ? 'https' : 'http';
    const server = tls ? createHttpsServer({ cert: tls.cert, key: tls.key }, this.router.handle) : createHttpServer(this.router.handle);
    // Bounds (README "Limits"): connections, header and request time (slowloris).
    server.maxConnections = this.opts.maxConnections ?? 10_000;
    server.requestTimeout = this.opts.requestTimeoutMs ?? 30_000;
    server.headersTimeout = 20_000;
    server.maxHeadersCount = 100;
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
      this.router.handleUpgrade(req, socket, head);
    });
    server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      else socket.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    return server.address() as AddressInfo;
  }

  get url(): string {
    const a = this.server?.address() as AddressInfo | null | undefined;
    if (!a) return '';
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `${this.scheme}://${host}:${a.port}`;
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = null;
    for (const sock of this.sockets) sock.destroy();
    s.closeAllConnections?.();
    await new Promise<void>((r) => s.close(() => r()));
  }
}
