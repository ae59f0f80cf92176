// POST /v1/login with an Authorization whose scheme the core does not offer: the `auth`
// failure event names the scheme only when it is a registered HTTP authentication scheme
// (RFC 9110 §16.4), else `other`. A scheme-less Authorization (a bare token or password
// pasted by a client) would otherwise put the secret itself, up to Node's 16 KiB header
// limit, into the event as `mechanism`.
import t from 'tap';
import { startCore } from '../../../src/core/index.js';
import { addLoginMechanism } from '../../../src/core/login.js';
import { CoreError } from '../../../src/core/errors.js';
import { defaultConfig } from '../../../src/config/config.js';
import { StaticUserDirectory } from '../../../src/store/users.js';
import { silentLogger } from '../../../src/util/log.js';
import { systemClock } from '../../../src/util/clock.js';
import { Supervisor } from '../../../src/util/supervise.js';
import type { EveEvent } from '../../../src/events/eve.js';

t.test('an unoffered scheme: the event never repeats a scheme-less secret', async (t) => {
  const cfg = defaultConfig();
  cfg.core.listen = 'http://127.0.0.1:0';
  const events: EveEvent[] = [];
  const running = await startCore(cfg, {
    users: new StaticUserDirectory([]),
    events: { emit: (e: EveEvent) => void events.push(e), close: () => {} },
    logger: silentLogger,
    clock: systemClock,
    supervisor: new Supervisor(silentLogger),
    restSecret: 'x'.repeat(43),
  });
  t.teardown(() => running.stop());
  const secrets = ['s3cr3tT0kenValue9f8e7d6c5b4a', 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln', 'hunter2/with+slash=='];
  for (const s of secrets) {
    const r = await fetch(`${running.url}/v1/login`, { method: 'POST', headers: { authorization: s } });
    await r.arrayBuffer();
    t.equal(r.status, 401);
  }
  const r = await fetch(`${running.url}/v1/login`, { method: 'POST', headers: { authorization: 'Bearer abc.def' } });
  await r.arrayBuffer();
  const auth = events.filter((e) => e.event_type === 'auth').map((e) => (e as unknown as { auth: { mechanism: string } }).auth);
  t.equal(auth.length, 4);
  const text = JSON.stringify(events).toLowerCase();
  for (const s of secrets) t.notOk(text.includes(s.slice(0, 12).toLowerCase()), 'the secret is not in any event');
  t.same(
    auth.map((a) => a.mechanism),
    ['other', 'other', 'other', 'bearer'],
    'a registered scheme is named, anything else is other',
  );
});

t.test('a mechanism that fails with an exception: 500, still counted and reported', async (t) => {
  const cfg = defaultConfig();
  cfg.core.listen = 'http://127.0.0.1:0';
  const events: EveEvent[] = [];
  const running = await startCore(cfg, {
    users: new StaticUserDirectory([]),
    events: { emit: (e: EveEvent) => void events.push(e), close: () => {} },
    logger: silentLogger,
    clock: systemClock,
    supervisor: new Supervisor(silentLogger),
    restSecret: 'x'.repeat(43),
    modules: [
      (core) =>
        addLoginMechanism(core, {
          scheme: 'Broken',
          challenge: () => 'Broken',
          verify: async () => {
            throw new Error('a parser bug');
          },
        }),
    ],
  });
  t.teardown(() => running.stop());
  for (let i = 0; i < running.core.limiter.max; i++) {
    const r = await fetch(`${running.url}/v1/login`, { method: 'POST', headers: { authorization: 'Broken x' } });
    await r.arrayBuffer();
    t.equal(r.status, 500);
  }
  const failures = events.filter((e) => (e as unknown as { auth?: { mechanism?: string } }).auth?.mechanism === 'Broken');
  t.equal(failures.length, running.core.limiter.max, 'each is an auth event');
  t.match((failures[0] as unknown as { auth: unknown }).auth, { result: 'failure', reason: 'internal' });
  const next = await fetch(`${running.url}/v1/login`, { method: 'POST', headers: { authorization: 'Broken x' } });
  await next.arrayBuffer();
  t.equal(next.status, 429, 'counted toward the source limit (core.md §2)');
});

t.test("a mechanism's own 429 (Negotiate: too many in progress) is not a failed authentication", async (t) => {
  const cfg = defaultConfig();
  cfg.core.listen = 'http://127.0.0.1:0';
  const events: EveEvent[] = [];
  const running = await startCore(cfg, {
    users: new StaticUserDirectory([]),
    events: { emit: (e: EveEvent) => void events.push(e), close: () => {} },
    logger: silentLogger,
    clock: systemClock,
    supervisor: new Supervisor(silentLogger),
    restSecret: 'x'.repeat(43),
    modules: [
      (core) =>
        addLoginMechanism(core, {
          scheme: 'Busy',
          challenge: () => 'Busy',
          claimedUser: () => 'dora',
          verify: async () => {
            throw new CoreError('rate_limited', 'too many logins are in progress; retry in a moment', { 'retry-after': '1' });
          },
        }),
    ],
  });
  t.teardown(() => running.stop());
  for (let i = 0; i < running.core.limiter.max + 2; i++) {
    const r = await fetch(`${running.url}/v1/login`, { method: 'POST', headers: { authorization: 'Busy x' } });
    await r.arrayBuffer();
    t.equal(r.status, 429);
    t.equal(r.headers.get('retry-after'), '1', "the mechanism's own 429, not the source limit's");
  }
  t.equal(running.core.limiter.retryAfter('127.0.0.1'), 0, 'the source is not limited');
  t.doesNotThrow(() => running.core.lockout.check('dora'), 'the name is not locked');
  t.ok(
    events.some((e) => (e as unknown as { auth?: { reason?: string } }).auth?.reason === 'rate_limited'),
    'still an auth event',
  );
});
