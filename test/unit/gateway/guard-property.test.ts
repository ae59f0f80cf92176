/**
 * Issue 8, proof (a): for random sequences of datagrams of every class (STUN of every
 * method and class, DTLS of every content type and epoch, plausible handshake records
 * stuffed with data, DTLS 1.3 unified headers, random bytes of every first-byte class,
 * RTP), a FlowGuard whose keys are required never forwards more than the stated budgets,
 * forwards nothing but STUN Binding and handshake-class DTLS, and is blocked by the
 * deadline counted from the first datagram that is not STUN (ManualClock-driven).
 */
import t from 'tap';
import fc from 'fast-check';
import { ManualClock } from '../../../src/util/clock.js';
import { FlowGuard, type BlockReason } from '../../../src/gateway/flow-guard.js';
import {
  CLIENT_HELLO_BUDGET,
  HANDSHAKE_BYTES_BUDGET,
  STUN_BUCKET_BYTES,
  STUN_MESSAGE_MAX,
  STUN_REFILL_BYTES_PER_S,
} from '../../../src/gateway/classify.js';

const bytes = (min: number, max: number) => fc.uint8Array({ minLength: min, maxLength: max }).map((u) => Buffer.from(u));

/** STUN of any method and class (RFC 8489 §5), header mostly sane, sometimes not. */
const stun = fc
  .record({
    method: fc.oneof(fc.constant(1), fc.integer({ min: 0, max: 0xfff })),
    cls: fc.integer({ min: 0, max: 3 }),
    attrs: fc.integer({ min: 0, max: 200 }).map((n) => n * 4),
    badLen: fc.boolean(),
    badCookie: fc.boolean(),
    sane: fc.boolean(),
  })
  .chain((r) =>
    bytes(r.attrs, r.attrs).map((body) => {
      const b = Buffer.alloc(20 + body.length);
      const m = r.method;
      const type = ((m & 0xf80) << 2) | ((m & 0x070) << 1) | (m & 0x00f) | ((r.cls & 2) << 7) | ((r.cls & 1) << 4);
      b.writeUInt16BE(type, 0);
      b.writeUInt16BE(r.sane || !r.badLen ? body.length : body.length + 4, 2);
      b.writeUInt32BE(r.sane || !r.badCookie ? 0x2112a442 : 0x12345678, 4);
      body.copy(b, 20);
      return b;
    }),
  );

/** One DTLSPlaintext record (RFC 6347 §4.1) of any content type and epoch. */
const dtlsRecord = fc
  .record({
    type: fc.oneof(fc.constantFrom(20, 21, 22, 23, 24, 25, 26), fc.integer({ min: 20, max: 31 })),
    version: fc.constantFrom(0xfefd, 0xfeff, 0xfefc, 0x0303),
    epoch: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 4 })),
    body: bytes(0, 1400),
  })
  .map((r) => record(r.type, r.version, r.epoch, r.body));

/** Epoch-0 handshake records that parse (the exfiltration shape): Certificate / ClientHello stuffed with data. */
const handshakeOf = (types: number[]) =>
  fc
    .record({
      msgType: fc.constantFrom(...types),
      len: fc.integer({ min: 2, max: 1300 }),
      fill: fc.integer({ min: 0, max: 255 }),
    })
    .map((r) => {
      const body = Buffer.alloc(12 + r.len, r.fill);
      body[0] = r.msgType;
      body.writeUIntBE(r.len, 1, 3);
      body.writeUIntBE(0, 6, 3);
      body.writeUIntBE(r.len, 9, 3);
      body.writeUInt16BE(0xfefd, 12); // a hello's version, harmless elsewhere
      return record(22, 0xfefd, 0, body);
    });
const plausibleHandshake = handshakeOf([1, 2, 11, 12, 16]);

const ccsOrAlert = fc.constantFrom(record(20, 0xfefd, 0, Buffer.from([1])), record(21, 0xfefd, 0, Buffer.from([2, 40])));

