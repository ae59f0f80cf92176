// Cluster mode (README "Cluster"): every event that passes the gateway's FanoutEventSink gets
// the top-level `host` Suricata EVE uses for the sensor name (store.node_id); the other
// fields are as they were; without a host (no cluster) events are unchanged.
import t from 'tap';
import { FanoutEventSink, MemoryEventSink, eveTimestamp, type EveEvent } from '../../../src/events/eve.js';
import { clusterNodeId } from '../../../src/cluster/node.js';
import { defaultConfig } from '../../../src/config/config.js';

const ev = (): EveEvent => ({
  timestamp: eveTimestamp(Date.UTC(2026, 10, 22, 10, 0, 0)),
  event_type: 'alert',
  flow_id: 7,
  src_ip: '192.0.2.1',
  alert: { action: 'blocked', signature_id: 'x', signature: 'y', severity: 1 },
  gatehouse: { user: 'alice' },
});

t.test('host stamped on every event, nothing else changed', async (t) => {
  const a = new MemoryEventSink();
  const b = new MemoryEventSink();
  const fan = new FanoutEventSink([a, b], undefined, 'gw2');
  fan.emit(ev());
  fan.emit({ timestamp: ev().timestamp, event_type: 'quota' });
  for (const m of [a, b]) {
    t.same(m.events[0], { ...ev(), host: 'gw2' }, 'the alert: host added, every other field as it was');
    t.same(m.events[1], { timestamp: ev().timestamp, event_type: 'quota', host: 'gw2' });
  }
  t.equal(JSON.parse(JSON.stringify(a.events[0])).host, 'gw2', 'a top-level field of the JSON line');
  fan.emit({ ...ev(), host: 'sensor-1' });
  t.equal(a.events[2]!.host, 'sensor-1', 'an event that names its host keeps it');
});

t.test('no cluster: no host', async (t) => {
  const a = new MemoryEventSink();
  new FanoutEventSink([a]).emit(ev());
  t.same(a.events[0], ev());
  t.notOk('host' in a.events[0]!);
});

t.test('the node id: store.node_id, else host name and first TURN port', async (t) => {
  const cfg = defaultConfig();
  cfg.store.node_id = 'gw7';
  t.equal(clusterNodeId(cfg), 'gw7');
  cfg.store.node_id = null;
  cfg.turn.listen = ['udp://127.0.0.1:3479'];
  t.match(clusterNodeId(cfg), /:3479$/);
});
