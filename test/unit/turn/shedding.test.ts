import t from 'tap';
import {
  Attr,
  Class,
  Method,
  decodeAddress,
  getAttrs,
  getErrorCode,
  verifyIntegrity,
  verifyIntegritySha256,
  type StunWriter,
} from '../../../src/wire/stun.js';
import { Client, errCode, startServer } from './helpers.js';
import type { AlternateLookup } from '../../../src/turn/shedding.js';

const udpTransport = (w: StunWriter): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

/** The ALTERNATE-SERVER attributes of a response, in order (RFC 8489 §14.15: MAPPED-ADDRESS encoding, no XOR). */
function alternates(m: Parameters<typeof getAttrs>[0]): string[] {
  return getAttrs(m, Attr.AlternateServer).map((v) => {
    const a = decodeAddress(v)!;
    return `${a.address}:${a.port}`;
  });
}

t.test('at turn.max_allocations: 300 Try Alternate with ALTERNATE-SERVER, signed with the request key (RFC 8489 §10, §14.8)', async (t) => {
  const asked: string[] = [];
  const lookup: AlternateLookup = (proto, family) => {
    asked.push(`${proto}/${family}`);
    return [
      { address: '::1', port: 3479 }, // the other family comes second whatever the order given
      { address: '127.0.0.2', port: 3480 },
      { address: '127.0.0.3', port: 3481 }, // a second of the same family: not sent
    ];
  };
  const h = await startServer((c) => (c.turn.max_allocations = 2), { alternate: lookup });
  t.teardown(h.close);
  const cs = await Promise.all([1, 2, 3].map(() => Client.udp(h.udpPort)));
  t.teardown(() => cs.forEach((c) => c.close()));
  t.equal((await cs[0]!.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  t.equal((await cs[1]!.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  t.same(h.server.load(), { allocations: 2, capacity: 2 });
  t.same(asked, [], 'no lookup while there is room');

  const r = await cs[2]!.authed(Method.Allocate, udpTransport);
  t.equal(errCode(r), 300);
  t.equal(getErrorCode(r)?.reason, 'Try Alternate');
  t.same(alternates(r), ['127.0.0.2:3480', '::1:3479'], "the source's family first, then one of the other family");
  t.ok(verifyIntegrity(r, cs[2]!.key()), 'the 300 carries MESSAGE-INTEGRITY with the long-term key (§14.8: MUST be protected)');
  t.same(asked, ['udp/4']);
  t.equal(h.server.stats.refused.capacity_alternate, 1);

  // SHA-256 requests get a MESSAGE-INTEGRITY-SHA256-signed 300 (RFC 8489 §9.2.4).
  const s = await cs[2]!.authed(Method.Allocate, udpTransport, { sha256: true, passwordAlgorithms: true });
  t.equal(errCode(s), 300);
  t.ok(verifyIntegritySha256(s, cs[2]!.key('sha256')));

  // A retransmission gets the same answer (RFC 8489 §6.3.1), and freeing a slot admits again.
  t.equal((await cs[0]!.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 0))).cls, Class.Success);
  t.equal((await cs[2]!.authed(Method.Allocate, udpTransport)).cls, Class.Success, 'room again after a delete');
});

t.test('at capacity with no alternate (no cluster, or every node full): 508 Insufficient Capacity (RFC 8656 §19)', async (t) => {
  const h = await startServer((c) => (c.turn.max_allocations = 1));
  t.teardown(h.close);
  const a = await Client.udp(h.udpPort);
  const b = await Client.udp(h.udpPort);
  t.teardown(() => (a.close(), b.close()));
  t.equal((await a.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  const r = await b.authed(Method.Allocate, udpTransport);
  t.equal(errCode(r), 508);
  t.same(alternates(r), []);
  t.ok(verifyIntegrity(r, b.key()));
  t.equal(h.server.stats.refused.capacity, 1);

  // A lookup that only knows the other family cannot be used (§10: the first must be the source's family).
  h.server.setAlternateLookup(() => [{ address: '::1', port: 3478 }]);
  t.equal(errCode(await b.authed(Method.Allocate, udpTransport)), 508);
  // A lookup that throws is contained: 508, the server keeps serving.
  h.server.setAlternateLookup(() => {
    throw new Error('registry broke');
  });
  t.equal(errCode(await b.authed(Method.Allocate, udpTransport)), 508);
  t.equal(h.server.supervisor.failures.get('turn.alternate_lookup'), 1, 'counted by the supervisor');
  // Garbage from a lookup (not an IP, a bad port) is never encoded.
  h.server.setAlternateLookup(() => [
    { address: 'gw2.example', port: 3478 },
    { address: '127.0.0.9', port: 0 },
  ]);
  t.equal(errCode(await b.authed(Method.Allocate, udpTransport)), 508);
  h.server.setAlternateLookup(() => [{ address: '127.0.0.9', port: 3478 }]);
  const ok = await b.authed(Method.Allocate, udpTransport);
  t.equal(errCode(ok), 300);
  t.same(alternates(ok), ['127.0.0.9:3478']);
});

t.test('over TCP the lookup is asked for a TCP alternate; max_allocations 0 drains the node', async (t) => {
  const asked: string[] = [];
  const h = await startServer((c) => (c.turn.max_allocations = 0), {
    alternate: (proto, family) => (asked.push(`${proto}/${family}`), [{ address: '127.0.0.5', port: 3478 }]),
  });
  t.teardown(h.close);
  const c = await Client.tcp(h.tcpPort);
  t.teardown(() => c.close());
  const r = await c.authed(Method.Allocate, udpTransport);
  t.equal(errCode(r), 300);
  t.same(asked, ['tcp/4']);
  t.same(h.server.load(), { allocations: 0, capacity: 0 });
});

t.test('unauthenticated Allocates at capacity still get the 401 challenge, never a 300 (RFC 8489 §14.8)', async (t) => {
  const h = await startServer((c) => (c.turn.max_allocations = 0), { alternate: () => [{ address: '127.0.0.5', port: 3478 }] });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  const r = await c.request(Method.Allocate, udpTransport, false);
  t.equal(errCode(r), 401);
  t.same(alternates(r), []);
});

t.test('no max_allocations: the capacity is the relay port range, nothing is shed', async (t) => {
  const h = await startServer(undefined, { alternate: () => [{ address: '127.0.0.5', port: 3478 }] });
  t.teardown(h.close);
  const c = await Client.udp(h.udpPort);
  t.teardown(() => c.close());
  t.equal((await c.authed(Method.Allocate, udpTransport)).cls, Class.Success);
  t.same(h.server.load(), { allocations: 1, capacity: 5000 });
});
