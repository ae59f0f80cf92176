import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { systemClock, type Clock } from '../../util/clock.js';
import type { Logger } from '../../util/log.js';
import { FeError, type FeApi } from './frontend.js';
import { H_SIG, RequestVerifier, signResponse } from './sign.js';

export const MAX_FE_BODY = 16 * 1024;

/**
 * The FE's HTTP face for the director (`gatehouse core-fe`). Every request must be signed
 * with core.pool_secret (sign.ts); anything else is 401 and nothing is done. Paths:
 *   GET  /fe/v1/info                         → {public_key, fingerprint}
 *   POST /fe/v1/conferences                  {key, owner, title?, expires?} → 201 {id}
 *   GET  /fe/v1/conferences/{id}             → conference row | 404
 *   POST /fe/v1/conferences/{id}/ha1         {identity} → {ha1} | 404
 *   POST /fe/v1/conferences/{id}/claim       {identity, holder, until} → {claimed}
 *   POST /fe/v1/conferences/{id}/release     {identity, holder?} → {released}
 *   POST /fe/v1/claims/reset                 {run} → {released}: claims of a director's earlier run freed
 * Logs carry method, path shape and status only: never a body (keys, HA1).
 */
export class FeHttpServer {
  private server: Server | null = null;
  private readonly verifier: RequestVerifier;

  constructor(
    private readonly fe: FeApi,
    private readonly secret: string,
    private readonly log: Logger,
    private readonly clock: Clock = systemClock,
  ) {
    this.verifier = new RequestVerifier(secret);
  }

  /** Plain HTTP (loopback), or HTTPS with tls (cert, key PEM). */
  async listen(port: number, host: string, tls?: { cert: string | Buffer; key: string | Buffer }): Promise<AddressInfo> {
    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((err) => {
        this.log.error({ err: String((err as Error)?.message ?? err) }, 'core-fe: request failed');
        if (!res.headersSent) this.reply(res, '', 500, { error: { code: 'internal', message: 'internal error' } });
      });
    };
    const opts = { headersTimeout: 10_000, requestTimeout: 15_000 };
    const server: Server = tls ? createHttpsServer({ ...opts, cert: tls.cert, key: tls.key }, onRequest) : createServer(opts, onRequest);
    server.maxConnections = 1024;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return server.address() as AddressInfo;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    s.closeAllConnections?.();
    await new Promise<void>((r) => s.close(() => r()));
  }

  private reply(res: ServerResponse, nonce: string, status: number, obj: unknown): void {
    const body = JSON.stringify(obj);
    const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
    if (nonce) headers[H_SIG] = signResponse(this.secret, nonce, status, body);
    res.writeHead(status, headers);
    res.end(body);
  }

  private async readBody(req: IncomingMessage): Promise<string | null> {
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of req) {
      n += (c as Buffer).length;
      if (n > MAX_FE_BODY) return null;
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks).toString('utf8');
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    const body = await this.readBody(req);
    if (body === null) return this.reply(res, '', 413, { error: { code: 'bad_request', message: 'body too large' } });
    const v = this.verifier.verify(method, path, req.headers, body, Math.floor(this.clock.now() / 1000));
    if (!v.ok) {
      this.log.warn({ method, reason: v.reason }, 'core-fe: refused an unauthenticated pool request');
      return this.reply(res, '', 401, {
        error: { code: v.reason === 'replayed' ? 'replayed' : 'unauthenticated', message: 'pool request not authenticated' },
      });
    }
    let json: Record<string, unknown> = {};
    if (body) {
      try {
        const p = JSON.parse(body) as unknown;
        if (p && typeof p === 'object' && !Array.isArray(p)) json = p as Record<string, unknown>;
        else throw new Error('not an object');
      } catch {
        return this.reply(res, v.nonce, 400, { error: { code: 'bad_request', message: 'body: a JSON object' } });
      }
    }
    const str = (x: unknown) => (typeof x === 'string' ? x : '');
    try {
      if (method === 'GET' && path === '/fe/v1/info') return this.reply(res, v.nonce, 200, await this.fe.info());
      if (method === 'POST' && path === '/fe/v1/conferences') {
        const out = await this.fe.createConference({ key: json.key, owner: str(json.owner), title: json.title, expires: json.expires });
        return this.reply(res, v.nonce, 201, out);
      }
      if (method === 'POST' && path === '/fe/v1/claims/reset') {
        return this.reply(res, v.nonce, 200, { released: await this.fe.releaseOthers(str(json.run)) });
      }
      const m = /^\/fe\/v1\/conferences\/([A-Za-z0-9_-]{1,64})(?:\/(ha1|claim|release))?$/.exec(path);
      if (m) {
        const id = m[1]!;
        const op = m[2];
        if (!op && method === 'GET') {
          const c = await this.fe.conference(id);
          return c
            ? this.reply(res, v.nonce, 200, c)
            : this.reply(res, v.nonce, 404, { error: { code: 'not_found', message: 'no such conference' } });
        }
        if (op === 'ha1' && method === 'POST') {
          const ha1 = await this.fe.ha1(id, str(json.identity));
          return ha1
            ? this.reply(res, v.nonce, 200, { ha1 })
            : this.reply(res, v.nonce, 404, { error: { code: 'not_found', message: 'no such conference' } });
        }
        if (op === 'claim' && method === 'POST') {
          const until = json.until;
          if (!Number.isSafeInteger(until)) return this.reply(res, v.nonce, 400, { error: { code: 'bad_request', message: 'until' } });
          return this.reply(res, v.nonce, 200, { claimed: await this.fe.claim(id, str(json.identity), str(json.holder), until as number) });
        }
        if (op === 'release' && method === 'POST') {
          const holder = typeof json.holder === 'string' ? json.holder : null;
          return this.reply(res, v.nonce, 200, { released: await this.fe.release(id, str(json.identity), holder) });
        }
      }
      return this.reply(res, v.nonce, 404, { error: { code: 'not_found', message: 'no such path' } });
    } catch (err) {
      if (err instanceof FeError) return this.reply(res, v.nonce, err.status, { error: { code: err.code, message: err.message } });
      throw err;
    }
  }
}
