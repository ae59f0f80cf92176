/**
 * Unwrapping the client leg of a TURN relay in a capture (RFC 8656).
 *
 * On the client ↔ TURN server transport, application datagrams to and from a peer are
 * carried either in Send / Data indications (RFC 8656 §11: XOR-PEER-ADDRESS + DATA) or
 * in ChannelData messages (RFC 8656 §12) once a channel is bound with ChannelBind
 * (RFC 8656 §12.1). This module watches the control messages on that transport
 * (Allocate → relayed address, ChannelBind request + success → channel ↔ peer) and turns
 * each wrapped datagram into (peer address, direction, inner payload), so the inner
 * traffic can be inspected as the client ↔ peer flow it is.
 *
 * It only observes: it never checks MESSAGE-INTEGRITY (the capture has no credentials),
 * so what it learns is as trustworthy as the capture. State is bounded.
 */
import { Attr, Class, Method, decodeStun, getAttr, getXorAddress, isStun, type StunMessage } from '../wire/stun.js';
import { isValidChannelNumber } from '../wire/channeldata.js';

export interface Endpoint {
  ip: string;
  port: number;
}

/** One client ↔ TURN server transport (a UDP 5-tuple or a TCP connection). */
export interface TurnConnection {
  key: string;
  transport: 'udp' | 'tcp';
  client: Endpoint;
  server: Endpoint;
  /** Whether client/server were told apart from a request (else guessed). */
  rolesKnown: boolean;
  /** XOR-RELAYED-ADDRESS from the Allocate success response, when seen. */
  relayed?: Endpoint;
  /** RFC 8656 §12: channel number → peer transport address. */
  channels: Map<number, Endpoint>;
  /** ChannelBind requests awaiting their response, by transaction ID (hex). */
  pendingBinds: Map<string, { channel: number; peer: Endpoint }>;
  lastSeen: number;
}

export type UnwrapResult =
  | {
      kind: 'data';
      conn: TurnConnection;
      /** true: client → peer (Send indication / ChannelData from the client). */
      fromClient: boolean;
      peer: Endpoint;
      payload: Buffer;
      via: 'channel' | 'indication';
    }
  /** A TURN control message (Allocate, Refresh, CreatePermission, ChannelBind, ...). */
  | { kind: 'control'; conn: TurnConnection; method: number; cls: number }
  /** ChannelData on a channel with no binding seen (capture started late, or hostile). */
  | { kind: 'unbound'; conn: TurnConnection; channel: number };

export interface TurnUnwrapStats {
  channelData: number;
  indications: number;
  control: number;
  unbound: number;
  channelBinds: number;
  allocations: number;
  evicted: number;
}

export interface TurnUnwrapOptions {
  maxConnections?: number;
  maxChannelsPerConnection?: number;
  maxPendingPerConnection?: number;
  idleMs?: number;
}

/** RFC 8656 §4.1 / §5: the default TURN (3478) and TURN-over-(D)TLS (5349) ports, and the usual alternates. */
const WELL_KNOWN_SERVER_PORTS = new Set([3478, 3479, 5349, 5350]);

function sameEp(a: Endpoint, ip: string, port: number): boolean {
  return a.ip === ip && a.port === port;
}

/** Method values that only TURN uses (RFC 8656 §17). */
function isTurnMethod(m: number): boolean {
  return (
    m === Method.Allocate ||
    m === Method.Refresh ||
    m === Method.Send ||
    m === Method.Data ||
    m === Method.CreatePermission ||
    m === Method.ChannelBind ||
    m === 0x00a || // RFC 6062 Connect
    m === 0x00b || // RFC 6062 ConnectionBind
    m === 0x00c // RFC 6062 ConnectionAttempt
  );
}

export class TurnUnwrapper {
  private readonly conns = new Map<string, TurnConnection>();
  readonly stats: TurnUnwrapStats = { channelData: 0, indications: 0, control: 0, unbound: 0, channelBinds: 0, allocations: 0, evicted: 0 };
  private readonly maxConns: number;
  private readonly maxChannels: number;
  private readonly maxPending: number;
  private readonly idleMs: number;

