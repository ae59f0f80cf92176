import t from 'tap';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import {
  Attr,
  Class,
  Method,
  decodePasswordAlgorithms,
  decodeUnknownAttributes,
  findAttr,
  getAttr,
  getErrorCode,
  getString,
  getUint32,
  getXorAddress,
  verifyIntegrity,
  verifyIntegritySha256,
  type StunWriter,
} from '../../../src/wire/stun.js';
import { restPassword } from '../../../src/turn/auth.js';
import { Client, USERS, errCode, startServer } from './helpers.js';
import { assertNoSecrets, Secrets } from '../../e2e/helpers/secrets.js';

const udpTransport = (w: StunWriter): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

t.test('Binding (RFC 8489 §7.3.1)', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  const r = await c.request(Method.Binding, undefined, false, { fingerprint: true });
  t.equal(r.cls, Class.Success);
  t.same(getXorAddress(r, Attr.XorMappedAddress), { family: 4, address: '127.0.0.1', port: c.port });
  t.equal(getString(r, Attr.Software), 'Gatehouse');
  t.ok(findAttr(r, Attr.Fingerprint), 'FINGERPRINT echoed when the request had one');
  const r2 = await c.request(Method.Binding);
  t.notOk(findAttr(r2, Attr.Fingerprint), 'no FINGERPRINT otherwise');
  // Garbage never crashes the server.
  for (const g of [Buffer.alloc(0), Buffer.from([0, 1, 0, 4]), randomBytes(100), Buffer.from([0x40, 0, 0, 9, 1]), Buffer.alloc(20)])
    c.sendRaw(g);
  const r3 = await c.request(Method.Binding);
  t.equal(r3.cls, Class.Success, 'still answering after garbage');
  const r4 = await c.request(Method.Binding, (w) => w.attr(0x0031, Buffer.from([1, 2, 3, 4])));
  t.equal(errCode(r4), 420);
  t.same(decodeUnknownAttributes(getAttr(r4, Attr.UnknownAttributes)!), [0x31]);
  // Unknown method -> 400.
  const r5 = await c.request(0x0ff);
  t.equal(errCode(r5), 400);
});

