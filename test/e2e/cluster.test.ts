// A Gatehouse cluster (issue 14): three `gatehouse serve` processes sharing one real
// redis-server through store.redis. A user's quota crossed through gateway 2 cuts them on
// gateway 3 (and is reported once); a flow blocked on gateway 1 stays refused on gateway 2;
// stopping Redis leaves all three serving with local state (log, /metrics, /healthz say so)
// and the quota is reconciled once Redis returns. Harness: test/e2e/helpers/cluster.ts.
// Run under `flock /tmp/heavy.lock` (three gateways).
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildChannelData } from '../../src/wire/channeldata.js';
import { spawnSync } from 'node:child_process';
import { Class } from '../../src/wire/stun.js';
import { Client, errCode, peerSocket } from '../unit/turn/helpers.js';
import { REPO_ROOT } from './helpers/turn-servers.js';
import { restCredential } from '../../src/core/turn-credentials.js';
import { peerSkip } from './helpers/require-peer.js';
import {
  adminGet,
  adminPost,
  allocateOnce,
  bindChannel,
  createPermission,
  metricValue,
  startCluster,
  turnClient,
  until,
  type Cluster,
} from './helpers/cluster.js';

const skip = peerSkip(t, 'redis-server');

/** carol (group contractors): 20 KiB a day. */
export const CLUSTER_RULES = `keys:
  required: false
  unverified: pass
rules: []
quotas:
  - id: contractors-daily
    groups: [contractors]
    limit: 20KiB
    period: day
  - id: staff-daily
    groups: [staff]
    limit: 30KiB
    period: day
`;

/** Sends n datagrams of size bytes on channel 0x4001 and counts what reaches the peer. */
async function relay(cl: Client, peer: Awaited<ReturnType<typeof peerSocket>>, n: number, size: number): Promise<number> {
  let got = 0;
  const on = () => void got++;
  peer.sock.on('message', on);
  for (let i = 0; i < n; i++) {
    cl.sendRaw(buildChannelData(0x4001, Buffer.alloc(size, i & 255)));
    await new Promise((r) => setTimeout(r, 2));
  }
  await new Promise((r) => setTimeout(r, 300));
  peer.sock.off('message', on);
  return got;
}

/** The hash of the rule set in force on each gateway (its own entry in its /v1/cluster). */
async function policyHashes(c: Cluster): Promise<(string | null)[]> {
  return Promise.all(
    c.gateways.map(async (gw, i) => {
      const { body } = await adminGet(gw, '/v1/cluster');
      return body?.nodes?.find((n: any) => n.id === c.nodeId(i))?.policy?.hash ?? null;
    }),
  );
}

/** Waits until every gateway reports the same hash other than `not` (or equal to `want`). */
async function samePolicy(c: Cluster, want: { hash?: string | null; not?: string | null }): Promise<string | null> {
  let last: string | null = null;
  const ok = await until(async () => {
    const hs = await policyHashes(c);
    last = hs[0] ?? null;
    if (!last || hs.some((h) => h !== last)) return false;
    return want.hash !== undefined ? last === want.hash : last !== want.not;
  }, 8000);
  return ok ? last : null;
}

async function quotaEvents(c: Cluster, subject: string): Promise<number> {
  let n = 0;
  for (const gw of c.gateways) {
    const { body } = await adminGet(gw, '/v1/events?event_type=quota');
    n += (Array.isArray(body) ? body : []).filter((e: any) => e.event_type === 'quota' && e.quota?.subject === subject).length;
  }
  return n;
}

