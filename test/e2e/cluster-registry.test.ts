// A Gatehouse cluster (issue 14), the flow registry, load shedding and policy
// distribution: three `gatehouse serve` processes and one real redis-server.
//  - every node lists the three with their load (GET /v1/cluster) and the flows of all
//    (GET /v1/flows?scope=cluster);
//  - gateway 1 at its capacity (turn.max_allocations 1) sends clients to the least loaded
//    other node: the test client and coturn's turnutils_uclient follow 300 ALTERNATE-SERVER
//    and allocate there (RFC 8489 §10);
//  - a reload on gateway 3 changes the verdicts on gateway 1 (keys become required: a new
//    keyless flow there is no longer relayed, and is blocked keys_missing); a broken file
//    on gateway 3 is refused there and changes nothing anywhere;
//  - gateway 3 killed (SIGKILL): the others keep serving and it leaves /v1/cluster within
//    seconds (its entry's TTL).
// Harness: test/e2e/helpers/cluster.ts. Run under `flock /tmp/heavy.lock` (three gateways).
import t from 'tap';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildChannelData } from '../../src/wire/channeldata.js';
import { Attr, Class, Method, decodeAddress, getAttrs, verifyIntegrity, type StunWriter } from '../../src/wire/stun.js';
import { Client, errCode, peerSocket } from '../unit/turn/helpers.js';
import { peerSkip, requirePeer } from './helpers/require-peer.js';
import { freeUdpPort, run } from './helpers/run.js';
import { CLUSTER_USERS, adminGet, adminPost, bindChannel, metricValue, startCluster, turnClient, until } from './helpers/cluster.js';
import { PERMISSIVE_RULES, startGatehouse } from './helpers/turn-servers.js';

const skip = peerSkip(t, 'redis-server');
const udp = (w: StunWriter): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

/** Sends n datagrams on channel 0x4001 and counts what reaches the peer. */
async function relay(cl: Client, peer: Awaited<ReturnType<typeof peerSocket>>, n: number): Promise<number> {
  let got = 0;
  const on = () => void got++;
  peer.sock.on('message', on);
  for (let i = 0; i < n; i++) {
    cl.sendRaw(buildChannelData(0x4001, Buffer.alloc(100, i & 255)));
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => setTimeout(r, 300));
  peer.sock.off('message', on);
  return got;
}

