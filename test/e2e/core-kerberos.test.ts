// Issue 12, proof of Negotiate (RFC 4559, seed 002) against a real MIT Kerberos realm made
// in a temp dir (test/e2e/helpers/krb5.ts: kdb5_util, kadmin.local, krb5kdc on loopback)
// and a spawned `gatehouse serve` with core.kerberos.keytab = a keytab for HTTP/localhost:
//   1. POST /v1/login without Authorization offers a bare `Negotiate` (and Digest).
//   2. `kinit alice` then `curl --negotiate -u :` logs in: 200 {token, user, groups} and
//      the mutual-authentication token `WWW-Authenticate: Negotiate <AP-REP>` (curl checks it).
//   3. Refused with 401: a principal with no user here (mallory), a ticket for another
//      service of the same keytab (host/localhost, made with the kerberos package's
//      client, i.e. MIT's gss_init_sec_context), a token sealed with an older service key
//      (the key changed since: kvno), non-GSSAPI garbage, NTLM, the same authenticator
//      twice (`replayed`), and an expired ticket (kinit -l 3s: after it expires curl has
//      nothing to offer, and a token made while it was valid is refused).
//   4. Every outcome is an `auth` event; no token or password in the log or events.
//   5. Headless Chromium allowlisted for localhost (--auth-server-allowlist) with alice's
//      ccache logs in to the web client by "Sign in with Kerberos" and joins a conference.
//   6. With core.directory (a real slapd): the principal is the directory's user, with its
//      groups and organisation; a principal the directory lacks is 401 even if the
//      gateway's own users have the name; the directory down (cache expired) is 503.
//   7. Fail closed: with a keytab that holds no key for the service, serve does not start
//      and says why, naming core.kerberos.keytab (a missing kerberos package: unit test).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { peerSkip } from './helpers/require-peer.js';
import { launchNegotiateChromium, startRealm, type Realm } from './helpers/krb5.js';
import { startSlapd } from './helpers/slapd.js';
import { startGatehouse, type TurnServer } from './helpers/turn-servers.js';
import { freePort } from './helpers/ports.js';
import { readEvents, sleep, until, type GwEvent } from './helpers/escrow-events.js';

const skip = peerSkip(t, 'krb5', 'curl-spnego', 'kerberos-package');
const chromiumSkip = peerSkip(t, 'krb5', 'kerberos-package', 'chromium');
const ldapSkip = peerSkip(t, 'krb5', 'curl-spnego', 'kerberos-package', 'slapd');

const ALICE_PW = `alice-${randomBytes(8).toString('hex')}`;
const MALLORY_PW = `mallory-${randomBytes(8).toString('hex')}`;
const ALICE_GW_PW = `gw-${randomBytes(8).toString('hex')}`;

interface CurlResult {
  status: number;
  headers: string[];
  body: string;
  stderr: string;
}

/** curl --negotiate -u : -X POST (RFC 4559 with the ccache of KRB5CCNAME). */
function curlNegotiate(url: string, port: number, env: Record<string, string>): CurlResult {
  const r = spawnSync(
    'curl',
    ['-sS', '--negotiate', '-u', ':', '-X', 'POST', '--resolve', `localhost:${port}:127.0.0.1`, '-D', '-', '--max-time', '20', url],
    { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 30_000 },
  );
  const out = r.stdout ?? '';
  // -D - prints every response's headers (the 401, then the 200), then the last body.
  const blocks = out.split(/\r\n\r\n/);
  let last = 0;
  for (let i = 0; i < blocks.length; i++) if (/^HTTP\/[\d.]+ \d{3}/.test(blocks[i]!)) last = i;
  const head = blocks[last] ?? '';
  const status = Number(/^HTTP\/[\d.]+ (\d{3})/.exec(head)?.[1] ?? 0);
  return { status, headers: head.split('\r\n').slice(1), body: blocks.slice(last + 1).join('\r\n\r\n'), stderr: r.stderr ?? '' };
}

interface Kerberos {
  initializeClient(service: string, o?: { mechOID?: number; gssFlag?: number }): Promise<{ step(ch: string): Promise<string> }>;
  GSS_MECH_OID_SPNEGO: number;
  GSS_C_MUTUAL_FLAG: number;
}

/** A SPNEGO initial token for `service` from the ccache `cc` (MIT gss_init_sec_context through the kerberos package). */
async function clientToken(krb: Kerberos, realm: Realm, cc: string, service: string): Promise<string> {
  Object.assign(process.env, realm.env, { KRB5CCNAME: cc });
  const c = await krb.initializeClient(service, { mechOID: krb.GSS_MECH_OID_SPNEGO, gssFlag: krb.GSS_C_MUTUAL_FLAG });
  return c.step('');
}

