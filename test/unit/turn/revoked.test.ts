/**
 * Issue 11 / core.md §8: revoked TURN REST subjects. RevokedSubjects refuses credentials
 * issued at or before the revocation (EXPIRY - turn_ttl <= revocation second), accepts
 * later ones, forgets entries after turn_ttl and is bounded; on the server, revokeSubject
 * closes the subject's REST allocations (flows `revoked`, allocation event `revoked`, a
 * Refresh then gets 437) and its old credential gets 401 (RFC 8489 §9.2.4).
 */
import t from 'tap';
import { ManualClock } from '../../../src/util/clock.js';
import { RevokedSubjects } from '../../../src/turn/revoked.js';
import { Attr, Class, Method } from '../../../src/wire/stun.js';
import { restPassword } from '../../../src/turn/auth.js';
import { Client, errCode, startServer } from './helpers.js';

const SECRET = 'unit-rest-secret';
const TTL = 600;
const udp = (w: { attr(t: number, v: Buffer): void }) => w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

t.test('RevokedSubjects: issued before refused, issued after accepted', async (t) => {
  const clock = new ManualClock();
  const r = new RevokedSubjects(clock, TTL);
  const nowS = () => Math.floor(clock.now() / 1000);
  const before = nowS() + TTL; // a full-ttl credential issued now
  const shortBefore = nowS() + 60; // a shorter credential issued now
  t.notOk(r.refuses('alice', before), 'nothing revoked yet');
  r.revoke('alice');
  t.ok(r.refuses('alice', before), 'issued in the revocation second: refused');
  t.ok(r.refuses('alice', shortBefore), 'a shorter ttl issued before: refused');
  t.notOk(r.refuses('bob', before), 'another subject is untouched');
  clock.advance(1000);
  t.notOk(r.refuses('alice', nowS() + TTL), 'issued a second later: accepted');
  t.ok(r.refuses('alice', before), 'the old one still refused');
  clock.advance(TTL * 1000);
  t.notOk(r.refuses('alice', before), 'after turn_ttl the entry is gone (the credential has expired anyway)');
  t.equal(r.size, 0);
});

t.test('RevokedSubjects: bounded, sweep drops expired entries', async (t) => {
  const clock = new ManualClock();
  const r = new RevokedSubjects(clock, TTL, 3);
  for (const s of ['a', 'b', 'c', 'd']) r.revoke(s);
  t.equal(r.size, 3, 'never more than max');
  const exp = Math.floor(clock.now() / 1000) + TTL;
  t.notOk(r.refuses('a', exp), 'the oldest went first');
  t.ok(r.refuses('d', exp));
  clock.advance((TTL + 1) * 1000);
  t.equal(r.sweep(), 3);
  t.equal(r.size, 0);
});

t.test('revokeSubject closes the allocation and refuses the old credential', async (t) => {
  const closed: string[] = [];
  const h = await startServer((c) => ((c.turn.rest_secret = SECRET), (c.core.turn_ttl = TTL)), {
    flowHooks: { onFlowClosed: (_f, reason) => void closed.push(reason) },
  });
  const c = await Client.udp(h.udpPort);
  const other = await Client.udp(h.udpPort);
  t.teardown(async () => {
    c.close();
    other.close();
    await h.close();
  });
  const as = (cl: Client, user: string) => {
    const username = `${Math.floor(h.clock.now() / 1000) + TTL}:${user}`;
    cl.username = username;
    cl.password = restPassword(SECRET, username);
  };
  as(c, 'guest/board-1/eve');
  as(other, 'bob');
  t.equal((await c.authed(Method.Allocate, udp)).cls, Class.Success);
  t.equal((await other.authed(Method.Allocate, udp)).cls, Class.Success);
  const p = await c.authed(Method.CreatePermission, (w) => w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', 9));
  t.equal(p.cls, Class.Success);
  t.equal(h.server.flows().length, 1);

  t.equal(h.server.revokeSubject('guest/board-1/eve'), 1, 'one allocation closed');
  t.same(closed, ['revoked'], 'the flow closed with reason revoked');
  t.equal(h.server.flows().length, 0);
  const ev = h.events.events
    .filter((e) => e.event_type === 'allocation')
    .map((e) => (e as { allocation?: { action?: string } }).allocation?.action);
  t.ok(ev.includes('revoked'), 'an allocation event with action revoked');

  // The allocation is gone (a Refresh with no allocation would be 437, RFC 8656 §5), but the
  // credential is refused first (authentication comes before the allocation lookup).
  const ref = await c.authed(Method.Refresh);
  t.equal(errCode(ref), 401, 'refresh with the revoked credential: 401');
  const again = await c.authed(Method.Allocate, udp);
  t.equal(errCode(again), 401, 'allocate with the revoked credential: 401');
  t.ok(h.server.stats.authFailures.revoked! >= 2, 'counted as revoked');

  // bob is untouched.
  t.equal((await other.authed(Method.Refresh)).cls, Class.Success, 'another subject keeps its allocation');

  // A credential issued a second after the revocation works.
  h.clock.advance(1000);
  as(c, 'guest/board-1/eve');
  const fresh = await c.authed(Method.Allocate, udp);
  t.equal(fresh.cls, Class.Success, `fresh credential: ${errCode(fresh)}`);
});