t.test('three gateways, one redis-server', { skip }, async (t) => {
  const c = await startCluster({ rules: CLUSTER_RULES });
  t.teardown(() => c.stop());
  const [gw1, gw2, gw3] = c.gateways as [any, any, any];
  for (const gw of c.gateways)
    t.ok(await until(async () => (await metricValue(gw, 'gatehouse_cluster_redis_up')) === 1, 10000), 'redis up');

  await t.test("a user's quota crossed through gateway 2 cuts them on gateway 3", async (t) => {
    const peer = await peerSocket();
    t.teardown(() => peer.close());
    const on3 = await turnClient(gw3, 'carol');
    t.teardown(() => on3.close());
    t.equal(await bindChannel(on3, 0x4001, '127.0.0.1', peer.port), 0);
    t.equal(await relay(on3, peer, 5, 1000), 5, 'gateway 3 relays carol before the crossing');
    const on2 = await turnClient(gw2, 'carol');
    t.teardown(() => on2.close());
    t.equal(await bindChannel(on2, 0x4001, '127.0.0.1', peer.port), 0);
    t.ok((await relay(on2, peer, 20, 1000)) >= 15, 'gateway 2 relays until the limit');
    t.ok(await until(async () => (await relay(on3, peer, 3, 100)) === 0, 5000), 'gateway 3 cuts carol');
    t.equal(await relay(on2, peer, 3, 100), 0, 'so does gateway 2');
    await new Promise((r) => setTimeout(r, 500));
    t.equal(await quotaEvents(c, 'user:carol'), 1, 'the crossing is reported once in the cluster');
    let reported = 0;
    for (const gw of c.gateways) reported += (await metricValue(gw, 'gatehouse_cluster_quota_crossings_reported_total')) ?? 0;
    t.equal(reported, 1, 'by one gateway (gatehouse_cluster_quota_crossings_reported_total)');
    const redis = c.redis.client();
    const keys = await redis.keys('gatehouse:quota:contractors-daily:*');
    const total = Number(await redis.get(keys.find((k) => !k.endsWith(':crossed'))!));
    t.ok(total >= 20 * 1024, `the cluster total is in Redis: ${total}`);
  });

  await t.test('a flow blocked on gateway 1 stays refused on gateway 2', async (t) => {
    // A reload on gateway 1 requires keys (deadline 1 s); policy distribution puts it in
    // force on every gateway (src/cluster/policy-sync.ts). mallory's flow without keys is
    // blocked on gateway 1 (key-escrow.md §5.1, keys_missing) for block_for. The teardown
    // reloads the permissive rules and waits until all three report them again, so the
    // later subtests run under CLUSTER_RULES.
    const rulesFile = join(gw1.workDir, 'rules', 'e2e.yaml');
    const strict = CLUSTER_RULES.replace('required: false', 'required: true\n  deadline: 1s\n  block_for: 5m');
    const permissive = await samePolicy(c, { not: null });
    t.ok(permissive, 'one rule set on the three gateways before');
    writeFileSync(rulesFile, strict);
    t.equal((await adminPost(gw1, '/v1/policy/reload')).status, 200, 'gateway 1 reloaded');
    t.teardown(async () => {
      writeFileSync(rulesFile, CLUSTER_RULES);
      await adminPost(gw1, '/v1/policy/reload');
      if ((await samePolicy(c, { hash: permissive })) === null) throw new Error('the permissive rules did not come back on every gateway');
    });
    t.ok(await samePolicy(c, { not: permissive }), 'the reload is in force on all three gateways');
    const peer = await peerSocket('127.0.0.5');
    t.teardown(() => peer.close());
    const on1 = await turnClient(gw1, 'mallory');
    t.teardown(() => on1.close());
    t.equal(await bindChannel(on1, 0x4001, '127.0.0.5', peer.port), 0);
    await relay(on1, peer, 3, 100);
    await new Promise((r) => setTimeout(r, 1200)); // the key deadline passes
    await relay(on1, peer, 1, 100);
    t.ok(
      await until(async () => {
        const { body } = await adminGet(gw1, '/v1/events?event_type=flow_blocked');
        return Array.isArray(body) && body.some((e: any) => e.event_type === 'flow_blocked');
      }, 5000),
      'blocked on gateway 1',
    );
    const on2 = await turnClient(gw2, 'mallory');
    t.teardown(() => on2.close());
    t.ok(await until(async () => (await createPermission(on2, '127.0.0.5')) === 403, 3000), 'gateway 2 answers 403 Forbidden');
    t.equal(await createPermission(on2, '127.0.0.6'), 0, 'another peer is allowed');
    const on3 = await turnClient(gw3, 'mallory');
    t.teardown(() => on3.close());
    t.equal(await createPermission(on3, '127.0.0.5'), 403, 'and gateway 3 too');
  });

  await t.test('a user added with `gatehouse user add` through one gateway is usable on all', async (t) => {
    const config = join(gw2.workDir, 'gatehouse.yaml');
    const add = spawnSync(
      process.execPath,
      [join(REPO_ROOT, 'bin', 'gatehouse.js'), 'user', 'add', 'dave', '--groups', 'staff', '--password-stdin', '--config', config],
      {
        input: 'dave-secret-pw\n',
        encoding: 'utf8',
      },
    );
    t.equal(add.status, 0, add.stderr);
    t.notMatch(add.stdout, /dave-secret-pw/, 'the given password is not echoed');
    const list = spawnSync(process.execPath, [join(REPO_ROOT, 'bin', 'gatehouse.js'), 'user', 'list', '--config', config], {
      encoding: 'utf8',
    });
    t.match(list.stdout, /^dave\tstaff$/m, 'listed with its groups');
    t.notMatch(list.stdout, /dave-secret-pw/, 'never its password');
    for (const [i, gw] of c.gateways.entries()) {
      const ok = await until(async () => (await allocateOnce(gw, 'dave', 'dave-secret-pw')).cls === Class.Success, 5000);
      t.ok(ok, `gw${i + 1} allocates for dave`);
    }
    // Redis holds the RFC 8489 §9.2.2 keys, never the password; the SHA-256 key serves
    // PASSWORD-ALGORITHM SHA-256 with MESSAGE-INTEGRITY-SHA256 (§18.5, §14.6).
    const redis = c.redis.client();
    const all = await redis.hgetall('gatehouse:users');
    const stored = JSON.stringify(all);
    t.match(JSON.parse(all.dave!), { realm: gw2.realm, key_md5: /^[0-9a-f]{32}$/, key_sha256: /^[0-9a-f]{64}$/ }, 'the keys are in Redis');
    t.notOk(stored.includes('dave-secret-pw'), 'Redis holds no password (HGETALL gatehouse:users)');
    const shaR = await allocateOnce(gw2, 'dave', 'dave-secret-pw', { sha256: true, passwordAlgorithms: true });
    t.equal(shaR.cls, Class.Success, 'PASSWORD-ALGORITHM SHA-256: allocated with the stored SHA-256 key');
    // The shared event stream (list `gatehouse`) names the gateway of each event (top-level
    // `host`, Suricata EVE's sensor name): dave's allocation on each gateway says which.
    t.ok(
      await until(async () => {
        const evs = (await redis.lrange('gatehouse', 0, -1)).map((l) => JSON.parse(l));
        return c.gateways.every((_, i) =>
          evs.some((e: any) => e.event_type === 'allocation' && e.gatehouse?.user === 'dave' && e.host === c.nodeId(i)),
        );
      }, 5000),
      "each gateway's allocation event in Redis names its gateway (host gw1, gw2, gw3)",
    );
    t.equal(errCode(await allocateOnce(gw3, 'dave', 'wrong')), 401, 'a wrong password is refused');
    const rm = spawnSync(process.execPath, [join(REPO_ROOT, 'bin', 'gatehouse.js'), 'user', 'remove', 'dave', '--config', config], {
      encoding: 'utf8',
    });
    t.equal(rm.status, 0, rm.stderr);
    const gone = await until(async () => errCode(await allocateOnce(gw1, 'dave', 'dave-secret-pw')) === 401, 5000);
    t.ok(gone, 'removed: gw1 refuses dave');
    for (const gw of c.gateways) t.notOk(gw.fullOutput().includes(Buffer.from('dave-secret-pw')), 'no password in any log');
  });

  await t.test('one TURN REST secret for the cluster: ephemeral credentials verify on every gateway', async (t) => {
    const redis = c.redis.client();
    const secret = await redis.get('gatehouse:rest_secret');
    t.ok(secret && secret.length >= 32, 'the first gateway offered its secret (SET NX)');
    for (const gw of c.gateways) t.notOk(gw.fullOutput().includes(Buffer.from(secret!)), 'never logged');
    const username = `${Math.floor(Date.now() / 1000) + 600}:erin`;
    for (const [i, gw] of c.gateways.entries()) {
      const r = await allocateOnce(gw, username, restCredential(secret!, username));
      t.equal(r.cls, Class.Success, `gw${i + 1} accepts the credential: ${errCode(r)}`);
    }
  });

  await t.test('the event stream: every gateway sends its events to the cluster Redis', async (t) => {
    const redis = c.redis.client();
    const lines = (await redis.lrange('gatehouse', 0, -1)).map((l) => JSON.parse(l));
    t.equal(lines.filter((e) => e.event_type === 'quota' && e.quota?.subject === 'user:carol').length, 1, 'the crossing, once');
    t.ok(lines.filter((e) => e.event_type === 'allocation').length >= 6, 'allocations of all the gateways');
    t.ok(
      lines.some((e) => e.event_type === 'flow_blocked'),
      'the block',
    );
  });

  const clients: Client[] = [];
  await t.test('Redis stopped: all three serve locally; back: the quota is reconciled, reported once', async (t) => {
    await c.redis.stop();
    for (const [i, gw] of c.gateways.entries()) {
      t.ok(await until(async () => (await metricValue(gw, 'gatehouse_cluster_redis_up')) === 0, 10000), `gw${i + 1}: redis_up 0`);
      const h = await adminGet(gw, '/healthz');
      t.match(h.body, { status: 'degraded' }, `gw${i + 1}: /healthz degraded`);
      t.ok(h.body.degraded.includes('cluster'), 'names the cluster');
      t.match(gw.output(), /cluster: redis unavailable; serving with local state/, `gw${i + 1}: says so in the log`);
    }
    // alice (staff, 30 KiB a day) sends 12 KB through each gateway: each is under the limit
    // on its own, the three together are over it.
    const peer = await peerSocket('127.0.0.20');
    t.teardown(() => peer.close());
    for (const [i, gw] of c.gateways.entries()) {
      const cl = await turnClient(gw, 'alice');
      t.teardown(() => cl.close());
      t.equal(await bindChannel(cl, 0x4001, '127.0.0.20', peer.port), 0);
      t.equal(await relay(cl, peer, 12, 1000), 12, `gw${i + 1} serves alice with local state`);
      clients.push(cl);
    }
    t.equal(await quotaEvents(c, 'user:alice'), 0, 'no gateway saw a crossing on its own');
    await c.redis.start(); // an empty Redis: no persistence
    for (const [i, gw] of c.gateways.entries()) {
      t.ok(await until(async () => (await metricValue(gw, 'gatehouse_cluster_redis_up')) === 1, 15000), `gw${i + 1}: redis_up 1`);
      t.ok(await until(async () => (await adminGet(gw, '/healthz')).body.status === 'ok', 5000), `gw${i + 1}: /healthz ok`);
    }
    t.match(gw1.output(), /cluster: redis is up/, 'the return is logged');
    for (const [i, cl] of clients.entries())
      t.ok(await until(async () => (await relay(cl, peer, 2, 100)) === 0, 5000), `gw${i + 1} cuts alice after the reconciliation`);
    await new Promise((r) => setTimeout(r, 500));
    t.equal(await quotaEvents(c, 'user:alice'), 1, 'the crossing the outage hid is reported once');
    const redis = c.redis.client();
    const key = (await redis.keys('gatehouse:quota:staff-daily:*')).find((k) => !k.endsWith(':crossed'))!;
    t.ok(Number(await redis.get(key)) >= 36_000, 'every gateway pushed its outage delta');
  });
});
