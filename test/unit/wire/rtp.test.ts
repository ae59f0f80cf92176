import t from 'tap';
import fc from 'fast-check';
import {
  parseRtp,
  parseRtpHeader,
  parseRtpHeaderExtensions,
  serializeRtp,
  buildOneByteExtensions,
  rtpCsrc,
  isRtcp,
  isRtpOrRtcp,
  parseRtcpCompound,
  parseRtcpReport,
  parseSdes,
  parseBye,
  parseApp,
  parseFeedback,
  parseGenericNack,
  RTCP_SR,
  RTCP_SDES,
  RTCP_BYE,
  RTCP_PSFB,
  RTCP_RTPFB,
  RTCP_APP,
} from '../../../src/wire/rtp.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

t.test('RTP header: fixed fields (RFC 7714 §16 packet)', async (t) => {
  const b = hex('8040f17b 8041f8d3 5501a0b2 47616c6c 6961');
  const h = parseRtp(b)!;
  t.equal(h.version, 2);
  t.equal(h.payloadType, 0x40);
  t.equal(h.marker, false);
  t.equal(h.sequenceNumber, 0xf17b);
  t.equal(h.timestamp, 0x8041f8d3);
  t.equal(h.ssrc, 0x5501a0b2);
  t.equal(h.payloadOffset, 12);
  t.equal(h.payloadLength, 6);
});

t.test('RTP: CSRCs, one-byte extension, padding round trip', async (t) => {
  const ext = buildOneByteExtensions([
    { id: 1, data: Buffer.from([0x7f]) },
    { id: 5, data: Buffer.from('abcd') },
  ]);
  const payload = Buffer.from('hello opus');
  const b = serializeRtp({
    payloadType: 111,
    sequenceNumber: 65535,
    timestamp: 0xffffffff,
    ssrc: 0xdeadbeef,
    marker: true,
    csrcs: [1, 2, 3],
    extension: { profile: 0xbede, data: ext },
    payload,
    padding: 3,
  });
  const h = parseRtp(b)!;
  t.ok(h);
  t.equal(h.marker, true);
  t.equal(h.csrcCount, 3);
  t.equal(rtpCsrc(b, h, 2), 3);
  t.equal(rtpCsrc(b, h, 3), -1);
  t.equal(h.extensionProfile, 0xbede);
  t.equal(h.headerLength, 12 + 12 + 4 + ext.length);
  t.equal(h.paddingLength, 3);
  t.equal(b.subarray(h.payloadOffset, h.payloadOffset + h.payloadLength).toString(), 'hello opus');
  const els = parseRtpHeaderExtensions(b, h)!;
  t.same(
    els.map((e) => [e.id, b.subarray(e.offset, e.offset + e.length).toString('hex')]),
    [
      [1, '7f'],
      [5, Buffer.from('abcd').toString('hex')],
    ],
  );
  // parseRtpHeader (SRTP view) leaves padding inside the payload.
  t.equal(parseRtpHeader(b)!.payloadLength, payload.length + 3);
});

t.test('RTP: RFC 8285 two-byte form', async (t) => {
  const data = Buffer.concat([Buffer.from([7, 0]), Buffer.from([0]), Buffer.from([200, 3, 9, 8, 7]), Buffer.alloc(4)]);
  const b = serializeRtp({
    payloadType: 96,
    sequenceNumber: 1,
    timestamp: 2,
    ssrc: 3,
    extension: { profile: 0x1003, data },
    payload: Buffer.from([1]),
  });
  const h = parseRtp(b)!;
  const els = parseRtpHeaderExtensions(b, h)!;
  t.same(
    els.map((e) => [e.id, e.length]),
    [
      [7, 0],
      [200, 3],
    ],
  );
  t.equal(b[els[1].offset + 2], 7);
  // Non-RFC 8285 profile: no elements.
  const b2 = serializeRtp({
    payloadType: 96,
    sequenceNumber: 1,
    timestamp: 2,
    ssrc: 3,
    extension: { profile: 0x1234, data: Buffer.alloc(4) },
    payload: Buffer.alloc(0),
  });
  t.same(parseRtpHeaderExtensions(b2, parseRtp(b2)!), []);
});