async function post(base: string, authorization?: string): Promise<{ status: number; www: string[]; json: any }> {
  // eslint-disable-line @typescript-eslint/no-explicit-any
  const res = await fetch(`${base}/v1/login`, { method: 'POST', headers: authorization ? { authorization } : {} });
  const text = await res.text();
  const www: string[] = [];
  res.headers.forEach((v, k) => {
    if (k === 'www-authenticate') www.push(...v.split(/,\s*(?=(?:Digest|Negotiate|Basic|Gatehouse-Cert)\b)/));
  });
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, www, json };
}

/** startGatehouse waits for TURN; the director may take a moment longer. */
async function waitCore(base: string, gh: TurnServer): Promise<void> {
  await until(
    async () =>
      (await fetch(`${base}/`)
        .then((r) => r.arrayBuffer().then(() => r.status))
        .catch(() => 0)) === 200,
    30_000,
    'the director serves GET /',
    () => gh.output().slice(-3000),
  );
}

const authEvents = (gh: TurnServer): GwEvent[] =>
  readEvents(gh.dataDir!).filter(
    (e) => e.event_type === 'auth' && (e as { auth?: { mechanism?: string } }).auth?.mechanism === 'Negotiate',
  );

t.test('Negotiate against an MIT realm: kinit + curl --negotiate, and the refusals', { skip }, async (t) => {
  const realm = await startRealm({ clockskew: 2 });
  t.teardown(() => realm.stop());
  realm.addUser('alice', ALICE_PW);
  realm.addUser('mallory', MALLORY_PW);
  const keytab = realm.keytab('http.keytab', 'HTTP/localhost', 'host/localhost');
  const corePort = await freePort();
  const gh = await startGatehouse({
    users: [{ name: 'alice', password: ALICE_GW_PW, groups: ['trading'] }],
    logLevel: 'info',
    env: { ...realm.env },
    configure: (c) => {
      c.core = { listen: `http://127.0.0.1:${corePort}`, kerberos: { keytab, service: 'HTTP@localhost' } };
    },
  });
  t.teardown(() => gh.stop());
  const base = `http://127.0.0.1:${corePort}`;
  const url = `http://localhost:${corePort}/v1/login`;
  await waitCore(base, gh);
  const krb = (await import('kerberos' as string)).default as Kerberos;
  t.match(gh.output(), /Negotiate \(Kerberos\) login enabled/, 'the log says Negotiate is on');

  const first = await post(base);
  t.equal(first.status, 401);
  t.ok(first.www.includes('Negotiate'), `a bare Negotiate challenge (RFC 4559 §4.1): ${JSON.stringify(first.www)}`);
  t.ok(
    first.www.some((w) => w.startsWith('Digest ')),
    'and Digest',
  );

  // 2. kinit + curl --negotiate.
  const aliceCc = realm.kinit('alice', ALICE_PW);
  const ok = curlNegotiate(url, corePort, { ...realm.env, KRB5CCNAME: aliceCc });
  t.equal(ok.status, 200, `curl --negotiate logs in: ${ok.stderr} ${ok.body}`);
  const body = JSON.parse(ok.body) as { token: string; user: string; groups: string[]; expires: number };
  t.equal(body.user, 'alice', 'the principal alice@GATEHOUSE.TEST is the user alice');
  t.same(body.groups, ['trading'], "the gateway's user store gives the groups");
  t.match(body.token, /\S{20,}/);
  const mutual = ok.headers.find((h) => /^www-authenticate:\s*Negotiate \S+/i.test(h));
  t.ok(mutual, 'the 200 carries the mutual-authentication token (RFC 4559 §4.2)');
  t.notMatch(ok.stderr, /GSS|mutual|error/i, 'curl accepted the final token');
  const me = await fetch(`${base}/v1/conferences`, { headers: { authorization: `Bearer ${body.token}` } });
  t.not(me.status, 401, 'the token is a core token');

  // 3. Refusals.
  const malloryCc = realm.kinit('mallory', MALLORY_PW);
  const mallory = curlNegotiate(url, corePort, { ...realm.env, KRB5CCNAME: malloryCc });
  t.equal(mallory.status, 401, 'a valid ticket of a principal with no user here is refused');
  t.match(mallory.body, /mallory is not a user here/);

  const hostTok = await clientToken(krb, realm, aliceCc, 'host@localhost');
  const wrongService = await post(base, `Negotiate ${hostTok}`);
  t.equal(wrongService.status, 401, 'a ticket for another service (host/localhost, same keytab) is refused');
  t.ok(wrongService.www.includes('Negotiate'), 'with fresh challenges');
  t.match(wrongService.json?.error?.message, /not for this service/, 'because the ticket is for host/localhost');

  // The service key changes (kvno 2 → 3) after the client has its ticket: the old ticket is refused.
  const staleTok = await clientToken(krb, realm, aliceCc, 'HTTP@localhost');
  const goodTok = await clientToken(krb, realm, realm.kinit('alice', ALICE_PW), 'HTTP@localhost');
  const good = await post(base, `Negotiate ${goodTok}`);
  t.equal(good.status, 200, 'a token from the kerberos package client logs in too');
  const replay = await post(base, `Negotiate ${goodTok}`);
  t.equal(replay.status, 401, 'the same authenticator again is refused');
  t.equal(replay.json?.error?.code, 'replayed', 'as replayed (the replay cache, RFC 4120 §3.2.3)');

  t.equal((await post(base, 'Negotiate !!!')).status, 401, 'not base64');
  t.equal((await post(base, `Negotiate ${Buffer.from('hello there, kerberos').toString('base64')}`)).status, 401, 'not a GSSAPI token');
  const garbage = Buffer.concat([Buffer.from([0x60, 0x40]), randomBytes(64)]).toString('base64');
  const garbageRes = await post(base, `Negotiate ${garbage}`);
  t.equal(garbageRes.status, 401, 'a GSSAPI-looking token of random bytes');
  t.match(garbageRes.json?.error?.message, /not accepted/);
  const ntlm = Buffer.concat([Buffer.from('NTLMSSP\0', 'latin1'), Buffer.from([1, 0, 0, 0]), randomBytes(24)]).toString('base64');
  const ntlmRes = await post(base, `Negotiate ${ntlm}`);
  t.equal(ntlmRes.status, 401, 'NTLM inside Negotiate');
  t.match(ntlmRes.json?.error?.message, /NTLM is not accepted/);

  // Key rotation: ktadd again makes kvno 3 and rewrites the keytab without kvno 2? ktadd
  // appends; so remove the old key with ktremove to model a changed key.
  realm.kadmin(`ktadd -k ${keytab} HTTP/localhost`);
  realm.kadmin(`ktremove -k ${keytab} HTTP/localhost old`);
  const stale = await post(base, `Negotiate ${staleTok}`);
  t.equal(stale.status, 401, 'a ticket sealed with a service key that has since changed is refused');
  t.match(stale.json?.error?.message, /key has changed/);

  // Expired: a 3 s ticket; once it has expired (and the 2 s clock skew passed) curl has no
  // ticket to offer (MIT never uses an expired one) and a token made while it was valid is refused.
  const shortCc = realm.kinit('alice', ALICE_PW, { lifetime: '3s' });
  const shortTok = await clientToken(krb, realm, shortCc, 'HTTP@localhost');
  await sleep(6500);
  const expiredCurl = curlNegotiate(url, corePort, { ...realm.env, KRB5CCNAME: shortCc });
  t.equal(expiredCurl.status, 401, `curl with an expired ticket is refused: ${expiredCurl.stderr.slice(0, 200)}`);
  const expired = await post(base, `Negotiate ${shortTok}`);
  t.equal(expired.status, 401, 'a token of a ticket that has since expired is refused');
  t.match(expired.json?.error?.message, /expired|clock skew/);
  t.comment(
    gh
      .output()
      .split('\n')
      .filter((l) => /Negotiate: token refused/.test(l))
      .map((l) => /"gss":"([^"]*)"/.exec(l)?.[1])
      .join('\n'),
  );

  // 4. Events: one per outcome, no secrets.
  await until(() => authEvents(gh).length >= 10, 5000, 'auth events');
  const evs = authEvents(gh).map((e) => (e as unknown as { auth: { result: string; user?: string; reason?: string } }).auth);
  t.ok(
    evs.some((a) => a.result === 'success' && a.user === 'alice'),
    'a success event names alice',
  );
  t.ok(
    evs.some((a) => a.result === 'failure' && a.user === 'mallory'),
    'the refusal of mallory names her',
  );
  t.ok(
    evs.some((a) => a.result === 'failure' && a.reason === 'replayed'),
    'the replay is an event',
  );
  t.ok(evs.filter((a) => a.result === 'failure').length >= 7, `every refusal is an event: ${JSON.stringify(evs)}`);
  const everything = gh.fullOutput().toString('utf8') + JSON.stringify(readEvents(gh.dataDir!));
  for (const [what, s] of [
    ['alice password', ALICE_PW],
    ['mallory password', MALLORY_PW],
    ['core token', body.token],
    ['SPNEGO token', goodTok.slice(20, 80)],
    ['mutual token', mutual!.split(/\s+/).pop()!.slice(10, 60)],
  ] as const)
    t.notOk(everything.includes(s), `no ${what} in the log or events`);
});

