import t from 'tap';
import { EventEmitter } from 'node:events';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { installProcessHandlers, Supervisor } from '../../../src/cli/main.js';
import { createLogger } from '../../../src/util/log.js';

t.test('uncaught exceptions and unhandled rejections are logged and counted by call site', async (t) => {
  const lines: Record<string, unknown>[] = [];
  const sup = new Supervisor(createLogger({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) }));
  const proc = new EventEmitter();
  const remove = installProcessHandlers(sup, proc);
  proc.emit('uncaughtException', new Error('boom'));
  proc.emit('unhandledRejection', 'a string reason');
  t.same(Object.fromEntries(sup.failures), { 'process.uncaught_exception': 1, 'process.unhandled_rejection': 1 });
  t.match(lines, [
    { where: 'process.uncaught_exception', err: { message: 'boom' }, msg: 'exception contained' },
    { where: 'process.unhandled_rejection', err: { message: 'a string reason' } },
  ]);
  remove();
  t.equal(proc.listenerCount('uncaughtException'), 0);
  t.equal(proc.listenerCount('unhandledRejection'), 0);
});

t.test('a real process with the handlers survives a throw from a timer and an unhandled rejection', async (t) => {
  const child = spawn(process.execPath, ['--import', 'tsx', join(process.cwd(), 'test/tools/uncaught-child.ts')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const code = await new Promise((r) => child.once('exit', r));
  t.equal(code, 0, 'exits normally when its work is done');
  const m = /alive (.*)\n/.exec(out);
  t.ok(m, `kept running after the exception (stderr: ${err.slice(0, 300)})`);
  t.same(JSON.parse(m![1]!), { 'process.uncaught_exception': 1, 'process.unhandled_rejection': 1 });
  t.match(err, /escaped every wrapper/, 'the exception was logged');
});
