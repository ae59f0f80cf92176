/**
 * Live fuzzing of the TURN server with the gateway floor (issue 8): a TurnServer with a
 * GatewayInspector as its flow hooks and escrow extension (as startGateway wires them),
 * driven over real loopback UDP and TCP from both sides:
 *
 *  - as authenticated clients (UDP and TCP, each with a valid Allocate, CreatePermission
 *    and ChannelBind, re-established whenever the fuzz tore them down): mutated STUN
 *    requests (mutated then signed, so they reach the handlers; signed then mutated, so
 *    they hit the parser and integrity checks), ChannelData and Send indications carrying
 *    every RFC 7983 class, escrow attributes WRITE-KEYS (0xC1A1: valid, TLVs mutated
 *    before sealing, sealed then mutated) and KEY-DECLINE (0xC1A2), and on TCP the same
 *    frames concatenated, mutated and split at random points (RFC 8656 §5 framing);
 *  - as the peers: mutated datagrams of every RFC 7983 class sent to the relayed
 *    addresses (STUN, ZRTP, DTLS records of every content type and epoch 0/1/2/0xFFFF,
 *    DTLS 1.3 unified headers, ChannelData-looking bytes, RTP/RTCP/SRTP, random), from
 *    permitted and unpermitted addresses, interleaved with a valid DTLS session per flow
 *    so the escrow guard really holds, verifies, releases and blocks.
 *
 * Mutations start from valid packets: bit flips, interesting bytes, truncation, 16-bit
 * length-field lies (at the STUN, ChannelData and DTLS length offsets and anywhere),
 * splices of two seeds, duplicated chunks, inserted random bytes. Everything is drawn
 * from one seeded PRNG: the same --seed sends the same inputs (arrival interleaving over
 * real sockets may still differ).
 *
 * After every batch: the server must answer a STUN Binding (no hang), the clock moves 1 s
 * (deadlines, expiry and rate-limit refills run), and the clients' allocations are
 * checked and re-made. Watched throughout: process 'uncaughtException' and
 * 'unhandledRejection' (must not fire), the Supervisor counters of the server and the
 * inspector (src/util/supervise.ts) when they carry one, heapUsed after a full GC.
 *
 *   npm run fuzz -- --count 1000000 --seed 1234      (the test runs liveFuzz with 10^5)
 *   npm run fuzz -- --target pcp --count 1000000     (the PCP codec and server: scripts/fuzz-pcp.ts)
 */