/** DTLS 1.3 unified header (RFC 9147 §4): random flag bits and epoch bits. */
const unified = fc.record({ bits: fc.integer({ min: 0, max: 31 }), body: bytes(0, 1200) }).map((r) => {
  const b = Buffer.alloc(5 + r.body.length);
  b[0] = 0x20 | r.bits;
  b.writeUInt16BE(7, 1);
  b.writeUInt16BE(r.body.length, 3);
  r.body.copy(b, 5);
  return b;
});

/** Random bytes with a first byte of every RFC 7983 class. */
const anyFirstByte = fc
  .record({ first: fc.integer({ min: 0, max: 255 }), rest: bytes(0, 1400) })
  .map((r) => Buffer.concat([Buffer.from([r.first]), r.rest]));
const rtp = bytes(12, 1200).map((b) => ((b[0] = 0x80 | (b[0]! & 0x3f)), b));

const datagram = fc.oneof(
  { arbitrary: stun, weight: 3 },
  { arbitrary: dtlsRecord, weight: 3 },
  { arbitrary: plausibleHandshake, weight: 3 },
  { arbitrary: ccsOrAlert, weight: 1 },
  { arbitrary: unified, weight: 2 },
  { arbitrary: anyFirstByte, weight: 3 },
  { arbitrary: rtp, weight: 2 },
  { arbitrary: fc.array(dtlsRecord, { minLength: 2, maxLength: 3 }).map((l) => Buffer.concat(l)), weight: 1 },
);

const stepOf = (data: fc.Arbitrary<Buffer>, maxDt: number) =>
  fc.record({ data, dt: fc.integer({ min: 0, max: maxDt }), dir: fc.constantFrom('c2p' as const, 'p2c' as const) });
const step = stepOf(datagram, 400);
/** Mostly the exfiltration shape, fast, so the handshake budgets are reached. */
const flood = stepOf(
  fc.oneof(
    { arbitrary: handshakeOf([11, 12, 16]), weight: 12 },
    { arbitrary: plausibleHandshake, weight: 1 },
    { arbitrary: ccsOrAlert, weight: 1 },
    { arbitrary: unified.map((b) => ((b[0] = 0x2e), b)), weight: 2 },
    { arbitrary: stun, weight: 1 },
  ),
  20,
);

function record(type: number, version: number, epoch: number, body: Buffer): Buffer {
  const b = Buffer.alloc(13 + body.length);
  b[0] = type;
  b.writeUInt16BE(version, 1);
  b.writeUInt16BE(epoch, 3);
  b.writeUIntBE(1, 5, 6);
  b.writeUInt16BE(body.length, 11);
  body.copy(b, 13);
  return b;
}

/** Independent of classify.ts: is this datagram STUN Binding (RFC 8489 §5, method 0x001)? */
function isBinding(d: Buffer): boolean {
  if (d.length < 20 || d[0]! > 3) return false;
  const type = d.readUInt16BE(0);
  return (type & 0x3eef) === 0x0001 && d.readUInt16BE(2) === d.length - 20 && d.readUInt32BE(4) === 0x2112a442;
}

/** Every record of the datagram is handshake-class: CCS/alert/handshake/ACK plaintext, or a DTLS 1.3 epoch-2 record. */
function handshakeClass(d: Buffer): boolean {
  let off = 0;
  while (off < d.length) {
    const b = d[off]!;
    if ((b & 0xe0) === 0x20) {
      if (b & 0x10 || (b & 3) !== 2) return false;
      const seq = b & 0x08 ? 2 : 1;
      if (!(b & 0x04)) return true;
      off += 1 + seq + 2 + d.readUInt16BE(off + 1 + seq);
      continue;
    }
    if (![20, 21, 22, 26].includes(b) || off + 13 > d.length) return false;
    off += 13 + d.readUInt16BE(off + 11);
  }
  return off === d.length;
}

