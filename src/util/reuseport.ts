/**
 * SO_REUSEPORT sockets made in C (native/reuseport.c, issue 13 `turn.workers`). Node 20's
 * dgram ignores `reusePort` and cluster shares one UDP handle between workers, so the
 * supervisor makes the listener sockets with this addon and each worker adopts one with
 * dgram `bind({ fd })` / net.Server `listen({ fd })` (src/turn/workers.ts).
 *
 * Linux only. Without the addon there is no way to get such a socket on Node 20, so
 * `turn.workers > 1` refuses to start (requireReusePort()).
 */
import { loadAddon } from './native-addon.js';

export interface ReusePortAddon {
  /** A bound (and for 'tcp' listening), non-blocking, close-on-exec socket; throws with `code` = errno name. */
  reuseportSocket(kind: 'udp' | 'tcp', family: 4 | 6, address: string, port: number, backlog?: number): { fd: number; port: number };
  closeFd(fd: number): void;
}

export const REUSEPORT_ADDON = 'native/build/Release/gatehouse_reuseport.node';
let cached: { addon: ReusePortAddon | null; reason: string } | undefined;

/** The addon, or null with the reason (not built, not Linux, out of date). Loaded once. */
export function loadReusePort(): { addon: ReusePortAddon | null; reason: string } {
  if (cached !== undefined) return cached;
  if (process.platform !== 'linux') return (cached = { addon: null, reason: 'SO_REUSEPORT workers are Linux only' });
  return (cached = loadAddon<ReusePortAddon>(
    'gatehouse_reuseport.node',
    (m) => typeof m.reuseportSocket === 'function' && typeof m.closeFd === 'function',
  ));
}

/** The addon, or an Error saying why `turn.workers > 1` cannot start without it. */
export function requireReusePort(load: () => { addon: ReusePortAddon | null; reason: string } = loadReusePort): ReusePortAddon {
  const { addon, reason } = load();
  if (!addon) throw new Error(`turn.workers > 1 needs the SO_REUSEPORT addon: ${reason}`);
  return addon;
}
