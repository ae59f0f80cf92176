/**
 * Issue 8, proof (b), over real sockets through `gatehouse serve` as a spawned process,
 * keys required:
 *  1. the epoch-0 handshake exfiltration: 5 000 datagrams shaped as plaintext DTLS
 *     handshake records (content type 22, epoch 0, parsing as Certificate messages)
 *     carrying arbitrary data deliver at most HANDSHAKE_BYTES_BUDGET to a real UDP peer,
 *     and the flow gets `flow_blocked` (budget_exceeded, handshake_bytes) in events.jsonl;
 *  2. a real OpenSSL DTLS 1.2 handshake (s_client -> TURN -> s_server) still completes
 *     through the guard, before the deadline, without a block.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Attr, Class, Method } from '../../src/wire/stun.js';
import { buildChannelData, parseChannelData } from '../../src/wire/channeldata.js';
import { HANDSHAKE_BYTES_BUDGET } from '../../src/gateway/classify.js';
import { makeCert } from '../../scripts/fixtures/openssl-dtls.js';
import { Client, errCode, peerSocket } from '../unit/turn/helpers.js';
import { bindAttrs } from '../unit/gateway/escrow-helpers.js';
import { certRecord } from '../unit/gateway/flow-guard-helpers.js';
import { startGatehouse, type TurnServer } from './helpers/turn-servers.js';
import { freePort } from './helpers/ports.js';

const CH = 0x4001;
const RULES = 'keys:\n  required: true\n  deadline: 20s\n  unverified: hold\n  block_for: 5m\n';

async function gatehouse(t: { teardown(f: () => unknown): void }): Promise<TurnServer> {
  const gh = await startGatehouse({ realm: 'gatehouse.local', users: [{ name: 'alice', password: 'secret' }], rules: RULES });
  t.teardown(() => gh.stop());
  return gh;
}

function events(gh: TurnServer): Record<string, any>[] {
  const f = join(gh.dataDir!, 'events.jsonl');
  if (!existsSync(f)) return [];
  return readFileSync(f, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}

async function until<T>(what: string, f: () => T | undefined | null | false, ms = 20_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function allocate(gh: TurnServer): Promise<Client> {
  const c = await Client.udp(gh.port);
  const r = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  if (r.cls !== Class.Success) throw new Error(`allocate failed ${errCode(r)}`);
  return c;
}

t.test('epoch-0 handshake exfiltration: at most the budget reaches the peer, then flow_blocked', async (t) => {
  const gh = await gatehouse(t);
  const c = await allocate(gh);
  const peer = await peerSocket();
  t.teardown(() => (c.close(), peer.close()));
  let delivered = 0;
  let datagrams = 0;
  peer.sock.on('message', (m) => {
    delivered += m.length;
    datagrams++;
  });
  t.equal((await c.authed(Method.ChannelBind, bindAttrs(CH, peer.port))).cls, Class.Success);
  let sent = 0;
  for (let i = 0; i < 5000; i++) {
    const d = certRecord(i, 1000);
    c.sendRaw(buildChannelData(CH, d));
    sent += d.length;
    if (i % 50 === 49) await new Promise((r) => setTimeout(r, 2)); // paced: loopback buffers, not the guard, must not be what stops it
  }
  const blocked = await until('flow_blocked in events.jsonl', () => events(gh).find((e) => e.event_type === 'flow_blocked'));
  await new Promise((r) => setTimeout(r, 300)); // anything still in flight
  t.match(blocked.gatehouse, { user: 'alice', reason: 'budget_exceeded', budget: 'handshake_bytes' });
  t.ok(
    delivered <= HANDSHAKE_BYTES_BUDGET,
    `delivered ${delivered} bytes (${datagrams} datagrams) of ${sent} sent <= ${HANDSHAKE_BYTES_BUDGET}`,
  );
  t.ok(delivered > 0, 'a handshake-shaped record within the budget did pass (the guard does not block handshakes)');
  t.equal(errCode(await c.authed(Method.ChannelBind, bindAttrs(CH, peer.port))), 403, 're-creating the flow: 403');
});

function waitFor(pred: () => boolean, what: string, procs: ChildProcess[], ms = 30_000): Promise<void> {
  return new Promise((res, rej) => {
    const t0 = Date.now();
    const tick = (): void => {
      if (pred()) return res();
      const dead = procs.find((p) => p.exitCode !== null);
      if (dead) return rej(new Error(`${what}: openssl exited early (${dead.exitCode})`));
      if (Date.now() - t0 > ms) return rej(new Error(`timeout waiting for ${what}`));
      setTimeout(tick, 25);
    };
    tick();
  });
}

t.test('a real OpenSSL DTLS 1.2 handshake completes through the guard with keys required', async (t) => {
  const gh = await gatehouse(t);
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-failclosed-'));
  const procs: ChildProcess[] = [];
  const sockets: Socket[] = [];
  let stopped = false;
  const c = await allocate(gh);
  t.teardown(() => {
    stopped = true;
    for (const p of procs) p.kill('SIGKILL');
    for (const s of sockets) s.close();
    c.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const { cert, key } = makeCert(dir, 'rsa'); // RSA-2048: the larger certificate
  const srvPort = await freePort('udp');
  const server = spawn('openssl', ['s_server', '-dtls1_2', '-accept', `127.0.0.1:${srvPort}`, '-cert', cert, '-key', key, '-verify', '1'], {
    cwd: dir,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  procs.push(server);
  let srvOut = '';
  server.stdout!.on('data', (d: Buffer) => (srvOut += d.toString('latin1')));
  server.stderr!.on('data', () => {});
  await waitFor(() => srvOut.includes('ACCEPT'), 's_server ready', procs);
  // s_server is the peer: TURN relays to it directly.
  t.equal((await c.authed(Method.ChannelBind, bindAttrs(CH, srvPort))).cls, Class.Success);

  const shim = createSocket('udp4');
  sockets.push(shim);
  await new Promise<void>((r) => shim.bind(0, '127.0.0.1', () => r()));
  let cliPort: number | null = null;
  let handshakeBytes = 0;
  shim.on('message', (m, r) => {
    cliPort = r.port;
    handshakeBytes += m.length;
    c.sendRaw(buildChannelData(CH, m));
  });
  const isCd = (b: Buffer): boolean => b.length >= 4 && b[0]! >= 0x40 && b[0]! <= 0x7f;
  void (async () => {
    while (!stopped) {
      const b = await c.next(isCd, 250).catch(() => null);
      if (stopped) return;
      const cd = b && parseChannelData(b);
      if (cd && cliPort !== null) {
        handshakeBytes += cd.data.length;
        shim.send(Buffer.from(cd.data), cliPort, '127.0.0.1');
      }
    }
  })();
  const { cert: ccert, key: ckey } = makeCert(dir, 'rsa', '/CN=client');
  const client = spawn(
    'openssl',
    ['s_client', '-dtls1_2', '-connect', `127.0.0.1:${shim.address().port}`, '-cert', ccert, '-key', ckey, '-mtu', '1200'],
    { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  procs.push(client);
  let cliOut = '';
  client.stdout!.on('data', (d: Buffer) => (cliOut += d.toString('latin1')));
  client.stderr!.on('data', () => {});
  const t0 = Date.now();
  await waitFor(() => /Verify return code|SSL-Session/.test(cliOut), 'handshake through TURN and the guard', procs);
  t.ok(Date.now() - t0 < 20_000, 'before the deadline');
  t.match(cliOut, /Cipher is|Cipher\s*:/, 's_client reports the negotiated cipher');
  t.ok(handshakeBytes < HANDSHAKE_BYTES_BUDGET, `the mutual-auth RSA handshake took ${handshakeBytes} bytes, within the budget`);
  const ev = events(gh);
  t.notOk(
    ev.some((e) => e.event_type === 'flow_blocked'),
    'not blocked',
  );
  await until('dtls handshake event', () => events(gh).find((e) => /dtls/.test(e.event_type)));
  t.pass('the gateway followed the handshake');
});
