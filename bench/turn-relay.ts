/**
 * TURN relay cost: the same turnutils_uclient load against Gatehouse and against coturn's
 * turnserver (one relay thread), one server after the other, never both under load at
 * once. For each payload size it reports the server's CPU time per relayed packet (all
 * threads of the server process, from /proc), packets relayed, loss and RTT as
 * turnutils_uclient reports them, and the Gatehouse/coturn ratio.
 *
 * The load: `-c` (no RTCP allocations), `-m` clients, `-n` messages per client, `-l`
 * bytes each, `-z` ms between a session's messages, over UDP, to one turnutils_peer that
 * echoes everything back. Each client does Allocate, CreatePermission and ChannelBind
 * (RFC 8656 §7, §9, §12), then sends ChannelData; the peer's echo comes back through the
 * relay. So every message is relayed twice: client→peer and peer→client.
 *
 * CPU is sampled when turnutils_uclient prints "Total connect time" (all allocations
 * made) and when it exits: the figure covers the relaying, not the allocations. The
 * whole run, allocations included, is kept in the JSON too.
 *
 * Run alone: `npx tsx bench/turn-relay.ts [--quick]`; normally through bench/run.ts.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuDelta, sampleCpu, type CpuDelta, type CpuSample } from './lib/cpu.js';
import { startLatencyProbe, type LatencyFigures, type LatencyProbe } from './lib/latency-probe.js';
import { sampleSystem, sysDelta, type SysDelta, type SysSample } from './lib/syscpu.js';
import { HOST, freeTcpPort, freeUdpPort, freeUdpRange } from './lib/ports.js';
import { onCleanup, start, stop, type Proc } from './lib/procs.js';
import { dropsDelta, udpDrops, type UdpDrops } from './lib/udp-drops.js';
import { udpEcho, waitForStun } from './lib/stun-probe.js';
import { fmt, int, markdownTable } from './lib/table.js';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const GATEHOUSE_BIN = join(ROOT, 'bin', 'gatehouse.js');
const USER = 'bench';
const PASSWORD = 'bench';
const REALM = 'bench.local';

export type ServerName = 'gatehouse' | 'coturn';

export interface TurnBenchOptions {
  /** turnutils_uclient -m */
  clients: number;
  /** turnutils_uclient -n, per client */
  messages: number;
  /** turnutils_uclient -z, ms between the messages of one session */
  intervalMs: number;
  /** turnutils_uclient -l, one measured case per size */
  sizes: number[];
  /** -n of the warm-up run each server gets before the measured runs (not reported) */
  warmupMessages: number;
  /** how long the server's idle CPU is sampled after the warm-up, ms */
  idleMs: number;
  /** measured runs per case; the run with the median CPU per packet is reported */
  repeat: number;
  servers: ServerName[];
  /** policy.rules for Gatehouse; null = a bench file with no rules and keys not required */
  gatehouseRules: string | null;
  /** extra node flags for `gatehouse serve` (e.g. --cpu-prof); default none */
  gatehouseNodeArgs?: string[];
  /** extra `turn:` config lines for Gatehouse (e.g. `fast_path: auto`); default none */
  gatehouseTurnConfig?: string[];
  /** another checkout's bin/gatehouse.js (A/B against an earlier build); default this one */
  gatehouseBin?: string;
  /** bench/turn-bare.ts (a TurnServer with no gateway and no flow hooks) instead of `gatehouse serve` */
  gatehouseBare?: boolean;
  /** extra top-level config lines for Gatehouse (e.g. `store: { redis: ... }` for turn.workers); default none */
  gatehouseTopConfig?: string[];
  /** turnutils_uclient processes per load, sharing its clients (default 1) */
  generators?: number;
  /** relay ports per allocation the range is sized for (turn.workers N: N, each worker gets 1/N of it); default 1 */
  gatehouseRelayFactor?: number;
  /**
   * turnutils_uclient `-s`: every message a Send indication (RFC 8656 §11.2) and every echo
   * a Data indication (§11.3) instead of ChannelData; default false (channels).
   */
  sendIndications?: boolean;
  /**
   * ms between the latency probe's messages (bench/lib/latency-probe.ts: one allocation of
   * its own beside the load, p50/p99 RTT); 0 = no probe. Default 5.
   */
  probeIntervalMs?: number;
  /**
   * Offered-load sweep instead of one load per size: for each size, loads of `clients[i]`
   * clients for about `seconds` each, up the list until the loss reaches `maxLossPct`.
   */
  sweep?: { clients: number[]; seconds: number; maxLossPct: number; perClientRate?: number };
  log: (line: string) => void;
}

export function turnBenchDefaults(quick: boolean): TurnBenchOptions {
  return quick
    ? {
        clients: 5,
        messages: 300,
        intervalMs: 1,
        sizes: [170, 1100],
        warmupMessages: 100,
        idleMs: 1000,
        repeat: 1,
        servers: ['gatehouse', 'coturn'],
        gatehouseRules: null,
        log: (l) => process.stderr.write(`${l}\n`),
      }
    : {
        clients: 50,
        messages: 2000,
        intervalMs: 1,
        sizes: [170, 1100],
        warmupMessages: 500,
        idleMs: 3000,
        repeat: 1,
        servers: ['gatehouse', 'coturn'],
        gatehouseRules: null,
        log: (l) => process.stderr.write(`${l}\n`),
      };
}