import { createSocket, type Socket } from 'node:dgram';
import { connect, type Socket as NetSocket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { defaultConfig } from '../src/config/config.js';
import { ManualClock } from '../src/util/clock.js';
import { createLogger } from '../src/util/log.js';
import { Supervisor } from '../src/util/supervise.js';
import type { EventSink, EveEvent } from '../src/events/eve.js';
import { TurnServer, type UserRecord } from '../src/turn/server.js';
import { GatewayInspector } from '../src/gateway/inspector.js';
import { PolicyEngine } from '../src/policy/engine.js';
import { parseRuleFile, type RuleFile } from '../src/policy/rules-schema.js';
import { loadOrCreateIdentity, type GatewayIdentity } from '../src/store/identity.js';
import {
  Attr,
  Class,
  Method,
  StunWriter,
  decodeStun,
  getErrorCode,
  getString,
  getXorAddress,
  longTermKey,
  messageType,
  type StunMessage,
} from '../src/wire/stun.js';
import { StreamFramer, buildChannelData } from '../src/wire/channeldata.js';
import { ATTR_KEY_DECLINE, ATTR_WRITE_KEYS, sealWriteKeys, turnWriteKeysKey } from '../src/wire/escrow.js';
import { encodeKeySet } from '../src/wire/keyset.js';
import { Dtls13Writer } from '../src/wire/dtls13.js';
import { serializeRtp } from '../src/wire/rtp.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { syntheticSession, SctpBuilder, record, type SyntheticSession } from '../test/unit/inspect/pipeline-helpers.js';
import { prng, Mutator, LENGTH_OFFSETS } from './mutate.js';

export { prng, Mutator };

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

// ---------------------------------------------------------------------------------
// Seed packets of every RFC 7983 class.

function dtlsRecord(type: number, epoch: number, body: Buffer): Buffer {
  return record(type, epoch, 1 + (body.length & 0xff), body);
}

/** Valid packets of every class a relayed flow can carry (RFC 7983 §7 first-byte ranges). */
function classCorpus(sess: SyntheticSession, sctp: SctpBuilder): Buffer[] {
  const stun = new StunWriter()
    .reset(messageType(Method.Binding, Class.Request), randomBytes(12))
    .attr(Attr.Username, 'a:b')
    .u32(Attr.Priority, 99)
    .fingerprint()
    .copy();
  const stunOk = new StunWriter()
    .reset(messageType(Method.Binding, Class.Success), randomBytes(12))
    .xorAddress(Attr.XorMappedAddress, '127.0.0.1', 5000)
    .copy();
  const zrtp = Buffer.concat([Buffer.from([0x10, 0, 0, 1, 0x5a, 0x52, 0x54, 0x50]), randomBytes(40)]);
  const dtls: Buffer[] = [];
  // RFC 6347 content types: 20 change_cipher_spec, 21 alert, 22 handshake, 23 application_data,
  // 24 heartbeat, 25 tls12_cid; epochs 0, 1, 2, 0xFFFF.
  for (const type of [20, 21, 22, 23, 24, 25]) {
    for (const epoch of [0, 1, 2, 0xffff]) {
      const body = type === 20 ? Buffer.from([1]) : type === 21 ? Buffer.from([2, 40]) : randomBytes(16 + ((type * 7 + epoch) % 48));
      dtls.push(dtlsRecord(type, epoch, body));
    }
  }
  // epoch-0 "handshake" junk: a handshake header that lies about its length
  dtls.push(dtlsRecord(22, 0, Buffer.concat([Buffer.from([1, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x20]), randomBytes(32)])));
  const w13 = new Dtls13Writer(0x1301, randomBytes(32), 3);
  dtls.push(w13.seal(23, Buffer.from('dtls13 app data')), w13.seal(23, randomBytes(100), { seqLen: 1 }));
  dtls.push(w13.seal(22, randomBytes(40), { withLength: false }));
  const rtp = serializeRtp({ payloadType: 111, sequenceNumber: 7, timestamp: 960, ssrc: 0x5151, payload: randomBytes(80) });
  const rtcp = Buffer.alloc(28);
  rtcp[0] = 0x80;
  rtcp[1] = 200;
  rtcp.writeUInt16BE(6, 2);
  const cdLike = buildChannelData(0x4001, randomBytes(24));
  const other = [Buffer.from([0x05, 1, 2, 3]), Buffer.from([0x50, 0, 0, 0, 1]), Buffer.from([0xc8, 1, 2]), randomBytes(64)];
  return [
    stun,
    stunOk,
    zrtp,
    ...dtls,
    ...sess.hello.map((h) => h.data),
    sess.appData(true, sctp.init()),
    sess.appData(true, sctp.open(1, 'chat')),
    sess.appData(true, sctp.message(1, Buffer.from('hello'))),
    sess.srtp(true, 1, randomBytes(60)),
    rtp,
    rtcp,
    cdLike,
    ...other,
  ];
}

// ---------------------------------------------------------------------------------
// Policies the run cycles through (the inspector reads the policy per new flow).

const KEYS_POLICIES = [
  'keys:\n  required: true\n  deadline: 3s\n  unverified: hold\n  block_for: 1s\n',
  'keys:\n  required: false\n  deadline: 2s\n  unverified: hold\n  block_for: 1s\n',
  'keys:\n  required: false\n  deadline: 2s\n  unverified: pass\n  block_for: 1s\n',
  'keys:\n  required: true\n  deadline: 2s\n  unverified: drop\n  block_for: 1s\n',
];

function shippedRules(): RuleFile[] {
  const dir = join(ROOT, 'rules');
  // The shipped packs (block executables, DLP keywords, ...), without the ones needing a store.
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml') && !f.includes('quota') && !f.includes('record'))
    .sort()
    .map((f) => parseRuleFile(readFileSync(join(dir, f), 'utf8'), join(dir, f)));
}

// ---------------------------------------------------------------------------------
// A small STUN/TURN client on a UDP socket or TCP connection bound to a chosen source.

const USERS: UserRecord[] = [
  { name: 'fuzz', password: 'fuzz-pw', groups: ['trading'] },
  { name: 'fuzz2', password: 'fuzz2-pw', groups: [] },
];
const REALM = 'gatehouse.local';

/** Exported for test/e2e/scale.test.ts (many allocations from distinct sources). */
export class Endpoint {
  nonce = 'none';
  relayPort = 0;
  alive = true;
  received = 0;
  private readonly waiters = new Map<string, (m: Buffer) => void>();
  private readonly framer = new StreamFramer(true);
  readonly key: Buffer;

  private constructor(
    readonly udp: Socket | null,
    readonly tcp: NetSocket | null,
    readonly serverPort: number,
    readonly user: UserRecord,
    readonly realm = REALM,
  ) {
    this.key = longTermKey(user.name, realm, user.password!, 'md5');
  }

  static async udp(serverPort: number, local: string, user = USERS[0]!, realm = REALM): Promise<Endpoint> {
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, local, () => r()));
    const e = new Endpoint(s, null, serverPort, user, realm);
    s.on('message', (m) => e.deliver(m));
    s.on('error', () => {});
    return e;
  }

  static async tcp(serverPort: number, local: string, user = USERS[0]!): Promise<Endpoint> {
    const s = connect({ port: serverPort, host: '127.0.0.1', localAddress: local });
    await new Promise<void>((r, j) => {
      s.once('connect', () => r());
      s.once('error', j);
    });
    const e = new Endpoint(null, s, serverPort, user);
    s.on('data', (chunk) => {
      if (!e.framer.push(chunk, (f) => e.deliver(f))) s.destroy();
    });
    s.on('error', () => {});
    s.on('close', () => (e.alive = false));
    return e;
  }

  private deliver(m: Buffer): void {
    this.received++;
    if (m.length < 20 || m[0]! >= 0x40) return; // ChannelData / other: counted only
    const w = this.waiters.get(m.toString('latin1', 8, 20));
    if (w) w(Buffer.from(m));
  }

  send(b: Buffer): void {
    if (!this.alive) return;
    if (this.udp) this.udp.send(b, this.serverPort, '127.0.0.1');
    else this.tcp!.write(b);
  }

  /** Sends a request and waits for the response with its transaction ID (null: none in time). */
  request(buf: Buffer, timeoutMs = 3000): Promise<StunMessage | null> {
    const tid = buf.toString('latin1', 8, 20);
    return new Promise((resolveP) => {
      const timer = setTimeout(() => {
        this.waiters.delete(tid);
        resolveP(null);
      }, timeoutMs);
      this.waiters.set(tid, (m) => {
        clearTimeout(timer);
        this.waiters.delete(tid);
        resolveP(decodeStun(m));
      });
      this.send(buf);
    });
  }

  /** A request with long-term credentials over the attributes `fill` writes. */
  build(method: number, fill: (w: StunWriter) => void, o: { tid?: Buffer; nonce?: string; sign?: boolean } = {}): Buffer {
    const w = new StunWriter(4096).reset(messageType(method, Class.Request), o.tid ?? randomBytes(12));
    fill(w);
    w.attr(Attr.Username, this.user.name)
      .attr(Attr.Realm, REALM)
      .attr(Attr.Nonce, o.nonce ?? this.nonce);
    if (o.sign !== false) w.integrity(this.key);
    return w.copy();
  }

  /** An authenticated request; picks up a fresh nonce on 401/438 and retries once. */
  async authed(method: number, fill: (w: StunWriter) => void, tries = 3, timeoutMs = 3000): Promise<StunMessage | null> {
    for (let i = 0; i < tries; i++) {
      const r = await this.request(this.build(method, fill), timeoutMs);
      if (!r) continue;
      const code = getErrorCode(r)?.code;
      if (code === 401 || code === 438) {
        const n = getString(r, Attr.Nonce);
        if (n) this.nonce = n;
        continue;
      }
      return r;
    }
    return null;
  }

  closedByUs = false;
  close(): void {
    if (this.alive) this.closedByUs = true;
    this.alive = false;
    this.udp?.close();
    this.tcp?.destroy();
  }
}

