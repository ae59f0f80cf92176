/** Readiness probe: a STUN Binding request over UDP until a matching response arrives. */
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';

const MAGIC_COOKIE = 0x2112a442;

/** Resolves true when a Binding response with our transaction id arrives within timeoutMs. */
export function stunBinding(host: string, port: number, timeoutMs: number): Promise<boolean> {
  // RFC 8489 §5: 20-byte header, type 0x0001 Binding request, length 0, magic cookie,
  // 96-bit transaction id.
  const req = Buffer.alloc(20);
  req.writeUInt16BE(0x0001, 0);
  req.writeUInt16BE(0, 2);
  req.writeUInt32BE(MAGIC_COOKIE, 4);
  randomBytes(12).copy(req, 8);
  const sock = createSocket('udp4');
  return new Promise((resolve) => {
    let done = false;
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.close();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    sock.on('error', () => finish(false));
    sock.on('message', (m) => {
      // Any response class (success 0x0101 or error 0x0111) with our transaction id.
      if (
        m.length >= 20 &&
        m.readUInt16BE(0) !== 0x0001 &&
        (m.readUInt16BE(0) & 0x3eef) === 0x0001 &&
        m.subarray(8, 20).equals(req.subarray(8, 20))
      ) {
        finish(true);
      }
    });
    sock.send(req, port, host, (err) => err && finish(false));
  });
}

/** Polls until the server answers; `alive` is checked between probes so a crash fails fast. */
export async function waitForStun(host: string, port: number, totalMs: number, alive: () => string | null): Promise<void> {
  const deadline = Date.now() + totalMs;
  while (Date.now() < deadline) {
    const dead = alive();
    if (dead) throw new Error(dead);
    if (await stunBinding(host, port, 250)) return;
  }
  throw new Error(`no STUN Binding response from ${host}:${port} within ${totalMs / 1000} s`);
}

/** Resolves true when `host:port` echoes a datagram back (turnutils_peer is an echo server). */
export function udpEcho(host: string, port: number, timeoutMs: number): Promise<boolean> {
  const probe = Buffer.concat([Buffer.from('bench-probe-'), randomBytes(8)]);
  const sock = createSocket('udp4');
  return new Promise((resolve) => {
    let done = false;
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.close();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    sock.on('error', () => finish(false));
    sock.on('message', (m) => m.equals(probe) && finish(true));
    sock.send(probe, port, host, (err) => err && finish(false));
  });
}
