/**
 * Memory per idle TURN allocation (issue 13: "≤ coturn's; 10 000 allocations held"):
 * `gatehouse serve`, a bare TurnServer (bench/turn-bare.ts) and coturn's turnserver, one
 * after the other in one run. A client of our own (below) holds N allocations, each from
 * its own UDP socket (its own 5-tuple, RFC 8656 §2), with one CreatePermission each
 * (RFC 8656 §9: a flow, the state the gateway hooks into), then stays silent.
 *
 * Per server: memory after a warm-up of W allocations (kept; the first ones pay for
 * compiled code and pools), then after N more and a settle, and again once the
 * responses remembered for retransmissions have expired (RFC 8489 §6.3.1: 40 s in
 * Gatehouse). Figures: RSS and PSS of the server's process tree (/proc/PID/status,
 * /proc/PID/smaps_rollup), its open sockets (/proc/PID/fd), and the kernel side, which
 * is not in RSS: /proc/net/sockstat (UDP sockets in use, pages of queued data) and the
 * UDP and sock_inode_cache slabs (/proc/slabinfo, root only). The client's sockets are
 * made before the first figure, so kernel deltas are the server's sockets only (and
 * whatever else the machine did meanwhile).
 *
 *   npx tsx bench/turn-idle.ts [--allocations 10000] [--warmup 100] [--servers gatehouse,bare,coturn]
 *                              [--no-permission] [--settle 5] [--late 45] [--concurrency 64] [--json]
 *                              [--gatehouse-bin OTHER/bin/gatehouse.js]
 *   npm run bench -- --only idle [--quick]
 *
 * Needs N + W + a few file descriptors in this process and in the server: the limit is
 * raised with prlimit(1) on this process (children inherit it); raising the hard limit
 * needs CAP_SYS_RESOURCE, else the hard limit stays (Node raises its soft limit to it).
 */
import { spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { loadavg } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuDelta, sampleCpu } from './lib/cpu.js';
import { coturnVersion, machineInfo } from './lib/machine.js';
import { HOST, freeUdpPort } from './lib/ports.js';
import { stop, type Proc } from './lib/procs.js';
import { fmt, int, markdownTable } from './lib/table.js';
import { startCoturnRelay, startGatehouse, type Started } from './turn-relay.js';
import { LIFETIME_S, TurnClient as IdleClient } from './lib/turn-client.js';

export type IdleServer = 'gatehouse' | 'bare' | 'coturn';

export interface TurnIdleOptions {
  allocations: number;
  warmup: number;
  servers: IdleServer[];
  /** one CreatePermission per allocation after its Allocate */
  permission: boolean;
  /** seconds between the last allocation and the "held" figure */
  settleS: number;
  /** seconds after the last allocation for the late figure (0: none) */
  lateS: number;
  /** transactions in flight */
  concurrency: number;
  /** another bin/gatehouse.js for `gatehouse serve` (e.g. a compiled build's, see README); default this checkout's */
  gatehouseBin?: string;
  log: (line: string) => void;
}

export function turnIdleDefaults(quick: boolean): TurnIdleOptions {
  return {
    allocations: quick ? 500 : 10_000,
    warmup: quick ? 20 : 100,
    servers: ['gatehouse', 'bare', 'coturn'],
    permission: true,
    settleS: 5,
    lateS: quick ? 0 : 45,
    concurrency: 64,
    log: (l) => process.stderr.write(`${l}\n`),
  };
}

// ---------------------------------------------------------------------------------------
// Memory figures

export interface MemSample {
  /** KiB, summed over the server's process tree */
  rssKiB: number;
  pssKiB: number | null;
  processes: number;
  /** open sockets of the tree (/proc/PID/fd → socket:[…]) */
  sockets: number;
  /** /proc/net/sockstat "UDP: inuse N mem M" (M in pages), whole network namespace */
  udpInUse: number | null;
  udpMemPages: number | null;
  /** bytes in the UDP and sock_inode_cache slabs (active objects × object size), whole machine */
  slabBytes: number | null;
  /** the server's own sockets, from `ss -uamnp` skmem: null when ss is missing */
  skmem: SocketMemory | null;
  loadavg: number;
}