function countHellos(d: Buffer): number {
  // Epoch-0 handshake records whose first message is a ClientHello's first fragment.
  let n = 0;
  let off = 0;
  while (off + 13 <= d.length && (d[off]! & 0xe0) !== 0x20) {
    const len = d.readUInt16BE(off + 11);
    let p = off + 13;
    if (d[off] === 22 && d.readUInt16BE(off + 3) === 0)
      while (p + 12 <= off + 13 + len) {
        if (d[p] === 1 && d.readUIntBE(p + 6, 3) === 0) n++;
        p += 12 + d.readUIntBE(p + 9, 3);
      }
    off += 13 + len;
  }
  return n;
}

const cases = [
  { name: 'every class', steps: fc.array(step, { minLength: 1, maxLength: 120 }), runs: 300 },
  { name: 'handshake flood', steps: fc.array(flood, { minLength: 60, maxLength: 250 }), runs: 60 },
];
for (const unverified of ['hold', 'drop'] as const)
  for (const cs of cases) {
    t.test(`required flow (unverified: ${unverified}, ${cs.name}): never more than the budgets; blocked by the deadline`, async (t) => {
      const DEADLINE = 5000;
      fc.assert(
        fc.property(cs.steps, (steps) => {
          const clock = new ManualClock();
          const start = clock.now();
          const blocks: BlockReason[] = [];
          const g = new FlowGuard({
            keys: { required: true, deadline: DEADLINE, unverified, media: true, data: true },
            clock,
            onBlock: (r) => blocks.push(r),
          });
          let stunFwd = 0;
          let otherFwd = 0;
          let hellos = 0;
          let firstNonStun: number | undefined;
          for (const s of steps) {
            clock.advance(s.dt);
            const now = clock.now();
            if (s.data.length > 0 && !isBinding(s.data) && firstNonStun === undefined) firstNonStun = now;
            const v = g.packet(s.data, s.dir, 5000);
            if (firstNonStun !== undefined && now >= firstNonStun + DEADLINE && v !== 'drop') return false; // past the deadline
            if (v !== 'forward' || s.data.length === 0) continue;
            if (isBinding(s.data)) {
              if (s.data.length > STUN_MESSAGE_MAX) return false;
              stunFwd += s.data.length;
              if (stunFwd > STUN_BUCKET_BYTES + ((now - start) * STUN_REFILL_BYTES_PER_S) / 1000) return false;
            } else {
              // Nothing but the handshake passes before keys verify (none are given here).
              if (!handshakeClass(s.data)) return false;
              otherFwd += s.data.length;
              hellos += countHellos(s.data);
              if (otherFwd > HANDSHAKE_BYTES_BUDGET || hellos > CLIENT_HELLO_BUDGET) return false;
            }
          }
          clock.advance(DEADLINE);
          if (firstNonStun !== undefined && !g.blocked) return false; // blocked by the deadline
          if (g.blocked && g.packet(Buffer.alloc(20, 0x16), 'c2p', 1) !== 'drop') return false;
          g.close();
          return true;
        }),
        { numRuns: cs.runs, seed: 8 },
      );
      t.pass(`property held for ${cs.runs} random flows`);
    });
  }

t.test('STUN-only flows: Binding within budget passes, the deadline does not start', async (t) => {
  fc.assert(
    fc.property(
      // RFC 7983 §7: only methods below 0x100 keep the first byte in the STUN range [0..3].
      fc.array(fc.record({ data: stun.filter((d) => d[0]! <= 3), dt: fc.integer({ min: 0, max: 2000 }) }), { maxLength: 60 }),
      (steps) => {
        const clock = new ManualClock();
        const g = new FlowGuard({ keys: { required: true, deadline: 1000, unverified: 'hold', media: true, data: true }, clock });
        let onlyBindings = true;
        for (const s of steps) {
          clock.advance(s.dt);
          const v = g.packet(s.data, 'c2p', 1);
          if (!isBinding(s.data) || s.data.length > STUN_MESSAGE_MAX) onlyBindings = false; // oversize: uninspected
          if (v === 'forward' && !isBinding(s.data)) return false; // other STUN methods / malformed never pass
        }
        clock.advance(5000);
        return onlyBindings ? !g.blocked : true;
      },
    ),
    { numRuns: 200, seed: 9 },
  );
  t.pass('held');
});
