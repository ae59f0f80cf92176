/**
 * TURN server state types (RFC 8656 §6: an allocation is its relayed transport address,
 * 5-tuple, authentication information, time-to-expiry, permissions and channels).
 * Types and constants only; the table that owns them is allocations.ts.
 */
import type { RemoteInfo, Socket } from 'node:dgram';
import type { Server as NetServer, Socket as NetSocket } from 'node:net';
import { isIPv6 } from 'node:net';
import type { Flow } from './flow.js';
import type { StreamFramer } from './framer.js';

export type Proto = 'udp' | 'tcp' | 'tls';

/** What the conferencing core says of a credential's holder (core.md §6-§8): carried by allocations, flows and their events. */
export interface CoreIdentity {
  guest?: true;
  conference?: string;
  room?: string;
  org?: string;
}

// RFC 8656 §9: the Permission Lifetime MUST be 300 s.
export const PERMISSION_LIFETIME_MS = 300_000;
// RFC 8656 §12: a channel binding lasts 10 minutes unless refreshed, and the client must
// wait 5 minutes after expiry before the number or the peer is bound differently; the
// server keeps the expired binding that long to refuse such a rebinding (§12.2).
export const CHANNEL_LIFETIME_MS = 600_000;
export const CHANNEL_QUARANTINE_MS = 300_000;
// RFC 8656 §7.2: a port reserved with EVEN-PORT R=1 is held at least 30 s.
export const RESERVATION_MS = 30_000;
// RFC 8489 §6.3.1 (and RFC 8656 §5): responses are remembered for retransmissions 40 s.
export const TX_CACHE_MS = 40_000;
export const TX_CACHE_MAX = 50_000;
export const SWEEP_MS = 1000;
export const MAX_STREAM_BUFFERED = 4 * 1024 * 1024;
// RFC 8656 §3.1 / §7.2 step 3 / §18.8: only UDP relaying (REQUESTED-TRANSPORT 17).
export const PROTO_UDP = 17;

export interface UdpListener {
  proto: 'udp';
  index: number;
  socket: Socket;
  address: string;
  port: number;
  /** True for a udp6 socket: IPv4 clients arrive as ::ffff:a.b.c.d. */
  v6: boolean;
  /**
   * 5-tuple lookup without building a key: client IP (as the socket reports it) ->
   * client port -> allocation.
   */
  clients: Map<string, Map<number, Allocation>>;
  /**
   * The handler of one datagram (supervised), as dgram's 'message' event calls it; the
   * native fast path calls it too for what it reads from this socket and hands to JS.
   */
  onMessage: (msg: Buffer, rinfo: RemoteInfo) => void;
}

export interface StreamListener {
  proto: 'tcp' | 'tls';
  index: number;
  server: NetServer;
  address: string;
  port: number;
}

/** One client 5-tuple (RFC 8656 §2: client address, server address, transport). */
export interface Endpoint {
  proto: Proto;
  /** The client's IP, IPv4-mapped IPv6 unmapped (what XOR-MAPPED-ADDRESS and logs show). */
  remoteAddress: string;
  remotePort: number;
  /** The address to send to on this socket (may be ::ffff:a.b.c.d on a udp6 socket). */
  sendAddress: string;
  localAddress: string;
  localPort: number;
  udp: UdpListener | null;
  conn: StreamConn | null;
  key: string;
}

export interface StreamConn {
  socket: NetSocket;
  framer: StreamFramer;
  ep: Endpoint;
  allocation: Allocation | null;
  closed: boolean;
  /** Bytes arrived since the last sweep (the sweep turns it into lastRx; no clock per chunk). */
  rx: boolean;
  lastRx: number;
}

export interface Channel {
  number: number;
  peerIp: string;
  peerPort: number;
  perm: Permission;
  expiresAt: number;
  active: boolean;
  reuseAfter: number;
}

export interface Permission {
  ip: string;
  ipBytes: Buffer;
  expiresAt: number;
  /** Non-null while the permission is installed (the flow is open). */
  flow: FlowImpl | null;
  /** The flow most recently closed on this permission (a hook may close it while opening). */
  lastFlow?: FlowImpl;
  channelsByPort: Map<number, Channel>;
}

export class FlowImpl implements Flow {
  open = true;
  ctx: unknown = undefined;
  constructor(
    readonly id: number,
    readonly allocationId: string,
    readonly user: string,
    readonly groups: readonly string[],
    readonly client: { proto: Proto; address: string; port: number },
    readonly relayed: { address: string; port: number },
    readonly peerAddress: string,
    readonly createdAt: number,
    identity?: CoreIdentity,
  ) {
    if (identity?.guest) this.guest = true;
    if (identity?.conference !== undefined) this.conference = identity.conference;
    if (identity?.room !== undefined) this.room = identity.room;
    if (identity?.org !== undefined) this.org = identity.org;
  }
  declare readonly guest?: true;
  declare readonly conference?: string;
  declare readonly room?: string;
  declare readonly org?: string;
}

export interface Allocation {
  id: string;
  ep: Endpoint;
  user: string;
  username: string;
  groups: readonly string[];
  /** A conference guest's allocation (REST `EXPIRY:guest/CONFERENCE/IDENTITY`, core.md §8). */
  guest?: true;
  conference?: string;
  /** core.md §7: the room a user's credential was issued for. */
  room?: string;
  /** core.md §6: the organisation of a user the core admitted by transfer. */
  org?: string;
  family: 4 | 6;
  relayAddress: string;
  relayPort: number;
  socket: Socket;
  expiresAt: number;
  permissions: Map<string, Permission>;
  channels: Map<number, Channel>;
  /** Channels currently bound (active), for the per-allocation cap. */
  activeChannels: number;
  /** The Allocate had DONT-FRAGMENT (RFC 8656 §7.2 step 4); DF is set per Send that asks for it (§11.2, §14). */
  dontFragment: boolean;
  deleted: boolean;
}

export interface Reservation {
  token: string;
  port: number;
  socket: Socket;
  family: 4 | 6;
  expiresAt: number;
}

export function familyOf(ip: string): 4 | 6 {
  return isIPv6(ip) ? 6 : 4;
}

/** ::ffff:a.b.c.d -> a.b.c.d (RFC 4291 §2.5.5.2 IPv4-mapped); anything else unchanged. */
export function unmapV4(ip: string): string {
  return ip.length > 7 && ip.charCodeAt(0) === 58 && ip.startsWith('::ffff:') && ip.indexOf('.') > 0 ? ip.slice(7) : ip;
}
