// Issue 12, the LDAP directory (seed 004), against a real slapd (Debian's, a temp
// slapd.conf on loopback: test/e2e/helpers/slapd.ts) through a spawned `gatehouse serve`
// whose director listens https:// (a self-signed certificate made here with openssl):
//
//   1. POST /v1/login offers `Basic realm=...` (HTTPS and an LDAP directory); Basic is
//      checked with a bind as the user's DN (ldaps:// to slapd, its CA pinned with
//      core.ldap.tls.ca): the right password is 200 with the directory's groups and
//      organisation, a wrong one 401 with fresh challenges, an unknown user 401 too.
//   2. bob is in groupOfNames `trading` in slapd: a rule `group: [trading]` → record
//      selects his flows. Two Chromium participants (the turn-call test page in two
//      browser contexts, with the TURN credentials the core's signalling gave alice and bob
//      — not the web client's own login, which speaks Digest only) call through the
//      gateway: bob's flow is recorded (a `recording` event, rule record-trading), alice's
//      (group owners) is not; the allocation and permission events carry user and groups.
//   3. bob is removed from `trading` with ldapmodify: after core.ldap.cache_ttl his next
//      credentials' issue record has no trading, and a flow on them is not recorded.
//   4. slapd stopped: within cache_ttl + stale_grace the cached answer still gives bob
//      credentials (with the last groups the directory gave), a Basic login is 503 (a
//      password is never accepted from a cache); past the grace, signalling answers
//      `unavailable` and no credentials, login stays 503: never an admit.
//   5. In-process: memberOf alone (group_object_class: null, ldap://) gives the groups,
//      a filter-injection attempt as a login name finds nobody, Basic is not offered over
//      plain http.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { peerSkip } from './helpers/require-peer.js';
import { freePort } from './helpers/ports.js';
import { startSlapd, type Slapd } from './helpers/slapd.js';
import { startGatehouse, type TurnServer } from './helpers/turn-servers.js';
import { encryptKey, newConferenceKey } from './helpers/core-guest.js';
import { readEvents, sleep, until, type GwEvent } from './helpers/escrow-events.js';
import type { Page } from 'playwright-core';
import { launchChromium, type TestBrowser } from './helpers/browser.js';
import { startPageServer, type PageServer } from './helpers/page-server.js';
import { makePayload, runTwoPageCall } from './helpers/call.js';
import { Attr, Method, Class } from '../../src/wire/stun.js';
import { Client, errCode } from '../unit/turn/helpers.js';
import { parseConfig } from '../../src/config/config.js';
import { LdapDirectory } from '../../src/core/directory/ldap.js';
import { startCore } from '../../src/core/index.js';
import { StaticUserDirectory } from '../../src/store/users.js';
import { silentLogger } from '../../src/util/log.js';
import { systemClock } from '../../src/util/clock.js';
import { Supervisor } from '../../src/util/supervise.js';

const skip = peerSkip(t, 'slapd', 'openssl');
const chromiumSkip = peerSkip(t, 'chromium');

const PW = { alice: 'alice-' + randomBytes(8).toString('hex'), bob: 'bob-' + randomBytes(8).toString('hex') };
const CACHE_TTL = 2;
const STALE_GRACE = 4;
const RULES = `keys:
  required: false
  unverified: pass
rules:
  - id: record-trading
    when: { group: [trading] }
    action: record
`;

type Turn = { urls: string[]; username: string; credential: string; ttl: number };

interface Https {
  status: number;
  /** Each WWW-Authenticate header on its own (Node's headers object joins them). */
  www: string[];
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

function wwwOf(raw: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i]!.toLowerCase() === 'www-authenticate') out.push(raw[i + 1]!);
  return out;
}

function makeCert(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  const r = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '2',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`openssl: ${r.stderr}`);
  return { cert, key };
}

