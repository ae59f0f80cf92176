/**
 * Issue 10, proof 1: a call through the firewall path, on a real kernel.
 *
 *   lan (10.61.1.2)  ── gw: `gatehouse serve` (PCP on 10.61.1.1:5351, external 203.0.113.1,
 *                          nftables + NFQUEUE) ──  wan (203.0.113.2)
 *
 * The werift agent in lan (`gatehouse endpoint --pcp`) authenticates with EAP-TLS (RFC
 * 7652, its client certificate), MAPs its host candidate, advertises the mapped address as
 * srflx and calls a plain werift peer in wan, which has no route to lan: every packet goes
 * through the mapping's kernel rules and the gateway's NFQUEUE reader. Checked: the mapping
 * in `nft list ruleset` while the call runs and gone after; keys escrowed over PCP and
 * verified; each data-channel message and a file over 200 KB arrive intact and the
 * gateway's events carry the same SHA-256; audio is decrypted (rtp.stream); a `block` rule
 * ends the flow (mapping and rules gone); KEY_DECLINE and no keys by the deadline each block.
 */
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { threeNamespaces, THREE_NS, type ThreeNs } from './helpers/netns.js';
import { makePki, type Pki } from './helpers/pcp-auth-pki.js';
import { requirePeer } from './helpers/require-peer.js';
import { REPO_ROOT } from './helpers/turn-servers.js';

const BIN = join(REPO_ROOT, 'bin', 'gatehouse.js');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Eve {
  event_type: string;
  gatehouse?: Record<string, unknown>;
  [k: string]: unknown;
}

function events(dataDir: string): Eve[] {
  const f = join(dataDir, 'events.jsonl');
  if (!existsSync(f)) return [];
  return readFileSync(f, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Eve);
}

function collect(p: ChildProcess): { out: () => string; err: () => string } {
  const o: Buffer[] = [];
  const e: Buffer[] = [];
  p.stdout?.on('data', (d: Buffer) => o.push(d));
  p.stderr?.on('data', (d: Buffer) => e.push(d));
  return { out: () => Buffer.concat(o).toString(), err: () => Buffer.concat(e).toString() };
}

function exited(p: ChildProcess, ms: number): Promise<number | null> {
  return new Promise((resolve) => {
    if (p.exitCode !== null) return resolve(p.exitCode);
    const timer = setTimeout(() => resolve(null), ms);
    p.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(fn: () => T | null | undefined | false, ms: number, step = 100): Promise<T | null> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) return null;
    await sleep(step);
  }
}

const RULES = `keys:
  required: true
  deadline: 6s
  unverified: hold
  block_for: 1s
rules:
  - id: nightingale
    when: { contains: ["PROJECT-NIGHTINGALE"] }
    action: block
`;

interface Rig {
  net: ThreeNs;
  pki: Pki;
  dir: string;
  data: string;
  serve: ChildProcess;
  serveLog: { out: () => string; err: () => string };
}

async function startRig(t: Test): Promise<Rig> {
  const net = threeNamespaces(t, 'ghcall');
  const pki = makePki();
  const dir = mkdtempSync(join(tmpdir(), 'gh-pcp-call-'));
  t.teardown(() => {
    pki.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });
  const data = join(dir, 'data');
  writeFileSync(join(dir, 'rules.yaml'), RULES);
  // Inside gw every port is free (its own loopback): fixed ports are fine.
  writeFileSync(
    join(dir, 'gatehouse.yaml'),
    `data_dir: ${data}
log_level: info
turn:
  listen: [udp://127.0.0.1:3478]
pcp:
  listen: [udp://${THREE_NS.gwLan}:5351]
  external_address: ${THREE_NS.gwWan}
  firewall: nftables
  nfqueue: { queue: 7 }
  auth:
    required: false     # unauthenticated clients get mappings, but cannot escrow keys
    ca: [${pki.caPath}]
identity:
  cert: ${pki.serverCertPath}
  key: ${pki.serverKeyPath}
admin:
  listen: http://127.0.0.1:8080
users:
  - { name: admin, password: not-used-here }
policy:
  rules: ${join(dir, 'rules.yaml')}
`,
  );
  const serve = net.lab.spawn(net.gw, process.execPath, [BIN, 'serve', '--config', join(dir, 'gatehouse.yaml')]);
  const serveLog = collect(serve);
  const ready = await until(() => (serveLog.out() + serveLog.err()).includes('gatehouse listening') || serve.exitCode !== null, 30_000);
  if (!ready || serve.exitCode !== null) throw new Error(`gatehouse serve did not start:\n${serveLog.out()}\n${serveLog.err()}`);
  t.teardown(async () => {
    serve.kill('SIGTERM');
    await exited(serve, 10_000);
  });
  return { net, pki, dir, data, serve, serveLog };
}

