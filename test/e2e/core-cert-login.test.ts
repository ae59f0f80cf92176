// Certificate login (core.md §5, seed 004 FIG. 5) end to end: a test PKI made by openssl
// (root → intermediate → ECDSA P-256 and RSA leaves, an unrelated CA, an intermediate
// without cA=TRUE, an expired leaf, a revoked leaf and the intermediate's CRL) and
// startCore() over real HTTP with a driven clock. A leaf logs in through `gatehouse login
// --cert` (node bin/gatehouse.js) and through raw HTTP; refused, each with core.md's
// error: an untrusted chain (other CA), an expired certificate, a wrong signature (another
// key; another challenge), a replayed challenge (second use), an expired challenge (the
// clock moved 61 s), a challenge answered from another address, a CA without cA=TRUE in
// the middle, a revoked leaf, and every certificate of an issuer whose CRL is out of date.
// Every outcome is an `auth` event; no key, signature or token in the log or events.
import t, { type Test } from 'tap';
import { execFile } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPrivateKey, randomBytes } from 'node:crypto';
import { ManualClock } from '../../src/util/clock.js';
import { createLogger } from '../../src/util/log.js';
import { Supervisor } from '../../src/util/supervise.js';
import { parseConfig } from '../../src/config/config.js';
import { StaticUserDirectory } from '../../src/store/users.js';
import { startCore, type RunningCore } from '../../src/core/index.js';
import { MemoryEventSink } from '../../src/events/eve.js';
import { formatCertAuthorization } from '../../src/core/cert-header.js';
import { signChallenge } from '../../src/cli/login.js';
import { TestCa, opensslTime, type Issued } from './helpers/cert-ca.js';
import { peerSkip } from './helpers/require-peer.js';
import { assertNoSecrets, Secrets } from './helpers/secrets.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = join(ROOT, 'bin', 'gatehouse.js');

interface Res {
  status: number;
  headers: Record<string, string[]>;
  text: string;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

function req(base: string, method: string, path: string, o: { headers?: Record<string, string>; from?: string } = {}): Promise<Res> {
  const u = new URL(path, base);
  return new Promise((resolve, reject) => {
    const r = httpRequest(
      { host: u.hostname, port: u.port, method, path: u.pathname, headers: o.headers ?? {}, ...(o.from ? { localAddress: o.from } : {}) },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const headers: Record<string, string[]> = {};
          for (let i = 0; i < res.rawHeaders.length; i += 2)
            (headers[res.rawHeaders[i]!.toLowerCase()] ??= []).push(res.rawHeaders[i + 1]!);
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown = null;
          try {
            json = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          resolve({ status: res.statusCode!, headers, text, json });
        });
      },
    );
    r.on('error', reject);
    r.end();
  });
}

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd: ROOT, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const skip = peerSkip(t, 'openssl');

