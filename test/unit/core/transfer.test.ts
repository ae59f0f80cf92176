// Authentication transfer (src/core/transfer.ts checkTransfer, core.md §6) with a driven
// clock and a fake directory: the five checks one at a time, the challenge spent in every
// case, iat/exp bounds and skew; and the signing identity (src/core/core-signing.ts):
// made once into DATA_DIR (key 0600), reused, configured files checked, peers' certs
// checked with errors naming core.peers[i].cert.
import t from 'tap';
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { ChallengeStore } from '../../../src/core/challenges.js';
import { checkTransfer, makeTicket, type TransferDeps } from '../../../src/core/transfer.js';
import {
  loadOrCreateCoreSigning,
  loadPeers,
  SIGNING_KEY_FILE,
  SIGNING_CERT_FILE,
  type LoadedPeer,
} from '../../../src/core/core-signing.js';
import { createSelfSigned } from '../../../src/store/identity.js';
import { signEs256 } from '../../../src/core/jws.js';
import { CoreError } from '../../../src/core/errors.js';
import { parseConfig } from '../../../src/config/config.js';
import type { Directory, DirectoryUser } from '../../../src/core/director.js';

const SRC = '192.0.2.10';

async function peerOf(org: string, allow = { users: ['alice'], groups: ['partners'] }) {
  const { keyPem, certPem } = await createSelfSigned(`core ${org}`);
  const certificate = new X509Certificate(certPem);
  const peer: LoadedPeer = { org, cert: '(mem)', allow, certificate, publicKey: certificate.publicKey };
  return { peer, privateKey: createPrivateKey(keyPem), certPem, keyPem };
}

function dir(users: Record<string, DirectoryUser | 'down'>): Directory {
  return {
    async user(name) {
      const u = users[name];
      if (u === 'down') throw new CoreError('unavailable', 'the directory cannot be reached');
      return u ?? null;
    },
    async authenticate() {
      return null;
    },
  };
}

