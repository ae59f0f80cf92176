import t from 'tap';
import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { oggCrc, oggPage, opusHead, opusPacketSamples, opusTags, OGG_BOS } from '../../../src/record/ogg.js';
import { ivfFileHeader, ivfFrameHeader, vp8Descriptor, vp8KeyframeSize, Vp8Assembler } from '../../../src/record/ivf.js';
import { H264Depacketizer } from '../../../src/record/h264.js';
import { RtpPcapWriter } from '../../../src/record/pcap-writer.js';
import { OggOpusWriter } from '../../../src/record/media-writers.js';
import { readOggPackets } from './media-helpers.js';

const work = mkdtempSync(join(tmpdir(), 'gh-rec-codecs-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

/** Bit-at-a-time CRC-32 (poly 0x04c11db7, MSB first, init 0, no final xor): RFC 3533 §6. */
function crcBitwise(b: Uint8Array): number {
  let crc = 0;
  for (const byte of b) {
    for (let bit = 7; bit >= 0; bit--) {
      const top = ((crc >>> 31) ^ ((byte >> bit) & 1)) & 1;
      crc = (crc << 1) >>> 0;
      if (top) crc = (crc ^ 0x04c11db7) >>> 0;
    }
  }
  return crc;
}

t.test('ogg CRC matches a bitwise reference', async (t) => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => oggCrc(b) === crcBitwise(b)));
  t.equal(oggCrc(new Uint8Array()), 0);
});

t.test('ogg page layout and lacing', async (t) => {
  const pkt = Buffer.alloc(510, 1); // multiple of 255: needs a trailing 0 lacing value
  const page = oggPage(0x01020304, 7, 12345n, OGG_BOS, [pkt, Buffer.from([9])]);
  t.equal(page.toString('ascii', 0, 4), 'OggS');
  t.equal(page[5], OGG_BOS);
  t.equal(page.readBigInt64LE(6), 12345n);
  t.equal(page.readUInt32LE(14), 0x01020304);
  t.equal(page.readUInt32LE(18), 7);
  t.same([...page.subarray(26, 27 + page[26]!)], [4, 255, 255, 0, 1]);
  const crc = page.readUInt32LE(22);
  const z = Buffer.from(page);
  z.writeUInt32LE(0, 22);
  t.equal(crc, crcBitwise(z));
  t.throws(() => oggPage(1, 0, 0n, 0, [Buffer.alloc(255 * 255)]), RangeError);
});

t.test('opus headers (RFC 7845 §5)', async (t) => {
  const h = opusHead(2, 3840);
  t.equal(h.toString('ascii', 0, 8), 'OpusHead');
  t.equal(h[8], 1);
  t.equal(h[9], 2);
  t.equal(h.readUInt16LE(10), 3840);
  t.equal(h.readUInt32LE(12), 48000);
  const tags = opusTags('v', ['A=b']);
  t.equal(tags.toString('ascii', 0, 8), 'OpusTags');
  t.equal(tags.readUInt32LE(8), 1);
  t.equal(tags.readUInt32LE(13), 1);
  t.equal(tags.toString('utf8', 21), 'A=b');
});

t.test('opus packet samples from the TOC (RFC 6716 §3.1)', async (t) => {
  const toc = (config: number, code: number) => (config << 3) | code;
  t.equal(opusPacketSamples(Buffer.from([toc(0, 0)])), 480); // SILK NB 10 ms
  t.equal(opusPacketSamples(Buffer.from([toc(3, 0)])), 2880); // SILK 60 ms
  t.equal(opusPacketSamples(Buffer.from([toc(13, 0)])), 960); // hybrid 20 ms
  t.equal(opusPacketSamples(Buffer.from([toc(16, 0)])), 120); // CELT 2.5 ms
  t.equal(opusPacketSamples(Buffer.from([toc(31, 1)])), 1920); // two 20 ms frames
  t.equal(opusPacketSamples(Buffer.from([toc(31, 2)])), 1920);
  t.equal(opusPacketSamples(Buffer.from([toc(31, 3), 3])), 2880); // code 3, M=3
  t.equal(opusPacketSamples(Buffer.from([toc(31, 3)])), 0, 'code 3 without the count byte');
  t.equal(opusPacketSamples(Buffer.alloc(0)), 0);
});

