/**
 * The firewall path's benchmarks (issue 10 "Speed"), reported, never asserted:
 *
 *  1. PCP requests/s: one UDP load generator (a node child, hand-built RFC 6887 MAP
 *     requests, not our codec) with `window` mappings in flight, each cycling create ->
 *     refresh -> delete on its own internal port (one request outstanding per mapping, the
 *     next sent when the answer arrives or after 500 ms), against
 *       - Gatehouse's PcpServer (src/pcp/server.ts) in a child process whose firewall
 *         backend only counts installs in memory: the figure is the server's (codec,
 *         validation, mapping table, epoch), not the kernel's;
 *       - miniupnpd (Debian miniupnpd-nftables) with its real nftables backend: every
 *         create and delete programs rules of `table inet miniupnpd`.
 *     Both in the same network namespace, on the same address, one after the other; the
 *     generator in a second namespace across a veth pair. Server CPU from /proc
 *     (bench/lib/cpu.ts) over the load. Every answer's result code is counted.
 *  2. CPU per inspected packet: the same synthetic DTLS 1.2 data-channel session (records
 *     of SCTP DATA carrying a data-channel message; keys known to the gateway, given to
 *     GatewayInspector.applyKeySet when the flow is created, no escrow exchange inside the
 *     measurement) through
 *       (a) the NFQUEUE path: lan | gw | wan namespaces, a MAP mapping installed by the real
 *           nftables backend, a child in gw running NfQueueReader -> PcpPath ->
 *           GatewayInspector (verdict per packet);
 *       (b) the TURN path: a child on loopback running TurnServer + the same
 *           GatewayInspector, the records as ChannelData (RFC 8656 §12.5) to a UDP peer;
 *       (c) the TURN path without flow hooks (plain relay), for scale.
 *     µs CPU per packet = the child's process.cpuUsage() (user+system) over the load ÷
 *     packets the gateway handled (NFQUEUE: verdicts; TURN: packets given to onPacket, or
 *     relayed for (c)). The last message carries a marker a policy rule alerts on: the
 *     `judged` column says the inspector decrypted and judged the session.
 *  3. Added latency of a held packet: bench/nfqueue.ts (accept-only reader; verdict held
 *     0 ms and 10 ms), run in the same invocation.
 *
 *   npx tsx bench/pcp.ts [--quick]          standalone
 *   npm run bench -- --only pcp             through bench/run.ts
 *
 * Needs root, ip, nft, iptables, the NFQUEUE native binding and miniupnpd; a part whose
 * programs are missing reports why and the others still run.
 */