function treeOf(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      for (const t of readdirSync(`/proc/${out[i]}/task`)) {
        const kids = readFileSync(`/proc/${out[i]}/task/${t}/children`, 'utf8').trim();
        if (kids) out.push(...kids.split(/\s+/).map(Number));
      }
    } catch {
      /* gone */
    }
  }
  return out;
}

function kib(text: string, key: string): number | null {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

function slabBytes(): number | null {
  try {
    let sum = 0;
    for (const line of readFileSync('/proc/slabinfo', 'utf8').split('\n')) {
      const f = line.split(/\s+/);
      if (f[0] === 'UDP' || f[0] === 'sock_inode_cache') sum += Number(f[1]) * Number(f[3]);
    }
    return sum;
  } catch {
    return null;
  }
}

export interface SocketMemory {
  sockets: number;
  /** bytes charged to them now: queued receive (r), queued send (w) and reserved (f) */
  chargedBytes: number;
  /** the most common receive and send buffer limits (rb, tb: what SO_RCVBUF/SO_SNDBUF gave), bytes */
  rcvbuf: number;
  sndbuf: number;
}

/** Sums `ss` skmem (r, w, f) over the UDP sockets the processes `pids` hold. */
function socketMemory(pids: number[]): SocketMemory | null {
  const r = spawnSync('ss', ['-uamnp'], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 });
  if (r.status !== 0 || !r.stdout) return null;
  const mine = new Set(pids);
  const out: SocketMemory = { sockets: 0, chargedBytes: 0, rcvbuf: 0, sndbuf: 0 };
  const rb = new Map<number, number>();
  const tb = new Map<number, number>();
  let owned = false;
  for (const line of r.stdout.split('\n')) {
    const users = /users:\(\(.*\)\)/.exec(line);
    if (users) {
      owned = [...users[0].matchAll(/pid=(\d+)/g)].some((m) => mine.has(Number(m[1])));
      continue;
    }
    const m = /skmem:\(r(\d+),rb(\d+),t(\d+),tb(\d+),f(\d+),w(\d+)/.exec(line);
    if (!m || !owned) continue;
    owned = false;
    const [rAlloc, rbuf, , tbuf, fwd, wq] = m.slice(1).map(Number) as [number, number, number, number, number, number];
    out.sockets++;
    out.chargedBytes += rAlloc + wq + fwd;
    rb.set(rbuf, (rb.get(rbuf) ?? 0) + 1);
    tb.set(tbuf, (tb.get(tbuf) ?? 0) + 1);
  }
  const modal = (m: Map<number, number>): number => [...m].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 0;
  out.rcvbuf = modal(rb);
  out.sndbuf = modal(tb);
  return out;
}

export function sampleMemory(pid: number): MemSample {
  let rss = 0;
  let pss: number | null = 0;
  let sockets = 0;
  const pids = treeOf(pid);
  for (const p of pids) {
    try {
      rss += kib(readFileSync(`/proc/${p}/status`, 'utf8'), 'VmRSS') ?? 0;
    } catch {
      continue;
    }
    try {
      const v = kib(readFileSync(`/proc/${p}/smaps_rollup`, 'utf8'), 'Pss');
      pss = pss === null || v === null ? null : pss + v;
    } catch {
      pss = null;
    }
    try {
      for (const fd of readdirSync(`/proc/${p}/fd`)) {
        try {
          if (readlinkSync(`/proc/${p}/fd/${fd}`).startsWith('socket:')) sockets++;
        } catch {
          /* closed meanwhile */
        }
      }
    } catch {
      /* gone */
    }
  }
  let udpInUse: number | null = null;
  let udpMemPages: number | null = null;
  try {
    const m = /^UDP: inuse (\d+) mem (\d+)/m.exec(readFileSync('/proc/net/sockstat', 'utf8'));
    if (m) [udpInUse, udpMemPages] = [Number(m[1]), Number(m[2])];
  } catch {
    /* not Linux */
  }
  return {
    rssKiB: rss,
    pssKiB: pss,
    processes: pids.length,
    sockets,
    udpInUse,
    udpMemPages,
    slabBytes: slabBytes(),
    skmem: socketMemory(pids),
    loadavg: round2(loadavg()[0]!),
  };
}

// ---------------------------------------------------------------------------------------
// The client: one UDP socket per allocation, long-term credentials (RFC 8489 §9.2)

async function openClients(n: number): Promise<IdleClient[]> {
  const out: IdleClient[] = [];
  for (let i = 0; i < n; i++) {
    const s = createSocket('udp4');
    await new Promise<void>((r, j) => {
      s.once('error', j);
      s.bind(0, HOST, () => r());
    });
    s.on('error', () => {});
    out.push(new IdleClient(s));
  }
  return out;
}

interface Tally {
  allocated: number;
  permitted: number;
  failures: Record<string, number>;
  seconds: number;
}

async function hold(clients: IdleClient[], port: number, peerPort: number, o: TurnIdleOptions): Promise<Tally> {
  const t: Tally = { allocated: 0, permitted: 0, failures: {}, seconds: 0 };
  const fail = (what: string, code: number): void => {
    const k = `${what} ${code === 0 ? 'timeout' : code}`;
    t.failures[k] = (t.failures[k] ?? 0) + 1;
  };
  const begun = Date.now();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < clients.length) {
      const c = clients[next++]!;
      const a = await c.allocate(port);
      if (!a.ok) {
        fail('Allocate', a.code);
        continue;
      }
      t.allocated++;
      if (!o.permission) continue;
      const p = await c.permit(port, peerPort);
      if (p.ok) t.permitted++;
      else fail('CreatePermission', p.code);
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency, clients.length) }, worker));
  t.seconds = (Date.now() - begun) / 1000;
  return t;
}