t.test('OggOpusWriter: granules follow the RTP clock, gaps concealed, late packets dropped', async (t) => {
  const f = join(work, 'w.opus');
  const w = new OggOpusWriter(f, 99);
  const pkt = (n: number) => Buffer.from([0xfc, n, 0, 0]); // CELT FB 20 ms
  let seq = 0;
  w.write({ payload: pkt(1), seq: seq++, timestamp: 1000, marker: false });
  w.write({ payload: pkt(2), seq: seq++, timestamp: 1960, marker: false });
  w.write({ payload: pkt(3), seq: seq++, timestamp: 1960, marker: false }); // duplicate timestamp: dropped
  w.write({ payload: pkt(4), seq: seq++, timestamp: 1960 + 960 * 4, marker: false }); // 3 packets lost
  w.write({ payload: Buffer.alloc(0), seq: seq++, timestamp: 9000, marker: false }); // malformed: ignored
  w.flush();
  w.write({ payload: pkt(5), seq: seq++, timestamp: 1960 + 960 * 5, marker: false });
  await new Promise<void>((r) => w.close(r)); // after the write flush() started
  const pkts = readOggPackets(f);
  t.equal(pkts[0]!.toString('ascii', 0, 8), 'OpusHead');
  t.equal(pkts[1]!.toString('ascii', 0, 8), 'OpusTags');
  const audio = pkts.slice(2);
  t.same(
    audio.map((p) => (p.length > 1 ? p[1] : -1)),
    [1, 2, -1, -1, -1, 4, 5],
  );
  // Last page: granule = 7 packets of 960.
  const b = readFileSync(f);
  const lastPage = b.lastIndexOf('OggS');
  t.equal(b.readBigInt64LE(lastPage + 6), 7n * 960n);
  t.equal(b[lastPage + 5]! & 0x04, 0x04, 'EOS on the last page');
});

t.test('IVF headers', async (t) => {
  const h = ivfFileHeader('VP80', 640, 480, 90000, 3);
  t.equal(h.toString('ascii', 0, 4), 'DKIF');
  t.equal(h.readUInt16LE(6), 32);
  t.equal(h.toString('ascii', 8, 12), 'VP80');
  t.same([h.readUInt16LE(12), h.readUInt16LE(14), h.readUInt32LE(16), h.readUInt32LE(20), h.readUInt32LE(24)], [640, 480, 90000, 1, 3]);
  const f = ivfFrameHeader(100, 2n ** 40n);
  t.equal(f.readUInt32LE(0), 100);
  t.equal(f.readBigUInt64LE(4), 2n ** 40n);
});

t.test('VP8 payload descriptor (RFC 7741 §4.2)', async (t) => {
  t.same(vp8Descriptor(Buffer.from([0x10, 0xaa])), { offset: 1, start: true, partition: 0 });
  t.same(vp8Descriptor(Buffer.from([0x90, 0x80, 0x05, 0xaa])), { offset: 3, start: true, partition: 0 }, '7-bit PictureID');
  t.same(vp8Descriptor(Buffer.from([0x80, 0x80, 0x81, 0x02, 0xaa])), { offset: 4, start: false, partition: 0 }, '15-bit PictureID');
  t.same(vp8Descriptor(Buffer.from([0x93, 0xf0, 0x81, 0x02, 0x01, 0x20, 0xaa])), { offset: 6, start: true, partition: 3 }, 'I, L, T and K');
  t.equal(vp8Descriptor(Buffer.alloc(0)), null);
  t.equal(vp8Descriptor(Buffer.from([0x80])), null);
  t.equal(vp8Descriptor(Buffer.from([0x80, 0x80, 0x81])), null);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 8 }), (b) => {
      const d = vp8Descriptor(Buffer.from(b));
      return d === null || d.offset <= b.length;
    }),
  );
});

t.test('VP8 key frame size and frame assembly', async (t) => {
  const key = Buffer.from([0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 1, 2, 3]);
  t.same(vp8KeyframeSize(key), { width: 320, height: 240 });
  t.equal(vp8KeyframeSize(Buffer.from([0x51, 0, 0, 0x9d, 0x01, 0x2a, 0, 0, 0, 0])), null, 'inter frame');
  const a = new Vp8Assembler();
  t.equal(a.push(Buffer.from([0x10, 1, 2]), 10, 100, false), null);
  t.same(a.push(Buffer.from([0x00, 3]), 11, 100, true), Buffer.from([1, 2, 3]));
  t.equal(a.push(Buffer.from([0x10, 4]), 12, 200, false), null);
  t.equal(a.push(Buffer.from([0x00, 5]), 14, 200, true), null, 'a lost packet drops the frame');
  t.same(a.push(Buffer.from([0x10, 6]), 15, 300, true), Buffer.from([6]), 'the next frame is whole again');
  t.equal(a.push(Buffer.from([0x00, 7]), 16, 400, true), null, 'a frame without its start is dropped');
});

