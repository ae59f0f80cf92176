// Child process for the process-handler test: installs main.ts's handlers, then throws
// from a timer and rejects a promise nobody awaits; prints what the Supervisor counted.
import { installProcessHandlers, Supervisor } from '../../src/cli/main.js';
import { createLogger } from '../../src/util/log.js';

const sup = new Supervisor(createLogger({ level: 'error' }));
installProcessHandlers(sup);
setTimeout(() => {
  throw new Error('escaped every wrapper');
}, 1);
setTimeout(() => void Promise.reject(new Error('nobody awaited this')), 2);
setTimeout(() => {
  process.stdout.write(`alive ${JSON.stringify(Object.fromEntries(sup.failures))}\n`);
}, 50);
