// A Gatehouse cluster for end-to-end tests (issue 14): one real redis-server and N
// `gatehouse serve` processes (default 3), each in its own temp dir and port block, all with
// store.redis pointing to the same Redis and node ids gw1..gwN. Shared by
// test/e2e/cluster.test.ts's subtests (quotas, blocks, outage; flow registry, load
// shedding and policy distribution).
//
//   const c = await startCluster({ rules, users });
//   t.teardown(() => c.stop());
//   const cl = await turnClient(c.gateways[1]!, 'alice');        // allocated on gateway 2
//   await c.redis.stop(); await c.redis.start();                  // an outage
//   await adminJson(c.gateways[0]!, '/healthz');
import { Attr, Class, Method, type StunMessage, type StunWriter } from '../../../src/wire/stun.js';
import { Client, errCode } from '../../unit/turn/helpers.js';
import { startTestRedis, until, type TestRedis } from './redis.js';
import { startGatehouse, type GatehouseOptions, type TurnServer, type TurnUser } from './turn-servers.js';

export { until };

export interface ClusterOptions {
  /** Number of gateways (default 3). */
  n?: number;
  users?: TurnUser[];
  /** Rules file content for every gateway (default: PERMISSIVE_RULES of turn-servers.ts). */
  rules?: string;
  /** store.sync_interval_ms (default 100). */
  syncIntervalMs?: number;
  logLevel?: GatehouseOptions['logLevel'];
  /** Last-word edits of gateway i's configuration (0-based). */
  configure?: (config: Record<string, any>, i: number) => void;
  /** An existing Redis to use (not stopped by stop()). */
  redis?: TestRedis;
}

export interface Cluster {
  redis: TestRedis;
  gateways: TurnServer[];
  /** Node id of gateway i (gw1, gw2, ...). */
  nodeId(i: number): string;
  /** Stops every gateway and (when it started it) Redis. */
  stop(): Promise<void>;
}

export const CLUSTER_USERS: TurnUser[] = [
  { name: 'alice', password: 'alice-secret-pw', groups: ['staff'] },
  { name: 'bob', password: 'bob-secret-pw', groups: ['staff'] },
  { name: 'carol', password: 'carol-secret-pw', groups: ['contractors'] },
  { name: 'mallory', password: 'mallory-secret-pw', groups: ['suspect'] },
];

export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const n = opts.n ?? 3;
  const redis = opts.redis ?? (await startTestRedis());
  const gateways: TurnServer[] = [];
  const stop = async () => {
    await Promise.all(gateways.map((g) => g.stop()));
    if (!opts.redis) await redis.close();
  };
  try {
    for (let i = 0; i < n; i++) {
      gateways.push(
        await startGatehouse({
          users: opts.users ?? CLUSTER_USERS,
          ...(opts.rules !== undefined ? { rules: opts.rules } : {}),
          logLevel: opts.logLevel ?? 'info',
          configure: (c) => {
            c.store = { redis: redis.url, node_id: `gw${i + 1}`, sync_interval_ms: opts.syncIntervalMs ?? 100 };
            opts.configure?.(c, i);
          },
        }),
      );
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { redis, gateways, nodeId: (i) => `gw${i + 1}`, stop };
}

/** GET an admin path with the token; the parsed JSON (or text) and the status. */
export async function adminGet(gw: TurnServer, path: string): Promise<{ status: number; body: any; text: string }> {
  const res = await fetch(`${gw.adminUrl}${path}`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
  const text = await res.text();
  let body: any = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* text */
  }
  return { status: res.status, body, text };
}

/** POST an admin path with the token. */
export async function adminPost(gw: TurnServer, path: string, json?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(`${gw.adminUrl}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
    ...(json !== undefined ? { body: JSON.stringify(json) } : {}),
  });
  const text = await res.text();
  let body: any = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* text */
  }
  return { status: res.status, body };
}

/** The value of one metric sample in gw's /metrics (first line matching name{labels}), or null. */
export async function metricValue(gw: TurnServer, name: string, labels = ''): Promise<number | null> {
  const { text } = await adminGet(gw, '/metrics');
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const [k, v] = line.split(' ');
    if (k === name + labels || (labels === '' && k === name)) return Number(v);
  }
  return null;
}

/** REQUESTED-TRANSPORT UDP (RFC 8656 §18.7): what every Allocate here asks for. */
const udpTransport = (w: StunWriter): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

/** A UDP client of gw with these long-term credentials (RFC 8489 §9.2), not yet allocated. */
async function credentialClient(gw: TurnServer, username: string, password: string): Promise<Client> {
  const cl = await Client.udp(gw.port);
  cl.realm = gw.realm;
  cl.username = username;
  cl.password = password;
  return cl;
}

/** One Allocate (RFC 8656 §7.1) on gw as username/password: the response; the client is closed. */
export async function allocateOnce(
  gw: TurnServer,
  username: string,
  password: string,
  opts?: Parameters<Client['authed']>[2],
): Promise<StunMessage> {
  const cl = await credentialClient(gw, username, password);
  try {
    return await cl.authed(Method.Allocate, udpTransport, opts);
  } finally {
    cl.close();
  }
}

/** A TURN client of `user` with a UDP allocation on gw (RFC 8656 §7.1). */
export async function turnClient(gw: TurnServer, user: string): Promise<Client> {
  const u = gw.users.find((x) => x.name === user);
  if (!u) throw new Error(`no user ${user}`);
  const cl = await credentialClient(gw, u.name, u.password);
  const r = await cl.authed(Method.Allocate, udpTransport);
  if (r.cls !== Class.Success) {
    cl.close();
    throw new Error(`allocate on ${gw.port} failed: ${errCode(r)}`);
  }
  return cl;
}

/** ChannelBind `channel` to ip:port (RFC 8656 §12.1); the error code, 0 on success. */
export async function bindChannel(cl: Client, channel: number, ip: string, port: number): Promise<number> {
  const r = await cl.authed(
    Method.ChannelBind,
    (w: StunWriter) =>
      void w.attr(Attr.ChannelNumber, Buffer.from([channel >> 8, channel & 255, 0, 0])).xorAddress(Attr.XorPeerAddress, ip, port),
  );
  return errCode(r);
}

/** CreatePermission for ip (RFC 8656 §9.1); the error code, 0 on success. */
export async function createPermission(cl: Client, ip: string, port = 9): Promise<number> {
  const r = await cl.authed(Method.CreatePermission, (w: StunWriter) => void w.xorAddress(Attr.XorPeerAddress, ip, port));
  return errCode(r);
}
