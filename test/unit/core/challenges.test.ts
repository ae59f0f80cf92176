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

t.test("one source cannot fill the store and evict everyone else's challenges", async (t) => {
  const clock = new ManualClock();
  const s = new ChallengeStore(clock, { max: 100, maxPerSource: 10 });
  const victim = s.issue('192.0.2.1');
  for (let i = 0; i < 500; i++) s.issue('198.51.100.7');
  t.ok(s.check(victim.challenge, '192.0.2.1').ok, "the other source's challenge is still answerable");
  t.equal(s.size, 11, 'the flooding source holds at most maxPerSource');
  // Its own newest challenges stay answerable; its oldest went first.
  const mine = s.issue('198.51.100.7');
  t.ok(s.check(mine.challenge, '198.51.100.7').ok);
  // Expiry and global eviction keep the per-source counts right.
  clock.advance(60_000);
  s.sweep();
  t.equal(s.size, 0);
  for (let i = 0; i < 10; i++) s.issue('198.51.100.7');
  t.equal(s.size, 10, 'a fresh window: the full per-source allowance again');
  const small = new ChallengeStore(clock, { max: 3, maxPerSource: 2 });
  small.issue('a');
  small.issue('b');
  small.issue('c');
  small.issue('c'); // evicts the global oldest (a's)
  small.issue('a');
  small.issue('a');
  small.issue('a');
  t.ok(small.size <= 3, 'still bounded globally');
});
