/**
 * Reading harness captures: a tiny classic-pcap reader (Ethernet / Linux cooked / raw IPv4,
 * UDP only) and TURN unwrapping of the client↔server leg, so tests can get at the DTLS and
 * SRTP datagrams on every leg of a relayed call.
 *
 *   readPcapUdp(path): UdpDatagram[]
 *   unwrapTurn(d, turnPort): LegDatagram | null
 *     client leg (one port is the TURN server's): ChannelData (RFC 8656 §12.4, first byte
 *     0x40-0x4F) or Send/Data indication (RFC 8656 §10, DATA attribute) → inner payload,
 *     with the peer (XOR-PEER-ADDRESS, or the channel's bound peer) and the TURN client.
 *     relay leg (neither port is the TURN server's): the datagram itself.
 *   legDatagrams(path, turnPort): LegDatagram[]  both, in capture order
 */
import { readFileSync } from 'node:fs';

export interface UdpDatagram {
  /** Seconds since epoch (float). */
  time: number;
  src: string; // "ip:port"
  dst: string;
  srcPort: number;
  dstPort: number;
  payload: Buffer;
}

export interface LegDatagram {
  time: number;
  leg: 'client' | 'relay';
  /**
   * Client leg: "turnClient|peer" (the TURN client's address and the relayed peer);
   * relay leg: "relayA|relayB" with the two addresses sorted. Identifies one flow.
   */
  flow: string;
  /** Sender and receiver of the inner payload, as the endpoints see them. */
  from: string;
  to: string;
  payload: Buffer;
}

/** Classic pcap (not pcapng), little or big endian, µs or ns. */
export function readPcapUdp(path: string): UdpDatagram[] {
  const b = readFileSync(path);
  if (b.length < 24) throw new Error('pcap too short');
  const magic = b.readUInt32LE(0);
  let le: boolean;
  let nano = false;
  if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) le = true;
  else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) le = false;
  else throw new Error('not a classic pcap file (pcapng?)');
  if (magic === 0xa1b23c4d || magic === 0x4d3cb2a1) nano = true;
  const u32 = (o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const linktype = u32(20) & 0xffff;
  const out: UdpDatagram[] = [];
  let o = 24;
  while (o + 16 <= b.length) {
    const sec = u32(o);
    const frac = u32(o + 4);
    const incl = u32(o + 8);
    const pkt = b.subarray(o + 16, Math.min(b.length, o + 16 + incl));
    o += 16 + incl;
    let ip = -1;
    if (linktype === 1) {
      // Ethernet II (Linux lo uses zero MACs); skip one 802.1Q tag if present
      let et = pkt.length >= 14 ? pkt.readUInt16BE(12) : 0;
      let l2 = 14;
      if (et === 0x8100 && pkt.length >= 18) {
        et = pkt.readUInt16BE(16);
        l2 = 18;
      }
      if (et === 0x0800) ip = l2;
    } else if (linktype === 113) {
      if (pkt.length >= 16 && pkt.readUInt16BE(14) === 0x0800) ip = 16; // Linux cooked (SLL)
    } else if (linktype === 101 || linktype === 12) {
      ip = 0; // raw IP
    }
    if (ip < 0 || pkt.length < ip + 20 || pkt[ip]! >> 4 !== 4) continue;
    const ihl = (pkt[ip]! & 0x0f) * 4;
    if (pkt[ip + 9] !== 17) continue; // UDP
    const fragOff = pkt.readUInt16BE(ip + 6) & 0x3fff;
    if (fragOff !== 0) continue; // fragments are not reassembled (none on lo: MTU 65536)
    const totLen = pkt.readUInt16BE(ip + 2);
    const u = ip + ihl;
    if (pkt.length < u + 8) continue;
    const srcIp = `${pkt[ip + 12]}.${pkt[ip + 13]}.${pkt[ip + 14]}.${pkt[ip + 15]}`;
    const dstIp = `${pkt[ip + 16]}.${pkt[ip + 17]}.${pkt[ip + 18]}.${pkt[ip + 19]}`;
    const srcPort = pkt.readUInt16BE(u);
    const dstPort = pkt.readUInt16BE(u + 2);
    const udpLen = pkt.readUInt16BE(u + 4);
    const end = Math.min(pkt.length, ip + totLen, u + udpLen);
    out.push({
      time: sec + frac / (nano ? 1e9 : 1e6),
      src: `${srcIp}:${srcPort}`,
      dst: `${dstIp}:${dstPort}`,
      srcPort,
      dstPort,
      payload: Buffer.from(pkt.subarray(u + 8, end)),
    });
  }
  return out;
}