export interface LoadResult {
  size: number;
  clients: number;
  messagesPerClient: number;
  /** turnutils_uclient totals: messages the clients sent and received back */
  sent: number;
  received: number;
  /**
   * Packets the server relayed: client→peer plus peer→client. Each message crosses the
   * relay out and its echo crosses it back. With relayedMethod 'socket-drops':
   * (sent − drops at the server's listening port) + (that − drops at the peer − drops at
   * the server's relay ports); else sent + received (exact only without loss).
   */
  relayed: number;
  relayedMethod: 'socket-drops' | 'sent+received';
  /**
   * Kernel receive-buffer drops during the load (/proc/net/udp), when readable.
   * `elsewhere`: loss not explained by those (the clients' own buffers, or packets the
   * server received and did not relay).
   */
  drops: { serverListen: number; serverRelay: number; peer: number; elsewhere: number } | null;
  lostPackets: number | null;
  lossPct: number | null;
  sendDropped: number | null;
  rttAvgMs: number | null;
  rttMinMs: number | null;
  rttMaxMs: number | null;
  jitterAvgMs: number | null;
  /** uclient's "Total transmit time", s (whole seconds) */
  transmitS: number | null;
  /** server CPU from "all allocations made" to the uclient's exit */
  cpu: CpuDelta | null;
  /** server CPU over the whole uclient run, allocations included */
  cpuTotal: CpuDelta | null;
  /** 1-minute load average of the machine when the load started and ended */
  loadavg: [number, number];
  /** cpu.cpuNs / relayed, µs */
  usPerPacket: number | null;
  /** whole machine over the same window as `cpu` (bench/lib/syscpu.ts) */
  sys: SysDelta | null;
  /** sys.systemNs / relayed, µs: the server plus the kernel work it causes (and any noise) */
  systemUsPerPacket: number | null;
  /** sys.softirqNs / relayed, µs */
  softirqUsPerPacket: number | null;
  /** sys.othersNs / relayed, µs: other processes' share of systemUsPerPacket (noise) */
  othersUsPerPacket: number | null;
  /** relayed / the window's wall time, packets per second */
  ratePps: number | null;
  /** the latency probe's figures (its packets are counted in `relayed` too) */
  latency: LatencyFigures | null;
  /** packets the probe had relayed (sent + echoed back), included in `relayed` */
  probeRelayed: number;
  /** why there is no latency figure (the probe's allocation failed); the load still counts */
  latencyError?: string | null;
  error: string | null;
  /** last lines of the uclient output when something went wrong */
  clientTail?: string;
}

export interface ServerRun {
  server: ServerName;
  available: boolean;
  reason: string | null;
  version: string | null;
  command: string | null;
  warmup: LoadResult | null;
  /** server CPU while idle (allocations of earlier runs still alive), ms per second */
  idleCpuMsPerS: number | null;
  /** one per size (the median run when repeat > 1) */
  cases: LoadResult[];
  allRuns: LoadResult[];
  /** what the server printed when something went wrong */
  serverTail?: string;
  /** with o.sweep: per size, the loads in the order run and the highest one under the loss limit */
  sweep?: SweepResult[];
}

export interface SweepResult {
  size: number;
  steps: LoadResult[];
  /** the step with the highest relayed rate whose loss stayed below maxLossPct */
  best: LoadResult | null;
  /** why the sweep stopped: the loss limit, an error, the end of the list, or the time budget */
  stoppedBy: string;
}

/** Loss from the exact counters, % (turnutils_uclient rounds its own figure). */
export function lossOf(r: LoadResult): number | null {
  return r.sent > 0 ? ((r.sent - r.received) / r.sent) * 100 : null;
}

export interface TurnBenchResult {
  load: {
    clients: number;
    messagesPerClient: number;
    intervalMs: number;
    sizes: number[];
    warmupMessages: number;
    repeat: number;
    uclientArgs: string;
  };
  servers: ServerRun[];
  ratios: Array<{ size: number; gatehouseOverCoturn: number | null }>;
  table: string;
}

// ---------------------------------------------------------------------------------------
// turnutils_uclient

/** turnutils_uclient flags of the load's kind (runTurnRelayBench sets it: `-s` for Send indications). */
let uclientMode: string[] = [];

function uclientArgs(port: number, peerPort: number, clients: number, messages: number, size: number, intervalMs: number): string[] {
  return [
    ...uclientMode,
    '-c',
    '-m',
    String(clients),
    '-n',
    String(messages),
    '-l',
    String(size),
    '-z',
    String(intervalMs),
    '-u',
    USER,
    '-w',
    PASSWORD,
    '-p',
    String(port),
    '-e',
    HOST,
    '-r',
    String(peerPort),
    HOST,
  ];
}

