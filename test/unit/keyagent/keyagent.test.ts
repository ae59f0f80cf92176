/**
 * `gatehouse keyagent` pieces against the in-process gateway (TurnServer + GatewayInspector,
 * key-escrow.md §6): the key-log tail (appends, truncation, rotation), and the agent
 * escrowing a real OpenSSL DTLS 1.2 association (test/fixtures/openssl) from its NSS key log
 * only once the gateway lists it; an untrusted gateway certificate gets nothing.
 */
import t from 'tap';
import { appendFileSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createHash, X509Certificate } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KeyLogTail } from '../../../src/keyagent/tail.js';
import { KeyAgent } from '../../../src/keyagent/agent.js';
import { KeyEscrowClient } from '../../../src/keyagent/client.js';
import { GatewayTrust, TrustError } from '../../../src/endpoint/trust.js';
import { ManualClock } from '../../../src/util/clock.js';
import { MemoryEventSink } from '../../../src/events/eve.js';
import { PolicyEngine } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { GatewayInspector } from '../../../src/gateway/inspector.js';
import { Attr, Class, Method, StunWriter, decodeStun, getXorAddress, messageType } from '../../../src/wire/stun.js';
import { METHOD_KEY_ESCROW } from '../../../src/wire/keyescrow.js';
import { createSocket } from 'node:dgram';
import { Client, errCode, peerSocket, startServer } from '../turn/helpers.js';
import { KEYS_RULES, bindAttrs, relayOne, testIdentity, type EscrowRig } from '../gateway/escrow-helpers.js';
import { fixtureFlow } from '../gateway/flow-guard-helpers.js';
import { loadFixture } from '../inspect/dtls-session-helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(f: () => boolean, ms = 5000): Promise<boolean> {
  const t0 = Date.now();
  while (!f()) {
    if (Date.now() - t0 > ms) return false;
    await sleep(10);
  }
  return true;
}

t.test('tail: appended lines, partial lines, truncation, rotation, a file that appears later', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-tail-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f = join(dir, 'keylog.txt');
  const got: string[] = [];
  const tail = new KeyLogTail(f, (l) => got.push(...l), { pollMs: 20 });
  tail.start();
  t.teardown(() => tail.stop());
  writeFileSync(f, 'A 1\nB 2\nC');
  t.ok(await until(() => got.length === 2), 'complete lines only');
  appendFileSync(f, ' 3\n');
  t.ok(await until(() => got.length === 3));
  t.equal(got[2], 'C 3', 'the partial line completed');
  writeFileSync(f, 'D 4\n'); // truncation (shorter than what was read)
  t.ok(await until(() => got.length === 4));
  t.equal(got[3], 'D 4');
  t.equal(tail.stats.truncations, 1);
  writeFileSync(join(dir, 'new.txt'), 'E 5\nF 6\n');
  renameSync(join(dir, 'new.txt'), f); // rotation: another inode at the path
  t.ok(await until(() => got.length === 6));
  t.same(got.slice(4), ['E 5', 'F 6']);
  t.equal(tail.stats.rotations, 1);
});

t.test('tail: lines written just before a rotation (or a removal) are read from the old file first', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-tail-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const f = join(dir, 'keylog.txt');
  const got: string[] = [];
  writeFileSync(f, 'A 1\n');
  const tail = new KeyLogTail(f, (l) => got.push(...l), { pollMs: 60_000 });
  tail.start(); // reads A 1 synchronously
  t.teardown(() => tail.stop());
  t.same(got, ['A 1']);
  // Synchronous, so no notification runs in between: the browser appends, then the file is rotated.
  appendFileSync(f, 'B 2\n');
  renameSync(f, f + '.1');
  writeFileSync(f, 'C 3\n');
  tail.check();
  t.same(got, ['A 1', 'B 2', 'C 3'], 'B 2 from the rotated file, then the new one');
  t.equal(tail.stats.rotations, 1);
  appendFileSync(f, 'D 4\n');
  renameSync(f, f + '.2'); // rotated away, not recreated yet
  tail.check();
  t.same(got, ['A 1', 'B 2', 'C 3', 'D 4'], 'what the old file got last is read before it is let go');
});

