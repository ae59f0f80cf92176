import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { parseAdminListen, type GatehouseConfig } from '../config/config.js';
import { GatehouseError } from '../util/errors.js';
import { adminTokenProblem, secretDigest, secretMatches } from './token.js';
import type { Registry } from 'prom-client';
import type { Logger } from '../util/log.js';
import type { EveEvent } from '../events/eve.js';
import { Dashboard } from './dashboard.js';
import { filterEvents } from './event-filter.js';
import { readKeyFile } from '../util/key-files.js';

/**
 * The admin listener (contract.md "Admin HTTP API"). /metrics, /healthz and the gateway
 * certificate are open; everything under /v1 else needs `Authorization: Bearer TOKEN`.
 */
export interface AdminSources {
  registry: Registry;
  /**
   * Issue 13 (turn.workers): /metrics of every relay worker, aggregated by the supervisor
   * (src/admin/worker-metrics.ts), for worker 0's listener; absent: this registry alone.
   */
  metricsText?: () => Promise<string>;
  token: string;
  recentEvents: () => readonly EveEvent[];
  /** This gateway's flows (with relay workers, worker 0's: every worker's, asked of the supervisor). */
  flows?: () => unknown[] | Promise<unknown[]>;
  certificatePem?: () => string | undefined;
  /** Components that cannot do their work now (a full disk): /healthz says `degraded` and names them. */
  degraded?: () => string[];
  reloadPolicy?: () => Promise<{ ok: boolean; message: string }>;
  /** The dashboard (GET /, /ui/*): live events, recordings, quotas and rules (issue 14). */
  subscribe?: (fn: (e: EveEvent) => void) => (() => void) | null;
  recordingsDir?: string;
  /** Relay workers (issue 13): worker 0 shows every worker's recordings directory, in worker order. */
  recordingsDirs?: string[];
  quotas?: () => unknown[] | Promise<unknown[]>;
  policy?: () => unknown;
  /**
   * The cluster (store.redis, src/cluster/registry.ts): GET /v1/cluster (nodes and their
   * load) and GET /v1/flows?scope=cluster (the flows of every node, each with its `node`).
   */
  cluster?: {
    view: () => Promise<unknown>;
    flows: () => Promise<{ flows: unknown[]; redis: 'up' | 'down' }>;
  };
}

/**
 * `Authorization: Bearer TOKEN` (RFC 6750 §2.1; the scheme name is case-insensitive,
 * RFC 9110 §11.1). An empty or missing token never matches, whatever is configured.
 */
export function tokenMatches(header: string | undefined, expectedDigest: Buffer): boolean {
  if (typeof header !== 'string') return false;
  const m = /^bearer +(\S+) *$/i.exec(header);
  return m !== null && secretMatches(m[1], expectedDigest);
}

/** PEM certificate and key of an https:// admin listener. */
export interface AdminTls {
  cert: string | Buffer;
  key: string | Buffer;
}