const NUM = '([0-9.]+)';
const RE_TOTALS = /tot_send_msgs=(\d+), tot_recv_msgs=(\d+)/;
const RE_LOST = new RegExp(`Total lost packets (\\d+) \\(${NUM}%\\), total send dropped (\\d+)`);
const RE_RTT = new RegExp(`Average round trip delay ${NUM} ms; min = ${NUM} ms, max = ${NUM} ms`);
const RE_JITTER = new RegExp(`Average jitter ${NUM} ms`);
const RE_TRANSMIT = /Total transmit time is (\d+)/;

/**
 * The server and every process below it: with turn.workers > 1 `gatehouse serve` is a
 * supervisor and the relaying happens in its children (proc(5): field 4 of /proc/PID/stat
 * is the parent pid, read after the last ')' since the name may hold spaces).
 */
export function processTree(root: number): number[] {
  const parent = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    try {
      const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
      parent.set(pid, Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      /* gone */
    }
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) for (const [pid, ppid] of parent) if (ppid === out[i]) out.push(pid);
  return out;
}

/** CPU of the server's whole process tree (one process unless turn.workers > 1). */
function tryCpu(pid: number): CpuSample | null {
  try {
    const samples = processTree(pid).flatMap((p) => {
      try {
        return [sampleCpu(p)];
      } catch {
        return [];
      }
    });
    if (!samples.some((s) => s.pid === pid)) return null;
    if (samples.length === 1) return samples[0]!;
    const threads = new Map<number, bigint>();
    let all = true;
    for (const s of samples) {
      if (!s.threadsNs) all = false;
      else for (const [tid, ns] of s.threadsNs) threads.set(tid, ns);
    }
    return { pid, atNs: samples[0]!.atNs, ticks: samples.reduce((a, s) => a + s.ticks, 0), threadsNs: all ? threads : null };
  } catch {
    return null;
  }
}

/**
 * One turnutils_uclient run against the server at `port`. Bounded: killed when the
 * allocations are not all made within connectMs, when its counters stop moving for
 * stallMs, or after totalMs in all.
 */
