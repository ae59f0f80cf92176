// Single-use challenges (core.md §5, §6): 24 random bytes, base64, 60 s, bound to the
// source that asked, spent once; bounded.
import t from 'tap';
import { ManualClock } from '../../../src/util/clock.js';
import { ChallengeStore } from '../../../src/core/challenges.js';

t.test('issue, check, take: once, in time, from the same source', async (t) => {
  const clock = new ManualClock();
  const s = new ChallengeStore(clock);
  const c = s.issue('192.0.2.1');
  t.equal(Buffer.from(c.challenge, 'base64').length, 24);
  t.equal(c.expires, Math.ceil((clock.now() + 60_000) / 1000));
  t.same(s.check(c.challenge, '192.0.2.9'), { ok: false, reason: 'elsewhere' });
  const r = s.take(c.challenge, '192.0.2.1');
  t.ok(r.ok);
  if (r.ok) t.same(r.bytes, Buffer.from(c.challenge, 'base64'));
  t.same(s.take(c.challenge, '192.0.2.1'), { ok: false, reason: 'spent' }, 'a replay');
  t.same(s.check('bm9wZQ==', '192.0.2.1'), { ok: false, reason: 'unknown' });
  const d = s.issue('192.0.2.1');
  clock.advance(60_000);
  t.same(s.take(d.challenge, '192.0.2.1'), { ok: false, reason: 'expired' });
  s.sweep();
  t.equal(s.size, 0, 'swept once unanswerable');
  const e = s.issue('192.0.2.1');
  s.spend(e.challenge);
  t.same(s.check(e.challenge, '192.0.2.1'), { ok: false, reason: 'spent' }, 'spent without a check (transfer: every answer spends)');
  const small = new ChallengeStore(clock, { max: 2 });
  const first = small.issue('a');
  small.issue('a');
  small.issue('a');
  t.equal(small.size, 2, 'bounded');
  t.same(small.check(first.challenge, 'a'), { ok: false, reason: 'unknown' }, 'the oldest went first');
});