// ---------------------------------------------------------------------------------------
// Servers

/** Limits of `gatehouse serve` raised to hold N allocations of one user from one address. */
function gatehouseLimits(total: number): string[] {
  return [
    // All clients are 127.0.0.1 (README "Limits": per-source rates, per-user flows).
    'allocate_rate_per_source: 100000',
    'unauthorized_rate_per_source: 100000',
    `max_flows_per_user: ${Math.max(1000, total)}`,
    `max_flows: ${Math.max(20000, total)}`,
  ];
}

/**
 * Relay ports for `total` allocations that are never released during a run, with room
 * for ports the servers skip; bench/lib/ports.ts looks for them below the ephemeral range
 * (where the client sockets are).
 */
function relayPorts(total: number): number {
  return Math.ceil(total * 1.1) + 256;
}

async function startServer(which: IdleServer, total: number, bareNodeArgs: string[], bin?: string): Promise<Started> {
  if (which === 'coturn')
    // RFC 8656 §7.2 quotas off (0 = unlimited): the figure is memory, not a limit.
    return startCoturnRelay(relayPorts(total), 'gh-bench-idle-coturn-', ['--total-quota', '0', '--user-quota', '0']);
  const nodeArgs = which === 'bare' ? bareNodeArgs : [];
  return startGatehouse(total, null, nodeArgs, gatehouseLimits(total), bin, which === 'bare', relayPorts(total));
}

/** turn-bare.ts answers SIGUSR2 with process.memoryUsage() after a full collection (--expose-gc). */
function bareMemoryUsage(p: Proc): Promise<NodeJS.MemoryUsage | null> {
  return new Promise((done) => {
    const timer = setTimeout(() => done(null), 20_000);
    p.onLine((line) => {
      const m = /^turn-bare: memory (\{.*\})$/.exec(line);
      if (m) {
        clearTimeout(timer);
        done(JSON.parse(m[1]!) as NodeJS.MemoryUsage);
      }
    });
    process.kill(p.pid, 'SIGUSR2');
  });
}

