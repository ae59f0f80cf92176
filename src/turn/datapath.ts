/**
 * The data path (design.md "One packet's walk"): client -> peer (ChannelData, Send
 * indications), peer -> client (ChannelData or Data indication), and inject() for packets
 * the inspection layer released. Hot path: one map lookup per packet, no closures, no
 * copies of payloads; the only allocation is the small header of a packet to the client.
 *
 * Lifetimes are checked here on every packet, against the clock, not only by the
 * table's sweep (allocations.ts, once a second): an allocation (RFC 8656 §8), a
 * permission (§9) or a channel binding (§12) whose time is up relays nothing more even
 * while the sweep is still to run, so a late timer never keeps a flow open (issue 13;
 * the native fast path checks the same deadlines in C).
 */
import type { RemoteInfo, Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { Attr, Class, Family, Method, messageType } from '../wire/stun.js';
import { channelDataPadding } from '../wire/channeldata.js';
import type { Clock } from '../util/clock.js';
import type { FlowDirection, FlowHooks } from './flow.js';
import type { AllocationTable } from './allocations.js';
import { MAX_STREAM_BUFFERED, unmapV4, type Allocation, type Endpoint, type FlowImpl, type Permission } from './state.js';

/**
 * Sends one datagram with DF set (DONT-FRAGMENT, RFC 8656 §18.9; src/turn/dont-fragment.ts
 * makes it from the addon): 0, or an errno (the datagram is then not sent).
 */
export type DontFragmentSend = (socket: Socket, family: 4 | 6, data: Buffer, port: number, ip: string) => number;

export interface RelayCounters {
  packets: { clientToPeer: number; peerToClient: number };
  bytes: { clientToPeer: number; peerToClient: number };
}

const PADS = [Buffer.alloc(0), Buffer.alloc(1), Buffer.alloc(2), Buffer.alloc(3)];

/** Sends one datagram to a peer out of a's relay socket without dgram (fastpath.ts sendToPeer); false: not sent. */
export type PeerSend = (a: Allocation, perm: Permission, buf: Buffer, off: number, len: number, port: number) => boolean;

export class DataPath {
  private readonly onPacket: FlowHooks['onPacket'];
  /** The native send to peers when the fast path runs (TurnServer sets it); null: dgram. */
  peerSend: PeerSend | null = null;
  private readonly tidBase = randomBytes(8);
  private tidCounter = 0;

  constructor(
    private readonly stats: RelayCounters,
    private readonly table: AllocationTable,
    private readonly clock: Clock,
    hooks: FlowHooks,
    /** A flow hook threw: count it and close that flow (supervision). */
    private readonly hookFailed: (where: string, err: unknown, flow: FlowImpl) => void,
    /** Sends one datagram with DF set (src/turn/dont-fragment.ts); null: the server cannot. */
    private readonly dontFragment: DontFragmentSend | null = null,
  ) {
    this.onPacket = hooks.onPacket;
  }

  /** The hook's verdict; an exception closes the flow and drops the packet. */
  private pass(flow: FlowImpl, dir: FlowDirection, data: Buffer, peerPort: number): boolean {
    try {
      return this.onPacket!(flow, dir, data, peerPort);
    } catch (err) {
      this.hookFailed('turn.hook.packet', err, flow);
      return false;
    }
  }

  /**
   * The allocation (RFC 8656 §8) and the permission (§9) are both still within their
   * lifetime at `now`: expiresAt is the first millisecond they are gone, as in the sweep.
   */
  private live(a: Allocation, perm: Permission, now: number): boolean {
    return a.expiresAt > now && perm.expiresAt > now;
  }

  /** ChannelData from the client (RFC 8656 §12.6): channel -> peer. */
  channelDataFromClient(a: Allocation, buf: Buffer, off: number, avail: number): void {
    if (avail < 4) return;
    const ch = a.channels.get(buf.readUInt16BE(off));
    if (ch === undefined || !ch.active) return; // RFC 8656 §12.6: unbound channel, discard
    const len = buf.readUInt16BE(off + 2);
    if (4 + len > avail) return; // §12.6: shorter than its Length, discard
    const flow = ch.perm.flow;
    if (flow === null) return; // RFC 8656 §9: no permission, discard
    // §12: a binding lasts 10 minutes unless refreshed; an expired one is unbound.
    const now = this.clock.now();
    if (ch.expiresAt <= now || !this.live(a, ch.perm, now)) return;
    if (this.onPacket !== undefined && !this.pass(flow, 'c2p', buf.subarray(off + 4, off + 4 + len), ch.peerPort)) return;
    this.stats.packets.clientToPeer++;
    this.stats.bytes.clientToPeer += len;
    this.sendToPeer(a, ch.perm, buf, off + 4, len, ch.peerPort, ch.peerIp);
  }

  /** buf[off, off + len) to the peer out of a's relay socket: in C with the fast path, else dgram. */
  private sendToPeer(a: Allocation, perm: Permission, buf: Buffer, off: number, len: number, port: number, ip: string): void {
    if (this.peerSend === null || !this.peerSend(a, perm, buf, off, len, port)) a.socket.send(buf, off, len, port, ip);
  }

  /**
   * The payload of a Send indication (RFC 8656 §11.2) to its peer, through the hook.
   * `df`: the Send had DONT-FRAGMENT, so the datagram goes with DF set (§14, IPv4
   * Fragmentation fields, preferred behaviour); send.ts never passes it without a sender.
   */
  toPeer(a: Allocation, perm: Permission, data: Buffer, port: number, ip: string, df = false): void {
    const flow = perm.flow;
    if (flow === null || !this.live(a, perm, this.clock.now())) return; // §11.2: no permission, discard
    // Port 0 is reserved (RFC 6335 §6) and no datagram can go to it (dgram throws
    // ERR_SOCKET_BAD_PORT after the packet was counted): discarded like any Send the server
    // does not relay (RFC 8656 §11.2, never answered). The fast path leaves it to JS.
    if (port === 0) return;
    if (this.onPacket !== undefined && !this.pass(flow, 'c2p', data, port)) return;
    this.stats.packets.clientToPeer++;
    this.stats.bytes.clientToPeer += data.length;
    // With DF, a datagram larger than the path MTU is not sent (EMSGSIZE), as a router
    // would drop it (RFC 791 DF); like any send error of a relay socket, it is not answered.
    if (df && this.dontFragment !== null) this.dontFragment(a.socket, a.family, data, port, ip);
    else this.sendToPeer(a, perm, data, 0, data.length, port, ip);
  }

  /** A datagram from a peer on a relay socket (RFC 8656 §11.3, §12.7). */
  fromPeer(a: Allocation, msg: Buffer, rinfo: RemoteInfo): void {
    // An IPv6 relay socket could report an IPv4 peer as ::ffff:a.b.c.d; permissions hold
    // the plain form (RFC 8656 §9 compares addresses).
    const ip = a.family === 6 ? unmapV4(rinfo.address) : rinfo.address;
    const perm = a.permissions.get(ip);
    if (perm === undefined) return; // RFC 8656 §9: no permission, discard
    this.fromPermission(a, perm, msg, rinfo.port);
  }

  /** A peer datagram whose permission is found (the fast path's hand-over, fastpath.ts). */
  fromPermission(a: Allocation, perm: Permission, msg: Buffer, peerPort: number): void {
    if (perm.flow === null || a.deleted || !this.live(a, perm, this.clock.now())) return; // RFC 8656 §9: no permission, discard
    if (this.onPacket !== undefined && !this.pass(perm.flow, 'p2c', msg, peerPort)) return;
    this.deliverToClient(a, perm, msg, peerPort);
  }

  deliverToClient(a: Allocation, perm: Permission, msg: Buffer, peerPort: number): void {
    let ch = perm.channelsByPort.get(peerPort);
    // §12: an expired binding the sweep has not removed yet is no longer bound.
    if (ch !== undefined && (!ch.active || ch.expiresAt <= this.clock.now())) ch = undefined;
    const ep = a.ep;
    if (ch !== undefined) {
      // RFC 8656 §12.5: the server MUST use ChannelData when a channel is bound.
      if (ep.udp !== null) {
        // A header per send: when the kernel answers EAGAIN, Node queues the buffers
        // (it does not copy them), so a shared header could be overwritten before it goes
        // out. allocUnsafe(4) is a slice of Node's buffer pool.
        const hdr = Buffer.allocUnsafe(4);
        hdr.writeUInt16BE(ch.number, 0);
        hdr.writeUInt16BE(msg.length, 2);
        ep.udp.socket.send([hdr, msg], ep.remotePort, ep.sendAddress);
      } else if (!this.streamWrite(ep, ch.number, null, 0, msg)) return;
    } else {
      // RFC 8656 §11.3: otherwise a Data indication with XOR-PEER-ADDRESS and DATA.
      if (msg.length > 0xffff - 48) return;
      if (ep.udp !== null) {
        const hdr = Buffer.allocUnsafe(perm.ipBytes.length === 16 ? 48 : 36);
        this.writeDataIndicationHeader(hdr, perm.ipBytes, peerPort, msg.length);
        const pad = channelDataPadding(msg.length);
        if (pad) ep.udp.socket.send([hdr, msg, PADS[pad]!], ep.remotePort, ep.sendAddress);
        else ep.udp.socket.send([hdr, msg], ep.remotePort, ep.sendAddress);
      } else if (!this.streamWrite(ep, 0, perm.ipBytes, peerPort, msg)) return;
    }
    this.stats.packets.peerToClient++;
    this.stats.bytes.peerToClient += msg.length;
  }

  /**
   * Sends a payload on an open flow without calling flowHooks.onPacket again (held
   * packets released by the inspection layer, key-escrow.md §5.1).
   */
  inject(flow: { open: boolean; allocationId: string; peerAddress: string }, dir: FlowDirection, data: Buffer, peerPort: number): void {
    if (!flow.open) return;
    const a = this.table.byId.get(flow.allocationId);
    if (a === undefined || a.deleted) return;
    const perm = a.permissions.get(flow.peerAddress);
    if (perm === undefined || perm.flow !== flow || !this.live(a, perm, this.clock.now())) return;
    if (dir === 'c2p') {
      this.stats.packets.clientToPeer++;
      this.stats.bytes.clientToPeer += data.length;
      a.socket.send(data, peerPort, flow.peerAddress);
    } else {
      this.deliverToClient(a, perm, data, peerPort);
    }
  }

  /**
   * Stream write of a ChannelData (channel > 0) or Data indication (channel 0) with its
   * payload and padding; false when dropped (closed, or backpressure beyond
   * MAX_STREAM_BUFFERED: relayed UDP may be lost, a stalled client must not grow memory).
   */
  private streamWrite(ep: Endpoint, channel: number, ip: Buffer | null, port: number, payload: Buffer): boolean {
    const c = ep.conn;
    if (c === null || c.closed || c.socket.writableLength > MAX_STREAM_BUFFERED) return false;
    let h: Buffer;
    if (channel !== 0) {
      h = Buffer.allocUnsafe(4);
      h.writeUInt16BE(channel, 0);
      h.writeUInt16BE(payload.length, 2);
    } else {
      h = Buffer.allocUnsafe(ip!.length === 16 ? 48 : 36);
      this.writeDataIndicationHeader(h, ip!, port, payload.length);
    }
    // RFC 8656 §12.5: ChannelData over TCP/TLS is padded to 4 bytes; the DATA attribute
    // of an indication is padded anyway (RFC 8489 §14).
    const pad = channelDataPadding(payload.length);
    c.socket.cork();
    c.socket.write(h);
    c.socket.write(payload);
    if (pad) c.socket.write(PADS[pad]!);
    c.socket.uncork();
    return true;
  }

  private writeDataIndicationHeader(h: Buffer, ip: Buffer, port: number, len: number): void {
    const v6 = ip.length === 16;
    const xorLen = v6 ? 20 : 8;
    const pad = channelDataPadding(len);
    h.writeUInt16BE(messageType(Method.Data, Class.Indication), 0);
    h.writeUInt16BE(4 + xorLen + 4 + len + pad, 2);
    h.writeUInt32BE(0x2112a442, 4);
    // Transaction ID: random base + counter (RFC 8489 §6: unique per indication).
    this.tidBase.copy(h, 8);
    h.writeUInt32BE((this.tidCounter = (this.tidCounter + 1) >>> 0), 16);
    h.writeUInt16BE(Attr.XorPeerAddress, 20);
    h.writeUInt16BE(xorLen, 22);
    // RFC 8489 §14.2: X-Port = port ^ top 16 bits of the cookie; X-Address ^ cookie (|| tid for IPv6).
    h[24] = 0;
    h[25] = v6 ? Family.IPv6 : Family.IPv4;
    h.writeUInt16BE(port ^ 0x2112, 26);
    h.writeUInt32BE((ip.readUInt32BE(0) ^ 0x2112a442) >>> 0, 28);
    if (v6) for (let i = 0; i < 12; i++) h[32 + i] = ip[4 + i]! ^ h[8 + i]!;
    const d = 24 + xorLen;
    h.writeUInt16BE(Attr.Data, d);
    h.writeUInt16BE(len, d + 2);
  }
}