t.test('Allocate: challenge, success, retransmission, 437, Refresh', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  const ch = await c.request(Method.Allocate, udpTransport);
  t.equal(errCode(ch), 401);
  t.equal(getString(ch, Attr.Realm), 'gatehouse.local');
  const nonce = getString(ch, Attr.Nonce)!;
  t.match(nonce, /^obMatJos2gAAA/, 'nonce cookie with the password-algorithms feature bit (RFC 8489 §9.2)');
  t.same(
    decodePasswordAlgorithms(getAttr(ch, Attr.PasswordAlgorithms)!)!.map((e) => e.id),
    [2, 1],
  );
  t.notOk(findAttr(ch, Attr.MessageIntegrity), 'no integrity on a challenge');
  t.same(h.server.stats.authFailures, {}, 'the challenge is not a failure');
  c.nonce = nonce;

  const tid = randomBytes(12);
  const r = await c.request(Method.Allocate, udpTransport, true, { tid, fingerprint: true });
  t.equal(r.cls, Class.Success);
  const relayed = getXorAddress(r, Attr.XorRelayedAddress)!;
  t.equal(relayed.address, '127.0.0.1');
  t.ok(relayed.port >= 40000 && relayed.port <= 44999, 'relay port from config range');
  t.equal(getUint32(r, Attr.Lifetime), 600, 'default lifetime');
  t.same(getXorAddress(r, Attr.XorMappedAddress), { family: 4, address: '127.0.0.1', port: c.port });
  t.ok(verifyIntegrity(r, c.key()), 'response carries MESSAGE-INTEGRITY with the long-term key');
  t.ok(findAttr(r, Attr.Fingerprint));
  t.equal(h.server.stats.allocations, 1);
  const ev = h.events.events.find((e) => e.event_type === 'allocation');
  t.ok(ev, 'allocation event');
  t.match(ev, {
    src_ip: '127.0.0.1',
    src_port: c.port,
    proto: 'UDP',
    gatehouse: { user: 'alice' },
    allocation: { action: 'created', relayed_port: relayed.port },
  });
  const secrets = new Secrets();
  for (const u of USERS) secrets.turnPassword(u.name, u.password!, c.realm);
  assertNoSecrets(t, secrets, { texts: { events: JSON.stringify(h.events.events) } }, 'no secrets in events');

  // RFC 8656 §7.2: a retransmission gets the same response, byte for byte.
  const again = await c.request(Method.Allocate, udpTransport, true, { tid, fingerprint: true });
  t.same(again.raw, r.raw);
  t.equal(h.server.stats.allocations, 1);
  // A new Allocate on the same 5-tuple -> 437.
  const dup = await c.request(Method.Allocate, udpTransport, true);
  t.equal(errCode(dup), 437);
  t.ok(verifyIntegrity(dup, c.key()), 'errors to authenticated requests carry integrity');

  // Refresh: lifetime clamp to max (3600) and minimum default (600).
  const rf = await c.request(Method.Refresh, (w) => w.u32(Attr.Lifetime, 999999), true);
  t.equal(getUint32(rf, Attr.Lifetime), 3600);
  const rf2 = await c.request(Method.Refresh, (w) => w.u32(Attr.Lifetime, 5), true);
  t.equal(getUint32(rf2, Attr.Lifetime), 600);
  // Another user on the same 5-tuple -> 441.
  const wrong = await c.request(Method.Refresh, undefined, true, { username: 'bob', password: 'hunter2' });
  t.equal(errCode(wrong), 441);
  t.equal(h.server.stats.authFailures['wrong_credentials'], 1);
  // Refresh lifetime 0 deletes (RFC 8656 §7.3); afterwards 437.
  const del = await c.request(Method.Refresh, (w) => w.u32(Attr.Lifetime, 0), true);
  t.equal(del.cls, Class.Success);
  t.equal(getUint32(del, Attr.Lifetime), 0);
  t.equal(h.server.stats.allocations, 0);
  const gone = await c.request(Method.Refresh, undefined, true);
  t.equal(errCode(gone), 437);
  t.ok(h.events.events.some((e) => e.event_type === 'allocation' && (e.allocation as { action: string }).action === 'deleted'));
});

t.test('auth failures: wrong password, unknown user, bad realm, stale nonce, 400s', async (t) => {
  const h = await startServer((c) => (c.turn.nonce_lifetime = 60));
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  await c.request(Method.Allocate, udpTransport).then((r) => (c.nonce = getString(r, Attr.Nonce)));
  const bad = await c.request(Method.Allocate, udpTransport, true, { password: 'nope' });
  t.equal(errCode(bad), 401);
  t.ok(getString(bad, Attr.Nonce), '401 carries a NONCE');
  t.equal(h.server.stats.authFailures['bad_integrity'], 1);
  const unk = await c.request(Method.Allocate, udpTransport, true, { username: 'mallory' });
  t.equal(errCode(unk), 401);
  t.equal(h.server.stats.authFailures['unknown_user'], 1);
  c.realm = 'other.realm';
  const realm = await c.request(Method.Allocate, udpTransport, true);
  t.equal(errCode(realm), 401);
  t.equal(h.server.stats.authFailures['bad_realm'], 1);
  c.realm = 'gatehouse.local';
  // Forged nonce -> 438.
  const forged = await c.request(Method.Allocate, udpTransport, true, { nonceOverride: 'obMatJos2gAAAforged' });
  t.equal(errCode(forged), 438);
  // Expired nonce -> 438 with a fresh nonce that then works.
  h.clock.advance(61_000);
  const stale = await c.request(Method.Allocate, udpTransport, true);
  t.equal(errCode(stale), 438);
  t.equal(h.server.stats.authFailures['stale_nonce'], 2);
  const fresh = getString(stale, Attr.Nonce)!;
  t.not(fresh, c.nonce);
  c.nonce = fresh;
  // Missing REALM with integrity -> 400.
  const noRealm = await c.request(
    Method.Allocate,
    (w) => {
      udpTransport(w);
      w.attr(Attr.Username, 'alice').attr(Attr.Nonce, fresh).integrity(c.key());
    },
    false,
  );
  t.equal(errCode(noRealm), 400);
  // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS -> 400 (RFC 8489 §9.2.4).
  const lonely = await c.request(
    Method.Allocate,
    (w) => {
      udpTransport(w);
      w.attr(Attr.PasswordAlgorithm, Buffer.from([0, 2, 0, 0]));
    },
    true,
  );
  t.equal(errCode(lonely), 400);
  t.equal(h.server.stats.authFailures['bad_request'], 2);
  const ok = await c.request(Method.Allocate, udpTransport, true);
  t.equal(ok.cls, Class.Success);
});

