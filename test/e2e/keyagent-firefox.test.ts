/**
 * Issue 15, proof: unmodified Firefox ESR inspected with keys required, thanks to the
 * desktop key agent (`gatehouse keyagent`, key-escrow.md §6).
 *
 * The Firefox harness (scripts/browser/harness.ts: headless Firefox ESR in a private
 * network namespace, SSLKEYLOGFILE, iceTransportPolicy 'relay', one page whose two
 * RTCPeerConnections call each other) gets as its only TURN server `gatehouse serve` with
 * `keys: {required: true, deadline: 3s}` (test/e2e/helpers/keyagent-gateway.ts). Both legs
 * of the call go through the gateway as flows of one user; one agent follows the one key
 * log the page's Firefox writes (both RTCPeerConnections are in it).
 *  - with the agent: keys verified on the call's flows within the deadline, the page's call
 *    completes, every data-channel message (with the 150 KB object) is in the gateway's
 *    events with the SHA-256 the page computed, SRTP decrypted; a `contains` rule on a
 *    message the page sends blocks the flow;
 *  - without the agent: the call is blocked with keys_missing;
 *  - an agent with another user's credential cannot unlock it (keys_missing);
 *  - against `gatehouse serve` directly: a forged KeyEscrow (bad integrity) gets 401 and a
 *    replayed one 438; neither applies anything.
 *
 * Needs firefox-esr and dumpcap (the harness captures); skipped when missing, a failure in CI.
 */
import t, { type Test } from 'tap';
import { createRequire } from 'node:module';
import { createSocket } from 'node:dgram';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runFirefoxCall, type FirefoxCallResult } from '../../scripts/browser/harness.js';
import { peerSkip } from './helpers/require-peer.js';
import { startGatehouse } from './helpers/turn-servers.js';
import { Client, errCode } from '../unit/turn/helpers.js';
import { Attr, decodeStun, getString } from '../../src/wire/stun.js';
import { METHOD_KEY_ESCROW } from '../../src/wire/keyescrow.js';
import { writeKeys } from '../unit/gateway/escrow-helpers.js';
import type { KeySet } from '../../src/wire/keyset.js';

const here = dirname(fileURLToPath(import.meta.url));
const missing = peerSkip(t, 'firefox-esr', 'dumpcap');
const missingChromium = peerSkip(t, 'firefox-esr', 'dumpcap', 'chromium');

/**
 * Firefox DTLS 1.3 (both RTCPeerConnections in one page), Firefox DTLS 1.2, and Firefox
 * calling headless Chromium (only Firefox writes a key log; it covers both legs).
 */
const VARIANTS = [
  { name: 'agent', label: 'Firefox ↔ Firefox, DTLS 1.3', dtls: '1.3', peer: 'none' },
  { name: 'agent12', label: 'Firefox ↔ Firefox, DTLS 1.2', dtls: '1.2', peer: 'none' },
  { name: 'agentcr', label: 'Firefox ↔ Chromium', dtls: '1.3', peer: 'chromium' },
] as const;

type Eve = Record<string, any> & { event_type: string; flow_id?: number };

const KEYS = 'keys:\n  required: true\n  deadline: 3s\n  unverified: hold\n  block_for: 5m\n';
const USER = { name: 'alice', password: 'alice-' + randomBytes(6).toString('hex') };
const MALLORY = { name: 'mallory', password: 'mallory-' + randomBytes(6).toString('hex') };

async function call(
  t: Test,
  name: string,
  rules: string,
  agents: { user: string; password: string }[],
  how: { dtls?: '1.2' | '1.3'; peer?: 'none' | 'chromium' } = {},
): Promise<{ r: FirefoxCallResult; events: Eve[]; agentOut: Eve[]; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), `gh-keyagent-${name}-`));
  if (!process.env.GH_KEEP) t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  else t.comment(`output in ${dir}`);
  const spec = join(dir, 'spec.json');
  writeFileSync(spec, JSON.stringify({ rules, users: [MALLORY], agents }));
  const tsx = createRequire(import.meta.url).resolve('tsx/cli');
  const out = join(dir, 'out');
  const r = await runFirefoxCall({
    outDir: out,
    dtls: how.dtls ?? '1.3',
    peer: how.peer ?? 'none',
    timeoutMs: 60_000,
    turn: {
      argv: [
        process.execPath,
        tsx,
        join(here, 'helpers', 'keyagent-gateway.ts'),
        spec,
        '{ip}',
        '{port}',
        '{minPort}',
        '{maxPort}',
        '{user}',
        '{pass}',
        '{realm}',
        '{outDir}',
      ],
      username: USER.name,
      password: USER.password,
      realm: 'gatehouse.local',
    },
  });
  const lines = (f: string): Eve[] =>
    existsSync(f)
      ? readFileSync(f, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Eve)
      : [];
  const events = lines(join(out, 'gh', 'data', 'events.jsonl'));
  const agentOut = agents.flatMap((_, i) => lines(join(out, 'gh', `keyagent-${i}.jsonl`)));
  return { r, events, agentOut, dir: out };
}

