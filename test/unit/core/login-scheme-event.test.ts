// POST /v1/login with an Authorization whose scheme the core does not offer: the `auth`
// failure event names the scheme only when it is a registered HTTP authentication scheme
// (RFC 9110 §16.4), else `other`. A scheme-less Authorization (a bare token or password
// pasted by a client) would otherwise put the secret itself, up to Node's 16 KiB header
// limit, into the event as `mechanism`.
import t from 'tap';
import { startCore } from '../../../src/core/index.js';
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