t.test('RTP: malformed input is null', async (t) => {
  const good = serializeRtp({ payloadType: 0, sequenceNumber: 1, timestamp: 1, ssrc: 1, csrcs: [1], payload: Buffer.alloc(4), padding: 2 });
  t.ok(parseRtp(good));
  t.equal(parseRtp(good.subarray(0, 11)), null, 'short');
  const v1 = Buffer.from(good);
  v1[0] = (v1[0] & 0x3f) | 0x40;
  t.equal(parseRtp(v1), null, 'version 1');
  t.equal(parseRtp(good.subarray(0, 14)), null, 'CSRC truncated');
  const pad0 = Buffer.from(good);
  pad0[pad0.length - 1] = 0;
  t.equal(parseRtp(pad0), null, 'padding count 0');
  const padBig = Buffer.from(good);
  padBig[padBig.length - 1] = 100;
  t.equal(parseRtp(padBig), null, 'padding beyond payload');
  const ext = serializeRtp({
    payloadType: 0,
    sequenceNumber: 1,
    timestamp: 1,
    ssrc: 1,
    extension: { profile: 0xbede, data: Buffer.from([0x13, 1, 2, 3]) },
    payload: Buffer.alloc(0),
  });
  const extBad = Buffer.from(ext);
  extBad.writeUInt16BE(5, 14);
  t.equal(parseRtp(extBad), null, 'extension length beyond packet');
  // One-byte element longer than the extension block.
  t.equal(parseRtpHeaderExtensions(ext, parseRtp(ext)!), null, 'element overruns');
});

t.test('RFC 5761 §4 / RFC 7983 demultiplexing', async (t) => {
  t.equal(isRtcp(Buffer.from([0x80, 200])), true);
  t.equal(isRtcp(Buffer.from([0x81, 206])), true);
  t.equal(isRtcp(Buffer.from([0x80, 223])), true);
  t.equal(isRtcp(Buffer.from([0x80, 111])), false);
  t.equal(isRtcp(Buffer.from([0x80, 0x80 | 111])), false, 'marker + PT 111 = 239 is RTP');
  t.equal(isRtcp(Buffer.from([0x80, 191])), false, 'PT 63 with marker is RTP');
  t.equal(isRtcp(Buffer.from([0x80, 224])), false);
  t.equal(isRtpOrRtcp(Buffer.from([0x80])), true);
  t.equal(isRtpOrRtcp(Buffer.from([0x16])), false, 'DTLS');
  t.equal(isRtpOrRtcp(Buffer.from([0x00])), false, 'STUN');
});

function rtcpPacket(countOrFmt: number, pt: number, body: Buffer, pad = 0): Buffer {
  const len = 4 + body.length + pad;
  const b = Buffer.alloc(len);
  b[0] = 0x80 | (pad ? 0x20 : 0) | countOrFmt;
  b[1] = pt;
  b.writeUInt16BE(len / 4 - 1, 2);
  body.copy(b, 4);
  if (pad) b[len - 1] = pad;
  return b;
}

