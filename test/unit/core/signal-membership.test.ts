/**
 * Who may join what in signalling (core.md §2, §7, §8): defaultMembership over the
 * core's RoomService and claimsAllowConference, with the conferences' existence check.
 */
import t from 'tap';
import { defaultMembership } from '../../../src/core/signal.js';
import type { TokenClaims } from '../../../src/core/tokens.js';
import type { RoomService } from '../../../src/core/rooms.js';

const claims = (c: Partial<TokenClaims>): TokenClaims => ({ kind: 'user', sub: 'alice', groups: [], iat: 0, exp: 1e10, ...c });
const rooms: RoomService = {
  get: (id) => (id === 'r1' ? { id, owner: 'alice', title: 't' } : null),
  mayJoin: (c, id) => (c.kind === 'user' && c.room === undefined && c.sub === 'alice') || c.room === id,
} as RoomService;

t.test('conferences: a user any existing one, a guest only its own, a room token none', async (t) => {
  const exists = new Set(['c1', 'c2']);
  const m = defaultMembership({ rooms }, (id) => exists.has(id));
  t.equal(await m.canJoin(claims({}), { conference: 'c1' }), 'ok');
  t.equal(await m.canJoin(claims({ sub: 'bob' }), { conference: 'c2' }), 'ok', 'users join conferences');
  t.equal(await m.canJoin(claims({}), { conference: 'nope' }), 'not_found');
  const guest = claims({ kind: 'guest', sub: 'guest/c1/eve', conference: 'c1', identity: 'eve' });
  t.equal(await m.canJoin(guest, { conference: 'c1' }), 'ok');
  t.equal(await m.canJoin(guest, { conference: 'c2' }), 'forbidden', 'a guest outside its conference');
  t.equal(await m.canJoin(guest, { conference: 'nope' }), 'forbidden', 'forbidden before existence: nothing learnt');
  t.equal(await m.canJoin(claims({ room: 'r1' }), { conference: 'c1' }), 'forbidden', 'a room token');
  const async = defaultMembership({ rooms }, async (id) => id === 'c1');
  t.equal(await async.canJoin(claims({}), { conference: 'c1' }), 'ok', 'an async existence check');
  t.equal(await async.canJoin(claims({}), { conference: 'c2' }), 'not_found');
});

t.test('rooms: the owner and the invitee stamped with it', async (t) => {
  const m = defaultMembership({ rooms });
  t.equal(await m.canJoin(claims({}), { room: 'r1' }), 'ok', 'the owner');
  t.equal(await m.canJoin(claims({ sub: 'carol', room: 'r1' }), { room: 'r1' }), 'ok', 'the admitted invitee');
  t.equal(await m.canJoin(claims({ sub: 'bob' }), { room: 'r1' }), 'forbidden');
  t.equal(await m.canJoin(claims({ kind: 'guest', sub: 'guest/c1/eve', conference: 'c1', identity: 'eve' }), { room: 'r1' }), 'forbidden');
  t.equal(await m.canJoin(claims({}), { room: 'r2' }), 'not_found');
});

t.test('the rooms service is read when asked (modules may replace it after signalling starts)', async (t) => {
  const core = { rooms: { get: () => null, mayJoin: () => false } as RoomService };
  const m = defaultMembership(core);
  t.equal(await m.canJoin(claims({}), { room: 'r1' }), 'not_found');
  core.rooms = rooms;
  t.equal(await m.canJoin(claims({}), { room: 'r1' }), 'ok');
});