t.test('SHA-256 password algorithm and MESSAGE-INTEGRITY-SHA256 (RFC 8489 §9.2)', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  const r = await c.authed(Method.Allocate, udpTransport, { sha256: true, passwordAlgorithms: true });
  t.equal(r.cls, Class.Success);
  t.ok(verifyIntegritySha256(r, c.key('sha256')), 'response integrity uses SHA-256 and the SHA-256 key');
  t.notOk(findAttr(r, Attr.MessageIntegrity));
  // SHA-256 key but MD5 announced -> integrity fails -> 401.
  const c2 = await Client.udp(h.udpPort);
  t.teardown(() => c2.close());
  c2.nonce = c.nonce;
  const buf = c2.build(Method.Allocate, udpTransport, true, { sha256: true, passwordAlgorithms: true });
  t.ok(buf.length > 0);
  const mismatch = await c2.request(
    Method.Allocate,
    (w) => {
      udpTransport(w);
      w.attr(Attr.Username, 'alice').attr(Attr.Realm, c2.realm).attr(Attr.Nonce, c2.nonce!);
      w.attr(Attr.PasswordAlgorithms, Buffer.from([0, 2, 0, 0, 0, 1, 0, 0])).attr(Attr.PasswordAlgorithm, Buffer.from([0, 1, 0, 0]));
      w.integritySha256(c2.key('sha256'));
    },
    false,
  );
  t.equal(errCode(mismatch), 401);
  // A PASSWORD-ALGORITHMS list that is not ours (downgrade attempt) -> 400.
  const downgrade = await c2.request(
    Method.Allocate,
    (w) => {
      udpTransport(w);
      w.attr(Attr.Username, 'alice').attr(Attr.Realm, c2.realm).attr(Attr.Nonce, c2.nonce!);
      w.attr(Attr.PasswordAlgorithms, Buffer.from([0, 1, 0, 0])).attr(Attr.PasswordAlgorithm, Buffer.from([0, 1, 0, 0]));
      w.integrity(c2.key('md5'));
    },
    false,
  );
  t.equal(errCode(downgrade), 400);
});