t.test('RTCP compound: SR, SDES, BYE, APP, PSFB, RTPFB', async (t) => {
  const srBody = Buffer.alloc(4 + 20 + 24);
  srBody.writeUInt32BE(0x11111111, 0);
  srBody.writeUInt32BE(0xe1234567, 4);
  srBody.writeUInt32BE(0x89abcdef, 8);
  srBody.writeUInt32BE(48000, 12);
  srBody.writeUInt32BE(10, 16);
  srBody.writeUInt32BE(1600, 20);
  srBody.writeUInt32BE(0x22222222, 24);
  srBody[28] = 25;
  srBody.writeUIntBE(0xfffffe, 29, 3); // -2 (24-bit signed)
  srBody.writeUInt32BE(70000, 32);
  const sr = rtcpPacket(1, RTCP_SR, srBody);
  const cname = Buffer.from('user@host');
  const sdesBody = Buffer.alloc((4 + 2 + cname.length + 1 + 3) & ~3);
  sdesBody.writeUInt32BE(0x11111111, 0);
  sdesBody[4] = 1;
  sdesBody[5] = cname.length;
  cname.copy(sdesBody, 6);
  const sdes = rtcpPacket(1, RTCP_SDES, sdesBody);
  const pli = rtcpPacket(1, RTCP_PSFB, Buffer.from('1111111133333333', 'hex'));
  const nack = rtcpPacket(1, RTCP_RTPFB, Buffer.from('11111111333333330064' + '0005', 'hex'));
  const app = rtcpPacket(3, RTCP_APP, Buffer.concat([Buffer.from('11111111', 'hex'), Buffer.from('GHSE'), Buffer.from('00010203', 'hex')]));
  const byeBody = Buffer.concat([Buffer.from('11111111', 'hex'), Buffer.from([3]), Buffer.from('bye')]);
  const bye = rtcpPacket(1, RTCP_BYE, byeBody, 4);
  const all = Buffer.concat([sr, sdes, pli, nack, app, bye]);
  const ps = parseRtcpCompound(all, { requireReportFirst: true })!;
  t.same(
    ps.map((p) => p.packetType),
    [200, 202, 206, 205, 204, 203],
  );
  const rep = parseRtcpReport(all, ps[0])!;
  t.equal(rep.ssrc, 0x11111111);
  t.equal(rep.sender!.packetCount, 10);
  t.equal(rep.blocks[0].ssrc, 0x22222222);
  t.equal(rep.blocks[0].fractionLost, 25);
  t.equal(rep.blocks[0].cumulativeLost, -2);
  t.equal(rep.blocks[0].highestSeq, 70000);
  const chunks = parseSdes(all, ps[1])!;
  t.equal(chunks[0].ssrc, 0x11111111);
  t.equal(all.toString('utf8', chunks[0].items[0].offset, chunks[0].items[0].offset + chunks[0].items[0].length), 'user@host');
  const fb = parseFeedback(all, ps[2])!;
  t.equal(fb.name, 'pli');
  t.equal(fb.mediaSsrc, 0x33333333);
  const nk = parseFeedback(all, ps[3])!;
  t.equal(nk.name, 'nack');
  t.same(parseGenericNack(all, nk), [100, 101, 103]);
  const a = parseApp(all, ps[4])!;
  t.equal(a.name, 'GHSE');
  t.equal(a.subtype, 3);
  t.equal(a.dataLength, 4);
  const by = parseBye(all, ps[5])!;
  t.same(by.ssrcs, [0x11111111]);
  t.equal(by.reason, 'bye');
  t.equal(ps[5].paddingLength, 4);
});

t.test('RTCP: malformed compounds are null', async (t) => {
  const rr = rtcpPacket(0, 201, Buffer.from('11111111', 'hex'));
  const padded = rtcpPacket(0, 201, Buffer.from('11111111', 'hex'), 4);
  t.ok(parseRtcpCompound(rr));
  t.equal(parseRtcpCompound(Buffer.concat([padded, rr])), null, 'padding not on last packet');
  t.equal(parseRtcpCompound(Buffer.concat([rr, rr.subarray(0, 6)])), null, 'truncated second packet');
  const v = Buffer.from(rr);
  v[0] = 0x40;
  t.equal(parseRtcpCompound(v), null, 'version 1');
  const long = Buffer.from(rr);
  long.writeUInt16BE(9, 2);
  t.equal(parseRtcpCompound(long), null, 'length beyond datagram');
  t.equal(parseRtcpCompound(rtcpPacket(1, RTCP_PSFB, Buffer.alloc(8)), { requireReportFirst: true }), null, 'RFC 3550 §6.1 report first');
  t.ok(parseRtcpCompound(rtcpPacket(1, RTCP_PSFB, Buffer.alloc(8))), 'reduced-size RTCP (RFC 5506) accepted by default');
  t.equal(parseRtcpReport(rr, { ...parseRtcpCompound(rr)![0], count: 3 }), null, 'report blocks beyond packet');
});

t.test('fuzz: parsers never throw', async (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (arr) => {
      const b = Buffer.from(arr);
      if (b.length > 0) b[0] = (b[0] & 0x3f) | 0x80; // mostly version 2
      const h = parseRtp(b);
      if (h) {
        parseRtpHeaderExtensions(b, h);
        if (h.payloadOffset + h.payloadLength + h.paddingLength !== b.length) return false;
      }
      const ps = parseRtcpCompound(b);
      for (const p of ps ?? []) {
        parseRtcpReport(b, p);
        parseSdes(b, p);
        parseBye(b, p);
        parseApp(b, p);
        const f = parseFeedback(b, p);
        if (f) parseGenericNack(b, f);
      }
      return true;
    }),
    { numRuns: 3000 },
  );
  t.pass('no throw');
});
