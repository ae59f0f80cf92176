/**
 * The supervisor's key broker (issue 13, src/util/key-broker.ts): a worker it spawned,
 * which bound as root and dropped to `nobody`, gets the key; a foreign process on the
 * same socket (as `nobody` too, and as root) is refused; a recorded worker whose start
 * time does not match is refused; a malformed request closes only its own connection;
 * without the SO_PEERCRED addon every request is refused and the log says why once.
 * Real processes and real Unix sockets throughout.
 *
 * Needs root (workers drop privileges; CI runs as root) and the addon
 * (native/build/Release/gatehouse_peercred.node, npm run build:native): without either
 * these tests fail in CI and skip elsewhere.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, mkdtempSync, openSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { KeyBroker, type WorkerRecord } from '../../../src/util/key-broker.js';
import { requestKey } from '../../../src/util/key-client.js';
import { dropPrivileges, lookupAccount } from '../../../src/util/drop-privileges.js';
import { loadPeerCred, socketFd } from '../../../src/util/peercred.js';
import { isDead, parseProcStat, readProcStat } from '../../../src/util/proc-stat.js';
import { createLogger } from '../../../src/util/log.js';

const ROOT = resolve(import.meta.dirname, '../../..');
const WORKER = join(import.meta.dirname, 'key-worker.ts');
// Node children start through env(1) without NODE_OPTIONS: tap adds its process-info hook
// to every spawn's environment, and that hook writes into .tap/ at exit, which a process
// running as nobody may not. env execs node in the same process (same pid, same start
// time: the broker's record holds across exec).
const CHILD_ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
const NODE = ['/usr/bin/env', '-u', 'NODE_OPTIONS', process.execPath] as const;
const addon = loadPeerCred();
const isRoot = process.getuid?.() === 0;
const why = !isRoot
  ? 'the key broker tests run as root (workers drop privileges)'
  : !addon
    ? 'native/build/Release/gatehouse_peercred.node not built (npm run build:native, Linux)'
    : null;
const skip = why && !process.env.CI ? why : false;
if (why && process.env.CI) t.fail(`${why}: required in CI`);

const KEYS = new Map([
  ['identity', randomBytes(121)],
  ['tls', randomBytes(1700)],
]);
const keyTexts = [...KEYS.values()].flatMap((k) => [k.toString('base64'), k.toString('hex')]);

/** A logger whose lines land in an array (parsed), for asserting what was and was not logged. */
function capturedLog(): { log: ReturnType<typeof createLogger>; lines: Record<string, unknown>[]; raw: string[] } {
  const lines: Record<string, unknown>[] = [];
  const raw: string[] = [];
  const log = createLogger({ level: 'debug', name: 'test' }, { write: (s: string) => void (raw.push(s), lines.push(JSON.parse(s))) });
  return { log, lines, raw };
}

/** Lines of a child's stdout, one at a time, parsed. */
function jsonLines(child: ChildProcess): () => Promise<Record<string, unknown>> {
  const queue: Record<string, unknown>[] = [];
  const waiting: ((v: Record<string, unknown>) => void)[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => {
    const v = JSON.parse(l) as Record<string, unknown>;
    const w = waiting.shift();
    if (w) w(v);
    else queue.push(v);
  });
  return () => (queue.length ? Promise.resolve(queue.shift()!) : new Promise((r) => waiting.push(r)));
}

async function startBroker(t: Test, opts: { peercred?: null } = {}) {
  const parent = mkdtempSync(join(tmpdir(), 'gh-keybroker-'));
  t.teardown(() => rmSync(parent, { recursive: true, force: true }));
  chmodSync(parent, 0o711); // every directory above the broker's own must let the workers through
  const nobody = lookupAccount('nobody');
  const cap = capturedLog();
  const broker = await KeyBroker.start({ dir: join(parent, 'broker'), keys: KEYS, log: cap.log, socketGroup: nobody.gid, ...opts });
  t.teardown(() => broker.close());
  return { broker, nobody, ...cap };
}

