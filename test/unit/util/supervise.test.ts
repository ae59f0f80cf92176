import t from 'tap';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { Supervisor } from '../../../src/util/supervise.js';

function logger() {
  const lines: string[] = [];
  const dest = new Writable({
    write(c, _e, cb) {
      lines.push(String(c));
      cb();
    },
  });
  return { log: pino({ level: 'info' }, dest), lines };
}

t.test('an exception in a guarded callback is counted, logged, contained', async (t) => {
  const { log, lines } = logger();
  const sup = new Supervisor(log);
  const closed: string[] = [];
  const cb = sup.guard(
    'turn.udp',
    (x: string) => {
      if (x === 'bad') throw new Error('boom');
    },
    (_e, x) => closed.push(x),
  );
  cb('good');
  cb('bad');
  cb('bad');
  t.same(closed, ['bad', 'bad'], 'onFail closes the offender each time');
  t.equal(sup.failures.get('turn.udp'), 2);
  t.equal(sup.total, 2);
  await new Promise((r) => setImmediate(r));
  t.equal(lines.length, 2);
  t.match(lines[0], /"where":"turn.udp"/);
  t.match(lines[0], /boom/);
});

t.test('run returns the value or undefined; a failing onFail is counted too', async (t) => {
  const { log } = logger();
  const sup = new Supervisor(log);
  t.equal(
    sup.run('a', () => 5),
    5,
  );
  t.equal(
    sup.run(
      'b',
      () => {
        throw new Error('x');
      },
      () => {
        throw new Error('y');
      },
    ),
    undefined,
  );
  t.equal(sup.failures.get('b'), 1);
  t.equal(sup.failures.get('b.onFail'), 1);
});

t.test('logging is rate-limited per call site', async (t) => {
  const { log, lines } = logger();
  let now = 0;
  const sup = new Supervisor(log, 3, () => now);
  for (let i = 0; i < 10; i++) sup.caught('loop', new Error('again'));
  await new Promise((r) => setImmediate(r));
  t.equal(lines.length, 3, 'three lines in the first minute');
  now = 61_000;
  sup.caught('loop', new Error('again'));
  await new Promise((r) => setImmediate(r));
  t.equal(lines.length, 4, 'a new minute logs again');
  t.equal(sup.failures.get('loop'), 11, 'every exception is counted');
});
