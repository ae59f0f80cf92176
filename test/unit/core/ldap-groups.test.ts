// Directory groups at TURN issue time (src/core/directory/groups.ts, SignalDeps.groupsOf):
// the join answer and each re-issue ask the directory (through its cache), so the issue
// record carries the directory's current groups; a directory that cannot answer gets the
// participant `unavailable` and no credentials; a user it no longer has, `forbidden`.
import t from 'tap';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ManualClock } from '../../../src/util/clock.js';
import { silentLogger } from '../../../src/util/log.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { TokenService } from '../../../src/core/tokens.js';
import { TurnCredentialIssuer } from '../../../src/core/turn-credentials.js';
import { SignalServer } from '../../../src/core/signal.js';
import type { Directory, DirectoryUser } from '../../../src/core/director.js';
import { DirectoryCache, DirectoryDown } from '../../../src/core/directory/cache.js';
import { issueGroups } from '../../../src/core/directory/groups.js';
import { SigClient } from './signal-helpers.js';
import { StaticUserDirectory } from '../../../src/store/users.js';

/** A directory whose answers the test sets, behind the real cache (TTL 10 s, grace 0). */
function fakeDirectory(clock: ManualClock) {
  const people = new Map<string, DirectoryUser>();
  let up = true;
  let asked = 0;
  const cache = new DirectoryCache<DirectoryUser | null>({ ttlMs: 10_000, graceMs: 0, max: 100, now: () => clock.now() });
  const dir: Directory = {
    user: (name) =>
      cache.get(name, async () => {
        asked++;
        if (!up) throw new DirectoryDown('connect failed');
        return people.get(name) ?? null;
      }),
    authenticate: async () => null,
  };
  return {
    dir,
    people,
    setUp: (v: boolean) => (up = v),
    asked: () => asked,
  };
}

const localUsers = new StaticUserDirectory([{ name: 'localadmin', password: 'x', groups: ['ops'] }]);
const coreOf = (directory: Directory | null) => ({ directory, users: localUsers, cfg: { core: { org: 'example.org' } } });

t.test('issueGroups: who is a directory user', async (t) => {
  const claims = (sub: string, org?: string, groups: string[] = ['from-login']) => ({ sub, groups, ...(org ? { org } : {}) });
  t.equal(await issueGroups(coreOf(null), claims('alice')), undefined, 'no directory: undefined (the store decides)');
  const f = fakeDirectory(new ManualClock(0));
  f.people.set('alice', { name: 'alice', groups: ['trading'], org: 'example.org' });
  f.people.set('bob', { name: 'bob', groups: ['admins'], org: 'example.org' });
  f.people.set('pat', { name: 'pat', groups: ['partners'], org: 'partner.example' });
  const core = coreOf(f.dir);
  t.same(await issueGroups(core, claims('alice')), ['trading'], "a home user: the directory's groups");
  t.same(await issueGroups(core, claims('alice', 'example.org')), ['trading'], "marked with this core's org: the same");
  t.same(
    await issueGroups(core, claims('bob', 'partner.example', ['guests'])),
    ['guests'],
    "a transferred bob of another org never gets our bob's groups: the groups his login here gave him",
  );
  t.same(await issueGroups(core, claims('pat', 'partner.example')), ['partners'], "listed under the token's org: the directory's groups");
  t.equal(await issueGroups(core, claims('localadmin')), undefined, "the gateway's own user: undefined (store groups)");
  await t.rejects(issueGroups(core, claims('ghost')), { code: 'forbidden' }, "nobody's user: 403");
});

t.test('signalling: join and re-issue carry the directory groups of the moment', async (t) => {
  const clock = new ManualClock(Date.now());
  const tokens = new TokenService(clock, { ttlS: 3600 });
  const turn = new TurnCredentialIssuer('rest-secret-for-tests-0123456789abcdef', ['turn:127.0.0.1:3478?transport=udp'], 60, () =>
    clock.now(),
  );
  const f = fakeDirectory(clock);
  f.people.set('bob', { name: 'bob', groups: ['trading'] });
  const sig = new SignalServer({
    tokens,
    turn,
    membership: { canJoin: () => 'ok' },
    clock,
    log: silentLogger,
    supervisor: new Supervisor(silentLogger),
    groupsOf: (claims) => issueGroups(coreOf(f.dir), claims),
    limits: { burst: 10_000, pingIntervalMs: 86_400_000 },
  });
  const server: Server = createServer((_q, s) => s.writeHead(404).end());
  server.on('upgrade', (req, socket, head) => sig.handleUpgrade(req, socket, head));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const clients: SigClient[] = [];
  t.teardown(async () => {
    for (const c of clients) c.ws.terminate();
    sig.stop();
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  const connect = async (user: string) => {
    const c = new SigClient(`ws://127.0.0.1:${(server.address() as AddressInfo).port}/v1/signal`);
    clients.push(c);
    await c.opened;
    c.send({ type: 'hello', token: tokens.issue({ kind: 'user', sub: user, groups: ['from-the-token'] }).token });
    await c.next('hello');
    return c;
  };

  const c = await connect('bob');
  c.send({ type: 'join', conference: 'desk' });
  const j = await c.next('join');
  const u1 = (j.turn as { username: string }).username;
  t.same(turn.contextOf(u1), { conference: 'desk', groups: ['trading'] }, "the join: the directory groups, not the token's");

  // bob leaves trading in the directory; the re-issue timer (80% of the 60 s ttl) asks again.
  f.people.set('bob', { name: 'bob', groups: ['staff'] });
  clock.advance(48_000);
  const r = await c.next('turn');
  const u2 = (r.turn as { username: string }).username;
  t.not(u2, u1);
  t.same(turn.contextOf(u2)?.groups, ['staff'], 're-issued past the cache TTL: the new groups');

  // The directory goes down; past the TTL (grace 0) the next re-issue cannot say the groups.
  f.setUp(false);
  clock.advance(48_000);
  const e = await c.next('error');
  t.equal((e.error as { code: string }).code, 'unavailable', 'no credentials, the client is told');
  t.same(await c.drain(100), [], 'and no turn message');

  // A new join while it is down: unavailable too.
  const d = await connect('dora');
  d.send({ type: 'join', conference: 'desk' });
  t.equal(((await d.next('error')).error as { code: string }).code, 'unavailable');

  // Up again, a user the directory does not have: forbidden, no credentials.
  f.setUp(true);
  const g = await connect('ghost');
  g.send({ type: 'join', conference: 'desk' });
  t.equal(((await g.next('error')).error as { code: string }).code, 'forbidden');
  t.ok(f.asked() >= 4);
});
