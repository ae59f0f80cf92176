// Child process for the kill -9 test: counts traffic against a quota, flushes to the
// SQLite store every 50 ms and prints the flushed total after each flush.
import { QuotaTracker } from '../../src/policy/quota.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { systemClock } from '../../src/util/clock.js';

const store = new SqliteStore(process.argv[2]!);
const q = new QuotaTracker(
  [{ id: 'daily', scope: 'user', users: ['carol'], groups: [], limit: 1e12, period: 'day', vital: [] }],
  systemClock,
  'UTC',
  store,
);
setInterval(() => {
  for (let i = 0; i < 100; i++) q.account('carol', [], '203.0.113.5', 1000);
  q.flush();
  process.stdout.write(`flushed ${q.usage('daily', 'user:carol')}\n`);
}, 50);
