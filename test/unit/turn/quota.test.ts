import t from 'tap';
import { Attr, Class, Method, getString, type StunWriter } from '../../../src/wire/stun.js';
import { Client, errCode, startServer } from './helpers.js';

const udpTransport = (w: StunWriter): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

t.test('concurrent Allocates of one user: exactly max_allocations_per_user succeed (RFC 8656 §7.2 step 10)', async (t) => {
  const MAX = 5;
  const N = 30;
  const h = await startServer((c) => {
    c.turn.max_allocations_per_user = MAX;
    c.turn.allocate_rate_per_source = 1000;
  });
  t.teardown(h.close);
  const clients = await Promise.all(Array.from({ length: N }, () => Client.udp(h.udpPort)));
  t.teardown(() => clients.forEach((c) => c.close()));
  // One nonce for all (nonces are bound to the client IP, RFC 8489 §9.2).
  const ch = await clients[0]!.request(Method.Allocate, udpTransport);
  const nonce = getString(ch, Attr.Nonce)!;
  for (const c of clients) c.nonce = nonce;
  // All requests leave before any relay socket is bound: the slot must be taken
  // synchronously, or every request sees the same count.
  const answers = await Promise.all(clients.map((c) => c.request(Method.Allocate, udpTransport, true)));
  const ok = answers.filter((r) => r.cls === Class.Success).length;
  const quota = answers.filter((r) => errCode(r) === 486).length;
  t.equal(ok, MAX, 'exactly MAX successes');
  t.equal(quota, N - MAX, 'the rest 486 Allocation Quota Reached');
  t.equal(h.server.stats.allocations, MAX);
  // Deleting one frees one slot.
  const winner = clients[answers.findIndex((r) => r.cls === Class.Success)]!;
  t.equal((await winner.request(Method.Refresh, (w) => w.u32(Attr.Lifetime, 0), true)).cls, Class.Success);
  const loser = clients[answers.findIndex((r) => errCode(r) === 486)]!;
  t.equal((await loser.request(Method.Allocate, udpTransport, true)).cls, Class.Success, 'slot reused after delete');
});
