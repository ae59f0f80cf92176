// Basic login's per-user lockout (src/core/basic-login.ts claimedUser, src/core/login.ts):
// LDAP compares user names with caseIgnoreMatch (RFC 4518 §2.2 case folding, §2.6.1
// insignificant spaces), so `Alice`, `ALICE` and ` alice ` bind as the same entry. They
// must count toward one lockout, or an attacker spread over many addresses gets `max`
// guesses per spelling instead of per user.
import t from 'tap';
import { startCore } from '../../../src/core/index.js';
import { addLoginMechanism } from '../../../src/core/login.js';
import { basicLockoutKey, basicMechanism } from '../../../src/core/basic-login.js';
import { CoreError } from '../../../src/core/errors.js';
import { defaultConfig } from '../../../src/config/config.js';
import { StaticUserDirectory } from '../../../src/store/users.js';
import { silentLogger } from '../../../src/util/log.js';
import { systemClock } from '../../../src/util/clock.js';
import { Supervisor } from '../../../src/util/supervise.js';

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`, 'utf8').toString('base64')}`;

t.test('the lockout key folds what an LDAP match ignores', async (t) => {
  for (const v of ['Alice', 'ALICE', ' alice', 'alice ', 'al\u00adice', 'al\u200bice', '\uff41lice'])
    t.equal(basicLockoutKey(v), 'alice', JSON.stringify(v));
  t.equal(basicLockoutKey('alice  smith'), 'alice smith', 'inner runs of spaces are one');
  t.not(basicLockoutKey('alice'), basicLockoutKey('alicia'));
});

t.test('spellings of one name share its lockout', async (t) => {
  const cfg = defaultConfig();
  cfg.core.listen = 'http://127.0.0.1:0';
  const running = await startCore(cfg, {
    users: new StaticUserDirectory([]),
    logger: silentLogger,
    clock: systemClock,
    supervisor: new Supervisor(silentLogger),
    restSecret: 'x'.repeat(43),
    modules: [
      (core) =>
        addLoginMechanism(core, {
          ...basicMechanism(core),
          verify: async () => {
            throw new CoreError('unauthenticated', 'the credentials are not valid');
          },
        }),
    ],
  });
  t.teardown(() => running.stop());
  const spellings = ['alice', 'Alice', 'ALICE', 'aLice', 'alIce', 'aliCe', 'alicE', ' alice', 'alice ', 'ALice'];
  t.equal(spellings.length, running.core.lockout.max);
  for (const s of spellings) {
    const r = await fetch(`${running.url}/v1/login`, { method: 'POST', headers: { authorization: basic(s, 'guess') } });
    await r.arrayBuffer();
    t.equal(r.status, 401);
  }
  t.throws(() => running.core.lockout.check(basicLockoutKey('alice')), { code: 'rate_limited' }, 'the one name is locked');
});