t.test('H.264 depacketization (RFC 6184)', async (t) => {
  const d = new H264Depacketizer();
  const sps = Buffer.from([0x67, 1, 2, 3]);
  const pps = Buffer.from([0x68, 4]);
  const idr = Buffer.concat([Buffer.from([0x65]), Buffer.alloc(3000, 9)]);
  const stap = Buffer.concat([Buffer.from([0x78, 0, 4]), sps, Buffer.from([0, 2]), pps]);
  t.equal(d.push(stap, 1, 10, false), null);
  const body = idr.subarray(1);
  const fu = (part: Buffer, s: boolean, e: boolean) => Buffer.concat([Buffer.from([0x7c, (s ? 0x80 : 0) | (e ? 0x40 : 0) | 5]), part]);
  t.equal(d.push(fu(body.subarray(0, 1000), true, false), 2, 10, false), null);
  t.equal(d.push(fu(body.subarray(1000, 2000), false, false), 3, 10, false), null);
  const au = d.push(fu(body.subarray(2000), false, true), 4, 10, true);
  t.ok(au);
  t.ok(au!.idr);
  t.ok(au!.complete);
  const sc = Buffer.from([0, 0, 0, 1]);
  t.same(au!.data, Buffer.concat([sc, sps, sc, pps, sc, Buffer.concat([Buffer.from([0x65]), body])]));
  // A P slice as a single NAL unit packet.
  const p = d.push(Buffer.from([0x41, 0x9a, 1]), 5, 20, true);
  t.same(p!.data, Buffer.concat([sc, Buffer.from([0x41, 0x9a, 1])]));
  t.notOk(p!.idr);
  // A lost FU-A fragment makes the access unit incomplete.
  d.push(fu(body.subarray(0, 1000), true, false), 6, 30, false);
  const lost = d.push(fu(body.subarray(2000), false, true), 8, 30, true);
  t.ok(lost);
  t.notOk(lost!.complete);
  // An IDR without in-band parameter sets gets the last ones.
  const idr2 = d.push(Buffer.from([0x65, 0x88]), 9, 40, true);
  t.ok(idr2!.idr);
  t.same(idr2!.data, Buffer.concat([sc, sps, sc, pps, sc, Buffer.from([0x65, 0x88])]));
  // Hostile input never throws.
  const d2 = new H264Depacketizer();
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          p: fc.uint8Array({ maxLength: 40 }),
          seq: fc.integer({ min: 0, max: 0xffff }),
          ts: fc.integer({ min: 0, max: 5 }),
          m: fc.boolean(),
        }),
        { maxLength: 30 },
      ),
      (xs) => {
        for (const x of xs) d2.push(Buffer.from(x.p), x.seq, x.ts, x.m);
        return true;
      },
    ),
  );
});

t.test('pcap writer: classic pcap of IPv4/UDP around the packet', async (t) => {
  const f = join(work, 'x.pcap');
  const w = new RtpPcapWriter(f, { ip: '10.0.0.1', port: 1111 }, { ip: '10.0.0.2', port: 2222 });
  w.write(1_700_000_000_123, Buffer.from([0x80, 0x60, 0, 1]));
  w.write(1_700_000_000_500, Buffer.from([0x80, 0x60, 0, 2, 5]), true);
  w.write(0, Buffer.alloc(70000)); // too large for one datagram: skipped
  w.close();
  const b = readFileSync(f);
  t.equal(b.readUInt32LE(0), 0xa1b2c3d4);
  t.equal(b.readUInt32LE(20), 101, 'LINKTYPE_RAW');
  let off = 24;
  const recs: { sec: number; usec: number; ip: Buffer }[] = [];
  while (off < b.length) {
    const len = b.readUInt32LE(off + 8);
    recs.push({ sec: b.readUInt32LE(off), usec: b.readUInt32LE(off + 4), ip: b.subarray(off + 16, off + 16 + len) });
    off += 16 + len;
  }
  t.equal(off, b.length);
  t.equal(recs.length, 2);
  t.same([recs[0]!.sec, recs[0]!.usec], [1_700_000_000, 123_000]);
  const ip = recs[1]!.ip;
  t.equal(ip[0], 0x45);
  t.equal(ip.readUInt16BE(2), 20 + 8 + 5);
  t.same([...ip.subarray(12, 16)], [10, 0, 0, 2], 'reverse direction swaps addresses');
  t.equal(ip.readUInt16BE(20), 2222);
  t.equal(ip.readUInt16BE(22), 1111);
  // RFC 1071: the header sums to 0xffff with its checksum.
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += ip.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  t.equal(sum, 0xffff);
});
