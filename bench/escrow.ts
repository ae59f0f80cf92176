/**
 * Key escrow benchmarks (key-escrow.md §2, §5), reported, never asserted:
 *
 *  1. Handshake → keys verified: live `openssl s_client`/`s_server` DTLS 1.2 sessions relayed
 *     through an in-process TurnServer + GatewayInspector (keys required, unverified: hold).
 *     The bench's scripted TURN client plays the endpoint agent: when it relays s_client's
 *     first datagram with an epoch-1 record (the CCS/Finished flight) it reads s_client's
 *     key log, derives the key set and sends WRITE-KEYS at once. Measured: gateway sees that
 *     datagram → keys_verified event (same process, performance.now()), and the agent's
 *     WRITE-KEYS → KEY-STATUS round trip; p50/p99 over N sessions, beside the loopback RTT.
 *  2. Added delay of held packets: a synthetic DTLS 1.2 AES-128-GCM session (plaintext
 *     hellos, records made with DtlsRecordEncryptor; test/unit/inspect/pipeline-helpers.ts)
 *     through the same in-process gateway. The client starts sending application data right
 *     after the hellos (one record per ms) and the agent sends WRITE-KEYS together with the
 *     first record. Per record: client send → arrival at the peer; records sent before
 *     keys_verified were held; added delay = their latency − median latency of covered ones.
 *  3. CPU per relayed packet: ChannelData carrying genuine DTLS 1.2 application-data records
 *     (SCTP DATA of a data channel, so decryption, SCTP, DCEP and policy all run) from the
 *     bench's client to a UDP peer, through separate server processes one after the other:
 *     Gatehouse inspected (`bin/gatehouse.js serve`, keys escrowed by WRITE-KEYS), the same
 *     TurnServer + GatewayInspector in a bare child process, the TurnServer without flow
 *     hooks (plain relay), and coturn (--relay-threads 1). Server CPU from
 *     /proc/PID/task/*\/schedstat (bench/lib/cpu.ts) over the measured phase ÷ packets the
 *     peer received.
 *
 *   npx tsx bench/escrow.ts [--quick]          standalone
 *   npm run bench -- --only escrow             through bench/run.ts
 *   ESCROW_BENCH_PROF=DIR npx tsx bench/escrow.ts --quick
 *                                              Gatehouse servers write V8 CPU profiles to DIR
 *
 * Loopback only; every process started is ended (bench/lib/procs.ts, onCleanup).
 */
import { startCoturnRelay } from './turn-relay.js';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { makeCert } from '../scripts/fixtures/openssl-dtls.js';
import { createSocket, type Socket } from 'node:dgram';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { cpuDelta, sampleCpu, type CpuSample } from './lib/cpu.js';
import { HOST, freeTcpPort, freeUdpPort, freeUdpRange } from './lib/ports.js';
import { onCleanup, start, stop, stopAll, type Proc } from './lib/procs.js';
import { waitForStun } from './lib/stun-probe.js';
import { fmt, markdownTable } from './lib/table.js';
import { defaultConfig } from '../src/config/config.js';
import { systemClock } from '../src/util/clock.js';
import { MemoryEventSink, type EventSink, type EveEvent } from '../src/events/eve.js';
import { loadOrCreateIdentity, type GatewayIdentity } from '../src/store/identity.js';
import { PolicyEngine } from '../src/policy/engine.js';
import { useNativeScan } from '../src/policy/matcher.js';
import { loadNative } from '../src/wire/native.js';
import { parseRuleFile } from '../src/policy/rules-schema.js';
import { GatewayInspector } from '../src/gateway/inspector.js';
import { TurnServer, type TurnServerOptions } from '../src/turn/server.js';
import { DtlsSession } from '../src/inspect/dtls-session.js';
import type { DtlsHandshakeEvent } from '../src/inspect/events.js';
import { KeyLog, keySetFromKeyLog } from '../src/inspect/keylog.js';
import type { KeySet } from '../src/wire/keyset.js';
import { Attr, Class, Method, getAttrs, getXorAddress, type StunWriter } from '../src/wire/stun.js';
import { ATTR_KEY_STATUS, decodeKeyStatus } from '../src/wire/escrow.js';
import { buildChannelData, parseChannelData } from '../src/wire/channeldata.js';
import { Client, errCode } from '../test/unit/turn/helpers.js';
import { bindAttrs, both, writeKeys } from '../test/unit/gateway/escrow-helpers.js';
import { SctpBuilder, syntheticSession, type SyntheticSession } from '../test/unit/inspect/pipeline-helpers.js';

const THIS_FILE = fileURLToPath(import.meta.url);
const ROOT = resolve(THIS_FILE, '..', '..');
const GATEHOUSE_BIN = join(ROOT, 'bin', 'gatehouse.js');
const USER = 'bench';
const PASSWORD = 'bench';
const REALM = 'bench.local';
const CH = 0x4001; // RFC 8656 §12: channel numbers 0x4000-0x4FFF
const MARKER = 'BENCH-MARKER-7f3a';
/** ESCROW_BENCH_PROF=DIR: Gatehouse server processes run with --cpu-prof into DIR (skews their CPU figures). */
const PROF_DIR = process.env.ESCROW_BENCH_PROF ? resolve(process.env.ESCROW_BENCH_PROF) : null;
const profArgs = (): string[] => (PROF_DIR ? ['--cpu-prof', `--cpu-prof-dir=${PROF_DIR}`] : []);
/** UDP payload overhead of one app-data datagram: DTLS header 13 + GCM nonce 8 + tag 16 + SCTP 12 + DATA chunk 16. */
const OVERHEAD = 13 + 8 + 16 + 12 + 16;

/** key-escrow.md §4 rules: keys required, application data held until keys verify. */
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
// Options and results

