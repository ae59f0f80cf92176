// A PCP client's UDP socket for the RFC 7652 e2e tests: send(buf, expectReply) with the
// retransmission of RFC 6887 §8.1.1 (shortened for tests), and a wait for "no answer".
import { createSocket, type Socket } from 'node:dgram';
import type { PcpSend } from '../../../src/endpoint/pcp-auth-client.js';

export class PcpUdpClient {
  readonly sock: Socket;
  private waiters: ((b: Buffer) => void)[] = [];
  readonly received: Buffer[] = [];

  private constructor(
    sock: Socket,
    readonly server: { address: string; port: number },
  ) {
    this.sock = sock;
    sock.on('message', (m) => {
      this.received.push(m);
      const w = this.waiters.shift();
      if (w) w(m);
    });
  }

  static async open(server: { address: string; port: number }): Promise<PcpUdpClient> {
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
    return new PcpUdpClient(s, server);
  }

  get port(): number {
    return this.sock.address().port;
  }

  /** Resolves with the next datagram, or null after ms. */
  next(ms: number): Promise<Buffer | null> {
    return new Promise((resolve) => {
      const w = (b: Buffer) => {
        clearTimeout(timer);
        resolve(b);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(null);
      }, ms);
      this.waiters.push(w);
    });
  }

  async request(buf: Buffer, ms = 1500): Promise<Buffer | null> {
    const p = this.next(ms);
    this.sock.send(buf, this.server.port, this.server.address);
    return p;
  }

  /** RFC 6887 §8.1.1-style retransmission: resend the same request until answered (tries × timeout). */
  send: PcpSend = async (buf, expectReply) => {
    if (!expectReply) {
      this.sock.send(buf, this.server.port, this.server.address);
      return null;
    }
    for (let i = 0; i < 4; i++) {
      const r = await this.request(buf, 2000);
      if (r) return r;
    }
    return null;
  };

  close(): void {
    this.sock.close();
  }
}
