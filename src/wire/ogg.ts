/**
 * Pure Ogg (RFC 3533) and Opus (RFC 6716) codec pieces shared by the recorder's Ogg/Opus
 * writer (record/ogg.ts) and the endpoint's Ogg/Opus file reader.
 */

// RFC 3533 §6: CRC-32 with polynomial 0x04c11db7, no reflection, initial 0.
const CRC_TABLE = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  let r = i << 24;
  for (let k = 0; k < 8; k++) r = r & 0x80000000 ? (r << 1) ^ 0x04c11db7 : r << 1;
  CRC_TABLE[i] = r >>> 0;
}
/** The Ogg page checksum (RFC 3533 §6). */
export function oggCrc(buf: Uint8Array): number {
  let crc = 0;
  for (let i = 0; i < buf.length; i++) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ buf[i]!) & 0xff]!) >>> 0;
  return crc >>> 0;
}

/**
 * Samples (at 48 kHz) in one Opus packet, from its TOC byte (RFC 6716 §3.1); 0 when
 * the packet is malformed.
 */
export function opusPacketSamples(pkt: Uint8Array): number {
  if (pkt.length < 1) return 0;
  const toc = pkt[0]!;
  const config = toc >> 3;
  let frameSamples: number;
  if (config < 12)
    frameSamples = [480, 960, 1920, 2880][config & 3]!; // SILK 10/20/40/60 ms
  else if (config < 16)
    frameSamples = [480, 960][config & 1]!; // Hybrid 10/20 ms
  else frameSamples = [120, 240, 480, 960][config & 3]!; // CELT 2.5/5/10/20 ms
  const code = toc & 3;
  let frames: number;
  if (code === 0) frames = 1;
  else if (code === 1 || code === 2) frames = 2;
  else {
    if (pkt.length < 2) return 0;
    frames = pkt[1]! & 0x3f;
  }
  return frames * frameSamples;
}
