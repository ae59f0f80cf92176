// A tiny HTTP server on 127.0.0.1 for browser tests: serves test/e2e/pages (or another
// folder) and a signalling mailbox. http://127.0.0.1 is a potentially trustworthy
// origin, so pages get a secure context (getUserMedia, crypto.subtle) without TLS.
//
// Mailbox: POST /signal/ROOM/NAME with a JSON body queues a message for NAME;
// GET /signal/ROOM/NAME returns the queued messages as a JSON array, waiting up to
// 15 s (long poll) when there are none.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

export const PAGES_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'pages');

export type ExtraRoute = (req: IncomingMessage, res: ServerResponse, url: URL) => boolean | Promise<boolean>;

export interface PageServer {
  /** http://127.0.0.1:PORT (no trailing slash). */
  readonly origin: string;
  readonly port: number;
  /**
   * The signalling mailbox from Node, for calls between a page and a Node peer:
   * send() queues a message for `to` as a page's POST would; recv() takes the queued
   * messages for `me` (waiting up to timeoutMs, then resolving []).
   */
  readonly mailbox: {
    send(room: string, to: string, msg: unknown): void;
    recv(room: string, me: string, timeoutMs?: number): Promise<unknown[]>;
  };
  /** Absolute URL of a page path, e.g. url('/turn-call.html'). */
  url(path: string): string;
  close(): Promise<void>;
}

export interface PageServerOptions {
  root?: string;
  /** Extra handlers tried before the static files; return true when handled. */
  routes?: ExtraRoute[];
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.css': 'text/css',
};

const LONG_POLL_MS = 15_000;
const MAX_BODY = 1 << 20;

export async function startPageServer(opts: PageServerOptions = {}): Promise<PageServer> {
  const root = resolve(opts.root ?? PAGES_DIR);
  const boxes = new Map<string, { queue: unknown[]; waiters: Array<(msgs: unknown[]) => void> }>();
  const box = (key: string) => {
    let b = boxes.get(key);
    if (!b) boxes.set(key, (b = { queue: [], waiters: [] }));
    return b;
  };

  const readBody = (req: IncomingMessage): Promise<string> =>
    new Promise((res, rej) => {
      const chunks: Buffer[] = [];
      let n = 0;
      req.on('data', (c: Buffer) => {
        n += c.length;
        if (n > MAX_BODY) {
          rej(new Error('body too large'));
          req.destroy();
        } else chunks.push(c);
      });
      req.on('end', () => res(Buffer.concat(chunks).toString('utf8')));
      req.on('error', rej);
    });

  const deliver = (key: string, msg: unknown): void => {
    const b = box(key);
    const w = b.waiters.shift();
    if (w) w([msg]);
    else b.queue.push(msg);
  };

  const signal = async (req: IncomingMessage, res: ServerResponse, key: string): Promise<void> => {
    const b = box(key);
    if (req.method === 'POST') {
      deliver(key, JSON.parse(await readBody(req)) as unknown);
      res.writeHead(204).end();
      return;
    }
    const reply = (msgs: unknown[]) => {
      if (!res.writableEnded) res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(msgs));
    };
    if (b.queue.length) return reply(b.queue.splice(0));
    let waiter: ((msgs: unknown[]) => void) | null = null;
    const timer = setTimeout(() => {
      b.waiters = b.waiters.filter((x) => x !== waiter);
      reply([]);
    }, LONG_POLL_MS);
    waiter = (msgs) => {
      clearTimeout(timer);
      reply(msgs);
    };
    b.waiters.push(waiter);
    res.on('close', () => {
      clearTimeout(timer);
      if (!res.writableEnded) {
        // The client went away: keep any message for the next poll.
        b.waiters = b.waiters.filter((x) => x !== waiter);
      }
    });
  };

  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      for (const route of opts.routes ?? []) if (await route(req, res, url)) return;
      const m = /^\/signal\/([^/]+)\/([^/]+)$/.exec(url.pathname);
      if (m) return await signal(req, res, `${decodeURIComponent(m[1]!)}/${decodeURIComponent(m[2]!)}`);
      if (req.method !== 'GET') return void res.writeHead(405).end();
      const rel = normalize(decodeURIComponent(url.pathname === '/' ? '/index.html' : url.pathname));
      const file = join(root, rel);
      if (file !== root && !file.startsWith(root + sep)) return void res.writeHead(403).end();
      const body = await readFile(file).catch(() => null);
      if (!body) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' }).end(body);
    } catch (e) {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(e));
    }
  });
  await new Promise<void>((r, j) => {
    server.once('error', j);
    server.listen(0, '127.0.0.1', () => r());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  const origin = `http://127.0.0.1:${port}`;
  let closing: Promise<void> | null = null;
  return {
    origin,
    port,
    mailbox: {
      send: (room, to, msg) => deliver(`${room}/${to}`, JSON.parse(JSON.stringify(msg)) as unknown),
      recv(room, me, timeoutMs = LONG_POLL_MS) {
        const b = box(`${room}/${me}`);
        if (b.queue.length) return Promise.resolve(b.queue.splice(0));
        return new Promise<unknown[]>((r) => {
          const waiter = (msgs: unknown[]) => {
            clearTimeout(timer);
            r(msgs);
          };
          const timer = setTimeout(() => {
            b.waiters = b.waiters.filter((x) => x !== waiter);
            r([]);
          }, timeoutMs);
          b.waiters.push(waiter);
        });
      },
    },
    url: (path) => origin + (path.startsWith('/') ? path : `/${path}`),
    close() {
      closing ??= new Promise<void>((r) => {
        for (const b of boxes.values()) for (const w of b.waiters.splice(0)) w([]);
        server.close(() => r());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
