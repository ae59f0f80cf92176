/**
 * Alternating A/B rounds of bench/turn-relay.ts for a shared, noisy machine: each round
 * runs Gatehouse and coturn one after the other (the order flips every round), and the
 * figure kept is the per-round ratio Gatehouse/coturn, whose median is reported. A
 * variant (`--variant fast_path=auto` etc.) adds a third server run per round: Gatehouse
 * with those `turn:` config lines.
 *
 *   npx tsx bench/turn-ab.ts [--rounds 3] [--clients 50] [--messages 1000] [--sizes 170,1100]
 *                            [--variant 'fast_path: auto'] [--prof DIR]
 *
 * --old DIR adds a run per round of another checkout's bin/gatehouse.js (an earlier build), as the variant.
 * --bare runs bench/turn-bare.ts (a TurnServer without the gateway's hooks) for every Gatehouse run.
 * --send: the load's messages are Send indications and their echoes Data indications
 * (turnutils_uclient -s, RFC 8656 §11.2/§11.3) instead of ChannelData, for every server.
 * --prof DIR runs the (first) Gatehouse of every round under `node --cpu-prof`, profiles in DIR.
 *
 * Beside the server's own CPU (all its threads, /proc/PID/task/TID/schedstat) every load also
 * reports, over the same window, the whole machine's CPU per relayed packet from /proc/stat
 * (user+nice+system+irq+softirq of all CPUs, minus what turnutils_uclient, turnutils_peer
 * and this process used: "the server + the kernel work it causes"), softirq alone, and the
 * other processes' share (noise on a shared machine); and a latency probe's p50/p99/max
 * round trip (bench/lib/latency-probe.ts: its own allocation and channel through the same
 * server, a timestamped ChannelData every --probe-ms ms, default 5; 0 turns it off). The
 * medians of those are a second table after the first.
 *
 * --sweep: an offered-load sweep per server instead of the A/B rounds. Each server (the
 * order: Gatehouse, the variant, coturn) is started once, warmed up, then for each size gets
 * loads of --sweep-clients clients (default 25,50,100,200,400,800), each about
 * --sweep-seconds long (default 4: -n follows from the per-client rate the previous step
 * achieved), at -z --interval ms (default 1), up the list until the loss reaches
 * --max-loss % (default 0.1), a load fails, or (seconds + 15) × steps × sizes is spent.
 * Reported: the highest relayed rate (packets/s, both directions) with loss below the
 * limit, its CPU figures and RTT. With the defaults and --sizes 170 a server takes about
 * 1-2 minutes; --sizes 170,1100 about twice that.
 *
 *   npx tsx bench/turn-ab.ts --sweep [--bare] [--variant 'fast_path: auto'] [--sizes 170]
 *                            [--sweep-clients 25,50,100,200,400] [--sweep-seconds 4]
 *                            [--interval 1] [--max-loss 0.1]
 *
 * --workers N (issue 13, turn.workers): the variant is `gatehouse serve` with `workers: N`,
 * against the same Gatehouse with one worker, without coturn. A redis-server on a free
 * port is started for the run and both Gatehouse runs get `store: { redis: ... }` (workers
 * need it; the one-worker run has it too, so the two differ only in turn.workers). Both
 * run from the sources (node --import tsx src/cli/main.ts) and the server's CPU is that of
 * its whole process tree (the supervisor and its workers). With --sweep this gives the
 * highest packets per second at < --max-loss % for 1 worker vs N:
 *
 *   flock /tmp/heavy.lock npx tsx bench/turn-ab.ts --sweep --workers 2 [--variant-extra 'fast_path: auto'] --sizes 170
 *
 * --variant-extra LINES: `turn:` lines (';'-separated) given to both Gatehouse runs (with --workers, or
 *   with --old: `--old DIR --bare --variant-extra 'fast_path: auto'` compares two builds' fast paths).
 * --generators K: every load runs K turnutils_uclient processes sharing its clients (one
 * uclient paces its sessions and relays only ~10-35 000 packets/s, below what several
 * workers take); figures are their sums, the window starts when all have allocated.
 */
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { start } from './lib/procs.js';
import { freeTcpPort } from './lib/ports.js';
import { lossOf, runTurnRelayBench, type LoadResult, type SweepResult, type TurnBenchOptions } from './turn-relay.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : dflt;
}

