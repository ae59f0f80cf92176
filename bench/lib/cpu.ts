/**
 * CPU time of another process, all of its threads included, read from /proc.
 *
 * Two sources, both sampled every time:
 * - /proc/PID/task/TID/schedstat: field 1 is the time the thread spent on a CPU, in
 *   nanoseconds. Summed over the live threads. Precise, but a thread that exits between
 *   two samples takes its time with it.
 * - /proc/PID/stat: utime + stime (fields 14 and 15) in clock ticks (getconf CLK_TCK,
 *   usually 100 → 10 ms resolution). Covers live and exited threads.
 * cpuDelta() uses schedstat when the same threads were alive at both samples, else stat.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

export interface CpuSample {
  pid: number;
  /** process.hrtime.bigint() when sampled, ns. */
  atNs: bigint;
  /** utime + stime of the whole process (all threads, exited ones included), clock ticks. */
  ticks: number;
  /** per-thread on-CPU time from schedstat, ns; null when schedstat is unavailable. */
  threadsNs: Map<number, bigint> | null;
}

export interface CpuDelta {
  /** CPU time consumed between the two samples, ns. */
  cpuNs: number;
  /** wall time between the two samples, ns. */
  wallNs: number;
  source: 'schedstat' | 'stat';
  /** the stat-based figure too, for a cross-check (10 ms resolution at CLK_TCK 100). */
  statNs: number;
  threads: number;
}

let ticksPerSecond: number | null = null;

export function clockTicksPerSecond(): number {
  if (ticksPerSecond === null) {
    try {
      const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
      ticksPerSecond = Number.isFinite(n) && n > 0 ? n : 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

function readTicks(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may contain spaces: split after it.
  const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime is field 14, stime field 15.
  return Number(rest[11]) + Number(rest[12]);
}

function readThreads(pid: number): Map<number, bigint> | null {
  const out = new Map<number, bigint>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return null;
  }
  for (const tid of tids) {
    try {
      const f = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8');
      out.set(Number(tid), BigInt(f.split(' ')[0]!));
    } catch (e) {
      // A thread that exited while we listed: skip it. Anything else (no schedstat in
      // this kernel): fall back to /proc/PID/stat.
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      return null;
    }
  }
  return out.size ? out : null;
}

/** Throws when the process is gone. */
export function sampleCpu(pid: number): CpuSample {
  const ticks = readTicks(pid);
  return { pid, atNs: process.hrtime.bigint(), ticks, threadsNs: readThreads(pid) };
}

export function cpuDelta(a: CpuSample, b: CpuSample): CpuDelta {
  const statNs = ((b.ticks - a.ticks) * 1e9) / clockTicksPerSecond();
  const wallNs = Number(b.atNs - a.atNs);
  if (a.threadsNs && b.threadsNs) {
    let sameThreads = true;
    for (const tid of a.threadsNs.keys()) if (!b.threadsNs.has(tid)) sameThreads = false;
    if (sameThreads) {
      let ns = 0n;
      for (const [tid, v] of b.threadsNs) ns += v - (a.threadsNs.get(tid) ?? 0n);
      return { cpuNs: Number(ns), wallNs, source: 'schedstat', statNs, threads: b.threadsNs.size };
    }
  }
  return { cpuNs: statNs, wallNs, source: 'stat', statNs, threads: b.threadsNs?.size ?? 0 };
}
