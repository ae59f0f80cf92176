// The directory cache (src/core/directory/cache.ts): TTL, one lookup per name at a time,
// an outage answered from fresh-enough entries and then 503, bounds.
import t from 'tap';
import { DirectoryCache, DirectoryDown } from '../../../src/core/directory/cache.js';
import { CoreError } from '../../../src/core/errors.js';

function setup(o: { ttlMs?: number; graceMs?: number; max?: number; maxInFlight?: number } = {}) {
  let now = 1_000_000;
  const stale: string[] = [];
  const cache = new DirectoryCache<string | null>({
    ttlMs: o.ttlMs ?? 10_000,
    graceMs: o.graceMs ?? 5_000,
    max: o.max ?? 100,
    ...(o.maxInFlight !== undefined ? { maxInFlight: o.maxInFlight } : {}),
    now: () => now,
    onStale: (k) => stale.push(k),
  });
  return { cache, stale, advance: (ms: number) => (now += ms) };
}

t.test('within the TTL the directory is not asked; after it, asked again', async (t) => {
  const { cache, advance } = setup();
  let calls = 0;
  const load = async () => `v${++calls}`;
  t.equal(await cache.get('alice', load), 'v1');
  advance(9_999);
  t.equal(await cache.get('alice', load), 'v1');
  advance(1);
  t.equal(await cache.get('alice', load), 'v2', 'at the TTL the answer is refreshed');
  t.equal(calls, 2);
});

t.test('"no such user" is an answer too (cached, never an outage)', async (t) => {
  const { cache } = setup();
  let calls = 0;
  t.equal(await cache.get('ghost', async () => (calls++, null)), null);
  t.equal(await cache.get('ghost', async () => (calls++, null)), null);
  t.equal(calls, 1);
});

t.test('concurrent lookups of one name share one directory call', async (t) => {
  const { cache } = setup();
  let calls = 0;
  let release!: (v: string) => void;
  const load = () => (calls++, new Promise<string>((r) => (release = r)));
  const a = cache.get('bob', load);
  const b = cache.get('bob', load);
  release('x');
  t.same(await Promise.all([a, b]), ['x', 'x']);
  t.equal(calls, 1);
});

t.test('an outage: stale answers up to ttl + grace, then 503; never an admit', async (t) => {
  const { cache, stale, advance } = setup({ ttlMs: 10_000, graceMs: 5_000 });
  const down = async (): Promise<string | null> => {
    throw new DirectoryDown('connect failed');
  };
  t.equal(await cache.get('alice', async () => 'groups:trading'), 'groups:trading');
  advance(12_000);
  t.equal(await cache.get('alice', down), 'groups:trading', 'stale within the grace');
  t.equal(await cache.get('alice', down), 'groups:trading');
  t.same(stale, ['alice'], 'the stale answer is logged once per entry');
  advance(3_000); // 15 s old: past ttl + grace
  const e = await cache.get('alice', down).catch((x: unknown) => x);
  t.ok(e instanceof CoreError && e.code === 'unavailable' && e.status === 503, '503 unavailable');
  t.notOk((e as Error).message.includes('trading'));
  // And it stays refused (the expired entry is gone), until the directory answers again.
  const e2 = await cache.get('alice', down).catch((x: unknown) => x);
  t.equal((e2 as CoreError).code, 'unavailable');
  t.equal(await cache.get('alice', async () => 'back'), 'back');
  // A name never looked up: 503 at once.
  const e3 = await cache.get('carol', down).catch((x: unknown) => x);
  t.equal((e3 as CoreError).status, 503);
});

t.test('grace 0: the first lookup past the TTL during an outage is 503', async (t) => {
  const { cache, advance } = setup({ ttlMs: 1_000, graceMs: 0 });
  await cache.get('a', async () => 'x');
  advance(1_000);
  const e = await cache.get('a', async () => Promise.reject(new DirectoryDown('down'))).catch((x: unknown) => x);
  t.equal((e as CoreError).code, 'unavailable');
});

t.test('errors that are not outages pass through, and are not cached', async (t) => {
  const { cache } = setup();
  await t.rejects(
    cache.get('a', async () => Promise.reject(new TypeError('bug'))),
    TypeError,
  );
  t.equal(await cache.get('a', async () => 'ok'), 'ok');
});

t.test('bounded: least recently used out first; lookups in flight bounded', async (t) => {
  const { cache } = setup({ max: 3, maxInFlight: 2 });
  for (const k of ['a', 'b', 'c']) await cache.get(k, async () => k);
  await cache.get('a', async () => 'A'); // touch a (fresh: still 'a')
  await cache.get('d', async () => 'd'); // evicts b
  t.equal(cache.size, 3);
  t.equal(cache.peek('b'), undefined);
  t.equal(cache.peek('a'), 'a');
  const hang = () => new Promise<string>(() => {});
  void cache.get('x', hang);
  void cache.get('y', hang);
  const e = await cache.get('z', hang).catch((x: unknown) => x);
  t.equal((e as CoreError).code, 'unavailable', 'beyond the in-flight bound: 503 at once');
});