import type { ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { cpuDelta, sampleCpu } from './lib/cpu.js';
import { HOST, freeUdpPort, freeUdpRange } from './lib/ports.js';
import { fmt, markdownTable } from './lib/table.js';
import { runNfqueueBench, type NfqueueBenchResult } from './nfqueue.js';
import { NetnsLab, THREE_NS as A, threeNamespaces } from '../test/e2e/helpers/netns.js';
import { findProgram } from '../test/e2e/helpers/require-peer.js';
import { SctpBuilder, syntheticSession, type SyntheticSession } from '../test/unit/inspect/pipeline-helpers.js';
import { Client, errCode } from '../test/unit/turn/helpers.js';
import { resultName } from '../src/wire/pcp.js';
import type { FirewallBackend, PcpMapping } from '../src/pcp/hooks.js';
import type { KeySet } from '../src/wire/keyset.js';

const THIS_FILE = fileURLToPath(import.meta.url);
const QUEUE = 12;
const MARKER = 'BENCH-MARKER-5c1e';
const CH = 0x4001; // RFC 8656 §12: channel numbers 0x4000-0x4FFF
/** UDP payload overhead of one app-data datagram: DTLS header 13 + GCM nonce 8 + tag 16 + SCTP 12 + DATA chunk 16. */
const OVERHEAD = 13 + 8 + 16 + 12 + 16;
const RULES = [
  'keys:',
  '  required: true',
  '  deadline: 10s',
  '  unverified: hold',
  '  block_for: 5m',
  'rules:',
  '  - id: bench-marker',
  '    when:',
  `      contains: ["${MARKER}"]`,
  '    action: alert',
  '',
].join('\n');

// ---------------------------------------------------------------------------------------
// Shared

/** JSON with Buffers (Buffer.toJSON shape) revived. Used for key sets on a child's stdin, never logged. */
function revive(_k: string, v: unknown): unknown {
  if (v && typeof v === 'object' && (v as { type?: unknown }).type === 'Buffer' && Array.isArray((v as { data?: unknown }).data))
    return Buffer.from((v as { data: number[] }).data);
  return v;
}

/** A child whose stdout JSON lines are awaited one at a time (non-JSON lines are skipped). */
function rpc(p: ChildProcess, name: string) {
  const lines: unknown[] = [];
  const waiters: { ok: (v: unknown) => void; no: (e: Error) => void }[] = [];
  let err = '';
  p.stderr?.on('data', (b: Buffer) => void (err = (err + b.toString()).slice(-4000)));
  createInterface({ input: p.stdout! }).on('line', (l) => {
    let v: unknown;
    try {
      v = JSON.parse(l);
    } catch {
      return;
    }
    const w = waiters.shift();
    if (w) w.ok(v);
    else lines.push(v);
  });
  p.once('exit', (code) => {
    for (const w of waiters.splice(0)) w.no(new Error(`${name} exited ${code}: ${err}`));
  });
  const next = <T>(ms = 120_000): Promise<T> =>
    lines.length
      ? Promise.resolve(lines.shift() as T)
      : new Promise<T>((ok, no) => {
          const w = { ok: ok as (v: unknown) => void, no };
          const tm = setTimeout(() => {
            const i = waiters.indexOf(w);
            if (i >= 0) waiters.splice(i, 1);
            no(new Error(`${name}: no answer within ${ms} ms; stderr: ${err}`));
          }, ms);
          w.ok = (v) => (clearTimeout(tm), (ok as (v: unknown) => void)(v));
          w.no = (e) => (clearTimeout(tm), no(e));
          waiters.push(w);
        });
  return {
    next,
    ask: <T>(cmd: string, ms?: number): Promise<T> => {
      p.stdin!.write(cmd + '\n');
      return next<T>(ms);
    },
    stderr: () => err,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const r2 = (x: number) => Math.round(x * 100) / 100;

// ---------------------------------------------------------------------------------------
// 1. PCP requests/s

/**
 * The load generator (plain JS, run as `node -e`). MAP requests are built by hand from
 * RFC 6887 so that the generator shares no code with the server it measures.
 */
const GENERATOR = String.raw`
const dgram = require('node:dgram');
const cfg = JSON.parse(process.argv[1]);
const ip = cfg.client.split('.').map(Number);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const STEPS = ['create', 'refresh', 'delete'];
function request(port, lifetime) {
  // RFC 6887 §7.1 request header (24 bytes) + §11.1 MAP opcode (36 bytes).
  const b = Buffer.alloc(60);
  b[0] = 2; // version 2
  b[1] = 1; // R = 0 (request), opcode 1 = MAP (§19.2)
  b.writeUInt32BE(lifetime, 4); // requested lifetime; 0 deletes (§15)
  b[18] = 0xff; b[19] = 0xff; b.set(ip, 20); // client IP, IPv4-mapped (§5)
  b.write('ghpb', 24, 'latin1'); b.writeUInt32BE(port, 32); // mapping nonce (§11.2): one per internal port
  b[36] = 17; // protocol UDP
  b.writeUInt16BE(port, 40); // internal port
  b.writeUInt16BE(port, 42); // suggested external port
  b[54] = 0xff; b[55] = 0xff; // suggested external address ::ffff:0.0.0.0, no preference (§11.1)
  return b;
}
const socks = [];
const slots = new Map(); // internal port -> slot
const all = [];
const counts = {};
let sent = 0, answered = 0, timeouts = 0, running = false, stray = 0;
const total = cfg.sockets * cfg.perSocket;
function send(s) {
  if (!running) { s.sentAt = 0; return; }
  s.sentAt = performance.now();
  sent++;
  s.sock.send(request(s.port, s.step === 2 ? 0 : cfg.lifetime), 5351, cfg.server);
}
function advance(s) {
  s.step++;
  if (s.step === 3) {
    slots.delete(s.port);
    s.step = 0;
    s.port = 20000 + ((s.port - 20000 + total) % 40000);
    slots.set(s.port, s);
  }
  send(s);
}
let pending = cfg.sockets;
for (let i = 0; i < cfg.sockets; i++) {
  const sock = dgram.createSocket('udp4');
  sock.on('message', (m) => {
    // RFC 6887 §7.2 response: R bit set, opcode MAP; result code in byte 3.
    if (m.length < 60 || m[1] !== 0x81) { stray++; return; }
    const s = slots.get(m.readUInt16BE(40));
    if (!s || s.sock !== sock || !s.sentAt) { stray++; return; }
    answered++;
    const k = STEPS[s.step] + ':' + m[3];
    counts[k] = (counts[k] || 0) + 1;
    advance(s);
  });
  sock.bind(0, cfg.client, () => { if (--pending === 0) out({ ready: true }); });
  socks.push(sock);
  for (let j = 0; j < cfg.perSocket; j++) {
    const port = 20000 + all.length;
    const s = { sock, port, step: 0, sentAt: 0 };
    all.push(s); slots.set(port, s);
  }
}
const sweep = setInterval(() => {
  const now = performance.now();
  for (const s of all) if (s.sentAt && now - s.sentAt > cfg.timeoutMs) { timeouts++; advance(s); }
}, 50);
require('node:readline').createInterface({ input: process.stdin }).on('line', async (l) => {
  if (l !== 'run') return;
  running = true;
  const t0 = performance.now();
  for (const s of all) send(s);
  await new Promise((r) => setTimeout(r, cfg.durationMs));
  running = false;
  const durationMs = performance.now() - t0;
  const answeredInWindow = answered;
  await new Promise((r) => setTimeout(r, 1000)); // late answers are counted, not sent on
  clearInterval(sweep);
  out({ durationMs, sent, answered, answeredInWindow, timeouts, stray, counts });
});
`;

const INIT_NFT = `table inet miniupnpd {
  chain miniupnpd {
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
    jump miniupnpd
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
  }
}
`;

/** --pcp-server-child LISTEN EXTERNAL: Gatehouse's PcpServer with an in-memory backend. */
async function pcpServerChild(listen: string, external: string): Promise<void> {
  const { PcpServer } = await import('../src/pcp/server.js');
  const counts = { installs: 0, updates: 0, removes: 0 };
  // Counts what the server asks of a backend; programs nothing (the figure is the server's).
  const firewall: FirewallBackend = {
    name: 'memory',
    available: true,
    install: async () => void counts.installs++,
    update: async () => void counts.updates++,
    remove: async () => void counts.removes++,
    close: async () => {},
  };
  const server = new PcpServer({
    listen: [listen],
    externalAddress: external,
    firewall,
    // The bench's one client sends far beyond the default per-client rate (50/s) and
    // holds up to `window` mappings: lifted so the figure is throughput, not a limiter.
    requestRatePerClient: 1_000_000,
    maxMappingsPerClient: 65536,
    maxInFlight: 4096,
  });
  await server.start();
  process.stdout.write(JSON.stringify({ ready: true }) + '\n');
  createInterface({ input: process.stdin }).on('line', (l) => {
    if (l === 'stats')
      process.stdout.write(
        JSON.stringify({ ...counts, mappings: server.mappings().length, dropped: server.stats.snapshot().dropped }) + '\n',
      );
  });
}

export interface PcpRateRow {
  server: string;
  backend: string;
  window: number;
  seconds: number;
  sent: number;
  answered: number;
  requestsPerS: number;
  cpuUsPerRequest: number | null;
  timeouts: number;
  results: string;
}

async function waitOutput(p: ChildProcess, what: RegExp, ms: number, out: string[]): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const tm = setTimeout(() => reject(new Error(`not started within ${ms} ms:\n${out.join('').slice(-2000)}`)), ms);
    const on = (b: Buffer): void => {
      out.push(b.toString());
      if (what.test(out.join(''))) {
        clearTimeout(tm);
        resolve();
      }
    };
    p.stdout!.on('data', on);
    p.stderr!.on('data', on);
    p.once('exit', (code) => {
      clearTimeout(tm);
      reject(new Error(`exited ${code}:\n${out.join('').slice(-2000)}`));
    });
  });
}

