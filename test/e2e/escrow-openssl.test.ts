/**
 * Key escrow end to end with a live DTLS 1.2 session: `openssl s_client` talks to
 * `openssl s_server` THROUGH the in-process TURN server (the test's TURN client wraps
 * s_client's datagrams in ChannelData; s_server is the peer, behind a recording UDP
 * shim). The handshake completes while application data is held; the key set derived
 * from s_client's -keylogfile goes in via WRITE-KEYS; it verifies, and the held data is
 * released in order and judged by policy.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { makeCert } from '../../scripts/fixtures/openssl-dtls.js';
import { createSocket, type Socket } from 'node:dgram';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Class, Method, getAttrs } from '../../src/wire/stun.js';
import { ATTR_KEY_STATUS, decodeKeyStatus } from '../../src/wire/escrow.js';
import { buildChannelData, parseChannelData } from '../../src/wire/channeldata.js';
import { DtlsSession } from '../../src/inspect/dtls-session.js';
import type { DtlsHandshakeEvent } from '../../src/inspect/events.js';
import { KeyLog, keySetFromKeyLog } from '../../src/inspect/keylog.js';
import { bindAttrs, both, escrowRig, writeKeys, KEYS_RULES, marker } from '../unit/gateway/escrow-helpers.js';
import { freePort } from './helpers/ports.js';
import { assertNoSecrets, Secrets } from './helpers/secrets.js';

const CH = 0x4001;
const TIMEOUT = 30_000;

function waitFor(pred: () => boolean, what: string, procs: ChildProcess[] = []): Promise<void> {
  return new Promise((res, rej) => {
    const t0 = Date.now();
    const tick = (): void => {
      if (pred()) return res();
      const dead = procs.find((p) => p.exitCode !== null);
      if (dead) return rej(new Error(`${what}: openssl exited early (${dead.exitCode})`));
      if (Date.now() - t0 > TIMEOUT) return rej(new Error(`timeout waiting for ${what}`));
      setTimeout(tick, 25);
    };
    tick();
  });
}

function stop(p: ChildProcess | undefined): Promise<void> {
  return new Promise((res) => {
    if (!p || p.exitCode !== null || p.signalCode !== null) return res();
    const k = setTimeout(() => p.kill('SIGKILL'), 5000);
    p.once('exit', () => (clearTimeout(k), res()));
    p.kill('SIGTERM');
  });
}

const bind = (s: Socket, port = 0): Promise<void> => new Promise((r) => s.bind(port, '127.0.0.1', () => r()));

t.test('live openssl DTLS 1.2 through TURN: hold, WRITE-KEYS, verify, release in order', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-escrow-e2e-'));
  const rules = `${KEYS_RULES}rules:\n  - id: nightingale\n    when:\n      contains: ["PROJECT-NIGHTINGALE"]\n    action: alert\n`;
  const rig = await escrowRig(rules);
  const procs: ChildProcess[] = [];
  const sockets: Socket[] = [];
  let stopped = false;
  t.teardown(async () => {
    stopped = true;
    for (const p of procs) await stop(p);
    for (const s of sockets) s.close();
    await rig.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const { cert, key } = makeCert(dir, 'ec');

  // Peer side: s_server on srvPort behind a recording shim (the TURN peer address).
  const srvPort = await freePort('udp');
  const server = spawn(
    'openssl',
    ['s_server', '-dtls1_2', '-accept', `127.0.0.1:${srvPort}`, '-cert', cert, '-key', key, '-use_srtp', 'SRTP_AES128_CM_SHA1_80'],
    { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  procs.push(server);
  let srvOut = '';
  server.stdout!.on('data', (d: Buffer) => (srvOut += d.toString('latin1')));
  server.stderr!.on('data', () => {});
  await waitFor(() => srvOut.includes('ACCEPT'), 's_server ready', procs);

  const peerShim = createSocket('udp4');
  sockets.push(peerShim);
  await bind(peerShim);
  const atPeer: Buffer[] = []; // what TURN relayed to the peer, in order
  let relayAddr: { port: number } | null = null;
  peerShim.on('message', (m, r) => {
    if (r.port === srvPort) {
      if (relayAddr) peerShim.send(m, relayAddr.port, '127.0.0.1');
      return;
    }
    relayAddr = { port: r.port };
    atPeer.push(Buffer.from(m));
    if (m[0] !== 0) peerShim.send(m, srvPort, '127.0.0.1'); // fences (first byte 0) stay here
  });
  const peerPort = peerShim.address().port;

  const r0 = await rig.c.authed(Method.ChannelBind, bindAttrs(CH, peerPort));
  t.equal(r0.cls, Class.Success);

  // Client side: s_client ↔ clientShim ↔ (ChannelData) TURN.
  const clientShim = createSocket('udp4');
  sockets.push(clientShim);
  await bind(clientShim);
  let cliAddr: number | null = null;
  const c2s: Buffer[] = [];
  const s2c: Buffer[] = [];
  clientShim.on('message', (m, r) => {
    cliAddr = r.port;
    c2s.push(Buffer.from(m));
    rig.c.sendRaw(buildChannelData(CH, m));
  });
  const isCd = (b: Buffer): boolean => b.length >= 4 && b[0]! >= 0x40 && b[0]! <= 0x7f;
  void (async () => {
    while (!stopped) {
      const b = await rig.c.next(isCd, 250).catch(() => null);
      if (stopped) return;
      if (!b) continue;
      const cd = parseChannelData(b);
      if (!cd || cliAddr === null) continue;
      s2c.push(Buffer.from(cd.data));
      clientShim.send(cd.data, cliAddr, '127.0.0.1');
    }
  })();

  const keylog = join(dir, 'keylog.txt');
  const client = spawn(
    'openssl',
    [
      's_client',
      '-dtls1_2',
      '-connect',
      `127.0.0.1:${clientShim.address().port}`,
      '-keylogfile',
      keylog,
      '-use_srtp',
      'SRTP_AES128_CM_SHA1_80',
    ],
    { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  procs.push(client);
  let cliOut = '';
  client.stdout!.on('data', (d: Buffer) => (cliOut += d.toString('latin1')));
  client.stderr!.on('data', () => {});
  await waitFor(() => /Verify return code|SSL-Session/.test(cliOut), 'handshake through TURN (handshake records are never held)', procs);

  // Application data from the client: held at the gateway.
  const msg1 = 'hello PROJECT-NIGHTINGALE one\n';
  const msg2 = 'second message\n';
  const nApp = () => c2s.filter((d) => d[0] === 23).length;
  client.stdin!.write(msg1);
  await waitFor(() => nApp() >= 1, 's_client sent application data', procs);
  client.stdin!.write(msg2);
  await waitFor(() => nApp() >= 2, 's_client sent application data', procs);
  // Fence: a datagram after them from the same client; when it reaches the peer, TURN has judged them.
  // A STUN Binding indication (first byte 0): passes a required flow's guard (ICE-shaped),
  // unlike arbitrary bytes, which a fail-closed flow withholds.
  const fence = marker();
  rig.c.sendRaw(buildChannelData(CH, fence));
  await waitFor(() => atPeer.some((d) => d.equals(fence)), 'fence at the peer');
  t.equal(atPeer.filter((d) => d[0] === 23).length, 0, 'no application data reached the peer before keys');
  t.notOk(srvOut.includes('NIGHTINGALE'), 's_server has not seen the data');
  t.notOk(rig.events.events.some((e) => e.event_type === 'keys_verified'));

  // The key set from s_client's key log and the hellos the client shim saw.
  await waitFor(() => existsSync(keylog) && readFileSync(keylog, 'utf8').includes('CLIENT_RANDOM'), 'key log');
  const kl = KeyLog.parse(readFileSync(keylog, 'utf8'));
  const hs: DtlsHandshakeEvent[] = [];
  const s = new DtlsSession({ listener: (e) => e.type === 'dtls.handshake' && hs.push(e), keyLog: kl });
  const order = [...c2s.map((d) => ({ d, dir: 'c2s' as const }))];
  for (const x of order) s.feed(x.d, x.dir, 0);
  for (const d of s2c) s.feed(d, 's2c', 0);
  s.close();
  t.equal(hs.length, 1, 'one handshake');
  const h = hs[0]!;
  const ks = keySetFromKeyLog(kl.get(h.clientRandom)!, {
    version: h.version,
    clientRandom: Buffer.from(h.clientRandom, 'hex'),
    serverRandom: Buffer.from(h.serverRandom, 'hex'),
    cipherSuite: h.cipherSuite,
    encryptThenMac: !!h.encryptThenMac,
    srtpProfile: h.srtpProfile,
  });
  t.ok(ks, 'key set derived');
  t.ok(ks!.srtpProfile !== undefined, 'with SRTP keys (use_srtp negotiated)');

  const tid = randomBytes(12);
  const r = await rig.c.authed(Method.ChannelBind, both(bindAttrs(CH, peerPort), writeKeys(rig.c, tid, [ks!])), { tid });
  t.equal(r.cls, Class.Success);
  t.same(
    getAttrs(r, ATTR_KEY_STATUS).map((v) => decodeKeyStatus(v)),
    [1],
    'KEY-STATUS verified',
  );
  const ev = rig.events.events;
  const iVerified = ev.findIndex((e) => e.event_type === 'keys_verified');
  t.ok(iVerified >= 0, 'keys_verified event');
  t.equal((ev[iVerified]!.gatehouse as Record<string, unknown>).association, h.clientRandom);

  await waitFor(() => srvOut.includes(msg1) && srvOut.includes(msg2), 'released data at s_server');
  t.ok(srvOut.indexOf(msg1) < srvOut.indexOf(msg2), 'released in order');
  const app = atPeer.filter((d) => d[0] === 23);
  t.same(
    app.map((d) => d.toString('hex')),
    c2s.filter((d) => d[0] === 23).map((d) => d.toString('hex')),
    'held datagrams relayed unchanged, in order',
  );
  const alert = ev.find((e) => e.event_type === 'alert' && e.alert?.signature_id === 'nightingale');
  t.ok(alert, 'policy judged the released data (contains rule)');
  t.ok(ev.indexOf(alert!) > iVerified, 'judged after keys_verified');

  // Covered now: server → client flows at once.
  server.stdin!.write('from the server\n');
  await waitFor(() => cliOut.includes('from the server'), 'server data at s_client');
  const secrets = new Secrets()
    .keySet(ks!, 'escrowed key set')
    .keyLog(readFileSync(keylog, 'utf8'), 's_client key log')
    .turnPassword(rig.c.username, rig.c.password, rig.c.realm, { word: true })
    .gatewayKey(rig.identity.privateKey);
  assertNoSecrets(t, secrets, { texts: { 'gateway events': JSON.stringify(ev) } }, 'no key material in events');
  rig.clock.advance(60_000);
  t.equal(ev.filter((e) => e.event_type === 'flow_blocked').length, 0, 'not blocked');
});