t.test('the five checks, one at a time; the challenge spent in every case', async (t) => {
  const clock = new ManualClock(Date.now());
  const challenges = new ChallengeStore(clock);
  const a = await peerOf('A');
  const c = await peerOf('C', { users: ['carol'], groups: [] });
  const deps = (o: Partial<TransferDeps> = {}): TransferDeps => ({
    challenges,
    peers: [a.peer, c.peer],
    org: 'B',
    directory: null,
    localUser: (n) => n === 'bea',
    nowMs: clock.now(),
    ...o,
  });
  const iat = () => Math.floor(clock.now() / 1000);
  const fresh = () => challenges.issue(SRC).challenge;
  const good = (ch: string, o: Record<string, unknown> = {}) =>
    makeTicket(a, { sub: 'alice', org: 'A', aud: 'B', challenge: ch, iat: iat(), ...o });
  const body = (ticket: string, o: Partial<{ user: string; org: string }> = {}) => ({ ticket, user: 'alice', org: 'A', ...o });

  const ch0 = fresh();
  t.same(await checkTransfer(body(good(ch0)), SRC, deps()), { ok: true, user: 'alice', groups: [], org: 'A' }, 'all checks pass');
  t.match(await checkTransfer(body(good(ch0)), SRC, deps()), { ok: false, code: 'replayed', message: /already used/ }, 'spent by success');

  // Each broken ticket is refused, and a good ticket on the same challenge then fails: spent.
  const cases: [string, (ch: string) => ReturnType<typeof body>, RegExp, Partial<TransferDeps>?][] = [
    [
      'wrong typ',
      (ch) =>
        body(signEs256({ typ: 'x', iss: 'A', sub: 'alice', org: 'A', aud: 'B', challenge: ch, iat: iat(), exp: iat() + 60 }, a.privateKey)),
      /typ/,
    ],
    ['wrong aud', (ch) => body(good(ch, { aud: 'Z' })), /audience/],
    ['B without core.org', (ch) => body(good(ch)), /no core.org/, { org: null }],
    [
      'signed by another key',
      (ch) =>
        body(
          makeTicket(
            { privateKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey },
            { sub: 'alice', org: 'A', aud: 'B', challenge: ch, iat: iat() },
          ),
        ),
      /signature/,
    ],
    [
      'signer is the peer of another org',
      (ch) => body(makeTicket(c, { sub: 'alice', org: 'A', aud: 'B', challenge: ch, iat: iat() })),
      /signature/,
    ],
    ['org with no peer entry', (ch) => body(good(ch, { org: 'Q' }), { org: 'Q' }), /no core.peers/],
    [
      'body org differs from the ticket (C signs for A)',
      (ch) => body(makeTicket(c, { sub: 'alice', org: 'A', aud: 'B', challenge: ch, iat: iat() }), { org: 'C' }),
      /another organisation/,
    ],
    ['body user differs', (ch) => body(good(ch), { user: 'mallory' }), /another user/],
    ['user not allowed', (ch) => body(good(ch, { sub: 'bob' }), { user: 'bob' }), /does not allow/],
    [
      "a name of B's own users",
      (ch) => body(good(ch, { sub: 'bea' }), { user: 'bea' }),
      /own users/,
      { peers: [{ ...a.peer, allow: { users: ['bea'], groups: [] } }] },
    ],
    ['alg none', (ch) => body(`${Buffer.from('{"alg":"none"}').toString('base64url')}.${good(ch).split('.')[1]}.`), /not ES256/],
    ['guest-looking user', (ch) => body(good(ch, { sub: 'guest/x/y' }), { user: 'guest/x/y' }), /"\/"/],
    ['expired ticket', (ch) => body(good(ch, { iat: iat() - 91 })), /expired/],
    ['ticket from the future', (ch) => body(good(ch, { iat: iat() + 31 })), /not valid yet/],
    [
      'ticket living too long',
      (ch) =>
        body(
          signEs256(
            { typ: 'gatehouse-transfer', iss: 'A', sub: 'alice', org: 'A', aud: 'B', challenge: ch, iat: iat(), exp: iat() + 61 },
            a.privateKey,
          ),
        ),
      /more than 60/,
    ],
    [
      'non-integer iat',
      (ch) =>
        body(
          signEs256(
            { typ: 'gatehouse-transfer', iss: 'A', sub: 'alice', org: 'A', aud: 'B', challenge: ch, iat: '1', exp: iat() + 60 },
            a.privateKey,
          ),
        ),
      /integers/,
    ],
  ];
  for (const [name, make, re, o] of cases) {
    const ch = fresh();
    const r = await checkTransfer(make(ch), SRC, deps(o));
    t.match(r, { ok: false, message: re }, name);
    t.match(await checkTransfer(body(good(ch)), SRC, deps()), { ok: false, code: 'replayed' }, `${name}: the challenge is spent`);
  }
  // Skew: 30 s either side is accepted.
  t.match(await checkTransfer(body(good(fresh(), { iat: iat() - 89 })), SRC, deps()), { ok: true }, 'exp + 29 s');
  t.match(await checkTransfer(body(good(fresh(), { iat: iat() + 30 })), SRC, deps()), { ok: true }, 'iat - 30 s');

  // (1) challenges: unknown, from another address (then spent), expired.
  t.match(await checkTransfer(body(good('A'.repeat(32))), SRC, deps()), {
    ok: false,
    code: 'replayed',
    message: /not one this core issued/,
  });
  const chE = fresh();
  t.match(await checkTransfer(body(good(chE)), '192.0.2.99', deps()), { ok: false, code: 'replayed', message: /another address/ });
  t.match(
    await checkTransfer(body(good(chE)), SRC, deps()),
    { ok: false, code: 'replayed', message: /already used/ },
    'spent by the answer from elsewhere',
  );
  const chX = fresh();
  clock.advance(60_000);
  t.match(await checkTransfer(body(good(chX)), SRC, deps({ nowMs: clock.now() })), { ok: false, code: 'replayed', message: /expired/ });
  t.match(await checkTransfer(body('not.a.jws'), SRC, deps()), { ok: false, code: 'untrusted' }, 'garbage');
  // The peer's certificate outside its validity period (self-signed for 5 years).
  clock.advance(6 * 365 * 86_400_000);
  t.match(await checkTransfer(body(good(fresh())), SRC, deps({ nowMs: clock.now() })), {
    ok: false,
    code: 'untrusted',
    message: /not valid now/,
  });
});