/** A worker spawned by the broker (tsx), ready: bound, dropped (unless drop is false) and reporting its ids. */
async function spawnWorker(t: Test, broker: KeyBroker, nobody: { uid: number; gid: number }, drop = true, keyNames?: string[]) {
  const child = broker.spawnWorker(
    NODE[0],
    [...NODE.slice(1), '--import', 'tsx', WORKER, JSON.stringify({ socket: broker.socketPath, account: nobody, drop })],
    {
      workerUid: nobody.uid,
      ...(keyNames ? { keyNames } : {}),
      stdio: ['pipe', 'pipe', 'inherit'],
      cwd: ROOT,
      env: CHILD_ENV,
    },
  );
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  t.teardown(async () => {
    child.stdin!.end();
    await exited;
  });
  const next = jsonLines(child);
  const ready = await next();
  const ask = async (name: string) => {
    child.stdin!.write(name + '\n');
    return next();
  };
  return { child, ready, ask };
}

/** A process the broker did not spawn: `node -e` connecting to the socket and asking for the identity key. */
function foreign(socket: string, ids?: { uid: number; gid: number }): Promise<{ pid: number; got: string }> {
  const script = `const s=require('net').connect(process.argv[1]);let got='';
s.on('connect',()=>s.write(JSON.stringify({key:'identity'})+'\\n'));
s.on('data',(d)=>got+=d.toString('latin1'));
s.on('error',(e)=>got+='<'+e.code+'>');
s.on('close',()=>process.stdout.write(JSON.stringify({got})));`;
  const child = spawn(NODE[0], [...NODE.slice(1), '-e', script, socket], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: CHILD_ENV,
    cwd: '/',
    ...ids,
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve, reject) =>
    child.once('exit', (code) =>
      code === 0
        ? resolve({ pid: child.pid!, got: (JSON.parse(out) as { got: string }).got })
        : reject(new Error(`node -e exited ${code}`)),
    ),
  );
}

/** A raw connection from this test process: writes `bytes`, resolves with everything read until the broker closed it. */
function raw(socket: string, bytes: Buffer | string): { conn: Socket; closed: Promise<string> } {
  const conn = connect(socket);
  let got = '';
  conn.on('data', (d: Buffer) => (got += d.toString('latin1')));
  conn.on('connect', () => conn.write(bytes));
  const closed = new Promise<string>((r) => conn.once('close', () => r(got)));
  conn.on('error', () => {});
  return { conn, closed };
}

const noKeyIn = (t: Test, text: string, what: string) =>
  t.notOk(
    keyTexts.some((k) => text.includes(k)),
    `${what}: no key bytes`,
  );