export interface EscrowBenchOptions {
  quick?: boolean;
  /** openssl sessions for (1). */
  sessions?: number;
  /** synthetic sessions for (2). */
  heldSessions?: number;
  /** records per synthetic session sent before and after keys (2). */
  heldRecords?: number;
  /** WRITE-KEYS delays after the first application-data record, ms (2). */
  keysDelays?: number[];
  /** measured packets per server (3). */
  packets?: number;
  /** warm-up packets per server, not measured (3). */
  warmup?: number;
  /** packets per second (3). */
  rate?: number;
  /** UDP payload sizes at the peer, bytes (3). */
  sizes?: number[];
  servers?: CpuServer[];
}

export type CpuServer = 'gatehouse-serve' | 'inspected' | 'plain' | 'coturn';

export interface Dist {
  n: number;
  p50: number | null;
  p99: number | null;
  max: number | null;
}

export interface HandshakeResult {
  method: string;
  sessions: number;
  completed: number;
  /** gateway receives the first epoch-1 datagram → keys_verified event, ms */
  gatewayMs: Dist;
  /** agent sends WRITE-KEYS → KEY-STATUS received, ms */
  writeKeysRttMs: Dist;
  /** first epoch-1 datagram → KEY-STATUS at the agent, ms */
  agentTotalMs: Dist;
  /** STUN Binding round trip on the same socket (loopback RTT), ms */
  rttMs: Dist;
  keyStatusVerified: number;
  errors: string[];
}

export interface HeldResult {
  method: string;
  /** the agent sends WRITE-KEYS this long after the first application-data record */
  keysDelayMs: number;
  sessions: number;
  /** synthetic DTLS datagrams: first epoch-1 record → keys_verified, ms */
  gatewayMs: Dist;
  held: number;
  covered: number;
  /** client send → peer arrival of held records, ms */
  heldLatencyMs: Dist;
  /** the same for covered records (baseline relay latency) */
  coveredLatencyMs: Dist;
  /** held latency − median covered latency, ms */
  addedDelayMs: Dist;
  /** keys_verified → arrival at the peer of held records (release: decrypt, judge, forward), ms */
  releaseMs: Dist;
  errors: string[];
}

export interface CpuRow {
  server: CpuServer;
  size: number;
  sent: number;
  relayed: number;
  lossPct: number | null;
  cpuMs: number | null;
  usPerPacket: number | null;
  cpuSource: string | null;
  /** inspected servers: the policy alert on the last record was seen (decrypted and judged) */
  judged: boolean | null;
  error: string | null;
}

export interface EscrowBenchResult {
  handshake: HandshakeResult | { error: string };
  held: Array<HeldResult | { keysDelayMs: number; error: string }>;
  cpu: CpuRow[];
  ratios: Array<{ size: number; server: CpuServer; overCoturn: number | null; overPlain: number | null }>;
  load: { packets: number; warmup: number; rate: number; sizes: number[] };
  loadavg: number[];
  notes: string[];
  table: string;
}

function defaults(quick: boolean): Required<Omit<EscrowBenchOptions, 'quick'>> {
  return quick
    ? {
        sessions: 5,
        heldSessions: 8,
        heldRecords: 10,
        keysDelays: [0, 20],
        packets: 3000,
        warmup: 300,
        rate: 3000,
        sizes: [170],
        servers: ['gatehouse-serve', 'inspected', 'plain', 'coturn'],
      }
    : {
        sessions: 20,
        heldSessions: 30,
        heldRecords: 30,
        keysDelays: [0, 20],
        packets: 20000,
        warmup: 1000,
        rate: 5000,
        sizes: [170, 1100],
        servers: ['gatehouse-serve', 'inspected', 'plain', 'coturn'],
      };
}

// ---------------------------------------------------------------------------------------
// Small helpers