t.test('(5) with a directory: groups from it, the org it says, outage 503', async (t) => {
  const clock = new ManualClock(Date.now());
  const challenges = new ChallengeStore(clock);
  const a = await peerOf('A', { users: [], groups: ['partners'] });
  const directory = dir({
    alice: { name: 'alice', groups: ['partners', 'x'], org: 'A' },
    ALICE: { name: 'alice', groups: ['partners', 'x'], org: 'A' },
    dave: { name: 'dave', groups: ['partners'], org: 'B' },
    erin: { name: 'erin', groups: ['staff'], org: 'A' },
    frank: { name: 'frank', groups: ['partners'] },
    down: 'down',
  });
  const deps: TransferDeps = { challenges, peers: [a.peer], org: 'B', directory, localUser: () => false, nowMs: clock.now() };
  const go = (user: string) => {
    const ch = challenges.issue(SRC).challenge;
    const ticket = makeTicket(a, { sub: user, org: 'A', aud: 'B', challenge: ch, iat: Math.floor(clock.now() / 1000) });
    return checkTransfer({ ticket, user, org: 'A' }, SRC, deps);
  };
  t.same(
    await go('alice'),
    { ok: true, user: 'alice', groups: ['partners', 'x'], org: 'A' },
    'allowed by group, groups from the directory',
  );
  t.match(await go('dave'), { ok: false, message: /does not place this user/ }, 'the directory says another org');
  t.match(await go('frank'), { ok: false, message: /does not place this user/ }, 'no org in the directory');
  t.match(await go('erin'), { ok: false, message: /does not allow/ }, 'groups not allowed');
  t.match(await go('nobody'), { ok: false, message: /no such user/ });
  t.match(await go('ALICE'), { ok: false, message: /no such user/ }, "another spelling than the directory's");
  t.match(await go('down'), { ok: false, code: 'unavailable' }, 'outage: never an admit');
});

t.test('signing identity: made once into DATA_DIR (0600), reused; in memory ephemeral; configured files', async (t) => {
  const d = mkdtempSync(join(tmpdir(), 'sign-'));
  const cfg = parseConfig('core:\n  org: A\n');
  const one = await loadOrCreateCoreSigning(cfg, d);
  t.equal(one.created, true);
  t.equal(statSync(join(d, SIGNING_KEY_FILE)).mode & 0o777, 0o600, 'key 0600');
  const two = await loadOrCreateCoreSigning(cfg, d);
  t.equal(two.created, false);
  t.equal(two.signing.certificatePem, one.signing.certificatePem, 'reused');
  t.match(new X509Certificate(one.signing.certificatePem).subject, /CN=gatehouse core A/);
  const mem = await loadOrCreateCoreSigning(cfg, null);
  t.not(mem.signing.certificatePem, one.signing.certificatePem);
  // Configured: both files; a mismatching pair, an RSA key, garbage.
  const cert = join(d, SIGNING_CERT_FILE);
  const key = join(d, SIGNING_KEY_FILE);
  const conf = (c: string, k: string) => parseConfig(`core:\n  signing: { cert: ${c}, key: ${k} }\n`);
  t.equal((await loadOrCreateCoreSigning(conf(cert, key), null)).signing.certificatePem, one.signing.certificatePem);
  const other = await createSelfSigned('x');
  writeFileSync(join(d, 'o.key'), other.keyPem);
  await t.rejects(
    loadOrCreateCoreSigning(conf(cert, join(d, 'o.key')), null),
    /core.signing.cert: the certificate does not match core.signing.key/,
  );
  writeFileSync(
    join(d, 'rsa.key'),
    generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }),
  );
  await t.rejects(loadOrCreateCoreSigning(conf(cert, join(d, 'rsa.key')), null), /core.signing.key: .*P-256/);
  writeFileSync(join(d, 'junk'), 'junk');
  const e = await loadOrCreateCoreSigning(conf(cert, join(d, 'junk')), null).catch((x: Error) => x);
  t.match((e as Error).message, /core.signing.key: not a PEM private key/);
  t.throws(() => parseConfig(`core:\n  signing: { cert: ${cert} }\n`), /core.signing.cert and core.signing.key must be set together/);
  t.notMatch(readFileSync(key, 'utf8'), /CERTIFICATE/);
});

