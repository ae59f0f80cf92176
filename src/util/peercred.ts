/**
 * Who is at the other end of a Unix stream socket (native/peercred.c, issue 13): the pid,
 * uid and gid the kernel recorded when the peer called connect(2) (SO_PEERCRED, unix(7)).
 * The peer cannot choose them, which is why the key broker (key-broker.ts) trusts them and
 * nothing the peer says about itself.
 *
 * Linux only, like the fast path. Without the addon there is no pure-JS way to learn the
 * peer (Node exposes no SO_PEERCRED), so callers must fail closed: loadPeerCred() gives
 * null and the broker refuses every request.
 */
import { loadAddon } from './native-addon.js';
import type { Socket } from 'node:net';

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export interface PeerCredAddon {
  /** Throws on a descriptor that is not a connected Unix socket. */
  peercred(fd: number): PeerCred;
}

export const PEERCRED_ADDON = 'native/build/Release/gatehouse_peercred.node';
let cached: PeerCredAddon | null | undefined;

/** The addon, or null (not built, not Linux, or failed to load). Loaded once. */
export function loadPeerCred(): PeerCredAddon | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.platform !== 'linux') return cached;
  // Missing or unloadable: the caller fails closed.
  return (cached = loadAddon<PeerCredAddon>('gatehouse_peercred.node', (m) => typeof m.peercred === 'function').addon);
}

/**
 * The descriptor of an accepted net.Socket (its libuv pipe handle's `fd`; internal, like
 * the dgram handle the fast path reads: `_handle` is deprecated, DEP0112), or null when the
 * socket has none (closed, or not backed by a descriptor).
 */
export function socketFd(s: Socket): number | null {
  const fd = (s as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : null;
}
