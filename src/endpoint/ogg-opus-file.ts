/**
 * Reads an Ogg/Opus file (RFC 7845 over RFC 3533 Ogg) into its Opus packets, so
 * `gatehouse endpoint --audio-file` can send real encoded audio as RTP (RFC 7587).
 *
 * Every page's CRC is checked; the first logical stream must start with an OpusHead
 * (RFC 7845 §5.1, channel mapping family 0: mono or stereo, what RFC 7587 carries) and
 * an OpusTags header (§5.2); the audio packets follow. Other logical streams are ignored.
 *
 * Public API: readOggOpus(bytes): OggOpusFile
 */
import { oggCrc, opusPacketSamples } from '../wire/ogg.js';

export interface OggOpusFile {
  channels: number;
  preSkip: number;
  /** The audio packets, in order (headers removed). */
  packets: Buffer[];
  /** 48 kHz samples of each packet (RFC 6716 §3.1 TOC). */
  samples: number[];
  /** Granule position of the last page (RFC 7845 §4): the end of the audio, pre-skip included. */
  lastGranule: bigint;
}

export class OggOpusError extends Error {}

export function readOggOpus(b: Buffer): OggOpusFile {
  const packets: Buffer[] = [];
  let serial: number | null = null;
  let partial: Buffer[] = [];
  let lastGranule = -1n;
  let off = 0;
  while (off < b.length) {
    if (off + 27 > b.length || b.toString('ascii', off, off + 4) !== 'OggS') throw new OggOpusError(`not an Ogg page at byte ${off}`);
    const nseg = b[off + 26]!;
    const hdrEnd = off + 27 + nseg;
    if (hdrEnd > b.length) throw new OggOpusError('truncated Ogg page');
    const lacing = b.subarray(off + 27, hdrEnd);
    const bodyLen = lacing.reduce((a, l) => a + l, 0);
    const end = hdrEnd + bodyLen;
    if (end > b.length) throw new OggOpusError('truncated Ogg page');
    const page = Buffer.from(b.subarray(off, end));
    const crc = page.readUInt32LE(22);
    page.writeUInt32LE(0, 22);
    if (oggCrc(page) !== crc) throw new OggOpusError(`bad Ogg CRC at byte ${off}`); // RFC 3533 §6
    const pageSerial = b.readUInt32LE(off + 14);
    serial ??= pageSerial;
    if (pageSerial === serial) {
      // RFC 3533 §6: a packet ends at a lacing value < 255; 255 continues it (also across pages).
      let d = hdrEnd;
      for (const l of lacing) {
        partial.push(b.subarray(d, d + l));
        d += l;
        if (l < 255) {
          packets.push(Buffer.concat(partial));
          partial = [];
        }
      }
      const g = b.readBigInt64LE(off + 6);
      if (g >= 0n) lastGranule = g;
    }
    off = end;
  }
  const head = packets[0];
  if (!head || head.length < 19 || head.toString('ascii', 0, 8) !== 'OpusHead') throw new OggOpusError('not Ogg/Opus (no OpusHead)');
  if ((head[8]! & 0xf0) !== 0) throw new OggOpusError(`unsupported OpusHead version ${head[8]}`);
  const channels = head[9]!;
  if (head[18] !== 0 || channels < 1 || channels > 2)
    throw new OggOpusError('only mono/stereo Opus (channel mapping family 0) can be sent as RTP');
  const tags = packets[1];
  if (!tags || tags.toString('ascii', 0, 8) !== 'OpusTags') throw new OggOpusError('no OpusTags header');
  const audio = packets.slice(2);
  const samples = audio.map((p) => opusPacketSamples(p));
  if (audio.length === 0) throw new OggOpusError('no audio packets');
  if (samples.some((n) => n === 0 || n > 5760)) throw new OggOpusError('malformed Opus packet (RFC 6716 §3.1)');
  return { channels, preSkip: head.readUInt16LE(10), packets: audio, samples, lastGranule };
}