  constructor(o: TurnUnwrapOptions = {}) {
    this.maxConns = o.maxConnections ?? 10_000;
    // RFC 8656 §12: at most 0x4000-0x4FFF, 4096 channels per allocation.
    this.maxChannels = o.maxChannelsPerConnection ?? 4096;
    this.maxPending = o.maxPendingPerConnection ?? 64;
    this.idleMs = o.idleMs ?? 15 * 60_000;
  }

  get size(): number {
    return this.conns.size;
  }

  connections(): IterableIterator<TurnConnection> {
    return this.conns.values();
  }

  /**
   * Looks at one datagram (or one framed TCP message) on a transport between src and
   * dst. Returns null when it is not TURN framing (including plain STUN Binding, which
   * belongs to ICE): the caller inspects it as a direct flow.
   */
  unwrap(
    transport: 'udp' | 'tcp',
    srcIp: string,
    srcPort: number,
    dstIp: string,
    dstPort: number,
    payload: Buffer,
    time: number,
  ): UnwrapResult | null {
    if (payload.length < 4) return null;
    const b0 = payload[0]!;
    if (b0 >= 0x40 && b0 <= 0x4f) return this.channelData(transport, srcIp, srcPort, dstIp, dstPort, payload, time);
    if (b0 > 3 || !isStun(payload)) return null;
    const msg = decodeStun(payload);
    if (!msg || !isTurnMethod(msg.method)) return null;
    return this.stun(transport, srcIp, srcPort, dstIp, dstPort, msg, time);
  }

  private channelData(
    transport: 'udp' | 'tcp',
    srcIp: string,
    srcPort: number,
    dstIp: string,
    dstPort: number,
    payload: Buffer,
    time: number,
  ): UnwrapResult | null {
    // RFC 8656 §12.4: channel number (2), length (2), application data.
    const channel = payload.readUInt16BE(0);
    const len = payload.readUInt16BE(2);
    // RFC 8656 §12.6: a ChannelData message shorter than its length field is discarded;
    // the channel must be in 0x4000-0x4FFF (RFC 8656 §12).
    if (!isValidChannelNumber(channel) || 4 + len > payload.length) return null;
    const conn = this.connFor(transport, srcIp, srcPort, dstIp, dstPort, time, undefined);
    const fromClient = sameEp(conn.client, srcIp, srcPort);
    const peer = conn.channels.get(channel) ?? this.pendingPeer(conn, channel);
    if (!peer) {
      this.stats.unbound++;
      return { kind: 'unbound', conn, channel };
    }
    this.stats.channelData++;
    return { kind: 'data', conn, fromClient, peer, payload: payload.subarray(4, 4 + len), via: 'channel' };
  }

  /** A binding whose success response was not captured (lost or capture started late). */
  private pendingPeer(conn: TurnConnection, channel: number): Endpoint | undefined {
    for (const p of conn.pendingBinds.values()) if (p.channel === channel) return p.peer;
    return undefined;
  }