const count = (xs: string[]) => {
  const m = new Map<string, number>();
  for (const x of xs) m.set(x, (m.get(x) ?? 0) + 1);
  return [...m.entries()].sort((a, b) => a[0].localeCompare(b[0]));
};
const reasons = (evs: Eve[]) => evs.filter((e) => e.event_type === 'flow_blocked').map((e) => e.gatehouse?.reason);

for (const v of VARIANTS)
  t.test(
    `with the key agent (${v.label}): keys verified within 3 s, the call works, every message and SRTP inspected`,
    { skip: v.peer === 'chromium' ? missingChromium : missing, timeout: 240_000 },
    async (t) => {
      const { r, events, agentOut, dir } = await call(t, v.name, `${KEYS}rules: []\n`, [{ user: USER.name, password: USER.password }], v);
      const diag = () =>
        `report errors ${JSON.stringify(r.report.errors)}; blocked ${JSON.stringify(reasons(events))}; agent ${JSON.stringify(agentOut.slice(0, 20))}; dir ${dir}`;
      t.ok(r.report.ok, `the page's call completed: ${diag()}`);
      t.same(reasons(events), [], `no flow blocked: ${diag()}`);
      const verified = events.filter((e) => e.event_type === 'keys_verified');
      const flows = new Set(verified.map((e) => e.flow_id));
      t.ok(flows.size >= 2, `keys_verified on both legs' flows (${flows.size})`);
      t.ok(
        agentOut.some((e) => e.event === 'escrowed' && e.status === 1),
        'the agent saw KEY-STATUS verified',
      );
      t.notOk(
        agentOut.some((e) => e.event === 'error'),
        `no agent errors: ${JSON.stringify(agentOut.filter((e) => e.event === 'error'))}`,
      );
      // Within the deadline: every keys_verified precedes any deadline (nothing blocked above),
      // and follows the flow's handshake by less than 3 s.
      for (const v of verified) {
        const hs = events.find((e) => e.event_type === 'dtls.handshake' && e.flow_id === v.flow_id);
        if (hs)
          t.ok(
            Date.parse(v.timestamp) - Date.parse(hs.timestamp) < 3000,
            `flow ${v.flow_id}: verified ${Date.parse(v.timestamp) - Date.parse(hs.timestamp)} ms after its ServerHello`,
          );
      }
      const sent = r.report.sent;
      const big = sent.find((m) => m.size >= 150_000);
      t.ok(big, 'the page sent a 150 KB object');
      const byFlow = new Map<number, Eve[]>();
      for (const e of events) if (e.flow_id !== undefined) byFlow.set(e.flow_id, [...(byFlow.get(e.flow_id) ?? []), e]);
      const callFlows = [...byFlow.values()].filter((es) => es.some((e) => e.event_type === 'datachannel.message'));
      t.ok(callFlows.length >= 1, `data-channel messages in the gateway's events (${callFlows.length} flows)`);
      for (const es of callFlows) {
        const msgs = es
          .filter((e) => e.event_type === 'datachannel.message')
          .map((e) => e.datachannel as { sha256: string; size: number; label: string });
        t.same(
          count(msgs.map((m) => `${m.label}:${m.sha256}`)),
          count(sent.map((m) => `${m.label}:${m.sha256}`)),
          `flow ${es[0]!.flow_id}: every message, SHA-256 as the page computed`,
        );
        t.ok(
          msgs.some((m) => m.sha256 === big!.sha256 && m.size === big!.size),
          `flow ${es[0]!.flow_id}: the ${big!.size}-byte object`,
        );
      }
      const media = events.filter((e) => e.event_type === 'rtp.stream' || (e.event_type === 'keys_verified' && e.keys?.what === 'srtp'));
      t.ok(
        media.length > 0 || events.some((e) => JSON.stringify(e).includes('"srtp"')),
        `SRTP decrypted: ${JSON.stringify(media.slice(0, 3))}`,
      );
      t.notOk(
        events.some((e) => e.event_type === 'undecryptable' && e.gatehouse?.reason === 'auth_failed'),
        'nothing failed to authenticate',
      );
    },
  );

