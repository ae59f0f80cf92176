/**
 * Relay workers (issue 13, turn.workers: 2) through `gatehouse serve` with a real
 * redis-server (each worker is a cluster node), coturn's turnutils_uclient and
 * turnutils_peer (Debian coturn), on loopback:
 *
 * - uclient with many clients (-m) over UDP and TCP relays with 0 loss, and the
 *   allocations land on both workers (per-worker counts from each worker's events.jsonl);
 * - the two workers' relay ports come from disjoint shares of turn.relay_ports;
 * - kill -9 of worker 1: the clients of worker 0 keep relaying (their packets still reach
 *   it: the supervisor holds worker 1's socket, so the SO_REUSEPORT group, socket(7), does
 *   not change), the supervisor restarts worker 1 on the same descriptors, and a client
 *   that was on worker 1 allocates again on the new worker 1 from the same 5-tuple.
 *
 * The server runs from the sources (node --import tsx src/cli/main.ts) so a stale dist/
 * cannot stand in for them; the workers are forked from the same entry.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { stringify } from 'yaml';
import { Attr, Class, Method, StunWriter, getAttr, getXorAddress, messageType } from '../../src/wire/stun.js';
import { randomBytes } from 'node:crypto';
import { Client, errCode, peerSocket } from '../unit/turn/helpers.js';
import { requirePeer } from './helpers/require-peer.js';
import { children, freeUdpPort, run } from './helpers/run.js';
import { startTestRedis, until } from './helpers/redis.js';
import { reservePortBlock } from './helpers/ports.js';
import { startWorkersServe } from './helpers/workers-serve.js';
import { REPO_ROOT } from './helpers/turn-servers.js';
import { relayPortShare } from '../../src/turn/workers.js';
import { loadReusePort } from '../../src/util/reuseport.js';

/** The final totals of a turnutils_uclient run (as test/e2e/turnutils.test.ts reads them). */
function totals(out: string): { sent: number; received: number; lost: number } | null {
  const sr = [...out.matchAll(/tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$/gm)].pop();
  const lost = /Total lost packets (\d+)/.exec(out);
  if (!sr || !lost) return null;
  return { sent: Number(sr[1]), received: Number(sr[2]), lost: Number(lost[1]) };
}

interface AllocEvent {
  src_port: number;
  proto: string;
  allocation: { action: string; relayed_port: number };
}

const udp = (w: StunWriter): void => void w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0]));

function sendIndication(port: number, data: Buffer): Buffer {
  const w = new StunWriter(2048);
  w.reset(messageType(Method.Send, Class.Indication), randomBytes(12));
  w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', port);
  w.attr(Attr.Data, data);
  return w.copy();
}

