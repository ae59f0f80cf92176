/**
 * Issue 11 "Speed": the conferencing core through the director.
 *
 * 1. Joins/s: guests join conferences (core.md §4.3: POST /v1/conferences/{id}/join, the
 *    401 challenge, then the RFC 7616 Digest retry; a fresh identity per join) through
 *    `gatehouse serve` (a) with its embedded FE, (b) with two `gatehouse core-fe`
 *    processes (conferences spread over both FE ids), from N concurrent clients in this
 *    process for a fixed time. Reported: joins/s, p50/p99 of the whole join (both
 *    requests), non-200 answers by status.
 *    The failed-authentication limit (src/core/ratelimit.ts, 10 per minute per source)
 *    is fed only by a Digest that does not verify (conferences.ts join(): limiter.fail
 *    after verify), not by the 401 challenge step: one source address suffices.
 * 2. Signalling latency: 200 guests in one conference on /v1/signal (hello, join); one
 *    sender sends (a) offers to one named peer, (b) chats fanned out to the other 199;
 *    the send time (performance.timeOrigin + now(), same process) is in the sdp / text
 *    and the latency is taken at the receiver. The sender stays under the per-connection
 *    token bucket (50 messages/s, signal.ts DEFAULT_SIGNAL_LIMITS).
 * Figures are reported, never asserted.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import { freeTcpPort, freeUdpPort } from './lib/ports.js';
import { onCleanup, start, stop, type Proc } from './lib/procs.js';
import { markdownTable, fmt } from './lib/table.js';
// The core's HTTP client calls as the e2e tests make them (core.md §3, §4).
import { call, encryptKey, joinAsGuest, loginUser, newConferenceKey } from '../test/e2e/helpers/core-guest.js';

const BIN = join(process.cwd(), 'bin', 'gatehouse.js');
/** conferences the join load is spread over (each holds at most 1000 live identities) */
const CONFS = 32;
const now = () => performance.timeOrigin + performance.now();