async function runLoad(
  serverPid: number,
  port: number,
  peerPid: number,
  peerPort: number,
  clients: number,
  messages: number,
  size: number,
  intervalMs: number,
  probeIntervalMs = 0,
  /**
   * turnutils_uclient processes sharing the clients (-m split as evenly as possible): one
   * process paces its sessions itself and relays only ~10-35 000 packets/s however many
   * clients it has, below what a server with several workers takes.
   */
  generators = 1,
): Promise<LoadResult> {
  const k = Math.max(1, Math.min(generators, clients));
  const shares = Array.from({ length: k }, (_, i) => Math.floor(clients / k) + (i < clients % k ? 1 : 0));
  const connectMs = 30_000 + clients * 500;
  const stallMs = 20_000;
  const totalMs = connectMs + 60_000 + clients * messages * 0.5;

  const res: LoadResult = {
    size,
    clients,
    messagesPerClient: messages,
    sent: 0,
    received: 0,
    relayed: 0,
    relayedMethod: 'sent+received',
    drops: null,
    lostPackets: null,
    lossPct: null,
    sendDropped: null,
    rttAvgMs: null,
    rttMinMs: null,
    rttMaxMs: null,
    jitterAvgMs: null,
    transmitS: null,
    cpu: null,
    cpuTotal: null,
    loadavg: [round2(loadavg()[0]!), 0],
    usPerPacket: null,
    sys: null,
    systemUsPerPacket: null,
    softirqUsPerPacket: null,
    othersUsPerPacket: null,
    ratePps: null,
    latency: null,
    probeRelayed: 0,
    error: null,
  };

  let probe: LatencyProbe | null = null;
  let probeError: string | null = null;
  if (probeIntervalMs > 0) {
    try {
      probe = await startLatencyProbe(port, peerPort, probeIntervalMs, size);
    } catch (e) {
      probeError = (e as Error).message;
    }
  }
  const s0 = tryCpu(serverPid);
  let s1: CpuSample | null = null;
  let sys1: SysSample | null = null;
  let d1: { server: UdpDrops | null; peer: UdpDrops | null } | null = null;
  let lastProgress = Date.now();
  // Per generator: its last counters; the load's figures are their sums (RTT: the extremes,
  // the mean weighted by messages received).
  const per = shares.map(() => ({
    connected: false,
    counts: '',
    sent: 0,
    received: 0,
    lost: null as number | null,
    dropped: null as number | null,
    rtt: null as [number, number, number] | null,
    jitter: null as number | null,
    transmit: null as number | null,
  }));
  const sum = (f: (g: (typeof per)[number]) => number | null): number | null =>
    per.every((g) => f(g) !== null) ? per.reduce((a, g) => a + f(g)!, 0) : null;
  const ucs = shares.map((m, i) =>
    start(
      k > 1 ? `turnutils_uclient#${i}` : 'turnutils_uclient',
      'turnutils_uclient',
      uclientArgs(port, peerPort, m, messages, size, intervalMs),
      {},
      40,
    ),
  );
  const loadPids = (): number[] => [...ucs.map((u) => u.pid), peerPid];
  ucs.forEach((u, i) => {
    const g = per[i]!;
    u.onLine((line) => {
      if (!g.connected && line.includes('Total connect time')) {
        g.connected = true;
        // The measured window starts when every generator has made its allocations.
        if (!s1 && per.every((x) => x.connected)) {
          sys1 = sampleSystem(loadPids(), processTree(serverPid));
          s1 = tryCpu(serverPid);
          d1 = { server: udpDrops(processTree(serverPid)), peer: udpDrops(peerPid) };
          lastProgress = Date.now();
          probe?.begin();
        }
      }
      let m: RegExpExecArray | null;
      if ((m = RE_TOTALS.exec(line))) {
        g.sent = Number(m[1]);
        g.received = Number(m[2]);
        if (m[0] !== g.counts) {
          g.counts = m[0];
          lastProgress = Date.now();
        }
        res.sent = sum((x) => x.sent)!;
        res.received = sum((x) => x.received)!;
      }
      if ((m = RE_LOST.exec(line))) {
        g.lost = Number(m[1]);
        g.dropped = Number(m[3]);
        res.lostPackets = sum((x) => x.lost);
        res.sendDropped = sum((x) => x.dropped);
        // uclient's own percentage is of what it sent; the same over all generators.
        if (res.lostPackets !== null) res.lossPct = k === 1 ? Number(m[2]) : round2((100 * res.lostPackets) / Math.max(1, res.sent));
      }
      if ((m = RE_RTT.exec(line))) {
        g.rtt = [Number(m[1]), Number(m[2]), Number(m[3])];
        const all = per.filter((x) => x.rtt);
        const w = all.reduce((a, x) => a + Math.max(1, x.received), 0);
        res.rttAvgMs = all.reduce((a, x) => a + x.rtt![0] * Math.max(1, x.received), 0) / w;
        res.rttMinMs = Math.min(...all.map((x) => x.rtt![1]));
        res.rttMaxMs = Math.max(...all.map((x) => x.rtt![2]));
      }
      if ((m = RE_JITTER.exec(line))) {
        g.jitter = Number(m[1]);
        res.jitterAvgMs = Math.max(...per.map((x) => x.jitter ?? 0));
      }
      if ((m = RE_TRANSMIT.exec(line))) {
        g.transmit = Number(m[1]);
        res.transmitS = Math.max(...per.map((x) => x.transmit ?? 0));
      }
    });
  });

  const begun = Date.now();
  let killedFor: string | null = null;
  const watchdog = setInterval(() => {
    const now = Date.now();
    if (!s1 && now - begun > connectMs) killedFor = `allocations not all made within ${connectMs / 1000} s`;
    else if (s1 && now - lastProgress > stallMs)
      killedFor = `no progress for ${stallMs / 1000} s (sent ${res.sent}, received ${res.received})`;
    else if (now - begun > totalMs) killedFor = `still running after ${Math.round(totalMs / 1000)} s`;
    if (killedFor) {
      clearInterval(watchdog);
      for (const u of ucs) void stop(u, 1000);
    }
  }, 500);
  const exits = await Promise.all(ucs.map((u) => u.exited));
  const { code, signal } = exits.find((e) => e.code !== 0) ?? exits[0]!;
  clearInterval(watchdog);
  const probeDone = probe?.stop() ?? null;
  const s2 = tryCpu(serverPid);
  const sys2 = sampleSystem(loadPids(), processTree(serverPid));
  const d2 = { server: udpDrops(processTree(serverPid)), peer: udpDrops(peerPid) };
  res.loadavg[1] = round2(loadavg()[0]!);
  if (probeDone) {
    res.latency = await probeDone;
    res.probeRelayed = res.latency.sent + res.latency.received;
  }

  res.relayed = res.sent + res.received;
  const dStart = d1 as { server: UdpDrops | null; peer: UdpDrops | null } | null;
  if (dStart?.server && dStart.peer && d2.server && d2.peer) {
    const srv = dropsDelta(dStart.server, d2.server, port);
    const peer = dropsDelta(dStart.peer, d2.peer, peerPort);
    const out = Math.max(0, res.sent - srv.onPort); // client→peer, relayed
    const back = Math.max(0, out - peer.onPort - srv.others); // peer→client, relayed
    const lost = res.sent - res.received;
    res.drops = {
      serverListen: srv.onPort,
      serverRelay: srv.others,
      peer: peer.onPort,
      elsewhere: lost - srv.onPort - peer.onPort - srv.others,
    };
    // What came back through the relay can not be less than what the clients got; if it
    // is, the counters are not to be trusted (a socket closed?): keep sent + received.
    if (back >= res.received) {
      res.relayed = out + back;
      res.relayedMethod = 'socket-drops';
    }
  }
  if (s0 && s2) res.cpuTotal = cpuDelta(s0, s2);
  const connected: CpuSample | null = s1;
  if (connected && s2) res.cpu = cpuDelta(connected, s2);
  res.relayed += res.probeRelayed;
  if (res.cpu && res.relayed > 0) res.usPerPacket = res.cpu.cpuNs / 1000 / res.relayed;
  const sysStart: SysSample | null = sys1;
  if (sysStart && res.relayed > 0) {
    res.sys = sysDelta(sysStart, sys2);
    res.systemUsPerPacket = res.sys.systemNs / 1000 / res.relayed;
    res.softirqUsPerPacket = res.sys.softirqNs / 1000 / res.relayed;
    res.othersUsPerPacket = res.sys.othersNs / 1000 / res.relayed;
  }
  if (res.cpu && res.cpu.wallNs > 0) res.ratePps = res.relayed / (res.cpu.wallNs / 1e9);

  const problems: string[] = [];
  if (killedFor) problems.push(`turnutils_uclient stopped: ${killedFor}`);
  else if (code !== 0) problems.push(`turnutils_uclient exited with ${code ?? signal}`);
  if (!s2) problems.push('the server process was gone at the end of the load');
  if (!killedFor && res.lostPackets === null) problems.push('turnutils_uclient printed no loss summary');
  res.latencyError = probeError;
  if (problems.length) {
    // The client's own complaints say most (e.g. "channel bind: error 400 (...)").
    const said = [
      ...new Set(
        ucs
          .map((u) => u.tail())
          .join('\n')
          .split('\n')
          .filter((l) => /error|cannot|fail/i.test(l))
          .map((l) => l.replace(/^\d+: : /, '').trim()),
      ),
    ];
    if (said.length) problems.push(`it said: ${said.slice(0, 3).join(' | ')}`);
    res.error = problems.join('; ');
    res.clientTail = ucs.map((u) => u.tail()).join('\n');
  }
  return res;
}

