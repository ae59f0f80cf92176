import t from 'tap';
import { demux, classifyByte, isRtcp, isDtls13Unified, PC_DROP, PC_DTLS } from '../../../src/wire/demux.js';

t.test('RFC 7983 §7 ranges, every first byte', async (t) => {
  const expected = (b: number): string =>
    b <= 3
      ? 'stun'
      : b >= 16 && b <= 19
        ? 'zrtp'
        : b >= 20 && b <= 63
          ? 'dtls'
          : b >= 64 && b <= 79
            ? 'channeldata'
            : b >= 128 && b <= 191
              ? 'rtp'
              : 'drop';
  for (let b = 0; b < 256; b++) t.equal(demux(Buffer.from([b, 0, 0, 0])), expected(b), `byte ${b}`);
});

t.test('DTLS 1.2 content types and DTLS 1.3 unified headers go to DTLS', async (t) => {
  for (const ct of [20, 21, 22, 23, 25]) t.equal(classifyByte(ct), PC_DTLS);
  for (let b = 0x20; b <= 0x3f; b++) {
    t.equal(classifyByte(b), PC_DTLS);
    t.ok(isDtls13Unified(b));
  }
  t.notOk(isDtls13Unified(23));
});

t.test('empty, offsets', async (t) => {
  t.equal(demux(Buffer.alloc(0)), 'drop');
  t.equal(demux(Buffer.from([0x80, 0x17]), 5), 'drop');
  t.equal(demux(Buffer.from([0xff, 0x17]), 1), 'dtls');
  t.equal(classifyByte(255), PC_DROP);
});

t.test('RTCP vs RTP by RFC 5761 §4 payload type', async (t) => {
  t.ok(isRtcp(Buffer.from([0x80, 200])), 'SR');
  t.ok(isRtcp(Buffer.from([0x81, 201])), 'RR');
  t.ok(isRtcp(Buffer.from([0x8f, 206])), 'PSFB');
  t.notOk(isRtcp(Buffer.from([0x80, 111])), 'opus PT 111');
  t.notOk(isRtcp(Buffer.from([0x80, 0x80 | 96])), 'PT 96 with marker');
  t.notOk(isRtcp(Buffer.from([0x80])), 'too short');
});