function pct(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function until(what: string, fn: () => Promise<boolean>, alive: () => string | null, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const dead = alive();
    if (dead) throw new Error(`${what}: ${dead}`);
    try {
      if (await fn()) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Setup {
  base: string;
  procs: Proc[];
  token: string;
  /** conferences with their keys, created round-robin over the FE ids offered */
  confs: { id: string; k: string; fe: string }[];
  feIds: number;
}

async function setUp(dir: string, name: string, fes: number, conferences: number): Promise<Setup> {
  const poolSecret = randomBytes(30).toString('base64url');
  const password = randomBytes(12).toString('base64url');
  const procs: Proc[] = [];
  const gone = () => {
    const p = procs.find((x) => !x.isRunning());
    return p ? `${p.name} exited: ${p.tail()}` : null;
  };
  const pool: string[] = [];
  for (let i = 0; i < fes; i++) {
    const port = await freeTcpPort();
    const cfg = join(dir, `${name}-fe${i}.yaml`);
    writeFileSync(
      cfg,
      `data_dir: ${join(dir, `${name}-fe${i}`)}\nlog_level: warn\ncore:\n  listen: http://127.0.0.1:${port}\n  pool_secret: ${poolSecret}\n`,
    );
    const p = start(`${name}-fe${i}`, process.execPath, [BIN, 'core-fe', '--config', cfg], { cwd: dir });
    procs.push(p);
    pool.push(`http://127.0.0.1:${port}`);
  }
  const turnPort = await freeUdpPort();
  const pcpPort = await freeUdpPort();
  const corePort = await freeTcpPort();
  const adminPort = await freeTcpPort();
  const relayLow = 40000 + (turnPort % 2000) * 10;
  const cfg = join(dir, `${name}-director.yaml`);
  writeFileSync(
    cfg,
    `data_dir: ${join(dir, `${name}-director`)}
realm: gatehouse.bench
log_level: warn
users:
  - { name: alice, password: "${password}", groups: [staff] }
turn:
  listen: [udp://127.0.0.1:${turnPort}]
  relay_ports: [${relayLow}, ${relayLow + 9}]
pcp:
  listen: [udp://127.0.0.1:${pcpPort}]
  external_address: 192.0.2.1
admin:
  listen: http://127.0.0.1:${adminPort}
core:
  listen: http://127.0.0.1:${corePort}
${fes ? `  pool: [${pool.join(', ')}]\n  pool_secret: ${poolSecret}\n` : ''}`,
  );
  procs.push(start(`${name}-director`, process.execPath, [BIN, 'serve', '--config', cfg], { cwd: dir }));
  const base = `http://127.0.0.1:${corePort}`;
  await until(`${name} director`, async () => (await call(base, 'GET', '/v1/conference-key')).status === 401, gone);

  const token = await loginUser(base, 'alice', password);
  const keys = new Map<string, string>();
  for (let i = 0; i < 20 && keys.size < Math.max(1, fes); i++) {
    const r = await call(base, 'GET', '/v1/conference-key', { token });
    if (r.status === 200) keys.set(r.json.fe, r.json.public_key);
  }
  const ids = [...keys];
  const confs: Setup['confs'] = [];
  for (let i = 0; i < conferences; i++) {
    const [fe, pem] = ids[i % ids.length]!;
    const k = newConferenceKey();
    const enc = encryptKey(pem, k);
    const r = await call(base, 'POST', '/v1/conferences', { token, body: { fe, key: enc, title: `bench ${i}` } });
    if (r.status !== 201) throw new Error(`${name}: create conference answered ${r.status}`);
    confs.push({ id: r.json.id, k, fe });
  }
  return { base, procs, token, confs, feIds: ids.length };
}

export interface JoinRow {
  director: string;
  feIds: number;
  clients: number;
  seconds: number;
  joins: number;
  joinsPerS: number;
  p50Ms: number;
  p99Ms: number;
  non200: string;
}

async function joinLoad(s: Setup, label: string, clients: number, seconds: number): Promise<JoinRow> {
  let seq = 0;
  const lat: number[] = [];
  const bad = new Map<string, number>();
  const run = `${Date.now().toString(36)}`;
  const warmEnd = Date.now() + 1000;
  const end = warmEnd + seconds * 1000;
  let t0 = 0;
  const worker = async () => {
    while (Date.now() < end) {
      const n = seq++;
      const c = s.confs[n % (s.confs.length - 1)]!; // the last one is kept for signalling
      const a = now();
      let status: string;
      try {
        status = String((await joinAsGuest(s.base, c.id, `g${run}-${n}`, c.k)).answer.status);
      } catch (e) {
        status = `error ${(e as Error).message}`;
      }
      const b = now();
      if (a < t0 || !t0) continue; // warm-up second: not counted
      if (status === '200') lat.push(b - a);
      else bad.set(status, (bad.get(status) ?? 0) + 1);
    }
  };
  setTimeout(() => (t0 = now()), warmEnd - Date.now());
  await Promise.all(Array.from({ length: clients }, worker));
  const measured = (now() - t0) / 1000;
  lat.sort((x, y) => x - y);
  return {
    director: label,
    feIds: s.feIds,
    clients,
    seconds: Number(measured.toFixed(1)),
    joins: lat.length,
    joinsPerS: lat.length / measured,
    p50Ms: pct(lat, 50),
    p99Ms: pct(lat, 99),
    non200: bad.size ? [...bad].map(([k, v]) => `${k}: ${v}`).join(', ') : 'none',
  };
}

export interface SignalRow {
  case: string;
  participants: number;
  sent: number;
  deliveries: number;
  expected: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

class Sig {
  ws: WebSocket;
  opened: Promise<void>;
  private waiters: Array<{ type: string; fn: (m: any) => void }> = []; // eslint-disable-line @typescript-eslint/no-explicit-any
  onMessage: ((m: any, at: number) => void) | null = null; // eslint-disable-line @typescript-eslint/no-explicit-any
  constructor(url: string) {
    this.ws = new WebSocket(url);
    this.opened = new Promise((res, rej) => {
      this.ws.once('open', () => res());
      this.ws.once('error', rej);
    });
    this.ws.on('message', (d) => {
      const at = now();
      const m = JSON.parse(String(d));
      const w = this.waiters.findIndex((x) => x.type === m.type);
      if (w >= 0) return this.waiters.splice(w, 1)[0]!.fn(m);
      this.onMessage?.(m, at);
    });
  }
  send(m: unknown) {
    this.ws.send(JSON.stringify(m));
  }
  next(type: string, ms = 20_000): Promise<any> {
    // eslint-disable-line @typescript-eslint/no-explicit-any
    return new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`no ${type} within ${ms} ms`)), ms);
      this.waiters.push({ type, fn: (m) => (clearTimeout(timer), res(m)) });
    });
  }
}

