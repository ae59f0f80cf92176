import t from 'tap';
import { randomBytes } from 'node:crypto';
import { StunWriter, messageType, Method, Class, Attr } from '../../../src/wire/stun.js';
import { buildChannelData } from '../../../src/wire/channeldata.js';
import { TurnUnwrapper } from '../../../src/inspect/turn-unwrap.js';

const C = { ip: '192.0.2.10', port: 50000 };
const S = { ip: '198.51.100.1', port: 3478 };
const P = { ip: '203.0.113.5', port: 61000 };

function msg(method: number, cls: number, tid: Buffer, fill: (w: StunWriter) => void = () => {}): Buffer {
  const w = new StunWriter().reset(messageType(method, cls), tid);
  fill(w);
  return w.copy();
}

t.test('Send/Data indications unwrap to the peer, both directions', async (t) => {
  const u = new TurnUnwrapper();
  const inner = Buffer.from([0x16, 0xfe, 0xfd, 1, 2, 3]);
  const send = msg(Method.Send, Class.Indication, randomBytes(12), (w) =>
    w.xorAddress(Attr.XorPeerAddress, P.ip, P.port).attr(Attr.Data, inner),
  );
  const r = u.unwrap('udp', C.ip, C.port, S.ip, S.port, send, 1);
  t.equal(r?.kind, 'data');
  if (r?.kind !== 'data') return;
  t.same(r.peer, P);
  t.ok(r.fromClient);
  t.same(r.payload, inner);
  t.equal(r.via, 'indication');
  const data = msg(Method.Data, Class.Indication, randomBytes(12), (w) =>
    w.xorAddress(Attr.XorPeerAddress, P.ip, P.port).attr(Attr.Data, inner),
  );
  const r2 = u.unwrap('udp', S.ip, S.port, C.ip, C.port, data, 2);
  t.equal(r2?.kind, 'data');
  if (r2?.kind === 'data') {
    t.notOk(r2.fromClient);
    t.equal(r2.conn, r.conn, 'same connection both ways');
    t.same(r2.conn.client, C);
  }
});

t.test('ChannelBind request + success binds; ChannelData then unwraps', async (t) => {
  const u = new TurnUnwrapper();
  const tid = randomBytes(12);
  const cn = Buffer.from([0x40, 0x07, 0, 0]);
  const inner = Buffer.from([0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 9, 9]);
  // Before any binding: unbound.
  t.equal(u.unwrap('udp', C.ip, C.port, S.ip, S.port, buildChannelData(0x4007, inner), 0)?.kind, 'unbound');
  const alloc = msg(Method.Allocate, Class.Success, randomBytes(12), (w) => w.xorAddress(Attr.XorRelayedAddress, '198.51.100.1', 49170));
  t.equal(u.unwrap('udp', S.ip, S.port, C.ip, C.port, alloc, 1)?.kind, 'control');
  const req = msg(Method.ChannelBind, Class.Request, tid, (w) =>
    w.attr(Attr.ChannelNumber, cn).xorAddress(Attr.XorPeerAddress, P.ip, P.port),
  );
  t.equal(u.unwrap('udp', C.ip, C.port, S.ip, S.port, req, 2)?.kind, 'control');
  const ok = msg(Method.ChannelBind, Class.Success, tid);
  t.equal(u.unwrap('udp', S.ip, S.port, C.ip, C.port, ok, 3)?.kind, 'control');
  t.equal(u.stats.channelBinds, 1);
  for (const [src, dst, fromClient] of [
    [C, S, true],
    [S, C, false],
  ] as const) {
    const r = u.unwrap('udp', src.ip, src.port, dst.ip, dst.port, Buffer.concat([buildChannelData(0x4007, inner), Buffer.alloc(2)]), 4);
    t.equal(r?.kind, 'data');
    if (r?.kind !== 'data') continue;
    t.same(r.payload, inner, 'padding trimmed');
    t.same(r.peer, P);
    t.equal(r.fromClient, fromClient);
    t.same(r.conn.relayed, { ip: '198.51.100.1', port: 49170 });
    t.same(r.conn.client, C, 'client learned from the first request even though ChannelData came first');
  }
  // Another channel stays unbound; a too-short ChannelData is not TURN.
  t.equal(u.unwrap('udp', C.ip, C.port, S.ip, S.port, buildChannelData(0x4008, inner), 5)?.kind, 'unbound');
  t.equal(u.unwrap('udp', C.ip, C.port, S.ip, S.port, buildChannelData(0x4007, inner).subarray(0, 8), 5), null);
});

t.test('a ChannelBind whose response was not captured still maps the channel', async (t) => {
  const u = new TurnUnwrapper();
  const req = msg(Method.ChannelBind, Class.Request, randomBytes(12), (w) =>
    w.attr(Attr.ChannelNumber, Buffer.from([0x40, 0, 0, 0])).xorAddress(Attr.XorPeerAddress, P.ip, P.port),
  );
  u.unwrap('tcp', C.ip, C.port, S.ip, S.port, req, 0);
  const r = u.unwrap('tcp', C.ip, C.port, S.ip, S.port, buildChannelData(0x4000, Buffer.from('x')), 1);
  t.equal(r?.kind, 'data');
});

t.test('ICE Binding, DTLS, RTP are not TURN framing', async (t) => {
  const u = new TurnUnwrapper();
  t.equal(u.unwrap('udp', C.ip, C.port, P.ip, P.port, msg(Method.Binding, Class.Request, randomBytes(12)), 0), null);
  t.equal(u.unwrap('udp', C.ip, C.port, P.ip, P.port, Buffer.from([22, 0xfe, 0xfd, 0, 0, 0]), 0), null);
  t.equal(u.unwrap('udp', C.ip, C.port, P.ip, P.port, Buffer.from([0x80, 0, 0, 0, 0, 0]), 0), null);
  t.equal(u.unwrap('udp', C.ip, C.port, P.ip, P.port, Buffer.alloc(2), 0), null);
  t.equal(u.size, 0);
});

t.test('bounded: connections evicted LRU and by idleness', async (t) => {
  const u = new TurnUnwrapper({ maxConnections: 3, idleMs: 1000 });
  const send = msg(Method.Send, Class.Indication, randomBytes(12), (w) =>
    w.xorAddress(Attr.XorPeerAddress, P.ip, P.port).attr(Attr.Data, Buffer.from('a')),
  );
  for (let i = 0; i < 10; i++) u.unwrap('udp', C.ip, 40000 + i, S.ip, S.port, send, i);
  t.equal(u.size, 3);
  u.unwrap('udp', C.ip, 1, S.ip, S.port, send, 100_000);
  t.equal(u.size, 1, 'idle ones expired');
});