const workersN = Number(arg('workers', '0'));
if (!Number.isInteger(workersN) || workersN === 1 || workersN < 0 || workersN > 64) throw new Error('--workers N: 2-64');
if (workersN > 0 && process.argv.includes('--bare')) throw new Error('--workers runs gatehouse serve: not with --bare');
const both = arg('variant-extra', '')
  .split(';')
  .map((s) => s.trim())
  .filter(Boolean);
const rounds = Number(arg('rounds', '3'));
const clients = Number(arg('clients', '50'));
const messages = Number(arg('messages', '1000'));
const sizes = arg('sizes', '170,1100').split(',').map(Number);
const variant =
  workersN > 0
    ? [`workers: ${workersN}`, ...both].join('; ')
    : arg('variant', '') || (process.argv.includes('--old') ? 'earlier build' : '');
const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
/** --workers: the Redis both Gatehouse runs share state through (turn.workers > 1 requires store.redis). */
let redisUrl: string | null = null;
if (workersN > 0) {
  const port = await freeTcpPort();
  const redis = start('redis-server', 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  // Ended with the bench by lib/procs (exit, error, signal), like every process it starts.
  void redis;
  await new Promise((r) => setTimeout(r, 500));
  redisUrl = `redis://127.0.0.1:${port}/0`;
}
const prof = arg('prof', '');
const old = arg('old', '');
const probeMs = Number(arg('probe-ms', '5'));
const intervalMs = Number(arg('interval', '1'));
const sweepMode = process.argv.includes('--sweep');
const sweep = {
  clients: arg('sweep-clients', '25,50,100,200,400,800').split(',').map(Number),
  seconds: Number(arg('sweep-seconds', '4')),
  maxLossPct: Number(arg('max-loss', '0.1')),
};
const version = spawnSync('turnserver', ['--version'], { encoding: 'utf8' }).stdout?.trim().split('\n')[0] ?? null;

type Key = 'gatehouse' | 'variant' | 'coturn';
const per: Record<Key, number[][]> = { gatehouse: [], variant: [], coturn: [] };
/** every round's full result per size (NaN-free figures only go into the medians) */
const full: Record<Key, Array<Array<LoadResult | null>>> = { gatehouse: [], variant: [], coturn: [] };
const sweeps: Partial<Record<Key, SweepResult[]>> = {};
const log = (l: string): void => void process.stderr.write(`${l}\n`);

async function one(which: Key): Promise<number[]> {
  const o: Partial<TurnBenchOptions> = {
    clients,
    messages,
    intervalMs,
    probeIntervalMs: probeMs,
    sweep: sweepMode ? sweep : undefined,
    sizes,
    warmupMessages: 200,
    idleMs: 500,
    repeat: 1,
    servers: [which === 'coturn' ? 'coturn' : 'gatehouse'],
    // --verbose: every load's line (the sweep's steps) on stderr.
    log: process.argv.includes('--verbose') ? (l: string) => log(`  ${which}: ${l}`) : () => {},
    gatehouseBare: process.argv.includes('--bare'),
    sendIndications: process.argv.includes('--send'),
    generators: Number(arg('generators', '1')),
  };
  if (which === 'variant' && old) o.gatehouseBin = `${old}/bin/gatehouse.js`;
  else if (which === 'variant') o.gatehouseTurnConfig = variant.split(';').map((s) => s.trim());
  // --variant-extra without --workers: the same `turn:` lines for both Gatehouse runs (e.g.
  // `--old DIR --variant-extra 'fast_path: auto'` compares two builds' fast paths).
  if (workersN === 0 && which !== 'coturn' && both.length) o.gatehouseTurnConfig = [...(o.gatehouseTurnConfig ?? []), ...both];
  if (workersN > 0 && which !== 'coturn') {
    if (which === 'gatehouse') o.gatehouseTurnConfig = both;
    o.gatehouseTopConfig = [`store: { redis: ${JSON.stringify(redisUrl)}, node_id: bench-${which} }`];
    o.gatehouseBin = join(ROOT, 'src', 'cli', 'main.ts');
    o.gatehouseNodeArgs = ['--import', import.meta.resolve('tsx'), ...(o.gatehouseNodeArgs ?? [])];
    o.gatehouseRelayFactor = which === 'variant' ? workersN : 1;
  }
  if (which !== 'coturn' && prof) o.gatehouseNodeArgs = ['--cpu-prof', `--cpu-prof-dir=${prof}`];
  const r = await runTurnRelayBench(o, version);
  const srv = r.servers[0]!;
  if (sweepMode) {
    sweeps[which] = srv.sweep ?? [];
    if (!srv.sweep) log(`${which}: no sweep: ${srv.reason ?? 'no run'}`);
    return [];
  }
  full[which].push(sizes.map((size) => srv.cases.find((x) => x.size === size && !x.error) ?? null));
  return sizes.map((size) => {
    const c = srv.cases.find((x) => x.size === size);
    if (!c || c.error) log(`${which} ${size} B: ${c?.error ?? srv.reason ?? 'no run'}`);
    else log(`${which} ${size} B: ${c.usPerPacket!.toFixed(2)} µs/packet, loss ${c.lossPct}%, relayed ${c.relayed}`);
    return c && !c.error ? c.usPerPacket! : NaN;
  });
}

const med = (xs: number[]): number => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)]! : NaN;
};

