/** PendingReplies (src/util/pending-replies.ts): answers by id, a deadline each, a bound on how many wait. */
import t from 'tap';
import { PendingReplies } from '../../../src/util/pending-replies.js';

t.test('an answer reaches its request; a late or unknown one is refused', async (t) => {
  const p = new PendingReplies<string>(4, 1000);
  let sent = -1;
  const asked = p.ask((id) => (sent = id));
  t.equal(p.size, 1);
  t.notOk(p.answer(sent + 1, 'other'), 'an id nobody asked');
  t.ok(p.answer(sent, 'yes'), 'delivered');
  t.equal(await asked, 'yes');
  t.equal(p.size, 0);
  t.notOk(p.answer(sent, 'again'), 'a second answer to the same id is late');
});

t.test('no answer in time: null, and the id is forgotten', async (t) => {
  const p = new PendingReplies<string>(4, 30);
  let sent = -1;
  t.equal(await p.ask((id) => (sent = id)), null);
  t.equal(p.size, 0);
  t.notOk(p.answer(sent, 'late'), 'late');
});

t.test('at most `max` wait: the next is null at once, without sending', async (t) => {
  const p = new PendingReplies<number>(2, 1000);
  const ids: number[] = [];
  const a = p.ask((id) => ids.push(id));
  const b = p.ask((id) => ids.push(id));
  let sentThird = false;
  t.equal(await p.ask(() => (sentThird = true)), null);
  t.notOk(sentThird, 'nothing sent beyond the bound');
  t.equal(new Set(ids).size, 2, 'distinct ids');
  ids.forEach((id, i) => p.answer(id, i));
  t.same(await Promise.all([a, b]), [0, 1]);
});
