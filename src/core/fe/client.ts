import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { systemClock, type Clock } from '../../util/clock.js';
import { FeError, type FeApi } from './frontend.js';
import { H_NONCE, H_SIG, signRequest, verifyResponse } from './sign.js';
import type { ConferenceRow } from './store.js';

const MAX_RESPONSE = 64 * 1024;

/** The director's handle on an FE of `core.pool`: signed requests (sign.ts), signed answers checked. */
export class RemoteFe implements FeApi {
  private readonly base: URL;

  constructor(
    baseUrl: string,
    private readonly secret: string,
    private readonly clock: Clock = systemClock,
    private readonly timeoutMs = 5000,
    private readonly ca?: string | Buffer,
  ) {
    this.base = new URL(baseUrl);
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:')
      throw new Error(`core.pool: ${baseUrl}: http:// or https:// URL`);
  }

  get url(): string {
    return this.base.href;
  }

  private call(method: 'GET' | 'POST', path: string, obj?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
    const body = obj === undefined ? '' : JSON.stringify(obj);
    const basePath = this.base.pathname.replace(/\/$/, '');
    const fullPath = basePath + path;
    const headers = signRequest(this.secret, method, fullPath, body, Math.floor(this.clock.now() / 1000));
    const nonce = headers[H_NONCE]!;
    const mod = this.base.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = mod(
        {
          host: this.base.hostname.replace(/^\[|\]$/g, ''),
          port: this.base.port || (this.base.protocol === 'https:' ? 443 : 80),
          method,
          path: fullPath,
          headers: { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
          timeout: this.timeoutMs,
          ...(this.ca ? { ca: this.ca } : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          let n = 0;
          res.on('data', (c: Buffer) => {
            n += c.length;
            if (n > MAX_RESPONSE) {
              req.destroy(new Error('FE answer too large'));
              return;
            }
            chunks.push(c);
          });
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            if (!verifyResponse(this.secret, nonce, status, text, res.headers[H_SIG] as string | undefined)) {
              reject(new Error(`FE ${this.base.host}: answer not signed with the pool secret (status ${status})`));
              return;
            }
            try {
              resolve({ status, json: JSON.parse(text) as Record<string, unknown> });
            } catch {
              reject(new Error(`FE ${this.base.host}: answer is not JSON`));
            }
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`FE ${this.base.host}: timeout`)));
      req.on('error', reject);
      req.end(body);
    });
  }

  private static fail(status: number, json: Record<string, unknown>): never {
    const e = (json.error ?? {}) as { code?: unknown; message?: unknown };
    throw new FeError(
      status,
      typeof e.code === 'string' ? e.code : 'fe_error',
      typeof e.message === 'string' ? e.message : `FE answered ${status}`,
    );
  }

  async info() {
    const { status, json } = await this.call('GET', '/fe/v1/info');
    if (status !== 200 || typeof json.public_key !== 'string' || typeof json.fingerprint !== 'string') RemoteFe.fail(status, json);
    return { public_key: json.public_key as string, fingerprint: json.fingerprint as string };
  }

  async createConference(req: { key: unknown; owner: string; title?: unknown; expires?: unknown }) {
    const { status, json } = await this.call('POST', '/fe/v1/conferences', req);
    if (status !== 201 || typeof json.id !== 'string') RemoteFe.fail(status, json);
    return { id: json.id as string };
  }

  async conference(id: string) {
    const { status, json } = await this.call('GET', `/fe/v1/conferences/${encodeURIComponent(id)}`);
    if (status === 404) return null;
    if (status !== 200) RemoteFe.fail(status, json);
    return json as unknown as ConferenceRow;
  }

  async ha1(id: string, identity: string) {
    const { status, json } = await this.call('POST', `/fe/v1/conferences/${encodeURIComponent(id)}/ha1`, { identity });
    if (status === 404) return null;
    if (status !== 200 || typeof json.ha1 !== 'string') RemoteFe.fail(status, json);
    return json.ha1 as string;
  }

  async claim(id: string, identity: string, holder: string, until: number) {
    const { status, json } = await this.call('POST', `/fe/v1/conferences/${encodeURIComponent(id)}/claim`, { identity, holder, until });
    if (status !== 200) RemoteFe.fail(status, json);
    return json.claimed === true;
  }

  async release(id: string, identity: string, holder: string | null = null) {
    const { status, json } = await this.call('POST', `/fe/v1/conferences/${encodeURIComponent(id)}/release`, { identity, holder });
    if (status !== 200) RemoteFe.fail(status, json);
    return json.released === true;
  }

  async releaseOthers(run: string) {
    const { status, json } = await this.call('POST', '/fe/v1/claims/reset', { run });
    if (status !== 200 || typeof json.released !== 'number') RemoteFe.fail(status, json);
    return json.released as number;
  }
}