function dist(xs: number[]): Dist {
  if (!xs.length) return { n: 0, p50: null, p99: null, max: null };
  const s = [...xs].sort((a, b) => a - b);
  // Nearest-rank percentiles.
  const q = (p: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
  return { n: s.length, p50: q(0.5), p99: q(0.99), max: s[s.length - 1]! };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = performance.now() + ms;
  while (!pred()) {
    if (performance.now() > end) throw new Error(`timeout waiting for ${what}`);
    await sleep(2);
  }
}

const bindUdp = (s: Socket, port = 0): Promise<void> => new Promise((r) => s.bind(port, HOST, () => r()));
const isCd = (b: Buffer): boolean => b.length >= 4 && b[0]! >= 0x40 && b[0]! <= 0x7f;

/** Whether a DTLS datagram carries a record of epoch ≥ 1 (RFC 6347 §4.1: epoch at offset 3). */
function hasEpoch1(d: Buffer): boolean {
  let off = 0;
  while (off + 13 <= d.length) {
    if (d[off]! < 20 || d[off]! > 63) return false;
    if (d.readUInt16BE(off + 3) >= 1) return true;
    off += 13 + d.readUInt16BE(off + 11);
  }
  return false;
}

async function turnClient(port: number, user = USER, password = PASSWORD, realm = REALM): Promise<{ c: Client; relayPort: number }> {
  const c = await Client.udp(port);
  c.username = user;
  c.password = password;
  c.realm = realm;
  const r = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  if (r.cls !== Class.Success) throw new Error(`Allocate failed: ${errCode(r)}`);
  const relay = getXorAddress(r, Attr.XorRelayedAddress);
  if (!relay) throw new Error('Allocate: no XOR-RELAYED-ADDRESS');
  return { c, relayPort: relay.port };
}

async function releaseAllocation(c: Client): Promise<void> {
  // RFC 8656 §7: Refresh with LIFETIME 0 deletes the allocation.
  await c.authed(Method.Refresh, (w) => void w.attr(Attr.Lifetime, Buffer.alloc(4))).catch(() => null);
  c.close();
}

/** ChannelBind (refresh) carrying WRITE-KEYS; resolves the KEY-STATUS values. */
async function sendWriteKeys(c: Client, peerPort: number, sets: KeySet[]): Promise<number[]> {
  const tid = randomBytes(12);
  const r = await c.authed(Method.ChannelBind, both(bindAttrs(CH, peerPort), writeKeys(c, tid, sets)), { tid });
  if (r.cls !== Class.Success) throw new Error(`ChannelBind with WRITE-KEYS failed: ${errCode(r)}`);
  return getAttrs(r, ATTR_KEY_STATUS).map((v) => decodeKeyStatus(v) ?? -1);
}

async function bindChannel(c: Client, peerPort: number): Promise<void> {
  const r = await c.authed(Method.ChannelBind, bindAttrs(CH, peerPort));
  if (r.cls !== Class.Success) throw new Error(`ChannelBind failed: ${errCode(r)}`);
}

// ---------------------------------------------------------------------------------------
// In-process gateway for (1) and (2)

interface Rig {
  server: TurnServer;
  port: number;
  /** association → performance.now() of its keys_verified event */
  verifiedAt: Map<string, number>;
  close(): Promise<void>;
}

class StampingSink implements EventSink {
  readonly verifiedAt = new Map<string, number>();
  readonly mem = new MemoryEventSink(2000);
  emit(e: EveEvent): void {
    if (e.event_type === 'keys_verified') {
      const a = (e.gatehouse as Record<string, unknown> | undefined)?.association;
      if (typeof a === 'string' && !this.verifiedAt.has(a)) this.verifiedAt.set(a, performance.now());
    }
    this.mem.emit(e);
  }
  close(): void {}
}

function benchConfig(port: number, low: number, high: number, dataDir: string) {
  const c = defaultConfig();
  c.realm = REALM;
  c.turn.listen = [`udp://${HOST}:${port}`];
  c.turn.relay_address = HOST;
  c.turn.relay_ports = [low, high];
  c.turn.peers.allow = ['127.0.0.0/8'];
  c.turn.max_allocations_per_user = 1000;
  c.data_dir = dataDir;
  return c;
}

async function identityIn(dir: string): Promise<GatewayIdentity> {
  return (await loadOrCreateIdentity(dir, { cert: null, key: null }, REALM)).identity;
}

/** TurnServer (+ GatewayInspector when `inspect`) on 127.0.0.1, system clock. */
async function startTurn(dir: string, inspect: boolean, events: EventSink): Promise<TurnServer> {
  useNativeScan(loadNative()?.dfaScan); // as `gatehouse serve` does (src/cli/main.ts)
  const port = await freeUdpPort();
  const [low, high] = await freeUdpRange(128, [port]);
  const cfg = benchConfig(port, low, high, dir);
  const base: TurnServerOptions = {
    config: cfg,
    users: { lookup: (n) => (n === USER ? { name: USER, password: PASSWORD, groups: [] } : undefined) },
    clock: systemClock,
    events,
  };
  if (!inspect) {
    const s = new TurnServer(base);
    await s.start();
    return s;
  }
  const engine = new PolicyEngine([parseRuleFile(RULES, 'bench-rules.yaml')]);
  const inspector = new GatewayInspector({ policy: () => engine, identity: await identityIn(dir), events, clock: systemClock });
  const s = new TurnServer({ ...base, flowHooks: inspector, extensions: [inspector.extension] });
  inspector.attach(s);
  await s.start();
  return s;
}

async function startRig(): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-escrow-'));
  const cleanup = onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const sink = new StampingSink();
  const server = await startTurn(dir, true, sink);
  const port = server.addresses().find((a) => a.proto === 'udp')!.port;
  return {
    server,
    port,
    verifiedAt: sink.verifiedAt,
    close: async () => {
      await server.stop();
      cleanup();
    },
  };
}

async function bindingRtt(c: Client, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await c.request(Method.Binding);
    out.push(performance.now() - t);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// (1) openssl DTLS 1.2 through the gateway

function opensslOk(): string | null {
  const r = spawnSync('openssl', ['version'], { encoding: 'utf8' });
  return r.status === 0 ? null : 'openssl not found';
}

function spawnTracked(args: string[], cwd: string, live: Set<ChildProcess>): { p: ChildProcess; out: () => string } {
  const p = spawn('openssl', args, { cwd, stdio: ['pipe', 'pipe', 'pipe'] });
  live.add(p);
  p.once('exit', () => live.delete(p));
  let out = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString('latin1')));
  p.stderr!.on('data', () => {});
  p.on('error', () => {});
  return { p, out: () => out };
}

function killTracked(p: ChildProcess): Promise<void> {
  return new Promise((res) => {
    if (p.exitCode !== null || p.signalCode !== null) return res();
    const k = setTimeout(() => p.kill('SIGKILL'), 2000);
    p.once('exit', () => (clearTimeout(k), res()));
    p.kill('SIGTERM');
  });
}

interface HsSample {
  gatewayMs: number;
  writeKeysRttMs: number;
  agentTotalMs: number;
  rttMs: number[];
  verified: boolean;
}