// ---------------------------------------------------------------------------------

export interface LiveFuzzOptions {
  /** Mutated inputs to send. */
  count: number;
  seed: number;
  /** Inputs between two liveness checks (default 400). */
  batch?: number;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface MemorySample {
  inputs: number;
  heapUsed: number;
  rss: number;
}

export interface LiveFuzzReport {
  seed: number;
  inputs: number;
  byKind: Record<string, number>;
  batches: number;
  /** Batches after which the Binding was not answered (must be 0). */
  unanswered: number;
  uncaught: string[];
  /** Supervisor failures by call site; null when neither server nor inspector carries a Supervisor. */
  supervised: Record<string, number> | null;
  gcAvailable: boolean;
  memory: { start: MemorySample; warm: MemorySample; end: MemorySample; peakRss: number };
  events: Record<string, number>;
  /** TurnStats.authFailures at the end. */
  authFailures: Record<string, number>;
  /** The first error-level log lines (the Supervisor logs what it contained). */
  logged: string[];
  setup: { allocations: number; allocateFailed: number; tcpReconnects: number; tcpClosedByServer: number; tcpStalled: number };
  relayed: { clientToPeer: number; peerToClient: number; peersReceived: number; clientsReceived: number };
  /** RcvbufErrors during the run, system-wide (other processes' too): inputs the server may never have read. */
  kernelUdpDrops: number;
  durationMs: number;
}

function findGc(): (() => void) | null {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) return g;
  try {
    // --expose-gc after start-up: the flag applies to contexts created from now on.
    setFlagsFromString('--expose-gc');
    return runInNewContext('gc') as () => void;
  } catch {
    return null;
  }
}

function supervisorsIn(...objs: unknown[]): Supervisor[] {
  const out = new Set<Supervisor>();
  const visit = (o: unknown, depth: number) => {
    if (!o || typeof o !== 'object') return;
    if (o instanceof Supervisor) {
      out.add(o);
      return;
    }
    if (depth === 0) return;
    for (const v of Object.values(o)) if (v && typeof v === 'object' && !Buffer.isBuffer(v)) visit(v, depth - 1);
  };
  for (const o of objs) visit(o, 2);
  return [...out];
}

class CountingSink implements EventSink {
  readonly counts: Record<string, number> = {};
  emit(e: EveEvent): void {
    const k = String((e as { event_type?: string }).event_type ?? '?');
    this.counts[k] = (this.counts[k] ?? 0) + 1;
  }
  close(): void {}
}

