// Authentication transfer between organisations (core.md §6, seed 004 FIG. 6) over real
// HTTP on loopback: two cores (startCore, each with its own DATA_DIR and port; a third,
// C, as another trusted organisation whose key must not sign for A).
//
// 1. Gateway's own users (no directory): alice of A logs in at A (Digest), gets a
//    challenge from B, a ticket from A, transfers to B without a password and gets B's
//    token with org A (and a user-only call at B works with it). B's core.peers names
//    A's certificate as fetched from GET A/v1/core/certificate. Then each check broken
//    on purpose, one at a time: (1) a challenge B never issued, one already spent, one
//    fetched from another address; (2) wrong typ, wrong aud; (3) a tampered signature;
//    (4) signed by another key, by the trusted core of another organisation (C), a
//    ticket of C presented as A's; (5) a user the peer entry does not allow; and
//    alg=none, HS256 keyed with A's certificate: each 401 with Connection: close, and the
//    challenge spent (a good ticket on it afterwards is refused). Failures count toward
//    the per-source limit (429). Every transfer is an `auth` event (mechanism transfer);
//    no ticket in events or log.
// 2. B is `gatehouse serve` (a process): A's alice is refused because B has an alice of
//    its own; A's carol transfers, joins a conference at B by signalling, and her TURN
//    allocation on B's gateway carries user carol, org A and the conference, no groups.
// 3. Directory leg (each core with its own slapd): alice logs in at A (https) by Basic
//    against A's slapd; B's slapd says which organisation each user is of (o) and their
//    groups: alice (o=A, partners) transfers, allowed by group, with B's groups; dave
//    (B's slapd: o=B) and erin (not in B's slapd) are refused, and the challenge spent;
//    B's slapd down: 503, never an admit.
import t, { type Test } from 'tap';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createHmac, createPrivateKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../src/util/log.js';
import { systemClock } from '../../src/util/clock.js';
import { Supervisor } from '../../src/util/supervise.js';
import { parseConfig } from '../../src/config/config.js';
import { StaticUserDirectory } from '../../src/store/users.js';
import { MemoryEventSink } from '../../src/events/eve.js';
import { startCore, type RunningCore } from '../../src/core/index.js';
import { signEs256 } from '../../src/core/jws.js';
import { SIGNING_KEY_FILE } from '../../src/core/core-signing.js';
import { peerSkip } from './helpers/require-peer.js';
import { freePort } from './helpers/ports.js';
import { startSlapd } from './helpers/slapd.js';
import { startGatehouse, type TurnServer } from './helpers/turn-servers.js';
import { encryptKey, joinAsGuest, loginUser, newConferenceKey } from './helpers/core-guest.js';
import { readEvents, until } from './helpers/escrow-events.js';
import { Attr, Method, Class } from '../../src/wire/stun.js';
import { Client, errCode } from '../unit/turn/helpers.js';
import WebSocket from 'ws';

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** One request on a fresh connection (agent: false) from `from` (a loopback address). */
function req(
  base: string,
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; raw?: string; from?: string; headers?: Record<string, string>; ca?: Buffer } = {},
): Promise<Res> {
  const u = new URL(path, base);
  const data =
    opts.raw !== undefined ? Buffer.from(opts.raw) : opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
  const request = u.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const r = request(
      {
        host: u.hostname,
        port: u.port,
        method,
        path: u.pathname,
        agent: false,
        ...(opts.ca ? { ca: opts.ca } : {}),
        ...(opts.from ? { localAddress: opts.from } : {}),
        headers: {
          ...(data ? { 'content-type': 'application/json', 'content-length': String(data.length) } : {}),
          ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
          ...opts.headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown = null;
          try {
            json = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          resolve({ status: res.statusCode!, headers: res.headers, text, json });
        });
      },
    );
    r.on('error', reject);
    r.end(data);
  });
}

const b64u = (x: string | Buffer) => Buffer.from(x).toString('base64url');
const nowS = () => Math.floor(Date.now() / 1000);

interface Side {
  core: RunningCore;
  dir: string;
  events: MemoryEventSink;
  log: string[];
}

