import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../src/util/clock.js';
import { QuotaTracker, type QuotaCrossing } from '../../../src/policy/quota.js';
import { SqliteStore } from '../../../src/store/sqlite.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';

const quotas = parseRuleFile(
  `quotas:
  - id: contractors-daily
    groups: [contractors]
    limit: 1000B
    period: day
    vital: [10.20.0.0/16]
  - id: team-weekly
    scope: group
    groups: [sales]
    limit: 1500B
    period: week
`,
  'q.yaml',
).quotas;

t.test('over quota drops non-vital traffic; vital counts but passes; one event per crossing', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 10, 22, 10));
  const crossings: QuotaCrossing[] = [];
  const q = new QuotaTracker(quotas, clock, 'UTC', null, (c) => crossings.push(c));
  t.equal(q.account('bob', ['contractors'], '203.0.113.9', 600), 'pass');
  t.equal(q.account('bob', ['contractors'], '10.20.3.4', 500), 'pass', 'vital: counted, never cut');
  t.equal(q.usage('contractors-daily', 'user:bob'), 1100);
  t.equal(crossings.length, 1, 'crossing reported once');
  t.match(crossings[0], { quota: 'contractors-daily', subject: 'user:bob', window: 'day:2026-11-22', limit: 1000 });
  t.equal(q.account('bob', ['contractors'], '203.0.113.9', 10), 'drop', 'non-vital dropped over quota');
  t.equal(q.account('bob', ['contractors'], '10.20.3.4', 10), 'pass', 'vital still passes');
  t.equal(crossings.length, 1, 'no second event in the same window');
  t.equal(q.account('dave', ['contractors'], '203.0.113.9', 10), 'pass', 'scope user: each user has the whole limit');
  t.equal(q.account('eve', ['staff'], '203.0.113.9', 1e9), 'pass', 'not selected');
  // The next day starts a new window.
  clock.advance(14 * 3_600_000);
  t.equal(q.account('bob', ['contractors'], '203.0.113.9', 10), 'pass');
  t.equal(q.usage('contractors-daily', 'user:bob'), 10);
  q.account('bob', ['contractors'], '203.0.113.9', 2000);
  t.equal(crossings.length, 2, 'a new window crossing is reported again');
});

t.test('scope group: members share one allowance over an ISO week', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 10, 16, 1)); // Monday
  const q = new QuotaTracker(quotas, clock, 'UTC', null);
  q.account('s1', ['sales'], '203.0.113.1', 1000);
  t.equal(q.account('s2', ['sales'], '203.0.113.1', 600), 'pass');
  t.equal(q.account('s3', ['sales'], '203.0.113.1', 1), 'drop');
  clock.advance(6 * 86_400_000); // Sunday: same week
  t.equal(q.account('s3', ['sales'], '203.0.113.1', 1), 'drop');
  clock.advance(86_400_000); // next Monday
  t.equal(q.account('s3', ['sales'], '203.0.113.1', 1), 'pass');
});

t.test('state survives a restart through the SQLite store', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-quota-'));
  const clock = new ManualClock(Date.UTC(2026, 10, 22, 10));
  const s1 = new SqliteStore(join(dir, 'state.db'));
  const q1 = new QuotaTracker(quotas, clock, 'UTC', s1);
  q1.account('bob', ['contractors'], '203.0.113.9', 900);
  q1.flush();
  s1.close();
  const s2 = new SqliteStore(join(dir, 'state.db'));
  const q2 = new QuotaTracker(quotas, clock, 'UTC', s2);
  t.equal(q2.usage('contractors-daily', 'user:bob'), 900);
  t.equal(q2.account('bob', ['contractors'], '203.0.113.9', 200), 'pass');
  t.equal(q2.account('bob', ['contractors'], '203.0.113.9', 1), 'drop');
  s2.close();
});

