import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

import { assertNoSecrets, Secrets } from './helpers/secrets.js';
import { Opcode, Result, decodePcpResponse, encodePcpRequest } from '../../src/wire/pcp.js';
import { reservePortBlock } from './helpers/ports.js';

const BIN = join(process.cwd(), 'bin', 'gatehouse.js');

/** STUN Binding request (RFC 8489 §5): the readiness probe, and a check that TURN answers. */
async function stunBinding(port: number, timeoutMs: number): Promise<Buffer | null> {
  const sock = createSocket('udp4');
  const req = Buffer.alloc(20);
  req.writeUInt16BE(0x0001, 0);
  req.writeUInt32BE(0x2112a442, 4);
  randomBytes(12).copy(req, 8);
  return new Promise((resolve) => {
    const timer = setTimeout(() => (sock.close(), resolve(null)), timeoutMs);
    sock.on('message', (m) => {
      clearTimeout(timer);
      sock.close();
      resolve(m);
    });
    sock.send(req, port, '127.0.0.1');
  });
}

/** One UDP request/answer (the PCP probe). */
async function udpRequest(port: number, req: Buffer, timeoutMs: number): Promise<Buffer | null> {
  const sock = createSocket('udp4');
  return new Promise((resolve) => {
    const timer = setTimeout(() => (sock.close(), resolve(null)), timeoutMs);
    sock.on('message', (m) => {
      clearTimeout(timer);
      sock.close();
      resolve(m);
    });
    sock.send(req, port, '127.0.0.1');
  });
}

async function waitReady(port: number, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 150; i++) {
    if (child.exitCode !== null) throw new Error(`gatehouse exited with ${child.exitCode}`);
    if (await stunBinding(port, 200)) return;
  }
  throw new Error('gatehouse did not answer STUN within 30 s');
}