t.test('/proc/PID/stat: fields after the last ")", whatever the comm holds', async (t) => {
  const tail = ' S 4242 7 7 0 -1 4194304 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n';
  t.same(parseProcStat('1234 (a) b (c)' + tail), { pid: 1234, state: 'S', ppid: 4242, startTime: '987654' });
  t.same(parseProcStat('1234 ()) ) )' + tail)?.startTime, '987654', 'a comm of parentheses and spaces');
  t.same(parseProcStat('1234 (node)' + tail.replace(' S ', ' Z '))?.state, 'Z');
  t.equal(parseProcStat('1234 (node) S 1 2 3'), null, 'too few fields');
  t.equal(parseProcStat('abc (node)' + tail), null, 'pid not a number');
  t.equal(parseProcStat('1234 node' + tail), null, 'no comm');
  t.equal(parseProcStat('1234 (node)' + tail.replace('987654', '98x654')), null, 'start time not a number');
  t.equal(readProcStat(0), null);
  t.equal(readProcStat(2 ** 31 - 1), null, 'no such process');

  // A real process that named itself with ')' and spaces: a naive split would misread its parent.
  const child = spawn(process.execPath, ['-e', `process.title='x) y (z'; process.stdout.write('ok'); process.stdin.resume()`], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await new Promise((r) => child.stdout.once('data', r));
  const st = readProcStat(child.pid!);
  const self = readProcStat(process.pid)!;
  t.ok(st, 'read');
  t.equal(st!.ppid, process.pid, 'its parent is this test');
  t.notOk(isDead(st!));
  t.ok(BigInt(st!.startTime) >= BigInt(self.startTime), 'it started after this test did');
  t.equal(readProcStat(child.pid!)!.startTime, st!.startTime, 'a process keeps its start time');
  child.stdin.end();
  await new Promise((r) => child.once('exit', r));
});

t.test('accounts: names from passwd(5), numbers as given; a drop to root is refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-passwd-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'passwd');
  writeFileSync(file, 'root:x:0:0:root:/root:/bin/sh\ngatehouse:x:990:985:Gatehouse:/var/lib/gatehouse:/usr/sbin/nologin\n');
  t.same(lookupAccount('gatehouse', file), { uid: 990, gid: 985 });
  t.same(lookupAccount('1234'), { uid: 1234, gid: 1234 });
  t.same(lookupAccount('1234:5678'), { uid: 1234, gid: 5678 });
  t.throws(() => lookupAccount('nosuchuser', file), { code: 'E_PRIVDROP' });
  t.throws(() => dropPrivileges({ uid: 0, gid: 0 }), { code: 'E_PRIVDROP' }, 'uid 0 is no drop');
  t.equal(process.getuid!(), isRoot ? 0 : process.getuid!(), 'this process kept its ids');
});