/** Reads admin.tls (PEM files); errors name the key and the file, never the contents. */
export function readAdminTls(tls: GatehouseConfig['admin']['tls']): AdminTls | undefined {
  if (!tls.cert || !tls.key) return undefined;
  const read = (key: 'cert' | 'key', file: string): Buffer => {
    try {
      return key === 'key' ? readKeyFile(file) : readFileSync(file);
    } catch (err) {
      throw new GatehouseError(
        'E_ADMIN_TLS',
        `admin.tls.${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        {
          file,
        },
      );
    }
  };
  return { cert: read('cert', tls.cert), key: read('key', tls.key) };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

export class AdminServer {
  private server: Server | undefined;
  private readonly tokenDigest: Buffer;
  private scheme: 'http' | 'https' = 'http';
  /** GET / and /ui/*: the browser dashboard with its session login (dashboard.ts). */
  readonly dashboard: Dashboard;
  constructor(
    private readonly src: AdminSources,
    private readonly log: Logger,
  ) {
    // An empty (or short) token would make `Authorization: Bearer ` meaningful: refuse it here too.
    const problem = adminTokenProblem(src.token);
    if (problem) throw new GatehouseError('E_ADMIN_TOKEN', problem);
    this.tokenDigest = secretDigest(src.token);
    this.dashboard = new Dashboard(src, () => this.scheme === 'https', log);
  }

  /** Listens on host:port; with `tls`, HTTPS (the https:// admin.listen form). */
  async listen(host: string, port: number, tls?: AdminTls): Promise<AddressInfo> {
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((err: unknown) => {
        this.log.error({ err: (err as Error).message }, 'admin request failed');
        if (!res.headersSent) json(res, 500, { error: 'internal error' });
        else res.end();
      });
    };
    this.scheme = tls ? 'https' : 'http';
    this.server = tls ? (createHttpsServer({ cert: tls.cert, key: tls.key }, handler) as unknown as Server) : createServer(handler);
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, () => resolve());
    });
    return this.server.address() as AddressInfo;
  }

  /** Listens as the configuration says: admin.listen, and admin.tls when it is https://. */
  async listenConfigured(admin: GatehouseConfig['admin']): Promise<AddressInfo> {
    const { scheme, host, port } = parseAdminListen(admin.listen);
    const tls = scheme === 'https' ? readAdminTls(admin.tls) : undefined;
    return this.listen(host, port, tls);
  }

  /** The base URL being served, e.g. https://127.0.0.1:8443 (after listen). */
  get url(): string {
    const a = this.server?.address() as AddressInfo | null | undefined;
    if (!a) return '';
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `${this.scheme}://${host}:${a.port}`;
  }

  async close(): Promise<void> {
    this.dashboard.close();
    if (!this.server) return;
    this.server.closeAllConnections?.();
    await new Promise<void>((r) => this.server!.close(() => r()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname;
    if (req.method === 'GET' && path === '/healthz') {
      // Still 200: the gateway relays and inspects; what it cannot write is named.
      const degraded = this.src.degraded?.() ?? [];
      return json(res, 200, degraded.length ? { status: 'degraded', degraded } : { status: 'ok' });
    }
    if (req.method === 'GET' && path === '/metrics') {
      const body = this.src.metricsText ? await this.src.metricsText() : await this.src.registry.metrics();
      res.writeHead(200, { 'content-type': this.src.registry.contentType });
      res.end(body);
      return;
    }
    if (req.method === 'GET' && path === '/v1/gateway/certificate') {
      const pem = this.src.certificatePem?.();
      if (!pem) return json(res, 404, { error: 'no gateway certificate configured' });
      res.writeHead(200, { 'content-type': 'application/x-pem-file' });
      res.end(pem);
      return;
    }
    if (await this.dashboard.handle(req, res, url)) return;
    if (path.startsWith('/v1/')) {
      if (!tokenMatches(req.headers.authorization, this.tokenDigest)) {
        res.setHeader('www-authenticate', 'Bearer');
        return json(res, 401, { error: 'admin token required' });
      }
      if (req.method === 'GET' && path === '/v1/events') return json(res, 200, filterEvents(this.src.recentEvents(), url.searchParams));
      if (req.method === 'GET' && path === '/v1/flows') {
        // scope=cluster: every node's flows from the registry (README "Cluster"); default: this node's.
        const scope = url.searchParams.get('scope') ?? 'local';
        if (scope === 'local') return json(res, 200, (await this.src.flows?.()) ?? []);
        if (scope !== 'cluster') return json(res, 400, { error: 'scope is local or cluster' });
        if (!this.src.cluster) return json(res, 404, { error: 'no cluster: store.redis is not set' });
        const c = await this.src.cluster.flows();
        res.setHeader('gatehouse-cluster-redis', c.redis); // down: this node's flows only
        return json(res, 200, c.flows);
      }
      if (req.method === 'GET' && path === '/v1/cluster') {
        if (!this.src.cluster) return json(res, 404, { error: 'no cluster: store.redis is not set' });
        return json(res, 200, await this.src.cluster.view());
      }
      if (req.method === 'POST' && path === '/v1/policy/reload') {
        if (!this.src.reloadPolicy) return json(res, 501, { error: 'the policy engine is not part of this build yet' });
        const r = await this.src.reloadPolicy();
        return json(res, r.ok ? 200 : 422, r);
      }
    }
    json(res, 404, { error: 'not found' });
  }
}
