// Policy distribution against a real redis-server: a reload on one node is validated and
// applied on the others (verdicts change there), a broken file publishes nothing, a bundle
// a node cannot validate leaves its rules in force (logged, counted), hash lists travel
// with the rules, a later node takes the cluster's policy, and a reload made while Redis
// was away is published when it is back.
import t from 'tap';
import { mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { ClusterLink } from '../../../src/cluster/link.js';
import { PolicySync, bundleHash, snapshotBundle, validateBundle } from '../../../src/cluster/policy-sync.js';
import { PolicyHolder } from '../../../src/policy/loader.js';
import { silentLogger } from '../../../src/util/log.js';
import { peerSkip } from '../../e2e/helpers/require-peer.js';
import { startTestRedis, until } from '../../e2e/helpers/redis.js';

const skip = peerSkip(t, 'redis-server');
const alice = { user: 'alice', groups: [] as string[] };
const msg = (s: string) => ({ kind: 'message' as const, direction: 'to_peer' as const, data: Buffer.from(s), size: s.length });
const rule = (id: string, word: string, action = 'block') =>
  `keys: { required: false, unverified: pass }\nrules:\n  - { id: ${id}, when: { contains: [${word}] }, action: ${action} }\n`;

t.test('bundles: snapshot, hash, validation with the loader; unsafe names refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-bundle-'));
  mkdirSync(join(dir, 'lists'));
  const h = createHash('sha256').update('evil').digest('hex');
  writeFileSync(join(dir, 'lists', 'bad.txt'), `${h}  evil.exe\n`);
  writeFileSync(join(dir, 'a.yaml'), rule('a', 'alpha'));
  writeFileSync(join(dir, 'b.yaml'), 'rules:\n  - { id: hashes, when: { sha256_list: lists/bad.txt }, action: block }\n');
  const holder = await PolicyHolder.open(dir, silentLogger);
  t.teardown(() => holder.close());
  const b = snapshotBundle(dir, holder.files, holder.current);
  t.same(
    b.files.map((f) => f.name),
    ['a.yaml', 'b.yaml'],
  );
  t.same(
    b.lists.map((l) => l.path),
    ['lists/bad.txt'],
  );
  t.match(bundleHash(b), /^[0-9a-f]{64}$/);
  const root = mkdtempSync(join(tmpdir(), 'gh-bundle-root-'));
  const v = await validateBundle(b, root, {});
  t.same(
    v.engine.rules.map((r) => r.id),
    ['a', 'hashes'],
  );

  await t.rejects(validateBundle({ files: [{ name: '../x.yaml', text: 'rules: []' }], lists: [] }, root, {}), /bad rule file name/);
  await t.rejects(
    validateBundle({ files: [{ name: 'a.yaml', text: 'rules: []' }], lists: [{ path: '../../etc/x', text: '' }] }, root, {}),
    /bad sha256_list path/,
  );
  // The loader's own message, with the file named as in the bundle (no temp path).
  await t.rejects(validateBundle({ files: [{ name: 'c.yaml', text: 'rules:\n  - { id: x, action: explode }\n' }], lists: [] }, root, {}), {
    message: /^c\.yaml:2:\d+: rules\[0\]\.action: expected one of/,
  });
  // A scan rule validates only where its scanner is configured (the same capabilities as a reload).
  const scan = { files: [{ name: 's.yaml', text: 'rules:\n  - { id: av, when: { scan: icap }, action: block }\n' }], lists: [] };
  await t.rejects(validateBundle(scan, root, { scanners: new Set() }), /needs a scanner/);
  t.ok(await validateBundle(scan, root, { scanners: new Set(['icap' as const]) }));
  t.same(
    readdirSync(root).filter((e) => e.startsWith('.incoming-') && e !== v.dir.split('/').pop()).length,
    1,
    'a refused bundle leaves no folder behind (only the accepted scan one is left, the caller moves it)',
  );

  // A list outside the rules folder cannot be distributed.
  writeFileSync(join(dir, 'b.yaml'), 'rules:\n  - { id: hashes, when: { sha256_list: ../elsewhere.txt }, action: block }\n');
  t.throws(
    () => snapshotBundle(dir, holder.files, { rules: [{ when: { sha256_list: '../elsewhere.txt' } }] } as never),
    /leaves the rules folder/,
  );
});

