// A real redis-server for tests (issue 14): started in a temp dir on a reserved loopback
// port, with no persistence; stop() kills it, start() again brings it back on the same port
// (an outage and its end, for the cluster tests).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Redis } from 'ioredis';
import { reservePortBlock, type PortBlock } from './ports.js';

export interface TestRedis {
  port: number;
  url: string;
  /** Kills the server (SIGKILL); resolves when it has exited. */
  stop(): Promise<void>;
  /** Starts it again on the same port (after stop()). */
  start(): Promise<void>;
  /** A client for assertions (reconnects by itself after an outage). */
  client(): Redis;
  /** Stops the server, disconnects the clients, removes the temp dir, frees the port. */
  close(): Promise<void>;
}

async function spawnRedis(port: number, dir: string): Promise<ChildProcess> {
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  });
  const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  probe.on('error', () => {});
  for (let i = 0; i < 100; i++) {
    try {
      await probe.connect();
      await probe.ping();
      probe.disconnect();
      return child;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  probe.disconnect();
  child.kill('SIGKILL');
  throw new Error(`redis-server did not answer on port ${port}`);
}

export async function startTestRedis(block?: PortBlock): Promise<TestRedis> {
  const own = block ? null : await reservePortBlock(1);
  const port = (block ?? own!).port(0);
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-redis-'));
  let child: ChildProcess | null = await spawnRedis(port, dir);
  const clients: Redis[] = [];
  const stop = async () => {
    const c = child;
    child = null;
    if (!c || c.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      c.once('exit', () => resolve());
      c.kill('SIGKILL');
    });
  };
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    stop,
    async start() {
      if (child) return;
      child = await spawnRedis(port, dir);
    },
    client() {
      const r = new Redis(`redis://127.0.0.1:${port}/0`, { retryStrategy: (n) => Math.min(n * 100, 500) });
      r.on('error', () => {});
      clients.push(r);
      return r;
    },
    async close() {
      for (const c of clients) c.disconnect();
      await stop();
      rmSync(dir, { recursive: true, force: true });
      own?.release();
    },
  };
}

/** Polls cond every 50 ms until it holds or ms pass. */
export async function until(cond: () => Promise<boolean> | boolean, ms = 10000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}
