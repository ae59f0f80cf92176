/**
 * Relay workers get the gateway's private keys only from the supervisor's key broker
 * (issue 13, seed 004 FIG. 7), through `gatehouse serve` with turn.workers: 2,
 * turn.worker_user: nobody and a real redis-server:
 *
 * - both workers run as nobody (every uid and gid in /proc/PID/status), each in its own
 *   DATA_DIR/workers/<i> owned by nobody; DATA_DIR stays root's (0711) and nobody cannot
 *   read gateway.key;
 * - each worker got the identity key and the turn.tls key from the broker (the
 *   supervisor's log names the key, the pid and uid, never key bytes), and serves with
 *   them: Allocate succeeds over UDP, and a TLS client gets turn.tls's certificate;
 * - a foreign process on the broker's socket, as nobody (the workers' own uid) or as
 *   root, is refused and gets no key bytes; the supervisor logs why (unknown_pid);
 * - kill -9 of worker 1: its replacement (a new pid, a new broker record) gets the keys
 *   again and serves.
 *
 * Needs root (setuid), the native addons and redis-server; skipped elsewhere, a failure in CI.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { stringify } from 'yaml';
import { Attr, Class, Method } from '../../src/wire/stun.js';
import { Client } from '../unit/turn/helpers.js';
import { startTestRedis, until } from './helpers/redis.js';
import { reservePortBlock } from './helpers/ports.js';
import { NODE_WITHOUT_TAP, startWorkersServe } from './helpers/workers-serve.js';
import { loadReusePort } from '../../src/util/reuseport.js';
import { loadPeerCred } from '../../src/util/peercred.js';
import { createSelfSigned } from '../../src/store/identity.js';
import { lookupAccount } from '../../src/util/drop-privileges.js';

/** Uid: and Gid: of /proc/PID/status (real, effective, saved, filesystem). */
function ids(pid: number): { uid: number[]; gid: number[] } | null {
  try {
    const st = readFileSync(`/proc/${pid}/status`, 'utf8');
    const row = (k: string) =>
      /^\w+:\s+(.*)$/m
        .exec(st.split('\n').find((l) => l.startsWith(k + ':')) ?? '')?.[1]
        ?.split(/\s+/)
        .map(Number) ?? [];
    return { uid: row('Uid'), gid: row('Gid') };
  } catch {
    return null;
  }
}

/** Node without tap's NODE_OPTIONS (test/e2e/helpers/workers-serve.ts says why). */
const NODE = NODE_WITHOUT_TAP;

/** Runs a Node script as `as` (uid/gid), or as this process, and returns its stdout. */
function runAs(script: string, args: string[], as?: { uid: number; gid: number }): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(NODE[0], [...NODE.slice(1), '-e', script, ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
      ...(as ?? {}),
    });
    let out = '';
    c.stdout!.on('data', (d) => (out += d));
    c.once('error', reject);
    c.once('exit', () => resolve(out.trim()));
  });
}

/** A client of the broker socket: asks for the identity key, prints what came back (or the error). */
const FOREIGN = `
const s = require('node:net').connect(process.argv[1]);
let got = '';
s.on('connect', () => s.write(JSON.stringify({ key: 'identity' }) + '\\n'));
s.on('data', (d) => (got += d));
s.on('error', (e) => { got = 'error ' + e.code; });
s.on('close', () => console.log(got.trim()));
`;