async function benchPcpRate(o: { quick: boolean }): Promise<{ rows: PcpRateRow[]; notes: string[] }> {
  const notes: string[] = [];
  const rows: PcpRateRow[] = [];
  const teardown: (() => unknown)[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-pcp-'));
  teardown.push(() => rmSync(dir, { recursive: true, force: true }));
  const sockets = 4;
  const perSocket = o.quick ? 8 : 16;
  const durationMs = o.quick ? 2000 : 5000;
  notes.push(
    `Load: one generator process (hand-built RFC 6887 MAP requests, UDP, protocol 17), ${sockets} sockets × ${perSocket} mappings = ${sockets * perSocket} requests in flight, each mapping cycling create (lifetime 600 s) -> refresh (same nonce) -> delete (lifetime 0) on its own internal port; the next request of a mapping goes when its answer arrives (or after 3 s: a timeout). ${durationMs / 1000} s per server, one after the other, the same generator; the servers in one namespace on the same address, the generator in another across a veth pair.`,
    'requests/s = answers received during the load ÷ its duration. Server CPU: user+system of the server process (/proc, bench/lib/cpu.ts) from the start of the load to 1 s after it ÷ answers. Result codes: every answer counted by step and RFC 6887 §7.4 result.',
    'Gatehouse: PcpServer (src/pcp/server.ts) in its own node process, its FirewallBackend only counts installs in memory (no kernel rules): this is the server (codec, validation, mapping table, nonce and lifetime rules), not nftables. Per-client rate limit lifted for the run (default 50 requests/s per client). miniupnpd: Debian miniupnpd-nftables, run with -d (foreground; its debug log to stderr, read and discarded; its syslog fallback to /dev/console bound to /dev/null in its own mount namespace, see the code), secure_mode, its real nftables backend adding and deleting DNAT and filter rules of `table inet miniupnpd` on every create and delete.',
  );
  try {
    const lab = new NetnsLab({ teardown: (f: () => unknown) => void teardown.push(f) }, 'ghpr');
    const cli = lab.ns('cli');
    const srv = lab.ns('srv');
    const CLIENT = '10.63.1.2';
    const SERVER = '10.63.1.1';
    const EXT = '11.0.0.1';
    lab.link(cli, 'eth0', `${CLIENT}/24`, srv, 'lan0', `${SERVER}/24`);
    // The external interface: a veth pair inside srv (miniupnpd refuses a private ext address).
    lab.link(srv, 'ext0', `${EXT}/24`, srv, 'ext1', null);

    const runLoad = async (server: string, backend: string, pid: number): Promise<void> => {
      const gen = rpc(
        lab.spawn(cli, process.execPath, [
          '-e',
          GENERATOR,
          JSON.stringify({ server: SERVER, client: CLIENT, sockets, perSocket, durationMs, lifetime: 600, timeoutMs: 3000 }),
        ]),
        'generator',
      );
      await gen.next();
      const c0 = sampleCpu(pid);
      const r = await gen.ask<{
        durationMs: number;
        sent: number;
        answered: number;
        answeredInWindow: number;
        timeouts: number;
        stray: number;
        counts: Record<string, number>;
      }>('run');
      const c1 = sampleCpu(pid);
      const cpu = cpuDelta(c0, c1);
      const results = Object.entries(r.counts)
        .sort()
        .map(([k, n]) => {
          const [step, code] = k.split(':');
          return `${step} ${resultName(Number(code))} ${n}`;
        })
        .join(', ');
      rows.push({
        server,
        backend,
        window: sockets * perSocket,
        seconds: r2(r.durationMs / 1000),
        sent: r.sent,
        answered: r.answered,
        requestsPerS: Math.round(r.answeredInWindow / (r.durationMs / 1000)),
        cpuUsPerRequest: r.answered ? r2(cpu.cpuNs / 1000 / r.answered) : null,
        timeouts: r.timeouts,
        results,
      });
      if (r.stray) notes.push(`${server}: ${r.stray} datagrams that answered no outstanding request (ANNOUNCE, late answers).`);
    };

    // Gatehouse
    try {
      const p = lab.spawn(srv, process.execPath, ['--import', 'tsx', THIS_FILE, '--pcp-server-child', `udp://${SERVER}:5351`, EXT]);
      const c = rpc(p, 'gatehouse pcp');
      await c.next();
      await runLoad('gatehouse', 'in-memory (counts installs; no kernel rules)', p.pid!);
      const st = await c.ask<{ installs: number; removes: number; updates: number; mappings: number; dropped: Record<string, number> }>(
        'stats',
      );
      notes.push(
        `gatehouse: backend calls install ${st.installs}, update ${st.updates}, remove ${st.removes}; ${st.mappings} mappings left at the end; unanswered by the server ${JSON.stringify(st.dropped)}.`,
      );
      p.kill('SIGKILL');
      await sleep(200);
    } catch (e) {
      notes.push(`gatehouse: failed: ${(e as Error).message}`);
    }

    // miniupnpd
    const MINIUPNPD = findProgram('miniupnpd');
    if (!MINIUPNPD || !findProgram('nft')) notes.push('miniupnpd: not run: miniupnpd (Debian miniupnpd-nftables) or nft is not installed');
    else {
      try {
        writeFileSync(join(dir, 'init.nft'), INIT_NFT);
        lab.sh(srv, 'nft', ['-f', join(dir, 'init.nft')]);
        // miniupnpd.conf(5): PCP/NAT-PMP on, UPnP off, our table and chains, lifetimes 120..86400 s.
        writeFileSync(
          join(dir, 'miniupnpd.conf'),
          [
            'ext_ifname=ext0',
            'listening_ip=lan0',
            'enable_natpmp=yes',
            'enable_upnp=no',
            'secure_mode=yes',
            'uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07c',
            'min_lifetime=120',
            'max_lifetime=86400',
            'upnp_table_name=miniupnpd',
            'upnp_nat_table_name=miniupnpd',
            'upnp_forward_chain=miniupnpd',
            'upnp_nat_chain=prerouting_miniupnpd',
            'upnp_nat_postrouting_chain=postrouting_miniupnpd',
            'allow 1024-65535 10.63.1.0/24 1024-65535',
            'deny 0-65535 0.0.0.0/0 0-65535',
            '',
          ].join('\n'),
        );
        // -d keeps it in the foreground (its pid is ours to stop) but logs at debug level: to
        // stderr (read and discarded) and through syslog(3), which without a syslogd here falls
        // back to /dev/console, a slow tty (~100 ms per request). In its own mount namespace
        // (unshare -m, private) /dev/console is bound to /dev/null; nothing else sees that.
        const p = lab.spawn(srv, 'unshare', [
          '-m',
          '--propagation',
          'private',
          'sh',
          '-c',
          'mount --bind /dev/null /dev/console && exec "$0" "$@"',
          MINIUPNPD,
          '-f',
          join(dir, 'miniupnpd.conf'),
          '-d',
          '-P',
          join(dir, 'miniupnpd.pid'),
        ]);
        await waitOutput(p, /Listening for NAT-PMP\/PCP traffic/, 10_000, []);
        await runLoad('miniupnpd', 'nftables (real rules in the namespace)', p.pid!);
        const left = (lab.sh(srv, 'nft', ['list', 'chain', 'inet', 'miniupnpd', 'prerouting_miniupnpd']).match(/dnat/g) ?? []).length;
        notes.push(`miniupnpd: ${left} DNAT rules left in prerouting_miniupnpd at the end (mappings in flight when the load stopped).`);
        p.kill('SIGTERM');
        await sleep(300);
      } catch (e) {
        notes.push(`miniupnpd: failed: ${(e as Error).message}`);
      }
    }
  } finally {
    for (const f of teardown.reverse()) await f();
  }
  return { rows, notes };
}

// ---------------------------------------------------------------------------------------
// 2. CPU per inspected packet: NFQUEUE path vs TURN path

/** The inspector both children use (same policy, same key handling). */
async function makeInspector(dir: string, onAlert: () => void) {
  const { GatewayInspector } = await import('../src/gateway/inspector.js');
  const { PolicyEngine } = await import('../src/policy/engine.js');
  const { parseRuleFile } = await import('../src/policy/rules-schema.js');
  const { loadOrCreateIdentity } = await import('../src/store/identity.js');
  const { systemClock } = await import('../src/util/clock.js');
  const engine = new PolicyEngine([parseRuleFile(RULES, 'bench-rules.yaml')]);
  const identity = (await loadOrCreateIdentity(dir, { cert: null, key: null }, 'bench.local')).identity;
  return new GatewayInspector({
    policy: () => engine,
    identity,
    clock: systemClock,
    events: { emit: (e) => void (e.event_type === 'alert' && onAlert()), close: () => {} },
  });
}

/** Counters every child reports: packets handled, CPU since reset. */
function childStats() {
  let n = 0;
  let cpu = process.cpuUsage();
  let alerts = 0;
  return {
    packet: () => void n++,
    alert: () => void alerts++,
    reset: () => ((n = 0), (cpu = process.cpuUsage())),
    stats: () => {
      const c = process.cpuUsage(cpu);
      return { n, cpuUs: c.user + c.system, alerts };
    },
  };
}

function serveCommands(
  s: ReturnType<typeof childStats>,
  extra: () => Record<string, unknown> = () => ({}),
  other: (l: string) => Record<string, unknown> | null = () => null,
): void {
  createInterface({ input: process.stdin }).on('line', (l) => {
    if (l === 'reset') s.reset();
    const o = l === 'stats' ? { ...s.stats(), ...extra() } : (other(l) ?? { ok: l });
    process.stdout.write(JSON.stringify(o) + '\n');
  });
}

/** First stdin line: the init JSON (key set, mapping). Read before the command loop starts. */
async function firstLine(): Promise<string> {
  return new Promise((resolve) => {
    let buf = '';
    const on = (b: Buffer): void => {
      buf += b.toString('latin1');
      const i = buf.indexOf('\n');
      if (i < 0) return;
      process.stdin.off('data', on);
      process.stdin.pause();
      const rest = buf.slice(i + 1);
      if (rest) process.stdin.unshift(Buffer.from(rest, 'latin1'));
      resolve(buf.slice(0, i));
    };
    process.stdin.on('data', on);
  });
}

/** --nfq-child DIR: NfQueueReader -> PcpPath -> GatewayInspector inside gw. */
async function nfqChild(dir: string): Promise<void> {
  const init = JSON.parse(await firstLine(), revive) as {
    keySet: KeySet;
    mapping: PcpMapping;
    /** A second mapping whose keys come late (command `latekeys`): the release through PcpPath. */
    late: { keySet: KeySet; mapping: PcpMapping; remote: string };
  };
  const { NfQueueReader } = await import('../src/pcp/firewall/nfqueue.js');
  const { PcpPath } = await import('../src/gateway/pcp-path.js');
  const { systemClock } = await import('../src/util/clock.js');
  const { silentLogger } = await import('../src/util/log.js');
  const s = childStats();
  const inspector = await makeInspector(dir, s.alert);
  const path = new PcpPath({
    hooks: inspector,
    clock: systemClock,
    logger: silentLogger,
    maxHeld: 4096,
    holdTimeoutMs: 30_000,
    maxFlowsPerMapping: 64,
    maxFlows: 1024,
    isBlocked: (u, ip) => inspector.isBlocked(u, ip),
    // The keys are the gateway's from the flow's start (no escrow round trip measured).
    onFlowCreated: (f) => void (f.mapping.id === init.mapping.id && inspector.applyKeySet(f, init.keySet)),
  });
  inspector.setRelay({
    send: (f, dir2, data) => path.send(f as never, dir2, data),
    close: (f, reason) => path.close(f as never, reason),
  });
  // As src/gateway/pcp-gateway.ts openQueue(): a verdict given during the handler is its return value.
  let current = -1;
  let now: 'accept' | 'drop' | null = null;
  /** Delayed verdicts: packet id -> when held (bounded by the path's maxHeld). */
  const heldAt = new Map<number, number>();
  const releases: { at: number; accept: boolean }[] = [];
  const reader = NfQueueReader.open({ queue: QUEUE, maxLen: 8192, maxHeld: 4097, batch: 64 }, (p) => {
    s.packet();
    current = p.id;
    now = null;
    path.onQueued({ id: p.id, packet: p.payload });
    current = -1;
    if (!now && heldAt.size < 4096) heldAt.set(p.id, performance.now());
    return now ?? 'hold';
  });
  const verdict = (id: number, v: 'accept' | 'drop') => {
    if (id === current) now = v;
    else {
      reader.verdict(id, v);
      if (heldAt.delete(id) && releases.length < 4096) releases.push({ at: performance.now(), accept: v === 'accept' });
    }
  };
  path.setVerdicts({ accept: (id) => verdict(id, 'accept'), drop: (id) => verdict(id, 'drop') });
  path.mappingCreated(init.mapping);
  path.mappingCreated(init.late.mapping);
  process.stdout.write(JSON.stringify({ ready: true }) + '\n');
  serveCommands(
    s,
    () => ({ path: path.stats, enobufs: reader.stats().enobufs }),
    (l) => {
      if (l !== 'latekeys') return null;
      const flow = path.findFlow(init.late.mapping.id, init.late.remote);
      if (!flow) return { error: 'no flow on the late mapping' };
      const held = heldAt.size;
      releases.length = 0;
      const t0 = performance.now();
      const status = inspector.applyKeySet(flow, init.late.keySet);
      const t1 = performance.now();
      const us = releases.filter((r) => r.accept).map((r) => (r.at - t0) * 1000);
      us.sort((a, b) => a - b);
      return {
        status,
        held,
        released: us.length,
        dropped: releases.length - us.length,
        applyUs: (t1 - t0) * 1000,
        firstUs: us[0] ?? null,
        p50Us: us[Math.floor(us.length / 2)] ?? null,
        lastUs: us[us.length - 1] ?? null,
      };
    },
  );
}

/** --turn-child DIR MODE: TurnServer (+ GatewayInspector when MODE is inspected) on loopback. */
async function turnChild(dir: string, mode: string): Promise<void> {
  const init = JSON.parse(await firstLine(), revive) as { keySet: KeySet };
  const { TurnServer } = await import('../src/turn/server.js');
  const { defaultConfig } = await import('../src/config/config.js');
  const { systemClock } = await import('../src/util/clock.js');
  const s = childStats();
  const port = await freeUdpPort();
  const [low, high] = await freeUdpRange(16, [port]);
  const cfg = defaultConfig();
  cfg.realm = 'bench.local';
  cfg.turn.listen = [`udp://${HOST}:${port}`];
  cfg.turn.relay_address = HOST;
  cfg.turn.relay_ports = [low, high];
  cfg.turn.peers.allow = ['127.0.0.0/8'];
  cfg.data_dir = dir;
  const base = {
    config: cfg,
    users: { lookup: (n: string) => (n === 'bench' ? { name: 'bench', password: 'bench', groups: [] } : undefined) },
    clock: systemClock,
  };
  let server: InstanceType<typeof TurnServer>;
  if (mode === 'inspected') {
    const inspector = await makeInspector(dir, s.alert);
    server = new TurnServer({
      ...base,
      // The inspector's own hooks, plus: keys at flow creation (as the NFQUEUE child), a packet count.
      flowHooks: {
        onFlowCreated: (f) => {
          inspector.onFlowCreated(f);
          inspector.applyKeySet(f, init.keySet);
        },
        onPacket: (f, d, data, pp) => {
          s.packet();
          return inspector.onPacket(f, d, data, pp);
        },
        onFlowClosed: (f, r) => inspector.onFlowClosed(f),
        permitPeer: (i, a) => inspector.permitPeer(i, a),
      },
      extensions: [inspector.extension],
    });
    inspector.attach(server);
  } else {
    server = new TurnServer({ ...base, flowHooks: { onPacket: () => (s.packet(), true) } });
  }
  await server.start();
  process.stdout.write(JSON.stringify({ ready: true, port }) + '\n');
  serveCommands(s);
}

/** The session's datagrams: [clientHello, serverHello, init, open, messages...], the last message with the marker. */
function buildSession(ss: SyntheticSession, size: number, count: number): { hello: Buffer[]; records: Buffer[] } {
  const sctp = new SctpBuilder();
  const records: Buffer[] = [ss.appData(true, sctp.init()), ss.appData(true, sctp.open(1, 'bench'))];
  const body = Buffer.alloc(Math.max(16, size - OVERHEAD), 0x61);
  for (let i = records.length; i < count; i++) {
    const b = i === count - 1 ? Buffer.from(body) : body;
    if (i === count - 1) Buffer.from(MARKER).copy(b, 0);
    records.push(ss.appData(true, sctp.message(1, b)));
  }
  return { hello: ss.hello.map((h) => h.data), records };
}

/** Length-prefixed datagrams in a file, for the senders in other namespaces. */
function writeFrames(file: string, frames: Buffer[]): void {
  const parts: Buffer[] = [];
  for (const f of frames) {
    const h = Buffer.alloc(2);
    h.writeUInt16BE(f.length);
    parts.push(h, f);
  }
  writeFileSync(file, Buffer.concat(parts));
}

/** Paced sender in lan: `hello` sends frame 0; `send RATE` sends frames 1.. at RATE/s. */
const PACED_SENDER = String.raw`
const fs = require('node:fs');
const cfg = JSON.parse(process.argv[1]);
const raw = fs.readFileSync(cfg.file);
const frames = [];
for (let o = 0; o < raw.length; ) { const n = raw.readUInt16BE(o); frames.push(raw.subarray(o + 2, o + 2 + n)); o += 2 + n; }
const s = require('node:dgram').createSocket('udp4');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
let got = 0;
s.on('message', () => got++);
s.bind(cfg.port, cfg.bind, () => out({ ready: true }));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
require('node:readline').createInterface({ input: process.stdin }).on('line', async (l) => {
  const [cmd, a, b, c] = l.split(' ');
  if (cmd === 'hello') { s.send(frames[0], cfg.dport, cfg.dest); await sleep(300); out({ got }); }
  else if (cmd === 'send') {
    const rate = Number(a), from = Number(b ?? 1), to = Math.min(frames.length, Number(c ?? frames.length)), t0 = performance.now();
    let i = from;
    while (i < to) {
      const due = Math.min(to, from + Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
      while (i < due) s.send(frames[i++], cfg.dport, cfg.dest);
      await sleep(1);
    }
    out({ sent: to - from, ms: performance.now() - t0 });
  }
});`;

/** Sink in wan: answers the first datagram with the server hello (frame 0 of its file), counts the rest. */
const SINK = String.raw`
const fs = require('node:fs');
const cfg = JSON.parse(process.argv[1]);
const hello = fs.readFileSync(cfg.file);
const s = require('node:dgram').createSocket('udp4');
let n = 0;
s.on('message', (m, r) => { if (n++ === 0) s.send(hello, r.port, r.address); });
s.bind(cfg.port, cfg.bind, () => process.stdout.write('{"ready":true}\n'));
require('node:readline').createInterface({ input: process.stdin }).on('line', () => process.stdout.write(JSON.stringify({ n }) + '\n'));`;

export interface CpuRow {
  path: string;
  what: string;
  size: number;
  sent: number;
  handled: number;
  delivered: number;
  cpuUsPerPacket: number | null;
  judged: string;
}

export interface LateKeys {
  error?: string;
  status?: string;
  /** delayed verdicts outstanding when the keys were applied */
  held?: number;
  released?: number;
  dropped?: number;
  /** applyKeySet() call, µs (decrypting the backlog and releasing) */
  applyUs?: number;
  /** keys applied -> first / median / last accept verdict, µs */
  firstUs?: number | null;
  p50Us?: number | null;
  lastUs?: number | null;
  records: number;
  helloAnswered: boolean;
  deliveredBeforeKeys: number;
  deliveredAfterKeys: number;
}

type Stats = { n: number; cpuUs: number; alerts: number; path?: { accepted: number; dropped: number; held: number; released: number } };

async function benchCpuNfq(o: {
  packets: number;
  warmup: number;
  size: number;
  rate: number;
  keySet: KeySet;
  session: ReturnType<typeof buildSession>;
  lateRecords: number;
  lateOut: LateKeys[];
}): Promise<CpuRow> {
  const teardown: (() => unknown)[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-pcp-nfq-'));
  teardown.push(() => rmSync(dir, { recursive: true, force: true }));
  try {
    const { NftablesBackend } = await import('../src/pcp/firewall/nftables.js');
    const { lab, lan, gw, wan } = threeNamespaces({ teardown: (f) => teardown.push(f) }, 'ghpc');
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
    // The late-keys mapping: its own internal port, session and sink.
    const m2: PcpMapping = {
      ...m,
      id: 'bench-2',
      internal: { address: A.lanHost, port: 5001 },
      external: { address: A.gwWan, port: 40001 },
    };
    await fw.install(m2);
    const ss2 = syntheticSession();
    const late = buildSession(ss2, o.size, o.lateRecords);
    writeFrames(join(dir, 'lan2.frames'), [late.hello[0]!, ...late.records]);
    writeFileSync(join(dir, 'server-hello2'), late.hello[1]!);
    writeFrames(join(dir, 'lan.frames'), [o.session.hello[0]!, ...o.session.records]);
    writeFileSync(join(dir, 'server-hello'), o.session.hello[1]!);
    const gwP = lab.spawn(gw, process.execPath, ['--import', 'tsx', THIS_FILE, '--nfq-child', dir]);
    const child = rpc(gwP, 'nfqueue child');
    gwP.stdin!.write(JSON.stringify({ keySet: o.keySet, mapping: m, late: { keySet: ss2.keySet, mapping: m2, remote: A.wanPeer } }) + '\n');
    const sink = rpc(
      lab.spawn(wan, process.execPath, ['-e', SINK, JSON.stringify({ file: join(dir, 'server-hello'), port: 9000, bind: A.wanPeer })]),
      'sink',
    );
    const sender = rpc(
      lab.spawn(lan, process.execPath, [
        '-e',
        PACED_SENDER,
        JSON.stringify({ file: join(dir, 'lan.frames'), port: 5000, bind: A.lanHost, dest: A.wanPeer, dport: 9000 }),
      ]),
      'sender',
    );
    for (const c of [child, sink, sender]) await c.next();
    const hello = await sender.ask<{ got: number }>('hello');
    if (!hello.got) throw new Error('the server hello did not come back through the mapping');
    // Warm-up (unmeasured): the first `warmup` records; then the measured ones.
    await sender.ask(`send ${o.rate} 1 ${1 + o.warmup}`, 600_000);
    await sleep(300);
    const sunk = (await sink.ask<{ n: number }>('count')).n;
    await child.ask('reset');
    await sender.ask(`send ${o.rate} ${1 + o.warmup}`, 600_000);
    await sleep(500);
    const st = await child.ask<Stats>('stats');
    const delivered = (await sink.ask<{ n: number }>('count')).n - sunk;

    // Release through PcpPath when keys arrive: the second session's records are held
    // (keys required, unverified: hold) until its keys are applied.
    const sink2 = rpc(
      lab.spawn(wan, process.execPath, ['-e', SINK, JSON.stringify({ file: join(dir, 'server-hello2'), port: 9001, bind: A.wanPeer })]),
      'sink2',
    );
    const sender2 = rpc(
      lab.spawn(lan, process.execPath, [
        '-e',
        PACED_SENDER,
        JSON.stringify({ file: join(dir, 'lan2.frames'), port: 5001, bind: A.lanHost, dest: A.wanPeer, dport: 9001 }),
      ]),
      'sender2',
    );
    for (const c of [sink2, sender2]) await c.next();
    const hello2 = await sender2.ask<{ got: number }>('hello');
    await sender2.ask('send 1000', 60_000);
    await sleep(200);
    const before = (await sink2.ask<{ n: number }>('count')).n;
    const rel = await child.ask<LateKeys>('latekeys');
    await sleep(300);
    const after = (await sink2.ask<{ n: number }>('count')).n;
    o.lateOut.push({
      ...rel,
      records: o.lateRecords,
      helloAnswered: hello2.got > 0,
      deliveredBeforeKeys: before - 1,
      deliveredAfterKeys: after - before,
    });

    return {
      path: 'NFQUEUE (PcpPath)',
      what: 'NfQueueReader -> PcpPath -> GatewayInspector, kernel forwards',
      size: o.size,
      sent: o.packets,
      handled: st.n,
      delivered,
      cpuUsPerPacket: st.n ? r2(st.cpuUs / st.n) : null,
      judged: st.alerts ? 'yes (marker alert)' : 'no',
    };
  } finally {
    for (const f of teardown.reverse()) await f();
  }
}

async function benchCpuTurn(
  mode: 'inspected' | 'plain',
  o: { packets: number; warmup: number; size: number; rate: number; keySet: KeySet; session: ReturnType<typeof buildSession> },
): Promise<CpuRow> {
  const { buildChannelData } = await import('../src/wire/channeldata.js');
  const { Attr, Class, Method, getXorAddress } = await import('../src/wire/stun.js');
  const { bindAttrs } = await import('../test/unit/gateway/escrow-helpers.js');
  const dir = mkdtempSync(join(tmpdir(), `gh-bench-pcp-turn-${mode}-`));
  const { spawn } = await import('node:child_process');
  const p = spawn(process.execPath, ['--import', 'tsx', THIS_FILE, '--turn-child', dir, mode], { stdio: ['pipe', 'pipe', 'pipe'] });
  const peer = createSocket('udp4');
  let c: Client | null = null;
  try {
    const child = rpc(p, `turn child (${mode})`);
    p.stdin!.write(JSON.stringify({ keySet: o.keySet }) + '\n');
    const { port } = await child.next<{ port: number }>();
    let delivered = 0;
    let relayPort = 0;
    peer.on('message', (_m, r) => {
      // The first datagram (client hello) is answered with the server hello, through the relay.
      if (delivered++ === 0) peer.send(o.session.hello[1]!, r.port, r.address);
      relayPort = r.port;
    });
    await new Promise<void>((r) => peer.bind(0, HOST, () => r()));
    const peerPort = peer.address().port;
    c = await Client.udp(port);
    c.username = 'bench';
    c.password = 'bench';
    c.realm = 'bench.local';
    const a = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
    if (a.cls !== Class.Success) throw new Error(`Allocate failed: ${errCode(a)}`);
    if (!getXorAddress(a, Attr.XorRelayedAddress)) throw new Error('Allocate: no XOR-RELAYED-ADDRESS');
    const b = await c.authed(Method.ChannelBind, bindAttrs(CH, peerPort));
    if (b.cls !== Class.Success) throw new Error(`ChannelBind failed: ${errCode(b)}`);
    const frames = o.session.records.map((r) => buildChannelData(CH, r));
    c.sendRaw(buildChannelData(CH, o.session.hello[0]!));
    await sleep(300);
    if (!relayPort) throw new Error('the client hello did not reach the peer');
    const paced = async (from: number, to: number): Promise<void> => {
      const t0 = performance.now();
      let i = from;
      while (i < to) {
        const due = Math.min(to, from + Math.floor(((performance.now() - t0) / 1000) * o.rate) + 1);
        while (i < due) c!.sendRaw(frames[i++]!);
        await sleep(1);
      }
    };
    await paced(0, o.warmup); // warm-up, unmeasured
    await sleep(300);
    const sunk = delivered;
    await child.ask('reset');
    await paced(o.warmup, frames.length);
    await sleep(500);
    const st = await child.ask<Stats>('stats');
    return {
      path: mode === 'inspected' ? 'TURN' : 'TURN, no inspector',
      what: mode === 'inspected' ? 'TurnServer + GatewayInspector, ChannelData -> peer' : 'TurnServer, flow hook counts only',
      size: o.size,
      sent: o.packets,
      handled: st.n,
      delivered: delivered - sunk,
      cpuUsPerPacket: st.n ? r2(st.cpuUs / st.n) : null,
      judged: mode === 'inspected' ? (st.alerts ? 'yes (marker alert)' : 'no') : 'n/a',
    };
  } finally {
    c?.close();
    peer.close();
    p.kill('SIGKILL');
    await sleep(100);
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------
// Entry

export interface PcpBenchResult {
  rate: { rows: PcpRateRow[]; notes: string[] };
  cpu: { rows: CpuRow[]; notes: string[] };
  held: NfqueueBenchResult | { error: string };
  /** Held packets released through PcpPath when their keys arrive (run with the NFQUEUE CPU part). */
  release: LateKeys | null;
  table: string;
}

export async function runPcpBench(opts: { quick?: boolean; only?: string[] } = {}): Promise<PcpBenchResult> {
  const quick = !!opts.quick;
  const load0 = loadavg().map((x) => x.toFixed(2));
  const want = (k: string) => !opts.only || opts.only.includes(k);
  const missing = ['ip', 'nft', 'iptables'].filter((p) => !findProgram(p));
  const root = process.getuid?.() === 0;
  const env = !root ? 'needs root' : missing.length ? `missing: ${missing.join(', ')}` : null;

  const rate = want('rate') ? (env ? { rows: [], notes: [`not run: ${env}`] } : await benchPcpRate({ quick })) : { rows: [], notes: [] };

  const cpu: { rows: CpuRow[]; notes: string[] } = { rows: [], notes: [] };
  const lateOut: LateKeys[] = [];
  if (want('cpu')) {
    const packets = quick ? 3000 : 20000;
    const size = 200;
    const pktRate = 5000;
    const ss = syntheticSession();
    const warmup = quick ? 1000 : 5000;
    const session = buildSession(ss, size, warmup + packets);
    const o = { packets, warmup, size, rate: pktRate, keySet: ss.keySet, session };
    cpu.notes.push(
      `Load: one synthetic DTLS 1.2 AES-128-GCM session (client and server hello in the clear, then ${warmup} unmeasured and ${packets} measured application-data records of ${size} B UDP payload: SCTP DATA of one data channel), client -> peer at ${pktRate} packets/s; keys given to the inspector at flow creation. Policy: keys required, one \`contains\` rule on the last message.`,
      "µs/packet: the gateway child's user+system CPU (process.cpuUsage) from just before the load to 500 ms after it ÷ packets handled. The NFQUEUE figure leaves out the kernel's forwarding and queueing (softirq, not the child's); the TURN figure includes the relay's own recvmsg/sendmsg syscalls.",
    );
    if (env) cpu.notes.push(`NFQUEUE path not run: ${env}`);
    else
      try {
        cpu.rows.push(await benchCpuNfq({ ...o, lateRecords: 50, lateOut }));
      } catch (e) {
        cpu.notes.push(`NFQUEUE path failed: ${(e as Error).message}`);
      }
    for (const mode of ['inspected', 'plain'] as const)
      try {
        cpu.rows.push(await benchCpuTurn(mode, o));
      } catch (e) {
        cpu.notes.push(`TURN path (${mode}) failed: ${(e as Error).message}`);
      }
  }

  let held: NfqueueBenchResult | { error: string } = { error: 'not run' };
  if (want('held')) {
    if (env) held = { error: env };
    else
      try {
        held = await runNfqueueBench(quick ? { packets: 20000, pings: 100 } : {});
      } catch (e) {
        held = { error: (e as Error).message };
      }
  }
  const release = lateOut[0] ?? null;
  const load = loadavg().map((x) => x.toFixed(2));
  cpu.notes.push(
    `1-minute load average at the start of the PCP benchmarks ${load0[0]}, at the end ${load[0]} (${cpus().length} cores): other processes' load on a shared machine inflates CPU per packet of every row alike; compare rows of the same run.`,
  );
  return { rate, cpu, held, release, table: render(rate, cpu, held, release) };
}

function render(rate: PcpBenchResult['rate'], cpu: PcpBenchResult['cpu'], held: PcpBenchResult['held'], release: LateKeys | null): string {
  const out: string[] = [];
  out.push('### PCP requests per second (MAP create / refresh / delete cycles)\n');
  if (rate.rows.length)
    out.push(
      markdownTable(
        ['server', 'backend', 'in flight', 's', 'sent', 'answered', 'requests/s', 'server CPU µs/request', 'timeouts', 'result codes'],
        rate.rows.map((r) => [
          r.server,
          r.backend,
          r.window,
          fmt(r.seconds, 1),
          r.sent,
          r.answered,
          r.requestsPerS,
          fmt(r.cpuUsPerRequest),
          r.timeouts,
          r.results,
        ]),
        ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l'],
      ),
    );
  out.push('');
  for (const n of rate.notes) out.push(`- ${n}`);
  out.push('\n### CPU per inspected packet: NFQUEUE path next to the TURN path (same run)\n');
  if (cpu.rows.length)
    out.push(
      markdownTable(
        ['path', 'what runs in the gateway process', 'payload B', 'sent', 'handled', 'delivered', 'CPU µs/packet', 'judged'],
        cpu.rows.map((r) => [r.path, r.what, r.size, r.sent, r.handled, r.delivered, fmt(r.cpuUsPerPacket), r.judged]),
        ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'l'],
      ),
    );
  out.push('');
  for (const n of cpu.notes) out.push(`- ${n}`);
  out.push('\n### NFQUEUE reader, accept only, and the added latency of a held packet (bench/nfqueue.ts)\n');
  if ('error' in held) out.push(`not run: ${held.error}`);
  else {
    out.push(
      markdownTable(
        ['measure', 'value'],
        [
          [`packets/s verdicted (accept, ${held.size} B, ${held.verdicted}/${held.sent} verdicted, ${held.delivered} delivered)`, held.pps],
          ['reader CPU µs/packet (accept only, no inspection)', fmt(held.cpuUsPerPacket)],
          ['RTT p50 / p99, accepted at once (µs)', `${fmt(held.rttAcceptUs.p50)} / ${fmt(held.rttAcceptUs.p99)}`],
          ['RTT p50 / p99, verdict by id on the next event-loop turn (µs)', `${fmt(held.rttDeferUs.p50)} / ${fmt(held.rttDeferUs.p99)}`],
          ['RTT p50 / p99, held 0 ms (µs)', `${fmt(held.rttHold0Us.p50)} / ${fmt(held.rttHold0Us.p99)}`],
          ['RTT p50 / p99, held 10 ms (µs)', `${fmt(held.rttHold10Us.p50)} / ${fmt(held.rttHold10Us.p99)}`],
          ['added latency of a delayed verdict (next event-loop turn, µs, p50)', fmt(held.addedDeferLatencyUs)],
          ['added latency of a 0 ms timer hold (Node: >= 1 ms, µs, p50)', fmt(held.addedHoldLatencyUs)],
          ['added latency of a 10 ms hold, beyond 10 ms (µs, p50; timer precision)', fmt(held.addedHold10LatencyUs)],
        ],
        ['l', 'r'],
      ),
    );
    out.push(
      '\n- Round trips lan -> wan -> lan, both directions queued; added latency = (RTT held − RTT accepted) / 2 per direction, minus the hold. Throughput: a sender blasting in windows of 64.',
    );
  }
  out.push('\n### Held packets released through PcpPath when the keys arrive\n');
  if (!release) out.push('not run (it runs with the NFQUEUE CPU part)');
  else if (release.error) out.push(`failed: ${release.error}`);
  else {
    out.push(
      markdownTable(
        ['measure', 'value'],
        [
          ['records sent before the keys (1000/s), then the keys applied', release.records],
          ['delayed verdicts outstanding at the keys / accepted / dropped', `${release.held} / ${release.released} / ${release.dropped}`],
          ['delivered to the peer before the keys / after', `${release.deliveredBeforeKeys} / ${release.deliveredAfterKeys}`],
          ['applyKeySet(): decrypt the backlog, judge, release (µs)', fmt(release.applyUs ?? null)],
          [
            'keys applied -> first / median / last accept verdict (µs)',
            `${fmt(release.firstUs ?? null)} / ${fmt(release.p50Us ?? null)} / ${fmt(release.lastUs ?? null)}`,
          ],
          ['key status', release.status ?? ''],
        ],
        ['l', 'r'],
      ),
    );
    out.push(
      `\n- Same namespaces and gateway child as the NFQUEUE CPU row, a second MAP mapping and a second synthetic session whose keys the child applies (GatewayInspector.applyKeySet) only on command, after all its records were queued. Times in the gateway process (performance.now()); the kernel's re-injection after the verdict is not in them.${release.helloAnswered ? '' : ' The server hello of this session did not come back (its client hello was held too).'}`,
    );
  }
  return out.join('\n');
}

if (process.argv[1] === THIS_FILE) {
  const argv = process.argv.slice(2);
  if (argv[0] === '--pcp-server-child') await pcpServerChild(argv[1]!, argv[2]!);
  else if (argv[0] === '--nfq-child') await nfqChild(argv[1]!);
  else if (argv[0] === '--turn-child') await turnChild(argv[1]!, argv[2]!);
  else {
    const i = argv.indexOf('--only');
    const r = await runPcpBench({ quick: argv.includes('--quick'), ...(i >= 0 ? { only: argv[i + 1]!.split(',') } : {}) });
    process.stdout.write(`${r.table}\n`);
    process.exit(0);
  }
}
