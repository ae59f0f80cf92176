/**
 * The relay supervisor (src/turn/workers.ts) kills a worker that neither says ready nor
 * exits in time (issue 13 review): at the first start, start() fails and stops the rest;
 * after a restart, the hung replacement is killed and restarted again, so a worker slot
 * is never left holding a process that serves nothing. Needs the reuseport addon.
 */
import t from 'tap';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '../../../src/config/config.js';
import { RelaySupervisor } from '../../../src/turn/workers.js';
import { loadReusePort } from '../../../src/util/reuseport.js';
import { createLogger } from '../../../src/util/log.js';

const worker = fileURLToPath(new URL('../../fixtures/slow-relay-worker.mjs', import.meta.url));
const addon = loadReusePort().addon;
const skip = addon ? false : 'native/build/Release/gatehouse_reuseport.node not built';
if (!addon && process.env.CI) t.fail('the reuseport addon is not built in CI');

const cfg = parseConfig('turn:\n  workers: 2\n  relay_ports: [50000, 50009]\nstore:\n  redis: redis://127.0.0.1:1/0\n', 'f.yaml');
cfg.turn.listen = ['udp://127.0.0.1:0']; // the supervisor binds port 0 once and the others join it

function supervisor(args: string[], lines: Record<string, any>[], readyTimeoutMs: number): RelaySupervisor {
  return new RelaySupervisor({
    cfg,
    addon: addon!,
    log: createLogger({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) }),
    command: { path: worker, args },
    configFor: () => cfg,
    readyTimeoutMs,
  });
}

const alive = (pid: number | null): boolean => {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

t.test('first start: a worker that never says ready fails start() and is killed', { skip }, async (t) => {
  const lines: Record<string, any>[] = [];
  const sup = supervisor([], lines, 400);
  const started = sup.start().then(
    () => null,
    (e: Error) => e,
  );
  const pids = () => sup.workers().map((w) => w.pid);
  await new Promise((r) => setTimeout(r, 100));
  const seen = pids();
  const err = await started;
  t.match(err?.message, /relay worker \d not ready after 400 ms; killed/, 'start() fails naming the worker and the timeout');
  await new Promise((r) => setTimeout(r, 300));
  t.ok(seen.length === 2 && seen.every((p) => p !== null), 'two workers had been started');
  t.notOk(seen.some(alive), 'neither hung worker is left running');
});

t.test('after a restart: a hung replacement is killed and restarted again', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-ready-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lines: Record<string, any>[] = [];
  // Each index says ready the first time only; 3 s is time enough for a Node start under load.
  const sup = supervisor([dir], lines, 3000);
  t.teardown(() => sup.stop());
  await sup.start();
  t.ok(existsSync(join(dir, 'ready-0')) && existsSync(join(dir, 'ready-1')), 'both workers said ready once');
  process.kill(sup.workers().find((w) => w.worker === 1)!.pid!, 'SIGKILL');
  const failed = () => lines.filter((l) => l.msg === 'relay worker restart failed' && l.worker === 1);
  const deadline = Date.now() + 30_000;
  while (failed().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.ok(failed().length >= 2, `the hung replacement was killed and replaced again (${failed().length} failed restarts)`);
  t.match(failed()[0]?.err, /not ready after 3000 ms; killed/, 'the log says why');
  t.ok(sup.workers().find((w) => w.worker === 1)!.restarts >= 2, 'restarts counted');
  t.ok(alive(sup.workers().find((w) => w.worker === 0)!.pid), 'worker 0 serves on meanwhile');
});