// ---------------------------------------------------------------------------------------
// Servers

export interface Started {
  proc: Proc;
  port: number;
  command: string;
  cleanup: () => void;
}

async function startCoturn(clientsTotal: number): Promise<Started> {
  return startCoturnRelay(relayRangeSize(clientsTotal), 'gh-bench-coturn-');
}

/**
 * coturn's turnserver on 127.0.0.1 with one relay thread and the bench's long-term user
 * (USER/PASSWORD/REALM), relay ports from a free range of `relayPorts`; shared by the
 * escrow bench so both compare against the same coturn set-up.
 */
export async function startCoturnRelay(relayPorts: number, tmpPrefix: string, extra: string[] = []): Promise<Started> {
  const port = await freeUdpPort();
  const [low, high] = await freeUdpRange(relayPorts, [port]);
  const dir = mkdtempSync(join(tmpdir(), tmpPrefix));
  const cleanup = onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const args = [
    '-n', // no configuration file
    '--no-cli',
    '--no-tls',
    '--no-dtls',
    '--no-tcp',
    '--no-tcp-relay',
    '--lt-cred-mech',
    '--user',
    `${USER}:${PASSWORD}`,
    '--realm',
    REALM,
    '--allow-loopback-peers',
    '--listening-ip',
    HOST,
    '--relay-ip',
    HOST,
    '--listening-port',
    String(port),
    '--min-port',
    String(low),
    '--max-port',
    String(high),
    '--relay-threads',
    '1',
    '--log-file',
    'stdout',
    '--simple-log',
    '--pidfile',
    join(dir, 'turnserver.pid'),
    '--userdb',
    join(dir, 'turndb'), // not the system's /var/lib/turn/turndb
    ...extra,
  ];
  const proc = start('turnserver', 'turnserver', args, { cwd: dir });
  const command = `turnserver ${args.join(' ').replace(`${USER}:${PASSWORD}`, 'USER:PASSWORD').replaceAll(dir, '$TMP')}`;
  try {
    await waitForStun(HOST, port, 20_000, () => (proc.isRunning() ? null : `turnserver exited during start:\n${proc.tail()}`));
  } catch (e) {
    await stop(proc);
    cleanup();
    throw e;
  }
  return { proc, port, command, cleanup };
}

