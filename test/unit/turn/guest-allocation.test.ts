/**
 * core.md §8 on the TURN server: an allocation with a guest's REST credential
 * (`EXPIRY:guest/CONFERENCE/IDENTITY`) is charged to that guest, its flows carry guest
 * and conference, and its allocation and permission events carry gatehouse.guest and
 * gatehouse.conference; a user's REST allocation carries neither.
 */
import t from 'tap';
import { Attr, Class, Method } from '../../../src/wire/stun.js';
import { restPassword } from '../../../src/turn/auth.js';
import type { Flow } from '../../../src/turn/flow.js';
import { Client, errCode, startServer } from './helpers.js';

const SECRET = 'unit-rest-secret';
const udp = (w: { attr(t: number, v: Buffer): void }) => w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

async function allocateAs(user: string) {
  const flows: Flow[] = [];
  const h = await startServer((c) => (c.turn.rest_secret = SECRET), { flowHooks: { onFlowCreated: (f) => void flows.push(f) } });
  const c = await Client.udp(h.udpPort);
  const username = `${Math.floor(h.clock.now() / 1000) + 600}:${user}`;
  c.username = username;
  c.password = restPassword(SECRET, username);
  const a = await c.authed(Method.Allocate, udp);
  const p = await c.authed(Method.CreatePermission, (w) => w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', 9));
  return { h, c, a, p, flows };
}

t.test('a guest allocation: guest and conference on flows and events', async (t) => {
  const r = await allocateAs('guest/board-9/eve');
  t.teardown(async () => {
    r.c.close();
    await r.h.close();
  });
  t.equal(r.a.cls, Class.Success, `allocate ${errCode(r.a)}`);
  t.equal(r.p.cls, Class.Success, `permission ${errCode(r.p)}`);
  t.equal(r.flows.length, 1);
  const f = r.flows[0]!;
  t.equal(f.user, 'guest/board-9/eve');
  t.same(f.groups, []);
  t.equal(f.guest, true);
  t.equal(f.conference, 'board-9');
  const alloc = r.h.events.events.find((e) => e.event_type === 'allocation');
  const perm = r.h.events.events.find((e) => e.event_type === 'permission');
  for (const e of [alloc, perm]) {
    t.same(
      { user: e?.gatehouse?.user, guest: e?.gatehouse?.guest, conference: e?.gatehouse?.conference },
      { user: 'guest/board-9/eve', guest: true, conference: 'board-9' },
      `${e?.event_type} event`,
    );
  }
});

t.test('a user REST allocation: directory groups, no guest or conference', async (t) => {
  const r = await allocateAs('alice');
  t.teardown(async () => {
    r.c.close();
    await r.h.close();
  });
  t.equal(r.a.cls, Class.Success);
  const f = r.flows[0]!;
  t.equal(f.user, 'alice');
  t.same(f.groups, ['trading']);
  t.equal(f.guest, undefined);
  t.equal(f.conference, undefined);
  t.notOk('guest' in f, 'no guest property at all');
  for (const e of r.h.events.events) {
    t.notOk(e.gatehouse && 'guest' in e.gatehouse, `${e.event_type}: no gatehouse.guest`);
    t.notOk(e.gatehouse && 'conference' in e.gatehouse, `${e.event_type}: no gatehouse.conference`);
  }
});
