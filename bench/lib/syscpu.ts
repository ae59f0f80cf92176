/**
 * Whole-system CPU over a measured window, from /proc/stat, so that a relay's figure can
 * include the kernel work its packets cause (softirq: the loopback delivery, UDP receive
 * and send paths run outside the server's own threads) and not only the server process.
 *
 * The first `cpu` line of /proc/stat sums every CPU, in USER_HZ ticks (getconf CLK_TCK,
 * usually 100 → 10 ms resolution): user nice system idle iowait irq softirq steal guest
 * guest_nice. Busy here is wall time × CPUs − idle − iowait − steal (see SysDelta.busyNs
 * for why not the sum of user..softirq; that sum is kept as tickBusyNs). What the load generators used in the same window (their utime + stime, from
 * /proc/PID/stat, or the reaped children's cutime + cstime of this process for one that
 * exited, plus this process itself) is taken off: what is left is "the server + the
 * kernel work it causes", plus whatever else ran on the machine.
 *
 * "Whatever else" is estimated too: every other user-space process alive at both samples
 * (kernel threads such as ksoftirqd stay in the system figure). Processes that started or
 * ended inside the window are not in that estimate.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { clockTicksPerSecond } from './cpu.js';

export interface SysSample {
  atNs: bigint;
  /** /proc/stat all CPUs: user+nice+system+irq+softirq, and softirq alone, ticks */
  busyTicks: number;
  /** idle + iowait + steal, ticks */
  idleTicks: number;
  cpus: number;
  softirqTicks: number;
  /** utime+stime of the load-generator pids given, ticks (a pid gone: absent) */
  loadTicks: Map<number, number>;
  /** cutime+cstime of this process (children it has reaped), ticks */
  reapedTicks: number;
  /** this process's own CPU, µs (process.cpuUsage, all threads) */
  selfUs: number;
  /** utime+stime of every other user-space process, ticks */
  others: Map<number, number>;
}

export interface SysDelta {
  wallNs: number;
  /**
   * whole machine busy time, ns: wall × CPUs − idle − iowait − steal. The idle counters
   * are exact (NO_HZ keeps them from idle entry and exit); user/system are tick samples,
   * which miss work that wakes in step with the tick (a 1 ms load does), so the sum of
   * user..softirq (`tickBusyNs`) can read below the processes' own exact times.
   */
  busyNs: number;
  /** user + nice + system + irq + softirq as ticked, ns (for a cross-check) */
  tickBusyNs: number;
  softirqNs: number;
  /** the load generators and this process, ns (taken off busyNs for systemNs) */
  loadNs: number;
  /** busyNs − loadNs: the server, the kernel work it causes, and anything else that ran */
  systemNs: number;
  /** other user-space processes alive at both samples (the noise in systemNs), ns */
  othersNs: number;
}

/** Fields after the command name of /proc/PID/stat (field 3 first). */
function statFields(pid: number | 'self'): string[] | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

// proc(5): utime 14, stime 15, cutime 16, cstime 17, flags 9 (PF_KTHREAD 0x00200000).
const UTIME = 14 - 3;
const STIME = 15 - 3;
const CUTIME = 16 - 3;
const CSTIME = 17 - 3;
const FLAGS = 9 - 3;
const PF_KTHREAD = 0x00200000;

function procTicks(f: string[]): number {
  return Number(f[UTIME]) + Number(f[STIME]);
}

/**
 * One sample. `load`: the load generators' pids (alive ones are read directly); `exclude`:
 * pids that are neither load nor noise (the server and its threads' process).
 */
export function sampleSystem(load: number[], exclude: number[]): SysSample {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = v as [number, number, number, number, number, number, number, number];
  const loadTicks = new Map<number, number>();
  for (const pid of load) {
    const f = statFields(pid);
    if (f) loadTicks.set(pid, procTicks(f));
  }
  const self = statFields('self');
  const skip = new Set([...load, ...exclude, process.pid]);
  const others = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || skip.has(pid)) continue;
    const f = statFields(pid);
    if (!f || Number(f[FLAGS]) & PF_KTHREAD) continue;
    others.set(pid, procTicks(f));
  }
  const cu = process.cpuUsage();
  return {
    atNs: process.hrtime.bigint(),
    busyTicks: user + nice + system + irq + softirq,
    idleTicks: idle + iowait + (steal ?? 0),
    cpus: availableParallelism(),
    softirqTicks: softirq,
    loadTicks,
    reapedTicks: self ? Number(self[CUTIME]) + Number(self[CSTIME]) : 0,
    selfUs: cu.user + cu.system,
    others,
  };
}

/**
 * The window a → b. A load generator alive at a and reaped by b (turnutils_uclient exits
 * at the end of its load) counts as (its reaped total) − (its ticks at a): the reaped
 * total is the growth of this process's cutime + cstime, `reapedAtA` what the pids that
 * were reaped had used before a (their ticks at a).
 */
export function sysDelta(a: SysSample, b: SysSample): SysDelta {
  const ns = (ticks: number): number => (ticks * 1e9) / clockTicksPerSecond();
  let loadTicks = 0;
  let reapedBefore = 0;
  for (const [pid, t0] of a.loadTicks) {
    const t1 = b.loadTicks.get(pid);
    if (t1 !== undefined) loadTicks += t1 - t0;
    else reapedBefore += t0;
  }
  // A child reaped inside the window: all of its time lands in cutime at once.
  const reaped = b.reapedTicks - a.reapedTicks;
  if (reaped > 0) loadTicks += Math.max(0, reaped - reapedBefore);
  const loadNs = ns(loadTicks) + (b.selfUs - a.selfUs) * 1000;
  let othersTicks = 0;
  for (const [pid, t1] of b.others) {
    const t0 = a.others.get(pid);
    if (t0 !== undefined && t1 >= t0) othersTicks += t1 - t0;
  }
  const wallNs = Number(b.atNs - a.atNs);
  const busyNs = Math.max(0, wallNs * b.cpus - ns(b.idleTicks - a.idleTicks));
  return {
    wallNs,
    busyNs,
    tickBusyNs: ns(b.busyTicks - a.busyTicks),
    softirqNs: ns(b.softirqTicks - a.softirqTicks),
    loadNs,
    systemNs: busyNs - loadNs,
    othersNs: ns(othersTicks),
  };
}