t.test('a contains rule on a message the page sends blocks the flow (with the agent)', { skip: missing, timeout: 240_000 }, async (t) => {
  const rules = `${KEYS}rules:\n  - id: marker\n    when:\n      contains: ["reply from pc2 #2"]\n    action: block\n`;
  const { events } = await call(t, 'rule', rules, [{ user: USER.name, password: USER.password }]);
  t.ok(
    events.some((e) => e.event_type === 'alert' && e.alert?.signature_id === 'marker'),
    'alert for the marker',
  );
  t.ok(reasons(events).includes('policy'), `blocked by policy: ${JSON.stringify(reasons(events))}`);
});

t.test('without the agent: the call is blocked with keys_missing', { skip: missing, timeout: 240_000 }, async (t) => {
  const { r, events } = await call(t, 'none', `${KEYS}rules: []\n`, []);
  t.notOk(r.report.ok, 'the call does not complete');
  t.ok(reasons(events).includes('keys_missing'), `keys_missing: ${JSON.stringify(reasons(events))}`);
  t.same(
    events.filter((e) => e.event_type === 'keys_verified'),
    [],
  );
  t.same(
    events.filter((e) => e.event_type === 'datachannel.message'),
    [],
    'nothing relayed uninspected',
  );
});

t.test("an agent with another user's credential cannot unlock the call", { skip: missing, timeout: 240_000 }, async (t) => {
  const { r, events, agentOut } = await call(t, 'mallory', `${KEYS}rules: []\n`, [{ user: MALLORY.name, password: MALLORY.password }]);
  t.notOk(r.report.ok, 'the call does not complete');
  t.ok(reasons(events).includes('keys_missing'), `keys_missing: ${JSON.stringify(reasons(events))}`);
  t.same(
    events.filter((e) => e.event_type === 'keys_received'),
    [],
    'no key set reached the flows',
  );
  t.notOk(
    agentOut.some((e) => e.event === 'escrowed'),
    "mallory's agent was never told about alice's associations",
  );
});

t.test('gatehouse serve refuses a forged and a replayed KeyEscrow request', async (t) => {
  const gh = await startGatehouse({
    realm: 'gatehouse.local',
    users: [{ name: 'alice', password: 'secret' }],
    rules: `${KEYS}rules: []\n`,
    transports: ['udp'],
  });
  t.teardown(() => gh.stop());
  const c = await Client.udp(gh.port);
  t.teardown(() => c.close());
  const r0 = await c.request(METHOD_KEY_ESCROW);
  t.equal(errCode(r0), 401, 'challenge');
  c.nonce = getString(r0, Attr.Nonce);
  const ks: KeySet = {
    clientRandom: randomBytes(32),
    serverRandom: randomBytes(32),
    cipherSuite: 0xc02b,
    epoch: 1,
    clientWriteKey: randomBytes(16),
    serverWriteKey: randomBytes(16),
    clientWriteIv: randomBytes(4),
    serverWriteIv: randomBytes(4),
  };
  const forged = await c.request(METHOD_KEY_ESCROW, writeKeys(c, randomBytes(12), [ks]), true, { password: 'guessed' });
  t.equal(errCode(forged), 401, 'forged (bad integrity): 401');
  const tid = randomBytes(12);
  const bytes = c.build(METHOD_KEY_ESCROW, writeKeys(c, tid, [ks]), true, { tid });
  const send = async (b: Buffer): Promise<ReturnType<typeof decodeStun>> => {
    const s = createSocket('udp4');
    await new Promise<void>((res) => s.bind(0, '127.0.0.1', () => res()));
    try {
      const p = new Promise<Buffer>((res) => s.on('message', (m) => res(m)));
      s.send(b, gh.port, '127.0.0.1');
      return decodeStun(await p);
    } finally {
      s.close();
    }
  };
  const first = await send(bytes);
  t.equal(first?.cls, 0b10, 'the original: success (held: KEY-STATUS 0)');
  const replay = await send(bytes);
  t.equal(errCode(replay!), 438, 'the same request again from another port: 438');
  t.ok(getString(replay!, Attr.Nonce), 'with a fresh NONCE');
});
