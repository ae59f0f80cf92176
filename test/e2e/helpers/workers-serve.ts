/**
 * `gatehouse serve` with relay workers (turn.workers > 1) for the e2e tests: run from the
 * sources (node --import tsx src/cli/main.ts, so a stale dist/ cannot stand in for them),
 * with its JSON log lines collected, and a stop that SIGTERMs the supervisor and then
 * SIGKILLs any worker it did not stop. Node is started through env(1) without tap's
 * NODE_OPTIONS: tap's process-info hook (which it puts back into any environment spawn()
 * is given) writes into the checkout at exit, which a worker that dropped to nobody may not.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { children } from './run.js';
import { until } from './redis.js';
import { REPO_ROOT } from './turn-servers.js';

export type LogLine = Record<string, any>;

/** Node without tap's NODE_OPTIONS: `[command, ...args]`. */
export const NODE_WITHOUT_TAP = ['env', '-u', 'NODE_OPTIONS', process.execPath] as const;

export interface WorkersServe {
  sup: ChildProcess;
  /** The supervisor's and the workers' log lines, parsed, in arrival order. */
  lines: LogLine[];
  /** Everything printed, for a failure message or a check that no secret is in it. */
  raw(): string;
  /** The supervisor's 'relay workers listening' line (its workers), or null when serve ended first. */
  listening: LogLine | null;
  /** Worker pids to SIGKILL at stop should the supervisor leave any (add restarted ones). */
  workerPids: Set<number>;
  stop(): Promise<void>;
}

export async function startWorkersServe(configFile: string): Promise<WorkersServe> {
  const lines: LogLine[] = [];
  let raw = '';
  let tail = '';
  const sup = spawn(
    NODE_WITHOUT_TAP[0],
    [...NODE_WITHOUT_TAP.slice(1), '--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), 'serve', '--config', configFile],
    { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.add(sup);
  const onData = (d: Buffer) => {
    raw += d.toString();
    tail += d.toString();
    let i;
    while ((i = tail.indexOf('\n')) >= 0) {
      const line = tail.slice(0, i);
      tail = tail.slice(i + 1);
      try {
        lines.push(JSON.parse(line));
      } catch {
        /* not a log line */
      }
    }
  };
  sup.stdout!.on('data', onData);
  sup.stderr!.on('data', onData);
  const workerPids = new Set<number>();
  const find = () => lines.find((l) => l.msg === 'relay workers listening') ?? null;
  await until(() => !!find() || sup.exitCode !== null, 60_000);
  const listening = find();
  for (const w of (listening?.workers ?? []) as { pid: number }[]) workerPids.add(w.pid);
  return {
    sup,
    lines,
    raw: () => raw,
    listening,
    workerPids,
    async stop() {
      if (sup.exitCode === null) {
        const exited = new Promise((r) => sup.once('exit', r));
        sup.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 15000))]);
      }
      for (const pid of workerPids) {
        try {
          process.kill(pid, 'SIGKILL'); // only if the supervisor did not stop them
        } catch {
          /* gone */
        }
      }
      sup.kill('SIGKILL');
    },
  };
}