t.test('three gateways: registry, shedding, policy distribution, a killed node', { skip }, async (t) => {
  const c = await startCluster({
    rules: PERMISSIVE_RULES,
    configure: (cfg, i) => {
      cfg.turn.channel_numbers = 'rfc5766'; // turnutils_uclient's channel numbers
      cfg.turn.max_allocations_per_user = 100;
      if (i === 0) cfg.turn.max_allocations = 1;
    },
  });
  t.teardown(() => c.stop());
  const [gw1, gw2, gw3] = c.gateways as [any, any, any];
  const clients: Client[] = [];
  t.teardown(() => clients.forEach((cl) => cl.close()));
  let firstOnGw1: Client | null = null;
  const view = async (gw: any) => (await adminGet(gw, '/v1/cluster')).body;
  t.ok(await until(async () => (await view(gw1))?.nodes?.length === 3, 15000), 'gateway 1 lists the three nodes');

  await t.test('GET /v1/cluster and /v1/flows?scope=cluster on any node', async (t) => {
    const v = await view(gw3);
    t.equal(v.node, 'gw3');
    t.equal(v.redis, 'up');
    t.same(
      v.nodes.map((n: any) => n.id),
      ['gw3', 'gw1', 'gw2'],
      'this node first, then the others',
    );
    const n1 = v.nodes.find((n: any) => n.id === 'gw1');
    t.equal(n1.capacity, 1, "gateway 1's configured capacity");
    t.equal(n1.admin, gw1.adminUrl);
    t.same(
      n1.turn.find((l: any) => l.proto === 'udp'),
      { proto: 'udp', address: '127.0.0.1', port: gw1.port },
    );
    t.match(n1.policy, { hash: /^[0-9a-f]{64}$/ });
    t.equal(new Set(v.nodes.map((n: any) => n.policy.hash)).size, 1, 'one rule set in the cluster');
    t.equal(await metricValue(gw3, 'gatehouse_cluster_nodes'), 3, 'gatehouse_cluster_nodes');

    const peer = await peerSocket();
    t.teardown(() => peer.close());
    const on2 = await turnClient(gw2, 'bob');
    clients.push(on2);
    t.equal(await bindChannel(on2, 0x4001, '127.0.0.1', peer.port), 0);
    t.ok(
      await until(async () => {
        const f = await adminGet(gw3, '/v1/flows?scope=cluster');
        return Array.isArray(f.body) && f.body.some((x: any) => x.node === 'gw2' && x.user === 'bob' && x.peer === '127.0.0.1');
      }, 5000),
      "gateway 3 lists bob's flow on gateway 2",
    );
    const local = await adminGet(gw3, '/v1/flows');
    t.same(local.body, [], '/v1/flows stays this node only');
    t.ok(
      await until(async () => (await view(gw1)).nodes.find((n: any) => n.id === 'gw2')?.allocations === 1, 5000),
      "gateway 2's load is seen on gateway 1",
    );
  });

  await t.test('gateway 1 at capacity sends clients to the least loaded node (300 ALTERNATE-SERVER)', async (t) => {
    const first = await turnClient(gw1, 'alice'); // gateway 1's one allocation
    clients.push(first);
    firstOnGw1 = first;
    t.ok(await until(async () => (await view(gw2)).nodes.find((n: any) => n.id === 'gw1')?.allocations === 1, 5000));
    // gw2 holds bob's allocation, gw3 none: gw3 is the least loaded.
    const cl = await Client.udp(gw1.port);
    clients.push(cl);
    cl.realm = gw1.realm;
    cl.username = 'alice';
    cl.password = 'alice-secret-pw';
    const r = await cl.authed(Method.Allocate, udp);
    t.equal(errCode(r), 300, '300 Try Alternate');
    t.ok(verifyIntegrity(r, cl.key()), 'integrity-protected (RFC 8489 §14.8)');
    const alt = getAttrs(r, Attr.AlternateServer).map((v) => decodeAddress(v)!);
    t.same(
      alt.map((a) => `${a.address}:${a.port}`),
      [`127.0.0.1:${gw3.port}`],
      'ALTERNATE-SERVER names gateway 3',
    );
    // The client follows it: the same request, the same credentials, at the alternate.
    const there = await Client.udp(alt[0]!.port);
    clients.push(there);
    there.realm = gw3.realm;
    there.username = 'alice';
    there.password = 'alice-secret-pw';
    t.equal((await there.authed(Method.Allocate, udp)).cls, Class.Success, 'allocated on gateway 3');

    if (!requirePeer(t, 'turnutils_uclient', 'turnutils_peer')) return;
    const peerPort = await freeUdpPort();
    const echo = spawn('turnutils_peer', ['-p', String(peerPort), '-L', '127.0.0.1'], { stdio: 'ignore' });
    t.teardown(() => void echo.kill('SIGKILL'));
    await new Promise((res) => setTimeout(res, 300));
    const before = (await adminGet(gw2, '/v1/events?event_type=allocation&user=alice&limit=1000')).body.length;
    const beforeGw3 = (await adminGet(gw3, '/v1/events?event_type=allocation&user=alice&limit=1000')).body.length;
    const { out } = await run('turnutils_uclient', [
      '-u',
      'alice',
      '-w',
      'alice-secret-pw',
      '-e',
      '127.0.0.1',
      '-r',
      String(peerPort),
      '-n',
      '20',
      '-l',
      '120',
      '-z',
      '5',
      '-p',
      String(gw1.port),
      '127.0.0.1',
    ]);
    const sr = [...out.matchAll(/tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$/gm)].pop();
    t.ok(sr, 'uclient printed its totals');
    if (!sr) return void t.comment(out.slice(-3000));
    t.match(out, /error 300/, "uclient's probe was redirected");
    t.ok(Number(sr[1]) > 0);
    t.equal(Number(sr[2]), Number(sr[1]), 'every message echoed through the alternate');
    const after = (await adminGet(gw2, '/v1/events?event_type=allocation&user=alice&limit=1000')).body.length;
    const afterGw3 = (await adminGet(gw3, '/v1/events?event_type=allocation&user=alice&limit=1000')).body.length;
    t.ok(after + afterGw3 > before + beforeGw3, "uclient's allocations were made on another gateway");
  });

  await t.test('a reload on gateway 3 changes the verdicts on gateway 1', async (t) => {
    const peer = await peerSocket('127.0.0.7');
    t.teardown(() => peer.close());
    // Free gateway 1's one slot for this subtest.
    if (firstOnGw1) t.equal((await firstOnGw1.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 0))).cls, Class.Success);
    const before = await turnClient(gw1, 'carol');
    t.equal(await bindChannel(before, 0x4001, '127.0.0.7', peer.port), 0);
    t.equal(await relay(before, peer, 5), 5, 'gateway 1 relays a keyless flow under the permissive rules');
    t.equal((await before.authed(Method.Refresh, (w) => w.u32(Attr.Lifetime, 0))).cls, Class.Success);
    before.close();
    const hashBefore = (await view(gw1)).nodes[0].policy.hash;

    // Gateway 3's own rule file: keys required (deadline 1 s), unverified traffic dropped.
    const file = join(gw3.workDir, 'rules', 'e2e.yaml');
    writeFileSync(
      file,
      'keys:\n  required: true\n  deadline: 1s\n  unverified: drop\n  block_for: 1m\nrules:\n  - { id: cluster-marker, when: { contains: [MARKER] }, action: alert }\n',
    );
    const r = await adminPost(gw3, '/v1/policy/reload');
    t.equal(r.status, 200, r.body?.message);
    t.match(r.body.message, /published to the cluster as version \d+/);
    t.ok(
      await until(async () => {
        const v = await view(gw1);
        return v.nodes.every(
          (n: any) => n.policy.hash === v.nodes.find((x: any) => x.id === 'gw3').policy.hash && n.policy.hash !== hashBefore,
        );
      }, 5000),
      'every node reports the new rule set',
    );
    t.equal((await view(gw1)).nodes[0].policy.origin, 'gw3');
    t.ok(((await metricValue(gw1, 'gatehouse_cluster_policy_applied_total')) ?? 0) >= 1, 'counted in /metrics');
    t.ok(((await metricValue(gw3, 'gatehouse_cluster_policy_published_total')) ?? 0) >= 1);

    const after = await turnClient(gw1, 'carol');
    clients.push(after);
    t.equal(await bindChannel(after, 0x4001, '127.0.0.7', peer.port), 0);
    t.equal(await relay(after, peer, 5), 0, 'gateway 1 now drops the keyless flow');
    t.ok(
      await until(async () => {
        const { body } = await adminGet(gw1, '/v1/events?event_type=flow_blocked&user=carol');
        return Array.isArray(body) && body.some((e: any) => e.gatehouse?.reason === 'keys_missing');
      }, 6000),
      'and blocks it keys_missing after the 1 s deadline',
    );

    // A broken file on gateway 3: refused there, nothing published, gateway 1 unchanged.
    const hash = (await view(gw1)).nodes[0].policy.hash;
    writeFileSync(file, 'rules:\n  - { id: bad, action: explode }\n');
    const bad = await adminPost(gw3, '/v1/policy/reload');
    t.equal(bad.status, 422);
    t.match(bad.body.message, /e2e\.yaml:2:\d+: rules\[0\]\.action/);
    await new Promise((res) => setTimeout(res, 1500));
    t.equal((await view(gw1)).nodes[0].policy.hash, hash, 'gateway 1 keeps the rules in force');
    // Put the permissive rules back everywhere (from gateway 2 this time).
    writeFileSync(join(gw2.workDir, 'rules', 'e2e.yaml'), PERMISSIVE_RULES);
    t.equal((await adminPost(gw2, '/v1/policy/reload')).status, 200);
    t.ok(await until(async () => (await view(gw1)).nodes[0].policy.origin === 'gw2', 5000));
  });

  await t.test('a gateway joining later takes the cluster policy, not its own files', async (t) => {
    const hash = (await view(gw1)).nodes[0].policy.hash;
    const gw4 = await startGatehouse({
      users: CLUSTER_USERS,
      rules: 'keys:\n  required: true\n  deadline: 2s\nrules:\n  - { id: gw4-own, when: { contains: [X] }, action: block }\n',
      configure: (cfg) => {
        cfg.store = { redis: c.redis.url, node_id: 'gw4', sync_interval_ms: 100 };
      },
    });
    t.teardown(() => gw4.stop());
    t.ok(
      await until(async () => {
        const n = (await view(gw1)).nodes.find((x: any) => x.id === 'gw4');
        return n?.policy?.hash === hash;
      }, 10000),
      'gateway 4 reports the cluster rule set',
    );
    t.ok(((await metricValue(gw4, 'gatehouse_cluster_policy_applied_total')) ?? 0) >= 1, 'applied from the cluster');
    t.equal((await metricValue(gw4, 'gatehouse_cluster_policy_published_total')) ?? 0, 0, 'its own files were not published');
    const peer = await peerSocket('127.0.0.9');
    t.teardown(() => peer.close());
    const cl = await turnClient(gw4, 'bob');
    clients.push(cl);
    t.equal(await bindChannel(cl, 0x4001, '127.0.0.9', peer.port), 0);
    t.equal(await relay(cl, peer, 5), 5, 'the permissive cluster rules relay a keyless flow there');
    await gw4.stop();
    t.ok(await until(async () => !(await view(gw1)).nodes.some((n: any) => n.id === 'gw4'), 5000), 'a graceful stop leaves at once');
  });

  await t.test('gateway 3 killed (SIGKILL): the others keep serving; it leaves /v1/cluster within seconds', async (t) => {
    const t0 = Date.now();
    await gw3.kill('SIGKILL');
    t.ok(await until(async () => (await view(gw1)).nodes.every((n: any) => n.id !== 'gw3'), 8000), 'gone from gateway 1');
    const gone = Date.now() - t0;
    t.ok(gone < 6000, `left after ${gone} ms (TTL 3 s)`);
    t.notOk(
      (await view(gw2)).nodes.some((n: any) => n.id === 'gw3'),
      'and from gateway 2',
    );
    const f = await adminGet(gw1, '/v1/flows?scope=cluster');
    t.notOk(
      f.body.some((x: any) => x.node === 'gw3'),
      'its flows went with it',
    );
    const cl = await turnClient(gw2, 'alice');
    clients.push(cl);
    t.pass('gateway 2 still allocates');
    const h = await adminGet(gw1, '/healthz');
    t.equal(h.status, 200);
  });
});