export interface IdleRun {
  server: IdleServer;
  available: boolean;
  reason: string | null;
  command: string | null;
  warmup: Tally | null;
  measured: Tally | null;
  /** after the warm-up (the baseline), after settleS, after lateS */
  before: MemSample | null;
  held: MemSample | null;
  late: MemSample | null;
  /** bare TurnServer only: process.memoryUsage() after global.gc() at the end */
  heapAfterGc: NodeJS.MemoryUsage | null;
  heapBeforeAllocations: NodeJS.MemoryUsage | null;
  /** the server's CPU while the allocations are held and silent (settle → late), ms per second */
  idleCpuMsPerS: number | null;
}

export interface TurnIdleResult {
  options: Omit<TurnIdleOptions, 'log'>;
  machine: ReturnType<typeof machineInfo>;
  runs: IdleRun[];
  notes: string[];
  /** the table and the notes, markdown */
  table: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function runOne(which: IdleServer, o: TurnIdleOptions, peerPort: number): Promise<IdleRun> {
  const run: IdleRun = {
    server: which,
    available: false,
    reason: null,
    command: null,
    warmup: null,
    measured: null,
    before: null,
    held: null,
    late: null,
    heapAfterGc: null,
    heapBeforeAllocations: null,
    idleCpuMsPerS: null,
  };
  if (which === 'coturn' && !coturnVersion()) {
    run.reason = 'turnserver not found (apt-get install coturn)';
    return run;
  }
  let s: Started;
  try {
    s = await startServer(which, o.allocations + o.warmup, ['--expose-gc'], o.gatehouseBin);
  } catch (e) {
    run.reason = `did not start: ${(e as Error).message}`;
    return run;
  }
  run.available = true;
  run.command = o.gatehouseBin && which === 'gatehouse' ? s.command.replace('bin/gatehouse.js', o.gatehouseBin) : s.command;
  o.log(`${which}: pid ${s.proc.pid}, ${s.command}`);
  let clients: IdleClient[] = [];
  try {
    // Opened after the server's start: finding its free relay range binds every port of
    // it once in this process, and both must fit under the fd limit.
    clients = await openClients(o.allocations + o.warmup);
    const warm = clients.slice(0, o.warmup);
    const rest = clients.slice(o.warmup);
    run.warmup = await hold(warm, s.port, peerPort, o);
    await sleep(2000);
    if (which === 'bare') run.heapBeforeAllocations = await bareMemoryUsage(s.proc);
    run.before = sampleMemory(s.proc.pid);
    o.log(`${which}: after ${run.warmup.allocated} warm-up allocations: ${describe(run.before)}`);
    run.measured = await hold(rest, s.port, peerPort, o);
    o.log(
      `${which}: ${run.measured.allocated}/${rest.length} allocated, ${run.measured.permitted} permissions, in ${fmt(run.measured.seconds, 1)} s` +
        (Object.keys(run.measured.failures).length ? `, failures ${JSON.stringify(run.measured.failures)}` : ''),
    );
    await sleep(o.settleS * 1000);
    run.held = sampleMemory(s.proc.pid);
    o.log(`${which}: held, after ${o.settleS} s: ${describe(run.held)}`);
    if (o.lateS > o.settleS) {
      const c0 = sampleCpu(s.proc.pid);
      await sleep((o.lateS - o.settleS) * 1000);
      const d = cpuDelta(c0, sampleCpu(s.proc.pid));
      // The sweep visits every allocation once a second (RFC 8656 §8, §9, §12 expiry).
      run.idleCpuMsPerS = d.cpuNs / 1e6 / (d.wallNs / 1e9);
      run.late = sampleMemory(s.proc.pid);
      o.log(`${which}: held, after ${o.lateS} s: ${describe(run.late)}`);
    }
    if (which === 'bare') run.heapAfterGc = await bareMemoryUsage(s.proc);
    if (!s.proc.isRunning()) run.reason = `the server exited:\n${s.proc.tail()}`;
  } finally {
    for (const c of clients) c.sock.close();
    await stop(s.proc);
    s.cleanup();
  }
  return run;
}

function describe(m: MemSample): string {
  return (
    `RSS ${int(m.rssKiB)} KiB, PSS ${int(m.pssKiB)} KiB, ${m.sockets} sockets, UDP inuse ${m.udpInUse ?? '?'} mem ${m.udpMemPages ?? '?'} pages, slab ${int((m.slabBytes ?? NaN) / 1024)} KiB, ` +
    (m.skmem
      ? `its sockets: ${m.skmem.sockets}, ${int(m.skmem.chargedBytes / 1024)} KiB charged, rcvbuf ${int(m.skmem.rcvbuf)} sndbuf ${int(m.skmem.sndbuf)}, `
      : '') +
    `load ${m.loadavg}`
  );
}

// ---------------------------------------------------------------------------------------

const LABEL: Record<IdleServer, string> = {
  gatehouse: 'Gatehouse (`gatehouse serve`)',
  bare: 'Gatehouse (bare TurnServer)',
  coturn: 'coturn 4.6.1 (1 relay thread)',
};

/** Bytes per allocation between two samples, over the allocations made in between. */
function perAlloc(a: number | null | undefined, b: number | null | undefined, n: number, unit = 1024): number | null {
  if (a === null || a === undefined || b === null || b === undefined || n <= 0) return null;
  return ((b - a) * unit) / n;
}

export function idleTable(runs: IdleRun[], o: Omit<TurnIdleOptions, 'log'>): string {
  const rows = runs.map((r) => {
    if (!r.available || !r.before || !r.held || !r.measured) return [LABEL[r.server], r.reason ?? 'no run'];
    const n = r.measured.allocated;
    const end = r.late ?? r.held;
    const k0 = r.before.skmem;
    const k1 = end.skmem;
    return [
      LABEL[r.server],
      `${int(n + (r.warmup?.allocated ?? 0))} / ${int(o.allocations + o.warmup)}`,
      o.permission ? int((r.warmup?.permitted ?? 0) + r.measured.permitted) : '–',
      int(perAlloc(r.before.rssKiB, r.held.rssKiB, n)),
      r.late ? int(perAlloc(r.before.rssKiB, r.late.rssKiB, n)) : '–',
      int(perAlloc(r.before.pssKiB, end.pssKiB, n)),
      int(perAlloc(k0?.chargedBytes, k1?.chargedBytes, n, 1)),
      k1 ? `${int(k1.rcvbuf / 1024)} / ${int(k1.sndbuf / 1024)} KiB` : '–',
      int(perAlloc(r.before.slabBytes, end.slabBytes, n, 1)),
    ];
  });
  const last = o.lateS > o.settleS ? o.lateS : o.settleS;
  return markdownTable(
    [
      'server',
      'allocations held',
      'permissions',
      `RSS B/alloc (${o.settleS} s)`,
      o.lateS > o.settleS ? `RSS B/alloc (${o.lateS} s)` : 'RSS B/alloc (late)',
      `PSS B/alloc (${last} s)`,
      "its sockets' kernel memory B/alloc",
      'socket rcvbuf / sndbuf limit',
      'UDP slab B/alloc',
    ],
    rows,
    ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
  );
}

/** What the table does not say: method, load, the bare server's heap after a collection. */
export function idleNotes(runs: IdleRun[], o: Omit<TurnIdleOptions, 'log'>): string[] {
  const notes = [
    `${int(o.warmup)} warm-up allocations, then ${int(o.allocations)} more, each from its own UDP socket on 127.0.0.1 ` +
      `(Allocate with LIFETIME ${LIFETIME_S} s${o.permission ? ', then one CreatePermission' : ''}; long-term credentials, ${o.concurrency} transactions in flight), then silence. ` +
      'B/alloc = (figure after − figure after the warm-up) ÷ allocations made after it. RSS and PSS of the server process tree; ' +
      "its sockets' kernel memory: skmem r + w + f of the server's UDP sockets (`ss -uamnp`); the UDP slab: UDP + sock_inode_cache objects of the whole machine (/proc/slabinfo).",
  ];
  for (const r of runs) {
    if (!r.available || !r.before || !r.held) {
      notes.push(`${LABEL[r.server]}: ${r.reason ?? 'no run'}`);
      continue;
    }
    const end = r.late ?? r.held;
    const fails = { ...r.warmup?.failures, ...r.measured?.failures };
    notes.push(
      `${LABEL[r.server]}: ${int(r.measured?.allocated)} allocations in ${fmt(r.measured?.seconds, 1)} s` +
        (Object.keys(fails).length ? `, failures ${JSON.stringify(fails)}` : ', no failures') +
        `; server sockets ${r.before.sockets} → ${end.sockets}; RSS ${int(r.before.rssKiB)} → ${int(end.rssKiB)} KiB; ` +
        `/proc/net/sockstat UDP inuse ${r.before.udpInUse} → ${end.udpInUse}, mem ${r.before.udpMemPages} → ${end.udpMemPages} pages; ` +
        `load average ${r.before.loadavg} → ${end.loadavg}` +
        (r.idleCpuMsPerS === null ? '.' : `; CPU while holding them idle ${fmt(r.idleCpuMsPerS, 1)} ms per second.`),
    );
    if (r.heapBeforeAllocations && r.heapAfterGc && r.measured?.allocated) {
      const n = r.measured.allocated;
      const d = (k: keyof NodeJS.MemoryUsage): string => int((r.heapAfterGc![k] - r.heapBeforeAllocations![k]) / n);
      notes.push(
        `${LABEL[r.server]}: after a full collection (node --expose-gc, global.gc()), per allocation: V8 heap used ${d('heapUsed')} B, heap reserved ${d('heapTotal')} B, external (Buffers, native) ${d('external')} B.`,
      );
    }
  }
  notes.push(
    "sockstat's UDP mem counts the whole network namespace, client sockets included: every socket that has received a datagram keeps up to a page reserved (the clients' responses are most of it); the server's own share is the skmem column.",
  );
  return notes;
}

/** Raises this process's (and so its children's) open-file limit; root may raise the hard one. */
function raiseFdLimit(n: number): string {
  const r = spawnSync('prlimit', ['--pid', String(process.pid), `--nofile=${n}:${n}`], { encoding: 'utf8' });
  return r.status === 0
    ? `fd limit raised to ${n}`
    : `prlimit failed (${(r.stderr || r.error?.message || '').trim()}); keeping the current limit`;
}

export async function runTurnIdleBench(opts: Partial<TurnIdleOptions> & { quick?: boolean } = {}): Promise<TurnIdleResult> {
  const o: TurnIdleOptions = {
    ...turnIdleDefaults(opts.quick ?? false),
    ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)),
  };
  const total = o.allocations + o.warmup;
  o.log(raiseFdLimit(total + 4096));
  const machine = machineInfo();
  // Nothing listens there: a permission is state at the server, no packet is sent.
  const peerPort = await freeUdpPort();
  const runs: IdleRun[] = [];
  for (const which of o.servers) runs.push(await runOne(which, o, peerPort));
  const { log: _log, ...options } = o;
  const notes = idleNotes(runs, options);
  return { options, machine, runs, notes, table: `${idleTable(runs, options)}\n\n${notes.map((n) => `- ${n}`).join('\n')}` };
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}

// Run alone: npx tsx bench/turn-idle.ts [--allocations N] ...
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name: string): string | undefined => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const num = (name: string): number | undefined => (arg(name) === undefined ? undefined : Number(arg(name)));
  const r = await runTurnIdleBench({
    quick: process.argv.includes('--quick'),
    allocations: num('allocations'),
    warmup: num('warmup'),
    settleS: num('settle'),
    lateS: num('late'),
    concurrency: num('concurrency'),
    servers: arg('servers')?.split(',') as IdleServer[] | undefined,
    permission: process.argv.includes('--no-permission') ? false : undefined,
    gatehouseBin: arg('gatehouse-bin'),
  });
  if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify(r, null, 2)}\n\n`);
  process.stdout.write(`${r.table}\n`);
  process.exit(0);
}