async function start(
  name: string,
  yaml: (dir: string) => string,
  users: { name: string; password: string; groups: string[] }[] = [],
  dataDir?: string,
): Promise<Side> {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), `gh-transfer-${name}-`));
  const log: string[] = [];
  const logger = createLogger({ level: 'debug' }, { write: (s: string) => void log.push(s) });
  const events = new MemoryEventSink();
  const core = await startCore(parseConfig(`realm: ${name}.example\ndata_dir: ${dir}\n${yaml(dir)}`, `${name}.yaml`), {
    users: new StaticUserDirectory(users),
    logger,
    clock: systemClock,
    supervisor: new Supervisor(logger),
    restSecret: randomBytes(24).toString('base64url'),
    dataDir: dir,
    events,
  });
  return { core, dir, events, log };
}

/** The core's signing certificate as served (no token), into a file a peer's config names. */
async function fetchCertificate(s: Side, file: string, ca?: Buffer): Promise<string> {
  const r = await req(s.core.url, 'GET', '/v1/core/certificate', ca ? { ca } : {});
  if (r.status !== 200) throw new Error(`certificate: ${r.status}`);
  writeFileSync(file, r.text);
  return r.text;
}

const transferEvents = (s: Side) =>
  s.events.events.filter((e) => e.event_type === 'auth' && (e.auth as { mechanism?: string })?.mechanism === 'transfer');

