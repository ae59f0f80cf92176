/**
 * Signalling (core.md §8) over real WebSockets against SignalServer: hello, join,
 * peers, offer/answer/candidate to one peer, chat, leave, errors, the per-user
 * connection limit (§4: 4001 `replaced`), revocation and expiry, bounds.
 */
import t, { type Test } from 'tap';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ManualClock } from '../../../src/util/clock.js';
import { silentLogger } from '../../../src/util/log.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { TokenService } from '../../../src/core/tokens.js';
import { FailureLimiter } from '../../../src/core/ratelimit.js';
import { TurnCredentialIssuer } from '../../../src/core/turn-credentials.js';
import { SignalServer, type MembershipSource, type SignalLimits } from '../../../src/core/signal.js';
import { claimsAllowConference } from '../../../src/core/director.js';
import { restPassword } from '../../../src/turn/auth.js';
import { SigClient } from './signal-helpers.js';

const SECRET = 'rest-secret-for-tests-0123456789abcdef';

async function rig(t: Test, limits: Partial<SignalLimits> = {}, withLimiter = false) {
  const clock = new ManualClock(Date.now());
  const limiter = withLimiter ? new FailureLimiter(clock) : null;
  const tokens = new TokenService(clock, { ttlS: 3600 });
  const turn = new TurnCredentialIssuer(SECRET, ['turn:127.0.0.1:3478?transport=udp'], 600, () => clock.now());
  const conferences = new Set(['conf-a', 'conf-b']);
  const rooms = new Map([['room-1', { owner: 'alice', invitees: new Set(['carol']) }]]);
  const membership: MembershipSource = {
    canJoin(claims, target) {
      if ('room' in target) {
        const r = rooms.get(target.room);
        if (!r) return 'not_found';
        return (claims.kind === 'user' && claims.room === undefined && claims.sub === r.owner) || claims.room === target.room
          ? 'ok'
          : 'forbidden';
      }
      if (!claimsAllowConference(claims, target.conference)) return 'forbidden';
      return conferences.has(target.conference) ? 'ok' : 'not_found';
    },
  };
  const supervisor = new Supervisor(silentLogger);
  const sig = new SignalServer({
    tokens,
    turn,
    membership,
    clock,
    log: silentLogger,
    supervisor,
    limiter,
    limits: { burst: 10_000, pingIntervalMs: 86_400_000, ...limits },
  });
  const server: Server = createServer((_q, s) => s.writeHead(404).end());
  server.on('upgrade', (req, socket, head) => sig.handleUpgrade(req, socket, head));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}/v1/signal`;
  const clients: SigClient[] = [];
  t.teardown(async () => {
    for (const c of clients) c.ws.terminate();
    sig.stop();
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  const user = (name: string, extra: { room?: string } = {}) => tokens.issue({ kind: 'user', sub: name, groups: [], ...extra }).token;
  const guest = (conference: string, identity: string) =>
    tokens.issue({ kind: 'guest', sub: `guest/${conference}/${identity}`, groups: [], conference, identity }).token;
  const connect = async (opts = {}) => {
    const c = new SigClient(url, opts);
    clients.push(c);
    await c.opened;
    return c;
  };
  /** Connected, hello'd (and joined when a target is given). */
  const member = async (token: string, target?: { conference: string } | { room: string }) => {
    const c = await connect();
    c.send({ type: 'hello', token });
    const hello = await c.next('hello');
    if (!target) return { c, peer: hello.peer as string, join: null };
    c.send({ type: 'join', ...target });
    const join = await c.next('join');
    return { c, peer: join.peer as string, join };
  };
  return { clock, tokens, sig, url, user, guest, connect, member, supervisor };
}

t.test('a missing or bad hello: error, then close 1008', async (t) => {
  const r = await rig(t);
  const cases: [string, unknown][] = [
    ['not JSON', 'hello?'],
    ['a join first', { type: 'join', conference: 'conf-a' }],
    ['no token', { type: 'hello' }],
    ['an unknown token', { type: 'hello', token: 'ght_nope' }],
    ['a JSON array', '[1,2]'],
  ];
  for (const [name, m] of cases) {
    const c = await r.connect();
    c.send(m);
    const e = await c.next('error');
    t.equal((e.error as { code: string }).code, 'unauthenticated', `${name}: error code`);
    const closed = await c.closed;
    t.equal(closed.code, 1008, `${name}: close 1008`);
  }
  const revoked = r.user('alice');
  r.tokens.revoke(revoked);
  const c = await r.connect();
  c.send({ type: 'hello', token: revoked });
  await c.next('error');
  t.equal((await c.closed).code, 1008, 'a revoked token');
  const silent = await r.connect();
  r.clock.advance(10_000);
  t.equal((await silent.closed).code, 1008, 'no hello within the hello timeout');
  t.equal(r.sig.size, 0, 'nothing left open');
});

t.test('bad hello tokens count as failed authentications (core.md §2): the 11th try is rate_limited', async (t) => {
  const r = await rig(t, {}, true);
  for (let i = 0; i < 10; i++) {
    const c = await r.connect();
    c.send({ type: 'hello', token: `ght_wrong${i}` });
    t.equal(((await c.next('error')).error as { code: string }).code, 'unauthenticated', `try ${i + 1}`);
    await c.closed;
  }
  const c = await r.connect();
  c.send({ type: 'hello', token: r.user('alice') });
  const e = (await c.next('error')).error as { code: string; message: string };
  t.equal(e.code, 'rate_limited', 'even a good token, until the minute has passed');
  t.match(e.message, /retry in \d+ s/);
  t.equal((await c.closed).code, 1008);
  r.clock.advance(60_000);
  const ok = await r.member(r.user('alice'), { conference: 'conf-a' });
  t.equal(ok.join!.conference, 'conf-a', 'after the minute: admitted');
  for (let i = 0; i < 10; i++) {
    const bad = await r.connect();
    bad.send('not json');
    await bad.closed;
  }
  const again = await r.member(r.user('bob'));
  t.ok(again.peer, 'ten malformed first messages are not failed authentications');
});

t.test('join: the answer has my peer id, the roster and TURN credentials; the others get peers', async (t) => {
  const r = await r0(t);
  const a = await r.member(r.user('alice'), { conference: 'conf-a' });
  t.equal(a.join!.conference, 'conf-a');
  t.match(a.peer, /^[A-Za-z0-9_-]{16}$/, 'an opaque peer id');
  t.same(a.join!.peers, [{ peer: a.peer, user: 'alice' }]);
  const turn = a.join!.turn as { urls: string[]; username: string; credential: string; ttl: number };
  t.match(turn.username, /^\d+:alice$/, 'EXPIRY:USER');
  t.equal(turn.credential, restPassword(SECRET, turn.username), 'the REST credential the gateway verifies');
  t.equal(turn.ttl, 600);
  t.same(turn.urls, ['turn:127.0.0.1:3478?transport=udp']);
  const g = await r.member(r.guest('conf-a', 'eve'), { conference: 'conf-a' });
  const gt = g.join!.turn as { username: string; credential: string };
  t.match(gt.username, /^\d+:guest\/conf-a\/eve$/, 'EXPIRY:guest/CONFERENCE/IDENTITY');
  t.equal(gt.credential, restPassword(SECRET, gt.username));
  t.same(g.join!.peers, [
    { peer: a.peer, user: 'alice' },
    { peer: g.peer, identity: 'eve' },
  ]);
  const p = await a.c.next('peers');
  t.same(p.peers, g.join!.peers, 'alice hears of eve');
  t.same(await g.c.drain(), [], 'the newcomer gets no peers message of its own join');
});

// (the same rig; a name that reads well in the tests)
const r0 = rig;

t.test('a guest token joins only its own conference; unknown ones are not_found', async (t) => {
  const r = await rig(t);
  const g = await r.member(r.guest('conf-a', 'eve'));
  g.c.send({ type: 'join', conference: 'conf-b' });
  const e = await g.c.next('error');
  t.equal((e.error as { code: string }).code, 'forbidden', 'cross-conference join refused');
  g.c.send({ type: 'join', room: 'room-1' });
  t.equal(((await g.c.next('error')).error as { code: string }).code, 'forbidden', 'a guest cannot join a room');
  g.c.send({ type: 'join', conference: 'conf-a' });
  t.equal((await g.c.next('join')).conference, 'conf-a', 'its own conference: joined, still connected');
  const u = await r.member(r.user('alice'));
  u.c.send({ type: 'join', conference: 'nope' });
  t.equal(((await u.c.next('error')).error as { code: string }).code, 'not_found');
  u.c.send({ type: 'join', conference: 'conf-a', room: 'room-1' });
  t.equal(((await u.c.next('error')).error as { code: string }).code, 'bad_request', 'one target only');
  u.c.send({ type: 'join', conference: 'conf-b' });
  await u.c.next('join');
  u.c.send({ type: 'join', conference: 'conf-a' });
  t.equal(((await u.c.next('error')).error as { code: string }).code, 'bad_request', 'leave first');
});

t.test('rooms: the owner and the invitee stamped with it; anyone else forbidden', async (t) => {
  const r = await rig(t);
  const owner = await r.member(r.user('alice'), { room: 'room-1' });
  t.equal(owner.join!.room, 'room-1');
  const inv = await r.member(r.user('carol', { room: 'room-1' }), { room: 'room-1' });
  t.same(inv.join!.peers, [
    { peer: owner.peer, user: 'alice' },
    { peer: inv.peer, user: 'carol' },
  ]);
  const other = await r.member(r.user('mallory'));
  other.c.send({ type: 'join', room: 'room-1' });
  t.equal(((await other.c.next('error')).error as { code: string }).code, 'forbidden');
  const stamped = await r.member(r.user('carol', { room: 'room-1' }));
  stamped.c.send({ type: 'join', conference: 'conf-a' });
  t.equal(((await stamped.c.next('error')).error as { code: string }).code, 'forbidden', 'a room token is for that room only');
});

t.test('offer, answer, candidate: to the named peer only, with from', async (t) => {
  const r = await rig(t);
  const a = await r.member(r.user('alice'), { conference: 'conf-a' });
  const b = await r.member(r.user('bob'), { conference: 'conf-a' });
  const c = await r.member(r.user('carl'), { conference: 'conf-a' });
  const x = await r.member(r.user('xavier'), { conference: 'conf-b' });
  await a.c.drain();
  await b.c.drain();
  a.c.send({ type: 'offer', to: b.peer, sdp: 'v=0 offer' });
  t.same(await b.c.next('offer'), { type: 'offer', from: a.peer, sdp: 'v=0 offer' });
  b.c.send({ type: 'answer', to: a.peer, sdp: 'v=0 answer', extra: 'dropped' });
  t.same(await a.c.next('answer'), { type: 'answer', from: b.peer, sdp: 'v=0 answer' }, 'only the known fields are relayed');
  const cand = { candidate: 'candidate:1 1 udp 1 192.0.2.1 5000 typ relay', sdpMid: '0', sdpMLineIndex: 0 };
  a.c.send({ type: 'candidate', to: b.peer, candidate: cand });
  t.same(await b.c.next('candidate'), { type: 'candidate', from: a.peer, candidate: cand });
  t.same(await c.c.drain(), [], 'the third peer saw none of it');
  t.same(await x.c.drain(), [], 'another conference saw none of it');
  a.c.send({ type: 'offer', to: x.peer, sdp: 'v=0' });
  t.equal(((await a.c.next('error')).error as { code: string }).code, 'not_found', 'a peer of another conference');
  a.c.send({ type: 'offer', to: 'nobody', sdp: 'v=0' });
  t.equal(((await a.c.next('error')).error as { code: string }).code, 'not_found');
  a.c.send({ type: 'offer', to: b.peer, sdp: 'v=0', conference: 'conf-b' });
  t.equal(((await a.c.next('error')).error as { code: string }).code, 'forbidden', 'naming another conference');
  a.c.send({ type: 'offer', to: b.peer });
  t.equal(((await a.c.next('error')).error as { code: string }).code, 'bad_request', 'no sdp');
  a.c.send({ type: 'candidate', to: b.peer, candidate: [1] });
  t.equal(((await a.c.next('error')).error as { code: string }).code, 'bad_request', 'a malformed candidate');
  t.same(await x.c.drain(50), []);
  t.same(await b.c.drain(50), [], 'b got nothing of the refused messages');
});

t.test('chat goes to all of the conference with from; errors before join and for unknown types', async (t) => {
  const r = await rig(t);
  const idle = await r.member(r.user('ivan'));
  idle.c.send({ type: 'chat', text: 'hi' });
  t.equal(((await idle.c.next('error')).error as { code: string }).code, 'bad_request', 'join first');
  const a = await r.member(r.user('alice'), { conference: 'conf-a' });
  const g = await r.member(r.guest('conf-a', 'eve'), { conference: 'conf-a' });
  const x = await r.member(r.user('xavier'), { conference: 'conf-b' });
  await a.c.drain();
  g.c.send({ type: 'chat', text: 'hello all' });
  t.same(await a.c.next('chat'), { type: 'chat', from: g.peer, text: 'hello all' });
  t.same(await g.c.next('chat'), { type: 'chat', from: g.peer, text: 'hello all' }, 'the sender too');
  t.same(await x.c.drain(), [], 'not another conference');
  g.c.send({ type: 'chat', text: 'x', conference: 'conf-b' });
  t.equal(((await g.c.next('error')).error as { code: string }).code, 'forbidden');
  for (const m of [{ type: 'dance' }, { nothing: 1 }, { type: 'hello', token: 'x' }, { type: 'chat' }]) {
    g.c.send(m);
    t.equal(((await g.c.next('error')).error as { code: string }).code, 'bad_request', JSON.stringify(m));
  }
  g.c.ws.send(Buffer.from('{"type":"chat","text":"binary"}'), { binary: true });
  t.equal(((await g.c.next('error')).error as { code: string }).code, 'bad_request', 'binary frames are not messages');
  t.same(await a.c.drain(), [], 'none of it reached alice');
  t.equal(g.c.closeInfo, null, 'errors do not close the connection');
});

t.test('leave and disconnect: the others get the new roster', async (t) => {
  const r = await rig(t);
  const a = await r.member(r.user('alice'), { conference: 'conf-a' });
  const b = await r.member(r.user('bob'), { conference: 'conf-a' });
  const c = await r.member(r.user('carl'), { conference: 'conf-a' });
  await a.c.drain();
  await b.c.drain();
  c.c.send({ type: 'leave' });
  t.same(await c.c.next('leave'), { type: 'leave', peer: c.peer });
  t.same((await a.c.next('peers')).peers, [
    { peer: a.peer, user: 'alice' },
    { peer: b.peer, user: 'bob' },
  ]);
  await b.c.next('peers');
  a.c.send({ type: 'offer', to: c.peer, sdp: 'v=0' });
  t.equal(((await a.c.next('error')).error as { code: string }).code, 'not_found', 'a peer that left');
  b.c.close();
  t.same((await a.c.next('peers')).peers, [{ peer: a.peer, user: 'alice' }], 'a closed connection leaves');
  c.c.send({ type: 'join', conference: 'conf-a' });
  t.equal((await c.c.next('join')).conference, 'conf-a', 'join again after leave');
});

t.test('per-user limit: the 4th hello closes the oldest with 4001 replaced', async (t) => {
  const r = await rig(t);
  const tok = r.user('alice');
  const conns = [];
  for (let i = 0; i < 3; i++) conns.push(await r.member(tok, { conference: 'conf-a' }));
  const other = await r.member(r.user('bob'), { conference: 'conf-a' });
  const pre = await r.connect();
  t.same(await pre.drain(100), [], 'a connection without hello does not count');
  const fourth = await r.member(r.user('alice'));
  const closed = await conns[0]!.c.closed;
  t.same(closed, { code: 4001, reason: 'replaced' });
  t.equal(conns[1]!.c.closeInfo, null);
  t.equal(conns[2]!.c.closeInfo, null);
  t.equal(other.c.closeInfo, null, 'another user is untouched');
  fourth.c.send({ type: 'join', conference: 'conf-a' });
  const j = await fourth.c.next('join');
  t.equal((j.peers as unknown[]).length, 4, 'the replaced one left the roster');
  const g1 = await r.member(r.guest('conf-a', 'eve'));
  for (let i = 0; i < 3; i++) await r.member(r.guest('conf-a', 'eve'));
  t.equal((await g1.c.closed).code, 4001, 'guests too');
});

t.test('revocation and expiry end the connection', async (t) => {
  const r = await rig(t);
  const tok = r.user('alice');
  const a = await r.member(tok, { conference: 'conf-a' });
  const b = await r.member(r.user('bob'), { conference: 'conf-a' });
  await b.c.drain();
  r.tokens.revoke(tok);
  t.same(await a.c.closed, { code: 1008, reason: 'revoked' });
  t.same((await b.c.next('peers')).peers, [{ peer: b.peer, user: 'bob' }], 'the revoked one left');
  const short = r.tokens.issue({ kind: 'user', sub: 'carol', groups: [] }, 120).token;
  const c = await r.member(short, { conference: 'conf-a' });
  r.clock.advance(119_000);
  c.c.send({ type: 'chat', text: 'still here' });
  t.equal((await c.c.next('chat', 3000, true)).text, 'still here');
  r.clock.advance(1_000);
  t.equal(((await c.c.next('error', 3000, true)).error as { code: string }).code, 'unauthenticated');
  t.same(await c.c.closed, { code: 1008, reason: 'expired' });
  t.equal(b.c.closeInfo, null, 'bob stays');
});

t.test('fresh TURN credentials before the last ones expire', async (t) => {
  const r = await rig(t);
  const a = await r.member(r.user('alice'), { conference: 'conf-a' });
  const first = (a.join!.turn as { username: string }).username;
  r.clock.advance(480_000);
  const m = await a.c.next('turn');
  const next = m.turn as { username: string; credential: string };
  t.not(next.username, first, 'a later expiry');
  t.ok(Number(next.username.split(':')[0]) > Number(first.split(':')[0]));
  t.equal(next.credential, restPassword(SECRET, next.username));
});

t.test('bounds: message size (1009), rate (token bucket), roster size', async (t) => {
  const r = await rig(t, { maxMessageBytes: 1024, burst: 5, maxPeersPerGroup: 2 });
  const a = await r.member(r.user('alice'), { conference: 'conf-a' });
  // 2 messages spent (hello, join); 3 left in the bucket, the clock does not move.
  for (let i = 0; i < 6; i++) a.c.send({ type: 'chat', text: `m${i}` });
  const got = await a.c.drain(200);
  t.same(
    got.filter((m) => m.type === 'chat').map((m) => m.text),
    ['m0', 'm1', 'm2'],
    'beyond the burst, messages are dropped',
  );
  t.same(
    got.filter((m) => m.type === 'error').map((m) => (m.error as { code: string }).code),
    ['rate_limited'],
    'one rate_limited error (at most one a second)',
  );
  r.clock.advance(1000);
  a.c.send({ type: 'chat', text: 'later' });
  t.equal((await a.c.next('chat')).text, 'later', 'the bucket refills with time');
  const b = await r.member(r.user('bob'), { conference: 'conf-a' });
  const c = await r.member(r.user('carl'));
  c.c.send({ type: 'join', conference: 'conf-a' });
  t.equal(((await c.c.next('error')).error as { code: string }).code, 'forbidden', 'the conference is full');
  b.c.send({ type: 'chat', text: 'x'.repeat(2000) });
  t.equal((await b.c.closed).code, 1009, 'a message over the size bound: 1009');
});

t.test('dead clients are dropped by ping/pong; live ones stay', async (t) => {
  const r = await rig(t, { pingIntervalMs: 1000 });
  const live = await r.member(r.user('alice'), { conference: 'conf-a' });
  const dead = await r.member(r.user('bob'), { conference: 'conf-a' }).then(async (m) => m);
  // A client that stops answering pings (ws autoPong off after its hello).
  const mute = await r.connect({ autoPong: false });
  mute.send({ type: 'hello', token: r.user('dora') });
  await mute.next('hello');
  mute.send({ type: 'join', conference: 'conf-a' });
  await mute.next('join');
  await live.c.drain();
  await dead.c.drain();
  r.clock.advance(1000); // ping
  await new Promise((res) => setTimeout(res, 150)); // pongs come back
  r.clock.advance(1000); // no pong from mute: terminated
  const closed = await mute.closed;
  t.equal(closed.code, 1006, 'terminated (no close frame)');
  t.equal(live.c.closeInfo, null, 'a client that answers stays');
  t.same(
    ((await live.c.next('peers', 3000, true)).peers as { user: string }[]).map((p) => p.user),
    ['alice', 'bob'],
    'the dead one left the roster',
  );
});

t.test('a slow reader is dropped; the others get every message', async (t) => {
  const r = await rig(t, { maxBufferedBytes: 256 * 1024 });
  const sender = await r.member(r.user('alice'), { conference: 'conf-a' });
  const fast = await r.member(r.user('bob'), { conference: 'conf-a' });
  const slow = await r.member(r.user('carl'), { conference: 'conf-a' });
  await sender.c.drain();
  await fast.c.drain();
  // carl stops reading: its TCP window closes and the server's buffer for it grows.
  const sock = (slow.c.ws as unknown as { _socket: import('node:net').Socket })._socket;
  sock.pause();
  const text = 'y'.repeat(32 * 1024);
  const N = 400; // 12.8 MB toward carl: beyond the kernel's buffers and the bound
  let got = 0;
  const all = new Promise<void>((resolve) => {
    fast.c.ws.on('message', (d) => {
      const m = JSON.parse(d.toString()) as { type: string };
      if (m.type === 'chat' && ++got === N) resolve();
    });
  });
  for (let i = 0; i < N; i++) {
    sender.c.send({ type: 'chat', text });
    if (i % 20 === 19) await new Promise((res) => setTimeout(res, 5));
  }
  await all;
  t.equal(got, N, 'the fast reader got every chat');
  t.ok(r.sig.size <= 2, 'the slow reader was dropped');
  sock.resume();
  const closed = await slow.c.closed;
  t.equal(closed.code, 1006, 'terminated');
  t.equal(fast.c.closeInfo, null);
  t.equal(sender.c.closeInfo, null);
});

t.test('an exception in a membership source is contained', async (t) => {
  const clock = new ManualClock(Date.now());
  const tokens = new TokenService(clock);
  const supervisor = new Supervisor(silentLogger);
  const sig = new SignalServer({
    tokens,
    turn: new TurnCredentialIssuer(SECRET, [], 600, () => clock.now()),
    membership: {
      canJoin: () => {
        throw new Error('boom');
      },
    },
    clock,
    log: silentLogger,
    supervisor,
  });
  const server = createServer();
  server.on('upgrade', (req, socket, head) => sig.handleUpgrade(req, socket, head));
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  t.teardown(() => {
    sig.stop();
    server.closeAllConnections();
    server.close();
  });
  const c = new SigClient(`ws://127.0.0.1:${(server.address() as AddressInfo).port}/v1/signal`);
  await c.opened;
  c.send({ type: 'hello', token: tokens.issue({ kind: 'user', sub: 'a', groups: [] }).token });
  await c.next('hello');
  c.send({ type: 'join', conference: 'x' });
  t.equal(((await c.next('error')).error as { code: string }).code, 'not_found');
  t.equal(supervisor.failures.get('core.signal.membership'), 1, 'counted');
  c.ws.terminate();
});
