/** Free loopback ports for the servers under test. Only 127.0.0.1 is ever bound. */
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';

export const HOST = '127.0.0.1';

export function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

function udpBind(port: number): Promise<import('node:dgram').Socket | null> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    s.once('error', () => {
      s.close();
      resolve(null);
    });
    s.bind(port, HOST, () => resolve(s));
  });
}

export async function freeUdpPort(): Promise<number> {
  const s = await udpBind(0);
  if (!s) throw new Error('cannot bind a UDP socket on 127.0.0.1');
  const p = s.address().port;
  s.close();
  return p;
}

/**
 * A range [low, high] of `size` consecutive UDP ports that are all free right now, below
 * Linux's ephemeral range (32768-60999) so that client sockets do not land in it.
 * `avoid` lists ports already handed out by this run.
 */
export async function freeUdpRange(size: number, avoid: number[] = [], lowest = 10000, highest = 32000): Promise<[number, number]> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const low = lowest + Math.floor(Math.random() * (highest - lowest - size));
    const high = low + size - 1;
    if (avoid.some((p) => p >= low && p <= high)) continue;
    const held: import('node:dgram').Socket[] = [];
    let ok = true;
    for (let p = low; p <= high; p++) {
      const s = await udpBind(p);
      if (!s) {
        ok = false;
        break;
      }
      held.push(s);
    }
    for (const s of held) s.close();
    if (ok) return [low, high];
  }
  throw new Error(`no free range of ${size} UDP ports found`);
}
