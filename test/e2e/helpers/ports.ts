// Port blocks for end-to-end tests that run in parallel (tap jobs: 2, colleagues'
// runs on the same machine). A block is a run of consecutive ports, reserved by an
// exclusive lock file in os.tmpdir() so two test processes never hand out the same
// block, and checked bindable (UDP and TCP) before use. Blocks come from 20000-32767,
// below Linux's default ephemeral range (32768-60999), so the kernel does not hand
// those ports to unrelated outgoing sockets while a test runs.
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

export interface PortBlock {
  /** First port of the block. */
  readonly base: number;
  /** Number of ports in the block: base .. base + size - 1. */
  readonly size: number;
  /** Port at offset i (throws when outside the block). */
  port(i: number): number;
  /** Frees the lock file; idempotent. */
  release(): void;
}

const LOW = 20000;
const HIGH = 32767;
const UNIT = 100;

/** Whether `port` can be bound on `host` for both UDP and TCP right now. */
export async function portIsFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  const udpOk = await new Promise<boolean>((resolve) => {
    const s = createSocket('udp4');
    s.once('error', () => {
      s.close();
      resolve(false);
    });
    s.bind(port, host, () => s.close(() => resolve(true)));
  });
  if (!udpOk) return false;
  return new Promise<boolean>((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

/** A free port chosen by the kernel (bind port 0), for UDP or TCP. */
export async function freePort(proto: 'udp' | 'tcp' = 'tcp', host = '127.0.0.1'): Promise<number> {
  if (proto === 'udp') {
    return new Promise((resolve, reject) => {
      const s = createSocket('udp4');
      s.once('error', reject);
      s.bind(0, host, () => {
        const { port } = s.address();
        s.close(() => resolve(port));
      });
    });
  }
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock for `base`, removing it first when its owner process is gone. */
function tryLock(file: string): boolean {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(file, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return false;
      let owner = NaN;
      try {
        owner = Number(readFileSync(file, 'utf8'));
      } catch {
        continue;
      }
      if (Number.isInteger(owner) && owner > 0 && pidAlive(owner)) return false;
      try {
        unlinkSync(file);
      } catch {
        /* another process removed it first */
      }
    }
  }
  return false;
}

/**
 * Reserves `size` consecutive ports (size <= 100; blocks are aligned to 100 ports and
 * locked per 100-port unit, so blocks of any size never overlap). Every port of the block is checked
 * bindable for UDP and TCP on 127.0.0.1; the reservation is released on `release()`
 * and, failing that, treated as stale once this process has exited.
 */
export async function reservePortBlock(size = 100, host = '127.0.0.1'): Promise<PortBlock> {
  if (!Number.isInteger(size) || size < 1 || size > UNIT) throw new RangeError(`block size ${size}`);
  const slots = Math.floor((HIGH - LOW + 1) / UNIT);
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = LOW + Math.floor(Math.random() * slots) * UNIT;
    const lock = join(tmpdir(), `gatehouse-e2e-ports-${base}.lock`);
    if (!tryLock(lock)) continue;
    let ok = true;
    for (let p = base; p < base + size && ok; p++) ok = await portIsFree(p, host);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      try {
        unlinkSync(lock);
      } catch {
        /* already gone */
      }
    };
    if (!ok) {
      release();
      continue;
    }
    return {
      base,
      size,
      port(i: number): number {
        if (!Number.isInteger(i) || i < 0 || i >= size) throw new RangeError(`port offset ${i} outside block of ${size}`);
        return base + i;
      },
      release,
    };
  }
  throw new Error(`no free block of ${size} ports in ${LOW}-${HIGH}`);
}
