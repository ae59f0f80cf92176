// SCTP codec tests: common header + CRC32c (RFC 9260 §3.1, §6.8), chunk framing
// (§3.2), chunk decoders against hand-built RFC layouts, hostile lengths.
import t from 'tap';
import {
  ChunkIterator,
  ChunkType,
  ParamType,
  computeSctpChecksum,
  decodeAbort,
  decodeCookieEcho,
  decodeData,
  decodeForwardTsn,
  decodeHeartbeat,
  decodeIData,
  decodeIForwardTsn,
  decodeInit,
  decodeReconfig,
  decodeSack,
  decodeShutdown,
  decodeTlvs,
  encodeChunk,
  encodeDataChunk,
  encodeForwardTsnChunk,
  encodeIDataChunk,
  encodeInitChunk,
  encodeOutgoingResetChunk,
  encodeSackChunk,
  encodeSctpPacket,
  encodeTlv,
  parseChunks,
  parseSctpHeader,
  ssnLt,
  tsnAdd,
  tsnDiff,
  tsnLt,
  tsnLte,
  verifySctpChecksum,
} from '../../../src/wire/sctp.js';
import { crc32c } from '../../../src/wire/crc32c.js';

const h = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

t.test('common header and checksum', async (t) => {
  const pkt = encodeSctpPacket(5000, 5001, 0x11223344, [encodeDataChunk({ tsn: 7, stream: 1, ssn: 0, ppid: 51, data: Buffer.from('hi') })]);
  const hd = parseSctpHeader(pkt)!;
  t.equal(hd.srcPort, 5000);
  t.equal(hd.dstPort, 5001);
  t.equal(hd.verificationTag, 0x11223344);
  // RFC 9260 §6.8: CRC over the packet with the checksum field zeroed, stored LSB first.
  const z = Buffer.from(pkt);
  z.fill(0, 8, 12);
  t.equal(hd.checksum, crc32c(z));
  t.equal(computeSctpChecksum(pkt), hd.checksum);
  t.ok(verifySctpChecksum(pkt));
  for (const i of [0, 5, 8, 11, 12, pkt.length - 1]) {
    const bad = Buffer.from(pkt);
    bad[i]! ^= 0x01;
    t.notOk(verifySctpChecksum(bad), `flip byte ${i}`);
  }
  t.equal(parseSctpHeader(Buffer.alloc(11)), null);
  t.notOk(verifySctpChecksum(Buffer.alloc(4)));
});

t.test('known packet: werift/usrsctp style COOKIE-ACK with fixed checksum', async (t) => {
  // Hand-built: ports 5000/5000, vtag 0x01020304, COOKIE ACK chunk (type 11, len 4).
  const body = h('13881388 01020304 00000000 0b000004');
  const crc = crc32c(body);
  body.writeUInt32LE(crc, 8);
  t.ok(verifySctpChecksum(body));
  const { chunks, malformed } = parseChunks(body);
  t.notOk(malformed);
  t.same(
    chunks.map((c) => c.type),
    [ChunkType.COOKIE_ACK],
  );
});