let identityP: Promise<GatewayIdentity> | null = null;
function fuzzIdentity(): Promise<GatewayIdentity> {
  identityP ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gatehouse-fuzz-'));
    try {
      return (await loadOrCreateIdentity(dir, { cert: null, key: null }, 'gatehouse-fuzz')).identity;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();
  return identityP;
}

const tick = () => new Promise<void>((r) => setImmediate(r));

/** One flow's valid DTLS session, replayed piecewise between the fuzz inputs. */
interface FlowSession {
  sess: SyntheticSession;
  sctp: SctpBuilder;
  step: number;
}

export async function liveFuzz(o: LiveFuzzOptions): Promise<LiveFuzzReport> {
  const t0 = Date.now();
  const log = o.log ?? (() => {});
  const batchSize = o.batch ?? 400;
  const m = new Mutator(prng(o.seed), { lengthOffsets: LENGTH_OFFSETS, maxLength: 1400 });
  const uncaught: string[] = [];
  const onUncaught = (e: unknown) => void uncaught.push(`uncaughtException: ${(e as Error)?.stack ?? String(e)}`);
  const onRejection = (e: unknown) => void uncaught.push(`unhandledRejection: ${(e as Error)?.stack ?? String(e)}`);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onRejection);

  const gc = findGc();
  const sample = (inputs: number): MemorySample => {
    gc?.();
    const mu = process.memoryUsage();
    return { inputs, heapUsed: mu.heapUsed, rss: mu.rss };
  };

  const clock = new ManualClock();
  const events = new CountingSink();
  const identity = await fuzzIdentity();
  const base = shippedRules();
  const engines = KEYS_POLICIES.map((k) => new PolicyEngine([...base, parseRuleFile(k, 'zz-keys.yaml')]));
  let policyIx = 0;
  const inspector = new GatewayInspector({ policy: () => engines[policyIx]!, identity, events, clock });
  const cfg = defaultConfig();
  cfg.turn.listen = ['udp://127.0.0.1:0', 'tcp://127.0.0.1:0'];
  cfg.turn.relay_address = '127.0.0.1';
  cfg.turn.relay_ports = [46000, 46999];
  cfg.turn.peers.allow = ['127.0.0.0/8'];
  cfg.data_dir = '/nonexistent';
  // Error-level lines only (the Supervisor logs every exception it contains): kept for the report.
  const logged: string[] = [];
  const logger = createLogger(
    { level: 'error', name: 'fuzz' },
    { write: (line: string) => void (logged.length < 20 && logged.push(line.trim().slice(0, 600))) },
  );
  const server = new TurnServer({
    config: cfg,
    logger,
    users: { lookup: (n) => USERS.find((u) => u.name === n) },
    clock,
    events,
    flowHooks: inspector,
    extensions: [inspector.extension],
  });
  inspector.attach(server);
  await server.start();
  const udpPort = server.addresses().find((a) => a.proto === 'udp')!.port;
  const tcpPort = server.addresses().find((a) => a.proto === 'tcp')!.port;

  // Sources: every role has its own address, so per-source limits of one role (401
  // answers to mutated requests, Allocate rate) never starve another role's set-up.
  const control = await Endpoint.udp(udpPort, '127.0.0.1');
  const u = await Endpoint.udp(udpPort, '127.0.1.1', USERS[0]);
  const unauth = await Promise.all([1, 2, 3, 4].map((i) => Endpoint.udp(udpPort, `127.0.4.${i}`, USERS[i & 1])));
  let tcp = await Endpoint.tcp(tcpPort, '127.0.2.1', USERS[1]);
  const PEER_IPS = ['127.0.0.1', '127.0.0.2', '127.0.0.3']; // the last one never gets a permission
  const peers = await Promise.all(
    PEER_IPS.map(async (ip) => {
      const s = createSocket('udp4');
      await new Promise<void>((r) => s.bind(0, ip, () => r()));
      let received = 0;
      s.on('message', () => void received++);
      s.on('error', () => {});
      return { ip, sock: s, port: s.address().port, received: () => received };
    }),
  );
  const CHANNELS = [0x4001, 0x4002];

  const counts: Record<string, number> = {};
  const setup = { allocations: 0, allocateFailed: 0, tcpReconnects: 0, tcpClosedByServer: 0, tcpStalled: 0 };
  const count = (k: string, n = 1) => void (counts[k] = (counts[k] ?? 0) + n);

  // Per (client, peer) a valid DTLS session, so flows see real handshakes, held data and keys.
  const sessions = new Map<string, FlowSession>();
  const sessionOf = (who: string, peer: number): FlowSession => {
    const k = `${who}/${peer}`;
    let s = sessions.get(k);
    if (!s) sessions.set(k, (s = { sess: syntheticSession(), sctp: new SctpBuilder(), step: 0 }));
    return s;
  };
  const corpus = classCorpus(syntheticSession(), new SctpBuilder());

  const peerAttrs = (w: StunWriter, ips: string[]) => {
    for (const ip of ips) w.xorAddress(Attr.XorPeerAddress, ip, peers[PEER_IPS.indexOf(ip)]!.port);
  };

  /** Valid Allocate (if needed), CreatePermission for the first two peers, ChannelBinds. */
  async function establish(e: Endpoint): Promise<void> {
    if (!e.alive) return;
    let alive = false;
    if (e.relayPort) {
      // (on TCP one short try: no answer means a stalled stream, not a slow server; the only
      // cost of a false alarm is a reconnect)
      const r = await e.authed(Method.Refresh, (w) => void w.u32(Attr.Lifetime, 600), e.tcp ? 1 : 3, e.tcp ? 1000 : 3000);
      if (!r && e.tcp) {
        // A length lie that still framed (say a ChannelData claiming 0x7fff bytes) leaves the
        // server waiting for the rest of that frame: what we send now is swallowed by it.
        // Legitimate; this connection is finished, the next batch reconnects.
        setup.tcpStalled++;
        e.close();
        return;
      }
      alive = r?.cls === Class.Success;
    }
    if (!alive) {
      const r = await e.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
      const relayed = r && r.cls === Class.Success ? getXorAddress(r, Attr.XorRelayedAddress) : null;
      if (!relayed) {
        // 437: the 5-tuple still has one (a fuzzed Allocate made it): delete it, next batch re-allocates
        if (r && getErrorCode(r)?.code === 437) await e.authed(Method.Refresh, (w) => void w.u32(Attr.Lifetime, 0));
        setup.allocateFailed++;
        e.relayPort = 0;
        return;
      }
      e.relayPort = relayed.port;
      setup.allocations++;
    }
    await e.authed(Method.CreatePermission, (w) => peerAttrs(w, PEER_IPS.slice(0, 2)));
    for (let i = 0; i < CHANNELS.length; i++) {
      const ch = CHANNELS[i]!;
      await e.authed(Method.ChannelBind, (w) => {
        w.attr(Attr.ChannelNumber, Buffer.from([ch >> 8, ch & 255, 0, 0]));
        peerAttrs(w, [PEER_IPS[i]!]);
      });
    }
  }

  const clients = () => [u, tcp].filter((e) => e.alive);

  /** A payload of some RFC 7983 class: the flow's next valid DTLS/SRTP packet, or a mutated seed. */
  function payload(who: string, peer: number, fromClient: boolean): Buffer {
    const fs = sessionOf(who, peer);
    const r = m.int(10);
    if (r < 3) {
      // the flow's own session: hellos, then application data (SCTP, DCEP, messages,
      // sometimes a keyword or an executable the shipped rules block) and SRTP
      const s = fs.sess;
      const st = fs.step++;
      if (st < 2) return s.hello[fromClient ? 0 : 1]!.data;
      const k = m.int(8);
      if (k === 0) return s.appData(fromClient, fs.sctp.init());
      if (k === 1) return s.appData(fromClient, fs.sctp.open(1 + m.int(3), 'chat'));
      if (k === 2) return s.appData(fromClient, fs.sctp.message(1, Buffer.from('PROJECT-NIGHTINGALE plans')));
      if (k === 3) return s.appData(fromClient, fs.sctp.message(1, Buffer.concat([Buffer.from('\x7fELF'), m.bytes(60)]), true));
      if (k === 4) return s.srtp(fromClient, st, m.bytes(40 + m.int(100)));
      return s.appData(fromClient, fs.sctp.message(1, m.bytes(1 + m.int(300)), m.chance(0.5)));
    }
    if (r < 5) return Buffer.from(m.pick(corpus));
    return m.mutate(m.pick(corpus), corpus);
  }

  /** STUN requests as a client sends them, valid before mutation. */
  function requestAttrs(e: Endpoint): { method: number; attrs: { type: number; value: Buffer }[] } {
    const peer = m.int(3);
    const port = peers[peer]!.port;
    // XOR-PEER-ADDRESS is kept plain (family, port, address) and XOR-encoded when written,
    // because its encoding depends on the transaction ID (RFC 8489 §14.2)
    const xpa = (ip: string, p: number) => Buffer.from([0, 1, p >> 8, p & 255, ...ip.split('.').map(Number)]);
    const methods = [Method.Allocate, Method.Refresh, Method.CreatePermission, Method.ChannelBind, Method.Binding, 0x00a, 0xfff];
    const method = m.pick(methods);
    const attrs: { type: number; value: Buffer }[] = [];
    if (method === Method.Allocate) {
      attrs.push({ type: Attr.RequestedTransport, value: Buffer.from([m.pick([17, 17, 6, 0]), 0, 0, 0]) });
      if (m.chance(0.3)) attrs.push({ type: Attr.RequestedAddressFamily, value: Buffer.from([m.pick([1, 2, 3]), 0, 0, 0]) });
      if (m.chance(0.2)) attrs.push({ type: Attr.EvenPort, value: Buffer.from([m.pick([0, 0x80])]) });
      if (m.chance(0.2)) attrs.push({ type: Attr.DontFragment, value: Buffer.alloc(0) });
      if (m.chance(0.1)) attrs.push({ type: Attr.ReservationToken, value: m.bytes(8) });
    }
    if (method === Method.Refresh || method === Method.Allocate) {
      const lt = Buffer.alloc(4);
      lt.writeUInt32BE(m.pick([0, 1, 600, 3600, 0xffffffff, m.int(100000)]) >>> 0);
      if (m.chance(0.7)) attrs.push({ type: Attr.Lifetime, value: lt });
    }
    if (method === Method.CreatePermission || method === Method.ChannelBind) {
      const n = method === Method.ChannelBind ? 1 : 1 + m.int(3);
      for (let i = 0; i < n; i++) attrs.push({ type: Attr.XorPeerAddress, value: xpa(PEER_IPS[(peer + i) % 3]!, port) });
      if (method === Method.ChannelBind) {
        const ch = m.pick([0x4001, 0x4002, 0x4fff, 0x3fff, 0x5000, 0x7fff, 0x4000 + m.int(0x1000), m.int(0x10000)]);
        attrs.push({ type: Attr.ChannelNumber, value: Buffer.from([ch >> 8, ch & 255, 0, 0]) });
      }
    }
    if (m.chance(0.15)) attrs.push({ type: m.pick([0x0003, 0x7f00, 0x8fff, 0xc1a3, 0xc1a0]), value: m.bytes(m.int(12)) });
    if (m.chance(0.1)) attrs.push({ type: Attr.Software, value: Buffer.from('fuzz') });
    void e;
    return { method, attrs };
  }

  /** Attribute-level mutations, then signed: the request passes integrity and reaches its handler. */
  function mutateAttrs(attrs: { type: number; value: Buffer }[]): void {
    const n = 1 + m.int(2);
    for (let i = 0; i < n && attrs.length; i++) {
      const a = m.pick(attrs);
      switch (m.int(5)) {
        case 0:
          a.value = m.mutate(a.value, corpus).subarray(0, 512);
          break;
        case 1:
          a.type = m.chance(0.5) ? m.int(0x10000) : a.type ^ (1 << m.int(16));
          break;
        case 2:
          attrs.push({ type: a.type, value: Buffer.from(a.value) });
          break;
        case 3:
          attrs.splice(attrs.indexOf(a), 1);
          break;
        default:
          a.value = a.value.subarray(0, m.int(a.value.length + 1));
      }
    }
  }

  function writeAttrs(w: StunWriter, attrs: { type: number; value: Buffer }[]): void {
    for (const a of attrs) {
      if (a.type === Attr.XorPeerAddress && a.value.length === 8 && m.chance(0.9)) {
        w.xorAddressBytes(Attr.XorPeerAddress, a.value.subarray(4, 8), a.value.readUInt16BE(2));
      } else w.attr(a.type, a.value);
    }
  }

  function sendMutatedRequest(e: Endpoint, resign: boolean): void {
    const { method, attrs } = requestAttrs(e);
    if (resign) {
      mutateAttrs(attrs);
      const sha = m.chance(0.2);
      const w = new StunWriter(4096).reset(messageType(method, Class.Request), m.bytes(12));
      writeAttrs(w, attrs);
      w.attr(Attr.Username, e.user.name)
        .attr(Attr.Realm, REALM)
        .attr(Attr.Nonce, m.chance(0.95) ? e.nonce : 'stale');
      if (sha) w.integritySha256(longTermKey(e.user.name, REALM, e.user.password!, 'sha256'));
      else w.integrity(e.key);
      if (m.chance(0.3)) w.fingerprint();
      e.send(w.copy());
    } else {
      const b = e.build(method, (w) => writeAttrs(w, attrs));
      e.send(m.mutate(b, corpus));
    }
  }

  /** CreatePermission / ChannelBind refreshes carrying escrow attributes (key-escrow.md §2.2-2.3). */
  function sendEscrow(e: Endpoint, who: string): void {
    const peer = m.int(2);
    const fs = sessionOf(who, peer);
    const tid = m.bytes(12);
    const method = m.chance(0.5) ? Method.CreatePermission : Method.ChannelBind;
    const key = turnWriteKeysKey(e.key, Buffer.from(e.nonce, 'utf8'));
    const aad = Buffer.concat([Buffer.from([0x21, 0x12, 0xa4, 0x42]), tid]);
    const kind = m.int(10);
    const buf = e.build(
      method,
      (w) => {
        if (method === Method.ChannelBind) {
          const ch = CHANNELS[peer]!;
          w.attr(Attr.ChannelNumber, Buffer.from([ch >> 8, ch & 255, 0, 0]));
        }
        peerAttrs(w, [PEER_IPS[peer]!]);
        const n = kind === 9 ? 2 + m.int(6) : 1;
        for (let i = 0; i < n; i++) {
          if (kind < 3) w.attr(ATTR_WRITE_KEYS, sealWriteKeys(key, aad, encodeKeySet(fs.sess.keySet)));
          else if (kind < 6) w.attr(ATTR_WRITE_KEYS, sealWriteKeys(key, aad, m.mutate(encodeKeySet(fs.sess.keySet), corpus)));
          else if (kind < 8) w.attr(ATTR_WRITE_KEYS, m.mutate(sealWriteKeys(key, aad, encodeKeySet(fs.sess.keySet)), corpus));
          else if (kind === 8) w.attr(ATTR_KEY_DECLINE, m.mutate(Buffer.from('user declined'), corpus).subarray(0, 200));
          else w.attr(m.pick([ATTR_WRITE_KEYS, ATTR_KEY_DECLINE]), m.bytes(m.int(300)));
        }
      },
      { tid },
    );
    key.fill(0);
    // (whole-message mutation on TCP would be a framing lie: streamChunk() makes those, rarely)
    e.send(kind === 7 && !e.tcp && m.chance(0.5) ? m.mutate(buf, corpus) : buf);
    // a new association now and then: fresh hellos and keys for that flow
    if (m.chance(0.01)) sessions.delete(`${who}/${peer}`);
  }

  // On TCP a mutated frame header usually ends the connection (framing error), so frames
  // are mutated less there; streamChunk() adds its own framing lies.
  function channelData(e: Endpoint, who: string): Buffer {
    const i = m.int(2);
    let b = buildChannelData(CHANNELS[i]!, payload(who, i, true), !!e.tcp);
    if (m.chance(e.tcp ? 0.002 : 0.1)) b = m.mutate(b, corpus);
    return b;
  }

  function sendIndication(e: Endpoint, who: string): Buffer {
    const i = m.int(3);
    const w = new StunWriter(2048).reset(messageType(Method.Send, Class.Indication), m.bytes(12));
    w.xorAddress(Attr.XorPeerAddress, PEER_IPS[i]!, peers[i]!.port);
    w.attr(Attr.Data, payload(who, Math.min(i, 1), true));
    if (m.chance(0.2)) w.attr(Attr.DontFragment, Buffer.alloc(0));
    let b = w.copy();
    if (m.chance(e.tcp ? 0.002 : 0.1)) b = m.mutate(b, corpus);
    return b;
  }

  /** One TCP write: several frames (valid and mutated), sometimes the whole chunk mutated. */
  function streamChunk(e: Endpoint): Buffer[] {
    const parts: Buffer[] = [];
    const n = 1 + m.int(4);
    for (let i = 0; i < n; i++) {
      const k = m.int(4);
      if (k < 2) parts.push(channelData(e, 'tcp'));
      else if (k === 2) parts.push(sendIndication(e, 'tcp'));
      else parts.push(e.build(Method.Refresh, (w) => void w.u32(Attr.Lifetime, 600)));
    }
    let all: Buffer = Buffer.concat(parts);
    if (m.chance(0.002)) all = m.mutate(all, corpus); // framing lies: the server closes this connection
    // split at random points (the server's framer must reassemble)
    const out: Buffer[] = [];
    let off = 0;
    while (off < all.length) {
      const len = m.chance(0.5) ? all.length - off : 1 + m.int(all.length - off);
      out.push(all.subarray(off, off + len));
      off += len;
    }
    return out;
  }

  function peerDatagram(): void {
    const pi = m.int(10) < 8 ? m.int(2) : 2;
    const targets = [u, tcp].filter((e) => e.relayPort);
    if (!targets.length) return;
    const e = m.pick(targets);
    const who = e === u ? 'udp' : 'tcp';
    const b = payload(who, Math.min(pi, 1), false);
    peers[pi]!.sock.send(b, e.relayPort, '127.0.0.1');
  }

  const garbageConns = new Set<NetSocket>();
  function tcpGarbage(): void {
    // a short-lived unauthenticated TCP connection sending mutated frames, closed by us or the server
    if (garbageConns.size >= 8) return;
    const s = connect({ port: tcpPort, host: '127.0.0.1', localAddress: `127.0.3.${1 + m.int(4)}` });
    garbageConns.add(s);
    const chunks = [
      m.mutate(m.pick(corpus), corpus),
      m.mutate(
        u.build(Method.Allocate, () => {}),
        corpus,
      ),
    ];
    s.on('connect', () => {
      for (const c of chunks) s.write(c);
      s.end();
    });
    s.on('error', () => {});
    s.on('close', () => garbageConns.delete(s));
    s.on('data', () => {});
  }

  let unanswered = 0;
  async function binding(): Promise<boolean> {
    const req = new StunWriter().reset(messageType(Method.Binding, Class.Request), randomBytes(12)).fingerprint().copy();
    for (let i = 0; i < 3; i++) {
      const r = await control.request(req, 5000);
      if (r && r.cls === Class.Success) return true;
    }
    return false;
  }

  // ------------------------------------------------------------------ the run
  await establish(u);
  await establish(tcp);
  const drops0 = udpRcvbufErrors();
  const start = sample(0);
  let warm = start;
  let peakRss = start.rss;
  let sent = 0;
  let batches = 0;
  const warmAt = Math.min(o.count, Math.max(batchSize * 10, Math.floor(o.count / 10)));
  const progressEvery = Math.max(1, Math.floor(o.count / batchSize / 20));

  while (sent < o.count) {
    const n = Math.min(batchSize, o.count - sent);
    for (let i = 0; i < n; i++) {
      const r = m.int(100);
      const cs = clients();
      if (r < 22) {
        peerDatagram();
        count('peer');
      } else if (r < 40) {
        u.send(channelData(u, 'udp'));
        count('c-channeldata');
      } else if (r < 48) {
        u.send(sendIndication(u, 'udp'));
        count('c-send');
      } else if (r < 60) {
        sendMutatedRequest(m.pick(unauth), false);
        count('c-stun-mutated');
      } else if (r < 72) {
        sendMutatedRequest(cs.length ? m.pick(cs) : u, true);
        count('c-stun-resigned');
      } else if (r < 80) {
        const e = cs.length ? m.pick(cs) : u;
        sendEscrow(e, e === u ? 'udp' : 'tcp');
        count('c-escrow');
      } else if (r < 99) {
        if (tcp.alive) for (const c of streamChunk(tcp)) tcp.tcp!.write(c);
        count('tcp-stream');
      } else {
        tcpGarbage();
        count('tcp-garbage');
      }
      // let the server (same event loop) read what was sent: socket buffers stay shallow
      if ((i & 15) === 15) await tick();
    }
    sent += n;
    batches++;
    await tick();
    if (!(await binding())) unanswered++;
    clock.advance(1000);
    if (batches % 25 === 0) policyIx = (policyIx + 1) % engines.length;
    if (!tcp.alive) {
      if (!tcp.closedByUs) setup.tcpClosedByServer++;
      tcp.close();
      try {
        tcp = await Endpoint.tcp(tcpPort, '127.0.2.1', USERS[1]);
        setup.tcpReconnects++;
      } catch {
        /* counted as not reconnected; tried again next batch */
      }
      for (const k of [...sessions.keys()]) if (k.startsWith('tcp/')) sessions.delete(k);
    }
    await establish(u);
    await establish(tcp);
    const rss = process.memoryUsage().rss;
    if (rss > peakRss) peakRss = rss;
    if (sent >= warmAt && warm === start) warm = sample(sent);
    if (batches % progressEvery === 0) {
      log(
        `fuzz seed=${o.seed}: ${sent}/${o.count} inputs, heap ${(process.memoryUsage().heapUsed / 2 ** 20).toFixed(1)} MiB, ` +
          `rss ${(rss / 2 ** 20).toFixed(1)} MiB, allocations ${server.stats.allocations}, permissions ${server.stats.permissions}`,
      );
    }
  }
  // let the last datagrams drain, then measure
  for (let i = 0; i < 20; i++) await tick();
  if (!(await binding())) unanswered++;
  const end = sample(sent);
  const sups = supervisorsIn(server, inspector);
  let supervised: Record<string, number> | null = null;
  if (sups.length) {
    supervised = {};
    for (const s of sups) for (const [k, v] of s.failures) supervised[k] = (supervised[k] ?? 0) + v;
  }
  const report: LiveFuzzReport = {
    seed: o.seed,
    inputs: sent,
    byKind: counts,
    batches,
    unanswered,
    uncaught,
    supervised,
    gcAvailable: !!gc,
    memory: { start, warm, end, peakRss },
    events: events.counts,
    authFailures: { ...server.stats.authFailures },
    logged,
    setup,
    relayed: {
      clientToPeer: server.stats.packets.clientToPeer,
      peerToClient: server.stats.packets.peerToClient,
      peersReceived: peers.reduce((a, p) => a + p.received(), 0),
      clientsReceived: u.received + tcp.received,
    },
    kernelUdpDrops: udpRcvbufErrors() - drops0,
    durationMs: 0,
  };
  for (const s of garbageConns) s.destroy();
  control.close();
  u.close();
  tcp.close();
  for (const e of unauth) e.close();
  for (const p of peers) p.sock.close();
  await server.stop();
  // give late callbacks of closed sockets a chance to throw while we still listen
  for (let i = 0; i < 5; i++) await tick();
  process.off('uncaughtException', onUncaught);
  process.off('unhandledRejection', onRejection);
  report.durationMs = Date.now() - t0;
  return report;
}

