/**
 * Ogg (RFC 3533) pages and the Ogg/Opus mapping (RFC 7845), written incrementally: every
 * page is complete and checksummed on its own, so a file cut by a crash is readable up
 * to its last whole page.
 */
import { oggCrc, opusPacketSamples } from '../wire/ogg.js';

export { oggCrc, opusPacketSamples };

export const OGG_BOS = 0x02;
export const OGG_EOS = 0x04;

/** One page holding whole packets (each packet < 255*255 bytes here; RFC 3533 §6 lacing). */
export function oggPage(serial: number, seq: number, granule: bigint, flags: number, packets: Buffer[]): Buffer {
  const lacing: number[] = [];
  for (const p of packets) {
    let n = p.length;
    while (n >= 255) {
      lacing.push(255);
      n -= 255;
    }
    lacing.push(n); // a packet whose length is a multiple of 255 ends with a 0 lacing value
  }
  if (lacing.length > 255) throw new RangeError('too many segments for one Ogg page');
  const header = Buffer.alloc(27 + lacing.length);
  header.write('OggS', 0, 'ascii');
  header[4] = 0; // version
  header[5] = flags;
  header.writeBigInt64LE(granule, 6);
  header.writeUInt32LE(serial >>> 0, 14);
  header.writeUInt32LE(seq >>> 0, 18);
  header.writeUInt32LE(0, 22); // CRC computed over the page with this field zero
  header[26] = lacing.length;
  Buffer.from(lacing).copy(header, 27);
  const page = Buffer.concat([header, ...packets]);
  page.writeUInt32LE(oggCrc(page), 22);
  return page;
}

/** RFC 7845 §5.1 identification header. */
export function opusHead(channels: number, preSkip = 3840, inputRate = 48000): Buffer {
  const b = Buffer.alloc(19);
  b.write('OpusHead', 0, 'ascii');
  b[8] = 1; // version
  b[9] = channels;
  b.writeUInt16LE(preSkip, 10);
  b.writeUInt32LE(inputRate, 12);
  b.writeInt16LE(0, 16); // output gain
  b[18] = 0; // channel mapping family 0: mono/stereo
  return b;
}

/** RFC 7845 §5.2 comment header. */
export function opusTags(vendor: string, comments: string[] = []): Buffer {
  const v = Buffer.from(vendor, 'utf8');
  const parts = [Buffer.from('OpusTags', 'ascii'), u32le(v.length), v, u32le(comments.length)];
  for (const c of comments) {
    const cb = Buffer.from(c, 'utf8');
    parts.push(u32le(cb.length), cb);
  }
  return Buffer.concat(parts);
}

function u32le(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
