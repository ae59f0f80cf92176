// GET /v1/cluster and GET /v1/flows?scope=cluster over real HTTP: token-guarded,
// /v1/flows unchanged by default, 404 without a cluster, 400 for an unknown scope.
import t from 'tap';
import { Registry } from 'prom-client';
import { AdminServer } from '../../../src/admin/server.js';
import { silentLogger } from '../../../src/util/log.js';

const TOKEN = 'T'.repeat(20) + 'correct-horse-battery';
const auth = { authorization: `Bearer ${TOKEN}` };

async function serve(
  t: { teardown(fn: () => unknown): void },
  cluster?: ConstructorParameters<typeof AdminServer>[0]['cluster'],
): Promise<string> {
  const admin = new AdminServer(
    { registry: new Registry(), token: TOKEN, recentEvents: () => [], flows: () => [{ flow_id: 1 }], ...(cluster ? { cluster } : {}) },
    silentLogger,
  );
  t.teardown(() => admin.close());
  await admin.listen('127.0.0.1', 0);
  return admin.url;
}

t.test('with a cluster', async (t) => {
  const url = await serve(t, {
    view: async () => ({ node: 'gw1', redis: 'up', nodes: [{ id: 'gw1' }, { id: 'gw2' }] }),
    flows: async () => ({
      flows: [
        { flow_id: 1, node: 'gw1' },
        { flow_id: 9, node: 'gw2' },
      ],
      redis: 'up',
    }),
  });
  t.equal((await fetch(`${url}/v1/cluster`)).status, 401, 'the token is needed');
  t.equal((await fetch(`${url}/v1/flows?scope=cluster`)).status, 401);
  const c = await fetch(`${url}/v1/cluster`, { headers: auth });
  t.equal(c.status, 200);
  t.same(
    ((await c.json()) as { nodes: { id: string }[] }).nodes.map((n) => n.id),
    ['gw1', 'gw2'],
  );
  const f = await fetch(`${url}/v1/flows?scope=cluster`, { headers: auth });
  t.equal(f.headers.get('gatehouse-cluster-redis'), 'up');
  t.same(await f.json(), [
    { flow_id: 1, node: 'gw1' },
    { flow_id: 9, node: 'gw2' },
  ]);
  t.same(await (await fetch(`${url}/v1/flows`, { headers: auth })).json(), [{ flow_id: 1 }], '/v1/flows is unchanged by default');
  t.same(await (await fetch(`${url}/v1/flows?scope=local`, { headers: auth })).json(), [{ flow_id: 1 }]);
  t.equal((await fetch(`${url}/v1/flows?scope=galaxy`, { headers: auth })).status, 400);
});

t.test('without a cluster', async (t) => {
  const url = await serve(t);
  t.equal((await fetch(`${url}/v1/cluster`, { headers: auth })).status, 404);
  t.equal((await fetch(`${url}/v1/flows?scope=cluster`, { headers: auth })).status, 404);
  t.equal((await fetch(`${url}/v1/flows`, { headers: auth })).status, 200);
});