/** UDP datagrams the kernel dropped for want of socket buffer (system-wide, /proc/net/snmp). */
function udpRcvbufErrors(): number {
  try {
    const lines = readFileSync('/proc/net/snmp', 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('Udp:'));
    const names = lines[0]!.split(/\s+/);
    const vals = lines[1]!.split(/\s+/);
    return Number(vals[names.indexOf('RcvbufErrors')] ?? 0);
  } catch {
    return 0;
  }
}

export function formatReport(r: LiveFuzzReport): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  return [
    `live fuzz seed ${r.seed}: ${r.inputs} inputs in ${r.batches} batches, ${(r.durationMs / 1000).toFixed(1)} s`,
    `  by kind: ${JSON.stringify(r.byKind)}`,
    `  binding unanswered after a batch: ${r.unanswered}; uncaught: ${r.uncaught.length}; supervised: ${r.supervised ? JSON.stringify(r.supervised) : 'no Supervisor exposed'}`,
    `  heapUsed start ${mib(r.memory.start.heapUsed)}, warm (${r.memory.warm.inputs}) ${mib(r.memory.warm.heapUsed)}, end ${mib(r.memory.end.heapUsed)}` +
      ` (gc ${r.gcAvailable ? 'forced' : 'not available'}); rss start ${mib(r.memory.start.rss)}, peak ${mib(r.memory.peakRss)}, end ${mib(r.memory.end.rss)}`,
    `  auth failures: ${JSON.stringify(r.authFailures)}`,
    ...r.logged.slice(0, 5).map((l) => `  logged: ${l}`),
    `  events: ${JSON.stringify(r.events)}`,
    `  set-up: ${JSON.stringify(r.setup)}; relayed: ${JSON.stringify(r.relayed)}; kernel UDP drops (system-wide): ${r.kernelUdpDrops}`,
  ].join('\n');
}