t.test('chunk iteration: padding, truncation, hostile lengths', async (t) => {
  const a = encodeChunk(ChunkType.HEARTBEAT, 0, encodeTlv(ParamType.HEARTBEAT_INFO, Buffer.from('abc')));
  const b = encodeChunk(ChunkType.COOKIE_ECHO, 0, Buffer.from('12345')); // value 5 → padded
  t.equal(b.length, 12);
  t.equal(b.readUInt16BE(2), 9, 'length excludes padding');
  const pkt = encodeSctpPacket(1, 2, 3, [a, b, encodeChunk(ChunkType.COOKIE_ACK, 0, Buffer.alloc(0))]);
  const r = parseChunks(pkt);
  t.same(
    r.chunks.map((c) => c.type),
    [ChunkType.HEARTBEAT, ChunkType.COOKIE_ECHO, ChunkType.COOKIE_ACK],
  );
  t.equal(r.chunks[1]!.value.toString(), '12345');
  t.equal(decodeHeartbeat(r.chunks[0]!.value)!.info.toString(), 'abc');
  t.equal(decodeCookieEcho(r.chunks[1]!.value)!.cookie.toString(), '12345');

  // Last chunk without its pad is tolerated.
  const np = Buffer.concat([Buffer.alloc(12), Buffer.from([10, 0, 0, 5, 0x41])]);
  t.same(
    parseChunks(np).chunks.map((c) => c.value.toString()),
    ['A'],
  );
  t.notOk(parseChunks(np).malformed);

  // Length < 4, length beyond the packet, and length 0 never loop or throw.
  for (const len of [0, 1, 3, 0xffff, 9]) {
    const bad = Buffer.concat([Buffer.alloc(12), Buffer.from([0, 3, len >> 8, len & 0xff, 1, 2, 3, 4])]);
    const res = parseChunks(bad);
    t.ok(res.malformed, `len ${len} malformed`);
    t.equal(res.chunks.length, 0);
  }
  // Non-zero junk after the last chunk is malformed; zero padding is not.
  t.ok(parseChunks(Buffer.concat([pkt, Buffer.from([1])])).malformed);
  t.notOk(parseChunks(Buffer.concat([pkt, Buffer.from([0, 0])])).malformed);
  // The iterator caps the number of chunks.
  const many = Buffer.concat([Buffer.alloc(12), ...Array.from({ length: 50 }, () => encodeChunk(11, 0, Buffer.alloc(0)))]);
  const it = new ChunkIterator(10).reset(many);
  let n = 0;
  while (it.next()) n++;
  t.equal(n, 10);
  t.ok(it.malformed);
});

t.test('DATA (RFC 9260 §3.3.1)', async (t) => {
  // flags U|B|E = 0x07, length 16 + 3, TSN 0x01020304, stream 9, SSN 0x0a0b, PPID 53
  const v = h('01020304 0009 0a0b 00000035 616263');
  const d = decodeData(0x07, v)!;
  t.equal(d.tsn, 0x01020304);
  t.equal(d.stream, 9);
  t.equal(d.ssn, 0x0a0b);
  t.equal(d.ppid, 53);
  t.ok(d.unordered && d.begin && d.end);
  t.notOk(d.immediate);
  t.equal(d.data.toString(), 'abc');
  const m = decodeData(0x00, v)!;
  t.notOk(m.unordered || m.begin || m.end, 'middle fragment');
  t.ok(decodeData(0x08, v)!.immediate, 'I bit (RFC 7053)');
  t.equal(decodeData(3, v.subarray(0, 12)), null, 'no user data');
  t.equal(decodeData(3, v.subarray(0, 5)), null);
  const enc = parseChunks(
    encodeSctpPacket(1, 1, 1, [
      encodeDataChunk({ tsn: 5, stream: 2, ssn: 3, ppid: 51, unordered: true, begin: true, end: false, data: Buffer.from('x') }),
    ]),
  ).chunks[0]!;
  t.equal(enc.type, 0);
  t.equal(enc.flags, 0x06);
});

t.test('I-DATA (RFC 8260 §2.1)', async (t) => {
  const b = decodeIData(0x02, h('00000010 0003 0000 00000007 00000033 4142'))!;
  t.equal(b.tsn, 16);
  t.equal(b.stream, 3);
  t.equal(b.mid, 7);
  t.equal(b.ppid, 0x33, 'B set: PPID');
  t.equal(b.fsn, 0);
  t.ok(b.idata);
  const m = decodeIData(0x01, h('00000011 0003 0000 00000007 00000002 4344'))!;
  t.equal(m.fsn, 2, 'B clear: FSN');
  t.equal(m.ppid, 0);
  t.ok(m.end);
  t.equal(decodeIData(0x03, h('00000011 0003 0000 00000007 00000002')), null);
  const rt = parseChunks(
    encodeSctpPacket(1, 1, 1, [encodeIDataChunk({ tsn: 1, stream: 4, mid: 9, fsn: 5, begin: false, end: true, data: Buffer.from('z') })]),
  ).chunks[0]!;
  t.equal(rt.type, ChunkType.I_DATA);
  const dd = decodeIData(rt.flags, rt.value)!;
  t.same([dd.mid, dd.fsn, dd.begin, dd.end], [9, 5, false, true]);
});