async function signalBench(s: Setup, participants: number, messages: number, ratePerS: number): Promise<SignalRow[]> {
  // A conference of its own: the join load may have filled the others towards the FE's
  // 1000 live identities per conference (store.ts MAX_IDENTITIES_PER_CONFERENCE).
  const conf = s.confs[s.confs.length - 1]!;
  const wsUrl = s.base.replace(/^http/, 'ws') + '/v1/signal';
  const run = Date.now().toString(36);
  const members: { c: Sig; peer: string }[] = [];
  try {
    // Join and connect a few at a time (the director is on the same 2 cores).
    for (let i = 0; i < participants; i += 20) {
      await Promise.all(
        Array.from({ length: Math.min(20, participants - i) }, async (_x, j) => {
          const { answer: a } = await joinAsGuest(s.base, conf.id, `s${run}-${i + j}`, conf.k);
          if (a.status !== 200) throw new Error(`signal join answered ${a.status}`);
          const c = new Sig(wsUrl);
          await c.opened;
          c.send({ type: 'hello', token: a.json.token });
          await c.next('hello');
          c.send({ type: 'join', conference: conf.id });
          const jn = await c.next('join');
          members.push({ c, peer: jn.peer as string });
        }),
      );
    }
    const [sender, target] = [members[0]!, members[members.length - 1]!];
    const measure = async (kind: 'offer' | 'chat'): Promise<SignalRow> => {
      const lat: number[] = [];
      for (const m of members) {
        m.c.onMessage = (msg, at) => {
          if (msg.type !== kind || m === sender) return;
          const body = kind === 'offer' ? msg.sdp : msg.text;
          const sent = Number(/^bench:(\d+(?:\.\d+)?)/.exec(String(body))?.[1]);
          if (Number.isFinite(sent)) lat.push(at - sent);
        };
      }
      const gap = 1000 / ratePerS;
      for (let i = 0; i < messages; i++) {
        const stamp = `bench:${now().toFixed(3)}`;
        if (kind === 'offer') sender.c.send({ type: 'offer', to: target.peer, sdp: `${stamp}\r\nv=0\r\n` });
        else sender.c.send({ type: 'chat', text: stamp });
        await new Promise((r) => setTimeout(r, gap));
      }
      const expected = kind === 'offer' ? messages : messages * (members.length - 1);
      const end = Date.now() + 10_000;
      while (lat.length < expected && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      lat.sort((x, y) => x - y);
      return {
        case: kind === 'offer' ? 'offer to one named peer' : `chat fan-out to ${members.length - 1}`,
        participants: members.length,
        sent: messages,
        deliveries: lat.length,
        expected,
        p50Ms: pct(lat, 50),
        p99Ms: pct(lat, 99),
        maxMs: lat.length ? lat[lat.length - 1]! : NaN,
      };
    };
    return [await measure('offer'), await measure('chat')];
  } finally {
    for (const m of members) m.c.ws.terminate();
  }
}

export interface CoreBenchResult {
  joins: JoinRow[];
  signal: SignalRow[];
  notes: string[];
  table: string;
}

export async function runCoreBench(opts: { quick?: boolean; clients?: number; seconds?: number } = {}): Promise<CoreBenchResult> {
  const quick = !!opts.quick;
  const clients = opts.clients ?? (quick ? 8 : 32);
  const seconds = opts.seconds ?? (quick ? 3 : 15);
  const participants = 200;
  const messages = quick ? 20 : 100;
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-core-'));
  const cleanup = onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const joins: JoinRow[] = [];
  let signal: SignalRow[] = [];
  try {
    {
      const s = await setUp(dir, 'embedded', 0, CONFS + 1);
      try {
        process.stderr.write(`core: joins, embedded FE, ${clients} clients, ${seconds} s\n`);
        joins.push(await joinLoad(s, 'serve, embedded FE', clients, seconds));
        process.stderr.write(`core: signalling, ${participants} participants\n`);
        signal = await signalBench(s, participants, messages, 20);
      } finally {
        for (const p of s.procs.reverse()) await stop(p);
      }
    }
    {
      const s = await setUp(dir, 'pool', 2, CONFS + 1);
      try {
        process.stderr.write(`core: joins, two core-fe, ${clients} clients, ${seconds} s\n`);
        joins.push(await joinLoad(s, 'serve + 2 core-fe', clients, seconds));
      } finally {
        for (const p of s.procs.reverse()) await stop(p);
      }
    }
  } finally {
    cleanup();
  }
  const notes = [
    `Joins: ${clients} concurrent clients (one Node process, undici fetch, keep-alive) for ${seconds} s after a 1 s unreported warm-up, over ${CONFS} conferences (round-robin over the FE ids offered); each join is the 401 challenge plus the Digest retry with a fresh identity, and the latency covers both requests. All processes share the same cores as the load generator.`,
    'An FE holds at most 1000 live identities per conference (src/core/fe/store.ts MAX_IDENTITIES_PER_CONFERENCE), and a join over that cap is answered 409 conference_full; the load is spread wide enough not to reach it.',
    'The failed-authentication limit (10/min/source) counts only a Digest that does not verify (src/core/conferences.ts join()), not the 401 challenge, so one source address (127.0.0.1) was used.',
    `Signalling: ${participants} guests in one conference of \`gatehouse serve\` (embedded FE), connected to /v1/signal (hello, join); one sender sends ${messages} messages at 20/s (under the 50/s per-connection bucket); the send time is in the sdp/text, the latency is taken at the receiver in the same process (one clock), so it includes the bench process's own event loop handling 199 receivers.`,
  ];
  const table = [
    markdownTable(
      ['director', 'FE ids', 'clients', 's', 'joins', 'joins/s', 'p50 ms', 'p99 ms', 'non-200'],
      joins.map((r) => [
        r.director,
        r.feIds,
        r.clients,
        r.seconds,
        r.joins,
        fmt(r.joinsPerS, 1),
        fmt(r.p50Ms, 1),
        fmt(r.p99Ms, 1),
        r.non200,
      ]),
      ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l'],
    ),
    '',
    markdownTable(
      ['signalling', 'participants', 'sent', 'delivered', 'expected', 'p50 ms', 'p99 ms', 'max ms'],
      signal.map((r) => [r.case, r.participants, r.sent, r.deliveries, r.expected, fmt(r.p50Ms, 2), fmt(r.p99Ms, 2), fmt(r.maxMs, 2)]),
      ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    ),
    '',
    ...notes.map((n) => `- ${n}`),
  ].join('\n');
  return { joins, signal, notes, table };
}