// ---------------------------------------------------------------------------------
// CLI: npm run fuzz -- [--count N] [--seed S] [--batch B]

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (name: string, dflt: number) => {
    const i = args.indexOf(`--${name}`);
    if (i < 0) return dflt;
    const v = Number(args[i + 1]);
    if (!Number.isFinite(v)) throw new Error(`--${name} needs a number`);
    return v;
  };
  if (args.includes('--help')) {
    process.stdout.write('Usage: npm run fuzz -- [--target turn|pcp] [--count 1000000] [--seed N] [--batch 400]\n');
    return;
  }
  const seed = opt('seed', (Date.now() ^ (process.pid << 16)) >>> 0) >>> 0;
  const count = opt('count', 1_000_000);
  const ti = args.indexOf('--target');
  if (ti >= 0 && args[ti + 1] === 'pcp') {
    // The PCP codec and server (scripts/fuzz-pcp.ts; test/unit/pcp-fuzz.test.ts runs 10^5).
    const { pcpFuzz, pcpFuzzProblems } = await import('./fuzz-pcp.js');
    process.stdout.write(`pcp fuzz: --seed ${seed} --count ${count}\n`);
    const r = await pcpFuzz({ count, seed });
    process.stdout.write(`${JSON.stringify({ inputs: r.inputs, answered: r.answered, results: r.results, installs: r.installs })}\n`);
    const problems = pcpFuzzProblems(r);
    if (problems.length) {
      process.stdout.write(`FAILED (replay with --target pcp --seed ${seed} --count ${count}):\n  ${problems.join('\n  ')}\n`);
      process.exitCode = 1;
    } else process.stdout.write('ok\n');
    return;
  }
  if (ti >= 0 && args[ti + 1] !== 'turn') throw new Error(`--target: turn (default) or pcp, got ${args[ti + 1]}`);
  process.stdout.write(`live fuzz: --seed ${seed} --count ${count}\n`);
  const r = await liveFuzz({ count, seed, batch: opt('batch', 400), log: (l) => process.stdout.write(l + '\n') });
  process.stdout.write(formatReport(r) + '\n');
  const problems = liveFuzzProblems(r);
  if (problems.length) {
    process.stdout.write(`FAILED (replay with --seed ${seed} --count ${count}):\n  ${problems.join('\n  ')}\n`);
    for (const u of r.uncaught.slice(0, 5)) process.stdout.write(u + '\n');
    process.exitCode = 1;
  } else process.stdout.write('ok\n');
}