interface CallResult {
  offer: { code: number | null; summary: Record<string, unknown> | null; log: string };
  answer: { code: number | null; summary: Record<string, unknown> | null; log: string };
  rulesDuringCall: string;
}

/** One call: the agent in lan offers through the firewall path; a plain werift peer in wan answers. */
async function call(r: Rig, name: string, offerArgs: string[], answerArgs: string[] = []): Promise<CallResult> {
  const sig = join(r.dir, `sig-${name}`);
  const recv = join(r.dir, `recv-${name}`);
  mkdirSync(sig);
  mkdirSync(recv);
  const offer = r.net.lab.spawn(r.net.lan, process.execPath, [
    BIN,
    'endpoint',
    '--role',
    'offer',
    '--signal-dir',
    sig,
    '--pcp',
    THREE_NS.gwLan,
    '--gateway-ca',
    r.pki.caPath,
    '--gateway-cert',
    r.pki.serverCertPath,
    '--json',
    '--timeout',
    '45',
    '--hold',
    '2',
    ...offerArgs,
  ]);
  const answer = r.net.lab.spawn(r.net.wan, process.execPath, [
    BIN,
    'endpoint',
    '--role',
    'answer',
    '--signal-dir',
    sig,
    '--no-escrow',
    '--ice-address',
    THREE_NS.wanPeer,
    '--receive-dir',
    recv,
    '--json',
    '--timeout',
    '45',
    '--hold',
    '2',
    ...answerArgs,
  ]);
  const ol = collect(offer);
  const al = collect(answer);
  // The mapping's rules while the call runs (the gateway's table in the gw namespace).
  let rulesDuringCall = '';
  const poll = (async () => {
    while (offer.exitCode === null) {
      const rs = r.net.lab.try(r.net.gw, 'nft', ['list', 'table', 'inet', 'gatehouse']).stdout;
      if (/gatehouse pcp-\d+ dnat/.test(rs)) rulesDuringCall = rs;
      if (rulesDuringCall) break;
      await sleep(200);
    }
  })();
  const [oc, ac] = await Promise.all([exited(offer, 70_000), exited(answer, 70_000)]);
  await poll;
  const parse = (s: string) => {
    const line = s
      .trim()
      .split('\n')
      .reverse()
      .find((l) => l.startsWith('{'));
    try {
      return line ? (JSON.parse(line) as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  };
  return {
    offer: { code: oc, summary: parse(ol.out()), log: ol.out() + ol.err() },
    answer: { code: ac, summary: parse(al.out()), log: al.out() + al.err() },
    rulesDuringCall,
  };
}

const needs = ['root', 'ip', 'nft', 'iptables', 'nfqueue', 'openssl'] as const;

t.test('a call through the firewall path: mapping in the ruleset, keys escrowed over PCP, files and messages inspected', async (t) => {
  for (const p of needs) if (!requirePeer(t, p)) return;
  const r = await startRig(t);
  const file = join(r.dir, 'report.bin');
  const content = randomBytes(300_000);
  writeFileSync(file, content);
  const res = await call(r, 'ok', [
    '--pcp-cert',
    join(r.pki.dir, 'client.pem'),
    '--pcp-key',
    join(r.pki.dir, 'client.key'),
    '--pcp-ca',
    r.pki.caPath,
    '--consent',
    'always',
    '--send-file',
    file,
    '--message',
    'hello over the firewall',
    '--audio-packets',
    '100',
  ]);
  t.equal(res.offer.code, 0, `the offerer finished the call\n${res.offer.log.slice(-3000)}`);
  t.equal(res.answer.code, 0, `the answerer finished the call\n${res.answer.log.slice(-3000)}`);
  t.match(
    res.rulesDuringCall,
    new RegExp(`dnat ip to ${THREE_NS.lanHost.replace(/\./g, '\\.')}:\\d+ comment "gatehouse pcp-\\d+ dnat"`),
    'the mapping is in nft list ruleset during the call',
  );
  const recv = (res.answer.summary?.receivedFiles ?? []) as { sha256: string; size: number; ok: boolean }[];
  t.ok(
    recv.some((f) => f.sha256 === sha(content) && f.size === content.length && f.ok),
    'the file arrived intact in wan',
  );
  t.ok(((res.answer.summary?.messages ?? []) as string[]).includes('hello over the firewall'), 'the message arrived');
  t.ok(Number(res.answer.summary?.rtpReceived ?? 0) > 0, 'audio arrived');

  const ev = await until(() => {
    const e = events(r.data);
    return e.some((x) => x.event_type === 'file' && (x as { file?: { sha256?: string } }).file?.sha256 === sha(content)) ? e : null;
  }, 10_000);
  t.ok(ev, 'the gateway saw the whole file with its SHA-256');
  const all = ev ?? events(r.data);
  const onPcp = (x: Eve) => typeof x.gatehouse?.mapping === 'string';
  t.ok(
    all.some((x) => x.event_type === 'pcp_mapping' && (x.gatehouse as { action?: string }).action === 'created'),
    'pcp_mapping created',
  );
  t.ok(
    all.some((x) => x.event_type === 'key_request' && onPcp(x)),
    'key_request on the PCP flow',
  );
  t.ok(
    all.some((x) => x.event_type === 'keys_verified' && onPcp(x)),
    'keys escrowed over PCP verified',
  );
  t.ok(
    all.some(
      (x) => x.event_type === 'datachannel.message' && onPcp(x) && JSON.stringify(x).includes(sha(Buffer.from('hello over the firewall'))),
    ),
    'the message was inspected (its SHA-256 in the event)',
  );
  t.ok(
    all.some((x) => x.event_type === 'rtp.stream' && onPcp(x)),
    'audio decrypted (rtp.stream)',
  );
  t.notOk(
    all.some((x) => x.event_type === 'flow_blocked'),
    'nothing blocked',
  );
  t.equal(
    (all.find((x) => x.event_type === 'keys_verified' && onPcp(x))?.gatehouse as { user?: string })?.user,
    'alice@example.com',
    'the flow is charged to the EAP-TLS identity',
  );
  // The call ended: the agent deleted its mappings, the rules follow.
  const gone = await until(
    () => !/gatehouse pcp-\d+/.test(r.net.lab.try(r.net.gw, 'nft', ['list', 'table', 'inet', 'gatehouse']).stdout),
    10_000,
  );
  t.ok(gone, 'the mapping rules are gone after the call');
  t.notMatch(r.net.lab.try(r.net.gw, 'iptables', ['-t', 'mangle', '-S', 'GATEHOUSE']).stdout, /gatehouse pcp-/, 'and its NFQUEUE rules');

  // A block rule ends the flow: mapping and rules gone, the rest of the call does not pass.
  const blocked = await call(r, 'block', [
    '--pcp-cert',
    join(r.pki.dir, 'client.pem'),
    '--pcp-key',
    join(r.pki.dir, 'client.key'),
    '--pcp-ca',
    r.pki.caPath,
    '--consent',
    'always',
    '--message',
    'PROJECT-NIGHTINGALE plans',
  ]);
  t.ok(blocked.answer.summary, 'the answerer ran and reported');
  t.equal(blocked.offer.summary?.connected, true, 'the blocked call had connected (the block came from policy, not a failed call)');
  t.notOk(
    ((blocked.answer.summary?.messages ?? []) as string[]).includes('PROJECT-NIGHTINGALE plans'),
    'the blocked message never arrived',
  );
  const be = await until(() => events(r.data).find((x) => x.event_type === 'flow_blocked' && onPcp(x)), 10_000);
  t.equal((be?.gatehouse as { reason?: string } | undefined)?.reason, 'policy', 'flow_blocked policy');
  const blockedMapping = events(r.data).find(
    (x) => x.event_type === 'pcp_mapping' && (x.gatehouse as { action?: string }).action === 'blocked',
  );
  t.ok(blockedMapping, 'the mapping was deleted as blocked');
  const bid = String((blockedMapping?.gatehouse as { mapping?: string } | undefined)?.mapping);
  const rulesLeft = await until(
    () =>
      !r.net.lab.try(r.net.gw, 'nft', ['list', 'table', 'inet', 'gatehouse']).stdout.includes(`gatehouse ${bid} `) &&
      !r.net.lab.try(r.net.gw, 'iptables', ['-t', 'mangle', '-S', 'GATEHOUSE']).stdout.includes(`gatehouse ${bid} `),
    10_000,
  );
  t.ok(rulesLeft, `the blocked mapping's nft and NFQUEUE rules are gone (${bid})`);
  await sleep(1500); // keys.block_for: 1s
});

t.test('KEY_DECLINE and no keys by the deadline each block the flow', async (t) => {
  for (const p of needs) if (!requirePeer(t, p)) return;
  const r = await startRig(t);
  const declined = await call(
    r,
    'decline',
    [
      '--pcp-cert',
      join(r.pki.dir, 'client.pem'),
      '--pcp-key',
      join(r.pki.dir, 'client.key'),
      '--pcp-ca',
      r.pki.caPath,
      '--consent',
      'never',
      '--message',
      'declined',
      '--timeout',
      '15',
    ],
    ['--timeout', '15'],
  );
  t.ok(declined.answer.summary, 'the answerer ran and reported');
  t.notOk(((declined.answer.summary?.messages ?? []) as string[]).includes('declined'), 'nothing passes after KEY_DECLINE');
  const d = await until(
    () => events(r.data).find((x) => x.event_type === 'flow_blocked' && typeof x.gatehouse?.mapping === 'string'),
    10_000,
  );
  t.equal((d?.gatehouse as { reason?: string } | undefined)?.reason, 'keys_declined', 'KEY_DECLINE blocks');
  await sleep(1500);

  // Without RFC 7652 authentication the endpoint sends no keys (it cannot escrow, key-escrow.md
  // §4; the server's refusal of such WRITE_KEYS is unit-tested in pcp-path.test.ts): the deadline blocks.
  const before = events(r.data).length;
  const nokeys = await call(r, 'nokeys', ['--consent', 'always', '--message', 'no keys', '--timeout', '20'], ['--timeout', '20']);
  t.notOk(((nokeys.answer.summary?.messages ?? []) as string[]).includes('no keys'), 'no message passes without keys');
  const n = await until(
    () =>
      events(r.data)
        .slice(before)
        .find((x) => x.event_type === 'flow_blocked' && typeof x.gatehouse?.mapping === 'string'),
    15_000,
  );
  t.equal((n?.gatehouse as { reason?: string } | undefined)?.reason, 'keys_missing', 'no keys by the deadline: blocked');
});
