import { isIPv4 } from 'node:net';
import { UnitFile, type UnitFileOptions } from './unit-file.js';
import { pcapGlobalHeader, pcapRecordHeader } from '../wire/pcap.js';
import { buildIp, buildUdp } from '../wire/netpkt.js';

/**
 * A classic pcap file (the format Wireshark and tshark read) of decrypted RTP/RTCP,
 * each packet wrapped in IPv4 + UDP with the flow's addresses (LINKTYPE_RAW, 101).
 * Records are whole units of a UnitFile: a crash leaves a readable file up to the last
 * completed write.
 */
const LINKTYPE_RAW = 101;

export class RtpPcapWriter {
  private readonly file: UnitFile;

  constructor(
    readonly path: string,
    private readonly src: { ip: string; port: number },
    private readonly dst: { ip: string; port: number },
    opts: UnitFileOptions = {},
  ) {
    this.file = new UnitFile(path, opts);
    this.file.append(pcapGlobalHeader(LINKTYPE_RAW, 65535));
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
    const [s, d] = reverse ? [this.dst, this.src] : [this.src, this.dst];
    // RFC 791 IPv4 + RFC 768 UDP (checksum 0: not computed, allowed for IPv4).
    const ip = buildIp(ipv4Or(s.ip), ipv4Or(d.ip), 17, buildUdp(s.port, d.port, head ? Buffer.concat([head, body]) : body));
    this.file.append(Buffer.concat([pcapRecordHeader(timeMs, ip.length), ip]));
  }

  flush(soon = false): void {
    if (soon) this.file.flushSoon();
    else this.file.flush();
  }

  close(done?: () => void): void {
    this.file.close(done);
  }
}

/** The pcap is IPv4 only: other addresses are shown as 127.0.0.1. */
function ipv4Or(ip: string): string {
  return isIPv4(ip) ? ip : '127.0.0.1';
}