t.test('kill -9 loses at most one flush interval', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-quota-'));
  const db = join(dir, 'state.db');
  const child = spawn(process.execPath, ['--import', 'tsx', join(process.cwd(), 'test/tools/quota-writer.ts'), db], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let lastFlushed = 0;
  let flushes = 0;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('writer made no progress')), 60_000);
    child.stdout.on('data', (d: Buffer) => {
      for (const m of d.toString().matchAll(/flushed (\d+)/g)) {
        lastFlushed = Number(m[1]);
        if (++flushes === 8) {
          clearTimeout(timer);
          child.kill('SIGKILL');
          resolve();
        }
      }
    });
  });
  await new Promise((r) => child.once('exit', r));
  const store = new SqliteStore(db);
  const rows = store.load([
    `day:${new Date().toISOString().slice(0, 10)}`,
    `day:${new Date(Date.now() - 3_600_000).toISOString().slice(0, 10)}`,
  ]);
  store.close();
  const saved = rows.find((r) => r.subject === 'user:carol')?.bytes ?? 0;
  t.ok(saved >= lastFlushed, `everything reported flushed (${lastFlushed}) is in the store (${saved})`);
  t.ok(saved <= lastFlushed + 100_000, 'at most one more interval than reported');
});

t.test('a store that cannot write (SQLITE_FULL): counted, logged once, nothing thrown, counters kept and saved later', async (t) => {
  const Database = (await import('better-sqlite3')).default;
  const { QuotaFlushHealth } = await import('../../../src/policy/quota.js');
  const { createLogger } = await import('../../../src/util/log.js');
  const logged: string[] = [];
  const log = createLogger({ level: 'info' }, { write: (s: string) => void logged.push(JSON.parse(s).msg) });
  const dir = mkdtempSync(join(tmpdir(), 'gh-quota-'));
  const clock = new ManualClock(Date.UTC(2026, 10, 22, 10));
  const real = new SqliteStore(join(dir, 'state.db'));
  let full = true;
  const store = {
    load: (w: string[]) => real.load(w),
    save(rows: Parameters<SqliteStore['save']>[0]) {
      if (full) throw new Database.SqliteError('database or disk is full', 'SQLITE_FULL');
      real.save(rows);
    },
  };
  const health = new QuotaFlushHealth(log);
  const q = new QuotaTracker(quotas, clock, 'UTC', store, () => {}, health);
  q.account('bob', ['contractors'], '203.0.113.9', 300);
  t.equal(q.flush(), false, 'not saved');
  q.account('bob', ['contractors'], '203.0.113.9', 200);
  t.doesNotThrow(() => q.flush());
  t.same(health.failures, { sqlite_full: 2 });
  t.equal(health.failing, true);
  t.equal(q.usage('contractors-daily', 'user:bob'), 500, 'counting goes on in memory');
  t.equal(logged.filter((m) => m.startsWith('quota counters cannot be saved')).length, 1, 'logged once');
  // A policy reload builds a new tracker from the store: flush the old one first, as the gateway does.
  full = false;
  t.equal(q.flush(), true, 'saved once the store has room');
  t.equal(health.failing, false);
  t.equal(logged.filter((m) => m === 'quota counters saved again').length, 1);
  const reopened = new QuotaTracker(quotas, clock, 'UTC', real);
  t.equal(reopened.usage('contractors-daily', 'user:bob'), 500, 'nothing lost across the failures');
  real.close();
});

t.test('merge (the cluster view) raises a count and cuts at the limit; a lower, older figure never uncuts', async (t) => {
  const clock = new ManualClock(Date.UTC(2026, 10, 22, 10));
  const q = new QuotaTracker(quotas, clock, 'UTC', null);
  t.equal(q.account('bob', ['contractors'], '203.0.113.9', 100), 'pass');
  t.ok(q.merge('contractors-daily', 'user:bob', 'day:2026-11-22', 1100), 'the quota exists');
  t.equal(q.account('bob', ['contractors'], '203.0.113.9', 0), 'drop', 'the cluster total crossed: cut here too');
  // A push reply older than the crossing message (another connection): 500 < 1100.
  q.merge('contractors-daily', 'user:bob', 'day:2026-11-22', 500);
  t.equal(q.usage('contractors-daily', 'user:bob'), 1100, 'the count is not lowered');
  t.equal(q.account('bob', ['contractors'], '203.0.113.9', 1), 'drop', 'still cut');
  t.notOk(q.merge('gone', 'user:bob', 'day:2026-11-22', 1), 'an unknown quota (a reload removed it)');
});