async function main(): Promise<void> {
  if (!loadReusePort().addon) {
    if (process.env.CI) t.fail('the reuseport addon is not built (npm run build:native) in CI');
    else t.test('relay workers', { skip: 'native/build/Release/gatehouse_reuseport.node not built' }, async () => {});
    return;
  }
  const redis = await startTestRedis();
  const block = await reservePortBlock(100);
  const work = mkdtempSync(join(tmpdir(), 'gatehouse-workers-'));
  const dataDir = join(work, 'data');
  const rulesDir = join(work, 'rules');
  mkdirSync(rulesDir);
  writeFileSync(join(rulesDir, 'e2e.yaml'), 'keys:\n  required: false\n  unverified: pass\nrules: []\n');
  const turnPort = block.port(0);
  // 2 000 relay ports above the e2e port blocks (20000-32767) and the other tests' fixed
  // ranges: 1 000 per worker.
  const relayPorts = [54000, 55999];
  const config = {
    realm: 'test.local',
    data_dir: dataDir,
    log_level: 'info',
    turn: {
      listen: [`udp://127.0.0.1:${turnPort}`, `tcp://127.0.0.1:${turnPort}`],
      relay_address: '127.0.0.1',
      relay_ports: relayPorts,
      peers: { allow: ['127.0.0.0/8'] },
      channel_numbers: 'rfc5766', // turnutils_uclient's channel numbers
      max_allocations_per_user: 1000,
      workers: 2,
    },
    pcp: { listen: [] },
    admin: { listen: `http://127.0.0.1:${block.port(1)}`, token: randomBytes(24).toString('hex') },
    core: { listen: `http://127.0.0.1:${block.port(2)}` },
    users: [{ name: 'alice', password: 'alice-secret-pw', groups: [] }],
    policy: { rules: rulesDir },
    store: { redis: redis.url, node_id: 'gw', sync_interval_ms: 100 },
  };
  const configFile = join(work, 'gatehouse.yaml');
  writeFileSync(configFile, stringify(config));
  const serve = await startWorkersServe(configFile);
  const { sup, lines, workerPids } = serve;
  const peerPort = await freeUdpPort();
  /** turnutils_uclient's load for these tests: alice, to turnutils_peer, n messages of 160 B, 5 ms apart. */
  const uclientLoad = (n: number): string[] => [
    '-u',
    'alice',
    '-w',
    'alice-secret-pw',
    '-e',
    '127.0.0.1',
    '-r',
    String(peerPort),
    '-n',
    String(n),
    '-l',
    '160',
    '-z',
    '5',
  ];
  const peer = spawn('turnutils_peer', ['-p', String(peerPort), '-L', '127.0.0.1'], { stdio: 'ignore' });
  children.add(peer);
  t.teardown(async () => {
    peer.kill('SIGKILL');
    await serve.stop();
    await redis.close();
    block.release();
    rmSync(work, { recursive: true, force: true });
  });

  const ready = serve.listening;
  t.ok(ready, 'the supervisor reports its workers');
  if (!ready) {
    t.fail(`gatehouse serve did not start: ${JSON.stringify(lines.slice(-5))}`);
    return;
  }
  const initial = ready.workers as { worker: number; pid: number; fds: number[] }[];
  t.equal(initial.length, 2, 'two workers');
  t.not(initial[0]!.pid, initial[1]!.pid, 'two processes');

  const eventsFile = (i: number) => (i === 0 ? join(dataDir, 'events.jsonl') : join(dataDir, 'workers', String(i), 'events.jsonl'));
  const allocationEvents = (i: number): AllocEvent[] =>
    existsSync(eventsFile(i))
      ? readFileSync(eventsFile(i), 'utf8')
          .split('\n')
          .filter((l) => l.includes('"event_type":"allocation"'))
          .map((l) => JSON.parse(l) as AllocEvent)
      : [];
  const created = (i: number): AllocEvent[] => allocationEvents(i).filter((e) => e.allocation.action === 'created');
  const shares = [relayPortShare(relayPorts, 2, 0), relayPortShare(relayPorts, 2, 1)];

  await t.test('turnutils_uclient -m 20 (UDP, channels) and -m 10 (TCP): 0 loss, allocations on both workers', async (t) => {
    // -c: no RTCP allocation (the RESERVATION-TOKEN case has its own subtest below), so the
    // relay ports of each worker stay in its share for the checks that follow.
    const base = ['-c', ...uclientLoad(100)];
    const u = await run('turnutils_uclient', ['-m', '20', '-p', String(turnPort), ...base, '127.0.0.1']);
    const tu = totals(u.out);
    t.ok(tu, 'uclient (UDP) printed its totals');
    t.equal(tu?.lost, 0, `UDP: 0 lost (${JSON.stringify(tu)})`);
    t.ok(tu && tu.sent > 0 && tu.received === tu.sent, 'UDP: everything sent came back');
    const tc = await run('turnutils_uclient', ['-t', '-m', '10', '-p', String(turnPort), ...base, '127.0.0.1']);
    const tt = totals(tc.out);
    t.equal(tt?.lost, 0, `TCP: 0 lost (${JSON.stringify(tt)})`);
    t.ok(tt && tt.sent > 0 && tt.received === tt.sent, 'TCP: everything sent came back');
    await until(() => created(0).length + created(1).length >= 30, 5000);
    const c0 = created(0);
    const c1 = created(1);
    const by = (es: AllocEvent[], p: string) => es.filter((e) => e.proto === p).length;
    t.comment(`allocations: worker 0 UDP ${by(c0, 'UDP')} TCP ${by(c0, 'TCP')}; worker 1 UDP ${by(c1, 'UDP')} TCP ${by(c1, 'TCP')}`);
    t.ok(by(c0, 'UDP') > 0 && by(c1, 'UDP') > 0, 'UDP allocations on both workers');
    t.ok(c0.length + c1.length >= 30, 'every client allocated');
    for (const [i, es] of [c0, c1].entries()) {
      const [lo, hi] = shares[i]!;
      t.ok(
        es.every((e) => e.allocation.relayed_port >= lo && e.allocation.relayed_port <= hi),
        `worker ${i}'s relay ports all in its share [${lo}, ${hi}]`,
      );
    }
    t.ok(shares[0]![1] < shares[1]![0], `the shares do not overlap: ${JSON.stringify(shares)}`);
    // No port is given to a second allocation while the first holds it. A port freed (the
    // allocation deleted or expired) may be picked again at random (RFC 8656 §7.2, RFC
    // 6056): that is reuse, not a double grant. Each worker's events file is in its order.
    const doubles: string[] = [];
    for (const i of [0, 1]) {
      const held = new Set<number>();
      for (const e of allocationEvents(i)) {
        const port = e.allocation.relayed_port;
        if (e.allocation.action === 'created') {
          if (held.has(port)) doubles.push(`worker ${i} port ${port}`);
          held.add(port);
        } else if (e.allocation.action !== 'refreshed') held.delete(port);
      }
    }
    t.same(doubles, [], 'no relay port given twice while held');
  });

  await t.test('a RESERVATION-TOKEN made by one worker is honoured by the other (RFC 8656 §7.2)', async (t) => {
    // EVEN-PORT with R from one socket, the token from another: the second 5-tuple hashes to
    // either worker. Pairs until one crosses workers (1 in 2 each; 16 pairs: 2^-16 to miss).
    const workerOf = (port: number) => [0, 1].find((i) => created(i).some((e) => e.src_port === port)) ?? -1;
    let crossed = 0;
    let pairs = 0;
    const bad: string[] = [];
    while (crossed === 0 && pairs < 16) {
      pairs++;
      const rtp = await Client.udp(turnPort);
      const rtcp = await Client.udp(turnPort);
      for (const c of [rtp, rtcp]) Object.assign(c, { realm: 'test.local', password: 'alice-secret-pw' });
      try {
        const a = await rtp.authed(Method.Allocate, (w) => {
          udp(w);
          w.attr(Attr.EvenPort, Buffer.from([0x80])); // R: reserve the next port
        });
        const token = getAttr(a, Attr.ReservationToken);
        const p = getXorAddress(a, Attr.XorRelayedAddress)?.port ?? -1;
        if (a.cls !== Class.Success || !token || p % 2 !== 0) {
          bad.push(`pair ${pairs}: EVEN-PORT allocate ${a.cls} token ${!!token} port ${p}`);
          continue;
        }
        const b = await rtcp.authed(Method.Allocate, (w) => {
          udp(w);
          w.attr(Attr.ReservationToken, token);
        });
        const q = getXorAddress(b, Attr.XorRelayedAddress)?.port ?? -1;
        if (b.cls !== Class.Success || q !== p + 1) {
          bad.push(`pair ${pairs}: token allocate ${b.cls === Class.Success ? `port ${q}, not ${p + 1}` : `error ${errCode(b)}`}`);
          continue;
        }
        await until(() => workerOf(rtp.port) >= 0 && workerOf(rtcp.port) >= 0, 3000);
        if (workerOf(rtp.port) !== workerOf(rtcp.port)) crossed++;
      } finally {
        rtp.close();
        rtcp.close();
      }
    }
    t.same(bad, [], 'every token allocation got the reserved port (EVEN-PORT port + 1)');
    t.equal(crossed, 1, `a token crossed workers and got its port (${pairs} pairs tried)`);
  });

  await t.test('turnutils_uclient without -c (its RTCP allocation carries a RESERVATION-TOKEN): 0 loss', async (t) => {
    const u = await run('turnutils_uclient', ['-m', '10', ...uclientLoad(50), '-p', String(turnPort), '127.0.0.1']);
    const tu = totals(u.out);
    t.ok(tu, `uclient printed its totals${tu ? '' : `: ${u.out.slice(-600)}`}`);
    t.equal(tu?.lost, 0, `0 lost (${JSON.stringify(tu)})`);
    t.ok(tu && tu.sent > 0 && tu.received === tu.sent, 'everything sent came back');
    t.notMatch(u.out, /error 508|Allocation failed/i, 'no RTCP allocation refused');
  });

  await t.test('kill -9 of worker 1: worker 0 clients keep relaying; worker 1 restarts on the same sockets', async (t) => {
    const echo = await peerSocket();
    echo.sock.on('message', (m, r) => echo.sock.send(m, r.port, '127.0.0.1'));
    t.teardown(() => echo.close());
    // 16 clients, each on its own 5-tuple; which worker holds each comes from the events.
    const clients: { c: Client; worker: number }[] = [];
    for (let i = 0; i < 16; i++) {
      // turnutils_uclient above leaves its allocations (10 min) on ports it has closed; an
      // ephemeral port handed out again lands on one of them, and the server rightly answers
      // 437 Allocation Mismatch (RFC 8656 §7.2). Such a client is kept open (its port is not
      // handed out again) and another port taken, at most 4 in all.
      let c: Client;
      let r;
      for (let tries = 1; ; tries++) {
        c = await Client.udp(turnPort);
        c.realm = 'test.local';
        c.password = 'alice-secret-pw';
        r = await c.authed(Method.Allocate, udp);
        if (r.cls === Class.Success || errCode(r) !== 437 || tries === 4) break;
        const spent = c;
        t.teardown(() => spent.close());
      }
      t.equal(r.cls, Class.Success, `client ${i} allocated${r.cls === Class.Success ? '' : `: error ${errCode(r)}`}`);
      const p = await c.authed(Method.CreatePermission, (w) => w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', echo.port));
      t.equal(p.cls, Class.Success);
      clients.push({ c, worker: -1 });
    }
    t.teardown(() => clients.forEach((x) => x.c.close()));
    await until(() => clients.every((x) => [0, 1].some((i) => created(i).some((e) => e.src_port === x.c.port))), 5000);
    for (const x of clients) x.worker = [0, 1].find((i) => created(i).some((e) => e.src_port === x.c.port)) ?? -1;
    const on0 = clients.filter((x) => x.worker === 0);
    const on1 = clients.filter((x) => x.worker === 1);
    t.comment(`16 clients: ${on0.length} on worker 0, ${on1.length} on worker 1`);
    t.ok(on0.length > 0 && on1.length > 0, 'clients on both workers');
    t.equal(on0.length + on1.length, 16, 'each client found on exactly one worker');

    /** A Send indication through the relay to the echoing peer and its Data indication back. */
    const relays = async (c: Client, timeoutMs = 2000): Promise<boolean> => {
      const tag = randomBytes(8);
      const got = c
        .next((b) => b.includes(tag), timeoutMs)
        .then(
          () => true,
          () => false,
        );
      c.sendRaw(sendIndication(echo.port, tag));
      return got;
    };
    for (const x of clients) t.ok(await relays(x.c), `before: client on worker ${x.worker} relays`);
    // Worker 0's admin listener shows every worker (src/cli/worker-views.ts): the flows of
    // both, each naming its worker, and worker 1's events among the recent ones.
    const v1 = async (path: string): Promise<Record<string, any>[]> =>
      (await (
        await fetch(`${config.admin.listen}${path}`, { headers: { authorization: `Bearer ${config.admin.token}` } })
      ).json()) as Record<string, any>[];
    const flows = await v1('/v1/flows');
    const flowWorkers = new Set(flows.map((f) => f.worker));
    t.same([...flowWorkers].sort(), [0, 1], `worker 0's /v1/flows lists both workers' flows (${flows.length})`);
    t.ok(
      await until(async () => (await v1('/v1/events')).some((e) => e.host === 'gw.w1' && e.event_type === 'allocation'), 3000),
      "worker 1's events are in worker 0's /v1/events (host gw.w1)",
    );
    // The dashboard's recordings list covers every worker's directory: a recording being
    // written (no manifest yet) in worker 1's shows up on worker 0's.
    const unsealedId = '20261204T000000Z-1-p1-w1w1';
    mkdirSync(join(dataDir, 'workers', '1', 'recordings', unsealedId), { recursive: true });
    const login = await fetch(`${config.admin.listen}/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: config.admin.token }),
    });
    const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0]!;
    const recs = (await (await fetch(`${config.admin.listen}/ui/recordings`, { headers: { cookie } })).json()) as { unsealed: string[] };
    t.ok(recs.unsealed.includes(unsealedId), `worker 0's dashboard lists worker 1's recordings (${JSON.stringify(recs.unsealed)})`);

    const victim = initial[1]!;
    process.kill(victim.pid, 'SIGKILL');
    t.ok(
      await until(() => lines.some((l) => l.msg === 'relay worker died; restarting it on the same sockets' && l.worker === 1), 5000),
      'the supervisor saw worker 1 die',
    );
    // While worker 1 is down and while it restarts, worker 0's clients go on.
    for (const x of on0) t.ok(await relays(x.c), 'during: a worker-0 client still relays (its packets still reach worker 0)');
    const restarted = () => lines.find((l) => l.msg === 'relay worker serving' && l.worker === 1 && l.restarts === 1);
    t.ok(await until(() => !!restarted(), 30_000), 'the supervisor restarted worker 1');
    const again = restarted()!;
    workerPids.add(again.pid);
    t.not(again.pid, victim.pid, `a new process (${victim.pid} -> ${again.pid})`);
    t.same(again.fds, victim.fds, `on the same descriptors (${JSON.stringify(victim.fds)}): the same sockets`);
    for (const x of on0) {
      t.ok(await relays(x.c), 'after: a worker-0 client still relays');
      const r = await x.c.authed(Method.Refresh, (w) => w.attr(Attr.Lifetime, Buffer.from([0, 0, 2, 88])));
      t.equal(r.cls, Class.Success, 'after: its allocation is still there (Refresh 200)');
    }
    // The new worker 1 has no allocations: its clients' Refresh gets 437 (RFC 8656 §7.2),
    // and an Allocate from the same 5-tuple lands on worker 1 again.
    const before1 = created(1).length;
    for (const x of on1) {
      const r = await x.c.authed(Method.Refresh, (w) => w.attr(Attr.Lifetime, Buffer.from([0, 0, 2, 88])));
      t.equal(errCode(r), 437, 'a worker-1 client: its allocation is gone (437)');
      const a = await x.c.authed(Method.Allocate, udp);
      t.equal(a.cls, Class.Success, 'it allocates again');
      const relayed = getXorAddress(a, Attr.XorRelayedAddress)!;
      t.ok(relayed.port >= shares[1]![0] && relayed.port <= shares[1]![1], `from worker 1's share (${relayed.port})`);
    }
    t.ok(await until(() => created(1).length === before1 + on1.length, 5000), 'the new allocations are on worker 1 (its events)');
    const newOn1 = created(1)
      .slice(before1)
      .map((e) => e.src_port);
    t.same(new Set(newOn1), new Set(on1.map((x) => x.c.port)), 'from the same client 5-tuples: affinity kept across the restart');
  });

  await t.test('a second gatehouse on the same port is refused instead of joining the SO_REUSEPORT group', async (t) => {
    const r = await run(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), 'serve', '--config', configFile], 60_000);
    t.equal(r.code, 1, 'exit 1');
    t.match(r.out, new RegExp(`cannot start: udp://127\\.0\\.0\\.1:${turnPort}: address already in use`));
    t.notOk(
      lines.some((l) => l.msg === 'relay worker died; restarting it on the same sockets' && l.worker === 0),
      'the running workers untouched',
    );
  });

  await t.test('SIGTERM to the supervisor stops every worker', async (t) => {
    const exited = new Promise<number | null>((r) => sup.once('exit', (code) => r(code)));
    sup.kill('SIGTERM');
    t.equal(await exited, 0, 'the supervisor exits 0');
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    t.ok(await until(() => [...workerPids].every((p) => !alive(p)), 10_000), `no worker left (${[...workerPids].join(', ')})`);
  });
}

if (requirePeer(t, 'turnutils_uclient', 'turnutils_peer', 'redis-server')) await main();
