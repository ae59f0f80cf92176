/**
 * CRC32c (Castagnoli), the SCTP checksum.
 *
 * RFC 4960 §6.8 / RFC 9260 §6.8 and Appendix B (originally RFC 3309): polynomial
 * 0x1EDC6F41, bit-reflected (0x82F63B78), initial value 0xFFFFFFFF, final XOR
 * 0xFFFFFFFF. Test vectors: RFC 3720 Appendix B.4.
 *
 * Implementation: slicing-by-8 over eight 256-entry tables (8 KiB, built once at load),
 * byte-at-a-time for the head/tail. Pure, allocation free per call.
 */

const POLY_REFLECTED = 0x82f63b78; // RFC 3309 §2 / RFC 4960 App. B: reflected Castagnoli polynomial

/** T[k][b]: CRC of byte b followed by k zero bytes (slicing-by-8 tables). */
const T = new Int32Array(8 * 256);
(function buildTables(): void {
  for (let b = 0; b < 256; b++) {
    let c = b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY_REFLECTED : c >>> 1;
    T[b] = c;
  }
  for (let b = 0; b < 256; b++) {
    let c = T[b]!;
    for (let k = 1; k < 8; k++) {
      c = T[c & 0xff]! ^ (c >>> 8);
      T[k * 256 + b] = c;
    }
  }
})();

/**
 * Updates a raw (non-inverted) running CRC register over data[start, end).
 * Use with crc32cInit/crc32cFinal to checksum discontiguous ranges without copying.
 */
export function crc32cUpdate(reg: number, data: Uint8Array, start = 0, end = data.length): number {
  let c = reg | 0;
  let i = start;
  if (end > data.length) end = data.length;
  // head: align nothing, just process 8 bytes at a time while possible
  const stop8 = end - 8;
  while (i <= stop8) {
    const lo = c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    c =
      T[7 * 256 + (lo & 0xff)]! ^
      T[6 * 256 + ((lo >>> 8) & 0xff)]! ^
      T[5 * 256 + ((lo >>> 16) & 0xff)]! ^
      T[4 * 256 + (lo >>> 24)]! ^
      T[3 * 256 + data[i + 4]!]! ^
      T[2 * 256 + data[i + 5]!]! ^
      T[1 * 256 + data[i + 6]!]! ^
      T[data[i + 7]!]!;
    i += 8;
  }
  while (i < end) {
    c = T[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
    i++;
  }
  return c;
}

/** Initial register value (RFC 3309 §2: preset to all ones). */
export function crc32cInit(): number {
  return ~0;
}

/** Final XOR and conversion to an unsigned 32-bit value. */
export function crc32cFinal(reg: number): number {
  return ~reg >>> 0;
}

/** Feeds n zero bytes into the register (used for the zeroed SCTP checksum field). */
export function crc32cZeros(reg: number, n: number): number {
  let c = reg | 0;
  for (let i = 0; i < n; i++) c = T[c & 0xff]! ^ (c >>> 8);
  return c;
}

/** CRC32c of data[start, end) as an unsigned 32-bit integer. */
export function crc32c(data: Uint8Array, start = 0, end = data.length): number {
  return crc32cFinal(crc32cUpdate(crc32cInit(), data, start, end));
}
