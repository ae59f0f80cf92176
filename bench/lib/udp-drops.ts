/**
 * Per-socket UDP receive drops of a process, from /proc/net/udp: the last column of each
 * row is the socket's drop counter (datagrams the kernel discarded because the receive
 * buffer was full). The process's sockets are found through /proc/PID/fd links
 * ("socket:[INODE]"). With these the bench counts what a server really relayed when
 * there is loss, instead of guessing on which side of the relay the loss happened.
 */
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

export interface UdpDrops {
  /** drops per local port, summed over the process's sockets on that port */
  byPort: Map<number, number>;
  total: number;
  sockets: number;
}

function socketInodes(pid: number): Set<string> {
  const out = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) out.add(m[1]!);
    } catch {
      /* fd closed while listing */
    }
  }
  return out;
}

/** null when /proc cannot be read for that process (gone, or not permitted). */
export function udpDrops(pid: number | number[]): UdpDrops | null {
  // Several pids: a server and its worker processes (turn.workers), their sockets together
  // (a socket shared by two of them is one inode, counted once).
  const inodes = new Set<string>();
  for (const [i, p] of (Array.isArray(pid) ? pid : [pid]).entries()) {
    try {
      for (const n of socketInodes(p)) inodes.add(n);
    } catch {
      if (i === 0) return null; // the server itself is gone; a worker may be restarting
    }
  }
  const res: UdpDrops = { byPort: new Map(), total: 0, sockets: 0 };
  for (const table of ['/proc/net/udp', '/proc/net/udp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref pointer drops
      const f = line.trim().split(/\s+/);
      if (f.length < 13 || !inodes.has(f[9]!)) continue;
      const port = parseInt(f[1]!.split(':')[1]!, 16);
      const drops = Number(f[12]);
      res.byPort.set(port, (res.byPort.get(port) ?? 0) + drops);
      res.total += drops;
      res.sockets++;
    }
  }
  return res;
}

/** Drops between two samples, split into those on `port` and those on every other port. */
export function dropsDelta(a: UdpDrops, b: UdpDrops, port: number): { onPort: number; others: number } {
  let onPort = 0;
  let others = 0;
  for (const [p, n] of b.byPort) {
    // A socket closed between the samples takes its counter along: never count below 0.
    const d = Math.max(0, n - (a.byPort.get(p) ?? 0));
    if (p === port) onPort += d;
    else others += d;
  }
  return { onPort, others };
}
