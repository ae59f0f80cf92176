/**
 * A full disk degrades service and says so (issue 8): `gatehouse serve` with its
 * events.jsonl on a tmpfs of 16 KiB. TURN traffic (Allocate, CreatePermission) makes
 * more events than fit; the server must keep answering (STUN Binding over UDP,
 * /healthz), /metrics must count the dropped events, the log must say so once, and
 * once there is room again the log says so once more and events are written again.
 *
 * Needs root for mount(8) (CI runs as root): when the mount fails in CI the test fails.
 */
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Attr, Class, Method, type StunWriter } from '../../src/wire/stun.js';
import { Client, errCode } from '../unit/turn/helpers.js';
import { reservePortBlock } from './helpers/ports.js';

const BIN = join(process.cwd(), 'bin', 'gatehouse.js');

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

const udpTransport = (w: StunWriter): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));
const peerAttr =
  (ip: string, port: number) =>
  (w: StunWriter): void =>
    void w.xorAddress(Attr.XorPeerAddress, ip, port);

const work = mkdtempSync(join(tmpdir(), 'gh-disk-full-'));
const small = join(work, 'small');
mkdirSync(small);
const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16k,mode=0700', 'tmpfs', small], { encoding: 'utf8' });
const mounted = mount.status === 0;
t.teardown(() => {
  if (mounted) {
    const u = spawnSync('umount', [small]);
    if (u.status !== 0) spawnSync('umount', ['-l', small]);
  }
  rmSync(work, { recursive: true, force: true });
});

const why = `cannot mount a 16 KiB tmpfs (needs root): ${mount.stderr?.trim() || mount.error?.message || mount.status}`;
// In CI (root) a failed mount is a failure; elsewhere the test skips with the reason.
const skip = !mounted && !process.env.CI ? why : false;

t.test('events.jsonl on a full disk: the gateway keeps serving, counts and logs the drops once', { skip }, async (t) => {
  if (!mounted) {
    t.fail(why);
    return;
  }
  // A reserved block (below the ephemeral range, locked against parallel tests).
  const block = await reservePortBlock(50);
  t.teardown(() => block.release());
  const turnPort = block.port(0);
  const adminPort = block.port(1);
  const relayLow = block.port(10);
  const data = join(work, 'data');
  mkdirSync(data, { recursive: true, mode: 0o700 });
  symlinkSync(join(small, 'events.jsonl'), join(data, 'events.jsonl')); // the only file on the small disk
  const cfg = join(work, 'gatehouse.yaml');
  writeFileSync(
    cfg,
    `data_dir: ${data}
log_level: info
turn:
  listen: [udp://127.0.0.1:${turnPort}]
  relay_ports: [${relayLow}, ${relayLow + 39}]
  peers:
    allow: [127.0.0.0/8]
pcp:
  listen: []
admin:
  listen: http://127.0.0.1:${adminPort}
users:
  - { name: alice, password: pw-disk-full-9f3a }
`,
  );
  const child: ChildProcess = spawn(process.execPath, [BIN, 'serve', '--config', cfg], { cwd: work, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  child.stdout!.resume();
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await gone; // the tmpfs can be unmounted once nothing holds the file open
    }
  });
  let ready = false;
  for (let i = 0; i < 150 && !ready; i++) {
    if (child.exitCode !== null) break;
    ready = !!(await stunBinding(turnPort, 200));
  }
  t.ok(ready, `gatehouse answers STUN (stderr: ${err.slice(-500)})`);
  if (!ready) return;

  const metric = async (re: RegExp): Promise<number> => {
    const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    const m = re.exec(text);
    return m ? Number(m[1]) : 0;
  };
  const logged = (msg: string) =>
    err
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        try {
          return JSON.parse(l) as { msg?: string };
        } catch {
          return {};
        }
      })
      .filter((l) => l.msg?.startsWith(msg)).length;

  // Traffic that makes events: each client one allocation and five permissions (one event each).
  const clients: Client[] = [];
  t.teardown(() => clients.forEach((c) => c.close()));
  const traffic = async (n: number, base: number) => {
    for (let i = 0; i < n; i++) {
      const c = await Client.udp(turnPort);
      c.password = 'pw-disk-full-9f3a';
      clients.push(c);
      const a = await c.authed(Method.Allocate, udpTransport);
      t.equal(a.cls, Class.Success, 'Allocate succeeds');
      for (let p = 0; p < 5; p++) {
        const r = await c.authed(Method.CreatePermission, peerAttr(`127.0.${base + i}.${p + 1}`, 9));
        if (r.cls !== Class.Success) t.fail('CreatePermission failed');
      }
    }
  };
  await traffic(12, 1); // ~72 events of ~400 bytes: far more than 16 KiB
  const droppedRe = /gatehouse_events_dropped_total\{reason="enospc"\} (\d+)/;
  let dropped = 0;
  for (let i = 0; i < 100 && dropped === 0; i++) {
    dropped = await metric(droppedRe);
    if (!dropped) await new Promise((r) => setTimeout(r, 50));
  }
  t.ok(dropped > 0, `events dropped on the full disk: ${dropped}`);
  t.equal(await metric(/gatehouse_degraded\{component="events"\} (\d+)/), 1, 'gatehouse_degraded{component="events"} 1');

  // Still serving: more traffic, Binding, health.
  await traffic(2, 20);
  const b = await stunBinding(turnPort, 2000);
  t.ok(b, 'Binding answered after the disk filled');
  t.equal(b?.readUInt16BE(0), 0x0101, 'Binding success response');
  const health = await fetch(`http://127.0.0.1:${adminPort}/healthz`);
  t.equal(health.status, 200, '/healthz answers');
  t.same(await health.json(), { status: 'degraded', degraded: ['events'] }, '/healthz names what cannot write');
  t.equal(child.exitCode, null, 'the process is still running');
  t.equal(logged('events.jsonl: cannot write'), 1, 'the log says so once');
  t.equal(await metric(/gatehouse_supervised_exceptions_total\{where="[^"]*"\} (\d+)/), 0, 'no exception escaped');

  const text = readFileSync(join(small, 'events.jsonl'), 'utf8');
  t.ok(text.length > 0 && text.endsWith('\n'), 'what fit ends on a whole line');
  for (const line of text.trim().split('\n')) JSON.parse(line);

  // Room again: the next retry writes, the log says so once, and the counter stops growing.
  truncateSync(join(small, 'events.jsonl'), 0);
  let degraded = 1;
  for (let i = 0; i < 60 && degraded === 1; i++) {
    const r = await clients[i % clients.length]!.authed(Method.CreatePermission, peerAttr(`127.1.${i}.1`, 9)); // one more event
    t.equal(r.cls, Class.Success, `CreatePermission (${errCode(r)})`);
    degraded = await metric(/gatehouse_degraded\{component="events"\} (\d+)/);
    if (degraded) await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(degraded, 0, 'recovered');
  t.same(await (await fetch(`http://127.0.0.1:${adminPort}/healthz`)).json(), { status: 'ok' }, '/healthz ok again');
  t.equal(logged('events.jsonl: writing again'), 1, 'the log says the recovery once');
  t.ok(await metric(/gatehouse_events_written_total (\d+)/), 'events written');
  t.match(readFileSync(join(small, 'events.jsonl'), 'utf8'), /"event_type":"permission"/, 'new events reach the file');
  t.notMatch(err, /pw-disk-full-9f3a/, 'no password in the log');
});