async function opensslSession(rig: Rig, dir: string, cert: string, key: string, idx: number, live: Set<ChildProcess>): Promise<HsSample> {
  const sockets: Socket[] = [];
  const procs: ChildProcess[] = [];
  const { c } = await turnClient(rig.port);
  let stopped = false;
  try {
    const rttMs = await bindingRtt(c, 3);
    const srvPort = await freeUdpPort();
    const server = spawnTracked(
      ['s_server', '-dtls1_2', '-accept', `${HOST}:${srvPort}`, '-cert', cert, '-key', key, '-use_srtp', 'SRTP_AES128_CM_SHA1_80'],
      dir,
      live,
    );
    procs.push(server.p);
    await until(() => server.out().includes('ACCEPT') || server.p.exitCode !== null, 10_000, 's_server ready');
    if (server.p.exitCode !== null) throw new Error(`s_server exited (${server.p.exitCode})`);

    // Peer shim: the TURN peer address, forwarding to/from s_server.
    const peerShim = createSocket('udp4');
    sockets.push(peerShim);
    await bindUdp(peerShim);
    let relayPort: number | null = null;
    peerShim.on('message', (m, r) => {
      if (r.port === srvPort) {
        if (relayPort !== null) peerShim.send(m, relayPort, HOST);
        return;
      }
      relayPort = r.port;
      peerShim.send(m, srvPort, HOST);
    });
    const peerPort = peerShim.address().port;
    await bindChannel(c, peerPort);

    // The agent: follows the hellos, and on the first epoch-1 datagram sends WRITE-KEYS.
    const keylog = join(dir, `keylog-${idx}.txt`);
    let hs: DtlsHandshakeEvent | null = null;
    const follow = new DtlsSession({ listener: (e) => void (e.type === 'dtls.handshake' && (hs = e)) });
    let t0 = 0;
    let tSent = 0;
    let tStatus = 0;
    let statuses: number[] = [];
    let agentErr: Error | null = null;
    const sendKeys = async (): Promise<void> => {
      let entry = null;
      const end = performance.now() + 2000;
      while (
        !(entry = existsSync(keylog) ? KeyLog.parse(readFileSync(keylog, 'utf8')).get(hs!.clientRandom) : undefined) &&
        performance.now() < end
      )
        await sleep(1);
      if (!entry) throw new Error('no key log entry for the session');
      const h = hs!;
      const ks = keySetFromKeyLog(entry, {
        version: h.version,
        clientRandom: Buffer.from(h.clientRandom, 'hex'),
        serverRandom: Buffer.from(h.serverRandom, 'hex'),
        cipherSuite: h.cipherSuite,
        encryptThenMac: !!h.encryptThenMac,
        srtpProfile: h.srtpProfile,
      });
      if (!ks) throw new Error('key set not derivable');
      tSent = performance.now();
      statuses = await sendWriteKeys(c, peerPort, [ks]);
      tStatus = performance.now();
    };
    const clientShim = createSocket('udp4');
    sockets.push(clientShim);
    await bindUdp(clientShim);
    let cliPort: number | null = null;
    let keysP: Promise<void> | null = null;
    clientShim.on('message', (m, r) => {
      cliPort = r.port;
      follow.feed(m, 'c2s', 0);
      const first = !t0 && hs !== null && hasEpoch1(m);
      if (first) t0 = performance.now();
      c.sendRaw(buildChannelData(CH, m));
      // After the datagram: the gateway has seen the Finished when the keys arrive.
      if (first) keysP = sendKeys().catch((e: Error) => void (agentErr = e));
    });
    void (async () => {
      while (!stopped) {
        const b = await c.next(isCd, 200).catch(() => null);
        if (stopped) return;
        const cd = b ? parseChannelData(b) : null;
        if (!cd || cliPort === null) continue;
        follow.feed(Buffer.from(cd.data), 's2c', 0);
        clientShim.send(cd.data, cliPort, HOST);
      }
    })();

    const client = spawnTracked(
      [
        's_client',
        '-dtls1_2',
        '-connect',
        `${HOST}:${clientShim.address().port}`,
        '-keylogfile',
        keylog,
        '-use_srtp',
        'SRTP_AES128_CM_SHA1_80',
      ],
      dir,
      live,
    );
    procs.push(client.p);
    await until(() => keysP !== null || client.p.exitCode !== null, 20_000, 'the first epoch-1 datagram');
    await keysP;
    if (agentErr) throw agentErr;
    follow.close();
    const assoc = (hs as DtlsHandshakeEvent | null)?.clientRandom;
    await until(() => !!assoc && rig.verifiedAt.has(assoc), 5000, 'keys_verified');
    const t1 = rig.verifiedAt.get(assoc!)!;
    return {
      gatewayMs: t1 - t0,
      writeKeysRttMs: tStatus - tSent,
      agentTotalMs: tStatus - t0,
      rttMs,
      verified: statuses.length === 1 && statuses[0] === 1,
    };
  } finally {
    stopped = true;
    for (const p of procs) await killTracked(p);
    for (const s of sockets) s.close();
    await releaseAllocation(c);
  }
}