t.test('peers: certificates loaded and checked; errors name core.peers[i].cert; one entry per org', async (t) => {
  const d = mkdtempSync(join(tmpdir(), 'peers-'));
  const a = await createSelfSigned('A');
  writeFileSync(join(d, 'a.crt'), a.certPem);
  writeFileSync(join(d, 'junk.crt'), 'junk');
  const cfg = (certs: string[]) =>
    parseConfig(`core:\n  peers:\n${certs.map((c, i) => `    - { org: O${i}, cert: ${c}, allow: { users: [alice] } }\n`).join('')}`);
  const ok = loadPeers(cfg([join(d, 'a.crt')]));
  t.equal(ok[0]!.org, 'O0');
  t.equal(ok[0]!.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.throws(() => loadPeers(cfg([join(d, 'a.crt'), join(d, 'junk.crt')])), /core\.peers\[1\]\.cert: not a PEM X\.509 certificate/);
  t.throws(() => loadPeers(cfg([join(d, 'missing.crt')])), /core\.peers\[0\]\.cert: cannot read .*ENOENT/);
  t.throws(
    () => parseConfig(`core:\n  peers:\n    - { org: A, cert: x }\n    - { org: A, cert: y }\n`),
    /core\.peers\[1\]\.org.*earlier peer/,
  );
});

t.test("issue-time groups of a transferred user without a directory: its login's, never a same-named local user's", async (t) => {
  const { issueGroups } = await import('../../../src/core/directory/groups.js');
  const { StaticUserDirectory } = await import('../../../src/store/users.js');
  const core = {
    directory: null,
    users: new StaticUserDirectory([{ name: 'alice', password: 'x', groups: ['b-admins'] }]),
    cfg: { core: { org: 'B' } },
  };
  t.same(await issueGroups(core, { sub: 'alice', groups: [], org: 'A' }), [], 'transferred from A: its (empty) login groups');
  t.equal(
    await issueGroups(core, { sub: 'alice', groups: ['b-admins'] }),
    undefined,
    "B's own alice: the store's (undefined: the TURN side reads them)",
  );
  t.equal(await issueGroups(core, { sub: 'alice', groups: [], org: 'B' }), undefined, 'a token of this org is a local user');
});

t.test("a peer entry naming this core's own organisation admits nobody (a transfer is from another organisation)", async (t) => {
  const clock = new ManualClock(Date.now());
  const challenges = new ChallengeStore(clock);
  // A misconfigured core.peers entry for B itself: its key could otherwise mint B's own directory users.
  const self = await peerOf('B', { users: ['dave'], groups: ['staff'] });
  const directory = dir({ dave: { name: 'dave', groups: ['staff', 'admins'], org: 'B' } });
  const ch = challenges.issue(SRC).challenge;
  const ticket = makeTicket(self, { sub: 'dave', org: 'B', aud: 'B', challenge: ch, iat: Math.floor(clock.now() / 1000) });
  const deps: TransferDeps = { challenges, peers: [self.peer], org: 'B', directory, localUser: () => false, nowMs: clock.now() };
  t.match(await checkTransfer({ ticket, user: 'dave', org: 'B' }, SRC, deps), {
    ok: false,
    code: 'untrusted',
    message: /own organisation/,
  });
  t.match(
    await checkTransfer({ ticket, user: 'dave', org: 'B' }, SRC, deps),
    { ok: false, code: 'replayed' },
    'and the challenge is spent',
  );
  t.throws(
    () => parseConfig('core:\n  org: B\n  peers:\n    - org: B\n      cert: /nonexistent.pem\n      allow: {users: [dave]}\n'),
    /core\.peers\[0\]\.org/,
    "config: a peer may not name this core's own organisation",
  );
});