/** Probes `gatehouse serve --help`: null when the CLI is there, else why not. */
export function gatehouseUnavailable(): string | null {
  const r = spawnSync(process.execPath, [GATEHOUSE_BIN, 'serve', '--help'], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  if (r.error) return `node bin/gatehouse.js serve --help: ${r.error.message}`;
  if (r.status === 0) return null;
  const text = `${r.stderr}\n${r.stdout}`;
  const line = text.split('\n').find((l) => /Error|Cannot|not found|ERR_/.test(l)) ?? text.split('\n').find((l) => l.trim()) ?? '';
  return `node bin/gatehouse.js serve --help exited with ${r.status ?? r.signal}: ${line.trim().slice(0, 300)}`;
}

/**
 * Relay ports for every allocation of the run (they are not released when the uclient
 * exits, they expire), with room: coturn takes ports in pairs and skips busy ones.
 */
function relayRangeSize(allocations: number): number {
  return Math.min(20_000, allocations * 4 + 256);
}

export async function startGatehouse(
  clientsTotal: number,
  rules: string | null,
  nodeArgs: string[] = [],
  turnExtra: string[] = [],
  bin = GATEHOUSE_BIN,
  bare = false,
  relayPorts = relayRangeSize(clientsTotal),
  topExtra: string[] = [],
): Promise<Started> {
  const port = await freeUdpPort();
  const pcpPort = await freeUdpPort();
  const adminPort = await freeTcpPort();
  const [low, high] = await freeUdpRange(relayPorts, [port, pcpPort]);
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-gatehouse-'));
  const cleanup = onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'data'));
  let rulesPath = rules ? resolve(rules) : join(dir, 'rules.yaml');
  if (!rules) {
    // A bare relay: no inspection rules, and flows without escrowed keys are relayed
    // (the uclient payload is neither DTLS nor RTP).
    writeFileSync(rulesPath, 'keys:\n  required: false\n  unverified: pass\nrules: []\n');
  }
  const cfg = [
    `realm: ${REALM}`,
    `data_dir: ${JSON.stringify(join(dir, 'data'))}`,
    'log_level: warn',
    'turn:',
    `  listen: [udp://${HOST}:${port}]`,
    `  relay_address: ${HOST}`,
    `  relay_ports: [${low}, ${high}]`,
    '  peers: { allow: [127.0.0.0/8] }',
    '  max_allocations_per_user: 100000',
    // turnutils_uclient picks channel numbers from the RFC 5766 range 0x4000-0x7FFF;
    // RFC 8656 §12 narrowed it to 0x4000-0x4FFF (Gatehouse's default answers 400).
    '  channel_numbers: rfc5766',
    ...turnExtra.map((l) => `  ${l}`),
    `pcp: { listen: [udp://${HOST}:${pcpPort}] }`,
    `admin: { listen: http://${HOST}:${adminPort} }`,
    `users: [{ name: ${USER}, password: ${PASSWORD}, groups: [] }]`,
    `policy: { rules: ${JSON.stringify(rulesPath)} }`,
    ...topExtra,
    '',
  ].join('\n');
  const cfgPath = join(dir, 'gatehouse.yaml');
  writeFileSync(cfgPath, cfg);
  // A bare relay of another checkout (turn-ab --old): that checkout's bench/turn-bare.ts.
  const bareScript = join(bin === GATEHOUSE_BIN ? ROOT : resolve(dirname(bin), '..'), 'bench', 'turn-bare.ts');
  const args = bare
    ? [...nodeArgs, '--import', import.meta.resolve('tsx'), bareScript, cfgPath]
    : [...nodeArgs, bin, 'serve', '--config', cfgPath];
  const proc = start('gatehouse', process.execPath, args, { cwd: dir });
  const command = bare
    ? 'node --import tsx bench/turn-bare.ts $TMP/gatehouse.yaml'
    : `node bin/gatehouse.js serve --config $TMP/gatehouse.yaml`;
  try {
    await waitForStun(HOST, port, 60_000, () => (proc.isRunning() ? null : `gatehouse exited during start:\n${proc.tail()}`));
  } catch (e) {
    await stop(proc);
    cleanup();
    throw e;
  }
  return { proc, port, command, cleanup };
}

// ---------------------------------------------------------------------------------------

function median(runs: LoadResult[]): LoadResult {
  const ok = runs.filter((r) => r.usPerPacket !== null).sort((a, b) => a.usPerPacket! - b.usPerPacket!);
  if (!ok.length) return runs[runs.length - 1]!;
  return ok[Math.floor((ok.length - 1) / 2)]!;
}

function describe(r: LoadResult): string {
  const cpu = r.cpu ? `${(r.cpu.cpuNs / 1e9).toFixed(3)} s CPU (${r.cpu.source}, ${r.cpu.threads} threads)` : 'no CPU figure';
  const d = r.drops
    ? ` [drops: server listen ${r.drops.serverListen}, relay ${r.drops.serverRelay}, peer ${r.drops.peer}, elsewhere ${r.drops.elsewhere}]`
    : '';
  const sys =
    r.systemUsPerPacket !== null
      ? `, whole system ${fmt(r.systemUsPerPacket)} µs/packet (softirq ${fmt(r.softirqUsPerPacket)}, other processes ${fmt(r.othersUsPerPacket)})`
      : '';
  const lat = r.latency
    ? `, probe RTT p50 ${fmt(r.latency.p50Ms, 3)} / p99 ${fmt(r.latency.p99Ms, 3)} / max ${fmt(r.latency.maxMs, 3)} ms (${r.latency.received}/${r.latency.sent} back)`
    : r.latencyError
      ? `, ${r.latencyError}`
      : '';
  const rate = r.ratePps !== null ? `, ${int(Math.round(r.ratePps))} packets/s` : '';
  return `${r.size} B × ${r.clients} clients: sent ${r.sent}, received ${r.received}, relayed ${r.relayed} (${r.relayedMethod})${d}, loss ${r.lossPct ?? '?'}%, RTT ${r.rttAvgMs ?? '?'} ms, ${cpu}, ${fmt(r.usPerPacket)} µs/packet${sys}${lat}${rate}${r.error ? ` — ERROR: ${r.error}` : ''}`;
}