async function benchHandshake(rig: Rig, sessions: number): Promise<HandshakeResult> {
  const method =
    "openssl s_client ↔ s_server, DTLS 1.2 (ECDHE-ECDSA P-256, use_srtp), relayed as ChannelData through an in-process TurnServer + GatewayInspector; WRITE-KEYS from s_client's key log";
  const res: HandshakeResult = {
    method,
    sessions,
    completed: 0,
    gatewayMs: dist([]),
    writeKeysRttMs: dist([]),
    agentTotalMs: dist([]),
    rttMs: dist([]),
    keyStatusVerified: 0,
    errors: [],
  };
  const why = opensslOk();
  if (why) {
    res.errors.push(why);
    return res;
  }
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-escrow-ossl-'));
  const live = new Set<ChildProcess>();
  const cleanup = onCleanup(() => {
    for (const p of live) p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    const { cert, key } = makeCert(dir, 'ec', '/CN=gatehouse-bench');
    const g: number[] = [];
    const w: number[] = [];
    const a: number[] = [];
    const rtt: number[] = [];
    for (let i = 0; i < sessions; i++) {
      try {
        const s = await opensslSession(rig, dir, cert, key, i, live);
        g.push(s.gatewayMs);
        w.push(s.writeKeysRttMs);
        a.push(s.agentTotalMs);
        rtt.push(...s.rttMs);
        if (s.verified) res.keyStatusVerified++;
        res.completed++;
      } catch (e) {
        if (res.errors.length < 5) res.errors.push(`session ${i}: ${(e as Error).message}`);
      }
    }
    res.gatewayMs = dist(g);
    res.writeKeysRttMs = dist(w);
    res.agentTotalMs = dist(a);
    res.rttMs = dist(rtt);
  } finally {
    for (const p of [...live]) await killTracked(p);
    cleanup();
  }
  return res;
}

// ---------------------------------------------------------------------------------------
// (2) held packets: added delay

async function benchHeld(rig: Rig, sessions: number, records: number, keysDelayMs: number): Promise<HeldResult> {
  const res: HeldResult = {
    method: `synthetic DTLS 1.2 AES-128-GCM sessions (plaintext hellos, records from DtlsRecordEncryptor) through the in-process gateway; ${records} application-data records 1 ms apart right after the hellos, WRITE-KEYS sent ${keysDelayMs ? `${keysDelayMs} ms after` : 'right after'} the first, then ${records} more once covered`,
    keysDelayMs,
    sessions,
    gatewayMs: dist([]),
    held: 0,
    covered: 0,
    heldLatencyMs: dist([]),
    coveredLatencyMs: dist([]),
    addedDelayMs: dist([]),
    releaseMs: dist([]),
    errors: [],
  };
  const gw: number[] = [];
  const heldLat: number[] = [];
  const covLat: number[] = [];
  const rel: number[] = [];
  for (let s = 0; s < sessions; s++) {
    const peer = createSocket('udp4');
    const { c, relayPort } = await turnClient(rig.port);
    try {
      await bindUdp(peer);
      const arrived = new Map<number, number>(); // DTLS sequence number → arrival time
      peer.on('message', (m) => {
        // RFC 6347 §4.1: the 48-bit sequence number at offset 5 of an application_data record.
        if (m.length >= 13 && m[0] === 23) arrived.set(m.readUIntBE(5, 6), performance.now());
      });
      await bindChannel(c, peer.address().port);
      const ss = syntheticSession();
      c.sendRaw(buildChannelData(CH, ss.hello[0]!.data));
      peer.send(ss.hello[1]!.data, relayPort, HOST);
      await c.next((b) => isCd(b) && parseChannelData(b)?.data[0] === 22, 5000);
      const sctp = new SctpBuilder();
      const sent = new Map<number, number>();
      let seq = 1;
      const send = (): void => {
        const rec = ss.appData(true, sctp.message(1, Buffer.from(`held-bench ${s} ${seq}`)));
        sent.set(seq++, performance.now());
        c.sendRaw(buildChannelData(CH, rec));
      };
      const ks = ss.keySet;
      send();
      const tFirst = sent.get(1)!;
      // Records sent before the WRITE-KEYS request reach the gateway before it (one socket
      // pair on loopback keeps order): those are held; later ones find the keys there.
      let tKeys = Infinity;
      let keysP: Promise<number[]> | null = null;
      const maybeKeys = (): void => {
        if (keysP || performance.now() - tFirst < keysDelayMs) return;
        tKeys = performance.now();
        keysP = sendWriteKeys(c, peer.address().port, [ks]);
      };
      maybeKeys();
      for (let i = 1; i < records; i++) {
        await sleep(1);
        maybeKeys();
        send();
      }
      while (!keysP) {
        await sleep(1);
        maybeKeys();
      }
      await keysP;
      await until(() => rig.verifiedAt.has(ss.association), 5000, 'keys_verified');
      const tv = rig.verifiedAt.get(ss.association)!;
      gw.push(tv - tFirst);
      const firstCovered = seq;
      for (let i = 0; i < records; i++) {
        await sleep(1);
        send();
      }
      await until(() => arrived.size >= seq - 1, 5000, 'all records at the peer');
      for (const [q, t] of sent) {
        const at = arrived.get(q)!;
        if (q < firstCovered && t < tKeys) {
          heldLat.push(at - t);
          rel.push(at - tv);
          res.held++;
        } else if (q >= firstCovered) {
          covLat.push(at - t);
          res.covered++;
        }
      }
    } catch (e) {
      if (res.errors.length < 5) res.errors.push(`session ${s}: ${(e as Error).message}`);
    } finally {
      peer.close();
      await releaseAllocation(c);
    }
  }
  res.gatewayMs = dist(gw);
  res.heldLatencyMs = dist(heldLat);
  res.coveredLatencyMs = dist(covLat);
  const base = res.coveredLatencyMs.p50 ?? 0;
  res.addedDelayMs = dist(heldLat.map((x) => x - base));
  res.releaseMs = dist(rel);
  return res;
}

// ---------------------------------------------------------------------------------------
// (3) CPU per relayed packet

interface Started {
  proc: Proc;
  port: number;
  /** inspected servers: whether the marker alert was emitted */
  judged: () => boolean | null;
  cleanup: () => void;
}

/** A TurnServer of our own (mode plain | inspected) in a child process: `--serve-child`. */
async function startChild(mode: 'plain' | 'inspected'): Promise<Started> {
  const dir = mkdtempSync(join(tmpdir(), `gh-bench-escrow-${mode}-`));
  const cleanup = onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const proc = start(`turnserver-${mode}`, process.execPath, [...profArgs(), '--import', 'tsx', THIS_FILE, '--serve-child', mode, dir], {
    cwd: ROOT,
  });
  let port = 0;
  let alerts = 0;
  proc.onLine((l) => {
    const m = /^READY (\d+)/.exec(l);
    if (m) port = Number(m[1]);
    if (l.startsWith('ALERT')) alerts++;
  });
  try {
    await until(() => port > 0 || !proc.isRunning(), 60_000, `${mode} child ready`);
    if (!port) throw new Error(`${mode} child exited: ${proc.tail()}`);
  } catch (e) {
    await stop(proc);
    cleanup();
    throw e;
  }
  return { proc, port, judged: () => (mode === 'inspected' ? alerts > 0 : null), cleanup };
}

/** The child: runs until SIGTERM; prints READY <port> and one ALERT line per policy alert. */
async function serveChild(mode: string, dir: string): Promise<void> {
  const sink: EventSink = {
    emit: (e) => void (e.event_type === 'alert' && process.stdout.write('ALERT\n')),
    close: () => {},
  };
  const s = await startTurn(dir, mode === 'inspected', sink);
  process.stdout.write(`READY ${s.addresses().find((a) => a.proto === 'udp')!.port}\n`);
  await new Promise<void>((r) => {
    process.once('SIGTERM', () => r());
    process.once('SIGINT', () => r());
  });
  await s.stop();
  process.exit(0);
}

async function startServe(): Promise<Started> {
  const port = await freeUdpPort();
  const pcpPort = await freeUdpPort();
  const adminPort = await freeTcpPort();
  const [low, high] = await freeUdpRange(128, [port, pcpPort]);
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-escrow-serve-'));
  const cleanup = onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'data'));
  const rulesPath = join(dir, 'rules.yaml');
  writeFileSync(rulesPath, RULES);
  const cfg = [
    `realm: ${REALM}`,
    `data_dir: ${JSON.stringify(join(dir, 'data'))}`,
    'log_level: warn',
    'turn:',
    `  listen: [udp://${HOST}:${port}]`,
    `  relay_address: ${HOST}`,
    `  relay_ports: [${low}, ${high}]`,
    '  peers: { allow: [127.0.0.0/8] }',
    `pcp: { listen: [udp://${HOST}:${pcpPort}] }`,
    `admin: { listen: http://${HOST}:${adminPort} }`,
    `users: [{ name: ${USER}, password: ${PASSWORD}, groups: [] }]`,
    `policy: { rules: ${JSON.stringify(rulesPath)} }`,
    '',
  ].join('\n');
  const cfgPath = join(dir, 'gatehouse.yaml');
  writeFileSync(cfgPath, cfg);
  const proc = start('gatehouse', process.execPath, [...profArgs(), GATEHOUSE_BIN, 'serve', '--config', cfgPath], { cwd: dir });
  try {
    await waitForStun(HOST, port, 60_000, () => (proc.isRunning() ? null : `gatehouse exited during start:\n${proc.tail()}`));
  } catch (e) {
    await stop(proc);
    cleanup();
    throw e;
  }
  const eventsFile = join(dir, 'data', 'events.jsonl');
  const judged = (): boolean => {
    try {
      return readFileSync(eventsFile, 'utf8').includes('bench-marker');
    } catch {
      return false;
    }
  };
  return { proc, port, judged, cleanup };
}

