/**
 * The classic pcap file format (draft-ietf-opsawg-pcap, the format Wireshark and tshark
 * read): a 24-byte global header and a 16-byte header per record, little-endian,
 * microsecond timestamps. Pure encoders; reading is src/inspect/capture.ts.
 */

/** draft-ietf-opsawg-pcap §4: magic for microsecond timestamps (written little-endian). */
export const PCAP_MAGIC_US = 0xa1b2c3d4;

export function pcapGlobalHeader(linktype: number, snaplen: number): Buffer {
  const h = Buffer.alloc(24);
  h.writeUInt32LE(PCAP_MAGIC_US, 0); // reads back as d4 c3 b2 a1
  h.writeUInt16LE(2, 4); // version 2.4
  h.writeUInt16LE(4, 6);
  h.writeUInt32LE(snaplen, 16);
  h.writeUInt32LE(linktype, 20);
  return h;
}

/** §5: the record header for `len` captured (= original) bytes at timeMs. */
export function pcapRecordHeader(timeMs: number, len: number): Buffer {
  const h = Buffer.alloc(16);
  const us = Math.round(timeMs * 1000);
  h.writeUInt32LE(Math.floor(us / 1e6), 0);
  h.writeUInt32LE(us % 1e6, 4);
  h.writeUInt32LE(len, 8);
  h.writeUInt32LE(len, 12);
  return h;
}
