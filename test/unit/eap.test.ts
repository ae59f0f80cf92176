import t from 'tap';
import {
  EapCode,
  EapTlsFlag,
  EapTlsReassembler,
  EapType,
  decodeEap,
  decodeEapTls,
  eapTlsMskFrom,
  encodeEap,
  encodeEapTls,
  fragmentTls,
} from '../../src/wire/eap.js';

t.test('EAP codec (RFC 3748 §4)', async (t) => {
  const req = encodeEap({ code: EapCode.Request, identifier: 7, type: EapType.Identity, data: Buffer.alloc(0) });
  t.same([...req], [1, 7, 0, 5, 1], 'Request/Identity is 5 octets');
  const resp = encodeEap({ code: EapCode.Response, identifier: 7, type: EapType.Identity, data: Buffer.from('alice') });
  t.equal(resp.readUInt16BE(2), 10);
  const d = decodeEap(Buffer.concat([resp, Buffer.from([0, 0, 0])]))!; // padding after Length is ignored
  t.equal(d.code, EapCode.Response);
  t.equal(d.identifier, 7);
  t.equal(d.type, EapType.Identity);
  t.equal(d.data.toString(), 'alice');
  const ok = encodeEap({ code: EapCode.Success, identifier: 9, data: Buffer.alloc(0) });
  t.same([...ok], [3, 9, 0, 4], 'Success is 4 octets');
  t.equal(decodeEap(ok)!.type, undefined);
  t.equal(decodeEap(Buffer.from([1, 1, 0, 9, 1])), null, 'Length above the buffer');
  t.equal(decodeEap(Buffer.from([1, 1, 0, 4])), null, 'Request without Type');
  t.equal(decodeEap(Buffer.from([9, 1, 0, 4])), null, 'unknown Code');
  t.equal(decodeEap(Buffer.from([1, 1])), null, 'short');
});

t.test('EAP-TLS flags and length (RFC 5216 §3.1)', async (t) => {
  const start = encodeEapTls({ flags: EapTlsFlag.S, data: Buffer.alloc(0) });
  t.same([...start], [0x20]);
  const withLen = encodeEapTls({ flags: EapTlsFlag.L | EapTlsFlag.M, totalLength: 3000, data: Buffer.from('abc') });
  t.same([...withLen.subarray(0, 5)], [0xc0, 0, 0, 0x0b, 0xb8], 'L|M and a 4-octet TLS Message Length');
  const d = decodeEapTls(withLen)!;
  t.equal(d.totalLength, 3000);
  t.equal(d.data.toString(), 'abc');
  t.equal(decodeEapTls(Buffer.from([0x80, 0, 0])), null, 'L without its 4 octets');
  t.equal(decodeEapTls(Buffer.alloc(0)), null);
});

t.test('fragmentation and bounded reassembly', async (t) => {
  const msg = Buffer.alloc(2500);
  for (let i = 0; i < msg.length; i++) msg[i] = i & 0xff;
  const frags = fragmentTls(msg, 1000);
  t.equal(frags.length, 3);
  t.equal(frags[0]!.flags, EapTlsFlag.L | EapTlsFlag.M, 'first: L and M');
  t.equal(frags[0]!.totalLength, 2500);
  t.equal(frags[1]!.flags, EapTlsFlag.M, 'middle: M only');
  t.equal(frags[2]!.flags, 0, 'last: no M');
  t.same(
    frags.map((f) => f.data.length),
    [1000, 1000, 500],
  );
  t.equal(fragmentTls(Buffer.alloc(10), 1000)[0]!.flags, 0, 'unfragmented: no L');

  const r = new EapTlsReassembler(4096);
  // Through the wire encoding, as the peer would send them.
  const results = frags.map((f) => r.push(decodeEapTls(encodeEapTls(f))!));
  t.same(
    results.slice(0, 2).map((x) => x.done),
    [false, false],
  );
  const last = results[2]!;
  t.ok(last.done && last.data.equals(msg), 'reassembled byte for byte');
  t.notOk(r.inProgress, 'buffer released');

  const small = new EapTlsReassembler(2000);
  const e1 = small.push(frags[0]!);
  t.ok(!e1.done && e1.error, 'TLS Message Length above the bound is refused at once');
  t.notOk(small.inProgress);
  // Without L, the sum is bounded too.
  const e2 = [small.push({ flags: EapTlsFlag.M, data: Buffer.alloc(1500) }), small.push({ flags: EapTlsFlag.M, data: Buffer.alloc(1500) })];
  t.ok(!e2[1]!.done && e2[1]!.error, 'sum of fragments above the bound is refused');
  t.notOk(small.inProgress, 'and dropped');

  const lying = new EapTlsReassembler(65536);
  lying.push({ flags: EapTlsFlag.L | EapTlsFlag.M, totalLength: 100, data: Buffer.alloc(60) });
  const over = lying.push({ flags: 0, data: Buffer.alloc(60) });
  t.ok(!over.done && over.error, 'more data than the announced TLS Message Length');
  lying.push({ flags: EapTlsFlag.L | EapTlsFlag.M, totalLength: 100, data: Buffer.alloc(60) });
  const under = lying.push({ flags: 0, data: Buffer.alloc(10) });
  t.ok(!under.done && under.error, 'less data than the announced TLS Message Length');
});

t.test('MSK is the first 64 octets of the key material (RFC 5216 §2.3, RFC 9190 §2.3)', async (t) => {
  const km = Buffer.alloc(128);
  for (let i = 0; i < 128; i++) km[i] = i;
  const msk = eapTlsMskFrom(km);
  t.equal(msk.length, 64);
  t.equal(msk[63], 63);
  t.throws(() => eapTlsMskFrom(Buffer.alloc(10)));
});
