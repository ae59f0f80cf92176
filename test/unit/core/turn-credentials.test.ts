// TURN REST credentials from the core (core.md §8) are accepted by the gateway's own
// verification (src/turn/auth.ts resolveCredential): users and guests, expiry, urls,
// and the generated rest secret file (0600).
import t from 'tap';
import { mkdtempSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { TurnCredentialIssuer, loadOrCreateRestSecret, turnUrls } from '../../../src/core/turn-credentials.js';
import { resolveCredential } from '../../../src/turn/auth.js';
import { defaultConfig } from '../../../src/config/config.js';

const users = { lookup: (n: string) => (n === 'alice' ? { name: 'alice', password: 'x', groups: ['trading'] } : undefined) };

t.test("a user credential: EXPIRY:USER, base64(HMAC-SHA1), accepted by the TURN server with the user's groups", async (t) => {
  const clock = new ManualClock();
  const iss = new TurnCredentialIssuer('s3cret-s3cret', ['turn:127.0.0.1:3478?transport=udp'], 600, () => clock.now());
  const c = iss.issue({ kind: 'user', user: 'alice' });
  const exp = Math.floor(clock.now() / 1000) + 600;
  t.equal(c.username, `${exp}:alice`);
  t.equal(c.ttl, 600);
  t.same(c.urls, ['turn:127.0.0.1:3478?transport=udp']);
  const r = resolveCredential(c.username, users, 's3cret-s3cret', clock.now());
  t.ok(r.ok);
  if (r.ok) {
    t.equal(r.cred.password, c.credential, 'the TURN server derives the same password');
    t.equal(r.cred.user, 'alice');
    t.same(r.cred.groups, ['trading']);
  }
  t.notOk(resolveCredential(c.username, users, 'other-secret', clock.now()).ok && false);
  const wrong = resolveCredential(c.username, users, 'other-secret', clock.now());
  t.ok(wrong.ok && wrong.cred.password !== c.credential, 'another secret gives another password');
  clock.advance(600_000);
  t.same(resolveCredential(c.username, users, 's3cret-s3cret', clock.now()), { ok: false, reason: 'rest_expired' }, 'expired after ttl');
});

t.test('a guest credential: EXPIRY:guest/CONFERENCE/IDENTITY', async (t) => {
  const clock = new ManualClock();
  const iss = new TurnCredentialIssuer('k', [], 300, () => clock.now());
  const c = iss.issue({ kind: 'guest', conference: 'board-1', identity: 'Zoë' });
  t.equal(c.username, `${Math.floor(clock.now() / 1000) + 300}:guest/board-1/Zoë`);
  const r = resolveCredential(c.username, users, 'k', clock.now());
  t.ok(r.ok);
  if (r.ok) {
    t.equal(r.cred.password, c.credential);
    t.same(r.cred.groups, [], 'a guest gets no directory groups');
  }
  t.equal(iss.issue({ kind: 'user', user: 'alice' }, 10_000).ttl, 300, 'never longer than the configured ttl');
});

t.test('urls from turn.listen: unspecified addresses advertised as the relay address', async (t) => {
  t.same(turnUrls(['udp://0.0.0.0:3478', 'tcp://0.0.0.0:3478', 'tls://[::1]:5349'], '192.0.2.7'), [
    'turn:192.0.2.7:3478?transport=udp',
    'turn:192.0.2.7:3478?transport=tcp',
    'turns:[::1]:5349?transport=tcp',
  ]);
  const cfg = defaultConfig();
  const iss = TurnCredentialIssuer.fromConfig(cfg, 'x', () => 0);
  t.same(iss.issue({ kind: 'user', user: 'a' }).urls, ['turn:127.0.0.1:3478?transport=udp', 'turn:127.0.0.1:3478?transport=tcp']);
  t.equal(iss.issue({ kind: 'user', user: 'a' }).ttl, 600, 'core.turn_ttl default');
});

t.test('the rest secret: configured wins; else made once into DATA_DIR (0600) and read back', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-rest-'));
  t.same(loadOrCreateRestSecret(dir, 'configured'), { secret: 'configured', created: false, file: null });
  const a = loadOrCreateRestSecret(dir, null);
  t.equal(a.created, true);
  t.ok(a.secret.length >= 43);
  t.equal(statSync(a.file!).mode & 0o777, 0o600);
  t.equal(readFileSync(a.file!, 'utf8').trim(), a.secret);
  const b = loadOrCreateRestSecret(dir, null);
  t.same(b, { secret: a.secret, created: false, file: a.file });
});

t.test('issue records: a user credential names its conference, room, directory groups and org to the TURN server', async (t) => {
  const clock = new ManualClock();
  const iss = new TurnCredentialIssuer('s3cret-s3cret', [], 600, () => clock.now());
  const lookup = (u: string) => iss.contextOf(u);
  const a = iss.issue({ kind: 'user', user: 'alice', context: { conference: 'c1' } });
  const r = resolveCredential(a.username, users, 's3cret-s3cret', clock.now(), lookup);
  t.ok(r.ok);
  if (r.ok) {
    t.equal(r.cred.conference, 'c1', 'the flow will carry gatehouse.conference');
    t.same(r.cred.groups, ['trading'], 'no groups in the record: the user store decides');
    t.notOk(r.cred.guest);
  }
  // The same user, same second, another conference: a distinct username (EXPIRY one earlier).
  const b = iss.issue({ kind: 'user', user: 'alice', context: { room: 'r9', groups: ['desk'], org: 'org-a' } });
  t.not(b.username, a.username);
  t.equal(b.ttl, 599, 'EXPIRY moved earlier, never later (revocation bound, src/turn/revoked.ts)');
  const rb = resolveCredential(b.username, users, 's3cret-s3cret', clock.now(), lookup);
  t.ok(rb.ok);
  if (rb.ok) {
    t.equal(rb.cred.room, 'r9');
    t.equal(rb.cred.conference, undefined);
    t.same(rb.cred.groups, ['desk'], "the directory's groups at issue time win over the user store");
    t.equal(rb.cred.org, 'org-a');
  }
  t.equal(iss.issue({ kind: 'user', user: 'alice', context: { conference: 'c1' } }).username, a.username, 'same context: same username');
  // Records end with their credential.
  clock.advance(601_000);
  t.equal(iss.contextOf(a.username), undefined, 'expired record is forgotten');
  // A credential nobody recorded (issued elsewhere, or before a restart) carries nothing extra.
  const plain = resolveCredential(`${Math.floor(clock.now() / 1000) + 60}:alice`, users, 's3cret-s3cret', clock.now(), lookup);
  t.ok(plain.ok && plain.cred.conference === undefined && plain.cred.groups[0] === 'trading');
  // A guest is never looked up: its username says everything.
  const g = iss.issue({ kind: 'guest', conference: 'c1', identity: 'ann' });
  t.equal(iss.contextOf(g.username), undefined);
});