function run(args: string[], cwd: string): { child: ChildProcess; out: () => string; err: () => string } {
  const child = spawn(process.execPath, [BIN, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  return { child, out: () => out, err: () => err };
}

async function exited(child: ChildProcess): Promise<number> {
  if (child.exitCode !== null) return child.exitCode;
  return new Promise((r) => child.once('exit', (code) => r(code ?? -1)));
}

t.test('a bad configuration names file, line and key, and the server does not start', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-serve-'));
  const cfg = join(dir, 'bad.yaml');
  writeFileSync(cfg, 'realm: x\nturn:\n  relay_prots: [1, 2]\n');
  const p = run(['serve', '--config', cfg], dir);
  t.equal(await exited(p.child), 2);
  t.match(p.err(), `${cfg}:3:3: turn.relay_prots: unknown key`);
  t.same(readdirSync(dir), ['bad.yaml'], 'nothing was created');
});

t.test('--help', async (t) => {
  for (const args of [['--help'], ['serve', '--help'], ['inspect', '--help'], ['rules', '--help']]) {
    const p = run(args, process.cwd());
    t.equal(await exited(p.child), 0, args.join(' '));
    t.match(p.out(), /Usage: gatehouse/);
  }
});

t.test('first start: user created once, TURN answers, metrics and health served, API needs the token', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-serve-'));
  // A reserved block (below the ephemeral range, locked against parallel tests): a TCP
  // port the kernel freed may be another test's UDP relay port a moment later.
  const block = await reservePortBlock(20);
  t.teardown(() => block.release());
  const turnPort = block.port(0);
  const adminPort = block.port(1);
  const relayLow = block.port(10);
  const pcpPort = block.port(2);
  const cfg = join(dir, 'gatehouse.yaml');
  writeFileSync(
    cfg,
    `data_dir: ${join(dir, 'data')}
log_level: warn
turn:
  listen: [udp://127.0.0.1:${turnPort}, tcp://127.0.0.1:${turnPort}]
  relay_ports: [${relayLow}, ${relayLow + 9}]
pcp:
  listen: [udp://127.0.0.1:${pcpPort}]
  external_address: 192.0.2.1
admin:
  listen: http://127.0.0.1:${adminPort}
`,
  );
  const p = run(['serve', '--config', cfg], dir);
  t.teardown(() => void p.child.kill('SIGKILL'));
  await waitReady(turnPort, p.child);

  const res = await stunBinding(turnPort, 2000);
  t.ok(res, 'binding answered');
  t.equal(res!.readUInt16BE(0), 0x0101, 'Binding success response (RFC 8489 §6.3.1)');

  const saved = JSON.parse(readFileSync(join(dir, 'data', 'initial-user.json'), 'utf8'));
  t.equal(saved.name, 'admin');
  t.equal(statSync(join(dir, 'data', 'initial-user.json')).mode & 0o777, 0o600, 'kept with mode 0600');
  // Wait for stdout to carry the one-time notice.
  for (let i = 0; i < 50 && !p.out().includes('First start'); i++) await new Promise((r) => setTimeout(r, 100));
  t.match(p.out(), `password ${saved.password}`, 'printed once on first start');

  // Issue 10: pcp.firewall defaults to none (the host's firewall is not touched unless
  // asked): serve says so at start, and the PCP server never answers SUCCESS for a
  // mapping that would not exist (RFC 6887 §7.4 NO_RESOURCES).
  const map = encodePcpRequest({
    opcode: Opcode.MAP,
    lifetime: 600,
    clientAddress: '127.0.0.1',
    map: { nonce: randomBytes(12), protocol: 17, internalPort: 5000, externalPort: 0, externalAddress: '0.0.0.0' },
  });
  const answer = await udpRequest(pcpPort, map, 2000);
  const decoded = answer ? decodePcpResponse(answer) : null;
  t.ok(decoded?.ok, 'the PCP server answers a MAP request');
  if (decoded?.ok) t.equal(decoded.value.result, Result.NO_RESOURCES, 'NO_RESOURCES: no firewall backend, no mapping');
  t.match(p.out() + p.err(), /mappings cannot be created/, 'serve says at start that PCP cannot create mappings here');

  const health = await fetch(`http://127.0.0.1:${adminPort}/healthz`);
  t.equal(health.status, 200);
  const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  t.match(metrics, /gatehouse_turn_allocations \d+/);
  t.match(metrics, /process_cpu_user_seconds_total/);
  t.match(
    metrics,
    /gatehouse_pcp_responses_total\{opcode="MAP",result="NO_RESOURCES"\} 1/,
    'PCP answers counted per opcode and result code',
  );
  t.match(metrics, /gatehouse_pcp_mappings 0/);
  t.equal((await fetch(`http://127.0.0.1:${adminPort}/v1/events`)).status, 401, 'API refuses without token');
  const token = readFileSync(join(dir, 'data', 'admin-token'), 'utf8').trim();
  const ev = await fetch(`http://127.0.0.1:${adminPort}/v1/events`, { headers: { authorization: `Bearer ${token}` } });
  t.equal(ev.status, 200);
  t.ok(Array.isArray(await ev.json()));

  const flows = await fetch(`http://127.0.0.1:${adminPort}/v1/flows`, { headers: { authorization: `Bearer ${token}` } });
  t.same(await flows.json(), [], 'no flows yet');
  const reload = await fetch(`http://127.0.0.1:${adminPort}/v1/policy/reload`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
  });
  t.equal(reload.status, 200, 'policy reload');
  t.match(await reload.json(), { ok: true });
  const pem = await (await fetch(`http://127.0.0.1:${adminPort}/v1/gateway/certificate`)).text();
  t.match(pem, /^-----BEGIN CERTIFICATE-----/, 'gateway certificate served without a token');
  t.equal(statSync(join(dir, 'data', 'gateway.key')).mode & 0o777, 0o600);

  p.child.kill('SIGTERM');
  t.equal(await exited(p.child), 0, 'clean exit on SIGTERM');

  // Second start: the same user, no password printed again.
  const p2 = run(['serve', '--config', cfg], dir);
  t.teardown(() => void p2.child.kill('SIGKILL'));
  await waitReady(turnPort, p2.child);
  t.notMatch(p2.out(), /First start/);
  p2.child.kill('SIGTERM');
  await exited(p2.child);

  // The bootstrap password and the admin token: only in their files (and the password in
  // the one-time notice on the first start's stdout), never in the log or anywhere else.
  const secrets = new Secrets().turnPassword(saved.name, saved.password, 'gatehouse.local').adminToken(token);
  assertNoSecrets(
    t,
    secrets,
    {
      texts: { 'first start log (stderr)': p.err(), 'second start log (stderr)': p2.err(), 'second start stdout': p2.out() },
      allowedTexts: [
        { name: 'first start stdout', data: p.out(), kinds: ['turn_password'], reason: 'the first-start notice prints it once' },
      ],
      dirs: { DATA_DIR: join(dir, 'data') },
    },
    'password and token never in the log or DATA_DIR',
  );
});