t.test("transfer with the gateway's own users: A's user reaches B without a password; each check broken refuses", async (t) => {
  const PW = { alice: 'alice-' + randomBytes(9).toString('base64url'), bob: 'bob-' + randomBytes(9).toString('base64url') };
  const users = [
    { name: 'alice', password: PW.alice, groups: ['staff'] },
    { name: 'bob', password: PW.bob, groups: ['staff'] },
  ];
  const A = await start('a', () => 'core:\n  listen: http://127.0.0.1:0\n  org: A\n', users);
  t.teardown(() => A.core.stop());
  const C = await start('c', () => 'core:\n  listen: http://127.0.0.1:0\n  org: C\n', users);
  t.teardown(() => C.core.stop());
  const peersDir = mkdtempSync(join(tmpdir(), 'gh-transfer-peers-'));
  t.teardown(() => rmSync(peersDir, { recursive: true, force: true }));
  const aPem = await fetchCertificate(A, join(peersDir, 'a.crt'));
  await fetchCertificate(C, join(peersDir, 'c.crt'));
  // B trusts A (alice only) and C (alice too: C is trusted, but only for C).
  const B = await start(
    'b',
    () => `core:
  listen: http://127.0.0.1:0
  org: B
  peers:
    - { org: A, cert: ${join(peersDir, 'a.crt')}, allow: { users: [alice] } }
    - { org: C, cert: ${join(peersDir, 'c.crt')}, allow: { users: [alice] } }
`,
  );
  t.teardown(() => B.core.stop());
  t.teardown(() => [A, B, C].forEach((s) => rmSync(s.dir, { recursive: true, force: true })));
  const aKey = createPrivateKey(readFileSync(join(A.dir, SIGNING_KEY_FILE)));
  const cKey = createPrivateKey(readFileSync(join(C.dir, SIGNING_KEY_FILE)));
  const tickets: string[] = [];

  // Each case speaks from its own loopback address (the challenge is bound to it; the
  // per-source limit counts per address).
  let nextAddr = 10;
  const client = () => `127.0.0.${nextAddr++}`;
  const challengeAt = async (from: string) => {
    const r = await req(B.core.url, 'GET', '/v1/auth/challenge', { from });
    t.equal(r.status, 200);
    return r.json as { challenge: string; expires: number; org: string };
  };
  const aliceToken = await loginUser(A.core.url, 'alice', PW.alice);
  const bobToken = await loginUser(A.core.url, 'bob', PW.bob);
  const ticketFrom = async (core: Side, token: string, challenge: string, audience = 'B') => {
    const r = await req(core.core.url, 'POST', '/v1/auth/transfer-ticket', { token, body: { challenge, audience } });
    if (r.status !== 200) throw new Error(`ticket: ${r.status} ${r.text}`);
    tickets.push(r.json.ticket);
    return r.json.ticket as string;
  };
  const transfer = (from: string, ticket: string, user = 'alice', org = 'A') =>
    req(B.core.url, 'POST', '/v1/auth/transfer', { from, body: { ticket, user, org } });

  await t.test('GET /v1/core/certificate: PEM, no token', async (t) => {
    const r = await req(A.core.url, 'GET', '/v1/core/certificate');
    t.equal(r.status, 200);
    t.equal(r.headers['content-type'], 'application/x-pem-file');
    t.match(r.text, /^-----BEGIN CERTIFICATE-----\n[\s\S]+-----END CERTIFICATE-----\n?$/);
    t.equal(r.text, aPem);
  });

  await t.test('alice of A reaches B without a password, marked as of A', async (t) => {
    const from = client();
    const ch = await challengeAt(from);
    t.equal(ch.org, 'B', "the challenge names B's organisation");
    const ticket = await ticketFrom(A, aliceToken, ch.challenge);
    const [h, p] = ticket.split('.');
    t.same(JSON.parse(Buffer.from(h!, 'base64url').toString()), { alg: 'ES256', typ: 'JWT' });
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
    t.match(claims, { typ: 'gatehouse-transfer', iss: 'A', sub: 'alice', org: 'A', aud: 'B', challenge: ch.challenge });
    t.ok(claims.exp - claims.iat <= 60 && claims.exp > claims.iat, 'at most 60 s');
    const r = await transfer(from, ticket);
    t.equal(r.status, 200, r.status === 200 ? 'transferred' : r.text);
    t.match(r.json, { user: 'alice', org: 'A', groups: [] });
    t.match(r.json.token, /^ght_/);
    // B's token is a user token of B: a user-only call works.
    const room = await req(B.core.url, 'POST', '/v1/rooms', { token: r.json.token, body: { title: 'from A' } });
    t.equal(room.status, 201, `a room at B: ${room.text}`);
    // A transferred user cannot transfer onwards from B.
    const onward = await req(B.core.url, 'POST', '/v1/auth/transfer-ticket', {
      token: r.json.token,
      body: { challenge: ch.challenge, audience: 'C' },
    });
    t.equal(onward.status, 403, 'a user transferred in cannot transfer onwards: 403');
    // The same challenge again: spent.
    const again = await transfer(from, ticket);
    t.equal(again.status, 401);
    t.equal(again.json.error.code, 'replayed');
    t.equal(again.headers.connection, 'close');
    const ev = transferEvents(B);
    t.match(ev[0], { event_type: 'auth', auth: { mechanism: 'transfer', result: 'success', user: 'alice', org: 'A' } });
    t.match(ev[1], { auth: { mechanism: 'transfer', result: 'failure', reason: 'replayed', user: 'alice', org: 'A' } });
  });

  await t.test('the ticket endpoint: user tokens only; bad bodies', async (t) => {
    t.equal(
      (await req(A.core.url, 'POST', '/v1/auth/transfer-ticket', { body: { challenge: 'x', audience: 'B' } })).status,
      401,
      'no token',
    );
    const ch = (await challengeAt(client())).challenge;
    for (const body of [
      { challenge: ch },
      { challenge: 'short', audience: 'B' },
      { challenge: ch, audience: 'B', extra: 1 },
      { challenge: ch, audience: '' },
    ]) {
      const r = await req(A.core.url, 'POST', '/v1/auth/transfer-ticket', { token: aliceToken, body });
      t.equal(r.status, 400, JSON.stringify(Object.keys(body)));
    }
    const dup = await req(A.core.url, 'POST', '/v1/auth/transfer-ticket', {
      token: aliceToken,
      raw: `{"challenge":"${ch}","audience":"B","audience":"C"}`,
    });
    t.equal(dup.status, 400, 'duplicate members refused');
    const big = await req(A.core.url, 'POST', '/v1/auth/transfer-ticket', {
      token: aliceToken,
      raw: JSON.stringify({ challenge: ch, audience: 'x'.repeat(9000) }),
    });
    t.equal(big.status, 400, 'bounded body');
    // A guest's token (stamped with its conference) is not a user token: 403.
    const key = await req(A.core.url, 'GET', '/v1/conference-key', { token: aliceToken });
    const k = newConferenceKey();
    const conf = await req(A.core.url, 'POST', '/v1/conferences', {
      token: aliceToken,
      body: { fe: key.json.fe, key: encryptKey(key.json.public_key, k), title: 'guests' },
    });
    t.equal(conf.status, 201, 'a conference at A');
    const guest = await joinAsGuest(A.core.url, conf.json.id, 'gus', k);
    t.equal(guest.answer.status, 200, 'a guest joined by key');
    const g = await req(A.core.url, 'POST', '/v1/auth/transfer-ticket', {
      token: guest.answer.json.token,
      body: { challenge: ch, audience: 'B' },
    });
    t.equal(g.status, 403, "a guest's token gets no ticket");
    // A core without core.org cannot issue.
    const N = await start('n', () => 'core:\n  listen: http://127.0.0.1:0\n', users);
    t.teardown(() => N.core.stop());
    const nTok = await loginUser(N.core.url, 'alice', PW.alice);
    const r = await req(N.core.url, 'POST', '/v1/auth/transfer-ticket', { token: nTok, body: { challenge: ch, audience: 'B' } });
    t.equal(r.status, 403, 'a core without core.org cannot issue tickets');
    t.match(r.json.error.message, /core\.org/);
  });

  /** One broken transfer: 401, Connection: close; then a good ticket on the same challenge is refused (spent). */
  const broken = async (
    t: Test,
    name: string,
    make: (challenge: string) => Promise<{ ticket: string; user?: string; org?: string }>,
    opts: { fetchFrom?: string; code?: string } = {},
  ) => {
    const from = client();
    const ch = (await challengeAt(opts.fetchFrom ?? from)).challenge;
    const m = await make(ch);
    const r = await transfer(from, m.ticket, m.user, m.org);
    t.equal(r.status, 401, `${name}: 401 (${r.text})`);
    t.equal(r.headers.connection, 'close', `${name}: Connection: close`);
    if (opts.code) t.equal(r.json?.error?.code, opts.code, `${name}: ${opts.code}`);
    t.ok(r.headers['www-authenticate'], `${name}: a 401 names its challenge (RFC 9110 §15.5.2)`);
    const good = await ticketFrom(A, aliceToken, ch);
    const retry = await transfer(opts.fetchFrom ?? from, good);
    t.equal(retry.status, 401, `${name}: the challenge is spent`);
    t.equal(retry.json?.error?.code, 'replayed', `${name}: a good ticket on it afterwards is a replay`);
  };
  const forged = (key: ReturnType<typeof createPrivateKey>, ch: string, o: Record<string, unknown> = {}) =>
    signEs256(
      { typ: 'gatehouse-transfer', iss: 'A', sub: 'alice', org: 'A', aud: 'B', challenge: ch, iat: nowS(), exp: nowS() + 60, ...o },
      key,
    );

  await t.test('(1) the challenge: never issued by B, issued to another address', async (t) => {
    const from = client();
    const ticket = await ticketFrom(A, aliceToken, randomBytes(24).toString('base64'));
    const r = await transfer(from, ticket);
    t.equal(r.status, 401);
    t.equal(r.json.error.code, 'replayed');
    t.equal(r.headers.connection, 'close');
    await broken(t, 'fetched from another address', async (ch) => ({ ticket: await ticketFrom(A, aliceToken, ch) }), {
      fetchFrom: '127.0.0.200',
      code: 'replayed',
    });
  });

  await t.test('(2) typ and aud', async (t) => {
    await broken(t, 'wrong typ (signed by A)', async (ch) => ({ ticket: forged(aKey, ch, { typ: 'gatehouse-login' }) }));
    await broken(t, 'wrong aud (A issued it for C)', async (ch) => ({ ticket: await ticketFrom(A, aliceToken, ch, 'C') }));
  });

  await t.test('(3) the signature', async (t) => {
    await broken(
      t,
      "tampered payload (A's signature over other claims)",
      async (ch) => {
        const [h, , s] = (await ticketFrom(A, aliceToken, ch)).split('.');
        const p = b64u(
          JSON.stringify({
            typ: 'gatehouse-transfer',
            iss: 'A',
            sub: 'alice',
            org: 'A',
            aud: 'B',
            challenge: ch,
            iat: nowS() - 1,
            exp: nowS() + 59,
          }),
        );
        return { ticket: `${h}.${p}.${s}` };
      },
      { code: 'untrusted' },
    );
    await broken(
      t,
      'signature bit flipped',
      async (ch) => {
        const [h, p, s] = (await ticketFrom(A, aliceToken, ch)).split('.');
        const sig = Buffer.from(s!, 'base64url');
        sig[5]! ^= 0x01;
        return { ticket: `${h}.${p}.${b64u(sig)}` };
      },
      { code: 'untrusted' },
    );
    await broken(
      t,
      'a DER signature instead of R||S',
      async (ch) => {
        const [h, p] = (await ticketFrom(A, aliceToken, ch)).split('.');
        const { sign } = await import('node:crypto');
        return { ticket: `${h}.${p}.${b64u(sign('sha256', Buffer.from(`${h}.${p}`), aKey))}` };
      },
      { code: 'untrusted' },
    );
  });

  await t.test('(4) the signer is the core core.peers trusts for the org', async (t) => {
    await broken(
      t,
      'signed by an unknown key',
      async (ch) => ({ ticket: forged(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, ch) }),
      { code: 'untrusted' },
    );
    await broken(t, "signed by C's key (trusted for C) claiming A", async (ch) => ({ ticket: forged(cKey, ch) }), { code: 'untrusted' });
    const aliceAtC = await loginUser(C.core.url, 'alice', PW.alice);
    await broken(t, "C's genuine ticket presented as A's", async (ch) => ({ ticket: await ticketFrom(C, aliceAtC, ch) }), {
      code: 'untrusted',
    });
    await broken(t, 'an org with no peer entry', async (ch) => ({ ticket: await ticketFrom(A, aliceToken, ch), org: 'Q' }), {
      code: 'untrusted',
    });
  });

  await t.test('(5) the peer entry allows the user', async (t) => {
    await broken(t, 'bob is not in allow.users', async (ch) => ({ ticket: await ticketFrom(A, bobToken, ch), user: 'bob' }));
    await broken(t, "alice's ticket presented for bob", async (ch) => ({ ticket: await ticketFrom(A, aliceToken, ch), user: 'bob' }));
  });

  await t.test('alg=none and HS256 tickets are refused', async (t) => {
    await broken(
      t,
      'alg none',
      async (ch) => {
        const [, p] = forged(aKey, ch).split('.');
        return { ticket: `${b64u('{"alg":"none","typ":"JWT"}')}.${p}.` };
      },
      { code: 'untrusted' },
    );
    for (const secret of [
      aPem,
      createPrivateKey(readFileSync(join(A.dir, SIGNING_KEY_FILE))).export({ type: 'pkcs8', format: 'pem' }) as string,
    ]) {
      await broken(
        t,
        "HS256 keyed with A's PEM",
        async (ch) => {
          const [, p] = forged(aKey, ch).split('.');
          const h = b64u('{"alg":"HS256","typ":"JWT"}');
          return { ticket: `${h}.${p}.${b64u(createHmac('sha256', secret).update(`${h}.${p}`).digest())}` };
        },
        { code: 'untrusted' },
      );
    }
  });

  await t.test('failures count toward the per-source limit; malformed bodies are 400', async (t) => {
    const from = client();
    for (const raw of ['{', '{"ticket":"a","user":"alice","org":"A","x":1}', '{"ticket":"a","user":"alice","org":"A","org":"B"}', '[]']) {
      const r = await req(B.core.url, 'POST', '/v1/auth/transfer', { from, raw });
      t.equal(r.status, 400, raw);
      t.equal(r.headers.connection, 'close');
    }
    let last: Res | null = null;
    // 4 bad bodies + 6 bad tickets: 10 failures in this minute.
    for (let i = 0; i < 6; i++) last = await transfer(from, 'x.y.z');
    t.equal(last!.status, 401);
    const limited = await transfer(from, 'x.y.z');
    t.equal(limited.status, 429, 'the 11th failure from one address in a minute: 429');
    t.ok(limited.headers['retry-after']);
    t.match(
      transferEvents(B).at(-1),
      { auth: { mechanism: 'transfer', result: 'failure', reason: 'rate_limited' } },
      'the 429 is an auth event too',
    );
  });

  await t.test('A restarted on its DATA_DIR keeps its signing identity: B still trusts its tickets', async (t) => {
    await A.core.stop();
    const A2 = await start('a', () => 'core:\n  listen: http://127.0.0.1:0\n  org: A\n', users, A.dir);
    t.teardown(() => A2.core.stop());
    t.equal((await req(A2.core.url, 'GET', '/v1/core/certificate')).text, aPem, 'the same certificate');
    const from = client();
    const ch = (await challengeAt(from)).challenge;
    const ticket = await ticketFrom(A2, await loginUser(A2.core.url, 'alice', PW.alice), ch);
    const r = await transfer(from, ticket);
    t.equal(r.status, 200, r.status === 200 ? 'transferred' : r.text);
  });

  await t.test('events and log: every transfer an auth event; no ticket anywhere', async (t) => {
    const ev = transferEvents(B);
    t.ok(ev.length >= 25, `${ev.length} transfer events`);
    t.ok(
      ev.every((e) => (e.auth as { result: string }).result === 'success' || (e.auth as { reason?: string }).reason),
      'failures carry a reason',
    );
    const texts = [JSON.stringify(B.events.events), JSON.stringify(A.events.events), B.log.join(''), A.log.join(''), C.log.join('')];
    for (const tk of tickets) {
      const sig = tk.split('.')[2]!;
      t.notOk(
        texts.some((x) => x.includes(tk) || x.includes(sig)),
        'no ticket (nor its signature) in events or logs',
      );
    }
    t.notOk(
      texts.some((x) => x.includes(PW.alice) || x.includes(aliceToken)),
      'no password or token',
    );
    t.ok(
      A.events.events.some((e) => (e.auth as { mechanism?: string })?.mechanism === 'transfer-ticket'),
      'A records the tickets it issued',
    );
  });
});