const MAGIC = 0x2112a442;

/** RFC 8489 §14.2 XOR-MAPPED-ADDRESS encoding (used by XOR-PEER-ADDRESS), IPv4 only. */
function xorAddress(v: Buffer): string | null {
  if (v.length < 8 || v[1] !== 0x01) return null;
  const port = v.readUInt16BE(2) ^ (MAGIC >>> 16);
  const a = (v.readUInt32BE(4) ^ MAGIC) >>> 0;
  return `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}:${port}`;
}

/** Per-capture state for ChannelData: channel number bound per TURN client (RFC 8656 §12). */
export class TurnUnwrapper {
  private readonly channels = new Map<string, string>(); // "client|chan" -> peer
  constructor(private readonly turnPort: number) {}

  unwrap(d: UdpDatagram): LegDatagram | null {
    const toServer = d.dstPort === this.turnPort;
    const fromServer = d.srcPort === this.turnPort;
    if (!toServer && !fromServer) {
      const flow = [d.src, d.dst].sort().join('|');
      return { time: d.time, leg: 'relay', flow, from: d.src, to: d.dst, payload: d.payload };
    }
    const client = toServer ? d.src : d.dst;
    const p = d.payload;
    if (p.length >= 4 && p[0]! >= 0x40 && p[0]! <= 0x4f) {
      // RFC 8656 §12.4: ChannelData = channel number (0x4000-0x4FFF), length, data
      const chan = p.readUInt16BE(0);
      const len = p.readUInt16BE(2);
      if (4 + len > p.length) return null;
      const peer = this.channels.get(`${client}|${chan}`);
      if (!peer) return null;
      return this.mk(d, client, peer, toServer, p.subarray(4, 4 + len));
    }
    if (p.length < 20 || (p[0]! & 0xc0) !== 0 || p.readUInt32BE(4) !== MAGIC) return null;
    const type = p.readUInt16BE(0);
    const len = p.readUInt16BE(2);
    if (20 + len > p.length) return null;
    let peer: string | null = null;
    let data: Buffer | null = null;
    let chan = -1;
    for (let o = 20; o + 4 <= 20 + len;) {
      const at = p.readUInt16BE(o);
      const al = p.readUInt16BE(o + 2);
      const v = p.subarray(o + 4, o + 4 + al);
      if (at === 0x0012)
        peer = xorAddress(v); // XOR-PEER-ADDRESS
      else if (at === 0x0013)
        data = v; // DATA
      else if (at === 0x000c && al >= 2) chan = v.readUInt16BE(0); // CHANNEL-NUMBER
      o += 4 + ((al + 3) & ~3);
    }
    // RFC 8656 §11: ChannelBind request (method 0x009) binds chan to peer for this client.
    if (type === 0x0009 && chan >= 0 && peer) this.channels.set(`${client}|${chan}`, peer);
    // RFC 8656 §10: Send indication 0x0016, Data indication 0x0017
    if ((type === 0x0016 || type === 0x0017) && peer && data) return this.mk(d, client, peer, toServer, data);
    return null;
  }

  private mk(d: UdpDatagram, client: string, peer: string, toServer: boolean, payload: Buffer): LegDatagram {
    return {
      time: d.time,
      leg: 'client',
      flow: `${client}|${peer}`,
      from: toServer ? client : peer,
      to: toServer ? peer : client,
      payload,
    };
  }
}

export function legDatagrams(path: string, turnPort: number): LegDatagram[] {
  const u = new TurnUnwrapper(turnPort);
  const out: LegDatagram[] = [];
  for (const d of readPcapUdp(path)) {
    const l = u.unwrap(d);
    if (l) out.push(l);
  }
  return out;
}
