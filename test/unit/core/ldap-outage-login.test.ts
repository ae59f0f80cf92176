// A directory outage during login (src/core/login.ts with a mechanism whose verify throws
// 503 unavailable, as Basic does when the directory cannot be reached): the answer is 503
// without challenges, an `auth` failure event with reason `unavailable`, counted per source
// but never toward the claimed name's lockout (an outage must not lock everyone out).
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

t.test('503 from the directory: no lockout of the name, an auth event', async (t) => {
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
          scheme: 'Outage',
          challenge: () => 'Outage',
          claimedUser: () => 'carol',
          verify: async () => {
            throw new CoreError('unavailable', 'the directory cannot be reached; try again later');
          },
        }),
    ],
  });
  t.teardown(() => running.stop());
  for (let i = 0; i < running.core.lockout.max; i++) {
    const r = await fetch(`${running.url}/v1/login`, { method: 'POST', headers: { authorization: 'Outage x' } });
    await r.arrayBuffer();
    t.equal(r.status, 503);
    t.equal(r.headers.get('www-authenticate'), null, 'no challenges on a 503');
  }
  t.doesNotThrow(() => running.core.lockout.check('carol'), 'carol is not locked out by the outage');
  t.equal(
    events.filter((e) => e.event_type === 'auth' && (e as { auth?: { reason?: string } }).auth?.reason === 'unavailable').length,
    running.core.lockout.max,
  );
  const next = await fetch(`${running.url}/v1/login`, { method: 'POST', headers: { authorization: 'Outage x' } });
  await next.arrayBuffer();
  t.equal(next.status, 429, 'the source limit still counts them (core.md §2)');
});
