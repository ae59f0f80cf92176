/**
 * key-escrow.md §5.4 over real sockets: a block holds for the same user and peer address
 * across ALL that user's allocations for keys.block_for. An in-process TurnServer with the
 * GatewayInspector, two allocations of alice (two client sockets) and one of bob.
 */
import t from 'tap';
import { Attr, Class, Method, getXorAddress } from '../../../src/wire/stun.js';
import { ATTR_KEY_DECLINE } from '../../../src/wire/escrow.js';
import { Client, errCode } from '../turn/helpers.js';
import { bindAttrs, both, escrowRig } from './escrow-helpers.js';

const CH = 0x4001;

async function allocate(port: number, user?: { username: string; password: string }): Promise<Client> {
  const c = await Client.udp(port);
  const r = await c.authed(Method.Allocate, (w) => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])), user ?? {});
  if (r.cls !== Class.Success) throw new Error(`allocate failed ${errCode(r)}`);
  t.ok(getXorAddress(r, Attr.XorRelayedAddress), 'relayed address');
  return c;
}

const permit = (port: number) => (w: import('../../../src/wire/stun.js').StunWriter) =>
  void w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', port);

t.test("a block on one of alice's allocations refuses that peer from all of them (403), and closes their flows", async (t) => {
  const rig = await escrowRig(); // keys required; alice's first allocation is rig.c
  t.teardown(rig.close);
  const second = await allocate(rig.h.udpPort); // alice again, another allocation
  const bob = await allocate(rig.h.udpPort, { username: 'bob', password: 'hunter2' });
  t.teardown(() => (second.close(), bob.close()));

  t.equal((await second.authed(Method.CreatePermission, permit(rig.peer.port))).cls, Class.Success, 'alice #2 has a permission');
  t.equal(rig.h.server.flows().length, 1);
  // Alice #1 declines keys: the flow is blocked (keys required, §2.3).
  const r = await rig.c.authed(
    Method.ChannelBind,
    both(bindAttrs(CH, rig.peer.port), (w) => void w.attr(ATTR_KEY_DECLINE, Buffer.alloc(0))),
  );
  t.equal(r.cls, Class.Success, 'the request itself succeeds');
  const blocked = rig.events.events.filter((e) => e.event_type === 'flow_blocked');
  t.equal(blocked.length, 2, "both of alice's flows to that peer are blocked");
  t.ok(
    blocked.every((e) => (e.gatehouse as Record<string, unknown>).reason === 'keys_declined'),
    'reason keys_declined',
  );
  t.equal(rig.h.server.flows().length, 0, 'their permissions are removed');

  t.equal(errCode(await rig.c.authed(Method.CreatePermission, permit(rig.peer.port))), 403, 'alice #1: 403');
  t.equal(errCode(await second.authed(Method.CreatePermission, permit(rig.peer.port))), 403, 'alice #2: 403');
  t.equal(errCode(await second.authed(Method.ChannelBind, bindAttrs(0x4002, rig.peer.port))), 403, 'alice #2 ChannelBind: 403');
  const third = await allocate(rig.h.udpPort);
  t.teardown(() => third.close());
  t.equal(errCode(await third.authed(Method.CreatePermission, permit(rig.peer.port))), 403, 'a new allocation of alice: 403');
  const bobCreds = { username: 'bob', password: 'hunter2' };
  t.equal((await bob.authed(Method.CreatePermission, permit(rig.peer.port), bobCreds)).cls, Class.Success, 'bob is not affected');

  rig.clock.advance(300_001); // keys.block_for: 5m
  const again = await second.authed(Method.CreatePermission, permit(rig.peer.port));
  t.equal(again.cls, Class.Success, 'after block_for the peer is allowed again');
});