t.test('INIT / INIT ACK (RFC 9260 §3.3.2-3, RFC 5061 §4.2.7, RFC 3758 §3.1, RFC 9653)', async (t) => {
  const params = [
    encodeTlv(ParamType.FORWARD_TSN_SUPPORTED, Buffer.alloc(0)),
    encodeTlv(ParamType.SUPPORTED_EXTENSIONS, Buffer.from([ChunkType.RE_CONFIG, ChunkType.FORWARD_TSN, ChunkType.I_DATA])),
    encodeTlv(ParamType.ZERO_CHECKSUM_ACCEPTABLE, h('00000001')),
    encodeTlv(ParamType.STATE_COOKIE, Buffer.from('cookie!')),
  ];
  const c = parseChunks(
    encodeSctpPacket(5000, 5000, 0, [
      encodeInitChunk(true, {
        initiateTag: 0xdeadbeef,
        aRwnd: 1000,
        outboundStreams: 16,
        inboundStreams: 32,
        initialTsn: 0xfffffff0,
        params,
      }),
    ]),
  ).chunks[0]!;
  t.equal(c.type, ChunkType.INIT_ACK);
  const i = decodeInit(c.value)!;
  t.equal(i.initiateTag, 0xdeadbeef);
  t.equal(i.aRwnd, 1000);
  t.equal(i.outboundStreams, 16);
  t.equal(i.inboundStreams, 32);
  t.equal(i.initialTsn, 0xfffffff0);
  t.ok(i.forwardTsn);
  t.ok(i.idata);
  t.ok(i.reconfig);
  t.ok(i.zeroChecksum);
  t.same(i.supportedExtensions, [130, 192, 64]);
  t.equal(i.stateCookie!.toString(), 'cookie!');
  t.equal(i.params.length, 4);
  // Invalid: initiate tag 0, zero streams, short.
  const z = Buffer.from(c.value);
  z.writeUInt32BE(0, 0);
  t.equal(decodeInit(z), null);
  const s = Buffer.from(c.value);
  s.writeUInt16BE(0, 8);
  t.equal(decodeInit(s), null);
  t.equal(decodeInit(c.value.subarray(0, 15)), null);
  // Broken parameter framing keeps the fixed part.
  const broken = Buffer.concat([c.value.subarray(0, 16), h('8008 00ff 01')]);
  t.same(decodeInit(broken)!.params, []);
});

t.test('SACK (RFC 9260 §3.3.4)', async (t) => {
  const c = parseChunks(
    encodeSctpPacket(1, 1, 1, [
      encodeSackChunk(
        100,
        5000,
        [
          [2, 3],
          [5, 5],
        ],
        [99],
      ),
    ]),
  ).chunks[0]!;
  const s = decodeSack(c.value)!;
  t.equal(s.cumTsnAck, 100);
  t.equal(s.aRwnd, 5000);
  t.same(s.gapBlocks, [
    [2, 3],
    [5, 5],
  ]);
  t.same(s.dupTsns, [99]);
  const lying = Buffer.from(c.value);
  lying.writeUInt16BE(0xffff, 8); // claims 65535 gap blocks
  t.equal(decodeSack(lying), null);
  t.equal(decodeSack(Buffer.alloc(11)), null);
});