async function benchServer(
  name: ServerName,
  o: TurnBenchOptions,
  peerPid: number,
  peerPort: number,
  version: string | null,
): Promise<ServerRun> {
  const run: ServerRun = {
    server: name,
    available: false,
    reason: null,
    version,
    command: null,
    warmup: null,
    idleCpuMsPerS: null,
    cases: [],
    allRuns: [],
  };
  if (name === 'gatehouse') {
    o.log('gatehouse: checking `node bin/gatehouse.js serve --help`');
    const why = gatehouseUnavailable();
    if (why) {
      run.reason = why;
      o.log(`gatehouse: not available: ${why}`);
      return run;
    }
  } else if (!version) {
    run.reason = 'turnserver not found (apt-get install coturn)';
    return run;
  }
  // The probe adds one allocation per load.
  const loads = o.sweep ? o.sweep.clients.length * o.sizes.length : o.sizes.length * o.repeat;
  const allocations = o.sweep
    ? o.clients + o.sweep.clients.reduce((a, b) => a + b, 0) * o.sizes.length + loads + 1
    : o.clients * (1 + o.sizes.length * o.repeat) + loads + 1;
  let s: Started;
  try {
    s =
      name === 'gatehouse'
        ? await startGatehouse(
            allocations,
            o.gatehouseRules,
            o.gatehouseNodeArgs,
            o.gatehouseTurnConfig,
            o.gatehouseBin,
            o.gatehouseBare,
            relayRangeSize(allocations * (o.gatehouseRelayFactor ?? 1)),
            o.gatehouseTopConfig,
          )
        : await startCoturn(allocations);
  } catch (e) {
    run.reason = `did not start: ${(e as Error).message}`;
    o.log(`${name}: ${run.reason}`);
    return run;
  }
  run.available = true;
  run.command = s.command;
  o.log(`${name}: pid ${s.proc.pid}, ${s.command}`);
  try {
    o.log(`${name}: warm-up (${o.clients} clients × ${o.warmupMessages} messages of ${o.sizes[0]} B)`);
    run.warmup = await runLoad(s.proc.pid, s.port, peerPid, peerPort, o.clients, o.warmupMessages, o.sizes[0]!, o.intervalMs);
    o.log(`${name}: warm-up ${describe(run.warmup)}`);
    const i0 = tryCpu(s.proc.pid);
    await new Promise((r) => setTimeout(r, o.idleMs));
    const i1 = tryCpu(s.proc.pid);
    if (i0 && i1) {
      const d = cpuDelta(i0, i1);
      run.idleCpuMsPerS = d.cpuNs / 1e6 / (d.wallNs / 1e9);
      o.log(`${name}: idle ${fmt(run.idleCpuMsPerS, 2)} ms CPU per second`);
    }
    const probeMs = o.probeIntervalMs ?? 5;
    if (o.sweep) run.sweep = await sweepServer(name, s, o, o.sweep, peerPid, peerPort, probeMs, run.allRuns);
    for (let rep = 0; rep < (o.sweep ? 0 : o.repeat); rep++) {
      for (const size of o.sizes) {
        if (!s.proc.isRunning()) break;
        o.log(`${name}: ${o.clients} clients × ${o.messages} messages of ${size} B${o.repeat > 1 ? ` (run ${rep + 1}/${o.repeat})` : ''}`);
        const r = await runLoad(s.proc.pid, s.port, peerPid, peerPort, o.clients, o.messages, size, o.intervalMs, probeMs, o.generators);
        o.log(`${name}: ${describe(r)}`);
        run.allRuns.push(r);
      }
    }
    run.cases = o.sizes.map((size) => median(run.allRuns.filter((r) => r.size === size))).filter(Boolean);
    if (!s.proc.isRunning()) run.reason = `the server exited during the load`;
    if (!s.proc.isRunning() || [run.warmup, ...run.allRuns].some((r) => r?.error)) run.serverTail = s.proc.tail();
  } finally {
    await stop(s.proc);
    s.cleanup();
  }
  return run;
}

/**
 * The sweep on one running server: per size, loads of more and more clients (each about
 * sweep.seconds long: -n from the per-client rate the previous step achieved) until the
 * loss reaches sweep.maxLossPct, a load fails, or the server's time budget is spent.
 */
async function sweepServer(
  name: ServerName,
  s: Started,
  o: TurnBenchOptions,
  sweep: NonNullable<TurnBenchOptions['sweep']>,
  peerPid: number,
  peerPort: number,
  probeMs: number,
  all: LoadResult[],
): Promise<SweepResult[]> {
  const out: SweepResult[] = [];
  const budgetMs = (sweep.seconds + 15) * 1000 * sweep.clients.length * o.sizes.length;
  const begun = Date.now();
  // turnutils_uclient's -z is a floor, not a rate: the first guess is corrected by what it did.
  let perClient = sweep.perClientRate ?? 1000 / Math.max(1, o.intervalMs);
  for (const size of o.sizes) {
    const res: SweepResult = { size, steps: [], best: null, stoppedBy: 'end of the client list' };
    for (const clients of sweep.clients) {
      if (!s.proc.isRunning()) {
        res.stoppedBy = 'the server exited';
        break;
      }
      if (Date.now() - begun > budgetMs) {
        res.stoppedBy = `time budget (${Math.round(budgetMs / 1000)} s) spent`;
        break;
      }
      const messages = Math.max(50, Math.ceil(perClient * sweep.seconds));
      o.log(`${name}: sweep ${size} B, ${clients} clients × ${messages} messages (-z ${o.intervalMs})`);
      const r = await runLoad(s.proc.pid, s.port, peerPid, peerPort, clients, messages, size, o.intervalMs, probeMs, o.generators);
      o.log(`${name}: sweep ${describe(r)}`);
      res.steps.push(r);
      all.push(r);
      if (r.sent > 0 && r.cpu && r.cpu.wallNs > 0) perClient = Math.max(10, r.sent / clients / (r.cpu.wallNs / 1e9));
      const loss = lossOf(r);
      if (r.error || loss === null) {
        res.stoppedBy = `error: ${r.error ?? 'no counts'}`;
        break;
      }
      if (loss >= sweep.maxLossPct) {
        res.stoppedBy = `loss ${loss.toFixed(3)} % at ${clients} clients`;
        break;
      }
      if (!res.best || (r.ratePps ?? 0) > (res.best.ratePps ?? 0)) res.best = r;
    }
    out.push(res);
  }
  return out;
}

