// `gatehouse serve` runs the conferencing core (core.md) next to the TURN server: with no
// turn.rest_secret configured it makes one into DATA_DIR (0600, named in the log, never
// its value), a user logs in with Digest SHA-256 (core.md §3), an invitee is admitted
// through a personal URL (core.md §7) and the TURN credentials of that answer allocate on
// this gateway's TURN server (core.md §8), as that user. No secret in the output or
// DATA_DIR.
import t from 'tap';
import { readFileSync, statSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { loginUser } from './helpers/core-guest.js';
import { freePort } from './helpers/ports.js';
import { startGatehouse } from './helpers/turn-servers.js';
import { assertNoSecrets, DATA_DIR_ALLOWED, Secrets } from './helpers/secrets.js';
import { Attr, Method, Class } from '../../src/wire/stun.js';
import { Client, errCode } from '../unit/turn/helpers.js';

const USERS = [
  { name: 'alice', password: 'alice-' + randomBytes(9).toString('base64url'), groups: ['owners'] },
  { name: 'bob', password: 'bob-' + randomBytes(9).toString('base64url'), groups: ['trading'] },
];

t.test('gatehouse serve: core login, a personal URL, and its TURN credentials on this gateway', async (t) => {
  const corePort = await freePort();
  const gh = await startGatehouse({
    users: USERS,
    logLevel: 'info',
    configure: (c) => {
      c.core = { listen: `http://127.0.0.1:${corePort}` };
    },
  });
  t.teardown(() => gh.stop());
  const base = `http://127.0.0.1:${corePort}`;
  const secretFile = join(gh.dataDir!, 'turn-rest-secret');
  t.ok(existsSync(secretFile), 'turn.rest_secret made into DATA_DIR');
  t.equal(statSync(secretFile).mode & 0o777, 0o600);
  const restSecret = readFileSync(secretFile, 'utf8').trim();
  t.ok(restSecret.length >= 43, '256 bits');
  const secrets = new Secrets().add('rest_secret', 'generated', restSecret);
  for (const u of USERS) secrets.turnPassword(u.name, u.password, gh.realm);

  const page = await fetch(`${base}/`);
  t.equal(page.status, 200, 'GET / serves the web client');
  t.match(page.headers.get('content-security-policy') ?? '', /script-src 'self'/);

  const alice = await loginUser(base, 'alice', USERS[0]!.password);
  const bob = await loginUser(base, 'bob', USERS[1]!.password);
  secrets.add('token', 'alice', alice).add('token', 'bob', bob);
  const room = (await (
    await fetch(`${base}/v1/rooms`, { method: 'POST', headers: { authorization: `Bearer ${alice}` }, body: '{"title":"desk"}' })
  ).json()) as { id: string };
  const inv = (await (
    await fetch(`${base}/v1/rooms/${room.id}/invites`, {
      method: 'POST',
      headers: { authorization: `Bearer ${alice}`, 'content-type': 'application/json' },
      body: JSON.stringify({ invitee: 'bob', expires_in: 300 }),
    })
  ).json()) as { url: string };
  const path = new URL(inv.url).pathname;
  secrets.add('invite_url', 'bob', path.split('/').pop()!);
  const adm = await fetch(`${base}${path}`, { method: 'POST', headers: { authorization: `Bearer ${bob}` } });
  t.equal(adm.status, 200, 'admitted');
  const body = (await adm.json()) as {
    token: string;
    room: string;
    turn: { urls: string[]; username: string; credential: string; ttl: number };
  };
  secrets.add('token', 'bob room', body.token).add('turn_credential', 'bob', body.turn.credential);
  t.equal(body.room, room.id);
  t.ok(body.turn.urls.includes(`turn:127.0.0.1:${gh.port}?transport=udp`), 'urls name this gateway');
  t.match(body.turn.username, /^\d+:bob$/);

  const cl = await Client.udp(gh.port);
  t.teardown(() => cl.close());
  cl.realm = gh.realm;
  cl.username = body.turn.username;
  cl.password = body.turn.credential;
  const alloc = await cl.authed(Method.Allocate, (w) => w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  t.equal(alloc.cls, Class.Success, `the core's credential allocates: ${errCode(alloc)}`);

  const bad = await Client.udp(gh.port);
  t.teardown(() => bad.close());
  bad.realm = gh.realm;
  bad.username = body.turn.username;
  bad.password = body.turn.credential.slice(0, -4) + 'AAA=';
  const refused = await bad.authed(Method.Allocate, (w) => w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
  t.not(refused.cls, Class.Success, 'a forged credential is refused');

  let events = '';
  for (let i = 0; i < 50 && !/"allocation"/.test(events); i++) {
    await new Promise((r) => setTimeout(r, 100));
    events = existsSync(join(gh.dataDir!, 'events.jsonl')) ? readFileSync(join(gh.dataDir!, 'events.jsonl'), 'utf8') : '';
  }
  const a = events
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .find((e) => e.event_type === 'allocation');
  t.equal(a?.gatehouse?.user, 'bob', 'the allocation is charged to the invitee');

  const out = gh.fullOutput().toString('utf8');
  t.match(out, /turn\.rest_secret not set: generated one for the core/, 'the log says a secret was made');
  t.match(out, /"core":"http:\/\/127\.0\.0\.1:\d+"/, 'and where the core listens');
  assertNoSecrets(t, secrets, {
    texts: { output: out },
    dirs: { data: gh.dataDir! },
    allowed: [
      ...DATA_DIR_ALLOWED,
      { path: 'turn-rest-secret', kinds: ['rest_secret'], reason: 'the generated secret is kept here by design (0600)' },
    ],
  });
});
