/**
 * Every process the bench starts goes through here, so that all of them are ended on
 * success, on error, on Ctrl-C and on exit. Each child leads its own process group, and
 * the group is signalled, so helpers a child may start go too. Nothing is killed by name.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

export interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  /** last lines of stdout+stderr, for error reports */
  tail(): string;
  /** called for every complete output line */
  onLine(fn: (line: string, stream: 'out' | 'err') => void): void;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  isRunning(): boolean;
}

const live = new Set<Proc>();
const cleanups = new Set<() => void>();
let hooked = false;

/**
 * A synchronous clean-up (a temporary folder) that also runs when the bench is stopped
 * by a signal or exits on an error. Returns a function that runs it now, once.
 */
export function onCleanup(fn: () => void): () => void {
  hookExit();
  let done = false;
  const once = (): void => {
    if (done) return;
    done = true;
    cleanups.delete(once);
    try {
      fn();
    } catch {
      /* best effort */
    }
  };
  cleanups.add(once);
  return once;
}

function signalGroup(p: Proc, sig: NodeJS.Signals): void {
  try {
    process.kill(-p.pid, sig);
  } catch {
    try {
      p.child.kill(sig);
    } catch {
      /* already gone */
    }
  }
}

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const p of live) signalGroup(p, 'SIGKILL');
    for (const fn of [...cleanups]) fn();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      process.stderr.write(`\nbench: ${sig}, stopping ${live.size} process(es)\n`);
      for (const p of live) signalGroup(p, 'SIGKILL');
      process.exit(130);
    });
  }
}

export function start(name: string, cmd: string, args: string[], opts: SpawnOptions = {}, tailLines = 60): Proc {
  hookExit();
  const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  if (child.pid === undefined) {
    throw new Error(`${name}: could not start ${cmd}`);
  }
  const lines: string[] = [];
  const listeners: Array<(line: string, stream: 'out' | 'err') => void> = [];
  let running = true;
  const feed = (stream: 'out' | 'err') => {
    let partial = '';
    return (chunk: Buffer) => {
      partial += chunk.toString('utf8');
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        lines.push(line);
        if (lines.length > tailLines) lines.shift();
        for (const fn of listeners) fn(line, stream);
      }
    };
  };
  child.stdout!.on('data', feed('out'));
  child.stderr!.on('data', feed('err'));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('error', (err) => {
      lines.push(`spawn error: ${err.message}`);
      running = false;
      live.delete(proc);
      resolve({ code: -1, signal: null });
    });
    child.once('exit', (code, signal) => {
      running = false;
      live.delete(proc);
      resolve({ code, signal });
    });
  });
  const proc: Proc = {
    name,
    child,
    pid: child.pid,
    tail: () => lines.join('\n'),
    onLine: (fn) => listeners.push(fn),
    exited,
    isRunning: () => running,
  };
  live.add(proc);
  return proc;
}

/** SIGTERM, then SIGKILL after graceMs; resolves once the child has exited. */
export async function stop(p: Proc, graceMs = 3000): Promise<void> {
  if (!p.isRunning()) return;
  signalGroup(p, 'SIGTERM');
  const timer = setTimeout(() => signalGroup(p, 'SIGKILL'), graceMs);
  await p.exited;
  clearTimeout(timer);
  // The leader is gone; make sure nothing of its group stays behind.
  try {
    process.kill(-p.pid, 'SIGKILL');
  } catch {
    /* group empty */
  }
}

export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((p) => stop(p)));
}

export function liveCount(): number {
  return live.size;
}
