/**
 * NFQUEUE path benchmark (PCP firewall data plane): packets/s and CPU per packet through
 * the gateway's queue reader with accept verdicts, and the added latency of a held packet.
 *
 *   npx tsx bench/nfqueue.ts [--packets 100000] [--size 200] [--pings 300] [--json FILE]
 *
 * Needs root, nft, iptables and the native binding (npm run build:native). Builds
 * lan | gw | wan namespaces (test/e2e/helpers/netns.ts), one MAP mapping through the
 * nftables backend; the reader runs INSIDE gw (this file with --child); a sender in lan, a
 * sink in wan. Figures are reported, never asserted. runNfqueueBench() is exported for
 * bench/run.ts.
 *
 *  - throughput: the sender sends --packets datagrams lan -> wan as fast as it can (in
 *    windows of 64 sends); the reader accepts each; pps = packets verdicted / reader's
 *    busy wall time (first to last packet); CPU/packet = the reader's user+system CPU
 *    over those packets (the kernel's queueing work in the sender's softirq is not in it).
 *  - latency: --pings sequential round trips lan -> wan -> lan (both directions queued),
 *    accept at once vs held (verdict by id on the next event-loop turn, from a timer of 0 ms,
 *    and of 10 ms); added latency of a held packet = (RTT_held - RTT_accept) / 2 per
 *    direction, minus the hold itself.
 */
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { writeFileSync } from 'node:fs';
import { NftablesBackend } from '../src/pcp/firewall/nftables.js';
import { NfQueueReader } from '../src/pcp/firewall/nfqueue.js';
import type { PcpMapping } from '../src/pcp/hooks.js';
import { THREE_NS as A, threeNamespaces } from '../test/e2e/helpers/netns.js';

const QUEUE = 11;

/** --child: the reader inside gw. stdin: "accept" | "defer" | "hold <ms>" | "stats" | "reset". */
function child(): void {
  let mode: 'accept' | 'hold' | 'defer' = 'accept';
  let holdMs = 0;
  let n = 0;
  let first = 0;
  let last = 0;
  let cpu = process.cpuUsage();
  const q = NfQueueReader.open({ queue: QUEUE, maxLen: 8192, maxHeld: 4096, batch: 64 }, (p, r) => {
    const now = performance.now();
    if (!n) first = now;
    last = now;
    n++;
    if (mode === 'accept') return 'accept';
    // defer: the verdict by id on the next turn of the event loop (as a release from
    // PcpPath after the handler returned); hold: from a timer (Node runs a 0 ms timer after >= 1 ms).
    if (mode === 'defer') setImmediate(() => r.verdict(p.id, 'accept'));
    else setTimeout(() => r.verdict(p.id, 'accept'), holdMs);
    return 'hold';
  });
  const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
  out({ ready: true });
  createInterface({ input: process.stdin }).on('line', (l) => {
    const [cmd, arg] = l.split(' ');
    if (cmd === 'accept') mode = 'accept';
    else if (cmd === 'hold') ((mode = 'hold'), (holdMs = Number(arg)));
    else if (cmd === 'defer') mode = 'defer';
    else if (cmd === 'reset') ((n = 0), (cpu = process.cpuUsage()));
    else if (cmd === 'stats') {
      const c = process.cpuUsage(cpu);
      out({ n, busyMs: last - first, cpuUs: c.user + c.system, stats: q.stats() });
    }
    if (cmd !== 'stats') out({ ok: cmd });
  });
}

const SENDER = `
const s = require('node:dgram').createSocket('udp4');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
let pending = null;
s.on('message', (m) => { if (pending) { const p = pending; pending = null; p(); } });
s.bind(5000, '${A.lanHost}', () => out({ ready: true }));
require('node:readline').createInterface({ input: process.stdin }).on('line', async (l) => {
  const [cmd, a, b] = l.split(' ');
  if (cmd === 'blast') {
    const n = Number(a), buf = Buffer.alloc(Number(b), 0x61);
    const t0 = process.hrtime.bigint();
    let sent = 0;
    while (sent < n) {
      const w = Math.min(64, n - sent);
      await new Promise((res) => { let k = w; for (let i = 0; i < w; i++) s.send(buf, 9000, '${A.wanPeer}', () => { if (--k === 0) res(); }); });
      sent += w;
    }
    out({ sent, ms: Number(process.hrtime.bigint() - t0) / 1e6 });
  } else if (cmd === 'ping') {
    const n = Number(a), rtt = [];
    for (let i = 0; i < n; i++) {
      const t0 = process.hrtime.bigint();
      const ok = await new Promise((res) => { const tm = setTimeout(() => { pending = null; res(false); }, 1000); pending = () => { clearTimeout(tm); res(true); }; s.send(Buffer.from('ping'), 9000, '${A.wanPeer}'); });
      if (ok) rtt.push(Number(process.hrtime.bigint() - t0) / 1e3);
    }
    rtt.sort((x, y) => x - y);
    out({ n: rtt.length, p50: rtt[Math.floor(rtt.length / 2)], p99: rtt[Math.floor(rtt.length * 0.99)] });
  }
});`;

const SINK = `
const s = require('node:dgram').createSocket('udp4');
let n = 0;
s.on('message', (m, r) => { n++; if (m.length === 4) s.send(m, r.port, r.address); });
s.bind(9000, '${A.wanPeer}', () => process.stdout.write('{"ready":true}\\n'));
require('node:readline').createInterface({ input: process.stdin }).on('line', () => process.stdout.write(JSON.stringify({ n }) + '\\n'));`;