t.test('Gatehouse-Cert login (core.md §5) against an openssl test CA', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-cert-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ca = new TestCa(dir);
  const start = Date.now();
  const root = await ca.root('root', 'Gatehouse Test Root');
  const int = await ca.issue('root', 'int', 'Gatehouse Test Intermediate', { ext: 'ca_ext' });
  const alice = await ca.issue('int', 'alice', 'alice'); // ECDSA P-256, a gateway user (groups)
  const bob = await ca.issue('int', 'bob', 'bob', { kind: 'rsa' }); // RSA 2048, not a gateway user
  const day = 86_400_000;
  const carol = await ca.issue('int', 'carol', 'carol', { start: opensslTime(start - 60 * day), end: opensslTime(start - 30 * day) });
  const otherRoot = await ca.root('other', 'Someone Else Root');
  const mallory = await ca.issue('other', 'mallory', 'mallory');
  const notCa = await ca.issue('root', 'notca', 'Not A CA', { ext: 'notca_ext' });
  const dave = await ca.issue('notca', 'dave', 'dave');
  const erin = await ca.issue('int', 'erin', 'erin');
  const frank = await ca.issue('int', 'frank', 'frank');
  const server = await ca.issue('int', 'srv', 'srv', { ext: 'server_leaf_ext' }); // serverAuth only
  await ca.revoke('int', 'erin');
  const crl = await ca.crl('int', 'int.crl');

  const clock = new ManualClock(Date.now()); // after the CRL was made (its thisUpdate)
  const logLines: string[] = [];
  const log = createLogger({ level: 'debug' }, { write: (s: string) => void logLines.push(s) });
  const supervisor = new Supervisor(log);
  const events = new MemoryEventSink();
  const cfgText = [
    'realm: REALM',
    `data_dir: ${dir}`,
    'core:',
    '  listen: http://127.0.0.1:0',
    '  org: example',
    '  trust:',
    `    roots: [${join(dir, 'root.pem')}]`,
    `    crls: [${crl}]`,
    '',
  ].join('\n');
  const cfg = parseConfig(cfgText, 'test.yaml');
  const users = new StaticUserDirectory([
    { name: 'alice', password: 'alice-' + randomBytes(9).toString('base64url'), groups: ['trading'] },
  ]);
  const core: RunningCore = await startCore(cfg, {
    users,
    logger: log,
    clock,
    supervisor,
    restSecret: randomBytes(24).toString('base64url'),
    dataDir: dir,
    events,
  });
  t.teardown(() => core.stop());
  const base = core.url;
  const secrets = new Secrets();
  for (const who of [alice, bob, carol, mallory, dave, erin, frank, int, root, otherRoot, notCa, server])
    secrets.add('private_key', who.key, createPrivateKey(readFileSync(who.key)).export({ type: 'pkcs8', format: 'der' }));

  // core.md §2 allows 10 failed authentications per source per minute: each subtest
  // answers from its own loopback address (fresh()), challenges and logins alike.
  let n = 10;
  let src = '127.0.0.10';
  const fresh = () => void (src = `127.0.0.${++n}`);
  async function challenge(from = src): Promise<string> {
    const r = await req(base, 'GET', '/v1/auth/challenge', { from });
    t.equal(r.status, 200, 'GET /v1/auth/challenge: 200');
    return r.json.challenge as string;
  }
  /** The Authorization of a leaf answering `ch` (signed with `signer`'s key, default the leaf's own). */
  function answer(ch: string, chain: Issued[], signer: Issued = chain[0]!, over: string = ch): string {
    const sig = signChallenge(createPrivateKey(readFileSync(signer.key)), Buffer.from(over, 'base64'));
    secrets.add('signature', `signature of ${signer.key}`, sig);
    return formatCertAuthorization(
      ch,
      sig,
      chain.map((c) => c.der),
    );
  }
  async function login(authorization: string, from = src): Promise<Res> {
    const r = await req(base, 'POST', '/v1/login', { headers: { authorization }, from });
    if (r.status === 200) secrets.add('token', 'a login token', r.json.token);
    return r;
  }
  function refused(t: Test, r: Res, code: string, what: string, message?: RegExp): void {
    t.equal(r.status, 401, `${what}: 401`);
    t.equal(r.json?.error?.code, code, `${what}: ${code}`);
    if (message) t.match(r.json?.error?.message, message, `${what}: the message names the rule`);
    t.notMatch(r.text, /BEGIN|MII|at .*\.ts:\d+/, `${what}: no certificate dump or stack trace`);
    t.ok(
      (r.headers['www-authenticate'] ?? []).some((h) => /^Gatehouse-Cert /.test(h)),
      `${what}: fresh challenges`,
    );
  }

  await t.test('the 401 offers Gatehouse-Cert (trust roots configured)', async (t) => {
    fresh();
    const r = await req(base, 'POST', '/v1/login');
    t.equal(r.status, 401);
    t.ok(r.headers['www-authenticate']!.includes('Gatehouse-Cert realm="REALM"'), 'WWW-Authenticate: Gatehouse-Cert realm="REALM"');
  });

  await t.test('an ECDSA P-256 leaf logs in (raw HTTP); the gateway user gives the groups', async (t) => {
    fresh();
    const ch = await challenge();
    const r = await login(answer(ch, [alice, int]));
    t.equal(r.status, 200, r.text);
    t.equal(r.json.user, 'alice');
    t.same(r.json.groups, ['trading']);
    t.type(r.json.token, 'string');
    t.type(r.json.expires, 'number');
    const me = await req(base, 'GET', '/v1/conference-key', { headers: { authorization: `Bearer ${r.json.token}` } });
    t.not(me.status, 401, 'the token is a user token');
  });

  await t.test(
    'an RSA leaf logs in (RSA-PSS SHA-256, salt 32), the chain ending with the root; no such gateway user: no groups',
    async (t) => {
      fresh();
      const r = await login(answer(await challenge(), [bob, int, root]));
      t.equal(r.status, 200, r.text);
      t.equal(r.json.user, 'bob');
      t.same(r.json.groups, []);
    },
  );

  await t.test('gatehouse login --cert (ECDSA and RSA) prints the login JSON', async (t) => {
    fresh();
    const chainFile = join(dir, 'int-chain.pem');
    writeFileSync(chainFile, readFileSync(int.cert));
    for (const [who, name] of [
      [alice, 'alice'],
      [bob, 'bob'],
    ] as const) {
      const r = await cli(['login', '--cert', who.cert, '--key', who.key, '--chain', chainFile, '--core', base]);
      t.equal(r.code, 0, `${name}: exit 0 (${r.stderr.trim()})`);
      const body = JSON.parse(r.stdout);
      t.equal(body.user, name, `${name}: user`);
      t.type(body.token, 'string');
      secrets.add('token', `cli token ${name}`, body.token);
      assertNoSecrets(
        t,
        secrets,
        { texts: { stdout: r.stdout.replace(body.token, ''), stderr: r.stderr } },
        `${name}: no key on the CLI's output`,
      );
    }
    const bad = await cli(['login', '--cert', mallory.cert, '--key', mallory.key, '--core', base]);
    t.equal(bad.code, 1, 'an untrusted certificate: exit 1');
    t.match(bad.stderr, /untrusted/, "the core's code on stderr");
    t.equal(bad.stdout, '', 'nothing on stdout');
    const help = await cli(['login', '--help']);
    t.equal(help.code, 0);
    t.match(help.stdout, /Usage: gatehouse login --cert/);
  });

  await t.test('an untrusted chain (another CA) is 401 untrusted', async (t) => {
    fresh();
    refused(t, await login(answer(await challenge(), [mallory])), 'untrusted', 'other CA', /trusted root/);
    refused(t, await login(answer(await challenge(), [mallory, otherRoot])), 'untrusted', 'other CA with its root', /trusted root/);
    refused(t, await login(answer(await challenge(), [alice])), 'untrusted', 'the intermediate missing', /trusted root/);
    refused(t, await login(answer(await challenge(), [alice, mallory])), 'untrusted', 'a wrong issuer in the chain', /not issued by/);
  });

  await t.test('an expired certificate is 401 untrusted', async (t) => {
    fresh();
    refused(t, await login(answer(await challenge(), [carol, int])), 'untrusted', 'expired leaf', /expired/);
  });

  await t.test('a wrong signature is 401 untrusted and does not spend the challenge', async (t) => {
    fresh();
    const ch = await challenge();
    refused(t, await login(answer(ch, [alice, int], mallory)), 'untrusted', 'signed by another key', /signature/);
    const other = await challenge();
    refused(t, await login(answer(ch, [alice, int], alice, other)), 'untrusted', 'signed over another challenge', /signature/);
    const r = await login(answer(ch, [alice, int]));
    t.equal(r.status, 200, 'the challenge still answers: only a verifying signature spends it');
  });

  await t.test('a replayed challenge is 401 replayed', async (t) => {
    fresh();
    const ch = await challenge();
    const auth = answer(ch, [alice, int]);
    t.equal((await login(auth)).status, 200, 'first use');
    refused(t, await login(auth), 'replayed', 'second use', /already used/);
    // A verifying signature spends the challenge even when the chain is then refused.
    const ch2 = await challenge();
    refused(t, await login(answer(ch2, [mallory])), 'untrusted', 'untrusted chain');
    refused(t, await login(answer(ch2, [alice, int])), 'replayed', 'its challenge is spent', /already used/);
    refused(
      t,
      await login(answer(randomBytes(24).toString('base64'), [alice, int])),
      'replayed',
      'a challenge never issued',
      /not one this core issued/,
    );
  });

  await t.test('a challenge answered from another address is 401 replayed', async (t) => {
    fresh();
    const ch = await challenge('127.0.0.1');
    refused(t, await login(answer(ch, [alice, int]), '127.0.0.2'), 'replayed', 'answered from 127.0.0.2', /another address/);
    t.equal((await login(answer(ch, [alice, int]), '127.0.0.1')).status, 200, 'the issuing address still can');
  });

  await t.test('an expired challenge (61 s on the driven clock) is 401 replayed', async (t) => {
    fresh();
    const ch = await challenge();
    clock.advance(61_000);
    refused(t, await login(answer(ch, [alice, int])), 'replayed', 'after 61 s', /expired/);
  });

  await t.test('a CA without cA=TRUE in the middle is 401 untrusted', async (t) => {
    fresh();
    refused(t, await login(answer(await challenge(), [dave, notCa])), 'untrusted', 'not a CA', /not a CA/);
  });

  await t.test('a leaf without clientAuth, or a trust root as the leaf, is 401 untrusted', async (t) => {
    fresh();
    refused(t, await login(answer(await challenge(), [server, int])), 'untrusted', 'serverAuth only', /clientAuth/);
    refused(t, await login(answer(await challenge(), [root])), 'untrusted', 'the root as leaf', /trust root/);
  });

  await t.test('a revoked leaf (CRL) is 401 untrusted', async (t) => {
    fresh();
    refused(t, await login(answer(await challenge(), [erin, int])), 'untrusted', 'revoked', /revoked/);
  });

  await t.test('malformed credentials are 401 unauthenticated', async (t) => {
    fresh();
    const ch = await challenge();
    refused(t, await login(`Gatehouse-Cert challenge="${ch}"`), 'unauthenticated', 'no signature or chain', /required/);
    refused(t, await login(answer(ch, [alice, int]).replace('signature=', 'signature=signature=')), 'unauthenticated', 'broken syntax');
    t.equal((await login(answer(ch, [alice, int]))).status, 200, 'the challenge was not spent by them');
  });

  await t.test('every outcome is an auth event, without secrets', async (t) => {
    fresh();
    const auth = events.events.filter((e) => e.event_type === 'auth').map((e) => e.auth as Record<string, unknown>);
    const cert = auth.filter((a) => a.mechanism === 'Gatehouse-Cert');
    t.ok(
      cert.some((a) => a.result === 'success' && a.user === 'alice'),
      'success for alice',
    );
    t.ok(
      cert.some((a) => a.result === 'failure' && a.reason === 'untrusted' && a.user === 'erin'),
      'a refused chain names the leaf CN (erin, revoked)',
    );
    for (const reason of ['untrusted', 'replayed', 'unauthenticated'])
      t.ok(
        cert.some((a) => a.result === 'failure' && a.reason === reason),
        `a failure: ${reason}`,
      );
    assertNoSecrets(t, secrets, { texts: { log: logLines.join(''), events: JSON.stringify(events.events) } }, 'log and events');
  });

  await t.test('gatehouse login --cert over HTTPS (core.tls) with --ca', async (t) => {
    const tlsCert = await ca.issue('int', 'tls', '127.0.0.1', { ext: 'tls_server_ext' });
    const fullChain = join(dir, 'tls-chain.pem');
    writeFileSync(fullChain, readFileSync(tlsCert.cert, 'utf8') + readFileSync(int.cert, 'utf8'));
    const https = parseConfig(
      `realm: REALM\ndata_dir: ${dir}\ncore:\n  listen: https://127.0.0.1:0\n  tls: { cert: ${fullChain}, key: ${tlsCert.key} }\n  trust:\n    roots: [${root.cert}]\n`,
      'https.yaml',
    );
    const c2 = await startCore(https, {
      users,
      logger: log,
      clock,
      supervisor,
      restSecret: randomBytes(24).toString('base64url'),
      dataDir: null,
      events,
    });
    try {
      t.match(c2.url, /^https:/);
      const chainFile = join(dir, 'int-only.pem');
      writeFileSync(chainFile, readFileSync(int.cert));
      const r = await cli(['login', '--cert', alice.cert, '--key', alice.key, '--chain', chainFile, '--core', c2.url, '--ca', root.cert]);
      t.equal(r.code, 0, `exit 0 (${r.stderr.trim()})`);
      const body = JSON.parse(r.stdout || '{}');
      t.equal(body.user, 'alice');
      if (body.token) secrets.add('token', 'https cli token', body.token);
      const noCa = await cli(['login', '--cert', alice.cert, '--key', alice.key, '--chain', chainFile, '--core', c2.url]);
      t.equal(noCa.code, 1, 'without --ca the test CA is not trusted: exit 1');
      t.equal(noCa.stdout, '');
    } finally {
      await c2.stop();
    }
  });

  await t.test('a CRL file replaced with a new revocation is re-read (checked every 10 s)', async (t) => {
    fresh();
    t.equal((await login(answer(await challenge(), [frank, int]))).status, 200, 'frank logs in');
    await ca.revoke('int', 'frank');
    await ca.crl('int', 'int.crl'); // the same file, replaced
    clock.advance(11_000);
    refused(t, await login(answer(await challenge(), [frank, int])), 'untrusted', 'frank revoked in the new CRL', /revoked/);
  });

  await t.test('failed certificate logins count toward the per-source limit (10 a minute, then 429)', async (t) => {
    fresh();
    for (let i = 0; i < 10; i++) t.equal((await login(answer(await challenge(), [mallory]))).status, 401, `failure ${i + 1}`);
    const r = await login(answer(await challenge(), [alice, int]));
    t.equal(r.status, 429, 'the 11th attempt, even a good one: 429');
    t.equal(r.json?.error?.code, 'rate_limited');
    t.ok(r.headers['retry-after'], 'Retry-After');
  });

  await t.test("an out-of-date CRL refuses its issuer's certificates (fail closed)", async (t) => {
    fresh();
    clock.advance(8 * day); // the CRL's nextUpdate is 7 days after it was made; the certificates last 30
    refused(t, await login(answer(await challenge(), [alice, int])), 'untrusted', 'CRL past nextUpdate', /out of date/);
  });
});