t.test(
  'headless Chromium logs in to the web client by Negotiate and joins a conference',
  { skip: chromiumSkip, timeout: 180_000 },
  async (t) => {
    const realm = await startRealm();
    t.teardown(() => realm.stop());
    realm.addUser('alice', ALICE_PW);
    const keytab = realm.keytab('http.keytab', 'HTTP/localhost');
    const corePort = await freePort();
    const gh = await startGatehouse({
      users: [{ name: 'alice', password: ALICE_GW_PW, groups: ['trading'] }],
      transports: ['udp'],
      logLevel: 'info',
      env: { ...realm.env },
      configure: (c) => {
        c.core = { listen: `http://127.0.0.1:${corePort}`, kerberos: { keytab, service: 'HTTP@localhost' } };
      },
    });
    t.teardown(() => gh.stop());
    const cc = realm.kinit('alice', ALICE_PW);
    const browser = await launchNegotiateChromium(realm, cc);
    t.teardown(() => browser.close());
    const page = browser.context.pages()[0] ?? (await browser.context.newPage());
    const logs: string[] = [];
    page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
    let seen = '';
    const look = async () => {
      const [status, error, whoami] = await Promise.all(['#status', '#error', '#whoami'].map((s) => page.locator(s).textContent()));
      return (seen = `status=${status} error=${error} whoami=${whoami}`);
    };
    const diag = () => `${seen}\n${logs.slice(-20).join('\n')}\n${gh.output().slice(-3000)}`;
    await waitCore(`http://127.0.0.1:${corePort}`, gh);
    const base = `http://localhost:${corePort}`;
    await page.goto(`${base}/`);
    await until(() => page.locator('#kerberos-login').isVisible(), 15_000, 'the page offers Kerberos', diag);
    await page.getByRole('button', { name: 'Sign in with Kerberos', exact: true }).click();
    await until(async () => /Logged in as alice \(trading\)/.test(await look()), 20_000, 'logged in by Negotiate', diag);
    t.pass('Chromium answered Negotiate with the ticket; the page is logged in as alice');
    const evs = authEvents(gh).map((e) => (e as unknown as { auth: { result: string; user?: string } }).auth);
    t.ok(
      evs.some((a) => a.result === 'success' && a.user === 'alice'),
      `a Negotiate success event: ${JSON.stringify(evs)}`,
    );
    await page.getByLabel('Conference title', { exact: true }).fill('Kerberos desk');
    await page.getByRole('button', { name: 'Create conference' }).click();
    await until(() => page.locator('#conference-created').isVisible(), 15_000, 'conference created', diag);
    await page.getByRole('button', { name: 'Enter conference' }).click();
    await until(async () => /In the call/.test(await look()), 20_000, 'in the call', diag);
    const id = (await page.locator('#call-h').textContent())!.replace(/^Conference /, '');
    t.match(id, /\S+/, `alice joined conference ${id}`);
    t.notOk(gh.fullOutput().toString('utf8').includes(ALICE_PW), 'no password in the log');
  },
);

