// The EVE stream to a real redis-server (Suricata's eve-log redis output): each mode
// delivers the same JSON lines as events.jsonl, in order; an outage queues (bounded) and a
// restart flushes; only overflow counts as dropped.
import t from 'tap';
import { join } from 'node:path';
import { RedisEventSink, redactRedisUrl } from '../../src/events/redis.js';
import type { EveEvent } from '../../src/events/eve.js';
import { startTestRedis, until } from './helpers/redis.js';
import { peerSkip } from './helpers/require-peer.js';
import { startGatehouse } from './helpers/turn-servers.js';
import { Attr, Class, Method } from '../../src/wire/stun.js';
import { Client, errCode } from '../unit/turn/helpers.js';
import { readFileSync } from 'node:fs';

const skip = peerSkip(t, 'redis-server');

function event(i: number): EveEvent {
  return {
    timestamp: `2026-12-02T10:00:00.${String(i).padStart(6, '0')}+0000`,
    event_type: 'alert',
    flow_id: i,
    gatehouse: { user: 'alice', n: i },
  };
}

t.test('events to redis-server', { skip }, async (t) => {
  const redis = await startTestRedis();
  t.teardown(() => redis.close());
  const { url } = redis;
  const reader = redis.client();

  await t.test('list mode: RPUSH, oldest first, the same JSON lines', async (t) => {
    const sink = new RedisEventSink({ url, mode: 'list', key: 'eve-list', maxQueue: 1000 });
    t.teardown(() => sink.close());
    t.ok(await until(() => sink.stats.connected), 'connected');
    for (let i = 0; i < 1200; i++) if (i < 1000) sink.emit(event(i));
    t.ok(await sink.drained(), 'queue drained');
    const got = await reader.lrange('eve-list', 0, -1);
    t.equal(got.length, 1000, 'every event arrived');
    t.same(
      got.slice(0, 3),
      [0, 1, 2].map((i) => JSON.stringify(event(i))),
      'lines identical to what events.jsonl holds, in order',
    );
    t.equal(got[999], JSON.stringify(event(999)));
    t.equal(sink.stats.dropped, 0, 'nothing dropped');
  });

  await t.test('a command error (key of another type) is retried after a pause, not in a loop; nothing is lost', async (t) => {
    await reader.set('eve-wrongtype', 'a string, not a list');
    const rpushCalls = async (): Promise<number> => {
      const m = /cmdstat_rpush:calls=(\d+)/.exec(await reader.info('commandstats'));
      return m ? Number(m[1]) : 0;
    };
    const sink = new RedisEventSink({ url, mode: 'list', key: 'eve-wrongtype', maxQueue: 1000 });
    t.teardown(() => sink.close());
    t.ok(await until(() => sink.stats.connected), 'connected');
    const before = await rpushCalls();
    for (let i = 0; i < 10; i++) sink.emit(event(i));
    await new Promise((r) => setTimeout(r, 2500));
    const tries = (await rpushCalls()) - before;
    // List mode sends one RPUSH of every queued line per attempt, one attempt a second: about 3 in 2.5 s.
    t.ok(tries >= 2 && tries <= 5, `RPUSH attempts in 2.5 s: ${tries} (a tight loop would make thousands)`);
    t.equal(sink.stats.sent, 0, 'nothing counted as sent');
    t.equal(sink.stats.dropped, 0, 'nothing dropped: the events wait in the queue');
    await reader.del('eve-wrongtype');
    t.ok(await sink.drained(), 'once the key is usable, the queue drains');
    t.equal(await reader.llen('eve-wrongtype'), 10, 'all ten events arrived');
  });

  await t.test('stream mode: XADD with an event field', async (t) => {
    const sink = new RedisEventSink({ url, mode: 'stream', key: 'eve-stream', maxQueue: 1000 });
    t.teardown(() => sink.close());
    t.ok(await until(() => sink.stats.connected), 'connected');
    for (let i = 0; i < 10; i++) sink.emit(event(i));
    t.ok(await sink.drained());
    const entries = await reader.xrange('eve-stream', '-', '+');
    t.equal(entries.length, 10);
    t.same(entries[3]![1], ['event', JSON.stringify(event(3))]);
  });

  await t.test('channel mode: PUBLISH to subscribers', async (t) => {
    const sub = redis.client();
    t.teardown(() => sub.disconnect());
    const seen: string[] = [];
    sub.on('message', (_ch: string, msg: string) => seen.push(msg));
    await sub.subscribe('eve-channel');
    const sink = new RedisEventSink({ url, mode: 'channel', key: 'eve-channel', maxQueue: 1000 });
    t.teardown(() => sink.close());
    t.ok(await until(() => sink.stats.connected), 'connected');
    for (let i = 0; i < 5; i++) sink.emit(event(i));
    t.ok(await until(() => seen.length === 5), 'subscriber got five messages');
    t.same(
      seen,
      [0, 1, 2, 3, 4].map((i) => JSON.stringify(event(i))),
    );
  });

  await t.test('an outage queues up to max_queue; a restart flushes; overflow is counted', async (t) => {
    const sink = new RedisEventSink({ url, mode: 'list', key: 'eve-outage', maxQueue: 50 });
    t.teardown(() => sink.close());
    t.ok(await until(() => sink.stats.connected), 'connected');
    sink.emit(event(0));
    t.ok(await sink.drained());
    await redis.stop();
    t.ok(await until(() => !sink.stats.connected), 'the sink sees the outage');
    for (let i = 1; i <= 80; i++) sink.emit(event(i));
    t.equal(sink.stats.queued, 50, 'queue held at its bound');
    t.equal(sink.stats.dropped, 30, 'only the overflow is dropped');
    await redis.start(); // --save '': the restarted server starts empty
    t.ok(await until(() => sink.stats.connected, 15000), 'reconnected');
    t.ok(await sink.drained(10000), 'queue flushed after the restart');
    const got = await until(async () => (await reader.llen('eve-outage').catch(() => 0)) === 50);
    t.ok(got, 'the 50 queued events arrived');
    const lines = await reader.lrange('eve-outage', 0, -1);
    t.equal(lines[0], JSON.stringify(event(1)), 'oldest queued first');
    t.equal(lines[49], JSON.stringify(event(50)));
  });

  await t.test('through gatehouse serve: the allocation event in Redis is the events.jsonl line', async (t) => {
    const gh = await startGatehouse({
      configure: (c) => {
        c.events = { redis: { url, mode: 'list', key: 'eve-serve' } };
      },
    });
    t.teardown(() => gh.stop());
    const cl = await Client.udp(gh.port);
    t.teardown(() => cl.close());
    cl.realm = gh.realm;
    cl.username = gh.users[0]!.name;
    cl.password = gh.users[0]!.password;
    const alloc = await cl.authed(Method.Allocate, (w: { attr(t: number, v: Buffer): void }) =>
      w.attr(Attr.RequestedTransport, Buffer.from([17, 0, 0, 0])),
    );
    t.equal(alloc.cls, Class.Success, `allocated: ${errCode(alloc)}`);
    const isAlloc = (l: string) => (JSON.parse(l) as EveEvent).event_type === 'allocation';
    const fileLines = () => {
      try {
        return readFileSync(join(gh.dataDir!, 'events.jsonl'), 'utf8').split('\n').filter(Boolean).filter(isAlloc);
      } catch {
        return [];
      }
    };
    let inRedis: string[] = [];
    let inFile: string[] = [];
    // Both sinks write asynchronously: wait until each holds the allocation event.
    const both = await until(async () => {
      inRedis = (await reader.lrange('eve-serve', 0, -1)).filter(isAlloc);
      inFile = fileLines();
      return inRedis.length > 0 && inFile.length === inRedis.length;
    });
    t.ok(both, `an allocation event reached Redis (${inRedis.length}) and events.jsonl (${inFile.length})`);
    t.same(inRedis, inFile, 'the same JSON lines as events.jsonl');
  });

  t.test('the logged URL hides the password', async (t) => {
    t.equal(redactRedisUrl('redis://gw:s3cret-pw@127.0.0.1:6379/0').includes('s3cret-pw'), false);
    t.match(redactRedisUrl('redis://gw:s3cret-pw@127.0.0.1:6379/0'), /\*\*\*/);
  });
});
