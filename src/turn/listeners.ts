/**
 * Listeners: UDP sockets, TCP and TLS servers, and the stream connections with their
 * framing (RFC 8656 §3.1 transports, RFC 8489 §6.2.2 and RFC 8656 §12.5: STUN and ChannelData
 * back to back on one byte stream),
 * connection caps, idle closing. Every socket callback runs inside the Supervisor.
 */
import { createSocket, type RemoteInfo } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { createServer as createTcpServer, type Server as NetServer, type Socket as NetSocket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import type { GatehouseConfig } from '../config/config.js';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/log.js';
import type { Supervisor } from '../util/supervise.js';
import { StreamFramer } from './framer.js';
import { enlargeBuffers, literalLookup } from './relay.js';
import { familyOf, unmapV4, type Endpoint, type StreamConn, type StreamListener, type UdpListener } from './state.js';
import { count, type TurnStats } from './stats.js';
import { sourcePrefix } from '../wire/source-prefix.js';
import { readKeyFile } from '../util/key-files.js';

export async function listenUdp(
  host: string,
  port: number,
  index: number,
  sup: Supervisor,
  log: Logger,
  onDatagram: (l: UdpListener, msg: Buffer, rinfo: RemoteInfo) => void,
  /**
   * Issue 13 (turn.workers): an SO_REUSEPORT socket the supervisor made and bound to
   * host:port (native/reuseport.c), inherited as this descriptor; adopted instead of binding.
   */
  fd?: number,
): Promise<UdpListener> {
  const v6 = familyOf(host) === 6;
  // literalLookup: replies to clients go out in the same call, no dns.lookup per send.
  const socket = createSocket({ type: v6 ? 'udp6' : 'udp4', lookup: literalLookup });
  await new Promise<void>((res, rej) => {
    socket.once('error', rej);
    // dgram bind({ fd }): Node adopts the already bound socket (its family must be the type's).
    socket.bind(fd === undefined ? { port, address: host } : { fd }, () => {
      socket.removeListener('error', rej);
      res();
    });
  });
  enlargeBuffers(socket);
  const a = socket.address();
  // An exception in a datagram handler is counted and that datagram is dropped.
  const onMessage = sup.guard('turn.udp.message', (msg: Buffer, rinfo: RemoteInfo) => onDatagram(l, msg, rinfo));
  const l: UdpListener = { proto: 'udp', index, socket, address: a.address, port: a.port, v6, clients: new Map(), onMessage };
  socket.on('error', (err) => log.warn({ err: err.message }, 'udp listener error'));
  socket.on('message', onMessage);
  return l;
}

export async function listenStream(
  proto: 'tcp' | 'tls',
  host: string,
  port: number,
  index: number,
  tls: { cert: string | null; key: string | null },
  log: Logger,
  onSocket: (l: StreamListener, s: NetSocket) => void,
  /** TLS: the connection caps apply at TCP accept, before the (costly) handshake; false closes it. */
  admitRaw?: (raw: NetSocket) => boolean,
  /** Issue 13 (turn.workers): an inherited SO_REUSEPORT listening socket (native/reuseport.c). */
  fd?: number,
): Promise<StreamListener> {
  let server: NetServer;
  let l: StreamListener | null = null;
  if (proto === 'tls') {
    if (!tls.cert || !tls.key) throw new Error('tls:// listener needs turn.tls.cert and turn.tls.key');
    const s = createTlsServer({ cert: readFileSync(tls.cert), key: readKeyFile(tls.key) });
    if (admitRaw) s.on('connection', (raw: NetSocket) => void (admitRaw(raw) || raw.destroy()));
    s.on('secureConnection', (sock) => (l ? onSocket(l, sock) : sock.destroy()));
    s.on('tlsClientError', (err) => log.debug({ err: err.message }, 'tls handshake failed'));
    server = s;
  } else {
    server = createTcpServer((sock) => (l ? onSocket(l, sock) : sock.destroy()));
  }
  server.on('error', (err) => log.warn({ err: err.message }, `${proto} listener error`));
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(fd === undefined ? { port, host } : { fd }, () => {
      server.removeListener('error', rej);
      res();
    });
  });
  const a = server.address() as { address: string; port: number };
  l = { proto, index, server, address: a.address, port: a.port };
  return l;
}

export interface StreamHandlers {
  /** A STUN frame (first byte < 0x40). */
  stun(ep: Endpoint, frame: Buffer): void;
  /** A ChannelData frame on a connection. */
  channelData(conn: StreamConn, frame: Buffer): void;
  /** The connection closed (its allocation goes with it). */
  closed(conn: StreamConn): void;
}

/**
 * TCP/TLS connections: caps at accept (turn.max_connections_per_source,
 * turn.max_connections), framing, and idle closing (turn.connection_idle_timeout).
 */
export class StreamConnections {
  readonly conns = new Set<StreamConn>();
  /** Open connections per source IP; entries exist only while connections are open. */
  private readonly perSource = new Map<string, number>();
  stopped = false;

  constructor(
    private readonly cfg: GatehouseConfig,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly sup: Supervisor,
    private readonly stats: TurnStats,
    private readonly legacyChannels: boolean,
    private readonly h: StreamHandlers,
  ) {}

