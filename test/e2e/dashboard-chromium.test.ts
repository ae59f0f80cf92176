// Issue 14 proof: headless Chromium drives the dashboard (GET / on the admin listener) of a
// live `gatehouse serve` carrying inspected calls.
//
// - alice (compliant agent, keys escrowed, `gatehouse endpoint --audio-file`) sends 3 s of
//   real Opus through the gateway: a `record` rule records the flow, a media `alert` rule
//   fires; the dashboard shows her flow with key status `verified`, and the alert arrives
//   over the event stream (SSE) without a reload.
// - bob (plain werift, no escrow) waits for keys: his flow shows `waiting` with the
//   deadline counting down in the browser, then the block (keys_missing) arrives live.
// - alice's second call sends a forbidden chat message: the `block` rule blocks it and,
//   per key-escrow.md §5.4 (same user and peer), her first flow too, which seals its
//   recording; the dashboard lists it with `gatehouse verify` status and its <audio>
//   plays to `ended` with no error (served with Range, RFC 9110 §14).
// - a broken rule file written to the rules folder: Reload shows file:line and key.
// - fetches without the session cookie (401) or with a wrong CSRF token (403) are refused,
//   and no /ui response or the page carries the admin token or a password.
// Screenshots at 1280×800 and 390×844 go to .tap/artifacts/dashboard/.
import t from 'tap';
import { appendFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { runEndpoint } from '../../src/cli/endpoint.js';
import { launchChromium } from './helpers/browser.js';
import { closeLeftoverUdpSockets, pinGateway, sleep, until } from './helpers/escrow-events.js';
import { peerSkip } from './helpers/require-peer.js';
import { captureIo } from './helpers/run.js';
import { startGatehouse } from './helpers/turn-servers.js';
import { ffmpeg } from '../unit/record/media-helpers.js';

const skip = peerSkip(t, 'chromium', 'ffmpeg');
const ARTIFACTS = join(import.meta.dirname, '../../.tap/artifacts/dashboard');

const RULES = `keys:
  required: true
  deadline: 10s
  unverified: hold
  media: true
  data: true
  block_for: 1m
rules:
  - { id: rec-alice, when: { user: [alice] }, action: record }
  - { id: audio-alice, description: audio from alice, when: { user: [alice], channel: media }, action: alert }
  - { id: no-forbidden, description: forbidden word in chat, when: { channel: data, contains_text: [forbidden-word] }, action: block }
quotas:
  - { id: alice-daily, users: [alice], limit: 50MB, period: day }
`;

const USERS = [
  { name: 'alice', password: 'alice-secret-pw' },
  { name: 'bob', password: 'bob-secret-pw' },
];

/** Text of the flows table row whose user cell is `user`, or ''. */
const rowText = (page: Page, user: string) =>
  page.evaluate(
    (u) => [...document.querySelectorAll('#flows tbody tr')].map((r) => r.textContent ?? '').find((x) => x.includes(u)) ?? '',
    user,
  );

t.test('the dashboard in Chromium against a live gateway with inspected calls', { skip, timeout: 300_000 }, async (t) => {
  mkdirSync(ARTIFACTS, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'gh-dash-e2e-'));
  const audio = join(work, 'sent.opus');
  ffmpeg(['-f', 'lavfi', '-i', 'sine=frequency=440:duration=3', '-c:a', 'libopus', '-b:a', '48k', '-frame_duration', '20', audio]);
  const gh = await startGatehouse({ rules: RULES, users: USERS, transports: ['udp'], logLevel: 'info' });
  const tb = await launchChromium({ fakeMedia: false, args: ['--autoplay-policy=no-user-gesture-required'] });
  t.teardown(async () => {
    await tb.close();
    closeLeftoverUdpSockets();
    await gh.stop();
    rmSync(work, { recursive: true, force: true });
  });
  const admin = gh.adminUrl!;
  const token = gh.adminToken!;
  const gw = await pinGateway(admin);
  const diag = () => `${tb.logs().slice(-30).join('\n')}\n--- gateway ---\n${gh.output().slice(-4000)}`;

  // ---------------------------------------------------------------- login
  const page = await tb.newPage('dashboard');
  await page.setViewportSize({ width: 1280, height: 800 });
  const mainResponse = await page.goto(admin + '/');
  t.equal(mainResponse?.status(), 200);
  t.match(mainResponse?.headers()['content-security-policy'] ?? '', /default-src 'none'; script-src 'self'/, 'CSP on the page');
  t.ok(await page.locator('form#login').isVisible(), 'no session: the login form');
  await page.fill('#token', 'wrong-token-wrong-token-wrong-token');
  await page.click('button[type=submit]');
  await page.waitForSelector('#error:not([hidden])');
  t.match(await page.textContent('#error'), /Wrong admin token/, 'a wrong token is refused');
  await page.fill('#token', token);
  await Promise.all([page.waitForURL(admin + '/'), page.click('button[type=submit]')]);
  await page.waitForSelector('#live.ok', { timeout: 15_000 });
  t.pass('logged in; the event stream is live');
  const cookies = await page.context().cookies();
  const sc = cookies.find((c) => c.name === 'gh_session');
  t.ok(sc?.httpOnly, 'the session cookie is HttpOnly');
  t.equal(sc?.sameSite, 'Strict', 'and SameSite=Strict');
  t.equal(await page.evaluate(() => document.cookie), '', 'scripts cannot read it');
  // A marker that a reload would lose: everything below arrives without one.
  await page.evaluate(() => ((window as unknown as { noReload: number }).noReload = 42));

  // ---------------------------------------------------------------- calls
  const sigA = join(work, 'sig-a');
  const sigB = join(work, 'sig-b');
  const offA = captureIo();
  const ansA = captureIo();
  const callA = Promise.all([
    runEndpoint(
      [
        ...['--role', 'offer', '--signal-dir', sigA, '--turn', gh.url('udp'), '--user', 'alice', '--password', 'alice-secret-pw'],
        ...['--gateway-cert-fingerprint', gw.fingerprint, '--gateway-cert-url', gw.url, '--consent', 'always'],
        ...['--audio-file', audio, '--hold', '4', '--timeout', '90', '--json'],
      ],
      offA.io,
    ),
    runEndpoint(['--role', 'answer', '--signal-dir', sigA, '--no-escrow', '--hold', '12', '--timeout', '90', '--json'], ansA.io),
  ]);
  // bob: no key agent; keys are required, so his DTLS is held until the deadline, then blocked.
  const callB = Promise.all([
    runEndpoint(
      [
        ...['--role', 'offer', '--signal-dir', sigB, '--turn', gh.url('udp'), '--user', 'bob', '--password', 'bob-secret-pw'],
        ...['--no-escrow', '--timeout', '25'],
      ],
      captureIo().io,
    ),
    runEndpoint(['--role', 'answer', '--signal-dir', sigB, '--no-escrow', '--timeout', '25'], captureIo().io),
  ]);

  // bob's flow: waiting, the deadline counting down client-side.
  await until(async () => /waiting\s*\d+\.\d s left/.test(await rowText(page, 'bob')), 30_000, "bob's flow waiting with a deadline", diag);
  const left1 = Number(/(\d+\.\d) s left/.exec(await rowText(page, 'bob'))![1]);
  await sleep(1200);
  const bobRow = await rowText(page, 'bob');
  const m2 = /(\d+\.\d) s left/.exec(bobRow);
  t.ok(m2 && Number(m2[1]) < left1 && Number(m2[1]) <= 10, `the key deadline counts down (${left1} s, then ${m2?.[1]} s)`);

  // alice's flow: key status verified, bytes, the alert.
  await until(async () => /verified/.test(await rowText(page, 'alice')), 30_000, "alice's flow with keys verified", diag);
  const aliceRow = await rowText(page, 'alice');
  t.match(aliceRow, /127\.0\.0\.1/, `alice's flow shows its peer: ${aliceRow}`);
  await until(
    async () => (await page.locator('#events li', { hasText: 'audio-alice' }).count()) > 0,
    30_000,
    'the audio-alice alert in the event list',
    diag,
  );
  t.pass('the rule alert arrived in the page');
  await until(async () => /\d+(\.\d)? (KiB|MiB)/.test(await rowText(page, 'alice')), 20_000, "alice's flow bytes grow", diag);
  await until(async () => /alert/.test(await rowText(page, 'alice')), 10_000, "alice's flow verdict", diag);
  // The quota counter of alice in the current window.
  await until(
    async () => (await page.locator('#quotas tbody tr', { hasText: 'alice-daily' }).count()) > 0,
    15_000,
    'alice-daily quota use',
    diag,
  );
  t.match(await page.locator('#quotas tbody tr', { hasText: 'alice-daily' }).textContent(), /user:alice/, 'quota use per user');
  t.match(await page.textContent('#rules'), /no-forbidden/, 'the rules in force are listed');
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard-1280x800-live.png'), fullPage: false });

  // bob's block arrives live.
  await until(
    async () => (await page.locator('#events li', { hasText: 'keys_missing' }).count()) > 0,
    30_000,
    "bob's flow_blocked (keys_missing)",
    diag,
  );
  t.pass("bob's block arrived in the page");
  await callB;

  const [rcA, rcAns] = await callA;
  t.equal(rcA, 0, `alice's audio call ok: ${offA.err()}`);
  t.equal(rcAns, 0, `its answerer ok: ${ansA.err()}`);

  // alice's second call: a forbidden chat message blocks it, and her recorded flow to the
  // same peer with it (§5.4), which seals the recording.
  const sigC = join(work, 'sig-c');
  await Promise.all([
    runEndpoint(
      [
        ...['--role', 'offer', '--signal-dir', sigC, '--turn', gh.url('udp'), '--user', 'alice', '--password', 'alice-secret-pw'],
        ...['--gateway-cert-fingerprint', gw.fingerprint, '--gateway-cert-url', gw.url, '--consent', 'always'],
        ...['--message', 'this has the forbidden-word in it', '--hold', '3', '--timeout', '30'],
      ],
      captureIo().io,
    ),
    runEndpoint(['--role', 'answer', '--signal-dir', sigC, '--no-escrow', '--hold', '3', '--timeout', '30'], captureIo().io),
  ]);
  await until(
    async () => (await page.locator('#events li', { hasText: 'no-forbidden' }).count()) > 0,
    30_000,
    'the no-forbidden block alert',
    diag,
  );
  t.pass('the block rule fired and its alert arrived in the page');

  // ---------------------------------------------------------------- recording
  await page.waitForSelector('#recordings audio', { timeout: 60_000 });
  await until(async () => /verified ✓/.test((await page.textContent('#recordings')) ?? ''), 20_000, 'verify status of the recording', diag);
  t.match(await page.textContent('#recordings'), /alice/, 'the recording is listed with its user and verify status');
  const src = await page.getAttribute('#recordings audio', 'src');
  t.match(src, /^\/ui\/recordings\/[^/]+\/audio-\d+\.opus$/, `the <audio> element points at the recording (${src})`);
  const played = await page.evaluate(async () => {
    const a = document.querySelector('#recordings audio') as HTMLAudioElement;
    a.muted = true;
    const errors: string[] = [];
    a.addEventListener('error', () => errors.push(`error ${a.error?.code}: ${a.error?.message}`));
    const ended = new Promise<void>((res, rej) => {
      a.addEventListener('ended', () => res());
      setTimeout(() => rej(new Error(`no ended after 30 s (time ${a.currentTime}, ${errors.join('; ')})`)), 30_000);
    });
    await a.play();
    await ended;
    return { duration: a.duration, currentTime: a.currentTime, errors, networkState: a.networkState, error: a.error?.code ?? null };
  });
  t.same(played.errors, [], 'no media error');
  t.equal(played.error, null);
  t.ok(played.duration > 2.5 && played.duration < 4, `the recording plays to ended (${played.duration} s)`);
  t.ok(played.currentTime >= played.duration - 0.1, 'to its end');
  // Seeking asks for a byte range: 206 with Content-Range.
  const range = await page.evaluate(async (u) => {
    const r = await fetch(u!, { headers: { range: 'bytes=0-99' } });
    return {
      status: r.status,
      cr: r.headers.get('content-range'),
      type: r.headers.get('content-type'),
      len: (await r.arrayBuffer()).byteLength,
    };
  }, src);
  t.match(range, { status: 206, cr: /^bytes 0-99\/\d+$/, type: 'audio/ogg', len: 100 }, 'Range request: 206');

  // ---------------------------------------------------------------- broken rule file
  writeFileSync(join(gh.workDir, 'rules', 'zz-broken.yaml'), 'rules:\n  - id: broken\n    action: explode\n    when: { user: [x] }\n');
  await page.click('#reload');
  await until(async () => /zz-broken\.yaml:3/.test((await page.textContent('#reload-result')) ?? ''), 15_000, 'the reload error', diag);
  const reloadText = (await page.textContent('#reload-result')) ?? '';
  t.match(reloadText, /zz-broken\.yaml:3:\d+: rules\[0\]\.action/, `the error names file, line and key: ${reloadText}`);
  t.match(reloadText, /previous rules kept/);
  t.match(await page.getAttribute('#reload-result', 'class'), /bad/);
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard-1280x800.png'), fullPage: true });

  // ---------------------------------------------------------------- phone
  await page.setViewportSize({ width: 390, height: 844 });
  await sleep(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  t.ok(overflow <= 390, `no horizontal page scroll at 390 px (scrollWidth ${overflow})`);
  t.ok(await page.locator('#reload').isVisible(), 'the reload button is there on a phone');
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard-390x844.png'), fullPage: true });

  // ---------------------------------------------------------------- refusals
  const refused = await page.evaluate(async () => {
    const noCookie = await fetch('/ui/flows', { credentials: 'omit' });
    const wrong = await fetch('/ui/policy/reload', { method: 'POST', headers: { 'x-csrf-token': 'not-the-token' } });
    const none = await fetch('/ui/policy/reload', { method: 'POST' });
    const csrf = document.querySelector('meta[name="csrf-token"]')!.getAttribute('content')!;
    const right = await fetch('/ui/policy/reload', { method: 'POST', headers: { 'x-csrf-token': csrf } });
    return { noCookie: noCookie.status, wrong: wrong.status, none: none.status, right: right.status };
  });
  t.same(refused, { noCookie: 401, wrong: 403, none: 403, right: 422 }, 'no cookie 401, wrong or no CSRF 403, right CSRF runs');
  t.equal(await page.evaluate(() => (window as unknown as { noReload?: number }).noReload), 42, 'the page was never reloaded');

  // ---------------------------------------------------------------- a tampered recording
  // The verify status is gatehouse verify's (verifyRecordings): a changed file shows.
  const recId = decodeURIComponent(src!.split('/')[3]!);
  const pcaps = readdirSync(join(gh.dataDir!, 'recordings', recId)).filter((f) => f.endsWith('.pcap'));
  appendFileSync(join(gh.dataDir!, 'recordings', recId, pcaps[0]!), Buffer.from([0]));
  await until(
    async () => /verify FAILED: .*changed/.test((await page.textContent(`#recordings li[data-recording="${recId}"]`)) ?? ''),
    20_000,
    'the tampered recording shows verify FAILED',
    diag,
  );
  t.pass(`a changed ${pcaps[0]} shows as verify FAILED`);
  t.match(await page.getAttribute('#recordings-status', 'class'), /bad/);

  // ---------------------------------------------------------------- no secrets
  const bodies = await page.evaluate(async () => {
    const out: Record<string, string> = { page: document.documentElement.outerHTML };
    for (const p of ['/ui/flows', '/ui/events', '/ui/recordings', '/ui/quotas', '/ui/policy', '/ui/session', '/', '/ui/app.js'])
      out[p] = await (await fetch(p)).text();
    return out;
  });
  for (const [p, body] of Object.entries(bodies)) {
    t.notOk(body.includes(token), `${p}: no admin token`);
    t.notOk(
      /alice-secret-pw|bob-secret-pw|PRIVATE KEY|master_secret|srtp_key|client_write_key/i.test(body),
      `${p}: no password or key material`,
    );
  }
  const pageErrors = tb.logs().filter((l) => /pageerror|Content Security Policy|Refused to/.test(l));
  t.same(pageErrors, [], 'no script error or CSP violation in the page');
});