t.test('without trust roots Gatehouse-Cert is not offered; a bad root file is a config error naming the key', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-cert-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = createLogger({ level: 'error' }, { write: () => {} });
  const deps = {
    users: new StaticUserDirectory([]),
    logger: log,
    clock: new ManualClock(Date.now()),
    supervisor: new Supervisor(log),
    restSecret: randomBytes(24).toString('base64url'),
    dataDir: dir,
  };
  const plain = await startCore(parseConfig(`core:\n  listen: http://127.0.0.1:0\n`, 'a.yaml'), deps);
  const r = await req(plain.url, 'POST', '/v1/login');
  await plain.stop();
  t.equal(r.status, 401);
  t.notOk(
    (r.headers['www-authenticate'] ?? []).some((h) => /^Gatehouse-Cert/i.test(h)),
    'no Gatehouse-Cert challenge',
  );
  writeFileSync(join(dir, 'bad.pem'), 'not a certificate\n');
  await t.rejects(
    startCore(parseConfig(`core:\n  listen: http://127.0.0.1:0\n  trust:\n    roots: [${join(dir, 'bad.pem')}]\n`, 'b.yaml'), deps),
    /core\.trust\.roots\[0\]/,
    'E_CONFIG names core.trust.roots[0]',
  );
  await t.rejects(
    startCore(parseConfig(`core:\n  listen: http://127.0.0.1:0\n  trust:\n    roots: [${join(dir, 'none.pem')}]\n`, 'c.yaml'), deps),
    /core\.trust\.roots\[0\]/,
    'a missing file too',
  );
});
