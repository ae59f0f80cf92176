// Verdict bookkeeping of the NFQUEUE reader over a fake binding (the kernel path:
// test/e2e/pcp-firewall-nfqueue.test.ts): holds are bounded in count and time, close() gives
// every held packet the fail-mode verdict, a throwing handler gets the fail-mode verdict.
import t from 'tap';
import { NfQueueReader, loadNfqueue, type NfqueueBinding, type NfHandler } from '../../src/pcp/firewall/nfqueue.js';

interface Fake {
  binding: NfqueueBinding;
  /** Delivers a packet as the native side would. */
  deliver(id: number, hook?: number): void;
  verdicts: [number, 0 | 1, number][];
  closed: () => boolean;
  args: unknown[];
}

function fake(): Fake {
  const verdicts: [number, 0 | 1, number][] = [];
  let cb: ((id: number, p: Buffer, mark: number, hook: number, i: number, o: number) => void) | null = null;
  let closed = false;
  const args: unknown[] = [];
  const binding = {
    conntrackDelete: () => Promise.resolve(0),
    NfQueue: class {
      constructor(...a: unknown[]) {
        args.push(...a.slice(0, 5));
        cb = a[5] as typeof cb;
      }
      verdict(id: number, v: 0 | 1, mark: number) {
        verdicts.push([id, v, mark]);
        return !closed;
      }
      close() {
        closed = true;
      }
      ref() {}
      stats() {
        return { received: 0, enobufs: 0, errors: 0, exceptions: 0, open: !closed };
      }
    },
  } as unknown as NfqueueBinding;
  return { binding, verdicts, closed: () => closed, args, deliver: (id, hook = 2) => cb!(id, Buffer.from([0x45]), 7, hook, 1, 2) };
}

t.test('accept / drop at once; the packet as the handler sees it', async (t) => {
  const f = fake();
  const seen: unknown[] = [];
  const h: NfHandler = (p) => (seen.push(p), p.id === 2 ? 'drop' : 'accept');
  const q = NfQueueReader.openWith(f.binding, { queue: 5, maxLen: 99, failOpen: true, batch: 8, rcvbuf: 1 }, h);
  t.same(f.args, [5, 99, true, 8, 1], 'queue options reach the binding');
  f.deliver(1);
  f.deliver(2);
  t.same(f.verdicts, [
    [1, 1, -1],
    [2, 0, -1],
  ]);
  t.match(seen[0], { id: 1, mark: 7, hook: 'forward', indev: 1, outdev: 2 });
  t.ok(Buffer.isBuffer((seen[0] as { payload: Buffer }).payload));
  t.match(q.stats(), { accepted: 1, dropped: 1, held: 0 });
});

t.test('hold: a later verdict by id; unknown ids refused', async (t) => {
  const f = fake();
  const q = NfQueueReader.openWith(f.binding, { queue: 0 }, () => 'hold');
  f.deliver(10);
  t.equal(q.heldCount, 1);
  t.same(f.verdicts, [], 'no verdict yet');
  t.equal(q.verdict(10, 'accept', 5), true);
  t.same(f.verdicts, [[10, 1, 5]], 'accepted later, with the mark');
  t.equal(q.verdict(10, 'accept'), false, 'a second verdict for the id is refused');
  t.equal(q.verdict(99, 'drop'), false, 'an id never held is refused');
  q.close();
});

t.test('hold time bound: the timeout verdict (default: the fail mode)', async (t) => {
  const f = fake();
  const q = NfQueueReader.openWith(f.binding, { queue: 0, maxHoldMs: 30 }, () => 'hold');
  f.deliver(1);
  await new Promise((r) => setTimeout(r, 80));
  t.same(f.verdicts, [[1, 0, -1]], 'fail closed: dropped after maxHoldMs');
  t.equal(q.stats().holdTimeouts, 1);
  t.equal(q.verdict(1, 'accept'), false, 'too late');
  const f2 = fake();
  const q2 = NfQueueReader.openWith(f2.binding, { queue: 0, maxHoldMs: 30, failOpen: true }, () => 'hold');
  f2.deliver(1);
  await new Promise((r) => setTimeout(r, 80));
  t.same(f2.verdicts, [[1, 1, -1]], 'fail open: accepted after maxHoldMs');
  q.close();
  q2.close();
});

t.test('hold count bound: the oldest held gets the fail-mode verdict', async (t) => {
  const f = fake();
  const q = NfQueueReader.openWith(f.binding, { queue: 0, maxHeld: 2 }, () => 'hold');
  f.deliver(1);
  f.deliver(2);
  f.deliver(3);
  t.equal(q.heldCount, 2);
  t.same(f.verdicts, [[1, 0, -1]], 'id 1 (oldest) dropped');
  t.equal(q.stats().holdOverflow, 1);
  t.equal(q.verdict(3, 'accept'), true);
  q.close();
});

t.test('close: every held packet gets the fail-mode verdict, then the queue closes', async (t) => {
  const f = fake();
  const q = NfQueueReader.openWith(f.binding, { queue: 0 }, () => 'hold');
  f.deliver(1);
  f.deliver(2);
  q.close();
  t.same(f.verdicts, [
    [1, 0, -1],
    [2, 0, -1],
  ]);
  t.ok(f.closed());
  t.equal(q.heldCount, 0);
  q.close(); // idempotent
  const g = fake();
  const qo = NfQueueReader.openWith(g.binding, { queue: 0, failOpen: true }, () => 'hold');
  g.deliver(4);
  qo.close();
  t.same(g.verdicts, [[4, 1, -1]], 'fail open: accepted on close');
});

t.test('a throwing or undecided handler: fail-mode verdict, counted, no crash', async (t) => {
  const f = fake();
  let n = 0;
  const q = NfQueueReader.openWith(f.binding, { queue: 0 }, () => {
    if (n++ === 0) throw new Error('boom');
    return undefined;
  });
  f.deliver(1);
  f.deliver(2);
  t.same(f.verdicts, [
    [1, 0, -1],
    [2, 0, -1],
  ]);
  t.equal(q.stats().exceptions, 1);
  q.close();
});

t.test('the real binding, when built, loads with its API (else the reason is given)', async (t) => {
  const { binding, reason } = loadNfqueue();
  if (binding) {
    t.type(binding.NfQueue, 'function');
    t.type(binding.conntrackDelete, 'function');
    t.throws(() => new binding.NfQueue(70000, 1, false, 1, 0, () => {}), RangeError, 'bad queue number refused');
    t.throws(() => binding.conntrackDelete(null, 4, 17, 'not-an-ip', 0, null, 0), RangeError, 'bad address refused');
    t.throws(() => binding.conntrackDelete(null, 5 as 4, 17, null, 0, null, 0), RangeError, 'bad family refused');
  } else t.match(reason, /gatehouse_nfqueue/);
});
