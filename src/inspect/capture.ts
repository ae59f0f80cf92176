/**
 * Reading (and, for tests and fixtures, writing) classic libpcap capture files.
 *
 * Reading walks the file's records in large chunks (one read per MiB, each record's
 * bytes a view into its chunk, no per-record copy or event), so a capture of any size is
 * processed with bounded memory. pcapng files are recognised by their Section Header
 * Block type 0x0A0D0D0A and refused with a message saying how to convert them.
 * Nanosecond-resolution pcap (magic 0xA1B23C4D) is accepted: the fraction is scaled to
 * milliseconds like the microsecond form's.
 */
import { PCAP_MAGIC_US, pcapGlobalHeader as wirePcapGlobalHeader, pcapRecordHeader } from '../wire/pcap.js';
import { openSync, readSync, closeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { GatehouseError } from '../util/errors.js';
import {
  IPPROTO_TCP,
  IPPROTO_UDP,
  IpReassembler,
  SUPPORTED_LINKTYPES,
  TCP_SYN,
  TcpStream,
  TurnStreamFramer,
  decodeIp,
  decodeTransport,
  linkPayloadOffset,
  newUdp4View,
  readUdp4,
  type TcpSegment,
} from '../wire/netpkt.js';
import type { InspectEvent } from './events.js';
import {
  FlowPipeline,
  FlowTable,
  newCounters,
  type FlowRecord,
  type FlowShard,
  type KeyProvider,
  type PipelineCounters,
} from './pipeline.js';
import { TurnUnwrapper, type Endpoint } from './turn-unwrap.js';
import { MAX_FRAGMENT_LEN } from '../wire/dtls.js';

export interface CapturedPacket {
  /** Milliseconds since the epoch (fractional: microsecond or better precision). */
  time: number;
  linktype: number;
  /** The captured bytes (possibly shorter than origLength when the snaplen cut it). */
  data: Buffer;
  origLength: number;
}

export class CaptureError extends GatehouseError {
  constructor(code: string, message: string) {
    super(code, message);
    this.name = 'CaptureError';
  }
}

/** Largest captured length we accept for one record (tcpdump's maximum snaplen). */
export const MAX_CAPTURED_LENGTH = 262_144;

const PCAPNG_MAGIC = 0x0a0d0d0a;
const PCAP_US_LE = 0xd4c3b2a1;
const PCAP_NS_BE = 0xa1b23c4d;
const PCAP_NS_LE = 0x4d3cb2a1;

export type CaptureFormat = 'pcap' | 'pcap-ns' | 'pcapng' | 'unknown';

/** Identifies a capture file by its first four bytes. */
export function captureFormat(head: Buffer): CaptureFormat {
  if (head.length < 4) return 'unknown';
  const be = head.readUInt32BE(0);
  if (be === PCAPNG_MAGIC) return 'pcapng';
  if (be === PCAP_MAGIC_US || be === PCAP_US_LE) return 'pcap';
  if (be === PCAP_NS_BE || be === PCAP_NS_LE) return 'pcap-ns';
  return 'unknown';
}

export const PCAPNG_HINT =
  'pcapng captures are not supported; convert to pcap first: `editcap -F pcap in.pcapng out.pcap` or `tshark -F pcap -r in.pcapng -w out.pcap`';

export interface ReadCaptureOptions {
  /**
   * Flow control: checked after each chunk of the file has been handed out; when it
   * returns a promise, reading pauses until it settles (e.g. stdout's 'drain').
   */
  backpressure?: () => Promise<void> | null;
  /** Bytes per read from the file. */
  highWaterMark?: number;
  /**
   * Read into two buffers used in turn instead of a new one per chunk: a record's `data`
   * is then valid only until onPacket returns (the next reads overwrite it), and the
   * CapturedPacket object itself is the same one for every record. Fresh chunks
   * cost their pages (a page fault and a zeroed page per 4 KiB, then a GC of external
   * memory): 36 ms against 8 ms for the bench's 66 MB capture. For callers that keep
   * nothing of a record (CaptureInspector copies what it keeps: IP fragments, TCP
   * segments out of order, TURN framing across segments, DTLS records held for keys).
   */
  reuseChunks?: boolean;
}

export interface CaptureSummary {
  linktype: number;
  packets: number;
  bytes: number;
  /** True when the file ended in the middle of a record. */
  truncated: boolean;
}

/**
 * Streams the packets of a pcap file to `onPacket`, in file order. Resolves with a
 * summary; rejects with a CaptureError (code E_CAPTURE_*) for files it cannot read.
 * Exceptions thrown by onPacket reject the promise and stop reading.
 */
export async function readCapture(
  path: string,
  onPacket: (p: CapturedPacket) => void,
  opts: ReadCaptureOptions = {},
): Promise<CaptureSummary> {
  const head = Buffer.alloc(24);
  let got = 0;
  let fd = -1;
  try {
    fd = openSync(path, 'r');
    got = readSync(fd, head, 0, 24, 0);
  } catch (e) {
    throw new CaptureError('E_CAPTURE_OPEN', `cannot read capture ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  } finally {
    if (fd >= 0) closeSync(fd);
  }
  const fmt = captureFormat(head.subarray(0, got));
  if (fmt === 'pcapng') throw new CaptureError('E_CAPTURE_PCAPNG', `${path}: ${PCAPNG_HINT}`);
  if (fmt === 'unknown') throw new CaptureError('E_CAPTURE_FORMAT', `${path}: not a pcap capture file (unknown magic number)`);
  if (got < 24) throw new CaptureError('E_CAPTURE_FORMAT', `${path}: truncated pcap file header`);

  const nano = fmt === 'pcap-ns';
  const le = head.readUInt32BE(0) === PCAP_US_LE || head.readUInt32BE(0) === PCAP_NS_LE;
  const u16 = (b: Buffer, o: number): number => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
  const major = u16(head, 4);
  const minor = u16(head, 6);
  // The libpcap file format is version 2.4 (draft-ietf-opsawg-pcap §4); as pcap-parser,
  // which read captures before, only a header that is neither 2.x nor x.4 is refused.
  if (major !== 2 && minor !== 4) {
    throw new CaptureError('E_CAPTURE_FORMAT', `${path}: unsupported version ${major}.${minor}: only the libpcap file format 2.4 is read`);
  }
  const summary: CaptureSummary = { linktype: le ? head.readUInt32LE(20) : head.readUInt32BE(20), packets: 0, bytes: 0, truncated: false };
  const linktype = summary.linktype;
  // A record's captured bytes stay valid after onPacket returns (callers may keep views):
  // each chunk is a new Buffer, never overwritten; a record cut by a chunk's end is joined
  // with the next chunk. The next chunk is read while this one's records are handed out.
  // With reuseChunks the chunks alternate between two buffers (the one being read into is
  // never the one being walked) and a cut record's bytes are copied before the buffer
  // they lie in is read into again.
  const chunkSize = Math.max(opts.highWaterMark ?? 1 << 20, 64);
  const reuse = opts.reuseChunks === true;
  const buffers = reuse ? [Buffer.allocUnsafeSlow(chunkSize), Buffer.allocUnsafeSlow(chunkSize)] : [];
  const shared: CapturedPacket | null = reuse ? { time: 0, linktype, data: buffers[0]!.subarray(0, 0), origLength: 0 } : null;
  let turn = 0;
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new CaptureError('E_CAPTURE_OPEN', `cannot read capture ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const readChunk = (at: number): Promise<Buffer> => {
    const b = reuse ? buffers[turn++ & 1]! : Buffer.allocUnsafe(chunkSize);
    return fh.read(b, 0, chunkSize, at).then(
      (r) => b.subarray(0, r.bytesRead),
      (e: NodeJS.ErrnoException) => {
        throw new CaptureError('E_CAPTURE_FORMAT', `${path}: ${e.code ?? e.message}`);
      },
    );
  };
  // pcap record header (draft-ietf-opsawg-pcap §5): seconds, microseconds (nanoseconds in
  // the 0xA1B23C4D form), captured length, original length; then the captured bytes.
  const capturedLength = (b: Buffer, off: number): number => {
    const n = le ? b.readUInt32LE(off + 8) : b.readUInt32BE(off + 8);
    // Hostile input: refuse absurd lengths before waiting for that many bytes.
    if (n > MAX_CAPTURED_LENGTH) {
      throw new CaptureError(
        'E_CAPTURE_FORMAT',
        `${path}: record ${summary.packets + 1} claims ${n} bytes (max ${MAX_CAPTURED_LENGTH}); file corrupt?`,
      );
    }
    return n;
  };
  /** Hands out the whole records of buf from off; returns where the first incomplete one starts. */
  const walk = (buf: Buffer, off: number): number => {
    while (buf.length - off >= 16) {
      const capLen = capturedLength(buf, off);
      if (buf.length - off - 16 < capLen) break;
      const sec = le ? buf.readUInt32LE(off) : buf.readUInt32BE(off);
      const sub = le ? buf.readUInt32LE(off + 4) : buf.readUInt32BE(off + 4);
      const origLength = le ? buf.readUInt32LE(off + 12) : buf.readUInt32BE(off + 12);
      const data = buf.subarray(off + 16, off + 16 + capLen);
      off += 16 + capLen;
      summary.packets++;
      summary.bytes += capLen;
      const time = sec * 1000 + (nano ? sub / 1e6 : sub / 1e3);
      if (shared) {
        shared.time = time;
        shared.data = data;
        shared.origLength = origLength;
        onPacket(shared);
      } else onPacket({ time, linktype, data, origLength });
    }
    return off;
  };
  let pending: Promise<Buffer> | null = null;
  try {
    let pos = 24;
    /** The start of a record the previous chunk cut (only its own bytes are copied). */
    let carry: Buffer | null = null;
    let next = readChunk(pos);
    for (;;) {
      pending = next;
      const chunk = await next;
      pending = null;
      pos += chunk.length;
      if (chunk.length > 0) pending = next = readChunk(pos);
      let off = 0;
      if (carry) {
        // Bytes of this chunk the cut record still needs (-1: its header is not complete yet).
        let need = -1;
        if (carry.length >= 16) need = 16 + capturedLength(carry, 0) - carry.length;
        else if (carry.length + chunk.length >= 16) {
          need = 16 + capturedLength(Buffer.concat([carry, chunk.subarray(0, 16 - carry.length)]), 0) - carry.length;
        }
        if (need < 0 || chunk.length < need) {
          carry = Buffer.concat([carry, chunk]);
          off = chunk.length;
        } else {
          walk(Buffer.concat([carry, chunk.subarray(0, need)]), 0);
          carry = null;
          off = need;
        }
      }
      if (!carry) {
        off = walk(chunk, off);
        carry = off < chunk.length ? chunk.subarray(off) : null;
      }
      // The buffer under this chunk is read into again after the next one: keep no view of it.
      if (reuse && carry && carry.buffer === chunk.buffer) carry = Buffer.from(carry);
      if (chunk.length === 0) break;
      const wait = opts.backpressure?.();
      if (wait) await wait;
    }
    summary.truncated = carry !== null && carry.length > 0;
  } finally {
    // A read still in flight (reading stopped early) settles before the file is closed.
    if (pending) await pending.catch(() => {});
    await fh.close().catch(() => {});
  }
  return summary;
}

// ---------------------------------------------------------------------------------
// Writing (tests, fixtures, synthetic captures).

/** The 24-byte pcap global header (microsecond resolution, little-endian). */
export function pcapGlobalHeader(linktype: number, snaplen = MAX_CAPTURED_LENGTH): Buffer {
  return wirePcapGlobalHeader(linktype, snaplen);
}

/** One pcap record (16-byte header + data) for a packet at `timeMs`. */
export function pcapRecord(timeMs: number, data: Buffer): Buffer {
  return Buffer.concat([pcapRecordHeader(timeMs, data.length), data]);
}

/** A whole pcap file image. */
export function encodePcap(linktype: number, packets: { time: number; data: Buffer }[]): Buffer {
  return Buffer.concat([pcapGlobalHeader(linktype), ...packets.map((p) => pcapRecord(p.time, p.data))]);
}

// ---------------------------------------------------------------------------------
// Capture → flows: link/IP/UDP/TCP decoding, IP reassembly, TCP streams with TURN
// framing, TURN unwrapping, and the flow table.

export interface CaptureInspectorOptions {
  keys: KeyProvider;
  onEvent: (e: InspectEvent, flow: FlowRecord) => void;
  onFlowEnd?: (flow: FlowRecord, why: 'idle' | 'evicted' | 'closed') => void;
  rtpPackets?: boolean;
  /** PipelineOptions.hashAppData (default true). */
  hashAppData?: boolean;
  /**
   * Decrypt the flows' DTLS 1.2 records into one buffer (PipelineOptions.plaintextInto,
   * 18 KiB for the whole inspector): an `appdata` event's `data` is then valid only during
   * onEvent. Default false.
   */
  borrowedPlaintext?: boolean;
  maxFlows?: number;
  idleMs?: number;
  maxTcpConnections?: number;
  /** FlowTableOptions.shard: this inspector feeds only the flows it owns (--threads). */
  shard?: FlowShard;
}

export interface CaptureStats {
  packets: number;
  bytes: number;
  /** Frames with an unsupported link type. */
  unsupportedLink: number;
  /** Frames that are not IPv4/IPv6, or IP packets that are not UDP/TCP. */
  notIp: number;
  otherProto: number;
  malformed: number;
  ipFragments: number;
  ipReassembled: number;
  udp: number;
  tcp: number;
  /** TCP connections whose bytes were not TURN framing (TLS, RFC 4571 ICE-TCP, ...). */
  tcpNotTurn: number;
  tcpGaps: number;
  turnData: number;
  turnControl: number;
  turnUnbound: number;
}

interface TcpConn {
  a: Endpoint;
  b: Endpoint;
  ab: TcpStream;
  ba: TcpStream;
  abFramer: TurnStreamFramer;
  baFramer: TurnStreamFramer;
  lastSeen: number;
  notTurn: boolean;
  time: number;
}

export class CaptureInspector {
  readonly flows: FlowTable;
  readonly turn = new TurnUnwrapper();
  readonly stats: CaptureStats = {
    packets: 0,
    bytes: 0,
    unsupportedLink: 0,
    notIp: 0,
    otherProto: 0,
    malformed: 0,
    ipFragments: 0,
    ipReassembled: 0,
    udp: 0,
    tcp: 0,
    tcpNotTurn: 0,
    tcpGaps: 0,
    turnData: 0,
    turnControl: 0,
    turnUnbound: 0,
  };
  /** Pipeline counters summed over flows that have ended (all of them after finish()). */
  readonly totals: PipelineCounters = newCounters();
  private readonly reasm = new IpReassembler();
  /** readUdp4's output, reused for every packet. */
  private readonly udp4 = newUdp4View();
  private readonly tcpConns = new Map<string, TcpConn>();
  private readonly maxTcp: number;
  private readonly idleMs: number;

  constructor(o: CaptureInspectorOptions) {
    this.idleMs = o.idleMs ?? 10 * 60_000;
    const into = o.borrowedPlaintext ? Buffer.allocUnsafe(MAX_FRAGMENT_LEN) : undefined;
    this.maxTcp = o.maxTcpConnections ?? 4096;
    this.flows = new FlowTable({
      makePipeline: () =>
        new FlowPipeline({ keys: o.keys, rtpPackets: o.rtpPackets, hashAppData: o.hashAppData, ...(into ? { plaintextInto: into } : {}) }),
      onEvent: o.onEvent,
      onFlowEnd: (f, why) => {
        const t = this.totals as unknown as Record<string, number>;
        const c = f.pipeline.counters as unknown as Record<string, number>;
        for (const k of Object.keys(t)) t[k]! += c[k] ?? 0;
        o.onFlowEnd?.(f, why);
      },
      maxFlows: o.maxFlows,
      ...(o.shard ? { shard: o.shard } : {}),
      idleMs: this.idleMs,
    });
  }

  /** One captured frame. Never throws on malformed input. */
  packet(p: CapturedPacket): void {
    const s = this.stats;
    s.packets++;
    s.bytes += p.data.length;
    const off = linkPayloadOffset(p.linktype, p.data);
    if (off < 0) {
      if (!SUPPORTED_LINKTYPES.includes(p.linktype)) s.unsupportedLink++;
      else s.notIp++;
      return;
    }
    // Most packets: unfragmented IPv4/UDP, read without the decoders' objects.
    const u = this.udp4;
    if (readUdp4(p.data, off, u)) {
      s.udp++;
      this.datagram('udp', u.src, u.srcPort, u.dst, u.dstPort, p.data.subarray(u.payloadStart, u.payloadEnd), p.time);
      return;
    }
    let ip = decodeIp(p.data, off);
    if (!ip) {
      s.malformed++;
      return;
    }
    if (ip.fragment) {
      // RFC 791 §3.2 / RFC 8200 §4.5: reassemble (bounded, see IpReassembler).
      s.ipFragments++;
      ip = this.reasm.push(ip, p.time);
      if (!ip) return;
      s.ipReassembled++;
    }
    const t = decodeTransport(ip);
    if (!t) {
      if (ip.proto === IPPROTO_UDP || ip.proto === IPPROTO_TCP) s.malformed++;
      else s.otherProto++;
      return;
    }
    if (t.transport === 'udp') {
      s.udp++;
      this.datagram('udp', ip.src, t.srcPort, ip.dst, t.dstPort, t.payload, p.time);
    } else {
      s.tcp++;
      this.tcpSegment(ip.src, ip.dst, t.tcp!, p.time);
    }
  }

  /** One UDP datagram or one framed TURN-over-TCP message. */
  private datagram(
    transport: 'udp' | 'tcp',
    srcIp: string,
    srcPort: number,
    dstIp: string,
    dstPort: number,
    payload: Buffer,
    time: number,
  ): void {
    const u = this.turn.unwrap(transport, srcIp, srcPort, dstIp, dstPort, payload, time);
    if (!u) {
      // Not TURN framing: a direct flow (ICE host/srflx, or the relay ↔ peer leg).
      // Over TCP only TURN framing is understood, so other messages stop here.
      if (transport === 'udp') this.flows.feed('UDP', srcIp, srcPort, dstIp, dstPort, payload, time);
      return;
    }
    if (u.kind === 'control') {
      this.stats.turnControl++;
      return;
    }
    if (u.kind === 'unbound') {
      this.stats.turnUnbound++;
      return;
    }
    this.stats.turnData++;
    // The inner datagram belongs to the client ↔ peer flow through this relay.
    const c = u.conn.client;
    const proto = transport === 'udp' ? 'UDP' : 'TCP';
    if (u.fromClient) this.flows.feed(proto, c.ip, c.port, u.peer.ip, u.peer.port, u.payload, time, u.conn);
    else this.flows.feed(proto, u.peer.ip, u.peer.port, c.ip, c.port, u.payload, time, u.conn);
  }

  private tcpSegment(srcIp: string, dstIp: string, seg: TcpSegment, time: number): void {
    const k1 = `${srcIp}|${seg.srcPort}|${dstIp}|${seg.dstPort}`;
    const k2 = `${dstIp}|${seg.dstPort}|${srcIp}|${seg.srcPort}`;
    let conn = this.tcpConns.get(k1) ?? this.tcpConns.get(k2);
    const key = this.tcpConns.has(k1) ? k1 : k2;
    if (!conn) {
      if (seg.payload.length === 0 && !(seg.flags & TCP_SYN)) return;
      this.expireTcp(time);
      if (this.tcpConns.size >= this.maxTcp) {
        const oldest = this.tcpConns.keys().next().value as string;
        this.tcpConns.delete(oldest);
      }
      conn = this.newTcpConn({ ip: srcIp, port: seg.srcPort }, { ip: dstIp, port: seg.dstPort });
      this.tcpConns.set(k1, conn);
    } else {
      this.tcpConns.delete(key);
      this.tcpConns.set(key, conn);
    }
    conn.lastSeen = time;
    conn.time = time;
    if (conn.notTurn) return;
    const fromA = conn.a.ip === srcIp && conn.a.port === seg.srcPort;
    (fromA ? conn.ab : conn.ba).push(seg);
    if (conn.ab.finished && conn.ba.finished) this.tcpConns.delete(this.tcpConns.has(k1) ? k1 : k2);
  }

  private newTcpConn(a: Endpoint, b: Endpoint): TcpConn {
    const conn = { a, b, lastSeen: 0, notTurn: false, time: 0 } as TcpConn;
    const onMsg =
      (from: Endpoint, to: Endpoint) =>
      (msg: Buffer): void => {
        this.datagram('tcp', from.ip, from.port, to.ip, to.port, msg, conn.time);
      };
    conn.abFramer = new TurnStreamFramer(onMsg(a, b));
    conn.baFramer = new TurnStreamFramer(onMsg(b, a));
    const deliver =
      (framer: TurnStreamFramer) =>
      (data: Buffer, afterGap: boolean): void => {
        if (conn.notTurn) return;
        if (afterGap) {
          // RFC 8656 §5 framing has no resynchronisation point: the stream is lost.
          this.stats.tcpGaps++;
          framer.broken = true;
        }
        framer.push(data);
        if (framer.broken && !afterGap && framer.messages === 0) {
          conn.notTurn = true;
          this.stats.tcpNotTurn++;
        }
      };
    conn.ab = new TcpStream(deliver(conn.abFramer));
    conn.ba = new TcpStream(deliver(conn.baFramer));
    return conn;
  }

  private expireTcp(time: number): void {
    for (const [k, c] of this.tcpConns) {
      if (time - c.lastSeen <= this.idleMs) break;
      this.tcpConns.delete(k);
    }
  }

  /** End of capture: closes every flow (flushing pending counts). */
  finish(): void {
    this.flows.closeAll();
  }
}
