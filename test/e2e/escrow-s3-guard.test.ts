// The two FlowGuard changes behind proof 3 (src/gateway/flow-guard.ts), checked directly:
// DTLS 1.3 records of the handshake epoch (unified header, epoch bits 2; RFC 9147 §4,
// §6.1) are forwarded like DTLS 1.2 handshake records so the handshake completes under
// `unverified: hold`, while application-epoch records are held; and a flow whose keys are
// not required reports onUninspected('keys_missing') when the deadline passes.
import t from 'tap';
import { ManualClock } from '../../src/util/clock.js';
import { FlowGuard, type BlockReason, type GuardKeysPolicy } from '../../src/gateway/flow-guard.js';
import { fixtureFlow } from '../unit/gateway/flow-guard-helpers.js';

const POLICY: GuardKeysPolicy = { required: true, deadline: 3000, unverified: 'hold', media: true, data: true };

/** A unified-header record: 001CSLEE, 16-bit seq (S), with length (L), `len` bytes of ciphertext. */
function unified(epochBits: number, len = 40, cid = false): Buffer {
  const b = Buffer.alloc(1 + 2 + 2 + len, 0xab);
  b[0] = 0x20 | (cid ? 0x10 : 0) | 0x08 | 0x04 | (epochBits & 3);
  b.writeUInt16BE(7, 1);
  b.writeUInt16BE(len, 3);
  return b;
}

t.test('DTLS 1.3: handshake-epoch records forwarded, application-epoch records held, deadline then blocks', async (t) => {
  const clock = new ManualClock();
  const blocks: BlockReason[] = [];
  const g = new FlowGuard({ keys: POLICY, clock, onBlock: (r) => blocks.push(r) });
  t.equal(g.packet(unified(2), 'p2c', 5000), 'forward', 'epoch 2 (encrypted handshake) forwarded');
  t.equal(g.packet(Buffer.concat([unified(2, 30), unified(2, 20)]), 'c2p', 5000), 'forward', 'two coalesced epoch-2 records forwarded');
  t.equal(g.packet(unified(3), 'c2p', 5000), 'hold', 'epoch 3 (application data) held');
  t.equal(g.packet(Buffer.concat([unified(2, 30), unified(3, 20)]), 'c2p', 5000), 'hold', 'a datagram with an application record held');
  t.equal(g.packet(unified(1), 'c2p', 5000), 'hold', 'epoch 1 (0-RTT data) held');
  t.equal(g.packet(unified(2, 40, true), 'c2p', 5000), 'hold', 'a CID record (length unknown here) held');
  const trunc = unified(2, 40).subarray(0, 20);
  t.equal(g.packet(trunc, 'c2p', 5000), 'hold', 'a truncated record is not taken for handshake');
  t.same(blocks, [], 'not blocked before the deadline');
  clock.advance(3001);
  t.same(blocks, ['keys_missing'], 'deadline started by the protected handshake: blocked for keys_missing');
  t.equal(g.packet(unified(2), 'p2c', 5000), 'drop', 'nothing passes a blocked flow');
  g.close();
});

t.test('keys not required: onUninspected(keys_missing) when the deadline passes, held traffic released', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const clock = new ManualClock();
  const un: Array<[BlockReason, string | undefined]> = [];
  let released = 0;
  const blocks: BlockReason[] = [];
  const g = new FlowGuard({
    keys: { ...POLICY, required: false },
    clock,
    onUninspected: (r, a) => un.push([r, a]),
    onRelease: (q) => (released += q.filter((x) => x.held).length),
    onBlock: (r) => blocks.push(r),
  });
  const verdicts = f.packets.slice(0, 13).map((p) => g.packet(p.data, p.dir, 5000));
  const held = verdicts.filter((v) => v === 'hold').length;
  t.ok(held > 0, `application data held before the deadline (${held})`);
  t.same(un, [], 'nothing reported before the deadline');
  clock.advance(3001);
  t.equal(un.length, 1, 'reported once');
  t.equal(un[0]![0], 'keys_missing', 'reason keys_missing');
  t.equal(un[0]![1], g.association, 'names the association');
  t.equal(released, held, 'held traffic released');
  t.same(blocks, [], 'not blocked');
  t.equal(g.packet(f.packets[12]!.data, f.packets[12]!.dir, 5000), 'forward', 'later traffic passes uninspected');
  g.close();
});