t.test(
  "B is `gatehouse serve`: the transferred user's TURN credentials carry org A to the gateway's flows",
  { timeout: 120_000 },
  async (t) => {
    const PW = 'alice-' + randomBytes(9).toString('base64url');
    const A = await start('a', () => 'core:\n  listen: http://127.0.0.1:0\n  org: A\n', [
      { name: 'alice', password: PW, groups: ['staff'] },
      { name: 'carol', password: PW, groups: ['staff'] },
    ]);
    t.teardown(() => A.core.stop());
    t.teardown(() => rmSync(A.dir, { recursive: true, force: true }));
    const peers = mkdtempSync(join(tmpdir(), 'gh-transfer-serve-'));
    t.teardown(() => rmSync(peers, { recursive: true, force: true }));
    const aCrt = join(peers, 'a.crt');
    await fetchCertificate(A, aCrt);
    const corePort = await freePort();
    const gh: TurnServer = await startGatehouse({
      // B's own users: a local alice; A's alice must not become her.
      users: [{ name: 'alice', password: 'local-' + randomBytes(8).toString('hex'), groups: ['b-admins'] }],
      transports: ['udp'],
      logLevel: 'info',
      rules: `keys:\n  required: false\n  unverified: pass\nrules:\n  - id: partners\n    when: { org: [A] }\n    action: alert\n`,
      configure: (c) => {
        c.core = {
          listen: `http://127.0.0.1:${corePort}`,
          org: 'B',
          peers: [{ org: 'A', cert: aCrt, allow: { users: ['alice', 'carol'] } }],
        };
      },
    });
    t.teardown(() => gh.stop());
    const base = `http://127.0.0.1:${corePort}`;
    const diag = () => gh.output().slice(-3000);
    await until(
      async () => (await req(base, 'GET', '/v1/core/certificate').catch(() => ({ status: 0 }))).status === 200,
      30_000,
      'the director',
      diag,
    );

    const transferAs = async (user: string) => {
      const ch = (await req(base, 'GET', '/v1/auth/challenge')).json.challenge;
      const aTok = await loginUser(A.core.url, user, PW);
      const tk = await req(A.core.url, 'POST', '/v1/auth/transfer-ticket', { token: aTok, body: { challenge: ch, audience: 'B' } });
      return { tk, r: await req(base, 'POST', '/v1/auth/transfer', { body: { ticket: tk.json.ticket, user, org: 'A' } }) };
    };
    // A's alice: B has an alice of its own: refused (her rooms and invitations are B's alice's).
    const clash = await transferAs('alice');
    t.equal(clash.r.status, 401, "A's alice cannot become B's own alice");
    t.match(clash.r.json?.error?.message, /own users/);
    // A's carol: transferred, marked as of A.
    const { tk, r } = await transferAs('carol');
    t.equal(r.status, 200, r.status === 200 ? 'transferred' : r.text);
    t.match(r.json, { user: 'carol', org: 'A', groups: [] });
    const token: string = r.json.token;

    // A conference at B and a signalling join: TURN credentials for the gateway.
    const key = await req(base, 'GET', '/v1/conference-key', { token });
    t.equal(key.status, 200, 'conference key');
    const conf = await req(base, 'POST', '/v1/conferences', {
      token,
      body: { fe: key.json.fe, key: encryptKey(key.json.public_key, newConferenceKey()), title: 'with A' },
    });
    t.equal(conf.status, 201, `conference: ${conf.status === 201 ? 'made' : conf.text}`);
    const turn = await new Promise<{ username: string; credential: string }>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${corePort}/v1/signal`);
      const timer = setTimeout(() => reject(new Error('signalling timed out')), 15_000);
      ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', token })));
      ws.on('error', reject);
      ws.on('message', (raw) => {
        const m = JSON.parse(raw.toString());
        if (m.type === 'hello') ws.send(JSON.stringify({ type: 'join', conference: conf.json.id }));
        else if (m.type === 'join') {
          clearTimeout(timer);
          ws.close();
          resolve(m.turn);
        } else if (m.type === 'error') reject(new Error(JSON.stringify(m.error)));
      });
    });
    t.match(turn.username, /^\d+:carol$/, 'core.md §8: EXPIRY:USER');
    const cl = await Client.udp(gh.port);
    t.teardown(() => cl.close());
    cl.realm = gh.realm;
    cl.username = turn.username;
    cl.password = turn.credential;
    const alloc = await cl.authed(Method.Allocate, (w) => w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
    t.equal(alloc.cls, Class.Success, `allocate: ${errCode(alloc)}`);
    await until(
      () => readEvents(gh.dataDir!).some((e) => e.event_type === 'allocation' && (e as { src_port?: number }).src_port === cl.port),
      10_000,
      'the allocation event',
      diag,
    );
    const ev = readEvents(gh.dataDir!).find((e) => e.event_type === 'allocation' && (e as { src_port?: number }).src_port === cl.port)!;
    t.match(
      ev.gatehouse,
      { user: 'carol', org: 'A', conference: conf.json.id },
      `the allocation carries org A (${JSON.stringify(ev.gatehouse)})`,
    );
    t.same(ev.gatehouse?.groups ?? [], [], "no groups (B has no directory; never the gateway store's)");
    const auth = readEvents(gh.dataDir!).filter((e) => e.event_type === 'auth');
    t.ok(
      auth.some((e) => JSON.stringify(e).includes('"mechanism":"transfer"') && JSON.stringify(e).includes('"result":"success"')),
      'the transfer is an auth event in DATA_DIR/events.jsonl',
    );
    t.notOk(gh.fullOutput().toString('utf8').includes(tk.json.ticket.split('.')[2]), 'no ticket in the log');
  },
);

const skip = peerSkip(t, 'slapd', 'openssl');

t.test(
  "directory leg: each core with its own slapd; B checks the user's organisation and groups in its directory",
  { skip, timeout: 120_000 },
  async (t) => {
    const work = mkdtempSync(join(tmpdir(), 'gh-transfer-ldap-'));
    t.teardown(() => rmSync(work, { recursive: true, force: true }));
    // A serves https (Basic over LDAP is offered only there): a throwaway certificate.
    const tlsCert = join(work, 'tls.crt');
    const tlsKey = join(work, 'tls.key');
    const o = spawnSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        tlsKey,
        '-out',
        tlsCert,
        '-days',
        '2',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
      ],
      { encoding: 'utf8' },
    );
    if (o.status !== 0) throw new Error(`openssl: ${o.stderr}`);
    const ca = readFileSync(tlsCert);
    const PW = {
      alice: 'alice-' + randomBytes(8).toString('hex'),
      dave: 'dave-' + randomBytes(8).toString('hex'),
      erin: 'erin-' + randomBytes(8).toString('hex'),
    };
    const slapdA = await startSlapd({
      users: [
        { uid: 'alice', password: PW.alice, o: 'A' },
        { uid: 'dave', password: PW.dave, o: 'A' },
        { uid: 'erin', password: PW.erin, o: 'A' },
      ],
      groups: [{ cn: 'engineering', members: ['alice', 'dave', 'erin'] }],
      ports: { ldap: await freePort() },
    });
    t.teardown(() => slapdA.cleanup());
    // B's directory: alice is of A (partners); dave is B's own dave; erin is unknown.
    const slapdB = await startSlapd({
      users: [
        { uid: 'alice', password: 'unused-' + randomBytes(8).toString('hex'), o: 'A' },
        { uid: 'dave', password: 'unused-' + randomBytes(8).toString('hex'), o: 'B' },
        { uid: 'gina', password: 'unused-' + randomBytes(8).toString('hex'), o: 'A' },
      ],
      groups: [{ cn: 'partners', members: ['alice', 'dave'] }],
      ports: { ldap: await freePort() },
    });
    t.teardown(() => slapdB.cleanup());
    const ldap = (s: typeof slapdA) => `  directory: ${s.ldapUrl}/${s.base}
  ldap:
    bind_dn: "${s.bindDn}"
    bind_password: "${s.bindPassword}"
    org_attribute: o
    cache_ttl: 1
    stale_grace: 0
`;
    const aPort = await freePort();
    const A = await start(
      'a',
      () => `core:\n  listen: https://127.0.0.1:${aPort}\n  tls: { cert: ${tlsCert}, key: ${tlsKey} }\n  org: A\n${ldap(slapdA)}`,
    );
    t.teardown(() => A.core.stop());
    const aCrt = join(work, 'a.crt');
    await fetchCertificate(A, aCrt, ca);
    const B = await start(
      'b',
      () =>
        `core:\n  listen: http://127.0.0.1:0\n  org: B\n${ldap(slapdB)}  peers:\n    - { org: A, cert: ${aCrt}, allow: { groups: [partners] } }\n`,
    );
    t.teardown(() => B.core.stop());
    t.teardown(() => [A, B].forEach((s) => rmSync(s.dir, { recursive: true, force: true })));

    const basicLogin = async (user: string, password: string) => {
      const r = await req(A.core.url, 'POST', '/v1/login', {
        ca,
        headers: { authorization: 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64') },
      });
      if (r.status !== 200) throw new Error(`Basic login ${user} at A: ${r.status} ${r.text}`);
      t.equal(r.json.org, 'A', `${user}: A's directory says org A`);
      return r.json.token as string;
    };
    let n = 50;
    const attempt = async (user: string) => {
      const from = `127.0.0.${n++}`;
      const ch = (await req(B.core.url, 'GET', '/v1/auth/challenge', { from })).json.challenge as string;
      const tk = await req(A.core.url, 'POST', '/v1/auth/transfer-ticket', {
        ca,
        token: await basicLogin(user, PW[user as keyof typeof PW]),
        body: { challenge: ch, audience: 'B' },
      });
      t.equal(tk.status, 200, 'ticket');
      const r = await req(B.core.url, 'POST', '/v1/auth/transfer', { from, body: { ticket: tk.json.ticket, user, org: 'A' } });
      const retry = await req(B.core.url, 'POST', '/v1/auth/transfer', { from, body: { ticket: tk.json.ticket, user, org: 'A' } });
      return { r, retry };
    };

    const ok = await attempt('alice');
    t.equal(ok.r.status, 200, `alice transfers, allowed by B's group partners${ok.r.status === 200 ? '' : `: ${ok.r.text}`}`);
    t.match(ok.r.json, { user: 'alice', org: 'A', groups: ['partners'] }, "groups from B's directory");
    t.equal(ok.retry.status, 401, 'spent');

    const dave = await attempt('dave');
    t.equal(dave.r.status, 401, "dave: B's directory places its dave in B, not A");
    t.equal(dave.r.headers.connection, 'close');
    t.match(dave.r.json.error.message, /does not place this user/);
    t.equal(dave.retry.json.error.code, 'replayed', 'the challenge is spent');

    const erin = await attempt('erin');
    t.equal(erin.r.status, 401, "erin: not in B's directory");
    t.match(erin.r.json.error.message, /no such user/);
    t.equal(erin.retry.json.error.code, 'replayed');

    // B's directory down, a user it has not cached: 503, never an admit.
    await slapdB.stop();
    const from = `127.0.0.${n++}`;
    const ch = (await req(B.core.url, 'GET', '/v1/auth/challenge', { from })).json.challenge as string;
    const tk = await req(A.core.url, 'POST', '/v1/auth/transfer-ticket', {
      ca,
      token: await basicLogin('alice', PW.alice),
      body: { challenge: ch, audience: 'B' },
    });
    await new Promise((r) => setTimeout(r, 1500)); // past cache_ttl (1 s, no stale grace)
    const down = await req(B.core.url, 'POST', '/v1/auth/transfer', { from, body: { ticket: tk.json.ticket, user: 'alice', org: 'A' } });
    t.equal(down.status, 503, `directory down: 503 (${down.text})`);
    t.equal(down.json.error.code, 'unavailable');
    const ev = transferEvents(B).map((e) => e.auth as { result: string; reason?: string; user?: string });
    t.match(ev, [
      { result: 'success', user: 'alice' },
      { result: 'failure', reason: 'replayed' },
      { result: 'failure', user: 'dave' },
      { result: 'failure', reason: 'replayed' },
      { result: 'failure', user: 'erin' },
      { result: 'failure', reason: 'replayed' },
      { result: 'failure', reason: 'unavailable' },
    ]);
  },
);
