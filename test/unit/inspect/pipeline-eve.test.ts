import t from 'tap';
import { toEve, alertEve, type FlowMeta } from '../../../src/inspect/eve-format.js';
import type { InspectEvent } from '../../../src/inspect/events.js';

const meta: FlowMeta = { flowId: 42, proto: 'UDP', a: { ip: '2001:db8::1', port: 1000 }, b: { ip: '192.0.2.9', port: 2000 } };
const time = Date.UTC(2026, 10, 22, 10, 0, 0, 123);

t.test('every event type: header, per-type object, direction → endpoints', async (t) => {
  const data = Buffer.from('SECRET-BYTES');
  const evs: InspectEvent[] = [
    {
      type: 'dtls.handshake',
      time,
      dir: 's2c',
      association: 'aa',
      version: 'DTLS1.3',
      clientRandom: 'aa',
      serverRandom: 'bb',
      cipherSuite: 0x1301,
    },
    { type: 'dtls.renegotiation', time, how: 'client_hello' },
    { type: 'keys.verified', time, what: 'srtp', dir: 'c2s' },
    { type: 'keys.invalid', time, what: 'dtls', reason: 'record did not authenticate' },
    { type: 'datachannel.open', time, stream: 1, label: 'l', protocol: '', channelType: 0, ordered: true },
    { type: 'datachannel.message', time, stream: 1, label: 'l', ppid: 51, size: data.length, sha256: 'h', data },
    { type: 'file', time, stream: 1, label: 'l', size: data.length, sha256: 'h', fileType: 'exe', data },
    { type: 'appdata', time, size: data.length, sha256: 'h', data },
    { type: 'rtp.stream', time, ssrc: 1, payloadType: 111, codec: 'opus', kind: 'audio' },
    {
      type: 'rtp.packet',
      time,
      ssrc: 1,
      payloadType: 111,
      seq: 2,
      index: 2,
      timestamp: 3,
      marker: false,
      payloadSize: data.length,
      payload: data,
    },
    { type: 'undecryptable', time, what: 'srtcp', reason: 'auth', count: 3 },
    { type: 'cap.hit', time, what: 'message', limit: 10 },
  ];
  const key: Record<string, string> = {
    'dtls.handshake': 'dtls',
    'dtls.renegotiation': 'dtls',
    'keys.verified': 'keys',
    'keys.invalid': 'keys',
    'datachannel.open': 'datachannel',
    'datachannel.message': 'datachannel',
    file: 'file',
    appdata: 'appdata',
    'rtp.stream': 'rtp',
    'rtp.packet': 'rtp',
    undecryptable: 'undecryptable',
    'cap.hit': 'cap',
  };
  for (const e of evs) {
    const o = toEve(e, meta);
    t.equal(o.event_type, e.type);
    t.equal(o.timestamp, '2026-11-22T10:00:00.123000+0000');
    t.equal(o.flow_id, 42);
    t.ok(o[key[e.type]!], `${e.type} has its object`);
    const s = JSON.stringify(o);
    t.notOk(
      s.includes('SECRET-BYTES') || s.includes(data.toString('hex')) || s.includes(data.toString('base64')),
      `${e.type}: no raw bytes`,
    );
  }
  const hs = toEve(evs[0]!, meta);
  t.equal(hs.src_ip, '192.0.2.9', 's2c with A as client: from B');
  const flipped = toEve(evs[0]!, { ...meta, dtlsClientIsA: false });
  t.equal(flipped.src_ip, '2001:db8::1', 's2c with B as client: from A');
  t.equal((toEve(evs[5]!, meta).datachannel as Record<string, unknown>).sha256, 'h');
  const turnMeta: FlowMeta = {
    ...meta,
    turn: { transport: 'tcp', client: meta.a, server: { ip: '2001:db8::3', port: 3478 }, relayed: { ip: '2001:db8::3', port: 49152 } },
  };
  const g = toEve(evs[7]!, turnMeta).gatehouse as Record<string, unknown>;
  t.same(g, { leg: 'turn', turn_transport: 'tcp', turn_server: '[2001:db8::3]:3478', relayed: '[2001:db8::3]:49152' });
  const a = alertEve(
    time,
    meta,
    'c2s',
    'aa',
    { action: 'blocked', signature_id: 'x', signature: 'y', severity: 1 },
    { rule_action: 'block' },
  );
  t.equal(a.event_type, 'alert');
  t.same(a.alert, { action: 'blocked', signature_id: 'x', signature: 'y', severity: 1 });
  t.equal((a.gatehouse as Record<string, unknown>).rule_action, 'block');
  t.equal((a.gatehouse as Record<string, unknown>).association, 'aa');
});