t.test('gatehouse serve refuses to start when the keytab holds no key for the service', { skip }, async (t) => {
  const realm = await startRealm();
  t.teardown(() => realm.stop());
  const keytab = realm.keytab('host.keytab', 'host/localhost');
  const [turn, admin, core] = [await freePort('udp'), await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'gh-krb5-serve-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const cfg = join(dir, 'gatehouse.yaml');
  writeFileSync(
    cfg,
    `realm: test.local
data_dir: ${join(dir, 'data')}
turn: { listen: [udp://127.0.0.1:${turn}], relay_address: 127.0.0.1 }
pcp: { listen: [] }
admin: { listen: http://127.0.0.1:${admin}, token: ${randomBytes(16).toString('hex')} }
core:
  listen: http://127.0.0.1:${core}
  kerberos: { keytab: ${keytab}, service: HTTP@localhost }
`,
  );
  const r = spawnSync(process.execPath, [join(import.meta.dirname, '../../bin/gatehouse.js'), 'serve', '--config', cfg], {
    env: { ...process.env, ...realm.env },
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.not(r.status, 0, 'serve exits with an error');
  t.match(
    r.stderr + r.stdout,
    /cannot start: core\.kerberos\.keytab: .*host\.keytab holds no key for HTTP\/localhost@REALM .*it holds host\/localhost@GATEHOUSE\.TEST/,
    'naming core.kerberos.keytab and what the keytab holds',
  );
});

t.test(
  'a Kerberos principal is the directory user: groups and organisation from slapd, no entry refused, outage 503',
  { skip: ldapSkip, timeout: 120_000 },
  async (t) => {
    const realm = await startRealm();
    t.teardown(() => realm.stop());
    const KDC_PW = { carol: `carol-${randomBytes(8).toString('hex')}`, dave: `dave-${randomBytes(8).toString('hex')}` };
    realm.addUser('carol', KDC_PW.carol);
    realm.addUser('dave', KDC_PW.dave);
    realm.addUser('alice', ALICE_PW);
    const keytab = realm.keytab('http.keytab', 'HTTP/localhost');
    const slapd = await startSlapd({
      // LDAP passwords differ from the KDC's: Negotiate never binds as the user.
      users: [
        { uid: 'carol', password: `ldap-${randomBytes(8).toString('hex')}`, o: 'example.org' },
        { uid: 'dave', password: `ldap-${randomBytes(8).toString('hex')}` },
      ],
      groups: [
        { cn: 'trading', members: ['carol'] },
        { cn: 'staff', members: ['carol', 'dave'] },
      ],
      ports: { ldap: await freePort() },
    });
    t.teardown(() => slapd.cleanup());
    const corePort = await freePort();
    const gh = await startGatehouse({
      // alice is one of the gateway's own users, but with a directory the directory decides.
      users: [{ name: 'alice', password: ALICE_GW_PW, groups: ['trading'] }],
      logLevel: 'info',
      env: { ...realm.env },
      configure: (c) => {
        c.core = {
          listen: `http://127.0.0.1:${corePort}`,
          kerberos: { keytab, service: 'HTTP@localhost', realm: realm.realm },
          directory: `${slapd.ldapUrl}/${slapd.base}`,
          ldap: { bind_dn: slapd.bindDn, bind_password: slapd.bindPassword, org_attribute: 'o', cache_ttl: 1, stale_grace: 0 },
        };
      },
    });
    t.teardown(() => gh.stop());
    const base = `http://127.0.0.1:${corePort}`;
    await waitCore(base, gh);
    const url = `http://localhost:${corePort}/v1/login`;
    const login = (who: 'carol' | 'dave' | 'alice') =>
      curlNegotiate(url, corePort, { ...realm.env, KRB5CCNAME: realm.kinit(who, who === 'alice' ? ALICE_PW : KDC_PW[who]) });

    const carol = login('carol');
    t.equal(carol.status, 200, `carol logs in: ${carol.body}`);
    const cb = JSON.parse(carol.body) as { user: string; groups: string[]; org?: string };
    t.equal(cb.user, 'carol');
    t.same([...cb.groups].sort(), ['staff', 'trading'], "groups from slapd's groupOfNames / memberOf");
    t.equal(cb.org, 'example.org', "the organisation from the directory's o");
    const dave = login('dave');
    t.equal(dave.status, 200);
    t.same((JSON.parse(dave.body) as { groups: string[] }).groups, ['staff']);
    const alice = login('alice');
    t.equal(alice.status, 401, "a principal with no directory entry is refused (the gateway's own users are not asked)");
    t.match(alice.body, /alice is not a user here/);

    await slapd.stop();
    await sleep(1500); // past cache_ttl, no stale grace
    const down = login('carol');
    t.equal(down.status, 503, `the directory down: 503, never an admit (${down.body})`);
    t.match(down.body, /unavailable/);
    const evs = authEvents(gh).map(
      (e) => (e as unknown as { auth: { result: string; user?: string; groups?: string[]; org?: string } }).auth,
    );
    t.ok(
      evs.some((a) => a.result === 'success' && a.user === 'carol' && a.org === 'example.org' && a.groups?.includes('trading')),
      `carol's success event carries the directory's groups and org: ${JSON.stringify(evs)}`,
    );
  },
);