t.test('SO_PEERCRED: the connecting process, as the kernel saw it', { skip }, async (t) => {
  const path = join(mkdtempSync(join(tmpdir(), 'gh-peercred-')), 's');
  const server = createServer();
  await new Promise<void>((r) => server.listen(path, r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const c = connect(path);
  const s = await accepted;
  const fd = socketFd(s);
  t.type(fd, 'number');
  t.same(addon!.peercred(fd!), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
  const file = openSync(process.execPath, 'r');
  t.teardown(() => closeSync(file));
  t.throws(() => addon!.peercred(file), { message: 'Socket operation on non-socket' }, 'a file is not a socket');
  c.destroy();
  s.destroy();
});

t.test('a worker the broker spawned, dropped to nobody after binding, gets the keys', { skip }, async (t) => {
  const { broker, nobody, lines, raw: rawLog } = await startBroker(t);
  // Only the workers' group reaches the socket; the gate is SO_PEERCRED below.
  const dirSt = statSync(join(broker.socketPath, '..'));
  const sockSt = statSync(broker.socketPath);
  t.equal(dirSt.mode & 0o777, 0o710, 'directory 0710');
  t.equal(dirSt.gid, nobody.gid, "directory in the workers' group");
  t.equal(sockSt.mode & 0o777, 0o660, 'socket 0660');
  t.equal(sockSt.gid, nobody.gid);
  t.ok(sockSt.isSocket());

  const w = await spawnWorker(t, broker, nobody);
  t.match(w.ready, { ready: true, uid: nobody.uid, euid: nobody.uid, gid: nobody.gid }, 'the worker runs as nobody');
  t.equal(w.ready.regain, 'EPERM', 'setuid(0) is refused after the drop');
  // The uid change cleared its dumpable flag: its /proc files stay root's, so another
  // process of the nobody account cannot ptrace it or read its memory.
  t.equal(statSync(`/proc/${w.child.pid}/status`).uid, 0, 'the worker is not dumpable');
  const rec = broker.workers().get(w.child.pid!);
  t.match(rec, { pid: w.child.pid, uid: nobody.uid }, 'recorded at spawn');
  t.match(rec!.startTime, /^\d+$/);
  // The listener bound as root still serves after the drop.
  const hello = await new Promise<string>((r) => {
    let got = '';
    connect(w.ready.port as number, '127.0.0.1')
      .on('data', (d) => (got += d))
      .on('close', () => r(got));
  });
  t.equal(hello, 'bound-before-drop\n');

  for (const [name, key] of KEYS) {
    const a = await w.ask(name);
    t.equal(a.ok, true, `${name} handed over`);
    t.ok(Buffer.from(a.key as string, 'base64').equals(key), `${name}: the bytes match`);
  }
  t.match(await w.ask('no-such-key'), { ok: false, code: 'E_KEY_REFUSED' }, 'a key the broker does not hold');
  t.same(Object.fromEntries(broker.served), { identity: 1, tls: 1 });
  t.same(Object.fromEntries(broker.refusals), { unknown_key: 1 });
  t.ok(
    lines.some((l) => l.msg === 'key broker: key handed to worker' && l.pid === w.child.pid && l.keyName === 'identity'),
    'the hand-over is logged with pid and name',
  );
  noKeyIn(t, rawLog.join(''), 'the log');

  // The same program, spawned by the broker but still root (it skipped the drop): refused.
  const root = await spawnWorker(t, broker, nobody, false);
  t.equal(root.ready.uid, 0);
  t.match(await root.ask('identity'), { ok: false, code: 'E_KEY_REFUSED' }, 'a worker that did not drop is refused');
  t.equal(broker.refusals.get('uid_mismatch'), 1);

  // A worker that exited is forgotten.
  const pid = w.child.pid!;
  const gone = new Promise((r) => w.child.once('exit', r));
  w.child.stdin!.end();
  await gone;
  t.notOk(broker.workers().has(pid), 'an exited worker is no longer recorded');
});

t.test('a worker spawned with key names gets those keys only', { skip }, async (t) => {
  const { broker, nobody, lines } = await startBroker(t);
  const w = await spawnWorker(t, broker, nobody, true, ['tls']);
  t.match(await w.ask('tls'), { ok: true }, 'a key it may have');
  t.match(await w.ask('identity'), { ok: false, code: 'E_KEY_REFUSED' }, 'a key the broker holds, but not for this worker');
  t.same(Object.fromEntries(broker.refusals), { unknown_key: 1 });
  t.ok(
    lines.some((l) => l.msg === 'key broker: request refused' && l.keyName === 'identity' && l.reason === 'unknown_key'),
    'the refusal is logged with the name and reason',
  );
});

t.test('a foreign process on the same socket is refused and gets no key bytes', { skip }, async (t) => {
  const { broker, nobody, lines, raw: rawLog } = await startBroker(t);
  const w = await spawnWorker(t, broker, nobody); // a real worker exists: the foreigner shares its uid

  const asNobody = await foreign(broker.socketPath, nobody);
  t.equal(asNobody.got, '{"ok":false,"error":"refused"}\n', 'nobody, not spawned by the broker: refused');
  noKeyIn(t, asNobody.got, 'its answer');
  const asRoot = await foreign(broker.socketPath);
  t.equal(asRoot.got, '{"ok":false,"error":"refused"}\n', 'root, not spawned by the broker: refused');
  noKeyIn(t, asRoot.got, 'its answer');

  t.equal(broker.refusals.get('unknown_pid'), 2);
  const refused = lines.filter((l) => l.msg === 'key broker: request refused');
  t.match(refused, [
    { level: 40, pid: asNobody.pid, uid: nobody.uid, reason: 'unknown_pid', keyName: 'identity' },
    { level: 40, pid: asRoot.pid, uid: 0, reason: 'unknown_pid', keyName: 'identity' },
  ]);
  noKeyIn(t, rawLog.join(''), 'the log');

  // The worker itself is still served.
  const a = await w.ask('identity');
  t.ok(a.ok === true && Buffer.from(a.key as string, 'base64').equals(KEYS.get('identity')!), 'the worker still gets its key');
});

t.test('a recorded worker whose start time does not match is refused', { skip }, async (t) => {
  const { broker, nobody, lines } = await startBroker(t);
  const w = await spawnWorker(t, broker, nobody);
  const rec = broker.workers().get(w.child.pid!)!;
  // What a pid reused by another process looks like: same pid and uid, another start time.
  (rec as { -readonly [K in keyof WorkerRecord]: WorkerRecord[K] }).startTime = String(BigInt(rec.startTime) + 1n);
  t.match(await w.ask('identity'), { ok: false, code: 'E_KEY_REFUSED' });
  t.same(Object.fromEntries(broker.refusals), { start_time_mismatch: 1 });
  t.ok(lines.some((l) => l.reason === 'start_time_mismatch' && l.pid === w.child.pid && l.uid === nobody.uid));
  t.equal(broker.served.size, 0, 'nothing handed over');
});

t.test('a malformed request closes that connection only; the broker still serves', { skip }, async (t) => {
  const { broker, nobody } = await startBroker(t);
  const w = await spawnWorker(t, broker, nobody);
  // A connection left open across the malformed ones, answered afterwards.
  const bystander = connect(broker.socketPath);
  await new Promise((r) => bystander.once('connect', r));

  const malformed = '{"ok":false,"error":"malformed"}\n';
  t.equal(await raw(broker.socketPath, '{"key":\n').closed, malformed, 'not JSON');
  t.equal(await raw(broker.socketPath, '{"key":"identity","pid":1}\n').closed, malformed, 'a member beyond "key"');
  t.equal(await raw(broker.socketPath, '{"key":"../identity"}\n').closed, malformed, 'not a key name');
  t.equal(await raw(broker.socketPath, '["identity"]\n').closed, malformed, 'not an object');
  t.equal(await raw(broker.socketPath, Buffer.from([0x7b, 0xff, 0xfe, 0x7d, 0x0a])).closed, malformed, 'not UTF-8');
  t.equal(await raw(broker.socketPath, 'x'.repeat(300)).closed, malformed, 'longer than a request line, no newline');
  t.equal(await raw(broker.socketPath, '{"key":"identity"}' + ' '.repeat(300) + '\n').closed, malformed, 'a line too long');

  const bystanderAnswer = new Promise<string>((r) => {
    let got = '';
    bystander.on('data', (d: Buffer) => (got += d)).once('close', () => r(got));
  });
  bystander.write('{"key":"tls"}\n');
  t.equal(
    await bystanderAnswer,
    '{"ok":false,"error":"refused"}\n',
    'the open connection is still answered (refused: this test is no worker)',
  );
  const a = await w.ask('tls');
  t.ok(a.ok === true && Buffer.from(a.key as string, 'base64').equals(KEYS.get('tls')!), 'the worker is still served');
  t.same(Object.fromEntries(broker.refusals), { unknown_pid: 1 });
});

t.test('without the SO_PEERCRED addon every request is refused, and the log says why once', { skip: isRoot ? false : skip }, async (t) => {
  const { broker, nobody, lines } = await startBroker(t, { peercred: null });
  const w = await spawnWorker(t, broker, nobody);
  t.match(await w.ask('identity'), { ok: false, code: 'E_KEY_REFUSED' }, 'a genuine worker is refused');
  t.match(await w.ask('tls'), { ok: false, code: 'E_KEY_REFUSED' });
  await t.rejects(requestKey(broker.socketPath, 'identity'), { code: 'E_KEY_REFUSED' });
  t.same(Object.fromEntries(broker.refusals), { no_peercred: 3 });
  const said = lines.filter((l) => typeof l.msg === 'string' && (l.msg as string).includes('SO_PEERCRED addon is not built'));
  t.equal(said.length, 1, 'said once');
  t.equal(said[0]!.level, 40, 'as a warning');
  t.equal(broker.served.size, 0);
});