async function main(): Promise<void> {
  const isRoot = process.geteuid?.() === 0;
  const missing = !isRoot
    ? 'needs root (workers drop to nobody)'
    : !loadReusePort().addon || !loadPeerCred()
      ? 'the native addons are not built (npm run build:native)'
      : null;
  if (missing) {
    if (process.env.CI) t.fail(`${missing}: in CI this must run`);
    else t.test('relay workers with turn.worker_user', { skip: missing }, async () => {});
    return;
  }
  const nobody = lookupAccount('nobody');
  const redis = await startTestRedis();
  const block = await reservePortBlock(10);
  const work = mkdtempSync(join(tmpdir(), 'gatehouse-wkeys-'));
  chmodSync(work, 0o755); // the workers (nobody) read the rules from here
  const dataDir = join(work, 'data');
  const rulesDir = join(work, 'rules');
  mkdirSync(rulesDir, { mode: 0o755 });
  writeFileSync(join(rulesDir, 'e2e.yaml'), 'keys:\n  required: false\n  unverified: pass\nrules: []\n', { mode: 0o644 });
  const tls = await createSelfSigned('turn.test.local');
  const tlsKey = join(work, 'turn-tls.key');
  const tlsCert = join(work, 'turn-tls.crt');
  writeFileSync(tlsKey, tls.keyPem, { mode: 0o600 });
  writeFileSync(tlsCert, tls.certPem, { mode: 0o644 });
  const turnPort = block.port(0);
  const tlsPort = block.port(1);
  const config = {
    realm: 'test.local',
    data_dir: dataDir,
    log_level: 'info',
    turn: {
      listen: [`udp://127.0.0.1:${turnPort}`, `tls://127.0.0.1:${tlsPort}`],
      tls: { cert: tlsCert, key: tlsKey },
      relay_address: '127.0.0.1',
      relay_ports: [56000, 56199],
      peers: { allow: ['127.0.0.0/8'] },
      workers: 2,
      worker_user: 'nobody',
    },
    pcp: { listen: [] },
    admin: { listen: `http://127.0.0.1:${block.port(2)}`, token: randomBytes(24).toString('hex') },
    core: { listen: `http://127.0.0.1:${block.port(3)}` },
    users: [{ name: 'alice', password: 'alice-secret-pw', groups: [] }],
    policy: { rules: rulesDir },
    store: { redis: redis.url, node_id: 'gw', sync_interval_ms: 100 },
  };
  const configFile = join(work, 'gatehouse.yaml');
  writeFileSync(configFile, stringify(config), { mode: 0o600 });
  const serve = await startWorkersServe(configFile);
  const { lines, workerPids } = serve;
  t.teardown(async () => {
    await serve.stop();
    await redis.close();
    block.release();
    rmSync(work, { recursive: true, force: true });
  });
  const ready = serve.listening;
  t.ok(ready, 'the supervisor reports its workers');
  if (!ready) {
    t.fail(`gatehouse serve did not start: ${serve.raw().slice(-3000)}`);
    return;
  }
  const initial = ready.workers as { worker: number; pid: number }[];
  const handed = () => lines.filter((l) => l.msg === 'key broker: key handed to worker');

  await t.test('both workers run as nobody, in their own directories; DATA_DIR stays root’s', async (t) => {
    t.equal(initial.length, 2, 'two workers');
    for (const w of initial) {
      const id = ids(w.pid);
      t.same(id?.uid, [nobody.uid, nobody.uid, nobody.uid, nobody.uid], `worker ${w.worker} (pid ${w.pid}): every uid is nobody's`);
      t.same(id?.gid, [nobody.gid, nobody.gid, nobody.gid, nobody.gid], `worker ${w.worker}: every gid is nogroup's`);
      const dir = join(dataDir, 'workers', String(w.worker));
      t.equal(statSync(dir).uid, nobody.uid, `${dir} is nobody's`);
      t.equal(statSync(dir).mode & 0o777, 0o700, `${dir} is 0700`);
    }
    t.equal(statSync(dataDir).uid, 0, 'DATA_DIR is root’s');
    t.equal(statSync(dataDir).mode & 0o777, 0o711, 'DATA_DIR is 0711 (pass through, no listing)');
    const keyFile = join(dataDir, 'gateway.key');
    t.equal(statSync(keyFile).mode & 0o777, 0o600, 'gateway.key is 0600');
    const asNobody = await runAs(
      `try { require('node:fs').readFileSync(process.argv[1]); console.log('read'); } catch (e) { console.log(e.code); }`,
      [keyFile],
      nobody,
    );
    t.equal(asNobody, 'EACCES', 'nobody cannot read gateway.key');
    const tlsNobody = await runAs(
      `try { require('node:fs').readFileSync(process.argv[1]); console.log('read'); } catch (e) { console.log(e.code); }`,
      [tlsKey],
      nobody,
    );
    t.equal(tlsNobody, 'EACCES', 'nobody cannot read the turn.tls key');
  });

  await t.test('each worker got the identity and TLS keys from the broker, and serves with them', async (t) => {
    const h = handed();
    for (const w of initial)
      t.same(
        h
          .filter((l) => l.pid === w.pid)
          .map((l) => l.keyName)
          .sort(),
        w.worker === 0 ? ['core-signing', 'identity', 'turn-tls'] : ['identity', 'turn-tls'],
        `worker ${w.worker}: ${w.worker === 0 ? 'identity, turn-tls and core-signing (it runs the core)' : 'identity and turn-tls only'}`,
      );
    t.ok(
      h.every((l) => l.uid === nobody.uid),
      'served under nobody’s uid only',
    );
    const secretBody = (pem: string) => pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
    const idPem = readFileSync(join(dataDir, 'gateway.key'), 'utf8');
    t.notOk(serve.raw().includes(secretBody(tls.keyPem).slice(0, 40)), 'the TLS key never reaches a log line');
    t.notOk(serve.raw().includes(secretBody(idPem).slice(0, 40)), 'the identity key never reaches a log line');
    const fp = createHash('sha256')
      .update(new X509Certificate(readFileSync(join(dataDir, 'gateway.crt'))).raw)
      .digest('hex');
    const idLines = lines.filter((l) => l.msg === 'gateway identity');
    t.ok(
      idLines.length >= 2 && idLines.every((l) => l.fingerprint === fp),
      `both workers loaded the gateway identity (${fp.slice(0, 16)}…)`,
    );
    // Allocate over UDP from new client ports until both workers hold some (4-tuple hash).
    const created = (i: number) => {
      const f = join(dataDir, 'workers', String(i), 'events.jsonl');
      return existsSync(f)
        ? readFileSync(f, 'utf8')
            .split('\n')
            .filter((l) => l.includes('"action":"created"')).length
        : 0;
    };
    let ok = 0;
    let tried = 0;
    while (tried < 40 && (tried < 6 || created(0) === 0 || created(1) === 0)) {
      tried++;
      const c = await Client.udp(turnPort);
      c.realm = 'test.local';
      c.password = 'alice-secret-pw';
      const r = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
      if (r.cls === Class.Success) ok++;
      c.close(); // the allocation stays until it expires
      await until(() => created(0) + created(1) >= ok, 2000);
    }
    t.equal(ok, tried, `Allocate succeeds over UDP (${tried} clients)`);
    t.ok(created(0) > 0 && created(1) > 0, `allocations on both workers (${created(0)} + ${created(1)})`);
    // Worker 0's /metrics is every worker's, summed by the supervisor (src/admin/worker-metrics.ts).
    const metrics = await (await fetch(`http://127.0.0.1:${block.port(2)}/metrics`)).text();
    t.match(metrics, new RegExp(`^gatehouse_turn_allocations ${ok}$`, 'm'), `worker 0's /metrics counts both workers' ${ok} allocations`);
    t.match(metrics, /^gatehouse_worker_restarts_total 0$/m, 'no restarts yet');
    const served = await new Promise<string>((resolve) => {
      const s = tlsConnect({ host: '127.0.0.1', port: tlsPort, rejectUnauthorized: false }, () => {
        resolve(s.getPeerX509Certificate()?.fingerprint256 ?? 'none');
        s.destroy();
      });
      s.once('error', (e) => resolve('error ' + e.message));
    });
    t.equal(served, new X509Certificate(tls.certPem).fingerprint256, 'the tls:// listener serves turn.tls’s certificate');
  });

  await t.test('a foreign process on the broker socket is refused, as nobody and as root', async (t) => {
    const socket = join(dataDir, 'key-broker', 'keys.sock');
    t.ok(existsSync(socket), 'the broker socket exists');
    const before = lines.filter((l) => l.msg === 'key broker: request refused').length;
    const asNobody = await runAs(FOREIGN, [socket], nobody);
    t.equal(asNobody, '{"ok":false,"error":"refused"}', 'as nobody (the workers’ uid): refused');
    const asRoot = await runAs(FOREIGN, [socket]);
    t.equal(asRoot, '{"ok":false,"error":"refused"}', 'as root: refused');
    t.ok(
      await until(() => lines.filter((l) => l.msg === 'key broker: request refused').length >= before + 2, 5000),
      'both refusals logged',
    );
    const refused = lines.filter((l) => l.msg === 'key broker: request refused').slice(before);
    t.same(
      refused.map((l) => l.reason),
      ['unknown_pid', 'unknown_pid'],
      'refused as unknown_pid',
    );
    t.same(
      refused.map((l) => l.uid),
      [nobody.uid, 0],
      'the log names the uid the kernel reported',
    );
  });

  await t.test('kill -9 of worker 1: its replacement gets the keys again and serves', async (t) => {
    const old = initial.find((w) => w.worker === 1)!.pid;
    const before = handed().length;
    process.kill(old, 'SIGKILL');
    const restarted = () => lines.find((l) => l.msg === 'relay worker serving' && l.worker === 1 && l.restarts === 1);
    t.ok(await until(() => !!restarted(), 30_000), 'worker 1 restarted');
    const pid = restarted()?.pid as number;
    workerPids.add(pid);
    t.not(pid, old, 'a new process');
    t.same(
      handed()
        .slice(before)
        .filter((l) => l.pid === pid)
        .map((l) => l.keyName)
        .sort(),
      ['identity', 'turn-tls'],
      'the new worker got its keys under its own pid',
    );
    t.same(ids(pid)?.uid, [nobody.uid, nobody.uid, nobody.uid, nobody.uid], 'and runs as nobody');
    const metrics = await (await fetch(`http://127.0.0.1:${block.port(2)}/metrics`)).text();
    t.match(metrics, /^gatehouse_worker_restarts_total 1$/m, "worker 0's /metrics counts the restart (the supervisor's count)");
  });
}

await main();