t.test(
  'LDAP directory through gatehouse serve: Basic by bind, groups drive policy, removal, outage',
  { skip, timeout: 300_000 },
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'gatehouse-ldap-e2e-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const tls = makeCert(dir);
    const ca = readFileSync(tls.cert);
    const slapd: Slapd = await startSlapd({
      users: [
        { uid: 'alice', password: PW.alice },
        { uid: 'bob', password: PW.bob, o: 'example.org' },
        { uid: 'erin', password: 'erin-' + randomBytes(8).toString('hex') },
      ],
      groups: [
        { cn: 'trading', members: ['bob', 'erin'] },
        { cn: 'owners', members: ['alice'] },
      ],
      ports: { ldap: await freePort(), ldaps: await freePort() },
      stats: true,
      tls,
    });
    t.teardown(() => slapd.cleanup());
    const pwFile = join(dir, 'ldap-password');
    writeFileSync(pwFile, slapd.bindPassword + '\n', { mode: 0o600 });
    const corePort = await freePort();
    const gh: TurnServer = await startGatehouse({
      rules: RULES,
      users: [{ name: 'localadmin', password: 'local-' + randomBytes(8).toString('hex') }],
      transports: ['udp'],
      logLevel: 'info',
      configure: (c) => {
        c.core = {
          listen: `https://127.0.0.1:${corePort}`,
          tls,
          directory: `${slapd.ldapsUrl}/${slapd.base}`,
          ldap: {
            bind_dn: slapd.bindDn,
            bind_password_file: pwFile,
            tls: { ca: tls.cert },
            org_attribute: 'o',
            cache_ttl: CACHE_TTL,
            stale_grace: STALE_GRACE,
          },
        };
      },
    });
    t.teardown(() => gh.stop());
    const base = `https://127.0.0.1:${corePort}`;
    const diag = () => `gatehouse:\n${gh.output().slice(-3000)}\nslapd:\n${slapd.output().slice(-1500)}`;

    const https = (method: string, path: string, headers: Record<string, string> = {}, body?: unknown): Promise<Https> =>
      new Promise((resolve, reject) => {
        const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
        const req = request(
          `${base}${path}`,
          {
            method,
            ca,
            headers: { ...headers, ...(data ? { 'content-type': 'application/json', 'content-length': String(data.length) } : {}) },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => {
              const text = Buffer.concat(chunks).toString('utf8');
              let json: unknown = null;
              try {
                json = JSON.parse(text);
              } catch {
                /* not JSON */
              }
              resolve({ status: res.statusCode ?? 0, www: wwwOf(res.rawHeaders), json });
            });
          },
        );
        req.on('error', reject);
        req.end(data);
      });
    const basic = (user: string, password: string) => ({
      authorization: 'Basic ' + Buffer.from(`${user}:${password}`, 'utf8').toString('base64'),
    });
    const challenges = (r: Https) => r.www;
    await until(async () => (await https('GET', '/').catch(() => ({ status: 0 }))).status === 200, 30_000, 'the director on https', diag);

    // 1. Basic login by bind.
    const first = await https('POST', '/v1/login');
    t.equal(first.status, 401);
    t.ok(
      challenges(first).some((c) => /^Basic realm="[^"]+", charset="UTF-8"$/.test(c)),
      `Basic offered: ${challenges(first).join(' | ')}`,
    );
    t.ok(
      challenges(first).some((c) => c.startsWith('Digest ')),
      "Digest offered too (the gateway's own users)",
    );
    const wrong = await https('POST', '/v1/login', basic('bob', PW.bob + 'x'));
    t.equal(wrong.status, 401, 'wrong password: 401');
    t.equal(wrong.json?.error?.code, 'unauthenticated');
    t.ok(
      challenges(wrong).some((c) => c.startsWith('Basic ')),
      'with fresh challenges',
    );
    const beforeMallory = slapd.output().length;
    t.equal((await https('POST', '/v1/login', basic('mallory', 'x'))).status, 401, 'unknown user: 401');
    // An unknown name costs the directory the same search and bind as a wrong password
    // (the bind is to a DN that cannot exist), so the answer's timing does not tell.
    const decoys =
      slapd
        .output()
        .slice(beforeMallory)
        .match(/BIND dn="cn=[0-9a-f]{32},dc=example,dc=org"/g) ?? [];
    t.equal(decoys.length, 1, `one decoy bind for the unknown user, as for a wrong password:\n${slapd.output().slice(beforeMallory)}`);
    t.equal((await https('POST', '/v1/login', basic('*', 'x'))).status, 401, 'a wildcard name finds nobody');
    const bobLogin = await https('POST', '/v1/login', basic('bob', PW.bob));
    t.equal(bobLogin.status, 200, `bob logs in by bind: ${JSON.stringify(bobLogin.json?.error ?? '')}`);
    t.same(
      [bobLogin.json.user, bobLogin.json.groups, bobLogin.json.org],
      ['bob', ['trading'], 'example.org'],
      'user, groups and org from slapd',
    );
    const aliceLogin = await https('POST', '/v1/login', basic('alice', PW.alice));
    t.equal(aliceLogin.status, 200);
    t.same(aliceLogin.json.groups, ['owners']);
    const bobToken: string = bobLogin.json.token;

    // TLS to the directory fails closed, StartTLS works, a refused service account is an outage.
    const direct = (directory: string, ldap: string) =>
      LdapDirectory.fromConfig(
        parseConfig(`core:\n  directory: ${directory}/${slapd.base}\n  ldap:\n${ldap}`, 'direct.yaml'),
        silentLogger,
        () => Date.now(),
      );
    const svc = `    bind_dn: "${slapd.bindDn}"\n    bind_password_file: ${pwFile}\n`;
    await t.rejects(
      direct(slapd.ldapsUrl!, svc).user('bob'),
      { code: 'unavailable' },
      'ldaps:// whose CA is not trusted: 503, never an unverified connection',
    );
    t.same(
      (await direct(slapd.ldapUrl, `${svc}    starttls: true\n    tls: { ca: ${tls.cert} }\n`).user('bob'))?.groups,
      ['trading'],
      'ldap:// with StartTLS (RFC 4511 §4.14)',
    );
    await t.rejects(
      direct(slapd.ldapUrl, `    bind_dn: "${slapd.bindDn}"\n    bind_password: not-the-password\n`).user('bob'),
      { code: 'unavailable' },
      'a service account the directory refuses: 503, not "no such user"',
    );
    const aliceToken: string = aliceLogin.json.token;

    // A conference (alice) and signalling joins that hand out TURN credentials.
    const key = await https('GET', '/v1/conference-key', { authorization: `Bearer ${aliceToken}` });
    t.equal(key.status, 200);
    const conf = await https(
      'POST',
      '/v1/conferences',
      { authorization: `Bearer ${aliceToken}` },
      {
        fe: key.json.fe,
        key: encryptKey(key.json.public_key, newConferenceKey()),
        title: 'desk',
      },
    );
    t.equal(conf.status, 201, `conference: ${JSON.stringify(conf.json)}`);
    const conference: string = conf.json.id;
    /** hello + join on a fresh signalling connection: the join's turn, or its error. */
    const joinConf = (token: string): Promise<{ turn?: Turn; error?: { code: string; message: string }; close(): void }> =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`wss://127.0.0.1:${corePort}/v1/signal`, { ca });
        const timer = setTimeout(() => reject(new Error('signalling timed out')), 15_000);
        const done = (v: { turn?: Turn; error?: { code: string; message: string } }) => {
          clearTimeout(timer);
          resolve({ ...v, close: () => ws.close() });
        };
        ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', token })));
        ws.on('error', reject);
        ws.on('message', (raw) => {
          const m = JSON.parse(raw.toString());
          if (m.type === 'hello') ws.send(JSON.stringify({ type: 'join', conference }));
          else if (m.type === 'join') done({ turn: m.turn });
          else if (m.type === 'error') done({ error: m.error });
        });
      });
    const events = (): GwEvent[] => readEvents(gh.dataDir!);
    /** Allocate + CreatePermission on a credential: the flow's events. */
    const flowOn = async (turn: Turn, peerPort: number) => {
      // The Chromium calls above leave allocations (10 min) on ports they have closed; an
      // ephemeral port handed out again lands on one of them, and the server rightly answers
      // 437 Allocation Mismatch (RFC 8656 §7.2). Such a port is kept open (not handed out
      // again) and another one taken, at most 4 in all.
      let cl: Client;
      let alloc;
      for (let tries = 1; ; tries++) {
        const c = await Client.udp(gh.port);
        t.teardown(() => c.close());
        c.realm = gh.realm;
        c.username = turn.username;
        c.password = turn.credential;
        cl = c;
        alloc = await c.authed(Method.Allocate, (w) => w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])));
        if (alloc.cls === Class.Success || errCode(alloc) !== 437 || tries === 4) break;
      }
      t.equal(alloc.cls, Class.Success, `allocate on ${turn.username}: ${errCode(alloc)}`);
      const perm = await cl.authed(Method.CreatePermission, (w) => w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', peerPort));
      t.equal(perm.cls, Class.Success, `permission: ${errCode(perm)}`);
      await until(
        () =>
          events().some(
            (e) =>
              e.event_type === 'permission' &&
              e.flow_id !== undefined &&
              e.gatehouse?.user === turn.username.split(':')[1] &&
              (e as { src_port?: number }).src_port === cl.port,
          ),
        10_000,
        'the permission event',
        diag,
      );
      const perms = events().filter((e) => e.event_type === 'permission' && (e as { src_port?: number }).src_port === cl.port);
      const flowId = perms[0]!.flow_id;
      await sleep(300);
      return {
        flowId,
        all: events().filter(
          (e) => e.flow_id === flowId || (e.event_type === 'allocation' && (e as { src_port?: number }).src_port === cl.port),
        ),
      };
    };

    const bobJoin = await joinConf(bobToken);
    const aliceJoin = await joinConf(aliceToken);
    t.ok(bobJoin.turn && aliceJoin.turn, `both get TURN credentials: ${JSON.stringify(bobJoin.error ?? aliceJoin.error ?? '')}`);
    t.match(bobJoin.turn!.username, /^\d+:bob$/);

    // 2. Two Chromium participants call through the gateway on those credentials.
    await t.test("two Chromium participants: bob's flow recorded by his slapd group, alice's not", { skip: chromiumSkip }, async (t) => {
      let tb: TestBrowser | null = null;
      let pages: PageServer | null = null;
      t.teardown(async () => {
        await tb?.close();
        await pages?.close();
      });
      pages = await startPageServer();
      tb = await launchChromium({ fakeMedia: false });
      const ice = (turn: Turn) => [
        { urls: `turn:127.0.0.1:${gh.port}?transport=udp`, username: turn.username, credential: turn.credential },
      ];
      const r = await runTwoPageCall(tb, pages, {
        iceServers: ice(bobJoin.turn!),
        answererIceServers: ice(aliceJoin.turn!),
        payload: makePayload(5, 20_000),
        media: false,
      });
      t.equal(r.offerer.error, null, `bob's page: ${r.offerer.error}`);
      t.equal(r.answerer.error, null, `alice's page: ${r.answerer.error}`);
      t.equal(r.answerer.received.texts.length, 6, "alice got bob's messages through the relay");
      let evs: GwEvent[] = [];
      await until(
        () => (evs = events()).some((e) => e.event_type === 'recording' && e.gatehouse?.user === 'bob'),
        15_000,
        "a recording of bob's flow",
        () => evs.map((e) => `${e.event_type}:${e.gatehouse?.user}`).join(', '),
      );
      const rec = evs.filter((e) => e.event_type === 'recording');
      t.ok(
        rec.some(
          (e) => e.gatehouse?.user === 'bob' && (e.gatehouse as { recording?: { rule?: string } }).recording?.rule === 'record-trading',
        ),
        "bob's flow: recording started by rule record-trading",
      );
      t.same(rec.find((e) => e.gatehouse?.user === 'bob')?.gatehouse?.groups, ['trading'], 'the recording event names his groups');
      t.notOk(
        rec.some((e) => e.gatehouse?.user === 'alice'),
        "alice's flows are not recorded",
      );
      const allocs = evs.filter((e) => e.event_type === 'allocation' && e.gatehouse?.conference === conference);
      t.ok(
        allocs.some((e) => e.gatehouse?.user === 'bob' && JSON.stringify(e.gatehouse?.groups) === '["trading"]'),
        "bob's allocation event: user and groups",
      );
      t.ok(
        allocs.some((e) => e.gatehouse?.user === 'alice' && JSON.stringify(e.gatehouse?.groups) === '["owners"]'),
        "alice's allocation event: user and groups",
      );
    });
    bobJoin.close();
    aliceJoin.close();

    // 2b. The web client itself: bob logs in there (Basic, the page's passwordLogin), makes
    // a conference; a guest joins it by key in another Chromium; media both ways through the
    // gateway's TURN; bob's flows are recorded by his slapd group, the guest's not.
    await t.test(
      "the web client: bob logs in by Basic in the page, a guest joins; bob's flows recorded",
      { skip: chromiumSkip, timeout: 180_000 },
      async (t) => {
        const tbs: TestBrowser[] = [];
        t.teardown(async () => {
          for (const b of tbs) await b.close();
        });
        // The director's certificate is self-signed: this test's browsers accept it.
        for (let i = 0; i < 2; i++) tbs.push(await launchChromium({ args: ['--ignore-certificate-errors'] }));
        const [org, guest] = [await tbs[0]!.newPage('bob'), await tbs[1]!.newPage('guest')];
        const text = (p: Page, sel: string) =>
          p
            .locator(sel)
            .textContent()
            .then((s) => s ?? '');
        const pageDiag = async () =>
          `bob: ${await text(org, '#status')} ${await text(org, '#error')}\nguest: ${await text(guest, '#status')} ${await text(guest, '#error')}\n` +
          tbs.flatMap((b) => b.logs().slice(-20)).join('\n');
        let last = '';
        const waitFor = async (cond: () => Promise<boolean>, what: string, ms = 20_000) => {
          try {
            await until(cond, ms, what);
          } catch (e) {
            last = await pageDiag();
            throw new Error(`${(e as Error).message}\n${last}\n${diag()}`);
          }
        };
        await org.goto(`${base}/`);
        await org.getByLabel('User name', { exact: true }).fill('bob');
        await org.getByLabel('Password', { exact: true }).fill(PW.bob);
        await org.getByRole('button', { name: 'Log in', exact: true }).click();
        await waitFor(async () => /Logged in as bob/.test(await text(org, '#whoami')), 'bob logged in in the page');
        t.pass('bob logged in from the web client (Basic over HTTPS, checked by a bind in slapd)');
        await org.getByLabel('Conference title', { exact: true }).fill('Trading desk');
        await org.getByRole('button', { name: 'Create conference' }).click();
        await waitFor(() => org.locator('#conference-created').isVisible(), 'conference created');
        const joinUrl = await org.getByLabel('Join URL', { exact: true }).inputValue();
        const key = await org.getByLabel('Conference key to share', { exact: true }).inputValue();
        await org.getByRole('button', { name: 'Enter conference' }).click();
        await waitFor(async () => /In the call/.test(await text(org, '#status')), 'bob in the call');
        const webConference = (await text(org, '#call-h')).replace(/^Conference /, '');
        await guest.goto(joinUrl);
        await guest.getByLabel('Your name', { exact: true }).fill('ann');
        await guest.getByLabel('Conference key', { exact: true }).fill(key);
        await guest.getByRole('button', { name: 'Join' }).click();
        await waitFor(async () => /In the call/.test(await text(guest, '#status')), 'the guest in the call');
        type Stats = { relay: boolean; inbound: { kind: string; packetsReceived: number }[] }[];
        const stats = (p: Page) => p.evaluate(() => (window as unknown as { gatehouse: { stats(): Promise<Stats> } }).gatehouse.stats());
        const flowing = (s: Stats) =>
          s.length > 0 && s.every((p) => p.relay && p.inbound.some((i) => i.kind === 'audio' && i.packetsReceived > 0));
        await waitFor(async () => flowing(await stats(org)) && flowing(await stats(guest)), 'audio both ways on relay candidates', 90_000);
        t.pass('audio both ways, relayed by the gateway');
        let evs: GwEvent[] = [];
        await waitFor(
          async () =>
            (evs = events()).some(
              (e) => e.event_type === 'recording' && e.gatehouse?.user === 'bob' && e.gatehouse?.conference === webConference,
            ),
          "a recording of bob's flow in the web conference",
        );
        const rec = evs.filter((e) => e.event_type === 'recording' && e.gatehouse?.conference === webConference);
        t.ok(
          rec.some(
            (e) =>
              e.gatehouse?.user === 'bob' &&
              JSON.stringify(e.gatehouse?.groups) === '["trading"]' &&
              (e.gatehouse as { recording?: { rule?: string } }).recording?.rule === 'record-trading',
          ),
          "bob's flow recorded by rule record-trading, groups [trading]",
        );
        t.notOk(
          rec.some((e) => e.gatehouse?.guest === true),
          "the guest's flows are not recorded",
        );
        t.ok(
          evs.some((e) => e.event_type === 'allocation' && e.gatehouse?.user === `guest/${webConference}/ann`),
          'the guest relayed through the gateway too',
        );
      },
    );

    // The same without a browser (so the removal below is judged the same way): a flow on
    // bob's current credentials is recorded.
    const before = await joinConf(bobToken);
    const f1 = await flowOn(before.turn!, 9);
    before.close();
    t.ok(
      f1.all.some((e) => e.event_type === 'recording'),
      `a flow on bob's credentials is recorded (flow ${f1.flowId})`,
    );
    t.ok(
      f1.all.some((e) => e.event_type === 'allocation' && JSON.stringify(e.gatehouse?.groups) === '["trading"]'),
      'allocation: groups [trading]',
    );

    // 3. bob leaves trading in slapd.
    slapd.modify(`dn: ${slapd.groupDn('trading')}\nchangetype: modify\ndelete: member\nmember: ${slapd.userDn('bob')}\n`);
    await sleep(CACHE_TTL * 1000 + 200);
    const after = await joinConf(bobToken);
    t.ok(after.turn, `bob still gets credentials: ${JSON.stringify(after.error ?? '')}`);
    const f2 = await flowOn(after.turn!, 10);
    after.close();
    t.notOk(
      f2.all.some((e) => e.event_type === 'recording'),
      "after the removal (and cache_ttl) his next credentials' flow is not recorded",
    );
    const alloc2 = f2.all.find((e) => e.event_type === 'allocation');
    t.equal(alloc2?.gatehouse?.groups, undefined, `allocation: no groups now (${JSON.stringify(alloc2?.gatehouse)})`);

    // 4. slapd stops: cached, then 503, never an admit.
    const fresh = await joinConf(bobToken); // the cached answer's age starts here
    fresh.close();
    const cachedAt = Date.now();
    await slapd.stop();
    await sleep(CACHE_TTL * 1000 + 300); // past the TTL, within the grace
    const stale = await joinConf(bobToken);
    stale.close();
    t.ok(
      stale.turn && Date.now() - cachedAt < (CACHE_TTL + STALE_GRACE) * 1000,
      `within the grace the cached answer gives credentials: ${JSON.stringify(stale.error ?? '')}`,
    );
    const down = await https('POST', '/v1/login', basic('bob', PW.bob));
    t.equal(down.status, 503, 'Basic login with the directory down: 503 (no password from a cache)');
    t.equal(down.json?.error?.code, 'unavailable');
    t.same(challenges(down), [], 'no challenges on a 503');
    await sleep(Math.max(0, (CACHE_TTL + STALE_GRACE) * 1000 + 300 - (Date.now() - cachedAt)));
    const gone = await joinConf(bobToken);
    gone.close();
    t.notOk(gone.turn, 'past the grace: no credentials');
    t.equal(gone.error?.code, 'unavailable', `signalling says unavailable: ${gone.error?.message}`);
    const stillDown = await https('POST', '/v1/login', basic('bob', PW.bob));
    t.equal(stillDown.status, 503, 'login still 503');
    t.notOk(gh.output().includes(PW.bob) || gh.output().includes(slapd.bindPassword), 'no password in the log');
    const ev = events();
    t.notOk(JSON.stringify(ev).includes(PW.bob), 'no password in the events');
    t.ok(
      ev.some((e) => e.event_type === 'auth' && (e as { auth?: { result?: string; reason?: string } }).auth?.reason === 'unavailable'),
      'the 503 login is an auth failure event (unavailable)',
    );
    t.ok(/serving a cached answer/.test(gh.output()), 'the stale answer is logged');

    // Back up: answers again.
    await slapd.start();
    const back = await https('POST', '/v1/login', basic('bob', PW.bob));
    t.equal(back.status, 200, 'slapd back: login works');
    t.same(back.json.groups, [], 'without trading');
  },
);

