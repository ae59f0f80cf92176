import { UnitFile } from './unit-file.js';

/**
 * A classic pcap file (the format Wireshark and tshark read) of decrypted RTP/RTCP,
 * each packet wrapped in IPv4 + UDP with the flow's addresses (LINKTYPE_RAW, 101).
 * Records are whole units of a UnitFile: a crash leaves a readable file up to the last
 * flush.
 */
const LINKTYPE_RAW = 101;

export class RtpPcapWriter {
  private readonly file: UnitFile;
  private readonly hdr = Buffer.alloc(16 + 20 + 8);

  constructor(
    readonly path: string,
    private readonly src: { ip: string; port: number },
    private readonly dst: { ip: string; port: number },
    opts: { fsync?: boolean } = {},
  ) {
    this.file = new UnitFile(path, opts);
    // Classic pcap global header (draft-ietf-opsawg-pcap §4), little-endian magic.
    const g = Buffer.alloc(24);
    g.writeUInt32LE(0xa1b2c3d4, 0); // microsecond timestamps
    g.writeUInt16LE(2, 4);
    g.writeUInt16LE(4, 6);
    g.writeUInt32LE(65535, 16); // snaplen
    g.writeUInt32LE(LINKTYPE_RAW, 20);
    this.file.append(g);
  }

  get size(): number {
    return this.file.size;
  }

  /** Appends one packet (a whole RTP or RTCP packet, at most 65507 bytes). */
  write(timeMs: number, payload: Buffer, reverse = false): void {
    this.writeParts(timeMs, null, payload, reverse);
  }

  /** Appends one packet given as a header (e.g. a rebuilt RTP header) and a body: one copy. */
  writeParts(timeMs: number, head: Buffer | null, body: Buffer, reverse = false): void {
    const payloadLen = (head?.length ?? 0) + body.length;
    if (payloadLen > 65535 - 28) return; // cannot fit one IPv4 datagram
    const h = this.hdr;
    const ipLen = 20 + 8 + payloadLen;
    const sec = Math.floor(timeMs / 1000);
    h.writeUInt32LE(sec, 0);
    h.writeUInt32LE(Math.min(999_999, Math.floor((timeMs - sec * 1000) * 1000)), 4);
    h.writeUInt32LE(ipLen, 8);
    h.writeUInt32LE(ipLen, 12);
    // RFC 791 IPv4 header, no options.
    h.fill(0, 16);
    h[16] = 0x45;
    h.writeUInt16BE(ipLen, 18);
    h[24] = 64; // TTL
    h[25] = 17; // UDP
    const [s, d] = reverse ? [this.dst, this.src] : [this.src, this.dst];
    writeIp(h, 28, s.ip);
    writeIp(h, 32, d.ip);
    h.writeUInt16BE(ipChecksum(h.subarray(16, 36)), 26);
    // RFC 768 UDP header; checksum 0 = not computed (allowed for IPv4).
    h.writeUInt16BE(s.port, 36);
    h.writeUInt16BE(d.port, 38);
    h.writeUInt16BE(8 + payloadLen, 40);
    this.file.append(head ? Buffer.concat([h, head, body], 44 + payloadLen) : Buffer.concat([h, body], 44 + payloadLen));
  }

  flush(): void {
    this.file.flush();
  }

  close(): void {
    this.file.close();
  }
}

function writeIp(b: Buffer, off: number, ip: string): void {
  const parts = ip.split('.').map(Number);
  const ok = parts.length === 4 && parts.every((n) => n >= 0 && n <= 255);
  for (let i = 0; i < 4; i++) b[off + i] = ok ? parts[i]! : i === 0 ? 127 : i === 3 ? 1 : 0;
}

function ipChecksum(h: Buffer): number {
  let sum = 0;
  for (let i = 0; i < h.length; i += 2) sum += h.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}