async function startCoturn(): Promise<Started> {
  // The same coturn set-up as the TURN relay bench (same user, realm and flags).
  const c = await startCoturnRelay(128, 'gh-bench-escrow-coturn-');
  return { proc: c.proc, port: c.port, judged: () => null, cleanup: c.cleanup };
}

/** The load: `warmup + packets` app-data records (SCTP data channel messages), paced. */
function buildLoad(ss: SyntheticSession, size: number, count: number): Buffer[] {
  const sctp = new SctpBuilder();
  const out: Buffer[] = [ss.appData(true, sctp.init()), ss.appData(true, sctp.open(1, 'bench'))];
  const body = Buffer.alloc(Math.max(16, size - OVERHEAD), 0x61);
  for (let i = out.length; i < count; i++) {
    if (i === count - 1) Buffer.from(MARKER).copy(body, 0); // the last one: policy alert proves judgement
    out.push(ss.appData(true, sctp.message(1, body)));
  }
  return out.map((r) => buildChannelData(CH, r));
}

async function paced(c: Client, bufs: Buffer[], from: number, to: number, rate: number): Promise<void> {
  const t0 = performance.now();
  let i = from;
  while (i < to) {
    const due = Math.min(to, from + Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
    while (i < due) c.sendRaw(bufs[i++]!);
    await sleep(1);
  }
}

async function loadOnce(name: CpuServer, srv: Started, size: number, o: Required<Omit<EscrowBenchOptions, 'quick'>>): Promise<CpuRow> {
  const row: CpuRow = {
    server: name,
    size,
    sent: o.packets,
    relayed: 0,
    lossPct: null,
    cpuMs: null,
    usPerPacket: null,
    cpuSource: null,
    judged: null,
    error: null,
  };
  const peer = createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  await bindUdp(peer);
  let got = 0;
  peer.on('message', (m) => void (m[0] === 23 && got++));
  const { c, relayPort } = await turnClient(srv.port);
  try {
    await bindChannel(c, peer.address().port);
    const ss = syntheticSession();
    const inspected = name === 'gatehouse-serve' || name === 'inspected';
    // Same bytes for every server: hellos, then the records.
    c.sendRaw(buildChannelData(CH, ss.hello[0]!.data));
    peer.send(ss.hello[1]!.data, relayPort, HOST);
    await c.next((b) => isCd(b) && parseChannelData(b)?.data[0] === 22, 5000);
    if (inspected) {
      const st = await sendWriteKeys(c, peer.address().port, [ss.keySet]);
      if (st.length !== 1) throw new Error(`KEY-STATUS: ${JSON.stringify(st)}`);
    }
    const total = o.warmup + o.packets;
    const bufs = buildLoad(ss, size, total);
    await paced(c, bufs, 0, o.warmup, o.rate);
    await until(() => got >= o.warmup, 10_000, `warm-up at the peer (${got}/${o.warmup})`).catch(() => null);
    await sleep(200);
    const base = got;
    const a: CpuSample = sampleCpu(srv.proc.pid);
    await paced(c, bufs, o.warmup, total, o.rate);
    // Until everything arrived, or 500 ms without progress.
    let last = got;
    let lastT = performance.now();
    while (got - base < o.packets && performance.now() - lastT < 500) {
      await sleep(5);
      if (got !== last) {
        last = got;
        lastT = performance.now();
      }
    }
    const b = sampleCpu(srv.proc.pid);
    const d = cpuDelta(a, b);
    row.relayed = got - base;
    row.lossPct = (100 * (o.packets - row.relayed)) / o.packets;
    row.cpuMs = d.cpuNs / 1e6;
    row.cpuSource = d.source;
    row.usPerPacket = row.relayed > 0 ? d.cpuNs / 1e3 / row.relayed : null;
    await sleep(100);
    row.judged = srv.judged();
  } catch (e) {
    row.error = (e as Error).message;
  } finally {
    peer.close();
    await releaseAllocation(c);
  }
  return row;
}

async function benchCpu(o: Required<Omit<EscrowBenchOptions, 'quick'>>): Promise<CpuRow[]> {
  const rows: CpuRow[] = [];
  for (const name of o.servers) {
    let srv: Started | null = null;
    try {
      if (name === 'coturn' && spawnSync('turnserver', ['--version'], { encoding: 'utf8' }).error)
        throw new Error('turnserver not found (apt-get install coturn)');
      srv = name === 'coturn' ? await startCoturn() : name === 'gatehouse-serve' ? await startServe() : await startChild(name);
      process.stderr.write(`escrow bench: ${name} (pid ${srv.proc.pid})\n`);
      for (const size of o.sizes) rows.push(await loadOnce(name, srv, size, o));
    } catch (e) {
      for (const size of o.sizes)
        rows.push({
          server: name,
          size,
          sent: 0,
          relayed: 0,
          lossPct: null,
          cpuMs: null,
          usPerPacket: null,
          cpuSource: null,
          judged: null,
          error: (e as Error).message,
        });
    } finally {
      if (srv) {
        await stop(srv.proc);
        srv.cleanup();
      }
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------
// Report

const LABEL: Record<CpuServer, string> = {
  'gatehouse-serve': 'Gatehouse `serve`, inspected (keys escrowed)',
  inspected: 'TurnServer + GatewayInspector (child), inspected',
  plain: 'TurnServer without flow hooks (plain relay)',
  coturn: 'coturn --relay-threads 1',
};

function ms(d: Dist, digits = 2): [string, string, string] {
  return [fmt(d.p50, digits), fmt(d.p99, digits), fmt(d.max, digits)];
}

function render(r: Omit<EscrowBenchResult, 'table'>): string {
  const parts: string[] = [];
  parts.push('### Handshake → keys verified (goal ≤ 1 RTT + 5 ms)\n');
  if ('error' in r.handshake) parts.push(`failed: ${r.handshake.error}\n`);
  else {
    const h = r.handshake;
    parts.push(
      markdownTable(
        ['measure', 'n', 'p50 ms', 'p99 ms', 'max ms'],
        [
          ['gateway: first epoch-1 datagram → keys_verified', h.gatewayMs.n, ...ms(h.gatewayMs)],
          ['agent: first epoch-1 datagram → KEY-STATUS', h.agentTotalMs.n, ...ms(h.agentTotalMs)],
          ['agent: WRITE-KEYS → KEY-STATUS', h.writeKeysRttMs.n, ...ms(h.writeKeysRttMs)],
          ['loopback RTT (STUN Binding)', h.rttMs.n, ...ms(h.rttMs, 3)],
        ],
        ['l', 'r', 'r', 'r', 'r'],
      ),
    );
    parts.push(
      `\n- ${h.method}. ${h.completed}/${h.sessions} sessions completed; KEY-STATUS verified in the response for ${h.keyStatusVerified}.`,
    );
    for (const e of h.errors) parts.push(`- error: ${e}`);
  }
  parts.push('\n### Added delay of held packets (keys.unverified: hold)\n');
  for (const h of r.held) {
    if ('error' in h) {
      parts.push(`WRITE-KEYS ${h.keysDelayMs} ms after the first record: failed: ${h.error}\n`);
      continue;
    }
    parts.push(`WRITE-KEYS ${h.keysDelayMs ? `${h.keysDelayMs} ms after` : 'together with'} the first application-data record:\n`);
    parts.push(
      markdownTable(
        ['measure', 'n', 'p50 ms', 'p99 ms', 'max ms'],
        [
          ['held records: client send → peer', h.heldLatencyMs.n, ...ms(h.heldLatencyMs)],
          ['covered records: client send → peer (baseline)', h.coveredLatencyMs.n, ...ms(h.coveredLatencyMs)],
          ['added delay (held − baseline p50)', h.addedDelayMs.n, ...ms(h.addedDelayMs)],
          ['release: keys_verified → held record at peer', h.releaseMs.n, ...ms(h.releaseMs)],
          ['gateway: first epoch-1 record → keys_verified', h.gatewayMs.n, ...ms(h.gatewayMs)],
        ],
        ['l', 'r', 'r', 'r', 'r'],
      ),
    );
    parts.push(`\n- ${h.method}; ${h.sessions} sessions; ${h.held} records held, ${h.covered} covered.`);
    for (const e of h.errors) parts.push(`- error: ${e}`);
    parts.push('');
  }
  parts.push('\n### Inspected relay CPU per packet (goal ≤ 2× coturn)\n');
  parts.push(
    markdownTable(
      ['server', 'size B', 'sent', 'relayed', 'loss %', 'CPU ms', 'µs/packet', '× coturn', '× plain', 'decrypted+judged'],
      r.cpu.map((x) => {
        const ratio = r.ratios.find((q) => q.server === x.server && q.size === x.size);
        return [
          LABEL[x.server],
          x.size,
          x.sent,
          x.relayed,
          fmt(x.lossPct, 1),
          fmt(x.cpuMs, 1),
          x.error ? `error: ${x.error.slice(0, 80)}` : fmt(x.usPerPacket, 2),
          ratio?.overCoturn == null ? '–' : `${fmt(ratio.overCoturn, 2)}×`,
          ratio?.overPlain == null ? '–' : `${fmt(ratio.overPlain, 2)}×`,
          x.judged === null ? '' : x.judged ? 'yes' : 'no',
        ];
      }),
      ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l'],
    ),
  );
  parts.push('');
  for (const n of r.notes) parts.push(`- ${n}`);
  return parts.join('\n');
}

export async function runEscrowBench(opts: EscrowBenchOptions = {}): Promise<EscrowBenchResult> {
  const quick = !!opts.quick;
  const o = {
    ...defaults(quick),
    ...Object.fromEntries(Object.entries(opts).filter(([k, v]) => v !== undefined && k !== 'quick')),
  } as Required<Omit<EscrowBenchOptions, 'quick'>>;
  const la: number[] = [loadavg()[0]!];
  let handshake: EscrowBenchResult['handshake'];
  const held: EscrowBenchResult['held'] = [];
  const rig = await startRig();
  try {
    process.stderr.write(`escrow bench: ${o.sessions} openssl DTLS sessions\n`);
    try {
      handshake = await benchHandshake(rig, o.sessions);
    } catch (e) {
      handshake = { error: (e as Error).message };
    }
    for (const d of o.keysDelays) {
      process.stderr.write(`escrow bench: ${o.heldSessions} synthetic sessions with held data, keys after ${d} ms\n`);
      try {
        held.push(await benchHeld(rig, o.heldSessions, o.heldRecords, d));
      } catch (e) {
        held.push({ keysDelayMs: d, error: (e as Error).message });
      }
    }
  } finally {
    await rig.close();
  }
  const cpu = await benchCpu(o);
  la.push(loadavg()[0]!);
  const ratios = cpu
    .filter((x) => x.server !== 'coturn' && x.server !== 'plain')
    .map((x) => {
      const co = cpu.find((y) => y.server === 'coturn' && y.size === x.size)?.usPerPacket ?? null;
      const pl = cpu.find((y) => y.server === 'plain' && y.size === x.size)?.usPerPacket ?? null;
      return {
        size: x.size,
        server: x.server,
        overCoturn: x.usPerPacket !== null && co ? x.usPerPacket / co : null,
        overPlain: x.usPerPacket !== null && pl ? x.usPerPacket / pl : null,
      };
    });
  for (const x of cpu.filter((y) => y.server === 'plain')) {
    const co = cpu.find((y) => y.server === 'coturn' && y.size === x.size)?.usPerPacket ?? null;
    ratios.push({ size: x.size, server: 'plain', overCoturn: x.usPerPacket !== null && co ? x.usPerPacket / co : null, overPlain: null });
  }
  const notes = [
    `CPU load: per server, one allocation and one channel; ${o.warmup} warm-up records (not measured), then ${o.packets} DTLS 1.2 AES-128-GCM application-data records (SCTP DATA, PPID 51) at ${o.rate}/s as ChannelData from the bench's client to a UDP peer on 127.0.0.1; the same bytes for every server (fresh keys per run). Sizes are the UDP payload at the peer.`,
    "Server CPU: sum over the server's threads of /proc/PID/task/*/schedstat between the start of the measured records and their last arrival (or 500 ms without progress); µs/packet = CPU ÷ records the peer received. The plain and child-inspected servers are the same TurnServer code in a `node --import tsx` child of this bench; `serve` is `bin/gatehouse.js serve` (event file, SQLite quotas, admin API included).",
    '"decrypted+judged": the last record carries a marker matched by a `contains` rule; its alert event shows the record was decrypted, parsed and judged by policy. With keys required and unverified: hold, every relayed record was covered by the escrowed keys (held ones would overflow the queue and be dropped).',
    `Held-delay and handshake figures are wall-clock times in the bench process (performance.now()); the gateway runs in the same process, so they include its event-loop scheduling but no clock skew. 1-minute load average: ${la.map((x) => x.toFixed(2)).join(' → ')} (the machine is shared: figures are noisy).`,
  ];
  const partial = {
    handshake,
    held,
    cpu,
    ratios,
    load: { packets: o.packets, warmup: o.warmup, rate: o.rate, sizes: o.sizes },
    loadavg: la,
    notes,
  };
  return { ...partial, table: render(partial) };
}

// ---------------------------------------------------------------------------------------
// Standalone

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === THIS_FILE;
if (isMain) {
  const argv = process.argv.slice(2);
  if (argv[0] === '--serve-child') {
    await serveChild(argv[1] ?? 'plain', argv[2] ?? tmpdir());
  } else {
    let code = 0;
    try {
      const r = await runEscrowBench({ quick: argv.includes('--quick') });
      process.stdout.write(`## Key escrow\n\n${r.table}\n`);
    } catch (e) {
      process.stderr.write(`escrow bench: ${(e as Error).stack ?? String(e)}\n`);
      code = 1;
    } finally {
      await stopAll();
    }
    process.exit(code);
  }
}