interface Rig extends EscrowRig {
  certPem: string;
}

async function rig(): Promise<Rig> {
  const clock = new ManualClock();
  const events = new MemoryEventSink();
  const identity = await testIdentity();
  const engine = new PolicyEngine([parseRuleFile(KEYS_RULES, 'test.yaml')]);
  const inspector = new GatewayInspector({ policy: () => engine, identity, events, clock });
  const h = await startServer(undefined, {
    clock,
    events,
    flowHooks: inspector,
    extensions: [inspector.extension],
    keyEscrow: inspector.keyEscrow,
  });
  inspector.attach(h.server);
  const c = await Client.udp(h.udpPort);
  const r = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  if (r.cls !== Class.Success) throw new Error(`allocate failed ${errCode(r)}`);
  const relayPort = getXorAddress(r, Attr.XorRelayedAddress)!.port;
  const peer = await peerSocket();
  const b = await c.authed(Method.ChannelBind, bindAttrs(0x4001, peer.port));
  if (b.cls !== Class.Success) throw new Error('bind');
  return {
    h,
    clock,
    events,
    identity,
    inspector,
    c,
    relayPort,
    peer,
    certPem: identity.certificatePem,
    close: async () => {
      c.close();
      peer.close();
      await h.close();
    },
  };
}

const pin = (pem: string) => createHash('sha256').update(new X509Certificate(pem).raw).digest('hex');

t.test('agent: escrows the association the gateway lists, from the key log, within the deadline', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const dir = mkdtempSync(join(tmpdir(), 'gh-agent-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const keylog = join(dir, 'keylog.txt');
  writeFileSync(keylog, '');
  const client = new KeyEscrowClient({
    host: '127.0.0.1',
    port: r.h.udpPort,
    credentials: () => ({ username: 'alice', password: 'secret' }),
    trust: new GatewayTrust({ pinnedFingerprints: [pin(r.certPem)] }),
    certificatePem: r.certPem,
  });
  const agent = new KeyAgent({ keylog, client, pollMs: 20 });
  const escrowed: { clientRandom: string; status: number }[] = [];
  const errors: Error[] = [];
  agent.on('escrowed', (e) => escrowed.push(e));
  agent.on('error', (e) => errors.push(e));
  agent.start();
  t.teardown(() => agent.stop());
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  for (const p of f.packets.slice(0, 13)) await relayOne(r, 0x4001, p.dir, p.data);
  // The browser writes its key log lines (here: the fixture's, a line at a time).
  const lines = loadFixture('gcm128-srtp-reneg.json').keylog.split('\n');
  for (const l of lines) appendFileSync(keylog, l + '\n');
  t.ok(
    await until(() => r.events.events.some((e) => e.event_type === 'keys_verified')),
    `keys_verified (errors: ${errors.map((e) => e.message)})`,
  );
  const cr0 = f.keySets[0]!.clientRandom.toString('hex');
  t.ok(await until(() => escrowed.some((e) => e.clientRandom === cr0 && e.status === 1)), 'KEY-STATUS verified');
  const cr1 = f.keySets[1]!.clientRandom.toString('hex');
  t.notOk(
    escrowed.some((e) => e.clientRandom === cr1),
    'the renegotiated association, not yet seen by the gateway, is not sent',
  );
  const json = JSON.stringify(r.events.events);
  for (const l of lines) {
    const secret = l.split(' ')[2];
    if (secret) t.notOk(json.includes(secret.toLowerCase()), 'no key-log secret in events');
  }
});

t.test('agent: a gateway certificate that is not pinned is refused before anything is sent', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  t.throws(
    () =>
      new KeyEscrowClient({
        host: '127.0.0.1',
        port: r.h.udpPort,
        credentials: () => ({ username: 'alice', password: 'secret' }),
        trust: new GatewayTrust({ pinnedFingerprints: ['00'.repeat(32)] }),
        certificatePem: r.certPem,
      }),
    TrustError,
  );
});