t.test('FORWARD-TSN (RFC 3758 §3.2) and I-FORWARD-TSN (RFC 8260 §2.3.1)', async (t) => {
  const f = decodeForwardTsn(h('00000064 0001 0005 0002 0007'))!;
  t.equal(f.newCumTsn, 100);
  t.same(
    f.streams.map((s) => [s.stream, s.ssn]),
    [
      [1, 5],
      [2, 7],
    ],
  );
  t.notOk(f.iforward);
  t.equal(decodeForwardTsn(h('00000064 0001')), null, 'partial entry');
  const i = decodeIForwardTsn(h('00000064 0003 0001 00000009 0004 0000 0000000a'))!;
  t.same(
    i.streams.map((s) => [s.stream, s.unordered, s.mid]),
    [
      [3, true, 9],
      [4, false, 10],
    ],
  );
  t.ok(i.iforward);
  t.equal(decodeIForwardTsn(h('00000064 0003 0001')), null);
  const rt = parseChunks(encodeSctpPacket(1, 1, 1, [encodeForwardTsnChunk(7, [{ stream: 3, unordered: true, mid: 2 }], true)])).chunks[0]!;
  t.equal(rt.type, ChunkType.I_FORWARD_TSN);
  t.same(decodeIForwardTsn(rt.value)!.streams[0], { stream: 3, ssn: 0, unordered: true, mid: 2 });
});

t.test('ABORT, SHUTDOWN family, HEARTBEAT', async (t) => {
  const a = decodeAbort(1, h('000c 0008 41424344'));
  t.ok(a.tBit);
  t.equal(a.causes[0]!.type, 12);
  t.equal(a.causes[0]!.value.toString(), 'ABCD');
  t.same(decodeAbort(0, Buffer.alloc(0)), { tBit: false, causes: [] });
  t.same(decodeShutdown(h('0000002a')), { cumTsnAck: 42 });
  t.equal(decodeShutdown(h('00002a')), null);
  t.equal(decodeHeartbeat(h('0002 0005 00 000000')), null, 'no heartbeat info');
  t.same(
    decodeTlvs(h('0001 0005 00 000000 0002 0004')).tlvs.map((x) => x.type),
    [1, 2],
  );
});

t.test('RE-CONFIG (RFC 6525 §3.1, §4)', async (t) => {
  const c = parseChunks(encodeSctpPacket(1, 1, 1, [encodeOutgoingResetChunk(11, 22, 33, [1, 3, 5])])).chunks[0]!;
  t.equal(c.type, ChunkType.RE_CONFIG);
  const r = decodeReconfig(c.value)!;
  t.same(r.params, [{ kind: 'outgoing-reset', reqSeq: 11, respSeq: 22, lastTsn: 33, streams: [1, 3, 5] }]);
  const resp = decodeReconfig(
    Buffer.concat([encodeTlv(16, h('00000007 00000001')), encodeTlv(14, h('00000008 0002')), encodeTlv(17, h('00000009 0004 0000'))]),
  )!;
  t.same(resp.params, [
    { kind: 'response', respSeq: 7, result: 1 },
    { kind: 'incoming-reset', reqSeq: 8, streams: [2] },
    { kind: 'add-outgoing', reqSeq: 9, newStreams: 4 },
  ]);
  t.same(decodeReconfig(encodeTlv(13, h('0000')))!.params, [], 'short param skipped');
  t.equal(decodeReconfig(h('000d ffff 00')), null);
});

t.test('serial number arithmetic (RFC 1982)', async (t) => {
  t.ok(tsnLt(0xffffffff, 0));
  t.ok(tsnLt(1, 2));
  t.notOk(tsnLt(2, 1));
  t.notOk(tsnLt(5, 5));
  t.ok(tsnLte(5, 5));
  t.ok(tsnLt(0xfffffff0, 0x10));
  t.equal(tsnDiff(0xfffffffe, 1), 3);
  t.equal(tsnDiff(1, 0xfffffffe), -3);
  t.equal(tsnAdd(0xffffffff, 1), 0);
  t.equal(tsnAdd(0, -1), 0xffffffff);
  t.ok(ssnLt(0xffff, 0));
  t.notOk(ssnLt(0, 0xffff));
});