export function turnTable(result: Omit<TurnBenchResult, 'table'>): string {
  const headers = [
    'payload',
    'server',
    'relayed packets',
    'loss %',
    'RTT avg (min–max) ms',
    'server CPU s',
    'CPU µs/packet',
    'Gatehouse/coturn',
  ];
  const rows: Array<Array<string | number>> = [];
  for (const size of result.load.sizes) {
    const ratio = result.ratios.find((r) => r.size === size)?.gatehouseOverCoturn ?? null;
    for (const srv of result.servers) {
      const label = srv.server === 'gatehouse' ? 'Gatehouse' : 'coturn (1 relay thread)';
      if (!srv.available) {
        rows.push([`${size} B`, label, 'not available', '', '', '', '', '']);
        continue;
      }
      const c = srv.cases.find((x) => x.size === size);
      if (!c) {
        rows.push([`${size} B`, label, 'no run', '', '', '', '', '']);
        continue;
      }
      const rtt = c.rttAvgMs === null ? '–' : `${fmt(c.rttAvgMs, 3)} (${fmt(c.rttMinMs, 0)}–${fmt(c.rttMaxMs, 0)})`;
      rows.push([
        `${size} B`,
        label + (c.error ? ' ⚠' : ''),
        int(c.relayed),
        fmt(c.lossPct, 2),
        rtt,
        c.cpu ? fmt(c.cpu.cpuNs / 1e9, 3) : '–',
        fmt(c.usPerPacket, 2),
        srv.server === 'gatehouse' && ratio !== null ? `${fmt(ratio, 2)}×` : '',
      ]);
    }
  }
  return markdownTable(headers, rows, ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r']);
}

export async function runTurnRelayBench(
  opts: Partial<TurnBenchOptions> & { quick?: boolean } = {},
  coturnVersionString: string | null = null,
): Promise<TurnBenchResult> {
  const o: TurnBenchOptions = { ...turnBenchDefaults(opts.quick ?? false), ...stripUndefined(opts) };
  uclientMode = o.sendIndications ? ['-s'] : [];
  const load = {
    clients: o.clients,
    messagesPerClient: o.messages,
    intervalMs: o.intervalMs,
    sizes: o.sizes,
    warmupMessages: o.warmupMessages,
    repeat: o.repeat,
    uclientArgs: `turnutils_uclient ${uclientArgs(0, 0, o.clients, o.messages, 0, o.intervalMs).join(' ')}`
      .replace('-l 0', '-l SIZE')
      .replace('-p 0', '-p PORT')
      .replace('-r 0', '-r PEERPORT'),
  };
  const version = coturnVersionString ?? spawnSync('turnserver', ['--version'], { encoding: 'utf8' }).stdout?.trim().split('\n')[0] ?? null;

  const peerPort = await freeUdpPort();
  const peer = start('turnutils_peer', 'turnutils_peer', ['-L', HOST, '-p', String(peerPort)]);
  const servers: ServerRun[] = [];
  try {
    let up = false;
    for (let i = 0; i < 50 && !up && peer.isRunning(); i++) up = await udpEcho(HOST, peerPort, 200);
    if (!up) throw new Error(`turnutils_peer on ${HOST}:${peerPort} does not echo:\n${peer.tail()}`);
    for (const name of o.servers) servers.push(await benchServer(name, o, peer.pid, peerPort, version));
  } finally {
    await stop(peer);
  }

  const ratios = o.sizes.map((size) => {
    const g = servers.find((s) => s.server === 'gatehouse')?.cases.find((c) => c.size === size);
    const c = servers.find((s) => s.server === 'coturn')?.cases.find((c) => c.size === size);
    const ok = g?.usPerPacket && c?.usPerPacket && !g.error && !c.error;
    return { size, gatehouseOverCoturn: ok ? g.usPerPacket! / c.usPerPacket! : null };
  });
  const partial = { load, servers, ratios };
  return { ...partial, table: turnTable(partial) };
}

function round2(n: number): number {
  return Math.round(n * 100) / 100;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

// Run alone: npx tsx bench/turn-relay.ts [--quick]
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const r = await runTurnRelayBench({ quick: process.argv.includes('--quick') });
  process.stdout.write(`${r.table}\n`);
}
