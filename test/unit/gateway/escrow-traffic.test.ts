/**
 * Key escrow against relayed traffic over real sockets: an in-process TurnServer with the
 * GatewayInspector, a scripted TURN client and a UDP peer replaying a real OpenSSL DTLS 1.2
 * session (test/fixtures/openssl, captured from s_client/s_server with a key log).
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { Class, Method, getAttrs } from '../../../src/wire/stun.js';
import { ATTR_KEY_STATUS, decodeKeyStatus } from '../../../src/wire/escrow.js';
import { errCode } from '../turn/helpers.js';
import {
  bindAttrs,
  both,
  clientReceivedAfterFence,
  escrowRig,
  peerReceivedAfterFence,
  relayOne,
  writeKeys,
  type EscrowRig,
} from './escrow-helpers.js';
import { fixtureFlow, isAppData } from './flow-guard-helpers.js';
import type { KeySet } from '../../../src/wire/keyset.js';

const CH = 0x4001;

async function bindWithKeys(rig: EscrowRig, sets: KeySet[]): Promise<number[]> {
  const tid = randomBytes(12);
  const r = await rig.c.authed(Method.ChannelBind, both(bindAttrs(CH, rig.peer.port), writeKeys(rig.c, tid, sets)), { tid });
  if (r.cls !== Class.Success) throw new Error(`ChannelBind failed ${errCode(r)}`);
  return getAttrs(r, ATTR_KEY_STATUS).map((v) => decodeKeyStatus(v)!);
}

const hex = (b: Buffer) => b.toString('hex');
const blocked = (rig: EscrowRig) =>
  rig.events.events.filter((e) => e.event_type === 'flow_blocked').map((e) => (e.gatehouse as Record<string, unknown>).reason);

t.test('hold until escrowed keys verify, then release in order (DTLS 1.2 AES-GCM + SRTP)', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const rig = await escrowRig();
  t.teardown(rig.close);
  t.same(await bindWithKeys(rig, []), []);
  const first = f.packets.slice(0, 13);
  const arrived: Buffer[] = [];
  for (const p of first) {
    const got = await relayOne(rig, CH, p.dir, p.data);
    arrived.push(...got);
    if (isAppData(p.data)) t.same(got, [], 'application data held');
    else t.same(got.map(hex), [hex(p.data)], 'handshake forwarded at once');
  }
  t.notOk(rig.events.events.some((e) => e.event_type === 'keys_verified'));
  // The endpoint escrows its keys on a ChannelBind refresh.
  t.same(await bindWithKeys(rig, [f.keySets[0]!]), [1], 'KEY-STATUS 1: verified against traffic already seen');
  const verified = rig.events.events.filter((e) => e.event_type === 'keys_verified');
  t.equal(verified.length, 1);
  t.same(verified[0]!.gatehouse, {
    user: 'alice',
    groups: ['trading'], // the user's groups (issue 12: events name them)
    allocation: (verified[0]!.gatehouse as Record<string, unknown>).allocation,
    association: hex(f.keySets[0]!.clientRandom),
  });
  const toPeer = await peerReceivedAfterFence(rig, CH);
  const toClient = await clientReceivedAfterFence(rig);
  t.same(
    toPeer.map(hex),
    first.filter((p) => p.dir === 'c2p' && isAppData(p.data)).map((p) => hex(p.data)),
    'held c2p application data released in order',
  );
  t.same(
    toClient.map(hex),
    first.filter((p) => p.dir === 'p2c' && isAppData(p.data)).map((p) => hex(p.data)),
    'held p2c application data released in order',
  );
  t.equal(arrived.filter((d) => isAppData(d)).length, 0, 'nothing of application data forwarded before keys_verified');
  // Now covered: further application data flows at once.
  const more = f.packets.find((p) => p.dir === 'c2p' && isAppData(p.data))!;
  t.same((await relayOne(rig, CH, 'c2p', more.data)).length, 1, 'covered traffic forwarded');
  rig.clock.advance(60_000);
  t.same(blocked(rig), []);
});

t.test('deadline without keys: flow_blocked keys_missing, then 403', async (t) => {
  const f = fixtureFlow('chacha20.json');
  const rig = await escrowRig();
  t.teardown(rig.close);
  await bindWithKeys(rig, []);
  for (const p of f.packets) await relayOne(rig, CH, p.dir, p.data);
  rig.clock.advance(9_000);
  t.same(blocked(rig), []);
  rig.clock.advance(1_000);
  t.same(blocked(rig), ['keys_missing']);
  t.equal(rig.h.server.flows().length, 0, 'permission removed');
  t.equal(errCode(await rig.c.authed(Method.ChannelBind, bindAttrs(CH, rig.peer.port))), 403);
});

t.test('a key set for a different association is not verified: keys_missing', async (t) => {
  const f = fixtureFlow('chacha20.json');
  const other = fixtureFlow('gcm128-srtp-reneg.json');
  const rig = await escrowRig();
  t.teardown(rig.close);
  await bindWithKeys(rig, []);
  for (const p of f.packets) await relayOne(rig, CH, p.dir, p.data);
  const st = await bindWithKeys(rig, [other.keySets[0]!]);
  t.equal(st.length, 1);
  t.ok(st[0] === 0 || st[0] === 2, 'KEY-STATUS received (0) or failed (2), never verified');
  t.notOk(rig.events.events.some((e) => e.event_type === 'keys_verified'));
  rig.clock.advance(10_000);
  t.same(blocked(rig), ['keys_missing']);
});

t.test('re-key: replayed old key set does not cover the new association (rekey_missing)', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const rig = await escrowRig();
  t.teardown(rig.close);
  t.same(await bindWithKeys(rig, [f.keySets[0]!]), [0], 'keys before traffic: received');
  const got: Buffer[][] = [];
  for (const p of f.packets) got.push(await relayOne(rig, CH, p.dir, p.data));
  const epoch2 = f.packets.map((p, i) => [p, got[i]!] as const).filter(([p]) => isAppData(p.data, 2));
  t.ok(epoch2.length > 0 && epoch2.every(([, g]) => g.length === 0), 'application data of the renegotiated association held');
  t.ok(
    f.packets
      .map((p, i) => [p, got[i]!] as const)
      .filter(([p]) => isAppData(p.data, 1))
      .every(([, g]) => g.length === 1),
    'first association forwarded',
  );
  await bindWithKeys(rig, [f.keySets[0]!]); // replay of the old key set
  rig.clock.advance(10_000);
  t.same(blocked(rig), ['rekey_missing']);
});

t.test('re-key with the new key set: verified, released', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const rig = await escrowRig();
  t.teardown(rig.close);
  await bindWithKeys(rig, [f.keySets[0]!]);
  for (const p of f.packets) await relayOne(rig, CH, p.dir, p.data);
  t.same(await bindWithKeys(rig, [f.keySets[1]!]), [1]);
  const toPeer = await peerReceivedAfterFence(rig, CH);
  t.same(
    toPeer.map(hex),
    f.packets.filter((p) => p.dir === 'c2p' && isAppData(p.data, 2)).map((p) => hex(p.data)),
  );
  rig.clock.advance(60_000);
  t.same(blocked(rig), []);
});

t.test('released data is judged by policy first: a block rule stops it and blocks the flow', async (t) => {
  const f = fixtureFlow('chacha20.json');
  const { KEYS_RULES } = await import('./escrow-helpers.js');
  const rig = await escrowRig(
    `${KEYS_RULES}rules:\n  - id: no-fixture\n    when:\n      contains: ["client to server"]\n    action: block\n`,
  );
  t.teardown(rig.close);
  await bindWithKeys(rig, []);
  for (const p of f.packets) await relayOne(rig, CH, p.dir, p.data);
  t.same(await bindWithKeys(rig, [f.keySets[0]!]), [1]);
  t.same(blocked(rig), ['policy']);
  t.ok(rig.events.events.some((e) => e.event_type === 'alert' && e.alert?.signature_id === 'no-fixture' && e.alert.action === 'blocked'));
  t.equal(rig.h.server.flows().length, 0, 'flow torn down');
  const m = randomBytes(8);
  m[0] = 0;
  rig.c.sendRaw(Buffer.concat([Buffer.from([0x40, 0x01, 0, 8]), m]));
  // The channel is gone: nothing reaches the peer; a fresh permission is refused.
  t.equal(errCode(await rig.c.authed(Method.CreatePermission, (w) => void w.xorAddress(0x0012, '127.0.0.1', rig.peer.port))), 403);
});