/** Heap growth allowed between the warm-up sample and the end, both after a full GC. */
//  The fuzz keeps at most ~4 allocations alive (two clients, plus what their fuzzed Allocates
//  make before the next set-up deletes them): 4 × gateway.allocation_buffer_bytes (4 MiB)
//  of held packets and reassembly = 16 MiB, plus ~40 s of STUN transaction cache and
//  nonces (~3 MiB at this rate), with the rest as slack for V8's own variance.
export const HEAP_GROWTH_BOUND = 32 * 2 ** 20;
/** RSS growth allowed over the start when no GC can be forced (then heap figures mean little). */
export const RSS_GROWTH_BOUND = 256 * 2 ** 20;

/** The properties of a run; empty when it held. */
export function liveFuzzProblems(r: LiveFuzzReport): string[] {
  const p: string[] = [];
  if (r.uncaught.length) p.push(`${r.uncaught.length} uncaught exceptions / unhandled rejections`);
  if (r.unanswered) p.push(`${r.unanswered} batches after which the server did not answer a Binding`);
  if (r.supervised && Object.keys(r.supervised).length) p.push(`exceptions contained by the Supervisor: ${JSON.stringify(r.supervised)}`);
  if (r.gcAvailable) {
    const g = r.memory.end.heapUsed - r.memory.warm.heapUsed;
    if (g > HEAP_GROWTH_BOUND)
      p.push(`heapUsed grew ${(g / 2 ** 20).toFixed(1)} MiB after warm-up (bound ${HEAP_GROWTH_BOUND / 2 ** 20} MiB)`);
  }
  const rg = r.memory.end.rss - r.memory.start.rss;
  if (rg > RSS_GROWTH_BOUND) p.push(`rss grew ${(rg / 2 ** 20).toFixed(1)} MiB (bound ${RSS_GROWTH_BOUND / 2 ** 20} MiB)`);
  return p;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().then(
    () => process.exit(process.exitCode ?? 0),
    (e) => {
      process.stderr.write(`${(e as Error).stack}\n`);
      process.exit(1);
    },
  );
}