/** A child whose stdout JSON lines are awaited one request at a time. */
function rpc(p: import('node:child_process').ChildProcess) {
  const lines: unknown[] = [];
  const waiters: ((v: unknown) => void)[] = [];
  createInterface({ input: p.stdout! }).on('line', (l) => {
    const v = JSON.parse(l) as unknown;
    const w = waiters.shift();
    if (w) w(v);
    else lines.push(v);
  });
  const next = <T>(): Promise<T> =>
    lines.length ? Promise.resolve(lines.shift() as T) : new Promise<T>((r) => waiters.push(r as (v: unknown) => void));
  return {
    next,
    ask: <T>(cmd: string): Promise<T> => {
      p.stdin!.write(cmd + '\n');
      return next<T>();
    },
  };
}

export interface NfqueueBenchResult {
  packets: number;
  size: number;
  sent: number;
  verdicted: number;
  delivered: number;
  pps: number;
  cpuUsPerPacket: number;
  enobufs: number;
  rttAcceptUs: { p50: number; p99: number };
  /** Verdict given by id from setImmediate (not as the handler's return value). */
  rttDeferUs: { p50: number; p99: number };
  rttHold0Us: { p50: number; p99: number };
  rttHold10Us: { p50: number; p99: number };
  /** (RTT_defer - RTT_accept) / 2: a delayed verdict given on the next event-loop turn. */
  addedDeferLatencyUs: number;
  /** (RTT_hold0 - RTT_accept) / 2: a verdict from a 0 ms timer (>= 1 ms in Node). */
  addedHoldLatencyUs: number;
  /** (RTT_hold10 - RTT_accept) / 2 - 10 ms: timer precision included. */
  addedHold10LatencyUs: number;
}

export async function runNfqueueBench(o: { packets?: number; size?: number; pings?: number } = {}): Promise<NfqueueBenchResult> {
  const packets = o.packets ?? 100_000;
  const size = o.size ?? 200;
  const pings = o.pings ?? 300;
  const teardown: (() => unknown)[] = [];
  try {
    const { lab, lan, gw, wan } = threeNamespaces({ teardown: (f) => teardown.push(f) }, 'ghbn');
    const fw = await NftablesBackend.create({ queue: { num: QUEUE, failOpen: false }, netns: gw });
    if (!fw.available) throw new Error(`firewall backend unavailable: ${fw.reason}`);
    teardown.push(() => fw.close());
    const m: PcpMapping = {
      id: 'bench-1',
      opcode: 'map',
      client: { address: A.lanHost, port: 5350 },
      internal: { address: A.lanHost, port: 5000 },
      protocol: 17,
      external: { address: A.gwWan, port: 40000 },
      remote: null,
      filters: [],
      nonce: Buffer.alloc(12),
      user: null,
      groups: [],
      createdAt: Date.now(),
      expiresAt: Date.now() + 3_600_000,
    };
    await fw.install(m);
    const reader = rpc(lab.spawn(gw, process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child']));
    const sink = rpc(lab.spawn(wan, process.execPath, ['-e', SINK]));
    const sender = rpc(lab.spawn(lan, process.execPath, ['-e', SENDER]));
    for (const c of [reader, sink, sender]) await c.next();

    await reader.ask('reset');
    const blast = await sender.ask<{ sent: number; ms: number }>(`blast ${packets} ${size}`);
    await new Promise((r) => setTimeout(r, 500)); // drain
    const st = await reader.ask<{ n: number; busyMs: number; cpuUs: number; stats: { enobufs: number } }>('stats');
    const delivered = (await sink.ask<{ n: number }>('count')).n;

    type Lat = { n: number; p50: number; p99: number };
    await reader.ask('accept');
    const acc = await sender.ask<Lat>(`ping ${pings}`);
    await reader.ask('defer');
    const def = await sender.ask<Lat>(`ping ${pings}`);
    await reader.ask('hold 0');
    const h0 = await sender.ask<Lat>(`ping ${pings}`);
    await reader.ask('hold 10');
    const h10 = await sender.ask<Lat>(`ping ${Math.min(pings, 100)}`);
    const r2 = (x: number) => Math.round(x * 100) / 100;
    return {
      packets,
      size,
      sent: blast.sent,
      verdicted: st.n,
      delivered,
      pps: Math.round(st.n / (st.busyMs / 1000)),
      cpuUsPerPacket: r2(st.cpuUs / st.n),
      enobufs: st.stats.enobufs,
      rttAcceptUs: { p50: r2(acc.p50), p99: r2(acc.p99) },
      rttDeferUs: { p50: r2(def.p50), p99: r2(def.p99) },
      rttHold0Us: { p50: r2(h0.p50), p99: r2(h0.p99) },
      rttHold10Us: { p50: r2(h10.p50), p99: r2(h10.p99) },
      addedDeferLatencyUs: r2((def.p50 - acc.p50) / 2),
      addedHoldLatencyUs: r2((h0.p50 - acc.p50) / 2),
      addedHold10LatencyUs: r2((h10.p50 - acc.p50) / 2 - 10_000),
    };
  } finally {
    for (const f of teardown.reverse()) await f();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv.includes('--child')) child();
  else {
    const arg = (k: string) => {
      const i = process.argv.indexOf(k);
      return i > 0 ? process.argv[i + 1] : undefined;
    };
    const r = await runNfqueueBench({
      packets: arg('--packets') ? Number(arg('--packets')) : undefined,
      size: arg('--size') ? Number(arg('--size')) : undefined,
      pings: arg('--pings') ? Number(arg('--pings')) : undefined,
    });
    console.log(JSON.stringify(r, null, 2));
    const j = arg('--json');
    if (j) writeFileSync(j, JSON.stringify(r, null, 2));
    process.exit(0);
  }
}
