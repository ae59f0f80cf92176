// core.md §1 and §4 over real HTTP: a director (`gatehouse serve` with core.pool) and two
// `gatehouse core-fe` processes, each in its own data dir, calls signed with core.pool_secret.
import t from 'tap';
import Database from 'better-sqlite3';
import { spawn, type ChildProcess } from 'node:child_process';
import { createPublicKey, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './helpers/ports.js';
import { call, digestAuthorization, encryptKey, joinAsGuest, newConferenceKey, sha256hex } from './helpers/core-guest.js';

const BIN = join(process.cwd(), 'bin', 'gatehouse.js');
const dir = mkdtempSync(join(tmpdir(), 'gh-core-pool-'));
const poolSecret = randomBytes(30).toString('base64url');
const password = randomBytes(12).toString('base64url');
const secrets: { what: string; value: string }[] = [
  { what: 'pool secret', value: poolSecret },
  { what: 'password', value: password },
];
const procs: { name: string; child: ChildProcess; out: string }[] = [];

t.teardown(() => {
  for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function run(name: string, args: string[]): (typeof procs)[number] {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const p = { name, child, out: '' };
  child.stdout!.on('data', (d) => (p.out += d));
  child.stderr!.on('data', (d) => (p.out += d));
  procs.push(p);
  return p;
}

async function until<T>(what: string, fn: () => Promise<T | null | undefined> | T | null | undefined, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch {
      /* not yet */
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Fe {
  name: string;
  url: string;
  dataDir: string;
  proc: (typeof procs)[number];
  publicPem: () => string;
}

async function startFe(name: string): Promise<Fe> {
  const port = await freePort();
  const dataDir = join(dir, name);
  const cfg = join(dir, `${name}.yaml`);
  writeFileSync(cfg, `data_dir: ${dataDir}\nlog_level: debug\ncore:\n  listen: http://127.0.0.1:${port}\n  pool_secret: ${poolSecret}\n`);
  const proc = run(name, ['core-fe', '--config', cfg]);
  await until(`${name} to listen`, () => {
    if (proc.child.exitCode !== null) throw new Error(`${name} exited: ${proc.out}`);
    return proc.out.includes('listening on');
  });
  const publicPem = () =>
    createPublicKey(readFileSync(join(dataDir, 'core-fe', 'fe-key.pem')))
      .export({ type: 'spki', format: 'pem' })
      .toString();
  return { name, url: `http://127.0.0.1:${port}`, dataDir, proc, publicPem };
}

function conferencesOn(fe: Fe): string[] {
  const db = new Database(join(fe.dataDir, 'core-fe', 'fe.sqlite'), { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT id FROM conferences').all() as { id: string }[]).map((r) => r.id);
  } finally {
    db.close();
  }
}

t.test('a director and two core-fe processes', async (t) => {
  const t0 = Date.now();
  const [fe1, fe2] = await Promise.all([startFe('fe1'), startFe('fe2')]);
  t.equal(statSync(join(fe1.dataDir, 'core-fe', 'fe-key.pem')).mode & 0o777, 0o600, 'FE private key 0600');
  t.equal(statSync(join(fe1.dataDir, 'core-fe', 'fe-kek.bin')).mode & 0o777, 0o600, 'FE key-encryption key 0600');

  // An FE answers nobody but a director holding the pool secret: never open.
  const open = await fetch(`${fe1.url}/fe/v1/info`);
  t.equal(open.status, 401, 'unsigned request to an FE');
  t.notMatch(await open.text(), /PUBLIC KEY/);

  const turnPort = await freePort('udp');
  const corePort = await freePort();
  const adminPort = await freePort();
  const pcpPort = await freePort('udp');
  const relayLow = 40000 + (turnPort % 2000) * 10;
  const cfg = join(dir, 'director.yaml');
  writeFileSync(
    cfg,
    `data_dir: ${join(dir, 'director')}
realm: gatehouse.test
log_level: debug
users:
  - { name: alice, password: "${password}", groups: [staff] }
turn:
  listen: [udp://127.0.0.1:${turnPort}]
  relay_ports: [${relayLow}, ${relayLow + 9}]
pcp:
  listen: [udp://127.0.0.1:${pcpPort}]
  external_address: 192.0.2.1
admin:
  listen: http://127.0.0.1:${adminPort}
core:
  listen: http://127.0.0.1:${corePort}
  pool: [${fe1.url}, ${fe2.url}]
  pool_secret: ${poolSecret}
`,
  );
  const director = run('director', ['serve', '--config', cfg]);
  const base = `http://127.0.0.1:${corePort}`;
  await until('the director', async () => {
    if (director.child.exitCode !== null) throw new Error(`director exited: ${director.out}`);
    return (await call(base, 'GET', '/v1/conference-key')).status === 401;
  });

  // Log in (core.md §3, Digest SHA-256).
  const ch = await call(base, 'POST', '/v1/login');
  t.equal(ch.status, 401);
  const www = ch.headers.get('www-authenticate')!;
  const login = await call(base, 'POST', '/v1/login', {
    authorization: digestAuthorization(
      www.split(/,\s*(?=Digest )/).find((c) => /^Digest /.test(c))!,
      'alice',
      password,
      'POST',
      '/v1/login',
    ),
  });
  t.equal(login.status, 200, `login: ${login.text}`);
  const alice = login.json.token as string;
  secrets.push({ what: 'user token', value: alice });

  // The two FE ids: opaque, one per FE, each with that FE's own public key.
  const keyOf = new Map<string, string>();
  for (let i = 0; i < 6 && keyOf.size < 2; i++) {
    const r = await call(base, 'GET', '/v1/conference-key', { token: alice });
    t.equal(r.status, 200);
    keyOf.set(r.json.fe, r.json.public_key);
  }
  t.equal(keyOf.size, 2, 'both FEs are offered');
  const feOfId = new Map<string, Fe>();
  for (const [id, pem] of keyOf) {
    t.notMatch(id, new RegExp(`${fe1.url.split(':').pop()}|${fe2.url.split(':').pop()}|127\\.0`), 'the id says nothing of the pool');
    const fe = [fe1, fe2].find((f) => f.publicPem() === pem);
    t.ok(fe, 'the public key is one FE’s own');
    feOfId.set(id, fe!);
  }
  t.not(feOfId.get([...keyOf.keys()][0]!), feOfId.get([...keyOf.keys()][1]!));

  // Conferences created through either FE id land on that FE, and only there.
  const confs: { id: string; k: string; fe: Fe }[] = [];
  for (const [feId, pem] of keyOf) {
    for (let i = 0; i < 2; i++) {
      const k = newConferenceKey();
      secrets.push({ what: 'conference key', value: k });
      const r = await call(base, 'POST', '/v1/conferences', { token: alice, body: { fe: feId, key: encryptKey(pem, k), title: `c${i}` } });
      t.equal(r.status, 201, r.text);
      t.match(r.json.join_url, new RegExp(`/join/${r.json.id}$`));
      confs.push({ id: r.json.id, k, fe: feOfId.get(feId)! });
    }
  }
  for (const c of confs) {
    const other = c.fe === fe1 ? fe2 : fe1;
    t.ok(conferencesOn(c.fe).includes(c.id), `${c.id} is on ${c.fe.name}`);
    t.notOk(conferencesOn(other).includes(c.id), `and not on ${other.name}`);
  }

  // A forged FE id: 409 unknown_fe.
  const [anyId, anyPem] = [...keyOf][0]!;
  const forged = await call(base, 'POST', '/v1/conferences', {
    token: alice,
    body: { fe: anyId.slice(0, -2) + (anyId.endsWith('AA') ? 'BB' : 'AA'), key: encryptKey(anyPem, newConferenceKey()) },
  });
  t.equal(forged.status, 409);
  t.equal(forged.json.error.code, 'unknown_fe');

  // core.md §4.3: the join.
  const [a, b] = confs;
  const path = `/v1/conferences/${a!.id}/join`;
  const challenge = await call(base, 'POST', path);
  t.equal(challenge.status, 401);
  t.match(
    challenge.headers.get('www-authenticate'),
    new RegExp(`^Digest realm="conference:${a!.id}", qop="auth", algorithm=SHA-256, nonce="[^"]+", opaque="[^"]+"$`),
  );
  const wrong = await joinAsGuest(base, a!.id, 'guest1', newConferenceKey());
  t.equal(wrong.answer.status, 401, 'wrong key');
  t.equal(wrong.answer.json.error.code, 'unauthenticated');
  const ok = await joinAsGuest(base, a!.id, 'guest1', a!.k);
  t.equal(ok.answer.status, 200, ok.answer.text);
  t.same(Object.keys(ok.answer.json).sort(), ['conference', 'expires', 'identity', 'token', 'turn']);
  t.equal(ok.answer.json.conference, a!.id);
  t.equal(ok.answer.json.identity, 'guest1');
  t.match(ok.answer.json.turn.username, new RegExp(`^\\d+:guest/${a!.id}/guest1$`));
  const guestToken = ok.answer.json.token as string;
  secrets.push({ what: 'guest token', value: guestToken }, { what: 'TURN credential', value: ok.answer.json.turn.credential });
  secrets.push({ what: 'HA1', value: sha256hex(`guest1:conference:${a!.id}:${a!.k}`) });

  const dup = await joinAsGuest(base, a!.id, 'guest1', a!.k);
  t.equal(dup.answer.status, 409, 'duplicate identity');
  t.equal(dup.answer.json.error.code, 'identity_in_use');
  t.equal((await joinAsGuest(base, a!.id, 'guest1', newConferenceKey())).answer.status, 401, 'a duplicate with a wrong key learns nothing');

  for (let round = 0; round < 3; round++) {
    const who = `racer${round}`;
    const race = await Promise.all([joinAsGuest(base, a!.id, who, a!.k), joinAsGuest(base, a!.id, who, a!.k)]);
    t.same(race.map((r) => r.answer.status).sort(), [200, 409], `two joins racing for ${who}: exactly one wins`);
  }

  // The guest's token is stamped with its conference: 403 anywhere else.
  t.equal((await call(base, 'GET', `/v1/conferences/${a!.id}`, { token: guestToken })).status, 200);
  for (const other of confs.slice(1)) {
    const r = await call(base, 'GET', `/v1/conferences/${other.id}`, { token: guestToken });
    t.equal(r.status, 403, 'guest token used for another conference');
    t.equal(r.json.error.code, 'forbidden');
  }
  t.equal((await call(base, 'POST', `/v1/conferences/${b!.id}/leave`, { token: guestToken })).status, 403);
  t.equal((await call(base, 'GET', '/v1/conference-key', { token: guestToken })).status, 403, 'guest on a user-only call');
  t.equal((await call(base, 'POST', '/v1/conferences', { token: guestToken, body: { fe: anyId, key: 'AAAA' } })).status, 403);

  // Leaving frees the identity.
  t.equal((await call(base, 'POST', `/v1/conferences/${a!.id}/leave`, { token: guestToken })).status, 204);
  const back = await until(
    'guest1 to be free',
    async () => {
      const r = await joinAsGuest(base, a!.id, 'guest1', a!.k);
      return r.answer.status === 200 ? r : null;
    },
    5000,
  );
  secrets.push({ what: 'guest token', value: back.answer.json.token });

  // Killing one FE leaves the other's conferences working.
  const survivor = confs.find((c) => c.fe !== a!.fe)!;
  const dead = a!.fe;
  dead.proc.child.kill('SIGKILL');
  await until('the FE to die', () => dead.proc.child.exitCode !== null || dead.proc.child.signalCode !== null);
  const j = await joinAsGuest(base, survivor.id, 'after-kill', survivor.k);
  t.equal(j.answer.status, 200, 'a guest still joins a conference of the living FE');
  secrets.push({ what: 'guest token', value: j.answer.json.token });
  t.equal((await joinAsGuest(base, survivor.id, 'after-kill', survivor.k)).answer.status, 409, 'and identities are still unique there');
  const deadJoin = await joinAsGuest(base, a!.id, 'late', a!.k);
  t.not(deadJoin.answer.status, 200, 'the dead FE’s conference cannot be joined');
  const ids = new Set<string>();
  for (let i = 0; i < 4; i++) {
    const r = await call(base, 'GET', '/v1/conference-key', { token: alice });
    t.equal(r.status, 200, 'conference-key still answered');
    ids.add(r.json.fe);
  }
  t.equal(ids.size, 1, 'only the living FE is offered');
  const k2 = newConferenceKey();
  secrets.push({ what: 'conference key', value: k2 });
  const ck = await call(base, 'GET', '/v1/conference-key', { token: alice });
  const made = await call(base, 'POST', '/v1/conferences', {
    token: alice,
    body: { fe: ck.json.fe, key: encryptKey(ck.json.public_key, k2) },
  });
  t.equal(made.status, 201, 'conferences are still created');

  // Rate limit: failed joins count (core.md §2).
  let limited: Awaited<ReturnType<typeof call>> | null = null;
  for (let i = 0; i < 12 && !limited; i++) {
    const r = await joinAsGuest(base, survivor.id, `wrong${i}`, newConferenceKey());
    if (r.answer.status === 429) limited = r.answer;
  }
  t.ok(limited, 'failed joins are rate-limited');
  t.match(limited?.headers.get('retry-after'), /^\d+$/);

  // Secrets never in the logs (every process's output), nor K in the clear in FE stores.
  director.child.kill('SIGTERM');
  await until('the director to stop', () => director.child.exitCode !== null || director.child.signalCode !== null, 10_000);
  for (const fe of [fe1, fe2]) if (fe.proc.child.exitCode === null) fe.proc.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  const logs = procs.map((p) => ({ name: p.name, out: p.out }));
  t.ok(
    logs.every((l) => l.out.length > 0),
    'every process logged something',
  );
  for (const l of logs) {
    for (const s of secrets) {
      const forms = [s.value, Buffer.from(s.value).toString('base64'), Buffer.from(s.value).toString('hex')];
      t.notOk(
        forms.some((f) => l.out.includes(f)),
        `no ${s.what} in ${l.name}'s output`,
      );
    }
  }
  for (const fe of [fe1, fe2]) {
    const files = readdirSync(join(fe.dataDir, 'core-fe'));
    for (const f of files) {
      const bytes = readFileSync(join(fe.dataDir, 'core-fe', f));
      for (const s of secrets.filter((x) => x.what === 'conference key'))
        t.notOk(bytes.includes(Buffer.from(s.value)), `no conference key in the clear in ${fe.name}/${f}`);
    }
  }
  t.comment(`took ${Date.now() - t0} ms`);
});

t.test('embedded default: core.pool [] runs the director and one FE inside gatehouse serve', async (t) => {
  const turnPort = await freePort('udp');
  const corePort = await freePort();
  const adminPort = await freePort();
  const pcpPort = await freePort('udp');
  const relayLow = 40000 + (turnPort % 2000) * 10;
  const dataDir = join(dir, 'embedded');
  const cfg = join(dir, 'embedded.yaml');
  writeFileSync(
    cfg,
    `data_dir: ${dataDir}
realm: gatehouse.test
log_level: debug
users:
  - { name: alice, password: "${password}", groups: [] }
turn:
  listen: [udp://127.0.0.1:${turnPort}]
  relay_ports: [${relayLow}, ${relayLow + 9}]
pcp:
  listen: [udp://127.0.0.1:${pcpPort}]
  external_address: 192.0.2.1
admin:
  listen: http://127.0.0.1:${adminPort}
core:
  listen: http://127.0.0.1:${corePort}
`,
  );
  const p = run('embedded', ['serve', '--config', cfg]);
  const base = `http://127.0.0.1:${corePort}`;
  await until('the embedded core', async () => {
    if (p.child.exitCode !== null) throw new Error(`serve exited: ${p.out}`);
    return (await call(base, 'GET', '/v1/conference-key')).status === 401;
  });
  const www = (await call(base, 'POST', '/v1/login')).headers.get('www-authenticate')!;
  const login = await call(base, 'POST', '/v1/login', {
    authorization: digestAuthorization(
      www.split(/,\s*(?=Digest )/).find((c) => /^Digest /.test(c))!,
      'alice',
      password,
      'POST',
      '/v1/login',
    ),
  });
  t.equal(login.status, 200);
  const ck = await call(base, 'GET', '/v1/conference-key', { token: login.json.token });
  t.equal(ck.status, 200);
  t.equal(
    ck.json.public_key,
    createPublicKey(readFileSync(join(dataDir, 'core-fe', 'fe-key.pem')))
      .export({ type: 'spki', format: 'pem' })
      .toString(),
    'the embedded FE keeps its key pair in DATA_DIR/core-fe',
  );
  t.equal(statSync(join(dataDir, 'core-fe', 'fe-key.pem')).mode & 0o777, 0o600);
  const k = newConferenceKey();
  const made = await call(base, 'POST', '/v1/conferences', {
    token: login.json.token,
    body: { fe: ck.json.fe, key: encryptKey(ck.json.public_key, k) },
  });
  t.equal(made.status, 201);
  const j = await joinAsGuest(base, made.json.id, 'g', k);
  t.equal(j.answer.status, 200);
  t.equal((await joinAsGuest(base, made.json.id, 'g', k)).answer.status, 409);
  // A restarted director: the conference (kept by the FE) is still there, and the identity
  // held by a token of the dead run is free again.
  p.child.kill('SIGKILL');
  await until('serve to die', () => p.child.exitCode !== null || p.child.signalCode !== null, 10_000);
  const p2 = run('embedded-restarted', ['serve', '--config', cfg]);
  await until('the restarted core', async () => {
    if (p2.child.exitCode !== null) throw new Error(`serve exited: ${p2.out}`);
    return (await call(base, 'GET', '/v1/conference-key')).status === 401;
  });
  const j2 = await joinAsGuest(base, made.json.id, 'g', k);
  t.equal(j2.answer.status, 200, 'rejoin under the same identity after a director restart');
  t.equal((await joinAsGuest(base, made.json.id, 'g', k)).answer.status, 409);
  p2.child.kill('SIGTERM');
  await until('serve to stop', () => p2.child.exitCode !== null || p2.child.signalCode !== null, 10_000);
  for (const s of [k, login.json.token, j.answer.json.token, j2.answer.json.token, password])
    t.notOk(p.out.includes(s) || p2.out.includes(s), 'no secret in the output');
  t.notOk(readFileSync(join(dataDir, 'core-fe', 'fe.sqlite')).includes(Buffer.from(k)), 'K not in the clear in the store');
});

t.test('gatehouse core-fe: --help, --config required, plain http only on loopback', async (t) => {
  const exit = (p: (typeof procs)[number]) =>
    new Promise<number>((r) => (p.child.exitCode !== null ? r(p.child.exitCode) : p.child.once('exit', (c) => r(c ?? -1))));
  const help = run('help', ['core-fe', '--help']);
  t.equal(await exit(help), 0);
  t.match(help.out, /Usage: gatehouse core-fe --config FILE/);
  const none = run('none', ['core-fe']);
  t.equal(await exit(none), 2);
  t.match(none.out, /--config FILE is required/);
  const cfg = join(dir, 'public.yaml');
  writeFileSync(cfg, `data_dir: ${join(dir, 'public')}\ncore:\n  listen: http://0.0.0.0:0\n  pool_secret: ${poolSecret}\n`);
  const pub = run('public', ['core-fe', '--config', cfg]);
  t.equal(await exit(pub), 2);
  t.match(pub.out, /loopback/, 'refused: plain http beyond loopback');
  const main = run('main', ['--help']);
  await exit(main);
  t.match(main.out, /core-fe --config FILE/);
});