  private stun(
    transport: 'udp' | 'tcp',
    srcIp: string,
    srcPort: number,
    dstIp: string,
    dstPort: number,
    msg: StunMessage,
    time: number,
  ): UnwrapResult {
    // Requests and Send indications come from the client, responses and Data
    // indications from the server (RFC 8656 §11; TURN requests are all client-initiated, §7-§12).
    const fromClientByType =
      msg.cls === Class.Request || (msg.cls === Class.Indication && msg.method === Method.Send)
        ? true
        : msg.cls === Class.Success || msg.cls === Class.Error || (msg.cls === Class.Indication && msg.method === Method.Data)
          ? false
          : undefined;
    const conn = this.connFor(transport, srcIp, srcPort, dstIp, dstPort, time, fromClientByType);
    const fromClient = sameEp(conn.client, srcIp, srcPort);

    if (msg.cls === Class.Indication && (msg.method === Method.Send || msg.method === Method.Data)) {
      // RFC 8656 §11.2 Send / §11.4 Data indication: XOR-PEER-ADDRESS and DATA.
      const peer = getXorAddress(msg, Attr.XorPeerAddress);
      const data = getAttr(msg, Attr.Data);
      if (peer && data) {
        this.stats.indications++;
        return { kind: 'data', conn, fromClient, peer: { ip: peer.address, port: peer.port }, payload: data, via: 'indication' };
      }
      this.stats.control++;
      return { kind: 'control', conn, method: msg.method, cls: msg.cls };
    }

    this.stats.control++;
    const tid = msg.transactionId.toString('hex');
    if (msg.method === Method.ChannelBind) {
      if (msg.cls === Class.Request) {
        // RFC 8656 §12.1: CHANNEL-NUMBER (channel in the top 16 bits, §18.1) + XOR-PEER-ADDRESS.
        const cn = getAttr(msg, Attr.ChannelNumber);
        const peer = getXorAddress(msg, Attr.XorPeerAddress);
        if (cn && cn.length >= 2 && peer) {
          const channel = cn.readUInt16BE(0);
          if (isValidChannelNumber(channel)) {
            if (conn.pendingBinds.size >= this.maxPending) {
              const first = conn.pendingBinds.keys().next().value as string;
              conn.pendingBinds.delete(first);
            }
            conn.pendingBinds.set(tid, { channel, peer: { ip: peer.address, port: peer.port } });
          }
        }
      } else if (msg.cls === Class.Success) {
        // RFC 8656 §12.3: the binding exists once the success response arrives.
        const p = conn.pendingBinds.get(tid);
        if (p) {
          conn.pendingBinds.delete(tid);
          if (conn.channels.has(p.channel) || conn.channels.size < this.maxChannels) {
            conn.channels.set(p.channel, p.peer);
            this.stats.channelBinds++;
          }
        }
      } else if (msg.cls === Class.Error) {
        conn.pendingBinds.delete(tid);
      }
    } else if (msg.method === Method.Allocate && msg.cls === Class.Success) {
      // RFC 8656 §7.3: XOR-RELAYED-ADDRESS of the new allocation.
      const r = getXorAddress(msg, Attr.XorRelayedAddress);
      if (r) {
        conn.relayed = { ip: r.address, port: r.port };
        this.stats.allocations++;
      }
    }
    return { kind: 'control', conn, method: msg.method, cls: msg.cls };
  }

  private connFor(
    transport: 'udp' | 'tcp',
    srcIp: string,
    srcPort: number,
    dstIp: string,
    dstPort: number,
    time: number,
    srcIsClient: boolean | undefined,
  ): TurnConnection {
    const k1 = `${transport}|${srcIp}|${srcPort}|${dstIp}|${dstPort}`;
    const k2 = `${transport}|${dstIp}|${dstPort}|${srcIp}|${srcPort}`;
    let c = this.conns.get(k1) ?? this.conns.get(k2);
    if (!c) {
      this.expire(time);
      if (this.conns.size >= this.maxConns) {
        const oldest = this.conns.keys().next().value as string;
        this.conns.delete(oldest);
        this.stats.evicted++;
      }
      // Until a request or response tells, guess: the side on a TURN port is the
      // server; else the first sender is the client.
      let srcClient = srcIsClient;
      if (srcClient === undefined) srcClient = !(WELL_KNOWN_SERVER_PORTS.has(srcPort) && !WELL_KNOWN_SERVER_PORTS.has(dstPort));
      const src = { ip: srcIp, port: srcPort };
      const dst = { ip: dstIp, port: dstPort };
      c = {
        key: srcClient ? k1 : k2,
        transport,
        client: srcClient ? src : dst,
        server: srcClient ? dst : src,
        rolesKnown: srcIsClient !== undefined,
        channels: new Map(),
        pendingBinds: new Map(),
        lastSeen: time,
      };
      this.conns.set(c.key, c);
    } else {
      // Refresh LRU position.
      this.conns.delete(c.key);
      this.conns.set(c.key, c);
      if (!c.rolesKnown && srcIsClient !== undefined) {
        c.rolesKnown = true;
        const srcNowClient = srcIsClient;
        const isClientSrc = sameEp(c.client, srcIp, srcPort);
        if (srcNowClient !== isClientSrc) {
          const t = c.client;
          c.client = c.server;
          c.server = t;
        }
      }
    }
    c.lastSeen = time;
    return c;
  }

  private expire(time: number): void {
    for (const [k, c] of this.conns) {
      if (time - c.lastSeen <= this.idleMs) break; // LRU order
      this.conns.delete(k);
      this.stats.evicted++;
    }
  }
}
