/**
 * Desktop key agent benchmark (issue 15, key-escrow.md §6), reported, never asserted:
 * key-log line written → keys_verified at the gateway, p50/p99.
 *
 * An in-process TurnServer + GatewayInspector (system clock, keys required, unverified:
 * hold) on loopback UDP, and `KeyAgent` (src/keyagent/agent.ts: inotify tail of a key-log
 * file, KeyEscrow client with a pinned certificate) in the same process. Per round: a
 * fresh allocation and ChannelBind, a real OpenSSL DTLS 1.2 AES-128-GCM + SRTP session
 * (test/fixtures/openssl/gcm128-srtp-reneg.json) relayed up to its held application data;
 * then its NSS key-log lines are appended to the file (t0, after the write returned) and
 * the time of the flow's keys_verified event is taken (t1, performance.now() in the sink).
 * This covers the tail's notification, the pending query, the WRITE-KEYS round trip and
 * the gateway's verification against the held records. The allocation is deleted after
 * each round (Refresh, LIFETIME 0); rounds are 80 ms apart (KeyEscrow's 50/s per user).
 *
 *   npx tsx bench/keyagent.ts [--rounds N]      (default 100)
 */
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createHash, X509Certificate } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { systemClock } from '../src/util/clock.js';
import type { EveEvent, EventSink } from '../src/events/eve.js';
import { PolicyEngine } from '../src/policy/engine.js';
import { parseRuleFile } from '../src/policy/rules-schema.js';
import { GatewayInspector } from '../src/gateway/inspector.js';
import { KeyAgent } from '../src/keyagent/agent.js';
import { KeyEscrowClient } from '../src/keyagent/client.js';
import { GatewayTrust } from '../src/endpoint/trust.js';
import { Attr, Class, Method, getXorAddress } from '../src/wire/stun.js';
import { Client, peerSocket, startServer } from '../test/unit/turn/helpers.js';
import { bindAttrs, relayOne, testIdentity, type EscrowRig } from '../test/unit/gateway/escrow-helpers.js';
import { fixtureFlow } from '../test/unit/gateway/flow-guard-helpers.js';
import { loadFixture } from '../test/unit/inspect/dtls-session-helpers.js';

const RULES = 'keys:\n  required: true\n  deadline: 10s\n  unverified: hold\n  block_for: 5m\nrules: []\n';

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export async function runKeyagentBench(
  opt: number | { quick?: boolean } = 100,
): Promise<{ p50: number; p99: number; min: number; max: number; n: number }> {
  const rounds = typeof opt === 'number' ? opt : opt.quick ? 20 : 200;
  const identity = await testIdentity();
  const engine = new PolicyEngine([parseRuleFile(RULES, 'bench.yaml')]);
  let waiter: ((t: number) => void) | null = null;
  const events: EventSink = {
    emit(e: EveEvent) {
      if (e.event_type === 'keys_verified' && waiter) waiter(performance.now());
    },
    close() {},
  };
  const inspector = new GatewayInspector({ policy: () => engine, identity, events, clock: systemClock });
  // The bench makes an allocation per round from one source: the per-source rates are lifted.
  const lift = (c: { turn: { allocate_rate_per_source: number; unauthorized_rate_per_source: number } }): void => {
    c.turn.allocate_rate_per_source = 100_000;
    c.turn.unauthorized_rate_per_source = 100_000;
  };
  const h = await startServer(lift, {
    clock: systemClock as never,
    events,
    flowHooks: inspector,
    extensions: [inspector.extension],
    keyEscrow: inspector.keyEscrow,
  });
  inspector.attach(h.server);
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-keyagent-'));
  const keylog = join(dir, 'keylog.txt');
  writeFileSync(keylog, '');
  const fp = createHash('sha256').update(new X509Certificate(identity.certificatePem).raw).digest('hex');
  const client = new KeyEscrowClient({
    host: '127.0.0.1',
    port: h.udpPort,
    credentials: () => ({ username: 'alice', password: 'secret' }),
    trust: new GatewayTrust({ pinnedFingerprints: [fp] }),
    certificatePem: identity.certificatePem,
  });
  const agent = new KeyAgent({ keylog, client });
  agent.on('error', (e: Error) => process.stderr.write(`agent: ${e.message}\n`));
  agent.start();
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const lines = loadFixture('gcm128-srtp-reneg.json').keylog + '\n';
  const out: number[] = [];
  try {
    for (let i = 0; i < rounds; i++) {
      const c = await Client.udp(h.udpPort);
      const peer = await peerSocket();
      try {
        const r = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
        if (r.cls !== Class.Success) throw new Error('allocate failed');
        const relayPort = getXorAddress(r, Attr.XorRelayedAddress)!.port;
        await c.authed(Method.ChannelBind, bindAttrs(0x4001, peer.port));
        const rig = { c, peer, relayPort } as unknown as EscrowRig;
        for (const p of f.packets.slice(0, 13)) await relayOne(rig, 0x4001, p.dir, p.data);
        const done = new Promise<number>((res, rej) => {
          const to = setTimeout(() => rej(new Error('no keys_verified within 5 s')), 5000);
          waiter = (t) => {
            clearTimeout(to);
            waiter = null;
            res(t);
          };
        });
        appendFileSync(keylog, lines);
        const t0 = performance.now();
        out.push((await done) - t0);
        await c.authed(Method.Refresh, (w) => void w.attr(Attr.Lifetime, Buffer.from([0, 0, 0, 0])));
        // KeyEscrow allows 50 requests/s per user (§6.3); a round takes 2-3: pace the rounds.
        await new Promise((res) => setTimeout(res, 80));
      } finally {
        c.close();
        peer.close();
      }
    }
  } finally {
    agent.stop();
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return { p50: pct(out, 50), p99: pct(out, 99), min: Math.min(...out), max: Math.max(...out), n: out.length };
}

if (process.argv[1]?.endsWith('keyagent.ts')) {
  const i = process.argv.indexOf('--rounds');
  const n = i > 0 ? Number(process.argv[i + 1]) : 100;
  const r = await runKeyagentBench(n);
  process.stdout.write(
    `key-log line written → keys_verified (${r.n} rounds): p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms (min ${r.min.toFixed(2)}, max ${r.max.toFixed(2)})\n`,
  );
  process.exit(0);
}
