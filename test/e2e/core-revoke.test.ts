// Issue 11 / core.md §8 through `gatehouse serve`: an invitee admitted to a room allocates
// with the core's TURN credential; the owner removes the participant (DELETE
// /v1/rooms/{id}/participants/{user}); the allocation closes at once (allocation event
// `revoked`, and a Refresh on that 5-tuple with a valid credential gets 437 Allocation
// Mismatch, RFC 8656 §5), the old credential gets 401 (RFC 8489 §9.2.4) before its
// EXPIRY, and a fresh credential issued after re-admission allocates again.
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { loginUser } from './helpers/core-guest.js';
import { reservePortBlock } from './helpers/ports.js';
import { startGatehouse } from './helpers/turn-servers.js';
import { Attr, Method, Class } from '../../src/wire/stun.js';
import { Client, errCode } from '../unit/turn/helpers.js';

const USERS = [
  { name: 'alice', password: 'alice-' + randomBytes(9).toString('base64url'), groups: ['owners'] },
  { name: 'bob', password: 'bob-' + randomBytes(9).toString('base64url'), groups: ['trading'] },
];
const udp = (w: { attr(t: number, v: Buffer): void }) => w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

type Turn = { urls: string[]; username: string; credential: string; ttl: number };

async function admit(base: string, room: string, owner: string, invitee: string, token: string): Promise<Turn> {
  const inv = await fetch(`${base}/v1/rooms/${room}/invites`, {
    method: 'POST',
    headers: { authorization: `Bearer ${owner}`, 'content-type': 'application/json' },
    body: JSON.stringify({ invitee, expires_in: 300 }),
  });
  if (inv.status !== 201) throw new Error(`invite: ${inv.status}`);
  const path = new URL(((await inv.json()) as { url: string }).url).pathname;
  const adm = await fetch(`${base}${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  if (adm.status !== 200) throw new Error(`admit: ${adm.status}`);
  return ((await adm.json()) as { turn: Turn }).turn;
}

function allocationActions(dataDir: string): string[] {
  const f = join(dataDir, 'events.jsonl');
  if (!existsSync(f)) return [];
  return readFileSync(f, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .filter((e) => e.event_type === 'allocation' && e.gatehouse?.user === 'bob')
    .map((e) => e.allocation?.action);
}

t.test('gatehouse serve: removing a participant ends its TURN credentials and allocations', async (t) => {
  // A reserved block (not a kernel-chosen ephemeral port another socket may take).
  const coreBlock = await reservePortBlock(1);
  t.teardown(() => coreBlock.release());
  const corePort = coreBlock.port(0);
  const gh = await startGatehouse({
    users: USERS,
    logLevel: 'info',
    configure: (c) => {
      c.core = { listen: `http://127.0.0.1:${corePort}` };
    },
  });
  t.teardown(() => gh.stop());
  const base = `http://127.0.0.1:${corePort}`;
  const alice = await loginUser(base, 'alice', USERS[0]!.password);
  const bob = await loginUser(base, 'bob', USERS[1]!.password);
  const room = (await (
    await fetch(`${base}/v1/rooms`, { method: 'POST', headers: { authorization: `Bearer ${alice}` }, body: '{"title":"desk"}' })
  ).json()) as { id: string };

  const first = await admit(base, room.id, alice, 'bob', bob);
  t.match(first.username, /^\d+:bob$/);
  const cl = await Client.udp(gh.port);
  t.teardown(() => cl.close());
  cl.realm = gh.realm;
  cl.username = first.username;
  cl.password = first.credential;
  const alloc = await cl.authed(Method.Allocate, udp);
  t.equal(alloc.cls, Class.Success, `the core's credential allocates: ${errCode(alloc)}`);
  t.equal((await cl.authed(Method.Refresh)).cls, Class.Success, 'refresh works while admitted');

  const del = await fetch(`${base}/v1/rooms/${room.id}/participants/bob`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${alice}` },
  });
  t.equal(del.status, 204, 'participant removed');

  let actions: string[] = [];
  for (let i = 0; i < 50 && !actions.includes('revoked'); i++) {
    await new Promise((r) => setTimeout(r, 100));
    actions = allocationActions(gh.dataDir!);
  }
  t.ok(actions.includes('revoked'), `the allocation closed with action revoked (${actions.join(',')})`);

  const refresh = await cl.authed(Method.Refresh);
  t.equal(errCode(refresh), 401, 'refresh with the old credential (not expired): 401');
  const again = await Client.udp(gh.port);
  t.teardown(() => again.close());
  again.realm = gh.realm;
  again.username = first.username;
  again.password = first.credential;
  const refused = await again.authed(Method.Allocate, udp);
  t.equal(errCode(refused), 401, 'a new Allocate with the old credential: 401');
  t.ok(Number(first.username.split(':')[0]) * 1000 > Date.now(), 'the old credential had not expired');

  // Credentials issued in the revocation second are refused too (revoked.ts): re-admit later.
  await new Promise((r) => setTimeout(r, 1100));
  const second = await admit(base, room.id, alice, 'bob', bob);
  t.not(second.username, first.username, 'a fresh credential');
  cl.username = second.username;
  cl.password = second.credential;
  const mismatch = await cl.authed(Method.Refresh);
  t.equal(errCode(mismatch), 437, 'the old allocation is gone: Refresh on its 5-tuple gets 437 Allocation Mismatch');
  const fresh = await cl.authed(Method.Allocate, udp);
  t.equal(fresh.cls, Class.Success, `the fresh credential allocates: ${errCode(fresh)}`);
});