t.test('in-process: memberOf only over ldap://, injection, Basic not offered over http', { skip, timeout: 60_000 }, async (t) => {
  const slapd = await startSlapd({
    users: [
      { uid: 'carol', password: 'carol-pw' },
      { uid: 'dave', password: 'dave-pw' },
    ],
    groups: [
      { cn: 'Sales, EMEA', members: ['carol'] },
      { cn: 'staff', members: ['carol', 'dave'] },
    ],
    ports: { ldap: await freePort() },
  });
  t.teardown(() => slapd.cleanup());
  const cfg = parseConfig(
    `core:
  directory: ${slapd.ldapUrl}/${slapd.base}
  org: example.org
  ldap:
    bind_dn: "${slapd.bindDn}"
    bind_password: "${slapd.bindPassword}"
    group_object_class: null
`,
    'in-process.yaml',
  );
  const dirx = LdapDirectory.fromConfig(cfg, silentLogger, () => Date.now());
  t.same(
    await dirx.user('carol'),
    { name: 'carol', groups: ['Sales, EMEA', 'staff'], org: 'example.org' },
    'groups from memberOf (RFC 4514 value unescaped)',
  );
  t.same(
    await dirx.user('CAROL'),
    { name: 'carol', groups: ['Sales, EMEA', 'staff'], org: 'example.org' },
    "uid matches case-insensitively; the directory's spelling",
  );
  t.equal(await dirx.user('*'), null, 'a wildcard name finds nobody');
  t.equal(await dirx.user('carol)(uid=*'), null, 'a filter injection finds nobody');
  t.equal(await dirx.authenticate('carol', ''), null, 'an empty password never binds (RFC 4513 §5.1.2)');
  t.equal(await dirx.authenticate('carol', 'wrong'), null);
  t.same((await dirx.authenticate('carol', 'carol-pw'))?.name, 'carol');

  const core = await startCore(
    parseConfig(`core:\n  listen: http://127.0.0.1:0\n  directory: ${slapd.ldapUrl}/${slapd.base}\n`, 'c.yaml'),
    {
      users: new StaticUserDirectory([]),
      logger: silentLogger,
      clock: systemClock,
      supervisor: new Supervisor(silentLogger),
      restSecret: randomBytes(32).toString('base64url'),
    },
  );
  t.teardown(() => core.stop());
  const r = await fetch(`${core.url}/v1/login`, { method: 'POST' });
  await r.arrayBuffer();
  t.equal(r.status, 401);
  t.notMatch(r.headers.get('www-authenticate') ?? '', /Basic/, 'no Basic challenge over plain http');
  const tried = await fetch(`${core.url}/v1/login`, {
    method: 'POST',
    headers: { authorization: 'Basic ' + Buffer.from('carol:carol-pw').toString('base64') },
  });
  await tried.arrayBuffer();
  t.equal(tried.status, 401, 'and Basic credentials sent anyway are refused');
  t.ok(core.core.directory, 'core.directory is set by startCore');
});