t.test('Allocate errors: 400, 442, 440, 420, ADDITIONAL-ADDRESS-FAMILY (DONT-FRAGMENT: dont-fragment.test.ts)', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const mk = async (): Promise<Client> => {
    const c = await Client.udp(h.udpPort);
    t.teardown(() => c.close());
    return c;
  };
  const c = await mk();
  t.equal(errCode(await c.authed(Method.Allocate)), 400, 'missing REQUESTED-TRANSPORT');
  t.equal(errCode(await c.authed(Method.Allocate, (w) => w.attr(Attr.RequestedTransport, Buffer.from([6, 0, 0, 0])))), 442, 'TCP relay');
  const v6 = await c.authed(Method.Allocate, (w) => {
    udpTransport(w);
    w.attr(Attr.RequestedAddressFamily, Buffer.from([2, 0, 0, 0]));
  });
  t.equal(errCode(v6), 440, 'IPv6 relay without an IPv6 relay address');
  t.same(getErrorCode(v6), { code: 440, reason: 'Address Family not Supported' });
  t.equal(
    errCode(
      await c.authed(Method.Allocate, (w) => {
        udpTransport(w);
        w.attr(Attr.RequestedAddressFamily, Buffer.from([9, 0, 0, 0]));
      }),
    ),
    440,
    'unknown family',
  );
  t.equal(
    errCode(
      await c.authed(Method.Allocate, (w) => {
        udpTransport(w);
        w.attr(Attr.RequestedAddressFamily, Buffer.from([1, 0, 0, 0])).attr(Attr.AdditionalAddressFamily, Buffer.from([2, 0, 0, 0]));
      }),
    ),
    400,
    'both family attributes',
  );
  const unk = await c.authed(Method.Allocate, (w) => {
    udpTransport(w);
    w.attr(0x0031, Buffer.alloc(4));
  });
  t.equal(errCode(unk), 420);
  t.same(decodeUnknownAttributes(getAttr(unk, Attr.UnknownAttributes)!), [0x0031]);
  t.ok(verifyIntegrity(unk, c.key()));
  // Unknown comprehension-optional attributes (e.g. the 0xC1A0 escrow range) are ignored;
  // ADDITIONAL-ADDRESS-FAMILY IPv6 yields an IPv4 allocation plus ADDRESS-ERROR-CODE 440.
  const ok = await c.authed(Method.Allocate, (w) => {
    udpTransport(w);
    w.attr(0xc1a0, Buffer.alloc(8)).attr(Attr.AdditionalAddressFamily, Buffer.from([2, 0, 0, 0]));
  });
  t.equal(ok.cls, Class.Success);
  const aec = getAttr(ok, Attr.AddressErrorCode)!;
  t.ok(aec);
  t.equal(aec[0], 2);
  t.equal((aec[2]! & 7) * 100 + aec[3]!, 440);
  t.equal(getXorAddress(ok, Attr.XorRelayedAddress)!.family, 4);
});

t.test('EVEN-PORT with R bit and RESERVATION-TOKEN (RFC 8656 §7.2, §14.6, §14.9)', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const a = await Client.udp(h.udpPort);
  const b = await Client.udp(h.udpPort);
  t.teardown(() => (a.close(), b.close()));
  const r = await a.authed(Method.Allocate, (w) => {
    udpTransport(w);
    w.attr(Attr.EvenPort, Buffer.from([0x80]));
  });
  t.equal(r.cls, Class.Success);
  const port = getXorAddress(r, Attr.XorRelayedAddress)!.port;
  t.equal(port % 2, 0, 'even port');
  const token = getAttr(r, Attr.ReservationToken)!;
  t.equal(token.length, 8);
  t.equal(
    errCode(
      await b.authed(Method.Allocate, (w) => (udpTransport(w), w.attr(Attr.ReservationToken, token).attr(Attr.EvenPort, Buffer.from([0])))),
    ),
    400,
  );
  t.equal(
    errCode(await b.authed(Method.Allocate, (w) => (udpTransport(w), w.attr(Attr.ReservationToken, Buffer.alloc(8, 1))))),
    508,
    'unknown token',
  );
  const r2 = await b.authed(Method.Allocate, (w) => (udpTransport(w), w.attr(Attr.ReservationToken, token)));
  t.equal(r2.cls, Class.Success);
  t.equal(getXorAddress(r2, Attr.XorRelayedAddress)!.port, port + 1, 'reserved odd port');
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal(errCode(await c.authed(Method.Allocate, (w) => (udpTransport(w), w.attr(Attr.ReservationToken, token)))), 508, 'token used up');
  // Reservations expire (~30 s).
  const d = await Client.udp(h.udpPort);
  t.teardown(() => d.close());
  const r3 = await d.authed(Method.Allocate, (w) => (udpTransport(w), w.attr(Attr.EvenPort, Buffer.from([0x80]))));
  const token3 = getAttr(r3, Attr.ReservationToken)!;
  h.clock.advance(31_000);
  const e = await Client.udp(h.udpPort);
  t.teardown(() => e.close());
  t.equal(errCode(await e.authed(Method.Allocate, (w) => (udpTransport(w), w.attr(Attr.ReservationToken, token3)))), 508, 'expired token');
});