  /** TLS connections counted at TCP accept (admitRaw): handshake pending or done. */
  private pendingTls = 0;
  /** Of conns, the TLS ones (already in pendingTls). */
  private tlsConns = 0;

  /**
   * The caps at TCP accept for a TLS listener (before the handshake: an attacker must not
   * get unbounded handshakes in flight). The raw socket holds the slot until it closes;
   * accept() then does not count the TLS socket again.
   */
  admitRaw(raw: NetSocket): boolean {
    if (this.stopped) return false;
    const src = unmapV4(raw.remoteAddress ?? '');
    if (!this.take(src)) return false;
    this.pendingTls++;
    raw.once('close', () => {
      this.pendingTls--;
      this.release(src);
    });
    return true;
  }

  /** Per source: an IPv4 address or an IPv6 /64 (src/wire/source-prefix.ts). */
  private take(address: string): boolean {
    const t = this.cfg.turn;
    const src = sourcePrefix(address);
    // Bounds at accept: the new connection is closed before anything is read from it.
    if (this.conns.size - this.tlsConns + this.pendingTls >= t.max_connections) {
      count(this.stats.refused, 'connection_cap_total');
      return false;
    }
    const n = this.perSource.get(src) ?? 0;
    if (n >= t.max_connections_per_source) {
      count(this.stats.refused, 'connection_cap_source');
      return false;
    }
    this.perSource.set(src, n + 1);
    return true;
  }

  private release(address: string): void {
    const src = sourcePrefix(address);
    const n = (this.perSource.get(src) ?? 1) - 1;
    if (n > 0) this.perSource.set(src, n);
    else this.perSource.delete(src);
  }

  accept(l: StreamListener, socket: NetSocket): void {
    if (this.stopped) {
      socket.destroy();
      return;
    }
    const remoteAddress = unmapV4(socket.remoteAddress ?? '');
    // TLS sockets were counted at TCP accept (admitRaw); TCP ones are counted here.
    const counted = l.proto === 'tls';
    if (!counted && !this.take(remoteAddress)) {
      socket.destroy();
      return;
    }
    const remotePort = socket.remotePort ?? 0;
    const ep: Endpoint = {
      proto: l.proto,
      remoteAddress,
      remotePort,
      sendAddress: remoteAddress,
      localAddress: l.address,
      localPort: l.port,
      udp: null,
      conn: null,
      key: `${l.proto}${l.index}|${remoteAddress}|${remotePort}`,
    };
    const conn: StreamConn = {
      socket,
      framer: new StreamFramer(this.legacyChannels),
      ep,
      allocation: null,
      closed: false,
      rx: false,
      lastRx: this.clock.now(),
    };
    ep.conn = conn;
    this.conns.add(conn);
    if (counted) this.tlsConns++;
    socket.setNoDelay(true);
    const onFrame = (frame: Buffer): void => {
      if (frame[0]! < 0x40) this.h.stun(ep, frame);
      else if (conn.allocation !== null) this.h.channelData(conn, frame);
    };
    const kill = (): void => void socket.destroy();
    // An exception in a TCP/TLS handler closes that connection (design.md supervision).
    socket.on(
      'data',
      this.sup.guard(
        `turn.${l.proto}.data`,
        (chunk: Buffer) => {
          conn.rx = true;
          if (!conn.framer.push(chunk, onFrame)) {
            // RFC 8489 §6.2.2 / RFC 8656 §12.5: a stream that is not STUN/ChannelData cannot be
            // resynchronised: close it.
            this.log.debug({ client: ep.key }, 'stream framing error, closing connection');
            socket.destroy();
          }
        },
        kill,
      ),
    );
    socket.on(
      'error',
      this.sup.guard(`turn.${l.proto}.error`, () => void socket.destroy(), kill),
    );
    socket.on(
      'close',
      this.sup.guard(`turn.${l.proto}.close`, () => this.onClose(conn)),
    );
  }

  private onClose(conn: StreamConn): void {
    if (conn.closed) return;
    conn.closed = true;
    this.conns.delete(conn);
    if (conn.ep.proto === 'tls')
      this.tlsConns--; // its slot is released by its raw socket
    else this.release(conn.ep.remoteAddress);
    // RFC 8656 §2 / §6: the 5-tuple (this connection) identifies the allocation; with the
    // connection gone the allocation cannot be used or refreshed, so it goes too.
    this.h.closed(conn);
  }

  /**
   * Idle connections: no bytes for turn.connection_idle_timeout and no allocation. A
   * connection that carries an allocation is not closed for quietness: the allocation
   * lives until its lifetime runs out or a Refresh deletes it (RFC 8656 §6, §8), and
   * closing its 5-tuple would delete it early. When the allocation goes, the connection
   * gets a new idle period.
   */
  sweep(now: number): void {
    const idleMs = this.cfg.turn.connection_idle_timeout * 1000;
    for (const c of this.conns) {
      if (c.socket.destroyed) continue; // closing; 'close' removes it
      if (c.rx) {
        c.rx = false;
        c.lastRx = now;
        continue;
      }
      if (c.allocation === null && now - c.lastRx >= idleMs) {
        count(this.stats.refused, 'connection_idle');
        this.log.debug({ client: c.ep.key }, 'idle connection closed');
        c.socket.destroy();
      }
    }
  }

  closeAll(): void {
    this.stopped = true;
    for (const c of this.conns) c.socket.destroy();
  }
}
