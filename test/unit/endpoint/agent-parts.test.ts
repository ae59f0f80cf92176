// Small pure parts of the agent and the werift seam's presence.
import t from 'tap';
import * as werift from 'werift';
import { parseTurnUrl, installWeriftTurnSeam, EscrowError } from '../../../src/endpoint/agent.js';

t.test('parseTurnUrl', async (t) => {
  t.same(parseTurnUrl('turn:127.0.0.1:3479'), { host: '127.0.0.1', port: 3479, transport: 'udp' });
  t.same(parseTurnUrl('turn:gw.example?transport=tcp'), { host: 'gw.example', port: 3478, transport: 'tcp' });
  t.same(parseTurnUrl('turn:[::1]:5000'), { host: '::1', port: 5000, transport: 'udp' });
  t.throws(() => parseTurnUrl('http://x'), EscrowError);
});

t.test('seam installs once and wraps werift TurnProtocol', async (t) => {
  const TP = (werift as unknown as { TurnProtocol: { prototype: { handleSTUNMessage: unknown; connectionMade: unknown } } }).TurnProtocol;
  installWeriftTurnSeam();
  const after = TP.prototype.handleSTUNMessage;
  installWeriftTurnSeam();
  t.equal(TP.prototype.handleSTUNMessage, after, 'idempotent');
  t.ok(typeof after === 'function');
  // An instance no agent owns: the wrapper hands the message to werift unchanged
  // (werift emits Data indications' DATA on onData).
  const seen: Buffer[] = [];
  const inst = Object.create(TP.prototype) as {
    transactions: object;
    onData: { execute(d: Buffer): void };
    handleSTUNMessage(d: Buffer, a: [string, number]): void;
  };
  inst.transactions = {};
  inst.onData = { execute: (d: Buffer) => seen.push(d) };
  // RFC 8656 §10.4 Data indication with XOR-PEER-ADDRESS 127.0.0.1:5000 and DATA "hi".
  const { StunWriter, messageType, Method, Class, Attr } = await import('../../../src/wire/stun.js');
  const w = new StunWriter().reset(messageType(Method.Data, Class.Indication), Buffer.alloc(12, 7));
  w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', 5000).attr(Attr.Data, Buffer.from('hi'));
  inst.handleSTUNMessage(w.copy(), ['127.0.0.1', 3478]);
  t.same(
    seen.map((b) => b.toString()),
    ['hi'],
    'unowned instance: werift behaviour unchanged',
  );
});