t.test('agent: wrong credentials are refused (401), nothing applied', async (t) => {
  const r = await rig();
  t.teardown(r.close);
  const client = new KeyEscrowClient({
    host: '127.0.0.1',
    port: r.h.udpPort,
    credentials: () => ({ username: 'alice', password: 'wrong' }),
    trust: new GatewayTrust({ pinnedFingerprints: [pin(r.certPem)] }),
    certificatePem: r.certPem,
  });
  t.teardown(() => client.close());
  await t.rejects(client.query(), /401/);
});

t.test('gatehouse keyagent: --help, usage errors (exit 2), untrusted certificate (exit 2/1)', async (t) => {
  const { runKeyagent } = await import('../../../src/cli/keyagent.js');
  const { PassThrough } = await import('node:stream');
  const run = async (argv: string[]) => {
    const out = new PassThrough();
    const err = new PassThrough();
    let o = '';
    let e = '';
    out.on('data', (d) => (o += d));
    err.on('data', (d) => (e += d));
    const code = await runKeyagent(argv, { stdout: out, stderr: err });
    return { code, o, e };
  };
  const h = await run(['--help']);
  t.equal(h.code, 0);
  t.match(h.o, /--keylog FILE/);
  t.equal((await run([])).code, 2, 'no --keylog');
  t.equal((await run(['--keylog', '/tmp/x', '--turn', 'http://x'])).code, 2, 'not a turn: URL');
  t.equal((await run(['--keylog', '/tmp/x', '--turn', 'turn:127.0.0.1:3478'])).code, 2, 'no --user');
  t.equal((await run(['--keylog', '/tmp/x', '--turn', 'turn:127.0.0.1:3478', '--user', 'a'])).code, 2, 'no password');
  const r = await rig();
  t.teardown(r.close);
  const dir = mkdtempSync(join(tmpdir(), 'gh-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'gw.crt'), r.certPem);
  const bad = await run([
    '--keylog',
    join(dir, 'k'),
    '--turn',
    `turn:127.0.0.1:${r.h.udpPort}`,
    '--user',
    'alice',
    '--password',
    'secret',
    '--gateway-cert',
    join(dir, 'gw.crt'),
    '--gateway-cert-fingerprint',
    '00'.repeat(32),
  ]);
  t.not(bad.code, 0, 'a certificate that does not match the pin is refused');
  t.notOk(bad.e.includes('secret'), 'the password is not echoed');
});

t.test(
  'client: a 401 whose NONCE announces password algorithms but carries no PASSWORD-ALGORITHMS is a downgrade: no retry (RFC 8489 §9.2.5)',
  async (t) => {
    const identity = await testIdentity();
    const srv = createSocket('udp4');
    await new Promise<void>((res) => srv.bind(0, '127.0.0.1', () => res()));
    t.teardown(() => srv.close());
    let requests = 0;
    srv.on('message', (m, rinfo) => {
      const req = decodeStun(m);
      if (!req) return;
      requests++;
      // A forged challenge: the nonce cookie with the "Password algorithms" bit (obMatJos2 + gAAA), no PASSWORD-ALGORITHMS.
      const w = new StunWriter(512)
        .reset(messageType(METHOD_KEY_ESCROW, Class.Error), req.transactionId)
        .errorCode(401)
        .attr(Attr.Realm, 'gatehouse')
        .attr(Attr.Nonce, 'obMatJos2gAAAforgedforgedforged');
      srv.send(w.copy(), rinfo.port, rinfo.address);
    });
    const client = new KeyEscrowClient({
      host: '127.0.0.1',
      port: (srv.address() as { port: number }).port,
      credentials: () => ({ username: 'alice', password: 'secret' }),
      trust: new GatewayTrust({ pinnedFingerprints: [pin(identity.certificatePem)] }),
      certificatePem: identity.certificatePem,
      rtoMs: 50,
    });
    t.teardown(() => client.close());
    await t.rejects(client.query(), { name: 'KeyEscrowError' });
    t.equal(requests, 1, 'no request signed with the MD5 key follows the forged challenge');
  },
);
