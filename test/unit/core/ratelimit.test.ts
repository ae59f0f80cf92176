// The failed-authentication limit (core.md §2): 10 per source per minute, then 429
// rate_limited with Retry-After until the minute has passed; bounded table.
import t from 'tap';
import { ManualClock } from '../../../src/util/clock.js';
import { FailureLimiter, UserLockout } from '../../../src/core/ratelimit.js';
import { CoreError } from '../../../src/core/errors.js';

t.test('10 failures per source per minute, then 429 with Retry-After until the minute is over', async (t) => {
  const clock = new ManualClock();
  const l = new FailureLimiter(clock);
  for (let i = 0; i < 9; i++) l.fail('192.0.2.1');
  t.doesNotThrow(() => l.check('192.0.2.1'), '9 failures: still allowed');
  l.fail('192.0.2.1');
  let caught: CoreError | null = null;
  try {
    l.check('192.0.2.1');
  } catch (e) {
    caught = e as CoreError;
  }
  t.ok(caught instanceof CoreError);
  t.equal(caught!.status, 429);
  t.equal(caught!.code, 'rate_limited');
  t.equal(caught!.headers['retry-after'], '60');
  t.doesNotThrow(() => l.check('192.0.2.2'), 'another source is not affected');
  clock.advance(45_000);
  t.equal(l.retryAfter('192.0.2.1'), 15, 'Retry-After counts down');
  clock.advance(15_000);
  t.doesNotThrow(() => l.check('192.0.2.1'), 'the minute has passed');
  l.fail('192.0.2.1');
  t.doesNotThrow(() => l.check('192.0.2.1'), 'a new window starts from zero');
});

t.test('bounded: expired windows go first, then the oldest', async (t) => {
  const clock = new ManualClock();
  const l = new FailureLimiter(clock, { maxSources: 3 });
  l.fail('a');
  clock.advance(61_000);
  l.fail('b');
  l.fail('c');
  l.fail('d');
  t.equal(l.size, 3, 'a (expired) made room');
  l.fail('e');
  t.equal(l.size, 3, 'the oldest (b) went');
  t.equal(l.retryAfter('b'), 0);
});

t.test('per-user lockout: 10 failures for one name from anywhere lock it, longer each time, a success resets', async (t) => {
  const clock = new ManualClock();
  const l = new UserLockout(clock);
  for (let i = 0; i < 9; i++) l.fail('alice');
  t.doesNotThrow(() => l.check('alice'));
  l.fail('alice');
  t.throws(() => l.check('alice'), { code: 'rate_limited' }, 'locked at the 10th failure');
  t.equal(l.retryAfter('alice'), 60);
  t.doesNotThrow(() => l.check('bob'), 'other names are not affected');
  clock.advance(60_000);
  t.doesNotThrow(() => l.check('alice'), 'the first lock lasts one window');
  for (let i = 0; i < 10; i++) l.fail('alice');
  t.equal(l.retryAfter('alice'), 120, 'the second lock lasts twice as long');
  clock.advance(120_000);
  l.succeed('alice');
  for (let i = 0; i < 10; i++) l.fail('alice');
  t.equal(l.retryAfter('alice'), 60, 'after a success the next lock starts again at one window');
  const capped = new UserLockout(clock, { maxLockMs: 300_000 });
  for (let k = 0; k < 12; k++) {
    for (let i = 0; i < 10; i++) capped.fail('x');
    t.ok(capped.retryAfter('x') <= 300, 'capped');
    clock.advance(capped.retryAfter('x') * 1000);
  }
  const small = new UserLockout(clock, { maxUsers: 3 });
  for (const n of ['a', 'b', 'c', 'd', 'e']) small.fail(n);
  t.ok(small.size <= 3, 'bounded');
});

t.test('an IPv6 source counts by its /64: new interface ids do not buy new guesses', async (t) => {
  const clock = new ManualClock();
  const l = new FailureLimiter(clock);
  for (let i = 0; i < 10; i++) l.fail(`2001:db8:5:6::${(i + 1).toString(16)}`);
  t.throws(() => l.check('2001:db8:5:6:ffff::1'), { code: 'rate_limited' }, 'any address of the /64 is over the limit');
  t.doesNotThrow(() => l.check('2001:db8:5:7::1'), 'the next /64 is another source');
  t.equal(l.size, 1, 'one entry for the whole /64');
});
