// Programs the end-to-end tests run (coturn's turnutils_*, ...): run() to its end with
// stdout and stderr collected (SIGKILLed after timeoutMs); `children` holds every child
// still running, for a teardown that kills them; freeUdpPort() for a peer program's port.
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { PassThrough } from 'node:stream';

export interface RunResult {
  code: number | null;
  /** stdout and stderr, interleaved as they came. */
  out: string;
}

/** Children started by run() (and those a test adds) that have not exited yet. */
export const children = new Set<ChildProcess>();

export function run(bin: string, args: string[], timeoutMs = 90_000): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, out });
    });
  });
}

/** A UDP port of 127.0.0.1 that was free a moment ago (bound to 0, then released). */
export async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const p = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

/** stdout/stderr streams for a CLI entry point called in-process, and their text so far. */
export function captureIo() {
  const out = new PassThrough();
  const err = new PassThrough();
  const o: Buffer[] = [];
  const e: Buffer[] = [];
  out.on('data', (d: Buffer) => o.push(d));
  err.on('data', (d: Buffer) => e.push(d));
  return { io: { stdout: out, stderr: err }, out: () => Buffer.concat(o).toString(), err: () => Buffer.concat(e).toString() };
}