t.test('486 quota and 508 no relay port', async (t) => {
  const blocker = createSocket('udp4');
  await new Promise<void>((r) => blocker.bind(0, '127.0.0.1', () => r()));
  const taken = blocker.address().port;
  const h = await startServer((c) => {
    c.turn.max_allocations_per_user = 1;
    c.turn.relay_ports = [taken, taken];
  });
  t.teardown(h.close);
  const a = await Client.udp(h.udpPort);
  t.teardown(() => a.close());
  t.equal(errCode(await a.authed(Method.Allocate, udpTransport)), 508, 'the only relay port is in use');
  blocker.close();
  await new Promise((r) => setTimeout(r, 50));
  const b = await Client.udp(h.udpPort);
  t.teardown(() => b.close());
  const ok = await b.authed(Method.Allocate, udpTransport);
  t.equal(ok.cls, Class.Success);
  t.equal(getXorAddress(ok, Attr.XorRelayedAddress)!.port, taken);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal(errCode(await c.authed(Method.Allocate, udpTransport)), 486, 'second allocation for alice');
  c.username = 'bob';
  c.password = 'hunter2';
  c.nonce = undefined;
  t.equal(errCode(await c.authed(Method.Allocate, udpTransport)), 508, 'bob is under quota, but no port left');
});

t.test('TURN REST ephemeral credentials', async (t) => {
  const secret = 'rest-shared-secret';
  const h = await startServer((c) => (c.turn.rest_secret = secret));
  t.teardown(h.close);
  const nowS = Math.floor(h.clock.now() / 1000);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  c.username = `${nowS + 3600}:carol`;
  c.password = restPassword(secret, c.username);
  const ok = await c.authed(Method.Allocate, udpTransport);
  t.equal(ok.cls, Class.Success);
  const ev = h.events.events.find((e) => e.event_type === 'allocation')!;
  t.match(ev.gatehouse, { user: 'carol' });
  assertNoSecrets(
    t,
    new Secrets().turnPassword(c.username, c.password, c.realm).add('rest_secret', 'turn.rest_secret', secret),
    { texts: { events: JSON.stringify(h.events.events) } },
    'no password in events',
  );
  const d = await Client.udp(h.udpPort);
  t.teardown(() => d.close());
  d.username = `${nowS - 1}:carol`;
  d.password = restPassword(secret, d.username);
  t.equal(errCode(await d.authed(Method.Allocate, udpTransport)), 401, 'expired');
  t.equal(h.server.stats.authFailures['rest_expired'], 1);
  const e = await Client.udp(h.udpPort);
  t.teardown(() => e.close());
  e.username = `${nowS + 3600}:carol`;
  e.password = 'guess';
  t.equal(errCode(await e.authed(Method.Allocate, udpTransport)), 401, 'wrong HMAC');
  // Configured long-term users keep working next to REST.
  const f = await Client.udp(h.udpPort);
  t.teardown(() => f.close());
  t.equal((await f.authed(Method.Allocate, udpTransport)).cls, Class.Success);
});

t.test('allocation expiry by the clock', async (t) => {
  const h = await startServer();
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal((await c.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  h.clock.advance(599_000);
  t.equal(h.server.stats.allocations, 1);
  h.clock.advance(2_000);
  t.equal(h.server.stats.allocations, 0, 'expired after 600 s');
  t.ok(h.events.events.some((e) => e.event_type === 'allocation' && (e.allocation as { action: string }).action === 'expired'));
  c.nonce = undefined;
  t.equal(errCode(await c.authed(Method.Refresh)), 437);
});