const f2 = (n: number): string => (Number.isFinite(n) ? n.toFixed(2) : '–');
const f3 = (n: number): string => (Number.isFinite(n) ? n.toFixed(3) : '–');
const label = (k: Key): string =>
  k === 'coturn'
    ? 'coturn 4.6.1'
    : k === 'variant'
      ? `Gatehouse (${variant})`
      : process.argv.includes('--bare')
        ? 'Gatehouse (bare)'
        : workersN > 0
          ? `Gatehouse (${['workers: 1', ...both].join('; ')})`
          : 'Gatehouse';

if (sweepMode) {
  const order: Key[] = workersN > 0 ? ['gatehouse', 'variant'] : variant ? ['gatehouse', 'variant', 'coturn'] : ['gatehouse', 'coturn'];
  log(`sweep (${order.join(' → ')}), load average ${loadavg()[0]!.toFixed(2)}`);
  for (const k of order) await one(k);
  const lines: string[] = [
    `Offered-load sweep: -z ${intervalMs} ms, clients ${sweep.clients.join(', ')}, ~${sweep.seconds} s per step; highest relayed rate with loss < ${sweep.maxLossPct} %`,
    '| payload | server | highest rate, packets/s | clients | loss % | server µs/pkt | system µs/pkt | softirq µs/pkt | others µs/pkt | RTT p50 / p99 ms | stopped by |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  ];
  for (const size of sizes) {
    for (const k of order) {
      const sw = sweeps[k]?.find((x) => x.size === size);
      const b = sw?.best ?? null;
      lines.push(
        `| ${size} B | ${label(k)} | ${b ? Math.round(b.ratePps ?? NaN) : '–'} | ${b?.clients ?? '–'} | ${b ? f3(lossOf(b) ?? NaN) : '–'} | ` +
          `${f2(b?.usPerPacket ?? NaN)} | ${f2(b?.systemUsPerPacket ?? NaN)} | ${f2(b?.softirqUsPerPacket ?? NaN)} | ${f2(b?.othersUsPerPacket ?? NaN)} | ` +
          `${f3(b?.latency?.p50Ms ?? NaN)} / ${f3(b?.latency?.p99Ms ?? NaN)} | ${sw?.stoppedBy ?? 'no run'} |`,
      );
    }
  }
  if (workersN > 0) {
    lines.push('');
    for (const size of sizes) {
      const one = sweeps.gatehouse?.find((x) => x.size === size)?.best?.ratePps ?? NaN;
      const n = sweeps.variant?.find((x) => x.size === size)?.best?.ratePps ?? NaN;
      lines.push(`${size} B: ${workersN} workers / 1 worker = ${f2(n / one)}× packets/s at < ${sweep.maxLossPct} % loss`);
    }
  }
  process.stdout.write(lines.join('\n') + '\n');
  process.exit(0);
}

for (let r = 0; r < rounds; r++) {
  const order: Key[] = variant ? ['gatehouse', 'variant', 'coturn'] : ['gatehouse', 'coturn'];
  if (r % 2) order.reverse();
  log(`round ${r + 1}/${rounds} (${order.join(' → ')}), load average ${loadavg()[0]!.toFixed(2)}`);
  for (const k of order) per[k].push(await one(k));
}

const lines: string[] = [];
lines.push(
  `${clients} clients × ${messages} messages, ${rounds} alternating rounds, median of per-round figures` +
    (process.argv.includes('--bare') ? ' (Gatehouse: bare TurnServer, bench/turn-bare.ts)' : ' (Gatehouse: gatehouse serve)'),
);
lines.push(
  '| payload | Gatehouse µs | ' +
    (variant ? `Gatehouse (${variant}) µs | ` : '') +
    'coturn µs | Gatehouse/coturn' +
    (variant ? ' | variant/coturn' : '') +
    ' |',
);
sizes.forEach((size, i) => {
  const g = per.gatehouse.map((x) => x[i]!);
  const c = per.coturn.map((x) => x[i]!);
  const v = per.variant.map((x) => x[i]!);
  const ratio = med(g.map((x, k) => x / c[k]!));
  const vr = med(v.map((x, k) => x / c[k]!));
  lines.push(
    `| ${size} B | ${med(g).toFixed(2)} | ` +
      (variant ? `${med(v).toFixed(2)} | ` : '') +
      `${med(c).toFixed(2)} | ${ratio.toFixed(2)}×` +
      (variant ? ` | ${vr.toFixed(2)}×` : '') +
      ' |',
  );
});

// Beside the server's own figure: the whole machine, softirq, the noise, the probe's RTT.
const medOf = (k: Key, i: number, f: (c: LoadResult) => number | null | undefined): number =>
  med(full[k].map((row) => row[i]).map((c) => (c ? (f(c) ?? NaN) : NaN)));
const keys: Key[] = variant ? ['gatehouse', 'variant', 'coturn'] : ['gatehouse', 'coturn'];
lines.push('');
lines.push('Whole system over the same windows (/proc/stat minus the load generators), medians of the rounds; RTT from the latency probe');
lines.push(
  '| payload | server | server µs/pkt | system µs/pkt | softirq µs/pkt | others µs/pkt | RTT p50 / p99 / max ms | rate packets/s |',
);
lines.push('|---|---|---:|---:|---:|---:|---:|---:|');
sizes.forEach((size, i) => {
  for (const k of keys) {
    lines.push(
      `| ${size} B | ${label(k)} | ${f2(medOf(k, i, (c) => c.usPerPacket))} | ${f2(medOf(k, i, (c) => c.systemUsPerPacket))} | ` +
        `${f2(medOf(k, i, (c) => c.softirqUsPerPacket))} | ${f2(medOf(k, i, (c) => c.othersUsPerPacket))} | ` +
        `${f3(medOf(k, i, (c) => c.latency?.p50Ms))} / ${f3(medOf(k, i, (c) => c.latency?.p99Ms))} / ${f3(medOf(k, i, (c) => c.latency?.maxMs))} | ` +
        `${Math.round(medOf(k, i, (c) => c.ratePps))} |`,
    );
  }
});
process.stdout.write(lines.join('\n') + '\n');
