import { createSocket, type Socket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import { lookup as dnsLookup } from 'node:dns';
import { isIP } from 'node:net';

/**
 * Relay port management: relayed transport addresses are taken from
 * config.turn.relay_ports on config.turn.relay_address (RFC 8656 §7.2 step "obtain a
 * relayed transport address").
 */

/**
 * Socket buffer size asked for on every UDP socket of the relay. Bursts (a video key
 * frame, a file on a data channel) arrive faster than one event-loop turn drains them;
 * with Linux's 208 KiB default the kernel drops them. The kernel caps the request at
 * net.core.rmem_max / wmem_max.
 */
export const UDP_BUFFER_BYTES = 4 * 1024 * 1024;

export function enlargeBuffers(s: Socket): void {
  try {
    s.setRecvBufferSize(UDP_BUFFER_BYTES);
    s.setSendBufferSize(UDP_BUFFER_BYTES);
  } catch {
    /* not permitted on this system: keep the default */
  }
}

/**
 * The `lookup` of every TURN UDP socket. dgram resolves the address of every send (and
 * bind) through it; the default, dns.lookup, answers an IP literal on the next tick, so
 * each relayed datagram paid a closure, a nextTick and a deferred send (issue 13). Peer
 * and client addresses are always IP literals here (RFC 8656 §9 permissions and
 * XOR-PEER-ADDRESS carry addresses, never names): they are answered synchronously and the
 * send goes out in the same call. Anything else (a host name in turn.listen) still goes
 * to dns.lookup.
 */
export function literalLookup(
  address: string,
  family: unknown,
  cb: (err: NodeJS.ErrnoException | null, address: string, family: number) => void,
): void {
  const f = isIP(address);
  if (f !== 0) cb(null, address, f);
  else dnsLookup(address, family as number, cb);
}

export function bindUdp(type: 'udp4' | 'udp6', address: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createSocket({ type, reuseAddr: false, ipv6Only: type === 'udp6', lookup: literalLookup });
    const onError = (err: Error): void => {
      s.removeListener('listening', onListening);
      try {
        s.close();
      } catch {
        /* already closed */
      }
      reject(err);
    };
    const onListening = (): void => {
      s.removeListener('error', onError);
      // A bound socket with no 'error' listener would crash the process on an error;
      // owners add their own handlers on top.
      s.on('error', () => {});
      enlargeBuffers(s);
      resolve(s);
    };
    s.once('error', onError);
    s.once('listening', onListening);
    s.bind({ port, address, exclusive: true });
  });
}

export class PortPool {
  private readonly used = new Set<number>();

  constructor(
    readonly low: number,
    readonly high: number,
  ) {}

  get size(): number {
    return this.high - this.low + 1;
  }

  /**
   * Up to `max` free candidate ports, starting at a random point (RFC 8656 §7.2 and
   * RFC 6056: relayed ports should be hard to guess). With `even`, only even ports.
   */
  candidates(max: number, even: boolean): number[] {
    const out: number[] = [];
    const n = this.size;
    if (n <= 0) return out;
    const start = randomInt(0, n);
    for (let i = 0; i < n && out.length < max; i++) {
      const p = this.low + ((start + i) % n);
      if (even && p & 1) continue;
      if (even && p + 1 > this.high) continue;
      if (this.used.has(p)) continue;
      out.push(p);
    }
    return out;
  }

  isUsed(p: number): boolean {
    return this.used.has(p);
  }

  take(p: number): void {
    this.used.add(p);
  }

  release(p: number): void {
    this.used.delete(p);
  }
}