t.test('three nodes through redis-server', { skip }, async (t) => {
  const redis = await startTestRedis();
  t.teardown(() => redis.close());
  const cleanup: (() => unknown)[] = [];
  t.teardown(async () => {
    for (const c of cleanup.reverse()) await c();
  });
  const node = async (id: string, text: string | null) => {
    const base = mkdtempSync(join(tmpdir(), `gh-psync-${id}-`));
    const rules = join(base, 'rules');
    mkdirSync(rules);
    if (text !== null) writeFileSync(join(rules, 'main.yaml'), text);
    const holder = await PolicyHolder.open(rules, silentLogger, { scanners: new Set() });
    const link = new ClusterLink({ url: redis.url, nodeId: id });
    const sync = new PolicySync({ link, holder, dataDir: join(base, 'data'), pollMs: 300 });
    cleanup.push(
      () => link.close(),
      () => sync.close(),
      () => holder.close(),
    );
    t.ok(await link.ready(5000), `${id} connected`);
    sync.start();
    return { id, rules, holder, link, sync, verdict: (s: string) => holder.current.evaluate(alice, msg(s)).action };
  };
  const g1 = await node('gw1', rule('r1', 'alpha'));
  t.ok(await until(() => g1.sync.stats.published === 1, 3000), 'the first node seeds the empty cluster with its files');
  // A node joins with other (and newer) files: it takes the cluster's policy all the same.
  await new Promise((res) => setTimeout(res, 50));
  const g2 = await node('gw2', rule('stale', 'zeta'));
  t.ok(await until(() => g2.verdict('alpha') === 'block', 3000), 'gw2 applies the cluster policy');
  t.equal(g2.verdict('zeta'), 'forward', 'its own older files are not in force');
  t.equal(g2.sync.stats.published, 0);

  // A reload on gw3 applies on gw1 and gw2: their verdicts change.
  const g3 = await node('gw3', rule('r1', 'alpha'));
  writeFileSync(join(g3.rules, 'main.yaml'), rule('nightingale', 'PROJECT-NIGHTINGALE'));
  const r = await g3.sync.reload();
  t.ok(r.ok, r.message);
  t.match(r.message, /published to the cluster as version \d+/);
  t.ok(await until(() => g1.verdict('PROJECT-NIGHTINGALE') === 'block' && g2.verdict('PROJECT-NIGHTINGALE') === 'block', 3000));
  t.equal(g1.verdict('alpha'), 'forward', 'the old rule is gone on gw1');
  t.same(g1.sync.info().hash, g3.sync.info().hash, 'the same rule set everywhere');
  t.equal(g1.sync.info().origin, 'gw3');
  t.match(g1.holder.files[0], /cluster-policy/, 'gw1 runs the copy under DATA_DIR/cluster-policy');

  // A broken file on gw3: refused there, nothing published, everyone keeps the rules.
  const version = g3.sync.stats.version;
  writeFileSync(join(g3.rules, 'main.yaml'), 'rules:\n  - { id: bad, action: explode }\n');
  const bad = await g3.sync.reload();
  t.notOk(bad.ok);
  t.match(bad.message, /main\.yaml:2:\d+: rules\[0\]\.action/);
  await new Promise((res) => setTimeout(res, 700));
  const client = redis.client();
  t.equal(Number(await client.hget('gatehouse:policy', 'version')), version, 'nothing published');
  t.equal(g1.verdict('PROJECT-NIGHTINGALE'), 'block');

  // A bundle gw1 cannot validate (a scan rule, and gw1 has no scanner): its rules stay, counted.
  const scanBundle = { files: [{ name: 'x.yaml', text: 'rules:\n  - { id: av, when: { scan: icap }, action: block }\n' }], lists: [] };
  const h = bundleHash(scanBundle);
  await client.hset('gatehouse:policy', {
    version: 99,
    hash: h,
    origin: 'rogue',
    at: new Date().toISOString(),
    bundle: JSON.stringify(scanBundle),
  });
  await client.publish('gatehouse:policy', `99 ${h}`);
  t.ok(await until(() => g1.sync.stats.rejected === 1, 3000), 'refused and counted');
  t.match(g1.sync.stats.lastProblem, /x\.yaml:\d+:\d+: .*needs a scanner/);
  t.equal(g1.verdict('PROJECT-NIGHTINGALE'), 'block', 'the rules in force stay');
  await new Promise((res) => setTimeout(res, 700));
  t.equal(g1.sync.stats.rejected, 1, 'not retried until it changes');
  // A bundle that does not match its hash is refused too.
  await client.hset('gatehouse:policy', { version: 100, hash: 'f'.repeat(64), bundle: JSON.stringify({ files: [], lists: [] }) });
  await client.publish('gatehouse:policy', 'x');
  t.ok(await until(() => g1.sync.stats.rejected === 2, 3000));
  t.match(g1.sync.stats.lastProblem, /does not match its hash/);

  // gw2 reloads its (now good) files while Redis is away: applied there; published when Redis is back.
  await redis.stop();
  t.ok(await until(() => !g2.link.up, 5000));
  writeFileSync(join(g2.rules, 'main.yaml'), rule('omega', 'OMEGA'));
  const away = await g2.sync.reload();
  t.ok(away.ok);
  t.match(away.message, /not distributed: redis unavailable/);
  t.equal(g2.verdict('OMEGA'), 'block');
  await redis.start(); // empty: no persistence
  t.ok(
    await until(() => g1.verdict('OMEGA') === 'block' && g3.verdict('OMEGA') === 'block', 10000),
    'the newest reload wins after the outage',
  );
  t.equal(g1.verdict('PROJECT-NIGHTINGALE'), 'forward');
});
